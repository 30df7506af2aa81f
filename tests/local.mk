# tests: sources and tests of this folder (included by Makefile.am)
# End-to-end tests of the engine (shell scripts driving the real binary).
check_PROGRAMS += tests/dump_compare
tests_dump_compare_SOURCES = tests/dump_compare.c
tests_dump_compare_LDADD = libautosp.a $(YAML_LIBS) $(CUDA_LIBS) -lm
TESTS += tests/test_sp_parity.sh
EXTRA_DIST += tests/common.sh tests/testutil.h tests/test_sp_parity.sh
TESTS += tests/test_train_tiny.sh
EXTRA_DIST += tests/test_train_tiny.sh
