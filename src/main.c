/* autosp-train: command line entry point. */
#include "autosp_config.h"

#include <errno.h>
#include <math.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "backend.h"
#include "config.h"
#include "data.h"
#include "hf.h"
#include "model/model.h"
#include "parallel/parallel.h"
#include "plan/plan.h"
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
        } else if (!strcmp(a, "--gpu-memory")) {
            c->gpu_memory_gib = parse_positive(r, a, next);
            i++;
        } else if (!strcmp(a, "--host-memory")) {
            c->host_memory_gib = parse_positive(r, a, next);
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
    if (config_load(&cfg, cli.config, cli.sets, cli.nsets, err, sizeof err) != 0) usage_error(&ranks, "%s", err);
    /* model.from_pretrained: the model keys come from the folder's config.json */
    if (hf_apply_pretrained(&cfg, cli.sets, cli.nsets, err, sizeof err) != 0) usage_error(&ranks, "%s", err);
    /* The vocabulary comes from the shard's header unless the config (or the
     * Hugging Face folder) gives it; a header above the model's is refused. */
    if (cfg.model.from_pretrained[0]) cfg.vocab_size_given = 1;
    char shard_path[CFG_PATH_MAX];
    uint32_t shard_vocab = 0;
    int64_t shard_eos = -1;
    if (cfg.data.path[0] && config_resolve_path(&cfg, cfg.data.path, shard_path, sizeof shard_path) == 0 &&
        shard_peek(shard_path, &shard_vocab, &shard_eos, err, sizeof err) == 0) {
        if (!cfg.vocab_size_given) {
            cfg.model.vocab_size = shard_vocab;
        } else if ((int64_t)shard_vocab > cfg.model.vocab_size) {
            usage_error(&ranks, "%s: the header of %s records vocab_size %u, above the model vocab_size %lld: token "
                        "ids up to %u would not fit the model; leave model.vocab_size out to take the shard's, or "
                        "tokenize with the model's tokenizer", cli.config, shard_path, (unsigned)shard_vocab,
                        (long long)cfg.model.vocab_size, (unsigned)shard_vocab - 1);
        }
    }
    model_t model;
    if (model_build(&model, &cfg.model, err, sizeof err) != 0) usage_error(&ranks, "%s: %s", cli.config, err);
    if (lead_rank && cfg.train.seq_len > cfg.model.max_position_embeddings) {
        char where[CFG_PATH_MAX + 300];
        asp_warn("%strain.seq_len (%lld) is longer than model.max_position_embeddings (%lld): the model has not seen "
                 "positions this far (RoPE extrapolates; llama3 rope_scaling stretches it); raise "
                 "max_position_embeddings if that is intended", config_where(&cfg, "train", "seq_len", where, sizeof where),
                 (long long)cfg.train.seq_len, (long long)cfg.model.max_position_embeddings);
    }

    const backend_t *be = NULL;
    int explain_gpu_plan = 0;
    if (cli.explain) {
        /* --explain plans for a GPU unless the config pins the CPU. */
        explain_gpu_plan = cfg.train.device != DEVICE_CPU;
    } else {
        be = pick_backend(&cfg, &ranks);
    }

    plan_target_t target;
    memset(&target, 0, sizeof target);
    if (be) {
        target.act_bytes = (int)dtype_size(be->act_dtype);
        target.param_bytes = (int)dtype_size(be->param_dtype);
        target.grad_bytes = (int)dtype_size(be->grad_dtype);
    } else if (explain_gpu_plan) {
        target.act_bytes = 2, target.param_bytes = 2, target.grad_bytes = 4; /* the cuda backend's types */
    } else {
        target.act_bytes = target.param_bytes = target.grad_bytes = 4;
    }

    /* Impossible degrees are refused before any GPU work: plan once without
     * a memory limit (the real budget needs the device, initialised next). */
    if (be) {
        plan_t probe;
        plan_target_t unlimited = target;
        unlimited.memory_bytes = 0;
        int world_now = ranks.world_size;
        if (plan_compile(&probe, &cfg, &model, world_now, &unlimited, err, sizeof err) == -1)
            usage_error(&ranks, "%s%s", plan_error_where(&cfg, err), err);
    }
    /* The device is initialised before planning so that the plan can use its memory size. */
    if (be) {
        int dev = ranks.local_rank;
        if (be->init(dev, err, sizeof err) != 0) asp_die(ASP_EXIT_FAILURE, "%s backend: %s", be->name, err);
    }
    double mem = 0;
    const char *mem_from = "unlimited";
    int budget_is_device = 0;   /* the budget is the device's own memory, measured now */
    if (cfg.checkpointing.memory_budget_gib > 0) {
        mem = cfg.checkpointing.memory_budget_gib * GIB;
        mem_from = "checkpointing.memory_budget_gib";
    } else if (cli.gpu_memory_gib > 0) {
        mem = cli.gpu_memory_gib * GIB;
        mem_from = "--gpu-memory";
    } else if (be && be->device_memory && be->device_memory() > 0) {
        mem = (double)be->device_memory();
        mem_from = "the device";
        budget_is_device = 1;
    } else if (explain_gpu_plan) {
        mem = EXPLAIN_DEFAULT_GPU_GIB * GIB;
        mem_from = "assumed: an 80 GB GPU, as none is present; --gpu-memory sets it";
    }
    target.memory_bytes = mem;
    if (be) {
        target.scratch_bytes = be->scratch_bytes;
        target.attention_scratch_bytes = be->attention_scratch_bytes;
    }
    if (be && be->device_memory && be->device_memory() > 0)
        target.reserved_bytes = 1.5 * GIB; /* CUDA context, cuBLASLt/cuDNN workspaces, NCCL buffers */
    if (explain_gpu_plan) {
        target.reserved_bytes = EXPLAIN_GPU_RESERVE_GIB * GIB;
        target.scratch_bytes = explain_cuda_scratch;
        target.attention_scratch_bytes = explain_cuda_attention_scratch;
    }

    int world = cli.explain && cli.world > 0 ? cli.world : ranks.world_size;
    /* The host tier: pinned memory for offloaded activations and model
     * state. A node's memory is shared by its ranks; at run time it is this
     * node's, less a tenth (at least 6 GiB) for the system and the process;
     * a budget in the config may ask for less, never for more. */
    double host_node = 0;
    int node_ranks = 1;
    if (cli.host_memory_gib > 0) {
        host_node = cli.host_memory_gib * GIB;
        node_ranks = cli.explain ? (world < 8 ? world : 8) : (ranks.local_size > 0 ? ranks.local_size : 1);
    } else if (!cli.explain) {
        long pages = sysconf(_SC_PHYS_PAGES), page = sysconf(_SC_PAGE_SIZE);
        if (pages > 0 && page > 0) host_node = (double)pages * (double)page;
        node_ranks = ranks.local_size > 0 ? ranks.local_size : 1;
    }
    double host_keep = 0.1 * host_node > 6 * GIB ? 0.1 * host_node : 6 * GIB;
    double host_share = host_node > 2 * host_keep ? (host_node - host_keep) / node_ranks : 0.5 * host_node / node_ranks;
    const char *host_from = host_node > 0 ? (cli.host_memory_gib > 0 ? "--host-memory" : "the node")
                            : cli.explain ? "--host-memory sets a node's" : "the node's size is unknown";
    target.host_memory_bytes = host_share;
    if (cfg.checkpointing.host_budget_gib > 0) {
        double want = cfg.checkpointing.host_budget_gib * GIB;
        if (host_share > 0 && want > host_share) {
            char w[32], h[32], n[32];
            usage_error(&ranks,
                        "checkpointing.host_budget_gib asks for %s of pinned host memory per rank, but the node "
                        "(%s in all, less a tenth for the system, %d rank%s on it) gives %s per rank; lower "
                        "checkpointing.host_budget_gib or set it to 0 (the node's share)",
                        asp_fmt_bytes(w, sizeof w, want), asp_fmt_bytes(n, sizeof n, host_node), node_ranks,
                        node_ranks == 1 ? "" : "s", asp_fmt_bytes(h, sizeof h, host_share));
        }
        target.host_memory_bytes = want;
        host_from = "checkpointing.host_budget_gib";
    }
    target.host_is_device = be ? be->device_memory && be->device_memory() == 0 : !explain_gpu_plan;
    plan_t plan;
    int planned = plan_compile(&plan, &cfg, &model, world, &target, err, sizeof err);
    if (planned != -1 && budget_is_device && be->memory_used) {
        /* Planning against the device itself: what is already in use (the
         * context, library handles, and the kernels the scratch queries
         * loaded) is not there for the arenas, and NCCL and the libraries
         * take more once training starts: on an H100 about 1.2 GiB more was
         * in use when the arenas were allocated than when the plan measured
         * (cause not pinned down), so the margin is 2 GiB. Plan again with
         * that reserve when it exceeds the flat one. */
        double reserve = (double)be->memory_used() + 2.0 * GIB;
        if (reserve > target.reserved_bytes) {
            target.reserved_bytes = reserve;
            planned = plan_compile(&plan, &cfg, &model, world, &target, err, sizeof err);
        }
    }
    if (planned == -1 || (planned != 0 && !cli.explain)) usage_error(&ranks, "%s%s", plan_error_where(&cfg, err), err);

    early_stop(&ranks);
    if (cli.explain) {
        /* A plan that does not fit is still shown (its memory table says by
         * how much); the exit status says it cannot run. */
        if (lead_rank) {
            char buf[32];
            printf("memory budget per rank: %s (%s)\n", mem > 0 ? asp_fmt_bytes(buf, sizeof buf, mem) : "unlimited",
                   mem_from);
            if (target.host_memory_bytes > 0)
                printf("host budget per rank: %s (%s: a node's memory less a tenth, at least 6 GiB, for the "
                       "system, shared by %d rank%s)\n",
                       asp_fmt_bytes(buf, sizeof buf, target.host_memory_bytes), host_from, node_ranks,
                       node_ranks == 1 ? "" : "s");
            else
                printf("host budget per rank: unlimited (%s)\n", host_from);
            plan_explain(&plan, &cfg, stdout);
            fflush(stdout);
        }
        model_free(&model);
        if (planned != 0) usage_error(&ranks, "%s", err);
        par_finalize(&ranks);
        return 0;
    }

    /* On a backend whose device memory is host memory, the arenas and the
     * pinned host regions share the node: refuse what it cannot hold rather
     * than be killed allocating it. */
    if (be && be->device_memory && be->device_memory() == 0 && host_share > 0) {
        double need = (double)plan.mem.device_total + (double)plan.mem.host_total;
        if (need > host_share) {
            char a[32], b[32], c[32], d[32];
            usage_error(&ranks,
                        "the plan needs %s of this node's memory per rank (%s of arenas and %s of pinned host memory "
                        "for offloaded activations and model state), but the node allows %s per rank (%d rank(s) on "
                        "it); lower checkpointing.memory_budget_gib or train.seq_len, turn checkpointing.offload "
                        "off, or add ranks",
                        asp_fmt_bytes(a, sizeof a, need), asp_fmt_bytes(b, sizeof b, (double)plan.mem.device_total),
                        asp_fmt_bytes(c, sizeof c, (double)plan.mem.host_total),
                        asp_fmt_bytes(d, sizeof d, host_share), node_ranks);
        }
    }
    if (par_set_groups(&ranks, plan.sp, err, sizeof err) != 0) usage_error(&ranks, "%s", err);
    if (lead_rank) {
        char buf[32];
        asp_info("%s: %s model, %.4g M parameters, S = %lld, world %d = SP %d x DP %d, ZeRO-%d, SAC %s, memory budget %s",
                 cli.config, cfg.model.architecture, (double)model.n_params / 1e6, (long long)cfg.train.seq_len,
                 plan.world, plan.sp, plan.dp, plan.zero_stage, sac_policy_name(plan.policy),
                 mem > 0 ? asp_fmt_bytes(buf, sizeof buf, mem) : "unlimited");
        if (plan_host_bytes(&plan)) {
            char hb[32], hl[32];
            asp_info("host tier: the plan offloads %s per rank to pinned host memory (budget %s, %s)%s",
                     asp_fmt_bytes(hb, sizeof hb, (double)plan_host_bytes(&plan)),
                     asp_fmt_bytes(hl, sizeof hl, target.host_memory_bytes), host_from,
                     plan.inputs_offloaded ? "; the layer inputs too" : "");
        }
        if (plan_layers_mixed(&plan))
            asp_info("SAC per layer: attention's outputs fit in %d of %lld layers; layers %d-%lld recompute attention "
                     "too (--explain shows the plan)",
                     plan.layers_rich, (long long)model.L, plan.layers_rich, (long long)model.L - 1);
    }
    train_opts_t opts = {cli.dump};
    /* One collectives table per memory kind: NCCL for GPU buffers, MPI for
     * host memory (all of the cpu backend's buffers). */
    const coll_ops_t *coll = &coll_host;
#ifdef HAVE_CUDA
    if (be == &backend_cuda) {
        if (coll_nccl_init(&ranks, be->stream(), err, sizeof err) != 0) asp_die(ASP_EXIT_FAILURE, "%s", err);
        coll = &coll_nccl;
    }
#endif
    int status = train_run(&cfg, &plan, be, coll, &coll_host, &ranks, &opts);
    be->shutdown();
    model_free(&model);
    par_finalize(&ranks);
    return status;
}
