/* autosp-train: command line entry point. */
#include "autosp_config.h"

#include <errno.h>
#include <glob.h>
#include <math.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "backend.h"
#include "config.h"
#include "io/data.h"
#include "io/hf.h"
#include "model/model.h"
#include "parallel/parallel.h"
#include "plan/plan.h"
#include "plan/predict.h"
#include "train.h"
#include "util.h"

#define MAX_SETS 256
#define GIB (1024.0 * 1024.0 * 1024.0)
/* Device memory assumed by --explain for a GPU plan when no GPU is present
 * and none is given: an 80 GB H100. */
#define EXPLAIN_DEFAULT_GPU_GIB 79.1
/* What a run on the GPU reserves besides the arenas: the memory in use when
 * it plans (the CUDA context and library handles: 0.65 GiB on an H100) plus
 * its 2 GiB margin. --explain, which touches no GPU, assumes as much. */
#define EXPLAIN_GPU_RESERVE_GIB 2.65

static void usage(FILE *out) {
    fprintf(out,
            "usage: autosp-train CONFIG [options]\n"
            "       mpirun -np N autosp-train CONFIG [options]\n"
            "\n"
            "Train the model described by CONFIG (YAML, docs/config.md) with a sequence-parallel plan\n"
            "compiled for the ranks it runs on.\n"
            "\n"
            "options:\n"
            "  --set SECTION.KEY=VALUE  override a config key (repeatable)\n"
            "  --explain                print the compiled plan and exit (needs no GPU)\n"
            "  --world N                world size to plan for with --explain (default: ranks launched)\n"
            "  --gpu-memory GIB         device memory per rank to plan for (default: the device's;\n"
            "                           --explain without a GPU assumes %.1f GiB)\n"
            "  --host-memory GIB        host memory of one node to plan the host tier for (default: this\n"
            "                           node's at run time; unlimited for --explain, which shares it among\n"
            "                           min(world, 8) ranks of a node); a tenth (at least 6 GiB) is kept\n"
            "                           for the system\n"
            "  --gpu h100|h200|FILE     the card profile that prices the plan: the predicted step time of\n"
            "                           --explain and of a run, and auto's placement choices (default: the\n"
            "                           card present, else h100; a run on the cpu backend predicts only\n"
            "                           when it is given)\n"
            "  --doc-len TOKENS         with data.documents eos: the mean document length the predicted\n"
            "                           step assumes (default: one document per sample, the slowest case)\n"
            "  --dump-grads FILE        write every step's loss and the first step's full gradient (fp32)\n"
            "                           to FILE, for parity checks between runs (format in src/train.h)\n"
            "  --help                   this text and every config key\n"
            "  --version                print the version and how this binary was built\n"
            "\n"
            "exit status: 0 done, 1 runtime failure, 2 bad config, arguments, data or checkpoint,\n"
            "             75 stopped early, resumable: SIGINT, SIGTERM or SIGUSR2 stopped every rank at a\n"
            "                step boundary and its checkpoint was written (the same command goes on),\n"
            "             128+N ended by signal N before training began, or by a second one\n"
            "\n"
            "A path given by --set is relative to the current directory; paths in the config file\n"
            "are relative to the file's folder.\n\n",
            EXPLAIN_DEFAULT_GPU_GIB);
}

typedef struct {
    const char *config;
    char *sets[MAX_SETS];
    int nsets;
    int explain;
    int world;
    double gpu_memory_gib;
    double host_memory_gib;
    const char *dump;
    const char *gpu;        /* --gpu: a built-in card profile or a file */
    double doc_len;
} cli_t;

static int lead_rank = 1;

/* A usage error: rank 0 says it, every rank exits with status 2. */
static void usage_error(ranks_t *r, const char *fmt, ...) ASP_PRINTF(2, 3) ASP_NORETURN;
static void usage_error(ranks_t *r, const char *fmt, ...) {
    if (lead_rank) {
        va_list ap;
        va_start(ap, fmt);
        fputs("autosp-train: error: ", stderr);
        vfprintf(stderr, fmt, ap);
        fputc('\n', stderr);
        va_end(ap);
    }
    if (r) par_finalize(r);
    exit(ASP_EXIT_USAGE);
}

static double parse_positive(ranks_t *r, const char *flag, const char *v) {
    char *end;
    errno = 0;
    double x = v ? strtod(v, &end) : 0;
    if (!v || errno || *end || !(x > 0) || !isfinite(x))
        usage_error(r, "%s expects a positive finite number, got '%s'", flag, v ? v : "");
    return x;
}

