/* Collectives on host memory: MPI when the communicator has several ranks,
 * plain copies when it has one. MPI counts are int, so a transfer above the
 * limit (INT_MAX elements) is split into pieces. */
#include "par_internal.h"

#include <limits.h>
#include <stdio.h>
#include <stdlib.h>
#include <stdint.h>
#include <string.h>
#include <time.h>

#include "util.h"

static size_t max_count = INT_MAX;

size_t coll_host_set_max_count(size_t m) {
    size_t old = max_count;
    max_count = (m == 0 || m > INT_MAX) ? INT_MAX : m;
    return old;
}

static void need_sum_type(const char *op, dtype_t t) {
    if (t != DT_F32 && t != DT_F64 && t != DT_I32)
        asp_die(ASP_EXIT_FAILURE,
                "host %s over %s buffers is not supported (fp32, fp64 and int32 only); convert to fp32 "
                "first or use the device collectives",
                op, dtype_name(t));
}

static size_t elem_size(const char *op, dtype_t t) {
    size_t es = dtype_size(t);
    if (es == 0) asp_die(ASP_EXIT_FAILURE, "host %s: unknown element type %d", op, (int)t);
    return es;
}

/* [a, a+an) and [b, b+bn) share a byte */
static int overlap(const void *a, size_t an, const void *b, size_t bn) {
    uintptr_t x = (uintptr_t)a, y = (uintptr_t)b;
    return an && bn && x < y + bn && y < x + an;
}

static void die_overlap(const char *op, const char *how) {
    asp_die(ASP_EXIT_FAILURE, "host %s: send and receive buffers overlap (%s); use separate buffers", op, how);
}

#ifdef HAVE_MPI
static MPI_Datatype mpi_type(dtype_t t) {
    switch (t) {
    case DT_F32: return MPI_FLOAT;
    case DT_F64: return MPI_DOUBLE;
    case DT_I32: return MPI_INT32_T;
    case DT_BF16: return MPI_UINT16_T;      /* moved as opaque 2-byte elements */
    case DT_U8: return MPI_UINT8_T;
    }
    return MPI_DATATYPE_NULL;
}

/* n elements followed by a gap: consecutive items lie `stride` elements
 * apart, so a piece of every rank's block moves in one call with int counts
 * while the byte stride stays 64-bit (MPI_Aint). */
static MPI_Datatype strided_block(MPI_Datatype base, size_t n, size_t stride, size_t es) {
    MPI_Datatype blk, res;
    MPI_CHECK(MPI_Type_contiguous((int)n, base, &blk));
    MPI_CHECK(MPI_Type_create_resized(blk, 0, (MPI_Aint)(stride * es), &res));
    MPI_CHECK(MPI_Type_commit(&res));
    MPI_CHECK(MPI_Type_free(&blk));
    return res;
}
#endif

#ifdef HAVE_MPI
/* ------------------------------------------------------------------ deadline
 *
 * Every host collective is started non-blocking and polled. While it waits,
 * a rank answers "are you there?" pings from its peers on a private copy of
 * the world communicator. When a wait passes ASP_MPI_TIMEOUT seconds, the
 * rank pings every peer: a peer that answers is alive (busy, or waiting
 * too), and the wait goes on; one that stays silent for the grace period is
 * stopped or hung, and the job ends with a message naming it, instead of
 * waiting forever. */
enum { TAG_PING = 1, TAG_PONG = 2 };
static MPI_Comm ping_comm = MPI_COMM_NULL;
static MPI_Request ping_req = MPI_REQUEST_NULL;
static int ping_buf, ping_rank, ping_size;
static double host_timeout_s = 600;

