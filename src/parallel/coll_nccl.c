/* Collectives on GPU buffers through NCCL, on the backend's stream. */
#include "autosp_config.h"

#ifdef HAVE_CUDA
#include <cuda_runtime.h>
#include <nccl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "par_internal.h"
#include "util.h"

static cudaStream_t nccl_stream;      /* the backend's compute stream */
static cudaStream_t nccl_side;        /* gradient reductions, overlapping the backward */
static cudaEvent_t side_fork;         /* compute -> side ordering (no timing) */
static cudaEvent_t side_join_ev;      /* side -> compute ordering (no timing) */
static int side_pending;              /* *_async calls since the last join */

/* Communication timing with CUDA events, read back by take_times once the
 * step has finished. A fixed pool; calls beyond it in one step go untimed. */
#define TIMED_MAX 2048
enum { TIMED_A2A = 0, TIMED_GRAD, TIMED_EXPOSED };
static struct {
    cudaEvent_t begin[TIMED_MAX], end[TIMED_MAX];
    int kind[TIMED_MAX];
    int n, dropped;
} timed;
static comm_t *nccl_comms[3];   /* world, SP, DP: polled for asynchronous errors */
static int nccl_world_rank;
static double nccl_timeout_s;   /* ASP_NCCL_TIMEOUT: seconds a wait may take (default 600) */
static const char *nccl_last_op = "none";

#define NCCL_CHECK(call)                                                                            \
    do {                                                                                            \
        ncclResult_t nccl_rc_ = (call);                                                             \
        if (nccl_rc_ != ncclSuccess)                                                                \
            asp_die(ASP_EXIT_FAILURE, "%s failed at %s:%d: %s (%s)", #call, __FILE__, __LINE__,     \
                    ncclGetErrorString(nccl_rc_), ncclGetLastError(NULL));                          \
    } while (0)

static ncclDataType_t nccl_type(dtype_t t) {
    switch (t) {
    case DT_F32: return ncclFloat32;
    case DT_BF16: return ncclBfloat16;
    case DT_F64: return ncclFloat64;
    case DT_I32: return ncclInt32;
    case DT_U8: return ncclUint8;
    }
    asp_die(ASP_EXIT_FAILURE, "NCCL: unsupported element type %d", (int)t);
}

static ncclComm_t nccl_of(comm_t *c) {
    if (!c || !c->nccl) asp_die(ASP_EXIT_FAILURE, "NCCL collective on a communicator without NCCL: call coll_nccl_init first");
    return (ncclComm_t)c->nccl;
}

static void nccl_free(void *nccl) { ncclCommDestroy((ncclComm_t)nccl); }

static void comm_add_nccl(comm_t *c) {
    ncclUniqueId id;
    if (c->rank == 0) NCCL_CHECK(ncclGetUniqueId(&id));
#ifdef HAVE_MPI
    if (c->size > 1) MPI_CHECK(MPI_Bcast(&id, (int)sizeof id, MPI_BYTE, 0, c->mpi));
#endif
    ncclComm_t nc;
    NCCL_CHECK(ncclCommInitRank(&nc, c->size, id, c->rank));
    c->nccl = nc;
}

#define CUDA_OK(call)                                                                               \
    do {                                                                                            \
        cudaError_t cuda_rc_ = (call);                                                              \
        if (cuda_rc_ != cudaSuccess)                                                                \
            asp_die(ASP_EXIT_FAILURE, "%s failed at %s:%d: %s", #call, __FILE__, __LINE__,          \
                    cudaGetErrorString(cuda_rc_));                                                  \
    } while (0)

/* Record a timing pair around work about to be enqueued on `st`: returns the
 * slot, or -1 when the pool is used up this step. */
static int timed_begin(int kind, cudaStream_t st) {
    if (timed.n >= TIMED_MAX) {
        timed.dropped++;
        return -1;
    }
    int i = timed.n++;
    timed.kind[i] = kind;
    CUDA_OK(cudaEventRecord(timed.begin[i], st));
    return i;
}

static void timed_end(int i, cudaStream_t st) {
    if (i >= 0) CUDA_OK(cudaEventRecord(timed.end[i], st));
}

