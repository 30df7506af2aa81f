# src/cpu: sources and tests of this folder (included by Makefile.am)
libautosp_a_SOURCES += src/cpu/cpu_backend.c src/cpu/host_optim.c src/cpu/host_optim.h
if HAVE_CHECK
check_PROGRAMS += tests/test_cpu_ops
TESTS += tests/test_cpu_ops
tests_test_cpu_ops_SOURCES = tests/test_cpu_ops.c
tests_test_cpu_ops_CFLAGS = $(ASP_TEST_CFLAGS)
tests_test_cpu_ops_LDADD = $(ASP_TEST_LIBS)
endif