void coll_host_watch_init(MPI_Comm world) {
    host_timeout_s = asp_env_double("ASP_MPI_TIMEOUT", 600, 1e-3, 1e9);
    MPI_CHECK(MPI_Comm_dup(world, &ping_comm));
    MPI_CHECK(MPI_Comm_set_errhandler(ping_comm, MPI_ERRORS_RETURN));
    MPI_CHECK(MPI_Comm_rank(ping_comm, &ping_rank));
    MPI_CHECK(MPI_Comm_size(ping_comm, &ping_size));
    MPI_CHECK(MPI_Irecv(&ping_buf, 1, MPI_INT, MPI_ANY_SOURCE, TAG_PING, ping_comm, &ping_req));
}

void coll_host_watch_fini(void) {
    if (ping_comm == MPI_COMM_NULL) return;
    if (ping_req != MPI_REQUEST_NULL) {
        MPI_Cancel(&ping_req);
        MPI_Wait(&ping_req, MPI_STATUS_IGNORE);
    }
    MPI_Comm_free(&ping_comm);
    ping_comm = MPI_COMM_NULL;
}

/* Answer the pings that have arrived (a pong echoes the ping's number). */
static void service_pings(void) {
    if (ping_comm == MPI_COMM_NULL) return;
    for (;;) {
        int done = 0;
        MPI_Status st;
        MPI_CHECK(MPI_Test(&ping_req, &done, &st));
        if (!done) return;
        int seq = ping_buf;
        MPI_CHECK(MPI_Send(&seq, 1, MPI_INT, st.MPI_SOURCE, TAG_PONG, ping_comm));   /* one int: sent eagerly */
        MPI_CHECK(MPI_Irecv(&ping_buf, 1, MPI_INT, MPI_ANY_SOURCE, TAG_PING, ping_comm, &ping_req));
    }
}

/* Ping every peer and wait up to `grace` s for the answers; the ranks that
 * stayed silent are listed in `out`. Returns how many. */
static int probe_peers(double grace, char *out, size_t outlen) {
    static int seq = 0;
    int n = ping_size, silent = 0;
    MPI_Request *rq = asp_calloc((size_t)n, sizeof *rq, "ping requests");
    int *send = asp_calloc((size_t)n, sizeof *send, "ping numbers"), *got = asp_calloc((size_t)n, sizeof *got, "pongs");
    seq++;
    for (int p = 0; p < n; p++) {
        rq[p] = MPI_REQUEST_NULL;
        if (p == ping_rank) continue;
        send[p] = seq;
        MPI_CHECK(MPI_Send(&send[p], 1, MPI_INT, p, TAG_PING, ping_comm));
        MPI_CHECK(MPI_Irecv(&got[p], 1, MPI_INT, p, TAG_PONG, ping_comm, &rq[p]));
    }
    double until = asp_now() + grace;
    int pending = n - 1;
    while (pending > 0 && asp_now() < until) {
        service_pings();
        pending = 0;
        for (int p = 0; p < n; p++) {
            if (rq[p] == MPI_REQUEST_NULL) continue;
            int done = 0;
            MPI_CHECK(MPI_Test(&rq[p], &done, MPI_STATUS_IGNORE));
            /* a late pong of an earlier probe: wait for this one's */
            if (done && got[p] != seq) MPI_CHECK(MPI_Irecv(&got[p], 1, MPI_INT, p, TAG_PONG, ping_comm, &rq[p]));
            else if (!done) pending++;
        }
        struct timespec ts = {0, 1000000};
        nanosleep(&ts, NULL);
    }
    out[0] = 0;
    size_t at = 0;
    for (int p = 0; p < n; p++) {
        if (rq[p] == MPI_REQUEST_NULL) continue;
        silent++;
        if (at + 16 < outlen) at += (size_t)snprintf(out + at, outlen - at, "%s%d", at ? ", " : "", p);
        /* its pong may still come: the job ends anyway, so the receive is
         * left posted (cancelling a receive from a stopped rank can block) */
    }
    free(rq);
    free(send);
    free(got);
    return silent;
}

