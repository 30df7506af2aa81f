/* Private to src/parallel/: the communicator behind the opaque comm_t, the
 * MPI error check, and the transfer-size limit (settable for tests). */
#ifndef AUTOSP_PAR_INTERNAL_H
#define AUTOSP_PAR_INTERNAL_H

#include "autosp_config.h"

#include <stddef.h>

#ifdef HAVE_MPI
#include <mpi.h>
#endif

#include "parallel.h"

struct comm {
    int rank, size;
#ifdef HAVE_MPI
    MPI_Comm mpi;       /* MPI_COMM_NULL for a rank that runs without MPI */
#endif
    void *nccl;         /* ncclComm_t once coll_nccl_init has run (GPU buffers) */
};

#ifdef HAVE_MPI
/* A failed MPI call names itself, its file and line, then asp_die aborts the
 * whole job through the hook installed by par_init. */
void par_mpi_fail(int rc, const char *call, const char *file, int line);
#define MPI_CHECK(call)                                                   \
    do {                                                                  \
        int mpi_rc_ = (call);                                             \
        if (mpi_rc_ != MPI_SUCCESS) par_mpi_fail(mpi_rc_, #call, __FILE__, __LINE__); \
    } while (0)
#endif

/* Set by coll_nccl_init: destroys a communicator's NCCL side when the
 * communicator is freed (parallel.c itself is built without CUDA). */
extern void (*comm_nccl_free_hook)(void *nccl);

/* Largest element count handed to one MPI call (INT_MAX by default: MPI
 * counts are int). Tests lower it to exercise the splitting. Returns the
 * previous limit; 0 restores the default. */
size_t coll_host_set_max_count(size_t max_count);

/* Answer pending liveness pings (par_service). */
void coll_host_service(void);

#ifdef HAVE_MPI
/* The host collectives' deadline (ASP_MPI_TIMEOUT): a private copy of the
 * world on which ranks answer each other's liveness pings. Collective. */
void coll_host_watch_init(MPI_Comm world);
void coll_host_watch_fini(void);
#endif

#endif
