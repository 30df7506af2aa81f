/* Host collectives and rank groups, run by tests/test_mpi_coll.sh.
 *
 *   test_mpi_coll single   a process without a launcher: one rank, no MPI
 *   test_mpi_coll mpi      under mpirun: every collective on the world, SP
 *                          and DP communicators against values each rank
 *                          computes itself from every rank's data
 *
 * Under MPI a failed assertion on one rank must not leave the others waiting
 * in a collective, so each test finishes all its collectives first, then the
 * ranks agree on the failure count and only then assert. */
#include "autosp_config.h"

#include <check.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#ifdef HAVE_MPI
#include <mpi.h>
#endif

#include "parallel/par_internal.h"
#include "parallel/parallel.h"
#include "testutil.h"
#include "util.h"

static ranks_t R;
static char err[1024];

/* ------------------------------------------------------------ helpers */

static int n_bad;
static char first_bad[512];

#define EXPECT(cond, ...)                                                        \
    do {                                                                         \
        if (!(cond) && n_bad++ == 0) snprintf(first_bad, sizeof first_bad, __VA_ARGS__); \
    } while (0)

/* all ranks reach this point; the job fails if any rank saw a mismatch */
static void agree(const char *what) {
    int32_t total = n_bad;
    coll_host.allreduce_sum(R.world, &total, 1, DT_I32);
    int mine = n_bad;
    n_bad = 0;
    ck_assert_msg(total == 0, "%s: %d mismatch(es) over all ranks; rank %d: %s", what, (int)total, R.world_rank,
                  mine ? first_bad : "none here");
}

/* Value i of world rank r's buffer (salted per use): a multiple of 1/4 in
 * [-512, 512], so fp32 sums over a few ranks are exact in any order. */
static int64_t gen(int r, size_t i, int salt) {
    trng_t g = {((uint64_t)(r + 1) << 40) ^ ((uint64_t)salt << 32) ^ i};
    return (int64_t)(trng_next(&g) % 4097) - 2048;
}

static void put(void *buf, dtype_t t, size_t i, int64_t v) {
    switch (t) {
    case DT_F32: ((float *)buf)[i] = (float)v / 4; break;
    case DT_F64: ((double *)buf)[i] = (double)v / 4; break;
    case DT_I32: ((int32_t *)buf)[i] = (int32_t)v; break;
    case DT_BF16: ((uint16_t *)buf)[i] = (uint16_t)(v & 0xffff); break;
    case DT_U8: ((uint8_t *)buf)[i] = (uint8_t)(v & 0xff); break;
    }
}

/* element as the integer it was written from (sums: v1 + v2 + ...) */
static int64_t get(const void *buf, dtype_t t, size_t i) {
    switch (t) {
    case DT_F32: return (int64_t)(((const float *)buf)[i] * 4);
    case DT_F64: return (int64_t)(((const double *)buf)[i] * 4);
    case DT_I32: return ((const int32_t *)buf)[i];
    case DT_BF16: return ((const uint16_t *)buf)[i];
    case DT_U8: return ((const uint8_t *)buf)[i];
    }
    return 0;
}

/* the value `get` returns for a moved (not summed) element */
static int64_t moved(dtype_t t, int64_t v) {
    if (t == DT_BF16) return v & 0xffff;
    if (t == DT_U8) return v & 0xff;
    return v;
}

enum { WORLD, SP, DP };

/* world rank of member j of this rank's communicator `which`, from the
 * layout rule (SP: contiguous blocks; DP: same sp_rank) */
static int member(int which, int j) {
    if (which == SP) return R.dp_rank * R.sp_size + j;
    if (which == DP) return j * R.sp_size + R.sp_rank;
    return j;
}

static comm_t *comm_of(int which) { return which == SP ? R.sp : which == DP ? R.dp : R.world; }
static const char *comm_name(int which) { return which == SP ? "sp" : which == DP ? "dp" : "world"; }

/* ------------------------------------------------------------ collectives */