int coll_nccl_init(ranks_t *r, void *stream, char *err, size_t errlen) {
    if (!r->world || !r->sp || !r->dp) return asp_errf(err, errlen, "coll_nccl_init: form the groups first (par_set_groups)");
    nccl_stream = (cudaStream_t)stream;
    /* the communication stream gets the highest priority, so a reduction
     * starts as soon as its bucket is ready instead of queueing behind the
     * backward's kernels */
    int lo = 0, hi = 0;
    CUDA_OK(cudaDeviceGetStreamPriorityRange(&lo, &hi));
    CUDA_OK(cudaStreamCreateWithPriority(&nccl_side, cudaStreamNonBlocking, hi));
    CUDA_OK(cudaEventCreateWithFlags(&side_fork, cudaEventDisableTiming));
    CUDA_OK(cudaEventCreateWithFlags(&side_join_ev, cudaEventDisableTiming));
    for (int i = 0; i < TIMED_MAX; i++) {
        CUDA_OK(cudaEventCreate(&timed.begin[i]));
        CUDA_OK(cudaEventCreate(&timed.end[i]));
    }
    comm_nccl_free_hook = nccl_free;
    comm_add_nccl(r->world);
    comm_add_nccl(r->sp);
    comm_add_nccl(r->dp);
    nccl_comms[0] = r->world;
    nccl_comms[1] = r->sp;
    nccl_comms[2] = r->dp;
    nccl_world_rank = r->world_rank;
    nccl_timeout_s = asp_env_double("ASP_NCCL_TIMEOUT", 600.0, 1e-3, 1e9);
    return 0;
}

/* Abort every communicator so peers blocked in a collective fail too, then
 * end the job (asp_die aborts MPI, so no rank is left waiting). */
static void nccl_fail(const char *what) {
    for (int i = 0; i < 3; i++)
        if (nccl_comms[i] && nccl_comms[i]->nccl) ncclCommAbort((ncclComm_t)nccl_comms[i]->nccl);
    for (int i = 0; i < 3; i++)
        if (nccl_comms[i]) nccl_comms[i]->nccl = NULL;
    asp_die(ASP_EXIT_FAILURE, "rank %d: %s (last collective issued: %s); communicators aborted", nccl_world_rank,
            what, nccl_last_op);
}

static void nccl_wait(void) {
    double start = asp_now();
    for (;;) {
        cudaError_t q = cudaStreamQuery(nccl_stream);
        if (q == cudaSuccess) q = cudaStreamQuery(nccl_side);
        if (q == cudaSuccess) return;
        if (q != cudaErrorNotReady) {
            char msg[256];
            snprintf(msg, sizeof msg, "CUDA error while waiting for the step: %s", cudaGetErrorString(q));
            nccl_fail(msg);
        }
        for (int i = 0; i < 3; i++) {
            if (!nccl_comms[i] || !nccl_comms[i]->nccl) continue;
            ncclResult_t async = ncclSuccess;
            ncclResult_t rc = ncclCommGetAsyncError((ncclComm_t)nccl_comms[i]->nccl, &async);
            if (rc != ncclSuccess || async != ncclSuccess) {
                char msg[512];
                snprintf(msg, sizeof msg, "NCCL asynchronous error on the %s communicator: %s (%s)",
                         i == 0 ? "world" : i == 1 ? "SP" : "DP", ncclGetErrorString(rc != ncclSuccess ? rc : async),
                         ncclGetLastError(NULL));
                nccl_fail(msg);
            }
        }
        if (asp_now() - start > nccl_timeout_s) {
            char msg[256];
            snprintf(msg, sizeof msg, "no progress for %.0f s (a peer is gone or hung; ASP_NCCL_TIMEOUT sets the limit)",
                     nccl_timeout_s);
            nccl_fail(msg);
        }
        coll_host_service();   /* stay answerable to the host collectives' liveness checks */
        struct timespec ts = {0, 100000}; /* 0.1 ms: polling costs nothing measurable */
        nanosleep(&ts, NULL);
    }
}

static void nccl_allreduce(comm_t *c, void *buf, size_t count, dtype_t t) {
    nccl_last_op = "ncclAllReduce";
    if (count) NCCL_CHECK(ncclAllReduce(buf, buf, count, nccl_type(t), ncclSum, nccl_of(c), nccl_stream));
}