static void parse_args(int argc, char **argv, cli_t *c, ranks_t *r) {
    memset(c, 0, sizeof *c);
    for (int i = 1; i < argc; i++) {
        const char *a = argv[i];
        const char *next = i + 1 < argc ? argv[i + 1] : NULL;
        if (!strcmp(a, "--help") || !strcmp(a, "-h")) {
            if (lead_rank) {
                usage(stdout);
                config_print_help(stdout);
            }
            par_finalize(r);
            exit(0);
        } else if (!strcmp(a, "--version")) {
            if (lead_rank) {
                printf("autosp-train %s (commit %s)\n", PACKAGE_VERSION, ASP_GIT_COMMIT);
#ifdef HAVE_CUDA
                printf("  backends: cpu, cuda (CUDA %s, compiled for %s)\n", ASP_CUDA_VERSION, ASP_CUDA_ARCH);
#else
                printf("  backends: cpu only (built without CUDA)\n");
#endif
#ifdef HAVE_MPI
                printf("  MPI: yes (mpirun -np N for several ranks)\n");
#else
                printf("  MPI: no (one process only)\n");
#endif
            }
            par_finalize(r);
            exit(0);
        } else if (!strcmp(a, "--set")) {
            if (!next) usage_error(r, "--set expects SECTION.KEY=VALUE");
            if (c->nsets == MAX_SETS) usage_error(r, "more than %d --set options", MAX_SETS);
            c->sets[c->nsets++] = argv[++i];
        } else if (!strncmp(a, "--set=", 6)) {
            if (c->nsets == MAX_SETS) usage_error(r, "more than %d --set options", MAX_SETS);
            c->sets[c->nsets++] = argv[i] + 6;
        } else if (!strcmp(a, "--explain")) {
            c->explain = 1;
        } else if (!strcmp(a, "--world")) {
            double w = parse_positive(r, a, next);
            if (w != (double)(int)w || w > 1 << 20) usage_error(r, "--world expects a whole number, got '%s'", next);
            c->world = (int)w;
            i++;
        } else if (!strcmp(a, "--gpu-memory") || !strcmp(a, "--host-memory")) {
            double gib = parse_positive(r, a, next);
            /* 1e308 GiB is finite but its bytes are not: an "inf" budget fits anything */
            if (gib > ASP_MEMORY_GIB_MAX)
                usage_error(r, "%s %s GiB is beyond any machine (at most %.0f GiB, 1 PiB); give the memory in GiB",
                            a, next, ASP_MEMORY_GIB_MAX);
            *(a[2] == 'g' ? &c->gpu_memory_gib : &c->host_memory_gib) = gib;
            i++;
        } else if (!strcmp(a, "--gpu")) {
            if (!next || !next[0]) usage_error(r, "--gpu expects h100, h200 or the path of a card profile");
            c->gpu = argv[++i];
        } else if (!strcmp(a, "--doc-len")) {
            c->doc_len = parse_positive(r, a, next);
            i++;
        } else if (!strcmp(a, "--dump-grads")) {
            if (!next) usage_error(r, "--dump-grads expects a file name");
            c->dump = argv[++i];
        } else if (a[0] == '-' && a[1]) {
            usage_error(r, "unknown option '%s' (see --help)", a);
        } else if (!c->config) {
            c->config = a;
        } else {
            usage_error(r, "more than one config file given ('%s' and '%s')", c->config, a);
        }
    }
    if (!c->config) {
        if (lead_rank) usage(stderr);
        usage_error(r, "no config file given");
    }
}

/* Which backend runs: train.device, or auto = cuda when built with it and a
 * GPU is present. */
static const backend_t *pick_backend(const config_t *cfg, ranks_t *r) {
#ifdef HAVE_CUDA
    int gpus = cuda_device_count();
    if (cfg->train.device == DEVICE_CUDA && gpus == 0)
        usage_error(r, "train.device is cuda but no CUDA device is visible (use --set train.device=cpu)");
    if (cfg->train.device == DEVICE_CUDA || (cfg->train.device == DEVICE_AUTO && gpus > 0)) return &backend_cuda;
#else
    if (cfg->train.device == DEVICE_CUDA)
        usage_error(r, "train.device is cuda but this build has no CUDA backend (configure --with-cuda)");
#endif
    return &backend_cpu;
}