static void check_allreduce(int which, dtype_t t, size_t count, int salt) {
    comm_t *c = comm_of(which);
    int P = comm_size(c);
    void *buf = malloc(count * dtype_size(t) + 1);
    for (size_t i = 0; i < count; i++) put(buf, t, i, gen(R.world_rank, i, salt));
    coll_host.allreduce_sum(c, buf, count, t);
    for (size_t i = 0; i < count; i++) {
        int64_t want = 0;
        for (int j = 0; j < P; j++) want += gen(member(which, j), i, salt);
        EXPECT(get(buf, t, i) == want, "allreduce %s %s n=%zu [%zu]: %lld, want %lld", comm_name(which),
               dtype_name(t), count, i, (long long)get(buf, t, i), (long long)want);
    }
    free(buf);
}

static void check_reduce_scatter(int which, dtype_t t, size_t count, int salt) {
    comm_t *c = comm_of(which);
    int P = comm_size(c), me = comm_rank(c);
    size_t es = dtype_size(t);
    void *send = malloc((size_t)P * count * es + 1), *recv = malloc(count * es + 1);
    for (size_t i = 0; i < (size_t)P * count; i++) put(send, t, i, gen(R.world_rank, i, salt));
    coll_host.reduce_scatter_sum(c, send, recv, count, t);
    for (size_t i = 0; i < count; i++) {
        int64_t want = 0;
        for (int j = 0; j < P; j++) want += gen(member(which, j), (size_t)me * count + i, salt);
        EXPECT(get(recv, t, i) == want, "reduce_scatter %s %s n=%zu [%zu]: %lld, want %lld", comm_name(which),
               dtype_name(t), count, i, (long long)get(recv, t, i), (long long)want);
    }
    free(send);
    free(recv);
}

/* The gradient path: in place, the reduced block lands at block `rank` of
 * the buffer (what the executor's buckets rely on). */
static void check_reduce_scatter_async(int which, dtype_t t, size_t count, int salt) {
    comm_t *c = comm_of(which);
    int P = comm_size(c), me = comm_rank(c);
    size_t es = dtype_size(t);
    void *buf = malloc((size_t)P * count * es + 1);
    for (size_t i = 0; i < (size_t)P * count; i++) put(buf, t, i, gen(R.world_rank, i, salt));
    coll_host.reduce_scatter_async(c, buf, count, t);
    if (coll_host.join) coll_host.join();
    for (size_t i = 0; i < count; i++) {
        size_t at = (size_t)me * count + i;
        int64_t want = 0;
        for (int j = 0; j < P; j++) want += gen(member(which, j), at, salt);
        EXPECT(get(buf, t, at) == want, "reduce_scatter_async %s %s n=%zu [%zu]: %lld, want %lld", comm_name(which),
               dtype_name(t), count, i, (long long)get(buf, t, at), (long long)want);
    }
    free(buf);
}

static void check_allgather(int which, dtype_t t, size_t count, int in_place, int salt) {
    comm_t *c = comm_of(which);
    int P = comm_size(c), me = comm_rank(c);
    size_t es = dtype_size(t);
    char *recv = malloc((size_t)P * count * es + 1), *send = malloc(count * es + 1);
    memset(recv, 0xAB, (size_t)P * count * es);
    char *src = in_place ? recv + (size_t)me * count * es : send;
    for (size_t i = 0; i < count; i++) put(src, t, i, gen(R.world_rank, i, salt));
    coll_host.allgather(c, src, recv, count, t);
    for (int j = 0; j < P; j++)
        for (size_t i = 0; i < count; i++) {
            int64_t want = moved(t, gen(member(which, j), i, salt));
            int64_t got = get(recv, t, (size_t)j * count + i);
            EXPECT(got == want, "allgather%s %s %s n=%zu block %d [%zu]: %lld, want %lld", in_place ? " in place" : "",
                   comm_name(which), dtype_name(t), count, j, i, (long long)got, (long long)want);
        }
    free(send);
    free(recv);
}

static void check_alltoall(int which, dtype_t t, size_t count, int in_place, int salt) {
    comm_t *c = comm_of(which);
    int P = comm_size(c), me = comm_rank(c);
    size_t es = dtype_size(t), total = (size_t)P * count;
    char *send = malloc(total * es + 1), *recv = in_place ? send : malloc(total * es + 1);
    /* block j of mine (destined to rank j) holds gen(me, j * count + i) */
    for (size_t i = 0; i < total; i++) put(send, t, i, gen(R.world_rank, i, salt));
    coll_host.alltoall(c, send, recv, count, t);
    for (int j = 0; j < P; j++)
        for (size_t i = 0; i < count; i++) {
            int64_t want = moved(t, gen(member(which, j), (size_t)me * count + i, salt));
            int64_t got = get(recv, t, (size_t)j * count + i);
            EXPECT(got == want, "alltoall%s %s %s n=%zu block %d [%zu]: %lld, want %lld", in_place ? " in place" : "",
                   comm_name(which), dtype_name(t), count, j, i, (long long)got, (long long)want);
        }
    if (!in_place) free(recv);
    free(send);
}

