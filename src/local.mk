# src: sources and tests of this folder (included by Makefile.am)
libautosp_a_SOURCES += src/util.c src/util.h
libautosp_a_SOURCES += src/exec.c src/exec.h src/train.c src/train.h src/dtype.h src/backend.h src/data.h
libautosp_a_SOURCES += src/config.c src/config.h
check_PROGRAMS += tests/test_config
TESTS += tests/test_config
tests_test_config_SOURCES = tests/test_config.c
tests_test_config_CFLAGS = $(ASP_TEST_CFLAGS)
tests_test_config_LDADD = $(ASP_TEST_LIBS)
# Checkpoints and resume (docs/checkpoints.md)
libautosp_a_SOURCES += src/ckpt.c src/ckpt.h
check_PROGRAMS += tests/test_ckpt
TESTS += tests/test_ckpt tests/test_ckpt_resume.sh tests/test_ckpt_fault.sh
tests_test_ckpt_SOURCES = tests/test_ckpt.c
tests_test_ckpt_CFLAGS = $(ASP_TEST_CFLAGS)
tests_test_ckpt_LDADD = $(ASP_TEST_LIBS)
EXTRA_DIST += tests/test_ckpt_resume.sh tests/test_ckpt_fault.sh tests/ckpt_compare.py tests/dump_losses.py
