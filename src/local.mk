# src: sources and tests of this folder (included by Makefile.am)
libautosp_a_SOURCES += src/util.c src/util.h
libautosp_a_SOURCES += src/exec.c src/exec.h src/train.c src/train.h src/dtype.h src/backend.h src/data.h
libautosp_a_SOURCES += src/config.c src/config.h
check_PROGRAMS += tests/test_config
TESTS += tests/test_config
tests_test_config_SOURCES = tests/test_config.c
tests_test_config_CFLAGS = $(ASP_TEST_CFLAGS)
tests_test_config_LDADD = $(ASP_TEST_LIBS)
# Hugging Face weights in and out: safetensors, config.json, export
libautosp_a_SOURCES += src/json.c src/json.h src/safetensors.c src/safetensors.h src/hf.c src/hf.h
check_PROGRAMS += tests/test_safetensors tests/test_safetensors_asan
TESTS += tests/test_safetensors tests/test_safetensors_asan
tests_test_safetensors_SOURCES = tests/test_safetensors.c
tests_test_safetensors_CFLAGS = $(ASP_TEST_CFLAGS)
tests_test_safetensors_LDADD = $(ASP_TEST_LIBS)
# The same tests with the reader itself built under AddressSanitizer and UBSan:
# malformed input must never read out of bounds or overflow.
tests_test_safetensors_asan_SOURCES = tests/test_safetensors.c src/safetensors.c src/json.c src/util.c
tests_test_safetensors_asan_CFLAGS = $(ASP_TEST_CFLAGS) -fsanitize=address,undefined -fno-sanitize-recover=all -fno-omit-frame-pointer
tests_test_safetensors_asan_LDFLAGS = $(AM_LDFLAGS) -fsanitize=address,undefined
tests_test_safetensors_asan_LDADD = $(CHECK_LIBS) $(YAML_LIBS) -lm
check_PROGRAMS += tests/test_hf
TESTS += tests/test_hf
tests_test_hf_SOURCES = tests/test_hf.c
tests_test_hf_CFLAGS = $(ASP_TEST_CFLAGS)
tests_test_hf_LDADD = $(ASP_TEST_LIBS)
TESTS += tests/test_hf_parity.sh
EXTRA_DIST += tests/test_hf_parity.sh tests/hf_parity.py
# Checkpoints and resume (docs/checkpoints.md)
libautosp_a_SOURCES += src/ckpt.c src/ckpt.h src/runlock.c src/runlock.h
check_PROGRAMS += tests/test_ckpt
TESTS += tests/test_ckpt tests/test_ckpt_resume.sh tests/test_ckpt_fault.sh
tests_test_ckpt_SOURCES = tests/test_ckpt.c
tests_test_ckpt_CFLAGS = $(ASP_TEST_CFLAGS)
tests_test_ckpt_LDADD = $(ASP_TEST_LIBS)
EXTRA_DIST += tests/test_ckpt_resume.sh tests/test_ckpt_fault.sh tests/ckpt_compare.py tests/dump_losses.py
check_PROGRAMS += tests/test_util
TESTS += tests/test_util
tests_test_util_SOURCES = tests/test_util.c
tests_test_util_CFLAGS = $(ASP_TEST_CFLAGS)
tests_test_util_LDADD = $(ASP_TEST_LIBS)