static void check_bcast(int which, dtype_t t, size_t count, int salt) {
    comm_t *c = comm_of(which);
    int P = comm_size(c), root = P - 1;
    char *buf = malloc(count * dtype_size(t) + 1);
    for (size_t i = 0; i < count; i++) put(buf, t, i, gen(R.world_rank, i, salt));
    coll_host.bcast(c, buf, count, t, root);
    for (size_t i = 0; i < count; i++) {
        int64_t want = moved(t, gen(member(which, root), i, salt));
        EXPECT(get(buf, t, i) == want, "bcast %s %s n=%zu [%zu]: %lld, want %lld", comm_name(which), dtype_name(t),
               count, i, (long long)get(buf, t, i), (long long)want);
    }
    free(buf);
}

/* every collective, every dtype it takes, on one communicator */
static void check_all(int which, size_t count) {
    const dtype_t sums[] = {DT_F32, DT_F64, DT_I32};
    const dtype_t moves[] = {DT_F32, DT_BF16, DT_F64, DT_I32, DT_U8};
    int salt = 1;
    for (size_t k = 0; k < 3; k++) {
        check_allreduce(which, sums[k], count, salt++);
        check_reduce_scatter(which, sums[k], count, salt++);
        check_reduce_scatter_async(which, sums[k], count, salt++);
    }
    for (size_t k = 0; k < 5; k++) {
        check_allgather(which, moves[k], count, 0, salt++);
        check_allgather(which, moves[k], count, 1, salt++);
        check_alltoall(which, moves[k], count, 0, salt++);
        check_alltoall(which, moves[k], count, 1, salt++);
        check_bcast(which, moves[k], count, salt++);
    }
    coll_host.barrier(comm_of(which));
}

static void set_groups(int sp) {
    ck_assert_msg(par_set_groups(&R, sp, err, sizeof err) == 0, "%s", err);
}

START_TEST(test_launched) {
    ck_assert_int_eq(R.launched, 1);
    int init = 0;
#ifdef HAVE_MPI
    MPI_Initialized(&init);
    int size;
    MPI_Comm_size(MPI_COMM_WORLD, &size);
    ck_assert_int_eq(R.world_size, size);
#endif
    ck_assert_int_eq(init, 1);
    ck_assert_int_eq(comm_size(R.world), R.world_size);
    ck_assert_int_eq(comm_rank(R.world), R.world_rank);
    ck_assert(R.local_rank >= 0 && R.local_rank < R.local_size && R.local_size <= R.world_size);
    ck_assert_int_eq(asp_msg_rank, R.world_size > 1 ? R.world_rank : -1);
}
END_TEST

START_TEST(test_groups) {
    int W = R.world_size;
    for (int sp = 1; sp <= 4; sp *= 2) {
        if (W % sp != 0) continue;
        set_groups(sp);
        EXPECT(R.sp_size == sp && R.dp_size == W / sp, "sp %d: sizes sp %d dp %d", sp, R.sp_size, R.dp_size);
        EXPECT(R.sp_rank == R.world_rank % sp && R.dp_rank == R.world_rank / sp, "sp %d: ranks sp %d dp %d", sp,
               R.sp_rank, R.dp_rank);
        EXPECT(comm_size(R.sp) == sp && comm_rank(R.sp) == R.sp_rank, "sp %d: sp comm %d/%d", sp, comm_rank(R.sp),
               comm_size(R.sp));
        EXPECT(comm_size(R.dp) == W / sp && comm_rank(R.dp) == R.dp_rank, "sp %d: dp comm %d/%d", sp,
               comm_rank(R.dp), comm_size(R.dp));
        /* who is in my groups: gather world ranks over each communicator */
        int32_t me = R.world_rank, in_sp[8], in_dp[8];
        coll_host.allgather(R.sp, &me, in_sp, 1, DT_I32);
        coll_host.allgather(R.dp, &me, in_dp, 1, DT_I32);
        for (int j = 0; j < sp; j++)
            EXPECT(in_sp[j] == (R.world_rank / sp) * sp + j, "sp %d: SP member %d is rank %d", sp, j, in_sp[j]);
        for (int j = 0; j < W / sp; j++)
            EXPECT(in_dp[j] == j * sp + R.world_rank % sp, "sp %d: DP member %d is rank %d", sp, j, in_dp[j]);
    }
    /* a size that does not divide the world is refused on every rank */
    int bad_sp = W + 1;
    EXPECT(par_set_groups(&R, bad_sp, err, sizeof err) == -1, "sp %d accepted on %d ranks", bad_sp, W);
    EXPECT(strstr(err, "does not divide") != NULL, "message: %.400s", err);
    EXPECT(par_set_groups(&R, 0, err, sizeof err) == -1, "sp 0 accepted");
    set_groups(1);
    agree("groups");
}
END_TEST

