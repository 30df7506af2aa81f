#include "train.h"

#include <errno.h>
#include <math.h>
#include <signal.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "ckpt.h"
#include "data.h"
#include "exec.h"
#include "hf.h"
#include "util.h"

#define GIB (1024.0 * 1024.0 * 1024.0)

static volatile sig_atomic_t stop_signal = 0;
static volatile sig_atomic_t save_request = 0;   /* SIGUSR1: checkpoint and go on */

static void say(const char *s) {
    ssize_t w = write(STDERR_FILENO, s, strlen(s));
    (void)w;
}

/* Async-signal-safe: a flag, a line written with write(2), and for a second
 * interrupt the default action. */
static void on_signal(int sig) {
    if (sig == SIGUSR1) {
        save_request = 1;
        return;
    }
    if (stop_signal && sig != SIGUSR2) {
        signal(sig, SIG_DFL);
        raise(sig);
        return;
    }
    if (!stop_signal) {
        stop_signal = sig;
        if (asp_msg_rank <= 0)
            say(sig == SIGUSR2 ? "autosp-train: SIGUSR2: stopping at the end of this step with a checkpoint\n"
                : sig == SIGINT ? "autosp-train: SIGINT: stopping at the end of this step with a checkpoint "
                                  "(again to quit at once)\n"
                : "autosp-train: SIGTERM: stopping at the end of this step with a checkpoint (again to quit at once)\n");
    }
}

void train_install_signals(void) {
    struct sigaction sa;
    memset(&sa, 0, sizeof sa);
    sa.sa_handler = on_signal;
    sa.sa_flags = SA_RESTART;  /* a signal during a checkpoint write must not fail it */
    sigemptyset(&sa.sa_mask);
    sigaction(SIGINT, &sa, NULL);
    sigaction(SIGTERM, &sa, NULL);
    /* mpirun gives its ranks only a second between SIGTERM and SIGKILL but
     * passes SIGUSR2 through: launchers use it to ask for a clean stop. */
    sigaction(SIGUSR2, &sa, NULL);
    sigaction(SIGUSR1, &sa, NULL);
}

int train_stop_signal(void) { return (int)stop_signal; }

double train_lr(const train_config_t *t, int64_t step) {
    if (t->warmup_steps > 0 && step <= t->warmup_steps) return t->lr * (double)step / (double)t->warmup_steps;
    int64_t decay = t->steps - t->warmup_steps;
    if (decay <= 0) return t->lr;
    double progress = (double)(step - t->warmup_steps) / (double)decay;
    if (progress > 1) progress = 1;
    return t->min_lr + 0.5 * (t->lr - t->min_lr) * (1.0 + cos(M_PI * progress));
}

typedef struct {
    const double *losses;
    int64_t steps;
    const float *grads;
    size_t n;
} dump_t;

static int fill_dump(FILE *f, void *ctx, char *err, size_t errlen) {
    const dump_t *d = ctx;
    int64_t np = (int64_t)d->n;
    int ok = fwrite(DUMP_MAGIC, 1, 8, f) == 8 && fwrite(&np, sizeof np, 1, f) == 1 &&
             fwrite(&d->steps, sizeof d->steps, 1, f) == 1 &&
             fwrite(d->losses, sizeof(double), (size_t)d->steps, f) == (size_t)d->steps &&
             fwrite(d->grads, sizeof(float), d->n, f) == d->n;
    return ok ? 0 : -1;
}

static void write_dump(const char *path, const double *losses, int64_t steps, const float *grads, size_t n) {
    dump_t d = {losses, steps, grads, n};
    char err[CFG_PATH_MAX + 256];
    if (asp_write_atomic(path, fill_dump, &d, err, sizeof err) != 0) asp_die(ASP_EXIT_FAILURE, "%s", err);
}

static const char *fmt_rate(char *buf, size_t len, double v) {
    if (v >= 1e6) snprintf(buf, len, "%.2fM", v / 1e6);
    else if (v >= 1e3) snprintf(buf, len, "%.1fK", v / 1e3);
    else snprintf(buf, len, "%.0f", v);
    return buf;
}

