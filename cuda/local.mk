# cuda: sources and tests of this folder (included by Makefile.am)
if HAVE_CUDA
libautosp_a_SOURCES += cuda/cuda_common.h cuda/backend.cu cuda/kernels.cu
endif
