# bench: probes kept as sources, built on request (included by Makefile.am)
#   make bench/pinbench    pinned host memory: cudaMallocHost against mmap + register
EXTRA_DIST += bench/pinbench.cu
if HAVE_CUDA
EXTRA_PROGRAMS = bench/pinbench
bench_pinbench_SOURCES = bench/pinbench.cu
bench/pinbench$(EXEEXT): $(srcdir)/bench/pinbench.cu
	$(AM_V_GEN)$(NVCC) -O2 $(CUDA_ARCH) -Xcompiler -fopenmp $< -o $@
CLEANFILES += bench/pinbench
endif