/* "4.2s", "42s", "3m05s", "2h03m" */
static const char *fmt_duration(char *buf, size_t len, double s) {
    if (!(s >= 0) || s > 1e9) snprintf(buf, len, "?");
    else if (s < 10) snprintf(buf, len, "%.1fs", s);
    else if (s < 60) snprintf(buf, len, "%.0fs", s);
    else if (s < 3600) snprintf(buf, len, "%dm%02ds", (int)(s / 60), (int)s % 60);
    else snprintf(buf, len, "%dh%02dm", (int)(s / 3600), (int)(s / 60) % 60);
    return buf;
}

/* Progress inside a long step (rank 0): once a step has run `every` seconds
 * (ASP_PROGRESS_S, default 10), a line at most that often says which layer it
 * has reached, so that minutes-long steps at long S are not silent. */
static struct {
    int64_t step, steps, micro_steps;
    int micro;
    double t0, last, prev_dt, every;
} progress;

static void on_progress(int phase, int layer, int layers) {
    if (phase == 0 && layer == 0) progress.micro++;
    double now = asp_now();
    if (now - progress.t0 < progress.every || now - progress.last < progress.every) return;
    progress.last = now;
    char a[24], b[24], mb[48] = "";
    if (progress.micro_steps > 1)
        snprintf(mb, sizeof mb, " of micro-batch %d/%lld", progress.micro, (long long)progress.micro_steps);
    printf("  step %lld/%lld: %s layer %d/%d%s, %s into the step%s%s%s\n", (long long)progress.step,
           (long long)progress.steps, phase ? "backward" : "forward", phase ? layers - layer : layer + 1, layers, mb,
           fmt_duration(a, sizeof a, now - progress.t0), progress.prev_dt > 0 ? " (the previous step took " : "",
           progress.prev_dt > 0 ? fmt_duration(b, sizeof b, progress.prev_dt) : "", progress.prev_dt > 0 ? ")" : "");
    fflush(stdout);
}

/* A metrics line that cannot be written ends the run: on a full disk the log
 * would otherwise stop mid-line while the run reports success. */
static void metrics_failed(const config_t *cfg, int e) {
    asp_die(ASP_EXIT_FAILURE, "cannot write %s/metrics.jsonl: %s; free space in io.run_dir (or fix its "
            "permissions) and run again: training resumes from the last checkpoint", cfg->io.run_dir,
            strerror(e ? e : EIO));
}

/* After the first step every buffer the engine uses exists (arenas, library
 * workspaces grown on first use): compare with what the plan predicted. */
/* Peak resident memory of this process (VmHWM), bytes; 0 when unknown. */
static double host_peak_resident(void) {
    FILE *f = fopen("/proc/self/status", "r");
    if (!f) return 0;
    char line[256];
    double kib = 0;
    while (fgets(line, sizeof line, f))
        if (strncmp(line, "VmHWM:", 6) == 0) kib = atof(line + 6);
    fclose(f);
    return kib * 1024;
}

static void report_memory(exec_t *e, const plan_t *plan, int lead) {
    size_t measured = exec_measured_bytes(e);
    if (lead && plan_host_bytes(plan)) {
        char a[32], b[32], c[32];
        asp_info("host memory: plan places %s (%zu B) in pinned host memory per rank; allocated %s (%zu B) in "
                 "%.1f s; process peak resident %s",
                 asp_fmt_bytes(a, sizeof a, (double)plan_host_bytes(plan)), plan_host_bytes(plan),
                 asp_fmt_bytes(b, sizeof b, (double)exec_host_bytes(e)), exec_host_bytes(e),
                 exec_host_alloc_seconds(e), asp_fmt_bytes(c, sizeof c, host_peak_resident()));
    }
    if (!lead || !measured) return;
    double arenas = (double)plan->mem.device_total - plan->target.reserved_bytes;
    char a[32], b[32], c[32];
    asp_info("device memory: plan predicts %s of arenas (+ %s reserved for libraries; %.0f B in all); measured %s "
             "allocated by the engine",
             asp_fmt_bytes(a, sizeof a, arenas), asp_fmt_bytes(b, sizeof b, plan->target.reserved_bytes),
             (double)plan->mem.device_total, asp_fmt_bytes(c, sizeof c, (double)measured));
    /* Allocation granularity dominates tiny plans: judge only real sizes. */
    double ratio = (double)measured / arenas;
    if (arenas > 256.0 * 1024 * 1024 && (ratio > 1.1 || ratio < 0.9))
        asp_warn("measured device memory differs from the plan's prediction by %+.0f%%", (ratio - 1) * 100);
}

/* ------------------------------------------------------------------ checkpoints */

