/* Rank bootstrap and communicators. A process started without a launcher is
 * a single rank and makes no MPI call at all (it may run where no MPI runtime
 * is installed); one started by mpirun or srun initialises MPI. */
#include "par_internal.h"

#include <errno.h>
#include <stdlib.h>
#include <string.h>

#include "util.h"

#ifdef HAVE_MPI
/* Set when par_init called MPI_Init, so only then par_finalize finalises. */
static int mpi_owned;
#endif

int comm_rank(const comm_t *c) { return c ? c->rank : 0; }
int comm_size(const comm_t *c) { return c ? c->size : 1; }

static comm_t *comm_single(void) {
    comm_t *c = asp_calloc(1, sizeof *c, "communicator");
    c->rank = 0;
    c->size = 1;
#ifdef HAVE_MPI
    c->mpi = MPI_COMM_NULL;
#endif
    return c;
}

void (*comm_nccl_free_hook)(void *nccl) = NULL;

static void comm_free(comm_t *c) {
    if (!c) return;
    if (c->nccl && comm_nccl_free_hook) comm_nccl_free_hook(c->nccl);
#ifdef HAVE_MPI
    if (c->mpi != MPI_COMM_NULL) MPI_CHECK(MPI_Comm_free(&c->mpi));
#endif
    free(c);
}

/* ---------------------------------------------------------------- launcher */

typedef struct {
    const char *name;   /* launcher seen in the environment, NULL: none */
    long size, rank;    /* -1 where the environment does not say */
} launch_t;

static long env_long(const char *var) {
    const char *v = getenv(var);
    if (!v || !*v) return -1;
    char *end;
    errno = 0;
    long x = strtol(v, &end, 10);
    if (errno || *end || x < 0) return -1;
    return x;
}

static launch_t detect_launcher(void) {
    launch_t l = {NULL, -1, -1};
    if (getenv("OMPI_COMM_WORLD_SIZE")) {
        l.name = "mpirun (Open MPI)";
        l.size = env_long("OMPI_COMM_WORLD_SIZE");
        l.rank = env_long("OMPI_COMM_WORLD_RANK");
    } else if (getenv("PMI_SIZE")) {
        l.name = "an MPICH/Hydra launcher";
        l.size = env_long("PMI_SIZE");
        l.rank = env_long("PMI_RANK");
    } else if (getenv("MV2_COMM_WORLD_SIZE")) {
        l.name = "an MVAPICH launcher";
        l.size = env_long("MV2_COMM_WORLD_SIZE");
        l.rank = env_long("MV2_COMM_WORLD_RANK");
    } else if (getenv("PMIX_RANK")) {
        l.name = "a PMIx launcher";
        l.rank = env_long("PMIX_RANK");
    } else if (getenv("SLURM_PROCID") && getenv("SLURM_STEP_ID")) {
        /* SLURM_PROCID alone is also set inside an sbatch script, which is
         * not a parallel step; srun adds SLURM_STEP_ID. */
        l.name = "srun";
        l.size = env_long("SLURM_STEP_NUM_TASKS");
        if (l.size < 0) l.size = env_long("SLURM_NTASKS");
        l.rank = env_long("SLURM_PROCID");
    }
    return l;
}

/* ---------------------------------------------------------------- MPI */

#ifdef HAVE_MPI
void par_mpi_fail(int rc, const char *call, const char *file, int line) {
    char msg[MPI_MAX_ERROR_STRING + 1];
    int len = 0;
    if (MPI_Error_string(rc, msg, &len) != MPI_SUCCESS) len = 0;
    msg[len] = 0;
    asp_die(ASP_EXIT_FAILURE, "MPI call %s failed at %s:%d: %s", call, file, line, len ? msg : "unknown error");
}

static void mpi_abort_hook(int code) {
    int init = 0, fin = 0;
    MPI_Initialized(&init);
    MPI_Finalized(&fin);
    if (init && !fin) MPI_Abort(MPI_COMM_WORLD, code ? code : ASP_EXIT_FAILURE);
}

static comm_t *comm_wrap(MPI_Comm m) {
    comm_t *c = asp_calloc(1, sizeof *c, "communicator");
    c->mpi = m;
    /* errors come back as codes so MPI_CHECK can say which call failed */
    MPI_CHECK(MPI_Comm_set_errhandler(m, MPI_ERRORS_RETURN));
    MPI_CHECK(MPI_Comm_rank(m, &c->rank));
    MPI_CHECK(MPI_Comm_size(m, &c->size));
    return c;
}