/* --explain touches no GPU, so it cannot ask cuDNN for its workspace. It
 * estimates the cuda backend's scratch at the plan's shapes. Attention's
 * backward: the fp32 dQ accumulator [S, Hq, hd] and row sums [Hq, S] the
 * backend allocates, plus a workspace of the accumulator's size that cuDNN
 * 9.19 asked for with GQA on an H100 (none without GQA); several GiB at
 * long S. With packed documents the ragged graphs' workspace grows with the
 * padded batch (up to 2 x pow2(S) rows, see attention_cudnn.cu), and the
 * token-major stats [S, Hq] sit beside it. The other ops: the 32 MiB
 * conversion staging. */
static size_t explain_cuda_attention_scratch(const op_shapes_t *sh) {
    const size_t s = (size_t)sh->attn_rows, hq = (size_t)sh->hq, hd = (size_t)sh->hd;
    const size_t acc = s * hq * hd * sizeof(float);
    size_t ws = sh->hkv < sh->hq ? acc : 0, stats = 0;
    if (sh->documents) {
        size_t rows = 64;
        while (rows < s) rows *= 2;
        ws = sh->hkv < sh->hq ? 2 * rows * hq * hd * sizeof(float) : 0;
        stats = s * hq * sizeof(float);
    }
    return asp_align_up(acc + s * hq * sizeof(float) + stats + ws, (size_t)1 << 20);
}

static size_t explain_cuda_scratch(const op_shapes_t *sh) {
    (void)sh;
    return (size_t)32 << 20;
}

/* Where the key a plan error is about was given ("FILE:L:C: ", "--set ...: "),
 * for the errors that name one key first ("parallel.sequence_parallel_size: ..."). */
static const char *plan_error_where(const config_t *cfg, const char *err) {
    static char where[CFG_PATH_MAX + 300];
    static const char *const keys[][2] = {{"parallel", "sequence_parallel_size"}, {"train", "seq_len"},
                                          {"train", "global_batch_size"}, {"parallel", "zero_stage"}};
    where[0] = 0;
    for (size_t i = 0; i < sizeof keys / sizeof keys[0]; i++) {
        char name[96];
        snprintf(name, sizeof name, "%s.%s:", keys[i][0], keys[i][1]);
        if (!strncmp(err, name, strlen(name))) return config_where(cfg, keys[i][0], keys[i][1], where, sizeof where);
    }
    return where;
}

/* A stop signal that came before training began: say so and end. */
static void early_stop(ranks_t *r) {
    int sig = train_stop_signal();
    if (!sig) return;
    if (lead_rank) fprintf(stderr, "autosp-train: stopped by signal %d before training began; nothing to save\n", sig);
    if (r) par_finalize(r);
    exit(128 + sig);
}

/* The config, with the model keys of model.from_pretrained and the
 * vocabulary of the shard's header unless the config (or the Hugging Face
 * folder) gives it; a header above the model's is refused. */
static void load_config(config_t *cfg, const cli_t *cli, ranks_t *ranks) {
    char err[4096];
    if (config_load(cfg, cli->config, cli->sets, cli->nsets, err, sizeof err) != 0) usage_error(ranks, "%s", err);
    if (hf_apply_pretrained(cfg, cli->sets, cli->nsets, err, sizeof err) != 0) usage_error(ranks, "%s", err);
    if (cfg->model.from_pretrained[0]) cfg->vocab_size_given = 1;
    char shard_path[CFG_PATH_MAX];
    uint32_t shard_vocab = 0;
    int64_t shard_eos = -1;
    int peeked = cfg->data.path[0] && config_resolve_path(cfg, cfg->data.path, shard_path, sizeof shard_path) == 0
                 ? shard_peek(shard_path, &shard_vocab, &shard_eos, err, sizeof err) : -1;
    if (peeked == -2) usage_error(ranks, "%s", err);   /* a header read, but refused: name the shard */
    if (peeked == 0) {
        if (!cfg->vocab_size_given) {
            cfg->model.vocab_size = shard_vocab;
        } else if ((int64_t)shard_vocab > cfg->model.vocab_size) {
            usage_error(ranks, "%s: the header of %s records vocab_size %u, above the model vocab_size %lld: token "
                        "ids up to %u would not fit the model; leave model.vocab_size out to take the shard's, or "
                        "tokenize with the model's tokenizer", cli->config, shard_path, (unsigned)shard_vocab,
                        (long long)cfg->model.vocab_size, (unsigned)shard_vocab - 1);
        }
    }
}