/* Write the checkpoint of `step` (collective). A failure is reported, and
 * training goes on: the previous checkpoint is still whole. */
/* The latest validation loss, recorded in checkpoints. */
static int64_t val_step_last;
static double val_loss_last;

static int save_checkpoint(const config_t *cfg, const plan_t *plan, exec_t *e, const ranks_t *r,
                           const coll_ops_t *host_coll, const loader_t *loader, int64_t step) {
    char err[4096];
    ckpt_state_t st = {step, loader->epoch, loader->cursor, loader->seed, val_step_last, val_loss_last};
    double t0 = asp_now();
    if (ckpt_save(cfg, plan, e, r, host_coll, &st, err, sizeof err) != 0) {
        if (r->world_rank == 0) asp_warn("checkpoint of step %lld failed: %s", (long long)step, err);
        return -1;
    }
    if (r->world_rank == 0)
        asp_info("checkpoint: %s/checkpoints/step-%08lld (%.2f s)", cfg->io.run_dir, (long long)step, asp_now() - t0);
    return 0;
}

static const char *signal_name(int sig) {
    static char other[24];
    switch (sig) {
    case SIGINT: return "SIGINT";
    case SIGTERM: return "SIGTERM";
    case SIGUSR2: return "SIGUSR2";
    case SIGHUP: return "SIGHUP";
    default: snprintf(other, sizeof other, "signal %d", sig); return other;
    }
}

/* A stop signal ended training before its last step, after the checkpoint of
 * the step reached: rank 0 says why and that it resumes, on the console and
 * as a last metrics.jsonl line (kept when the run resumes). Launchers (the
 * Slurm batch files) requeue on its exit status, ASP_EXIT_STOPPED. */
static void report_early_stop(FILE *metrics, int sig, int64_t step, int64_t steps, int lead) {
    if (!lead) return;
    asp_info("stopped early by %s at step %lld of %lld with its checkpoint: resumable, run the same command to go "
             "on (exit status %d)",
             signal_name(sig), (long long)step, (long long)steps, ASP_EXIT_STOPPED);
    if (metrics)
        fprintf(metrics, "{\"step\": %lld, \"stopped\": \"%s\", \"resumable\": true, \"exit_status\": %d}\n",
                (long long)step, signal_name(sig), ASP_EXIT_STOPPED);
}

/* Keep the metrics lines of steps 1..upto (a resumed run rewrites the steps
 * after its checkpoint), then open the file for appending. */
static FILE *open_metrics(const char *path, int64_t upto) {
    if (upto > 0) {
        FILE *in = fopen(path, "r");
        char tmp[CFG_PATH_MAX + 48];
        snprintf(tmp, sizeof tmp, "%s.tmp", path);
        FILE *out = in ? fopen(tmp, "w") : NULL;
        if (out) {
            char line[2048];
            long long s;
            while (fgets(line, sizeof line, in))
                if (sscanf(line, "{\"step\": %lld", &s) == 1 && s <= upto) fputs(line, out);
            if (fclose(out) != 0 || rename(tmp, path) != 0) unlink(tmp);
        }
        if (in) fclose(in);
    }
    return fopen(path, upto > 0 ? "a" : "w");
}

/* io.resume: load the checkpoint into the engine and the loader, and open the
 * metrics log (appended when resuming). Returns 1 resumed, 0 fresh, -1 refused. */
static int resume_run(const config_t *cfg, const plan_t *plan, exec_t *e, const ranks_t *r,
                      const coll_ops_t *host_coll, loader_t *loader, ckpt_state_t *st, FILE **metrics) {
    char err[4096], dir[CFG_PATH_MAX + 64];
    int lead = r->world_rank == 0;
    int rs = ckpt_resume(cfg, plan, e, r, host_coll, st, dir, sizeof dir, err, sizeof err);
    if (rs < 0) {
        if (lead) fprintf(stderr, "autosp-train: error: cannot resume: %s\n", err);
        return -1;
    }
    if (rs == 1) {
        if (st->seed != cfg->train.seed && lead)
            asp_warn("train.seed is %llu but %s was written with seed %llu: the checkpoint's seed is kept "
                     "(it fixes the data order)", (unsigned long long)cfg->train.seed, dir,
                     (unsigned long long)st->seed);
        /* loader_next rebuilds the epoch's order from (seed, epoch) */
        loader->seed = st->seed;
        loader->epoch = st->epoch;
        loader->cursor = st->cursor;
        loader->order_epoch = -1;
        if (lead)
            asp_info("resumed from %s: step %lld, data epoch %lld, sample %lld", dir, (long long)st->step,
                     (long long)st->epoch, (long long)st->cursor);
        if (st->step >= cfg->train.steps && lead)
            asp_warn("the checkpoint is at step %lld and train.steps is %lld: nothing to train (raise train.steps "
                     "to go on, or set io.resume=never to start over)", (long long)st->step,
                     (long long)cfg->train.steps);
    }
    if (lead) {
        char path[CFG_PATH_MAX + 32];
        snprintf(path, sizeof path, "%s/metrics.jsonl", cfg->io.run_dir);
        *metrics = open_metrics(path, rs == 1 ? st->step : 0);
        if (!*metrics) asp_die(ASP_EXIT_FAILURE, "cannot write %s: %s", path, strerror(errno));
    }
    return rs;
}

