/* Collectives on GPU buffers through NCCL, on the backend's stream. */
#include "autosp_config.h"

#ifdef HAVE_CUDA
#include <cuda_runtime.h>
#include <nccl.h>
#include <string.h>

#include "par_internal.h"
#include "util.h"

static cudaStream_t nccl_stream;

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

int coll_nccl_init(ranks_t *r, void *stream, char *err, size_t errlen) {
    if (!r->world || !r->sp || !r->dp) return asp_errf(err, errlen, "coll_nccl_init: form the groups first (par_set_groups)");
    nccl_stream = (cudaStream_t)stream;
    comm_nccl_free_hook = nccl_free;
    comm_add_nccl(r->world);
    comm_add_nccl(r->sp);
    comm_add_nccl(r->dp);
    return 0;
}

static void nccl_allreduce(comm_t *c, void *buf, size_t count, dtype_t t) {
    if (count) NCCL_CHECK(ncclAllReduce(buf, buf, count, nccl_type(t), ncclSum, nccl_of(c), nccl_stream));
}

static void nccl_reduce_scatter(comm_t *c, const void *send, void *recv, size_t count, dtype_t t) {
    if (count) NCCL_CHECK(ncclReduceScatter(send, recv, count, nccl_type(t), ncclSum, nccl_of(c), nccl_stream));
}

static void nccl_allgather(comm_t *c, const void *send, void *recv, size_t count, dtype_t t) {
    if (count) NCCL_CHECK(ncclAllGather(send, recv, count, nccl_type(t), nccl_of(c), nccl_stream));
}

/* Block j of send goes to rank j; grouped point-to-point (NCCL's own
 * all-to-all is the same underneath). */
static void nccl_alltoall(comm_t *c, const void *send, void *recv, size_t count, dtype_t t) {
    if (!count) return;
    size_t bytes = count * dtype_size(t);
    ncclComm_t nc = nccl_of(c);
    NCCL_CHECK(ncclGroupStart());
    for (int j = 0; j < c->size; j++) {
        NCCL_CHECK(ncclSend((const char *)send + (size_t)j * bytes, count, nccl_type(t), j, nc, nccl_stream));
        NCCL_CHECK(ncclRecv((char *)recv + (size_t)j * bytes, count, nccl_type(t), j, nc, nccl_stream));
    }
    NCCL_CHECK(ncclGroupEnd());
}

static void nccl_bcast(comm_t *c, void *buf, size_t count, dtype_t t, int root) {
    if (count) NCCL_CHECK(ncclBroadcast(buf, buf, count, nccl_type(t), root, nccl_of(c), nccl_stream));
}

static void nccl_barrier(comm_t *c) {
    if (cudaStreamSynchronize(nccl_stream) != cudaSuccess)
        asp_die(ASP_EXIT_FAILURE, "cudaStreamSynchronize failed in the NCCL barrier");
#ifdef HAVE_MPI
    if (c->size > 1) MPI_CHECK(MPI_Barrier(c->mpi));
#endif
}

const coll_ops_t coll_nccl = {
    .name = "nccl",
    .allreduce_sum = nccl_allreduce,
    .reduce_scatter_sum = nccl_reduce_scatter,
    .allgather = nccl_allgather,
    .alltoall = nccl_alltoall,
    .bcast = nccl_bcast,
    .barrier = nccl_barrier,
};
#endif
