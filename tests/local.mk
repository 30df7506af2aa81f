# tests: sources and tests of this folder (included by Makefile.am)
# End-to-end tests of the engine (shell scripts driving the real binary).
check_PROGRAMS += tests/dump_compare
tests_dump_compare_SOURCES = tests/dump_compare.c
tests_dump_compare_LDADD = libautosp.a $(YAML_LIBS) $(CUDA_LIBS) -lm
TESTS += tests/test_sp_parity.sh
TESTS += tests/test_attn_pieces.sh
TESTS += tests/test_zero.sh
EXTRA_DIST += tests/test_zero.sh
EXTRA_DIST += tests/common.sh tests/testutil.h tests/test_sp_parity.sh tests/test_attn_pieces.sh
TESTS += tests/test_docs_parity.sh
EXTRA_DIST += tests/test_docs_parity.sh tests/docs_parity.py
TESTS += tests/test_train_tiny.sh
TESTS += tests/test_hf_train.sh
EXTRA_DIST += tests/test_hf_train.sh
EXTRA_DIST += tests/test_train_tiny.sh
TESTS += tests/test_offload.sh
EXTRA_DIST += tests/test_offload.sh
TESTS += tests/test_prepare_data.sh
EXTRA_DIST += tests/test_prepare_data.sh
# Whole-model finite differences through the executor (CPU engine)
check_PROGRAMS += tests/test_model_grad
TESTS += tests/test_model_grad
tests_test_model_grad_SOURCES = tests/test_model_grad.c
tests_test_model_grad_CFLAGS = $(ASP_TEST_CFLAGS)
tests_test_model_grad_LDADD = $(ASP_TEST_LIBS)
# Offload copies as late as the backend contract allows (CPU engine)
check_PROGRAMS += tests/test_offload_order
TESTS += tests/test_offload_order
tests_test_offload_order_SOURCES = tests/test_offload_order.c
tests_test_offload_order_CFLAGS = $(ASP_TEST_CFLAGS)
tests_test_offload_order_LDADD = $(ASP_TEST_LIBS)
TESTS += tests/test_failures.sh
EXTRA_DIST += tests/test_failures.sh
TESTS += tests/test_first_hour.sh
EXTRA_DIST += tests/test_first_hour.sh
TESTS += tests/test_docs_keys.sh
EXTRA_DIST += tests/test_docs_keys.sh
# libFuzzer harnesses and their seeds (built and run by tests/fuzz/run.sh, from
# scripts/sanitize-check.sh in CI), and the LeakSanitizer suppressions
EXTRA_DIST += tests/fuzz/fuzz_common.h tests/fuzz/fuzz_ckpt_setup.h tests/fuzz/fuzz_json.c tests/fuzz/fuzz_safetensors.c tests/fuzz/fuzz_config.c \
              tests/fuzz/fuzz_hf_config.c tests/fuzz/fuzz_shard.c tests/fuzz/fuzz_ckpt_state.c tests/fuzz/fuzz_ckpt_dir.c tests/fuzz/fuzz_run_folder.c tests/fuzz/run.sh \
              tests/fuzz/corpus tests/lsan.supp
EXTRA_DIST += tests/testmodel.h
TESTS += tests/test_shape.sh
EXTRA_DIST += tests/test_shape.sh scripts/check_shape.py
TESTS += tests/test_run_folder.sh
EXTRA_DIST += tests/test_run_folder.sh
TESTS += tests/test_readme_explain.sh
EXTRA_DIST += tests/test_readme_explain.sh
# The Slurm batch files against a real one-node Slurm on localhost (skips without slurm-wlm and munge)
TESTS += tests/test_slurm.sh
EXTRA_DIST += tests/test_slurm.sh