/* Wait for a non-blocking host collective against the deadline. */
static void host_wait(MPI_Request *req, const char *what) {
    double start = asp_now(), check_at = start + host_timeout_s;
    long spins = 0;
    for (;;) {
        int done = 0;
        MPI_CHECK(MPI_Test(req, &done, MPI_STATUS_IGNORE));
        if (done) return;
        service_pings();
        double now = asp_now();
        if (now >= check_at) {
            double grace = host_timeout_s < 20 ? host_timeout_s / 2 : 10;
            char who[512];
            int silent = probe_peers(grace, who, sizeof who);
            if (silent)
                asp_die(ASP_EXIT_FAILURE, "host %s waited %.0f s and world rank%s %s did not answer for %.0f s (stopped, "
                        "hung or its node is gone); ending the job (ASP_MPI_TIMEOUT=%g s sets when ranks are checked)",
                        what, asp_now() - start, silent > 1 ? "s" : "", who, grace, host_timeout_s);
            check_at = asp_now() + host_timeout_s;   /* every peer is alive: busy, so wait on */
        }
        /* spin briefly (the CPU engine's all-to-alls are short), then poll gently */
        if (++spins > 20000) {
            struct timespec ts = {0, 100000};
            nanosleep(&ts, NULL);
        }
    }
}

void coll_host_service(void) { service_pings(); }
#else
void coll_host_service(void) {}
#endif

#ifndef HAVE_MPI
/* unreachable in practice: without MPI par_init only makes single-rank communicators */
static void no_mpi(const char *op, const comm_t *c) {
    asp_die(ASP_EXIT_FAILURE, "host %s on a communicator of %d ranks, but this build has no MPI; rebuild with MPI",
            op, c->size);
}
#endif

static void h_allreduce_sum(comm_t *c, void *buf, size_t count, dtype_t t) {
    need_sum_type("allreduce_sum", t);
    if (c->size == 1 || count == 0) return;
#ifdef HAVE_MPI
    size_t es = dtype_size(t);
    for (size_t off = 0; off < count; off += max_count) {
        size_t n = count - off < max_count ? count - off : max_count;
        MPI_Request rq;
        MPI_CHECK(MPI_Iallreduce(MPI_IN_PLACE, (char *)buf + off * es, (int)n, mpi_type(t), MPI_SUM, c->mpi, &rq));
        host_wait(&rq, "allreduce");
    }
#else
    no_mpi("allreduce_sum", c);
#endif
}

static void h_reduce_scatter_sum(comm_t *c, const void *send, void *recv, size_t count, dtype_t t) {
    need_sum_type("reduce_scatter_sum", t);
    size_t es = dtype_size(t);
    if (c->size == 1) {
        if (send != recv) memmove(recv, send, count * es);
        return;
    }
    if (count == 0) return;
    if (overlap(send, (size_t)c->size * count * es, recv, count * es))
        die_overlap("reduce_scatter_sum", "the result may not alias the input");
#ifdef HAVE_MPI
    if (count <= max_count) {
        MPI_Request rq;
        MPI_CHECK(MPI_Ireduce_scatter_block(send, recv, (int)count, mpi_type(t), MPI_SUM, c->mpi, &rq));
        host_wait(&rq, "reduce-scatter");
        return;
    }
    /* Pieces of every rank's block are not contiguous, and predefined
     * reductions take only basic types, so each piece is reduced to its
     * owner. Only reached above the int limit. */
    for (size_t off = 0; off < count; off += max_count) {
        size_t n = count - off < max_count ? count - off : max_count;
        for (int j = 0; j < c->size; j++) {
            const char *src = (const char *)send + ((size_t)j * count + off) * es;
            void *dst = j == c->rank ? (char *)recv + off * es : NULL;
            MPI_Request rq;
            MPI_CHECK(MPI_Ireduce(src, dst, (int)n, mpi_type(t), MPI_SUM, j, c->mpi, &rq));
            host_wait(&rq, "reduce");
        }
    }
#else
    no_mpi("reduce_scatter_sum", c);
#endif
}