static int init_mpi(int *argc, char ***argv, ranks_t *r, const launch_t *l, char *err, size_t errlen) {
    int init = 0;
    MPI_Initialized(&init);
    if (!init) {
        int provided = 0;
        int rc = MPI_Init_thread(argc, argv, MPI_THREAD_FUNNELED, &provided);
        if (rc != MPI_SUCCESS)
            return asp_errf(err, errlen, "MPI_Init_thread failed (started by %s); check the MPI installation "
                            "and that this binary was built with the MPI that launched it", l->name);
        mpi_owned = 1;
        if (provided < MPI_THREAD_FUNNELED)
            return asp_errf(err, errlen, "MPI provides thread level %d, the engine needs MPI_THREAD_FUNNELED "
                            "(OpenMP threads with MPI calls on the main thread); use an MPI built with thread support",
                            provided);
    }
    asp_abort_hook = mpi_abort_hook;
    MPI_CHECK(MPI_Comm_set_errhandler(MPI_COMM_WORLD, MPI_ERRORS_RETURN));
    MPI_Comm world, node;
    /* a private copy keeps the engine's traffic apart from any other user of the world */
    MPI_CHECK(MPI_Comm_dup(MPI_COMM_WORLD, &world));
    r->world = comm_wrap(world);
    r->world_rank = r->world->rank;
    r->world_size = r->world->size;
    MPI_CHECK(MPI_Comm_split_type(world, MPI_COMM_TYPE_SHARED, r->world_rank, MPI_INFO_NULL, &node));
    MPI_CHECK(MPI_Comm_rank(node, &r->local_rank));
    MPI_CHECK(MPI_Comm_size(node, &r->local_size));
    MPI_CHECK(MPI_Comm_free(&node));
    r->launched = 1;
    if (r->world_size > 1) asp_msg_rank = r->world_rank;
    coll_host_watch_init(world);
    return 0;
}
#endif

void par_service(void) { coll_host_service(); }

int par_init(int *argc, char ***argv, ranks_t *r, char *err, size_t errlen) {
    memset(r, 0, sizeof *r);
    launch_t l = detect_launcher();
#ifdef HAVE_MPI
    if (l.name) {
        if (init_mpi(argc, argv, r, &l, err, errlen) != 0) return -1;
        return par_set_groups(r, 1, err, errlen);
    }
#else
    (void)argc;
    (void)argv;
    if (l.name && (l.size > 1 || l.rank > 0))
        return asp_errf(err, errlen,
                        "started by %s as rank %ld of %ld, but this build has no MPI: every rank would run "
                        "alone; rebuild with MPI (install libopenmpi-dev and openmpi-bin, then ./configure "
                        "--with-mpi) or run a single process",
                        l.name, l.rank, l.size);
#endif
    r->world = comm_single();
    r->world_rank = 0;
    r->world_size = 1;
    r->local_rank = 0;
    r->local_size = 1;
    r->launched = 0;
    return par_set_groups(r, 1, err, errlen);
}

int par_set_groups(ranks_t *r, int sp_size, char *err, size_t errlen) {
    int W = r->world_size;
    if (sp_size < 1 || W % sp_size != 0) {
        char divs[256] = "";
        size_t used = 0;
        for (int d = 1; d <= W && used + 16 < sizeof divs; d++)
            if (W % d == 0) used += (size_t)snprintf(divs + used, sizeof divs - used, "%s%d", used ? ", " : "", d);
        return asp_errf(err, errlen,
                        "sequence-parallel size %d does not divide the %d rank%s of the job; use one of %s "
                        "(or change the number of ranks)",
                        sp_size, W, W == 1 ? "" : "s", divs);
    }
    comm_free(r->sp);
    comm_free(r->dp);
    r->sp = r->dp = NULL;
    r->sp_size = sp_size;
    r->sp_rank = r->world_rank % sp_size;
    r->dp_size = W / sp_size;
    r->dp_rank = r->world_rank / sp_size;
#ifdef HAVE_MPI
    if (r->world->mpi != MPI_COMM_NULL) {
        MPI_Comm sp, dp;
        /* SP: contiguous blocks (stay within a node); DP: same sp_rank */
        MPI_CHECK(MPI_Comm_split(r->world->mpi, r->dp_rank, r->world_rank, &sp));
        MPI_CHECK(MPI_Comm_split(r->world->mpi, r->sp_rank, r->world_rank, &dp));
        r->sp = comm_wrap(sp);
        r->dp = comm_wrap(dp);
        if (r->sp->rank != r->sp_rank || r->sp->size != sp_size || r->dp->rank != r->dp_rank ||
            r->dp->size != r->dp_size)
            asp_die(ASP_EXIT_FAILURE, "MPI_Comm_split produced SP rank %d/%d and DP rank %d/%d, expected %d/%d "
                    "and %d/%d; the MPI library misbehaves",
                    r->sp->rank, r->sp->size, r->dp->rank, r->dp->size, r->sp_rank, sp_size, r->dp_rank,
                    r->dp_size);
        return 0;
    }
#endif
    r->sp = comm_single();
    r->dp = comm_single();
    return 0;
}

void par_finalize(ranks_t *r) {
    comm_free(r->sp);
    comm_free(r->dp);
    comm_free(r->world);
    r->sp = r->dp = r->world = NULL;
#ifdef HAVE_MPI
    coll_host_watch_fini();
    if (mpi_owned) {
        int fin = 0;
        MPI_Finalized(&fin);
        if (!fin) MPI_Finalize();
        mpi_owned = 0;
    }
#endif
    asp_abort_hook = NULL;
    asp_msg_rank = -1;
    r->launched = 0;
}