static void warn_positions(const config_t *cfg) {
    if (!lead_rank || cfg->train.seq_len <= cfg->model.max_position_embeddings) return;
    char where[CFG_PATH_MAX + 300];
    asp_warn("%strain.seq_len (%lld) is longer than model.max_position_embeddings (%lld): the model has not seen "
             "positions this far (RoPE extrapolates; llama3 rope_scaling stretches it); raise "
             "max_position_embeddings if that is intended", config_where(cfg, "train", "seq_len", where, sizeof where),
             (long long)cfg->train.seq_len, (long long)cfg->model.max_position_embeddings);
}

/* What the plan is compiled for besides the config: element sizes, memory
 * budgets and where they came from. */
typedef struct {
    plan_target_t target;
    int explain_gpu_plan;       /* --explain plans for a GPU unless the config pins the CPU */
    int world;
    double mem;                 /* device budget per rank, 0: unlimited */
    const char *mem_from;
    int budget_is_device;       /* the budget is the device's own memory, measured now */
    double host_node, host_share;
    int node_ranks;
    const char *host_from;
    card_profile_t profile;     /* the card profile the plan is priced with */
    int predict;                /* 1: report the predicted step (not on the cpu backend without --gpu) */
    double doc_len;             /* --doc-len */
} budget_t;

static void element_sizes(budget_t *b, const backend_t *be) {
    plan_target_t *t = &b->target;
    if (be) {
        t->act_bytes = (int)dtype_size(be->act_dtype);
        t->param_bytes = (int)dtype_size(be->param_dtype);
        t->grad_bytes = (int)dtype_size(be->grad_dtype);
    } else if (b->explain_gpu_plan) {
        t->act_bytes = 2, t->param_bytes = 2, t->grad_bytes = 4; /* the cuda backend's types */
    } else {
        t->act_bytes = t->param_bytes = t->grad_bytes = 4;
    }
}

/* The device budget: the config's, --gpu-memory, the device's, or for
 * --explain without a GPU an 80 GB card; and what the libraries keep. */
static void device_budget(budget_t *b, const config_t *cfg, const cli_t *cli, const backend_t *be) {
    plan_target_t *t = &b->target;
    b->mem_from = "unlimited";
    if (cfg->checkpointing.memory_budget_gib > 0) {
        b->mem = cfg->checkpointing.memory_budget_gib * GIB;
        b->mem_from = "checkpointing.memory_budget_gib";
    } else if (cli->gpu_memory_gib > 0) {
        b->mem = cli->gpu_memory_gib * GIB;
        b->mem_from = "--gpu-memory";
    } else if (be && be->device_memory && be->device_memory() > 0) {
        b->mem = (double)be->device_memory();
        b->mem_from = "the device";
        b->budget_is_device = 1;
    } else if (b->explain_gpu_plan) {
        b->mem = EXPLAIN_DEFAULT_GPU_GIB * GIB;
        b->mem_from = "assumed: an 80 GB GPU, as none is present; --gpu-memory sets it";
    }
    t->memory_bytes = b->mem;
    if (be) {
        t->scratch_bytes = be->scratch_bytes;
        t->attention_scratch_bytes = be->attention_scratch_bytes;
    }
    if (be && be->device_memory && be->device_memory() > 0)
        t->reserved_bytes = 1.5 * GIB; /* CUDA context, cuBLASLt/cuDNN workspaces, NCCL buffers */
    if (b->explain_gpu_plan) {
        t->reserved_bytes = EXPLAIN_GPU_RESERVE_GIB * GIB;
        t->scratch_bytes = explain_cuda_scratch;
        t->attention_scratch_bytes = explain_cuda_attention_scratch;
    }
}

/* The host tier: pinned memory for offloaded activations and model state.
 * A node's memory is shared by its ranks; at run time it is this node's,
 * less a tenth (at least 6 GiB) for the system and the process; a budget in
 * the config may ask for less, never for more. */