/* Time spent in communication calls: they are synchronous on the host, so
 * all of it is exposed. */
static coll_times_t h_times;

static void h_reduce_scatter_async(comm_t *c, void *buf, size_t count, dtype_t t) {
    need_sum_type("reduce_scatter_async", t);
    if (c->size == 1 || count == 0) return;
    double t0 = asp_now();
#ifdef HAVE_MPI
    size_t es = dtype_size(t);
    char *mine = (char *)buf + (size_t)c->rank * count * es;
    if (count <= max_count) {
        /* in place, MPI puts the result at the start of the buffer */
        MPI_Request rq;
        MPI_CHECK(MPI_Ireduce_scatter_block(MPI_IN_PLACE, buf, (int)count, mpi_type(t), MPI_SUM, c->mpi, &rq));
        host_wait(&rq, "reduce-scatter");
        memmove(mine, buf, count * es);
    } else {
        /* each piece of every block reduced to its owner, in place there */
        for (size_t off = 0; off < count; off += max_count) {
            size_t n = count - off < max_count ? count - off : max_count;
            for (int j = 0; j < c->size; j++) {
                char *piece = (char *)buf + ((size_t)j * count + off) * es;
                MPI_Request rq;
                MPI_CHECK(MPI_Ireduce(j == c->rank ? MPI_IN_PLACE : piece, j == c->rank ? piece : NULL, (int)n,
                                      mpi_type(t), MPI_SUM, j, c->mpi, &rq));
                host_wait(&rq, "reduce");
            }
        }
    }
#else
    (void)buf;
    no_mpi("reduce_scatter_async", c);
#endif
    double dt = asp_now() - t0;
    h_times.grad_s += dt;
    h_times.grad_exposed_s += dt;
}

static void h_allreduce_async(comm_t *c, void *buf, size_t count, dtype_t t) {
    double t0 = asp_now();
    h_allreduce_sum(c, buf, count, t);
    double dt = asp_now() - t0;
    h_times.grad_s += dt;
    h_times.grad_exposed_s += dt;
}

static void h_take_times(coll_times_t *out) {
    *out = h_times;
    memset(&h_times, 0, sizeof h_times);
}

static void h_allgather(comm_t *c, const void *send, void *recv, size_t count, dtype_t t) {
    size_t es = elem_size("allgather", t);
    const char *mine = (const char *)recv + (size_t)c->rank * count * es;
    int in_place = (const char *)send == mine;
    if (c->size == 1) {
        if (!in_place) memmove(recv, send, count * es);
        return;
    }
    if (count == 0) return;
    if (!in_place && overlap(send, count * es, recv, (size_t)c->size * count * es))
        die_overlap("allgather", "in place needs send == recv + rank * count");
#ifdef HAVE_MPI
    MPI_Datatype base = mpi_type(t);
    if (count <= max_count) {
        MPI_Request rq;
        MPI_CHECK(MPI_Iallgather(in_place ? MPI_IN_PLACE : send, (int)count, base, recv, (int)count, base, c->mpi, &rq));
        host_wait(&rq, "allgather");
        return;
    }
    for (size_t off = 0; off < count; off += max_count) {
        size_t n = count - off < max_count ? count - off : max_count;
        MPI_Datatype blk = strided_block(base, n, count, es);
        MPI_Request rq;
        MPI_CHECK(MPI_Iallgather(in_place ? MPI_IN_PLACE : (const char *)send + off * es, (int)n, base,
                                 (char *)recv + off * es, 1, blk, c->mpi, &rq));
        host_wait(&rq, "allgather");
        MPI_CHECK(MPI_Type_free(&blk));
    }
#else
    no_mpi("allgather", c);
#endif
}

static void h_alltoall_impl(comm_t *c, const void *send, void *recv, size_t count, dtype_t t);

static void h_alltoall(comm_t *c, const void *send, void *recv, size_t count, dtype_t t) {
    double t0 = asp_now();
    h_alltoall_impl(c, send, recv, count, t);
    h_times.a2a_s += asp_now() - t0;
}

