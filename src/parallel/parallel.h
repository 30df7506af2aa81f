/* Ranks and collectives. parallel/ knows no model and no plan.
 *
 * World of W = SP x DP ranks. SP groups are contiguous ranks (rank r is in SP
 * group r / SP at sp_rank r % SP) so they stay inside a node; DP groups take
 * one rank of each SP group (dp_rank = r / SP).
 *
 * A process started without mpirun/srun runs as a single rank and never calls
 * MPI, so the engine needs no MPI at run time on one device. */
#ifndef AUTOSP_PARALLEL_H
#define AUTOSP_PARALLEL_H

#include "autosp_config.h"

#include <stddef.h>

#include "dtype.h"

typedef struct comm comm_t;     /* opaque: an MPI communicator (or a single rank) */

typedef struct {
    int world_rank, world_size;
    int local_rank, local_size; /* within the node (MPI_Comm_split_type SHARED) */
    int sp_rank, sp_size;
    int dp_rank, dp_size;
    comm_t *world, *sp, *dp;
    int launched;               /* 1: started by a launcher, MPI is initialised */
} ranks_t;

/* Initialise ranks: MPI when started by a launcher (mpirun, srun), a single
 * rank otherwise. Installs the abort hook so that asp_die on one rank ends
 * the whole job. Returns 0, or -1 with a message. */
int par_init(int *argc, char ***argv, ranks_t *r, char *err, size_t errlen);

/* Form SP groups of sp_size contiguous ranks and the DP groups across them.
 * Fails when sp_size does not divide the world size. */
int par_set_groups(ranks_t *r, int sp_size, char *err, size_t errlen);

void par_finalize(ranks_t *r);

/* Answer peers' liveness checks (see ASP_MPI_TIMEOUT in docs/launch.md):
 * called by work that keeps a rank away from collectives for long (rank 0
 * writing or checking a checkpoint), so its peers know it is alive. Cheap. */
void par_service(void);

int comm_rank(const comm_t *c);
int comm_size(const comm_t *c);

/* Seconds of communication since the previous coll_ops.take_times. */
typedef struct {
    double a2a_s;           /* all-to-alls (on the compute stream: all of it exposed) */
    double grad_s;          /* gradient reductions, busy time */
    double grad_exposed_s;  /* of which the compute stream waited for at join (not overlapped) */
} coll_times_t;

/* Collectives over buffers of one memory kind. Every rank of the
 * communicator must call them in the same order. Counts are elements. */
typedef struct coll_ops {
    const char *name;
    void (*allreduce_sum)(comm_t *c, void *buf, size_t count, dtype_t t);
    /* recv[count] = sum over ranks of send[rank * count .. +count) */
    void (*reduce_scatter_sum)(comm_t *c, const void *send, void *recv, size_t count, dtype_t t);
    /* recv[r * count ..] = send of rank r; in place when send == recv + rank * count */
    void (*allgather)(comm_t *c, const void *send, void *recv, size_t count, dtype_t t);
    /* recv[j * count ..] = block rank of send of rank j (block j of mine goes to rank j) */
    void (*alltoall)(comm_t *c, const void *send, void *recv, size_t count, dtype_t t);
    void (*bcast)(comm_t *c, void *buf, size_t count, dtype_t t, int root);
    void (*barrier)(comm_t *c);
    /* Wait for every collective issued so far, watching for failures (NULL
     * when the calls are synchronous). A failed or hung peer ends the job
     * with a message naming the rank and the failed call, instead of a hang. */
    void (*wait)(void);

    /* Gradient reduction that may overlap with later work: on the GPU it
     * runs on a communication stream, after all work issued so far on the
     * compute stream; on the host it runs at once. In place: after
     * reduce_scatter_async, block `rank` of buf ([rank * count, + count))
     * holds the sum over ranks of their block `rank` (other blocks are left
     * undefined); after allreduce_async all of buf holds the sum. */
    void (*reduce_scatter_async)(comm_t *c, void *buf, size_t count, dtype_t t);
    void (*allreduce_async)(comm_t *c, void *buf, size_t count, dtype_t t);
    /* Work issued after join waits for every *_async call before it. */
    void (*join)(void);
    /* Communication time since the previous call; call it once the work it
     * covers has finished (after wait or a synchronous read). */
    void (*take_times)(coll_times_t *out);

    /* The bucket pipeline of ZeRO 2-3 and the host optimizer, on the same
     * communication stream as the *_async calls (after all work issued so
     * far on the compute stream, in issue order there):
     *   allgather_async   allgather (ZeRO-3's weight gathers, prefetched)
     *   to_host_async     backend buffer -> pinned host memory copy
     *   to_device_async   pinned host memory -> backend buffer copy, NOT ordered after the
     *                     compute stream: the caller makes sure nothing in flight reads dst
     *   mark              a ticket for everything issued there so far
     *   wait_mark         compute-stream work issued later waits for the ticket
     *   sync_mark         the host waits for it (watching for failed peers)
     * The host table runs each at once (tickets then mean nothing). */
    void (*allgather_async)(comm_t *c, const void *send, void *recv, size_t count, dtype_t t);
    void (*to_host_async)(void *host, const void *src, size_t bytes);
    void (*to_device_async)(void *dst, const void *host, size_t bytes);
    long long (*mark)(void);
    void (*wait_mark)(long long ticket);
    void (*sync_mark)(long long ticket);
} coll_ops_t;

/* MPI on host memory (plain copies when the communicator has one rank). */
extern const coll_ops_t coll_host;

#ifdef HAVE_CUDA
/* NCCL on GPU memory, enqueued on `stream` (a cudaStream_t). coll_nccl_init
 * creates one NCCL communicator for each of r's world, SP and DP groups (the
 * unique id travels over MPI; a single rank needs no MPI), after
 * par_set_groups. Returns 0, or -1 with a message. */
int coll_nccl_init(ranks_t *r, void *stream, char *err, size_t errlen);
extern const coll_ops_t coll_nccl;
#endif

#endif