static void host_budget(budget_t *b, const config_t *cfg, const cli_t *cli, ranks_t *ranks, const backend_t *be) {
    b->node_ranks = 1;
    if (cli->host_memory_gib > 0) {
        b->host_node = cli->host_memory_gib * GIB;
        b->node_ranks = cli->explain ? (b->world < 8 ? b->world : 8) : (ranks->local_size > 0 ? ranks->local_size : 1);
    } else if (!cli->explain) {
        long pages = sysconf(_SC_PHYS_PAGES), page = sysconf(_SC_PAGE_SIZE);
        if (pages > 0 && page > 0) b->host_node = (double)pages * (double)page;
        b->node_ranks = ranks->local_size > 0 ? ranks->local_size : 1;
    }
    double node = b->host_node, keep = 0.1 * node > 6 * GIB ? 0.1 * node : 6 * GIB;
    b->host_share = node > 2 * keep ? (node - keep) / b->node_ranks : 0.5 * node / b->node_ranks;
    b->host_from = node > 0 ? (cli->host_memory_gib > 0 ? "--host-memory" : "the node")
                   : cli->explain ? "--host-memory sets a node's" : "the node's size is unknown";
    b->target.host_memory_bytes = b->host_share;
    if (cfg->checkpointing.host_budget_gib > 0) {
        double want = cfg->checkpointing.host_budget_gib * GIB;
        if (b->host_share > 0 && want > b->host_share) {
            char w[32], h[32], n[32];
            usage_error(ranks,
                        "checkpointing.host_budget_gib asks for %s of pinned host memory per rank, but the node "
                        "(%s in all, less a tenth for the system, %d rank%s on it) gives %s per rank; lower "
                        "checkpointing.host_budget_gib or set it to 0 (the node's share)",
                        asp_fmt_bytes(w, sizeof w, want), asp_fmt_bytes(n, sizeof n, node), b->node_ranks,
                        b->node_ranks == 1 ? "" : "s", asp_fmt_bytes(h, sizeof h, b->host_share));
        }
        b->target.host_memory_bytes = want;
        b->host_from = "checkpointing.host_budget_gib";
    }
    b->target.host_is_device = be ? be->device_memory && be->device_memory() == 0 : !b->explain_gpu_plan;
}

/* The card --explain plans for when none is named: the first GPU the
 * NVIDIA driver lists (read from /proc, touching no device), else an H100. */
static const char *card_present(void) {
    glob_t g;
    const char *card = "h100";
    if (glob("/proc/driver/nvidia/gpus/*/information", 0, NULL, &g) != 0) return card;
    FILE *f = g.gl_pathc ? fopen(g.gl_pathv[0], "r") : NULL;
    char line[256];
    while (f && fgets(line, sizeof line, f))
        if (!strncmp(line, "Model:", 6) && strstr(line, "H200")) card = "h200";
    if (f) fclose(f);
    globfree(&g);
    return card;
}

/* The card profile: --gpu, else the card this run trains on, else (for
 * --explain) the card present or an H100. A run on the cpu backend predicts
 * nothing unless --gpu names a profile. */
static void choose_profile(budget_t *b, const cli_t *cli, const backend_t *be, ranks_t *ranks) {
    const char *spec = cli->gpu;
    b->predict = 1;
    if (!spec && be && be->device_memory && be->device_memory() > 0)
        spec = strstr(be->device_name(), "H200") ? "h200" : "h100";
    else if (!spec && be) b->predict = 0;
    else if (!spec) spec = card_present();
    b->doc_len = cli->doc_len;
    if (!spec) return;
    char err[1024];
    if (profile_select(&b->profile, spec, err, sizeof err) != 0) usage_error(ranks, "--gpu: %s", err);
    b->target.profile = &b->profile;
}

/* Impossible degrees are refused before any GPU work: plan once without a
 * memory limit (the real budget needs the device, initialised after). */
static void probe_degrees(const config_t *cfg, const model_t *model, ranks_t *ranks, const budget_t *b) {
    char err[4096];
    plan_t probe;
    plan_target_t unlimited = b->target;
    unlimited.memory_bytes = 0;
    if (plan_compile(&probe, cfg, model, ranks->world_size, &unlimited, err, sizeof err) == -1)
        usage_error(ranks, "%s%s", plan_error_where(cfg, err), err);
}

/* Compile the plan. Planning against the device itself: what is already in
 * use (the context, library handles, and the kernels the scratch queries
 * loaded) is not there for the arenas, and NCCL and the libraries take more
 * once training starts: on an H100 about 1.2 GiB more was in use when the
 * arenas were allocated than when the plan measured (cause not pinned
 * down), so the margin is 2 GiB. Plan again with that reserve when it
 * exceeds the flat one. Returns plan_compile's result; err says why. */