static void nccl_reduce_scatter(comm_t *c, const void *send, void *recv, size_t count, dtype_t t) {
    nccl_last_op = "ncclReduceScatter";
    if (count) NCCL_CHECK(ncclReduceScatter(send, recv, count, nccl_type(t), ncclSum, nccl_of(c), nccl_stream));
}

static void nccl_allgather(comm_t *c, const void *send, void *recv, size_t count, dtype_t t) {
    nccl_last_op = "ncclAllGather";
    if (count) NCCL_CHECK(ncclAllGather(send, recv, count, nccl_type(t), nccl_of(c), nccl_stream));
}

/* Block j of send goes to rank j; grouped point-to-point (NCCL's own
 * all-to-all is the same underneath). */
static void nccl_alltoall(comm_t *c, const void *send, void *recv, size_t count, dtype_t t) {
    nccl_last_op = "all-to-all (ncclSend/ncclRecv)";
    if (!count) return;
    size_t bytes = count * dtype_size(t);
    ncclComm_t nc = nccl_of(c);
    int ti = timed_begin(TIMED_A2A, nccl_stream);
    NCCL_CHECK(ncclGroupStart());
    for (int j = 0; j < c->size; j++) {
        NCCL_CHECK(ncclSend((const char *)send + (size_t)j * bytes, count, nccl_type(t), j, nc, nccl_stream));
        NCCL_CHECK(ncclRecv((char *)recv + (size_t)j * bytes, count, nccl_type(t), j, nc, nccl_stream));
    }
    NCCL_CHECK(ncclGroupEnd());
    timed_end(ti, nccl_stream);
}

/* The side stream starts after everything issued so far on the compute stream. */
static void side_fork_now(void) {
    CUDA_OK(cudaEventRecord(side_fork, nccl_stream));
    CUDA_OK(cudaStreamWaitEvent(nccl_side, side_fork, 0));
    side_pending++;
}

static void nccl_reduce_scatter_async(comm_t *c, void *buf, size_t count, dtype_t t) {
    if (!count || c->size == 1) return;
    nccl_last_op = "ncclReduceScatter (gradient bucket)";
    side_fork_now();
    int ti = timed_begin(TIMED_GRAD, nccl_side);
    char *mine = (char *)buf + (size_t)c->rank * count * dtype_size(t);
    NCCL_CHECK(ncclReduceScatter(buf, mine, count, nccl_type(t), ncclSum, nccl_of(c), nccl_side));
    timed_end(ti, nccl_side);
}

static void nccl_allreduce_async(comm_t *c, void *buf, size_t count, dtype_t t) {
    if (!count || c->size == 1) return;
    nccl_last_op = "ncclAllReduce (gradient bucket)";
    side_fork_now();
    int ti = timed_begin(TIMED_GRAD, nccl_side);
    NCCL_CHECK(ncclAllReduce(buf, buf, count, nccl_type(t), ncclSum, nccl_of(c), nccl_side));
    timed_end(ti, nccl_side);
}

/* The compute stream waits for the side stream. The timed pair spans from
 * the moment the compute stream reaches the join to the end of the side
 * stream's work: the communication the backward did not hide. */
static void nccl_join(void) {
    if (!side_pending) return;
    side_pending = 0;
    int ti = timed_begin(TIMED_EXPOSED, nccl_stream);
    CUDA_OK(cudaEventRecord(side_join_ev, nccl_side));
    CUDA_OK(cudaStreamWaitEvent(nccl_stream, side_join_ev, 0));
    timed_end(ti, nccl_stream);
}

static void nccl_take_times(coll_times_t *out) {
    memset(out, 0, sizeof *out);
    for (int i = 0; i < timed.n; i++) {
        float ms = 0;
        /* an unfinished pair (the caller did not wait) is left out */
        if (cudaEventElapsedTime(&ms, timed.begin[i], timed.end[i]) != cudaSuccess) {
            (void)cudaGetLastError();
            continue;
        }
        double sec = ms > 0 ? ms / 1e3 : 0;
        if (timed.kind[i] == TIMED_A2A) out->a2a_s += sec;
        else if (timed.kind[i] == TIMED_GRAD) out->grad_s += sec;
        else out->grad_exposed_s += sec;
    }
    timed.n = 0;
    timed.dropped = 0;
}

static void nccl_bcast(comm_t *c, void *buf, size_t count, dtype_t t, int root) {
    nccl_last_op = "ncclBroadcast";
    if (count) NCCL_CHECK(ncclBroadcast(buf, buf, count, nccl_type(t), root, nccl_of(c), nccl_stream));
}

