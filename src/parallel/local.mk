# src/parallel: sources and tests of this folder (included by Makefile.am)
libautosp_a_SOURCES += src/data.c src/data.h

check_PROGRAMS += tests/test_data
TESTS += tests/test_data
tests_test_data_SOURCES = tests/test_data.c
tests_test_data_CFLAGS = $(ASP_TEST_CFLAGS)
tests_test_data_LDADD = $(ASP_TEST_LIBS)