static void h_alltoall_impl(comm_t *c, const void *send, void *recv, size_t count, dtype_t t) {
    size_t es = elem_size("alltoall", t);
    size_t total = (size_t)c->size * count * es;
    int in_place = send == recv;
    if (c->size == 1) {
        if (!in_place) memmove(recv, send, count * es);
        return;
    }
    if (count == 0) return;
    if (!in_place && overlap(send, total, recv, total))
        die_overlap("alltoall", "in place needs send == recv");
#ifdef HAVE_MPI
    MPI_Datatype base = mpi_type(t);
    if (count <= max_count) {
        MPI_Request rq;
        MPI_CHECK(MPI_Ialltoall(in_place ? MPI_IN_PLACE : send, (int)count, base, recv, (int)count, base, c->mpi, &rq));
        host_wait(&rq, "all-to-all");
        return;
    }
    for (size_t off = 0; off < count; off += max_count) {
        size_t n = count - off < max_count ? count - off : max_count;
        MPI_Datatype blk = strided_block(base, n, count, es);
        MPI_Request rq;
        MPI_CHECK(MPI_Ialltoall(in_place ? MPI_IN_PLACE : (const char *)send + off * es, 1, blk,
                                (char *)recv + off * es, 1, blk, c->mpi, &rq));
        host_wait(&rq, "all-to-all");
        MPI_CHECK(MPI_Type_free(&blk));
    }
#else
    no_mpi("alltoall", c);
#endif
}

static void h_bcast(comm_t *c, void *buf, size_t count, dtype_t t, int root) {
    size_t es = elem_size("bcast", t);
    if (root < 0 || root >= c->size)
        asp_die(ASP_EXIT_FAILURE, "host bcast: root %d outside a communicator of %d ranks", root, c->size);
    if (c->size == 1 || count == 0) return;
#ifdef HAVE_MPI
    for (size_t off = 0; off < count; off += max_count) {
        size_t n = count - off < max_count ? count - off : max_count;
        MPI_Request rq;
        MPI_CHECK(MPI_Ibcast((char *)buf + off * es, (int)n, mpi_type(t), root, c->mpi, &rq));
        host_wait(&rq, "broadcast");
    }
#else
    (void)buf;
    (void)es;
    no_mpi("bcast", c);
#endif
}

static void h_barrier(comm_t *c) {
    if (c->size == 1) return;
#ifdef HAVE_MPI
    MPI_Request rq;
    MPI_CHECK(MPI_Ibarrier(c->mpi, &rq));
    host_wait(&rq, "barrier");
#else
    no_mpi("barrier", c);
#endif
}

/* The bucket pipeline on host memory: every call completes at once. */
static void h_allgather_async(comm_t *c, const void *send, void *recv, size_t count, dtype_t t) {
    double t0 = asp_now();
    h_allgather(c, send, recv, count, t);
    h_times.grad_s += asp_now() - t0;
}
static void h_copy(void *dst, const void *src, size_t bytes) {
    if (bytes && dst != src) memmove(dst, src, bytes);
}
static long long h_mark(void) { return 0; }
static void h_no_wait(long long ticket) { (void)ticket; }

const coll_ops_t coll_host = {
    .name = "host",
    .allreduce_sum = h_allreduce_sum,
    .reduce_scatter_sum = h_reduce_scatter_sum,
    .allgather = h_allgather,
    .alltoall = h_alltoall,
    .bcast = h_bcast,
    .barrier = h_barrier,
    .reduce_scatter_async = h_reduce_scatter_async,
    .allreduce_async = h_allreduce_async,
    .join = NULL,
    .take_times = h_take_times,
    .allgather_async = h_allgather_async,
    .to_host_async = h_copy,
    .to_device_async = h_copy,
    .mark = h_mark,
    .wait_mark = h_no_wait,
    .sync_mark = h_no_wait,
};
