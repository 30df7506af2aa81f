# src/io: the file formats (included by Makefile.am): JSON, safetensors,
# Hugging Face folders, checkpoints, token shards
libautosp_a_SOURCES += src/io/data.c src/io/data.h
check_PROGRAMS += tests/test_data
TESTS += tests/test_data
tests_test_data_SOURCES = tests/test_data.c
tests_test_data_CFLAGS = $(ASP_TEST_CFLAGS)
tests_test_data_LDADD = $(ASP_TEST_LIBS)
# Hugging Face weights in and out: safetensors, config.json, export
libautosp_a_SOURCES += src/io/json.c src/io/json.h src/io/safetensors.c src/io/safetensors.h src/io/hf.c src/io/hf.h
check_PROGRAMS += tests/test_safetensors tests/test_safetensors_asan
TESTS += tests/test_safetensors tests/test_safetensors_asan
tests_test_safetensors_SOURCES = tests/test_safetensors.c
tests_test_safetensors_CFLAGS = $(ASP_TEST_CFLAGS)
tests_test_safetensors_LDADD = $(ASP_TEST_LIBS)
# The same tests with the reader itself built under AddressSanitizer and UBSan:
# malformed input must never read out of bounds or overflow.
tests_test_safetensors_asan_SOURCES = tests/test_safetensors.c src/io/safetensors.c src/io/json.c src/util.c
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
libautosp_a_SOURCES += src/io/ckpt.c src/io/ckpt.h src/io/ckpt_values.c src/io/ckpt_internal.h src/io/runlock.c src/io/runlock.h
check_PROGRAMS += tests/test_ckpt
TESTS += tests/test_ckpt tests/test_ckpt_resume.sh tests/test_ckpt_fault.sh
tests_test_ckpt_SOURCES = tests/test_ckpt.c
tests_test_ckpt_CFLAGS = $(ASP_TEST_CFLAGS)
tests_test_ckpt_LDADD = $(ASP_TEST_LIBS)
EXTRA_DIST += tests/test_ckpt_resume.sh tests/test_ckpt_fault.sh tests/ckpt_compare.py tests/dump_losses.py
