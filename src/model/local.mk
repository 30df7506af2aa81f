# src/model: sources and tests of this folder (included by Makefile.am)
libautosp_a_SOURCES += src/model/llama.c src/model/model.h
check_PROGRAMS += tests/test_model
TESTS += tests/test_model
tests_test_model_SOURCES = tests/test_model.c
tests_test_model_CFLAGS = $(ASP_TEST_CFLAGS)
tests_test_model_LDADD = $(ASP_TEST_LIBS)