/* The EOS id that ends documents (data.documents: eos): data.eos_token_id,
 * else the one the shard's header records. */
static int64_t documents_eos(const config_t *cfg, const shard_t *shard, const model_t *m) {
    int64_t eos = cfg->data.eos_token_id >= 0 ? cfg->data.eos_token_id : shard->eos_token_id;
    if (eos < 0)
        asp_die(ASP_EXIT_USAGE, "data.documents is eos, but data.eos_token_id is not set and %s records no EOS id; "
                "make the shard with scripts/prepare_data.py --eos or set data.eos_token_id", shard->path);
    if (eos >= m->V)
        asp_die(ASP_EXIT_USAGE, "data.eos_token_id %lld is >= the model vocab_size %lld; give the id of the "
                "tokenizer's EOS token", (long long)eos, (long long)m->V);
    return eos;
}

/* Validation: the first rounds of val_loader's shard (in order), one global
 * batch per round, forward only; the mean over all their valid targets. */
typedef struct {
    shard_t shard;
    loader_t loader;
    int64_t rounds;
} val_t;

static double run_eval(exec_t *e, const plan_t *plan, val_t *v, exec_batch_t *batches, int32_t *tok, int32_t *tgt,
                       int32_t *pos, int32_t *docs, int64_t *valid, int64_t *tokens_out) {
    int64_t mb = plan->micro_steps, nl = plan->seq_local;
    v->loader.epoch = 0;
    v->loader.cursor = 0;
    double sum = 0, count = 0;
    for (int64_t round = 0; round < v->rounds; round++) {
        for (int64_t i = 0; i < mb; i++)
            valid[i] = loader_next_docs(&v->loader, tok + i * nl, tgt + i * nl, pos + i * nl,
                                        docs ? docs + i * plan->seq_pad : NULL, NULL);
        exec_result_t res;
        exec_eval(e, batches, valid, &res);
        sum += res.loss * (double)res.valid_targets;
        count += (double)res.valid_targets;
    }
    *tokens_out = v->rounds * mb * plan->dp * plan->seq_len;
    return sum / count;
}