static void nccl_barrier(comm_t *c) {
    if (cudaStreamSynchronize(nccl_stream) != cudaSuccess)
        asp_die(ASP_EXIT_FAILURE, "cudaStreamSynchronize failed in the NCCL barrier");
#ifdef HAVE_MPI
    if (c->size > 1) MPI_CHECK(MPI_Barrier(c->mpi));
#endif
}

static void nccl_allgather_async(comm_t *c, const void *send, void *recv, size_t count, dtype_t t) {
    if (!count) return;
    nccl_last_op = "ncclAllGather (weight bucket)";
    side_fork_now();
    int ti = timed_begin(TIMED_GRAD, nccl_side);
    NCCL_CHECK(ncclAllGather(send, recv, count, nccl_type(t), nccl_of(c), nccl_side));
    timed_end(ti, nccl_side);
}

static void nccl_to_host_async(void *host, const void *src, size_t bytes) {
    if (!bytes) return;
    side_fork_now();
    CUDA_OK(cudaMemcpyAsync(host, src, bytes, cudaMemcpyDeviceToHost, nccl_side));
}

static void nccl_to_device_async(void *dst, const void *host, size_t bytes) {
    if (!bytes) return;
    side_pending++;
    CUDA_OK(cudaMemcpyAsync(dst, host, bytes, cudaMemcpyHostToDevice, nccl_side));
}

/* Tickets are events recorded on the side stream, from a ring: a ticket
 * older than the ring is answered by a later event (waiting longer than
 * needed, never less). */
#define MARKS 256
static cudaEvent_t marks[MARKS];
static long long marks_issued;

static long long nccl_mark(void) {
    if (!marks[0])
        for (int i = 0; i < MARKS; i++) CUDA_OK(cudaEventCreateWithFlags(&marks[i], cudaEventDisableTiming));
    long long t = marks_issued++;
    CUDA_OK(cudaEventRecord(marks[t % MARKS], nccl_side));
    side_pending++;
    return t;
}

static void nccl_wait_mark(long long t) {
    if (t < 0 || t >= marks_issued) asp_die(ASP_EXIT_FAILURE, "internal: wait for ticket %lld of %lld", t, marks_issued);
    CUDA_OK(cudaStreamWaitEvent(nccl_stream, marks[t % MARKS], 0));
}

static void nccl_sync_mark(long long t) {
    if (t < 0 || t >= marks_issued) asp_die(ASP_EXIT_FAILURE, "internal: wait for ticket %lld of %lld", t, marks_issued);
    double start = asp_now();
    for (;;) {
        cudaError_t q = cudaEventQuery(marks[t % MARKS]);
        if (q == cudaSuccess) return;
        if (q != cudaErrorNotReady) {
            char msg[256];
            snprintf(msg, sizeof msg, "CUDA error in the bucket pipeline: %s", cudaGetErrorString(q));
            nccl_fail(msg);
        }
        if (asp_now() - start > nccl_timeout_s) {
            char msg[256];
            snprintf(msg, sizeof msg, "no progress for %.0f s in the bucket pipeline (a peer is gone or hung; "
                     "ASP_NCCL_TIMEOUT sets the limit)", nccl_timeout_s);
            nccl_fail(msg);
        }
        struct timespec ts = {0, 50000};
        nanosleep(&ts, NULL);
    }
}

const coll_ops_t coll_nccl = {
    .name = "nccl",
    .allreduce_sum = nccl_allreduce,
    .reduce_scatter_sum = nccl_reduce_scatter,
    .allgather = nccl_allgather,
    .alltoall = nccl_alltoall,
    .bcast = nccl_bcast,
    .barrier = nccl_barrier,
    .wait = nccl_wait,
    .reduce_scatter_async = nccl_reduce_scatter_async,
    .allreduce_async = nccl_allreduce_async,
    .join = nccl_join,
    .take_times = nccl_take_times,
    .allgather_async = nccl_allgather_async,
    .to_host_async = nccl_to_host_async,
    .to_device_async = nccl_to_device_async,
    .mark = nccl_mark,
    .wait_mark = nccl_wait_mark,
    .sync_mark = nccl_sync_mark,
};
#endif
