# cuda: sources and tests of this folder (included by Makefile.am)
if HAVE_CUDA
libautosp_a_SOURCES += cuda/cuda_common.h cuda/backend.cu cuda/kernels.cu cuda/matmul.cu \
	cuda/attention.cu cuda/attention_cudnn.cu
# The .cu.o rule tracks no headers: every CUDA object depends on the ones
# they include, so a change of a shared struct rebuilds them all.
ASP_CUDA_DEPS = $(srcdir)/cuda/cuda_common.h $(srcdir)/src/backend.h $(srcdir)/src/dtype.h \
	$(srcdir)/src/opshapes.h $(srcdir)/src/util.h autosp_config.h
cuda/backend.$(OBJEXT) cuda/kernels.$(OBJEXT) cuda/matmul.$(OBJEXT) cuda/attention.$(OBJEXT) \
	cuda/attention_cudnn.$(OBJEXT): $(ASP_CUDA_DEPS)
endif

if HAVE_CHECK
check_PROGRAMS += tests/test_cuda_ops
TESTS += tests/test_cuda_ops
tests_test_cuda_ops_SOURCES = tests/test_cuda_ops.c
tests_test_cuda_ops_CFLAGS = $(ASP_TEST_CFLAGS)
tests_test_cuda_ops_LDADD = $(ASP_TEST_LIBS)
endif

# Timing program for the attention ops (run by hand on a GPU, not a test):
# tests/bench_attention S HQ HKV HD [current|tuned] [RUNS]
check_PROGRAMS += tests/bench_attention
tests_bench_attention_SOURCES = tests/bench_attention.c
tests_bench_attention_LDADD = libautosp.a $(YAML_LIBS) $(CUDA_LIBS) -lm