START_TEST(test_collectives_world) {
    set_groups(1);
    size_t counts[] = {1, 3, 1000};
    for (size_t k = 0; k < 3; k++) check_all(WORLD, counts[k]);
    agree("collectives on the world");
}
END_TEST

START_TEST(test_collectives_groups) {
    for (int sp = 2; sp <= 4; sp *= 2) {
        if (R.world_size % sp != 0) continue;
        set_groups(sp);
        check_all(SP, 37);
        check_all(DP, 37);
    }
    set_groups(1);
    agree("collectives on SP and DP groups");
}
END_TEST

/* a tiny artificial int limit: every transfer goes in several pieces */
START_TEST(test_split_large_counts) {
    size_t limits[] = {1, 7};
    for (size_t k = 0; k < 2; k++) {
        coll_host_set_max_count(limits[k]);
        check_all(WORLD, 23);           /* 3 full pieces of 7 and one of 2 */
        if (R.world_size % 2 == 0) {
            set_groups(2);
            check_all(SP, 16);
            check_all(DP, 9);
            set_groups(1);
        }
    }
    coll_host_set_max_count(0);
    agree("split transfers");
}
END_TEST

/* ------------------------------------------------------------ single */

START_TEST(test_single_no_mpi) {
    ck_assert_int_eq(par_init(NULL, NULL, &R, err, sizeof err), 0);
    ck_assert_int_eq(R.launched, 0);
    ck_assert_int_eq(R.world_size, 1);
    ck_assert_int_eq(R.world_rank, 0);
    ck_assert_int_eq(R.sp_size, 1);
    ck_assert_int_eq(R.dp_size, 1);
    ck_assert_int_eq(comm_size(R.world), 1);
    ck_assert_int_eq(asp_msg_rank, -1);
    ck_assert_ptr_null(asp_abort_hook);
    ck_assert_int_eq(par_set_groups(&R, 2, err, sizeof err), -1);
    ck_assert_msg(strstr(err, "size 2 does not divide the 1 rank of") != NULL, "%s", err);
    /* collectives are copies */
    float a[6] = {1, 2, 3, 4, 5, 6}, b[6] = {0};
    coll_host.allreduce_sum(R.world, a, 6, DT_F32);
    ck_assert(a[0] == 1 && a[5] == 6);
    coll_host.reduce_scatter_sum(R.sp, a, b, 3, DT_F32);
    ck_assert(b[0] == 1 && b[2] == 3 && b[3] == 0);
    coll_host.allgather(R.dp, a + 3, b, 3, DT_F32);
    ck_assert(b[0] == 4 && b[2] == 6);
    coll_host.allgather(R.dp, b, b, 3, DT_F32);     /* in place: untouched */
    ck_assert(b[0] == 4 && b[2] == 6);
    coll_host.alltoall(R.world, a, a + 1, 4, DT_F32); /* overlapping: memmove semantics */
    ck_assert(a[1] == 1 && a[4] == 4);
    coll_host.bcast(R.world, a, 6, DT_BF16, 0);
    coll_host.barrier(R.sp);
#ifdef HAVE_MPI
    int init = 1;
    MPI_Initialized(&init);
    ck_assert_msg(init == 0, "a process without a launcher initialised MPI");
#endif
    par_finalize(&R);
}
END_TEST