int train_run(const config_t *cfg, const plan_t *plan, const backend_t *be, const coll_ops_t *coll,
              const coll_ops_t *host_coll, const ranks_t *r, const train_opts_t *opts) {
    char err[2048];
    const model_t *m = plan->model;
    const train_config_t *tc = &cfg->train;
    int lead = r->world_rank == 0;

    /* ---- data */
    if (!cfg->data.path[0])
        asp_die(ASP_EXIT_USAGE, "%s: data.path is not set: give a token shard (docs/data.md), e.g. --set data.path=...",
                cfg->source);
    char data_path[CFG_PATH_MAX];
    if (config_resolve_path(cfg, cfg->data.path, data_path, sizeof data_path) != 0)
        asp_die(ASP_EXIT_USAGE, "data.path is too long");
    shard_t shard;
    if (shard_open(&shard, data_path, m->V, err, sizeof err) != 0) asp_die(ASP_EXIT_USAGE, "%s", err);
    loader_t loader;
    if (loader_init(&loader, &shard, plan->seq_len, plan->seq_pad, r->sp_rank, r->sp_size, r->dp_rank, r->dp_size,
                    cfg->data.shuffle, tc->seed, err, sizeof err) != 0)
        asp_die(ASP_EXIT_USAGE, "%s", err);
    const int documents = config_documents_eos(cfg);
    int64_t eos = documents ? documents_eos(cfg, &shard, m) : -1;
    loader_set_documents(&loader, eos);

    /* ---- validation shard (data.val_path) */
    val_t val;
    int have_val = cfg->data.val_path[0] != 0;
    memset(&val, 0, sizeof val);
    if (have_val) {
        char val_path[CFG_PATH_MAX];
        if (config_resolve_path(cfg, cfg->data.val_path, val_path, sizeof val_path) != 0)
            asp_die(ASP_EXIT_USAGE, "data.val_path is too long");
        if (shard_open(&val.shard, val_path, m->V, err, sizeof err) != 0) asp_die(ASP_EXIT_USAGE, "%s", err);
        if (loader_init(&val.loader, &val.shard, plan->seq_len, plan->seq_pad, r->sp_rank, r->sp_size, r->dp_rank,
                        r->dp_size, 0, tc->seed, err, sizeof err) != 0)
            asp_die(ASP_EXIT_USAGE, "data.val_path: %s", err);
        loader_set_documents(&val.loader, eos);
        int64_t per_round = tc->global_batch_size * tc->seq_len;
        int64_t want = tc->eval_tokens > 0 ? tc->eval_tokens : per_round;
        val.rounds = (want + per_round - 1) / per_round;
        int64_t have = val.loader.n_samples / tc->global_batch_size;
        if (val.rounds > have) {
            if (lead)
                asp_warn("data.val_path %s holds %lld samples of %lld tokens, fewer than train.eval_tokens %lld ask "
                         "for: evaluating on %lld tokens", val_path, (long long)val.loader.n_samples,
                         (long long)tc->seq_len, (long long)want,
                         (long long)((have > 0 ? have : 1) * per_round));
            val.rounds = have > 0 ? have : 1;
        }
    }

    /* ---- run folder: the effective config and the metrics log */
    FILE *metrics = NULL;
    if (lead) {
        if (asp_mkdir_p(cfg->io.run_dir) != 0)
            asp_die(ASP_EXIT_USAGE, "cannot create io.run_dir %s: %s", cfg->io.run_dir, strerror(errno));
        char path[CFG_PATH_MAX + 32];
        snprintf(path, sizeof path, "%s/config.yaml", cfg->io.run_dir);
        if (config_write_yaml(cfg, path, err, sizeof err) != 0) asp_die(ASP_EXIT_FAILURE, "%s", err);
    }

    /* ---- engine */
    exec_t *e = exec_create(plan, be, coll, host_coll, r);
    exec_init_params(e, tc->seed);
    if (cfg->model.from_pretrained[0]) hf_train_import(e, cfg, m);

    /* ---- resume (io.resume) and the metrics log */
    ckpt_state_t resumed = {0, 0, 0, tc->seed, 0, 0};
    int rs = resume_run(cfg, plan, e, r, host_coll, &loader, &resumed, &metrics);
    if (rs < 0) {
        exec_destroy(e);
        loader_free(&loader);
        shard_close(&shard);
        return ASP_EXIT_USAGE;
    }

    int64_t mb = plan->micro_steps, nl = plan->seq_local;
    int32_t *tok = asp_malloc((size_t)(mb * nl) * sizeof(int32_t), "batch tokens");
    int32_t *tgt = asp_malloc((size_t)(mb * nl) * sizeof(int32_t), "batch targets");
    int32_t *pos = asp_malloc((size_t)(mb * nl) * sizeof(int32_t), "batch positions");
    int64_t *valid = asp_malloc((size_t)mb * sizeof(int64_t), "batch counts");
    /* documents: every rank holds the whole sample's document starts */
    int32_t *docs = documents ? asp_malloc((size_t)(mb * plan->seq_pad) * sizeof(int32_t), "batch documents") : NULL;
    exec_batch_t *batches = asp_malloc((size_t)mb * sizeof(exec_batch_t), "batches");
    for (int64_t i = 0; i < mb; i++) {
        batches[i].tokens = tok + i * nl;
        batches[i].targets = tgt + i * nl;
        batches[i].positions = pos + i * nl;
        batches[i].doc_start = docs ? docs + i * plan->seq_pad : NULL;
    }
    /* FLOPs of a step with documents: 6N per token plus each document's causal attention */
    const double attn_flops_per_sq = 6.0 * (double)m->L * (double)(m->hq * m->hd);
    double *losses = asp_calloc((size_t)tc->steps, sizeof(double), "loss history");
    float *dump_grads = NULL;

    train_install_signals();   /* main installed them already; harmless again */

    double tokens_per_step = (double)tc->global_batch_size * (double)tc->seq_len;
    /* MFU against the card's dense bf16 peak (0: unknown, not printed) */
    double peak_tflops = be->peak_tflops ? be->peak_tflops() : 0;
    size_t peak_bytes = 0;
    double t_start = asp_now(), t_timed = 0, tokens_timed = 0, first_loss = 0, last_loss = 0;
    /* the step line averages over the steps since the previous line */
    double win_time = 0, win_tokens = 0, win_flops = 0;
    int64_t win_steps = 0, n_timed = 0;
    int64_t step = resumed.step, saved_step = resumed.step;
    if (lead) {
        progress.steps = tc->steps;
        progress.micro_steps = mb;
        const char *every = getenv("ASP_PROGRESS_S");
        progress.every = every && atof(every) > 0 ? atof(every) : 10.0;
        exec_progress_hook = on_progress;
    }
    if (lead)
        asp_info("training %lld steps: %.0f tokens per step, %d rank(s) as SP %d x DP %d, %s backend (set-up "
                 "took %.1f s)",
                 (long long)tc->steps, tokens_per_step, r->world_size, r->sp_size, r->dp_size, be->name,
                 asp_since_start());
    /* Test-only fault injection (docs/launch.md): rank ASP_FAIL_RANK fails
     * at step ASP_FAIL_STEP, to show that the whole job ends, not hangs. */
    const char *fail_rank_env = getenv("ASP_FAIL_RANK"), *fail_step_env = getenv("ASP_FAIL_STEP");
    int fail_rank = fail_rank_env ? atoi(fail_rank_env) : -1;
    int64_t fail_step = fail_step_env ? atoll(fail_step_env) : 1;
    while (step < tc->steps) {
        /* Ranks may see a signal at different times; agreeing on it at the
         * step boundary keeps every rank's collectives matched. */
        double flags[2] = {stop_signal, save_request};
        save_request = 0;
        host_coll->allreduce_sum(r->world, flags, 2, DT_F64);
        double stop = flags[0];
        if (flags[1] > 0 && !(stop > 0) && step > saved_step) {
            if (lead) asp_info("SIGUSR1: checkpoint at step %lld", (long long)step);
            if (save_checkpoint(cfg, plan, e, r, host_coll, &loader, step) == 0) saved_step = step;
        }
        if (stop > 0) {
            if (!stop_signal) stop_signal = SIGTERM;
            if (lead && stop_signal == SIGUSR2)
                asp_info("stopped on request (SIGUSR2) after step %lld of %lld", (long long)step, (long long)tc->steps);
            else if (lead)
                asp_warn("stopped by signal %d after step %lld of %lld", (int)stop_signal, (long long)step,
                         (long long)tc->steps);
            break;
        }
        step++;
        if (fail_rank == r->world_rank && step == fail_step)
            asp_die(ASP_EXIT_FAILURE, "injected failure at step %lld (ASP_FAIL_RANK=%d)", (long long)step, fail_rank);
        double t0 = asp_now();
        progress.step = step;
        progress.micro = 0;
        progress.t0 = progress.last = t0;
        double len_sq = 0;
        for (int64_t i = 0; i < mb; i++) {
            double sq = 0;
            valid[i] = loader_next_docs(&loader, tok + i * nl, tgt + i * nl, pos + i * nl,
                                        docs ? docs + i * plan->seq_pad : NULL, &sq);
            len_sq += sq;
        }
        double step_flops = plan->flops_per_step;
        if (documents) {
            /* SP ranks of a group hold the same samples: sum over DP */
            host_coll->allreduce_sum(r->dp, &len_sq, 1, DT_F64);
            step_flops = plan_flops_per_token(m, 0) * tokens_per_step + attn_flops_per_sq * len_sq;
        }
        exec_result_t res;
        exec_forward_backward(e, batches, valid, &res);
        if (opts->dump_path && step == resumed.step + 1) {
            dump_grads = asp_malloc(plan->n_params * sizeof(float), "gradient dump");
            exec_gather_grads(e, dump_grads);
        }
        exec_optim_t opt = {train_lr(tc, step), tc->beta1, tc->beta2, tc->eps, tc->weight_decay, tc->grad_clip, step};
        exec_optimizer_step(e, &opt, &res);
        be->synchronize();
        double dt = asp_now() - t0;
        coll_times_t ct;
        exec_comm_times(e, &ct);
        double host_work = 0, host_exposed = 0;
        exec_host_optimizer_times(e, &host_work, &host_exposed);
        exec_copy_times_t cp;
        exec_copy_times(e, &cp);
        if (!isfinite(res.loss))
            asp_die(ASP_EXIT_FAILURE, "loss is %f at step %lld: training diverged (lower train.lr?)", res.loss,
                    (long long)step);
        losses[step - 1] = res.loss;
        if (step == resumed.step + 1) {
            first_loss = res.loss;
            report_memory(e, plan, lead);
            /* the first step also builds library plans: profile the rest */
            if (tc->steps > step) exec_profile_reset(e);
        }
        last_loss = res.loss;
        if (step > resumed.step + 1 || tc->steps == resumed.step + 1) {
            t_timed += dt;
            tokens_timed += tokens_per_step;
            n_timed++;
        }
        progress.prev_dt = dt;
        win_time += dt;
        win_tokens += tokens_per_step;
        win_steps++;
        win_flops += step_flops;
        double tps = tokens_per_step / dt, tflops = step_flops / dt / 1e12 / r->world_size;
        double mfu = peak_tflops > 0 ? tflops / peak_tflops : 0;
        size_t used = exec_measured_bytes(e);
        if (used > peak_bytes) peak_bytes = used;
        if (lead && (step % cfg->io.log_every == 0 || step == 1 || step == tc->steps)) {
            /* rates over the window since the previous line; ETA from the
             * mean step after the first (which also builds library plans) */
            double w_tps = win_tokens / win_time, w_ms = win_time / (double)win_steps * 1e3;
            double w_tflops = win_flops / win_time / 1e12 / r->world_size;
            double mean_dt = n_timed > 0 ? t_timed / (double)n_timed : dt;
            char rate[32], el[24], eta[24];
            char extra[96] = "", comm[96] = "", host[48] = "", copy[96] = "";
            if (peak_tflops > 0)
                snprintf(extra, sizeof extra, " | MFU %.1f%% | peak %.2f GiB", 100 * w_tflops / peak_tflops,
                         (double)peak_bytes / GIB);
            if (r->world_size > 1)
                snprintf(comm, sizeof comm, " | a2a %.1f ms | grad comm %.1f ms (%.1f exposed)", ct.a2a_s * 1e3,
                         ct.grad_s * 1e3, ct.grad_exposed_s * 1e3);
            if (plan->mem.offload_slot_bytes) {
                char moved[32];
                snprintf(copy, sizeof copy, " | offload %s, copy %.1f ms (%.1f exposed)",
                         asp_fmt_bytes(moved, sizeof moved, cp.bytes), cp.busy_s * 1e3, cp.exposed_s * 1e3);
            }
            if (plan->optim_offload)
                snprintf(host, sizeof host, " | host optimizer %.0f ms (%.0f exposed)", host_work * 1e3,
                         host_exposed * 1e3);
            printf("step %6lld/%lld (%.1f%%) | loss %.4f | lr %.2e | grad norm %.3f | %s tok/s | %.1f ms | %.3f TFLOP/s%s%s%s%s"
                   " | elapsed %s | ETA %s\n",
                   (long long)step, (long long)tc->steps, 100.0 * (double)step / (double)tc->steps, res.loss, opt.lr,
                   res.grad_norm, fmt_rate(rate, sizeof rate, w_tps), w_ms, w_tflops, extra, comm, copy, host,
                   fmt_duration(el, sizeof el, asp_now() - t_start),
                   fmt_duration(eta, sizeof eta, mean_dt * (double)(tc->steps - step)));
            fflush(stdout);
            win_time = win_tokens = win_flops = 0;
            win_steps = 0;
        }
        if (metrics) {
            fprintf(metrics,
                    "{\"step\": %lld, \"loss\": %.6f, \"lr\": %.6e, \"grad_norm\": %.6f, \"tokens_per_s\": %.1f, "
                    "\"ms\": %.3f, \"tflops\": %.4f, \"mfu\": %.4f, \"peak_gib\": %.3f, \"valid_targets\": %lld, "
                    "\"a2a_ms\": %.3f, \"grad_comm_ms\": %.3f, \"grad_exposed_ms\": %.3f, \"host_optimizer_ms\": %.3f, "
                    "\"host_optimizer_exposed_ms\": %.3f, \"offload_gib\": %.4f, \"copy_ms\": %.3f, \"copy_exposed_ms\": %.3f}\n",
                    (long long)step, res.loss, opt.lr, res.grad_norm, tps, dt * 1e3, tflops, mfu,
                    (double)peak_bytes / GIB, (long long)res.valid_targets, ct.a2a_s * 1e3, ct.grad_s * 1e3,
                    ct.grad_exposed_s * 1e3, host_work * 1e3, host_exposed * 1e3, cp.bytes / GIB, cp.busy_s * 1e3,
                    cp.exposed_s * 1e3);
            if (fflush(metrics) != 0 || ferror(metrics)) metrics_failed(cfg, errno);
        }
        if (have_val && ((tc->eval_every > 0 && step % tc->eval_every == 0) || step == tc->steps)) {
            double te = asp_now();
            int64_t vt = 0;
            double vl = run_eval(e, plan, &val, batches, tok, tgt, pos, docs, valid, &vt);
            if (!isfinite(vl))
                asp_die(ASP_EXIT_FAILURE, "validation loss is %f at step %lld: training diverged (lower train.lr?)", vl,
                        (long long)step);
            val_step_last = step;
            val_loss_last = vl;
            double ms = (asp_now() - te) * 1e3;
            if (lead) {
                printf("eval %6lld/%lld | val loss %.4f | %lld tokens | %.1f ms\n", (long long)step,
                       (long long)tc->steps, vl, (long long)vt, ms);
                fflush(stdout);
            }
            if (metrics) {
                fprintf(metrics, "{\"step\": %lld, \"val_loss\": %.6f, \"val_tokens\": %lld, \"val_ms\": %.3f}\n",
                        (long long)step, vl, (long long)vt, ms);
                fflush(metrics);
            }
        }
        if (cfg->io.save_every > 0 && step % cfg->io.save_every == 0 && step < tc->steps &&
            save_checkpoint(cfg, plan, e, r, host_coll, &loader, step) == 0)
            saved_step = step;
    }
    /* ---- checkpoint at the end of training or when stopped by a signal */
    /* a signal that came after the last step boundary: agree on it too */
    double late_stop = stop_signal;
    host_coll->allreduce_sum(r->world, &late_stop, 1, DT_F64);
    int want_ckpt = step > saved_step && (cfg->io.save_at_end || late_stop > 0);
    int ckpt_failed = want_ckpt && save_checkpoint(cfg, plan, e, r, host_coll, &loader, step) != 0;
    double total = asp_now() - t_start;
    if (lead && step > resumed.step) {
        char rate[32];
        printf("done: %lld steps in %.1f s | loss %.4f -> %.4f | %s tok/s (mean after step 1)\n", (long long)step,
               total, first_loss, last_loss, fmt_rate(rate, sizeof rate, t_timed > 0 ? tokens_timed / t_timed : 0));
        fflush(stdout);
    } else if (lead) {
        printf("done: no step trained (the run is at step %lld of %lld)\n", (long long)step, (long long)tc->steps);
        fflush(stdout);
    }
    if (lead) exec_print_profile(e, stdout);
    if (cfg->io.export_hf && !stop_signal) hf_train_export(e, cfg, m, be->param_dtype, lead);
    if (opts->dump_path && lead && dump_grads) write_dump(opts->dump_path, losses, step, dump_grads, plan->n_params);

    exec_progress_hook = NULL;
    int stopped_early = stop_signal && !ckpt_failed && step < tc->steps;
    if (stopped_early) report_early_stop(metrics, (int)stop_signal, step, tc->steps, lead);
    if (metrics && fclose(metrics) != 0) metrics_failed(cfg, errno);
    /* A stopped run exits non-zero, and mpirun kills the job when the first
     * rank does: meet here, after rank 0's last output and files, first. */
    host_coll->barrier(r->world);
    free(dump_grads);
    free(losses);
    free(batches);
    free(docs);
    free(valid);
    free(pos);
    free(tgt);
    free(tok);
    exec_destroy(e);
    loader_free(&loader);
    shard_close(&shard);
    if (have_val) {
        loader_free(&val.loader);
        shard_close(&val.shard);
    }
    /* a stop after the last step is a finished run */
    return ckpt_failed ? ASP_EXIT_FAILURE : stopped_early ? ASP_EXIT_STOPPED : 0;
}
