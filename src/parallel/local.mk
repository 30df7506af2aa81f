# src/parallel: sources and tests of this folder (included by Makefile.am)
libautosp_a_SOURCES += src/parallel/parallel.c src/parallel/coll_host.c src/parallel/par_internal.h \
	src/parallel/parallel.h

# The C program is driven by the script (single process, then mpirun -np 1, 2, 4).
check_PROGRAMS += tests/test_mpi_coll
tests_test_mpi_coll_SOURCES = tests/test_mpi_coll.c
tests_test_mpi_coll_CFLAGS = $(ASP_TEST_CFLAGS)
tests_test_mpi_coll_LDADD = $(ASP_TEST_LIBS)
TESTS += tests/test_mpi_coll.sh
dist_noinst_SCRIPTS += tests/test_mpi_coll.sh

if HAVE_CUDA
# NCCL collectives for GPU buffers
libautosp_a_SOURCES += src/parallel/coll_nccl.c
endif
AM_CPPFLAGS += $(CUDA_CPPFLAGS)