START_TEST(test_single_bf16_sum_refused) {
    ck_assert_int_eq(par_init(NULL, NULL, &R, err, sizeof err), 0);
    uint16_t x[2] = {0};
    coll_host.allreduce_sum(R.world, x, 2, DT_BF16);   /* dies with exit status 1 */
}
END_TEST

START_TEST(test_single_bad_root) {
    ck_assert_int_eq(par_init(NULL, NULL, &R, err, sizeof err), 0);
    float x = 0;
    coll_host.bcast(R.world, &x, 1, DT_F32, 1);
}
END_TEST

/* inside an sbatch script SLURM_PROCID is set but no srun step runs */
START_TEST(test_single_sbatch_not_launched) {
    setenv("SLURM_PROCID", "0", 1);
    unsetenv("SLURM_STEP_ID");
    ck_assert_int_eq(par_init(NULL, NULL, &R, err, sizeof err), 0);
    ck_assert_int_eq(R.launched, 0);
#ifdef HAVE_MPI
    int init = 1;
    MPI_Initialized(&init);
    ck_assert_int_eq(init, 0);
#endif
    par_finalize(&R);
}
END_TEST

#ifndef HAVE_MPI
/* several ranks but no MPI: each would train alone, so refuse */
START_TEST(test_single_launched_without_mpi) {
    setenv("OMPI_COMM_WORLD_SIZE", "2", 1);
    setenv("OMPI_COMM_WORLD_RANK", "1", 1);
    ck_assert_int_eq(par_init(NULL, NULL, &R, err, sizeof err), -1);
    ck_assert_msg(strstr(err, "rank 1 of 2, but this build has no MPI") != NULL, "%s", err);
    ck_assert_msg(strstr(err, "rebuild with MPI") != NULL, "%s", err);
}
END_TEST
#endif

static int run_single(void) {
    Suite *su = suite_create("parallel (single process)");
    TCase *tc = tcase_create("single");
    tcase_add_test(tc, test_single_no_mpi);
    tcase_add_exit_test(tc, test_single_bf16_sum_refused, ASP_EXIT_FAILURE);
    tcase_add_exit_test(tc, test_single_bad_root, ASP_EXIT_FAILURE);
    tcase_add_test(tc, test_single_sbatch_not_launched);
#ifndef HAVE_MPI
    tcase_add_test(tc, test_single_launched_without_mpi);
#endif
    suite_add_tcase(su, tc);
    SRunner *sr = srunner_create(su);
    srunner_run_all(sr, CK_NORMAL);
    int failed = srunner_ntests_failed(sr);
    srunner_free(sr);
    return failed ? EXIT_FAILURE : EXIT_SUCCESS;
}

static int run_mpi(int *argc, char ***argv) {
    if (par_init(argc, argv, &R, err, sizeof err) != 0) {
        fprintf(stderr, "test_mpi_coll: %s\n", err);
        return EXIT_FAILURE;
    }
    Suite *su = suite_create("parallel (MPI)");
    TCase *tc = tcase_create("mpi");
    tcase_add_test(tc, test_launched);
    tcase_add_test(tc, test_groups);
    tcase_add_test(tc, test_collectives_world);
    tcase_add_test(tc, test_collectives_groups);
    tcase_add_test(tc, test_split_large_counts);
    suite_add_tcase(su, tc);
    SRunner *sr = srunner_create(su);
    /* no fork: MPI state does not survive fork() */
    srunner_set_fork_status(sr, CK_NOFORK);
    srunner_run_all(sr, R.world_rank == 0 ? CK_NORMAL : CK_SILENT);
    int failed = srunner_ntests_failed(sr);
    srunner_free(sr);
    par_finalize(&R);
    return failed ? EXIT_FAILURE : EXIT_SUCCESS;
}

int main(int argc, char **argv) {
    if (argc == 2 && strcmp(argv[1], "single") == 0) return run_single();
    if (argc == 2 && strcmp(argv[1], "mpi") == 0) return run_mpi(&argc, &argv);
    fprintf(stderr, "usage: %s single|mpi (run by tests/test_mpi_coll.sh)\n", argv[0]);
    return ASP_EXIT_USAGE;
}
