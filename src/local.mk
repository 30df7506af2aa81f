# src: sources and tests of this folder (included by Makefile.am)
libautosp_a_SOURCES += src/util.c src/util.h
libautosp_a_SOURCES += src/train.c src/train.h src/train_log.c src/train_log.h src/dtype.h src/backend.h src/opshapes.h
libautosp_a_SOURCES += src/config.c src/config.h src/config_keys.c src/config_keys.h
check_PROGRAMS += tests/test_config
TESTS += tests/test_config
tests_test_config_SOURCES = tests/test_config.c
tests_test_config_CFLAGS = $(ASP_TEST_CFLAGS)
tests_test_config_LDADD = $(ASP_TEST_LIBS)
check_PROGRAMS += tests/test_util
TESTS += tests/test_util
tests_test_util_SOURCES = tests/test_util.c
tests_test_util_CFLAGS = $(ASP_TEST_CFLAGS)
tests_test_util_LDADD = $(ASP_TEST_LIBS)