static int compile_plan(plan_t *plan, const config_t *cfg, const model_t *model, budget_t *b, const backend_t *be,
                        char *err, size_t errlen) {
    int planned = plan_compile(plan, cfg, model, b->world, &b->target, err, errlen);
    if (planned != -1 && b->budget_is_device && be->memory_used) {
        double reserve = (double)be->memory_used() + 2.0 * GIB;
        if (reserve > b->target.reserved_bytes) {
            b->target.reserved_bytes = reserve;
            planned = plan_compile(plan, cfg, model, b->world, &b->target, err, errlen);
        }
    }
    return planned;
}

/* --explain: the budgets and the plan. A plan that does not fit is still
 * shown (its memory table says by how much); the exit status says it
 * cannot run. */
static int explain(const plan_t *plan, const config_t *cfg, const budget_t *b) {
    if (!lead_rank) return 0;
    char buf[32];
    printf("memory budget per rank: %s (%s)\n", b->mem > 0 ? asp_fmt_bytes(buf, sizeof buf, b->mem) : "unlimited",
           b->mem_from);
    if (b->target.host_memory_bytes > 0)
        printf("host budget per rank: %s (%s: a node's memory less a tenth, at least 6 GiB, for the "
               "system, shared by %d rank%s)\n",
               asp_fmt_bytes(buf, sizeof buf, b->target.host_memory_bytes), b->host_from, b->node_ranks,
               b->node_ranks == 1 ? "" : "s");
    else
        printf("host budget per rank: unlimited (%s)\n", b->host_from);
    plan_explain(plan, cfg, stdout);
    plan_explain_predicted(plan, &b->profile, b->doc_len, stdout);
    fflush(stdout);
    return 0;
}

/* On a backend whose device memory is host memory, the arenas and the
 * pinned host regions share the node: refuse what it cannot hold rather
 * than be killed allocating it. */
static void check_node_memory(const plan_t *plan, const budget_t *b, const backend_t *be, ranks_t *ranks) {
    if (!(be && be->device_memory && be->device_memory() == 0 && b->host_share > 0)) return;
    double need = (double)plan->mem.device_total + (double)plan->mem.host_total;
    if (need <= b->host_share) return;
    char a[32], c[32], d[32], h[32];
    usage_error(ranks,
                "the plan needs %s of this node's memory per rank (%s of arenas and %s of pinned host memory "
                "for offloaded activations and model state), but the node allows %s per rank (%d rank(s) on "
                "it); lower checkpointing.memory_budget_gib or train.seq_len, turn checkpointing.offload "
                "off, or add ranks",
                asp_fmt_bytes(a, sizeof a, need), asp_fmt_bytes(c, sizeof c, (double)plan->mem.device_total),
                asp_fmt_bytes(d, sizeof d, (double)plan->mem.host_total), asp_fmt_bytes(h, sizeof h, b->host_share),
                b->node_ranks);
}

/* The run's first lines: model, degrees, budget, host tier, SAC per layer. */
static void announce(const plan_t *plan, const config_t *cfg, const cli_t *cli, const model_t *model,
                     const budget_t *b) {
    if (!lead_rank) return;
    char buf[32];
    asp_info("%s: %s model, %.4g M parameters, S = %lld, world %d = SP %d x DP %d, ZeRO-%d, SAC %s, memory budget %s",
             cli->config, cfg->model.architecture, (double)model->n_params / 1e6, (long long)cfg->train.seq_len,
             plan->world, plan->sp, plan->dp, plan->zero_stage, sac_policy_name(plan->policy),
             b->mem > 0 ? asp_fmt_bytes(buf, sizeof buf, b->mem) : "unlimited");
    if (plan_host_bytes(plan)) {
        char hb[32], hl[32];
        asp_info("host tier: the plan offloads %s per rank to pinned host memory (budget %s, %s)%s",
                 asp_fmt_bytes(hb, sizeof hb, (double)plan_host_bytes(plan)),
                 asp_fmt_bytes(hl, sizeof hl, b->target.host_memory_bytes), b->host_from,
                 plan->inputs_offloaded ? "; the layer inputs too" : "");
    }
    if (plan_layers_mixed(plan))
        asp_info("SAC per layer: attention's outputs fit in %d of %lld layers; layers %d-%lld recompute attention "
                 "too (--explain shows the plan)",
                 plan->layers_rich, (long long)model->L, plan->layers_rich, (long long)model->L - 1);
}

/* Train: one collectives table per memory kind, NCCL for GPU buffers, MPI
 * for host memory (all of the cpu backend's buffers). */
static int train(const config_t *cfg, const plan_t *plan, const backend_t *be, ranks_t *ranks, const cli_t *cli,
                 const budget_t *b) {
    train_opts_t opts = {.dump_path = cli->dump};
    if (b->predict) {
        step_prediction_t pred;
        plan_predict(plan, &b->profile, b->doc_len, &pred);
        opts.predicted_step_s = pred.step_s;
        opts.predicted_card = b->profile.card;
    }
    const coll_ops_t *coll = &coll_host;
#ifdef HAVE_CUDA
    char err[4096];
    if (be == &backend_cuda) {
        if (coll_nccl_init(ranks, be->stream(), err, sizeof err) != 0) asp_die(ASP_EXIT_FAILURE, "%s", err);
        coll = &coll_nccl;
    }
#endif
    return train_run(cfg, plan, be, coll, &coll_host, ranks, &opts);
}

/* The documented signal behaviour holds from the first instant: the GPU and
 * MPI libraries take ~100 ms to load and initialise before main runs, and a
 * SIGUSR1 (checkpoint and go on) or SIGTERM then would take its default
 * action. An executable's .preinit_array runs before any shared library's
 * initialisers, so the handlers are in place from there. */
static void install_signals_early(int argc, char **argv, char **envp) {
    (void)argc, (void)argv, (void)envp;
    train_install_signals();
}
__attribute__((section(".preinit_array"), used)) static void (*const early_signals)(int, char **, char **) =
    install_signals_early;

int main(int argc, char **argv) {
    /* first: a SIGTERM during start-up is reported, not silently fatal */
    asp_mark_start();
    train_install_signals();
    char err[4096];
    ranks_t ranks;
    if (par_init(&argc, &argv, &ranks, err, sizeof err) != 0) {
        fprintf(stderr, "autosp-train: error: %s\n", err);
        return ASP_EXIT_FAILURE;
    }
    lead_rank = ranks.world_rank == 0;
    cli_t cli;
    parse_args(argc, argv, &cli, &ranks);
    early_stop(&ranks);

    config_t cfg;
    load_config(&cfg, &cli, &ranks);
    model_t model;
    if (model_build(&model, &cfg.model, err, sizeof err) != 0) usage_error(&ranks, "%s: %s", cli.config, err);
    warn_positions(&cfg);

    budget_t b;
    memset(&b, 0, sizeof b);
    b.explain_gpu_plan = cli.explain && cfg.train.device != DEVICE_CPU;
    const backend_t *be = cli.explain ? NULL : pick_backend(&cfg, &ranks);
    element_sizes(&b, be);
    if (be) {
        probe_degrees(&cfg, &model, &ranks, &b);
        /* the device is initialised before planning so that the plan can use its memory size */
        if (be->init(ranks.local_rank, err, sizeof err) != 0) asp_die(ASP_EXIT_FAILURE, "%s backend: %s", be->name, err);
    }
    device_budget(&b, &cfg, &cli, be);
    b.world = cli.explain && cli.world > 0 ? cli.world : ranks.world_size;
    host_budget(&b, &cfg, &cli, &ranks, be);
    choose_profile(&b, &cli, be, &ranks);
    plan_t plan;
    int planned = compile_plan(&plan, &cfg, &model, &b, be, err, sizeof err);
    if (planned == -1 || (planned != 0 && !cli.explain)) usage_error(&ranks, "%s%s", plan_error_where(&cfg, err), err);
    early_stop(&ranks);

    if (cli.explain) {
        explain(&plan, &cfg, &b);
        model_free(&model);
        if (planned != 0) usage_error(&ranks, "%s", err);
        par_finalize(&ranks);
        return 0;
    }
    check_node_memory(&plan, &b, be, &ranks);
    if (par_set_groups(&ranks, plan.sp, err, sizeof err) != 0) usage_error(&ranks, "%s", err);
    announce(&plan, &cfg, &cli, &model, &b);
    int status = train(&cfg, &plan, be, &ranks, &cli, &b);
    be->shutdown();
    model_free(&model);
    par_finalize(&ranks);
    return status;
}
