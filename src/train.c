/* The training loop (train_run): set up, then for each step the data, the
 * forward and backward, the optimizer, the log, evaluation and checkpoints,
 * until the last step or a stop signal; then the closing checkpoint. What a
 * run reports is in train_log.c; signals and the learning-rate schedule are
 * here too. */
#include "train.h"

#include <errno.h>
#include <limits.h>
#include <math.h>
#include <signal.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "io/ckpt.h"
#include "io/data.h"
#include "exec/exec.h"
#include "io/hf.h"
#include "io/runlock.h"
#include "train_log.h"
#include "util.h"

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
                : sig == SIGHUP ? "autosp-train: SIGHUP (terminal or session closed): stopping at the end of this "
                                  "step with a checkpoint (again to quit at once)\n"
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
    /* a closed terminal or ssh session: stop cleanly, as for SIGTERM */
    sigaction(SIGHUP, &sa, NULL);
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

/* ------------------------------------------------------------------ the run */

/* Validation: the first rounds of the validation shard (in order), one global
 * batch per round, forward only. */
typedef struct {
    shard_t shard;
    loader_t loader;
    int64_t rounds;
} val_t;

/* Host buffers of one global batch: this rank's part of every micro-step. */
typedef struct {
    int32_t *tok, *tgt, *pos, *docs;  /* docs: the whole sample's document starts (data.documents: eos) */
    int64_t *valid;                   /* valid targets of each micro-step's sample */
    exec_batch_t *batches;
} batch_t;

/* What train_run sets up once and every step reads. */
typedef struct {
    const config_t *cfg;
    const plan_t *plan;
    const backend_t *be;
    const coll_ops_t *host_coll;
    const ranks_t *r;
    const train_opts_t *opts;
    int lead;
    shard_t shard;
    loader_t loader;
    int documents;
    int64_t eos;
    uint64_t data_bytes, data_fingerprint;   /* of the training shard (shard_fingerprint), taken once */
    val_t val;
    int have_val;
    int64_t val_step_last;      /* the latest validation loss, recorded in checkpoints */
    double val_loss_last;
    exec_t *e;
    batch_t b;
    ckpt_state_t resumed;
    int64_t step, saved_step;
    double *losses;             /* every step's loss, for --dump-grads */
    float *dump_grads;
    train_log_t log;
    int fail_rank;              /* ASP_FAIL_RANK / ASP_FAIL_STEP: test-only fault injection */
    int64_t fail_step;
} run_t;

/* Write the checkpoint of the run's step (collective). A failure is
 * reported, and training goes on: the previous checkpoint is still whole. */
static int save_checkpoint(run_t *run) {
    char err[4096];
    const loader_t *l = &run->loader;
    ckpt_state_t st = {.step = run->step, .epoch = l->epoch, .cursor = l->cursor, .seed = l->seed,
                       .val_step = run->val_step_last, .val_loss = run->val_loss_last};
    st.data_bytes = run->data_bytes;
    st.data_fingerprint = run->data_fingerprint;
    double t0 = asp_now();
    if (ckpt_save(run->cfg, run->plan, run->e, run->r, run->host_coll, &st, err, sizeof err) != 0) {
        if (run->lead) asp_warn("checkpoint of step %lld failed: %s", (long long)run->step, err);
        return -1;
    }
    if (run->lead)
        asp_info("checkpoint: %s/checkpoints/step-%08lld (%.2f s)", run->cfg->io.run_dir, (long long)run->step,
                 asp_now() - t0);
    run->saved_step = run->step;
    return 0;
}

/* A resume on a training shard other than the one the checkpoint's run read
 * goes on (a user may extend or fix the data on purpose) but says so: the
 * data order and the position it resumes at refer to the old shard. */
static void warn_data_changed(const ckpt_state_t *st, const shard_t *shard, uint64_t bytes, uint64_t fp,
                              const char *dir) {
    if (!st->data_bytes || (bytes == st->data_bytes && fp == st->data_fingerprint)) return;
    asp_warn("data.path %s changed since %s was written: it was %llu bytes (fingerprint %016llx), it is %llu bytes "
             "(fingerprint %016llx) now; the run goes on from the checkpoint's data position (epoch %lld, sample "
             "%lld) in the new shard. To train on the old data, restore it; to start over on the new, set "
             "io.resume=never or another io.run_dir",
             shard->path, dir, (unsigned long long)st->data_bytes, (unsigned long long)st->data_fingerprint,
             (unsigned long long)bytes, (unsigned long long)fp, (long long)st->epoch, (long long)st->cursor);
}

/* io.resume: load the checkpoint into the engine and the loader, and open the
 * metrics log (appended when resuming). Returns 1 resumed, 0 fresh, -1 refused. */
static int resume_run(const config_t *cfg, const plan_t *plan, exec_t *e, const ranks_t *r,
                      const coll_ops_t *host_coll, loader_t *loader, const uint64_t data_id[2], ckpt_state_t *st,
                      FILE **metrics) {
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
        if (lead) warn_data_changed(st, loader->shard, data_id[0], data_id[1], dir);
        if (st->step >= cfg->train.steps && lead)
            asp_warn("the checkpoint is at step %lld and train.steps is %lld: nothing to train (raise train.steps "
                     "to go on, or set io.resume=never to start over)", (long long)st->step,
                     (long long)cfg->train.steps);
    }
    if (lead) {
        char path[CFG_PATH_MAX + 32];
        snprintf(path, sizeof path, "%s/metrics.jsonl", cfg->io.run_dir);
        *metrics = log_open_metrics(path, rs == 1 ? st->step : 0);
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

/* Open the shard of config key data.KEY; a relative path that names no file
 * gets the rule that a config's paths are relative to the config file, with
 * the path as written and as resolved, and how to fix it. Exits 2 on error. */
static void open_config_shard(const config_t *cfg, const char *key, const char *written, int64_t vocab,
                              shard_t *shard) {
    char path[CFG_PATH_MAX], err[2048];
    if (config_resolve_path(cfg, written, path, sizeof path) != 0) asp_die(ASP_EXIT_USAGE, "data.%s is too long", key);
    if (shard_open(shard, path, vocab, err, sizeof err) == 0) return;
    if (written[0] != '/' && access(path, F_OK) != 0 && cfg->source[0])
        asp_die(ASP_EXIT_USAGE, "%s\n  data.%s is '%s' in %s, which resolves to %s: paths in a config are relative "
                "to the config file's folder (%s), not to the working directory. Fix: make it relative to that "
                "folder or absolute, or give it with --set data.%s=PATH", err, key, written, cfg->source, path,
                cfg->base_dir[0] ? cfg->base_dir : ".", key);
    asp_die(ASP_EXIT_USAGE, "%s", err);
}

/* The training shard (data.path) and its loader; documents when asked for. */
static void open_data(run_t *run) {
    const config_t *cfg = run->cfg;
    const plan_t *plan = run->plan;
    const ranks_t *r = run->r;
    char err[2048];
    if (!cfg->data.path[0])
        asp_die(ASP_EXIT_USAGE, "%s: data.path is not set: give a token shard (docs/data.md), e.g. --set data.path=...",
                cfg->source);
    open_config_shard(cfg, "path", cfg->data.path, plan->model->V, &run->shard);
    shard_fingerprint(&run->shard, &run->data_bytes, &run->data_fingerprint);
    if (loader_init(&run->loader, &run->shard, plan->seq_len, plan->seq_pad, r->sp_rank, r->sp_size, r->dp_rank,
                    r->dp_size, cfg->data.shuffle, cfg->train.seed, err, sizeof err) != 0)
        asp_die(ASP_EXIT_USAGE, "%s", err);
    run->documents = config_documents_eos(cfg);
    run->eos = run->documents ? documents_eos(cfg, &run->shard, plan->model) : -1;
    loader_set_documents(&run->loader, run->eos);
}

/* The validation shard (data.val_path) and how many global batches of it
 * one evaluation reads (train.eval_tokens). */
static void open_validation(run_t *run) {
    const config_t *cfg = run->cfg;
    const train_config_t *tc = &cfg->train;
    const plan_t *plan = run->plan;
    const ranks_t *r = run->r;
    val_t *val = &run->val;
    char err[2048];
    memset(val, 0, sizeof *val);
    run->have_val = cfg->data.val_path[0] != 0;
    if (!run->have_val) return;
    open_config_shard(cfg, "val_path", cfg->data.val_path, plan->model->V, &val->shard);
    const char *path = val->shard.path;
    if (shard_check_pair(&run->shard, &val->shard, plan->model->V, err, sizeof err) != 0)
        asp_die(ASP_EXIT_USAGE, "%s", err);
    if (loader_init(&val->loader, &val->shard, plan->seq_len, plan->seq_pad, r->sp_rank, r->sp_size, r->dp_rank,
                    r->dp_size, 0, tc->seed, err, sizeof err) != 0)
        asp_die(ASP_EXIT_USAGE, "data.val_path: %s", err);
    loader_set_documents(&val->loader, run->eos);
    int64_t per_round = tc->global_batch_size * tc->seq_len;
    int64_t want = tc->eval_tokens > 0 ? tc->eval_tokens : per_round;
    val->rounds = (want + per_round - 1) / per_round;
    int64_t have = val->loader.n_samples / tc->global_batch_size;
    if (val->rounds > have) {
        if (run->lead)
            asp_warn("data.val_path %s holds %lld samples of %lld tokens, fewer than train.eval_tokens %lld ask "
                     "for: evaluating on %lld tokens", path, (long long)val->loader.n_samples,
                     (long long)tc->seq_len, (long long)want, (long long)((have > 0 ? have : 1) * per_round));
        val->rounds = have > 0 ? have : 1;
    }
}

/* The run folder and the effective config in it (rank 0). */
static void prepare_run_dir(const run_t *run) {
    if (!run->lead) return;
    const config_t *cfg = run->cfg;
    char err[2048], path[CFG_PATH_MAX + 32];
    /* an unreadable checkpoints path is an error before anything is written, and one run per folder */
    if (ckpt_check_run_dir(cfg, err, sizeof err) != 0) asp_die(ASP_EXIT_USAGE, "%s", err);
    if (asp_mkdir_p(cfg->io.run_dir) != 0)
        asp_die(ASP_EXIT_USAGE, "cannot create io.run_dir %s: %s", cfg->io.run_dir, strerror(errno));
    if (runlock_acquire(cfg->io.run_dir, err, sizeof err) != 0) asp_die(ASP_EXIT_USAGE, "%s", err);
    snprintf(path, sizeof path, "%s/config.yaml", cfg->io.run_dir);
    if (config_write_yaml(cfg, path, err, sizeof err) != 0) asp_die(ASP_EXIT_FAILURE, "%s", err);
}

static void batch_alloc(batch_t *b, const plan_t *plan, int documents) {
    int64_t mb = plan->micro_steps, nl = plan->seq_local;
    b->tok = asp_malloc((size_t)(mb * nl) * sizeof(int32_t), "batch tokens");
    b->tgt = asp_malloc((size_t)(mb * nl) * sizeof(int32_t), "batch targets");
    b->pos = asp_malloc((size_t)(mb * nl) * sizeof(int32_t), "batch positions");
    b->valid = asp_malloc((size_t)mb * sizeof(int64_t), "batch counts");
    /* documents: every rank holds the whole sample's document starts */
    b->docs = documents ? asp_malloc((size_t)(mb * plan->seq_pad) * sizeof(int32_t), "batch documents") : NULL;
    b->batches = asp_malloc((size_t)mb * sizeof(exec_batch_t), "batches");
    for (int64_t i = 0; i < mb; i++) {
        b->batches[i].tokens = b->tok + i * nl;
        b->batches[i].targets = b->tgt + i * nl;
        b->batches[i].positions = b->pos + i * nl;
        b->batches[i].doc_start = b->docs ? b->docs + i * plan->seq_pad : NULL;
    }
}

static void batch_free(batch_t *b) {
    free(b->batches);
    free(b->docs);
    free(b->valid);
    free(b->pos);
    free(b->tgt);
    free(b->tok);
}

/* Fill the batch with the loader's next samples; *len_sq (may be NULL) gets
 * the sum of their documents' squared lengths. */
static void load_samples(batch_t *b, loader_t *l, const plan_t *plan, double *len_sq) {
    int64_t nl = plan->seq_local;
    if (len_sq) *len_sq = 0;
    for (int64_t i = 0; i < plan->micro_steps; i++) {
        double sq = 0;
        b->valid[i] = loader_next_docs(l, b->tok + i * nl, b->tgt + i * nl, b->pos + i * nl,
                                       b->docs ? b->docs + i * plan->seq_pad : NULL, len_sq ? &sq : NULL);
        if (len_sq) *len_sq += sq;
    }
}

static void close_data(run_t *run) {
    loader_free(&run->loader);
    shard_close(&run->shard);
    if (run->have_val) {
        loader_free(&run->val.loader);
        shard_close(&run->val.shard);
    }
}

/* Everything before the first step: data, run folder, engine, weights,
 * resume, buffers, log. Returns 0, or -1 when the checkpoint was refused. */
static int run_open(run_t *run, const config_t *cfg, const plan_t *plan, const backend_t *be, const coll_ops_t *coll,
                    const coll_ops_t *host_coll, const ranks_t *r, const train_opts_t *opts) {
    memset(run, 0, sizeof *run);
    *run = (run_t){.cfg = cfg, .plan = plan, .be = be, .host_coll = host_coll, .r = r, .opts = opts,
                   .lead = r->world_rank == 0};
    open_data(run);
    open_validation(run);
    prepare_run_dir(run);
    double t_engine = asp_since_start();
    run->e = exec_create(plan, be, coll, host_coll, r);
    double t_arenas = asp_since_start();
    exec_init_params(run->e, cfg->train.seed);
    if (cfg->model.from_pretrained[0]) hf_train_import(run->e, cfg, plan->model);
    double t_weights = asp_since_start();
    FILE *metrics = NULL;
    run->resumed = (ckpt_state_t){.seed = cfg->train.seed};
    const uint64_t data_id[2] = {run->data_bytes, run->data_fingerprint};
    if (resume_run(cfg, plan, run->e, r, host_coll, &run->loader, data_id, &run->resumed, &metrics) < 0) {
        exec_destroy(run->e);
        close_data(run);
        return -1;
    }
    run->step = run->saved_step = run->resumed.step;
    batch_alloc(&run->b, plan, run->documents);
    run->losses = asp_calloc((size_t)cfg->train.steps, sizeof(double), "loss history");
    train_install_signals();   /* main installed them already; harmless again */
    log_init(&run->log, cfg, plan, r, be->peak_tflops ? be->peak_tflops() : 0, run->step + 1, metrics);
    run->log.predicted_s = opts->predicted_step_s;
    run->log.predicted_card = opts->predicted_card ? opts->predicted_card : "?";
    if (run->lead) progress_begin(cfg->train.steps, plan->micro_steps);
    if (run->lead)
        asp_info("training %lld steps: %.0f tokens per step, %d rank(s) as SP %d x DP %d, %s backend (set-up "
                 "took %.1f s: %.1f s libraries, device and plan, %.1f s arenas and pinned host memory, %.1f s "
                 "weights)",
                 (long long)cfg->train.steps, run->log.tokens_per_step, r->world_size, r->sp_size, r->dp_size,
                 be->name, asp_since_start(), t_engine, t_arenas - t_engine, t_weights - t_arenas);
    /* Test-only fault injection (docs/launch.md): rank ASP_FAIL_RANK fails
     * at step ASP_FAIL_STEP, to show that the whole job ends, not hangs. */
    run->fail_rank = (int)asp_env_long("ASP_FAIL_RANK", -1, 0, 1 << 30);
    run->fail_step = asp_env_long("ASP_FAIL_STEP", 1, 1, LONG_MAX);
    return 0;
}

static void run_close(run_t *run) {
    free(run->dump_grads);
    free(run->losses);
    batch_free(&run->b);
    exec_destroy(run->e);
    close_data(run);
}

/* ------------------------------------------------------------------ one step */

/* At a step boundary: the signals every rank has seen, agreed on, so that
 * every rank's collectives stay matched. SIGUSR1 writes a checkpoint and
 * goes on; a stop signal ends the loop (1). */
static int stop_requested(run_t *run) {
    double flags[2] = {stop_signal, save_request};
    save_request = 0;
    run->host_coll->allreduce_sum(run->r->world, flags, 2, DT_F64);
    double stop = flags[0];
    if (flags[1] > 0 && !(stop > 0) && run->step > run->saved_step) {
        if (run->lead) asp_info("SIGUSR1: checkpoint at step %lld", (long long)run->step);
        save_checkpoint(run);
    }
    if (!(stop > 0)) return 0;
    if (!stop_signal) stop_signal = SIGTERM;
    const long long step = (long long)run->step, steps = (long long)run->cfg->train.steps;
    if (run->lead && stop_signal == SIGUSR2)
        asp_info("stopped on request (SIGUSR2) after step %lld of %lld", step, steps);
    else if (run->lead)
        asp_warn("stopped by signal %d after step %lld of %lld", (int)stop_signal, step, steps);
    return 1;
}

/* The step's samples into the batch. Returns the FLOPs the step will
 * compute: the plan's figure, or with documents 6N per token plus each
 * document's causal attention. */
static double next_batch(run_t *run) {
    const plan_t *plan = run->plan;
    const model_t *m = plan->model;
    double len_sq = 0;
    load_samples(&run->b, &run->loader, plan, &len_sq);
    if (!run->documents) return plan->flops_per_step;
    /* SP ranks of a group hold the same samples: sum over DP */
    run->host_coll->allreduce_sum(run->r->dp, &len_sq, 1, DT_F64);
    const double attn_flops_per_sq = 6.0 * (double)m->L * (double)(m->hq * m->hd);
    return plan_flops_per_token(m, 0) * run->log.tokens_per_step + attn_flops_per_sq * len_sq;
}

/* Forward and backward over the batch and the gradient reduction (the first
 * step's gradient kept for --dump-grads). */
static void forward_backward(run_t *run, step_report_t *s) {
    exec_result_t res;
    exec_forward_backward(run->e, run->b.batches, run->b.valid, &res);
    if (run->opts->dump_path && run->step == run->resumed.step + 1) {
        run->dump_grads = asp_malloc(run->plan->n_params * sizeof(float), "gradient dump");
        exec_gather_grads(run->e, run->dump_grads);
    }
    s->loss = res.loss;
    s->valid_targets = res.valid_targets;
}

/* Clip, AdamW, the weights back; then the step's time and counters. */
static void optimizer_step(run_t *run, step_report_t *s, double t0) {
    const train_config_t *tc = &run->cfg->train;
    exec_result_t res = {0};
    exec_optim_t opt = {train_lr(tc, run->step), tc->beta1, tc->beta2, tc->eps, tc->weight_decay, tc->grad_clip,
                        run->step};
    exec_optimizer_step(run->e, &opt, &res);
    run->be->synchronize();
    s->seconds = asp_now() - t0;
    s->lr = opt.lr;
    s->grad_norm = res.grad_norm;
    exec_comm_times(run->e, &s->comm);
    exec_host_optimizer_times(run->e, &s->host_work_s, &s->host_exposed_s);
    exec_copy_times(run->e, &s->copy);
    if (!isfinite(s->loss))
        asp_die(ASP_EXIT_FAILURE, "loss is %f at step %lld: training diverged (lower train.lr?)", s->loss,
                (long long)run->step);
    run->losses[run->step - 1] = s->loss;
}

/* Validation every train.eval_every steps and after the last. */
static void maybe_eval(run_t *run) {
    const train_config_t *tc = &run->cfg->train;
    if (!run->have_val || !((tc->eval_every > 0 && run->step % tc->eval_every == 0) || run->step == tc->steps))
        return;
    double t0 = asp_now(), sum = 0, count = 0;
    val_t *v = &run->val;
    /* progress lines count the step's micro-batches, not validation's */
    void (*hook)(int, int, int) = exec_progress_hook;
    exec_progress_hook = NULL;
    v->loader.epoch = 0;
    v->loader.cursor = 0;
    for (int64_t round = 0; round < v->rounds; round++) {
        load_samples(&run->b, &v->loader, run->plan, NULL);
        exec_result_t res;
        exec_eval(run->e, run->b.batches, run->b.valid, &res);
        sum += res.loss * (double)res.valid_targets;
        count += (double)res.valid_targets;
    }
    exec_progress_hook = hook;
    double loss = sum / count;
    int64_t tokens = v->rounds * run->plan->micro_steps * run->plan->dp * run->plan->seq_len;
    if (!isfinite(loss))
        asp_die(ASP_EXIT_FAILURE, "validation loss is %f at step %lld: training diverged (lower train.lr?)", loss,
                (long long)run->step);
    run->val_step_last = run->step;
    run->val_loss_last = loss;
    log_eval(&run->log, run->step, loss, tokens, (asp_now() - t0) * 1e3);
}

/* A checkpoint every io.save_every steps (the last step's is written after the loop). */
static void maybe_checkpoint(run_t *run) {
    const int64_t every = run->cfg->io.save_every;
    if (every > 0 && run->step % every == 0 && run->step < run->cfg->train.steps) save_checkpoint(run);
}

static void maybe_inject_failure(const run_t *run) {
    if (run->fail_rank == run->r->world_rank && run->step == run->fail_step)
        asp_die(ASP_EXIT_FAILURE, "injected failure at step %lld (ASP_FAIL_RANK=%d)", (long long)run->step,
                run->fail_rank);
}

/* ------------------------------------------------------------------ the end */

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

/* The closing checkpoint (after the last step, or when stopped), the summary,
 * the profile, the Hugging Face export and the gradient dump. Returns 1 when
 * the checkpoint failed. */
static int run_finish(run_t *run) {
    const config_t *cfg = run->cfg;
    /* a signal that came after the last step boundary: agree on it too */
    double late_stop = stop_signal;
    run->host_coll->allreduce_sum(run->r->world, &late_stop, 1, DT_F64);
    int want_ckpt = run->step > run->saved_step && (cfg->io.save_at_end || late_stop > 0);
    int ckpt_failed = want_ckpt && save_checkpoint(run) != 0;
    log_done(&run->log, run->step);
    if (run->lead) exec_print_profile(run->e, stdout);
    if (cfg->io.export_hf && !stop_signal)
        hf_train_export(run->e, cfg, run->plan->model, run->be->param_dtype, run->lead);
    if (run->opts->dump_path && run->lead && run->dump_grads)
        write_dump(run->opts->dump_path, run->losses, run->step, run->dump_grads, run->plan->n_params);
    progress_end();
    if (stop_signal && !ckpt_failed && run->step < cfg->train.steps)
        report_early_stop(run->log.metrics, (int)stop_signal, run->step, cfg->train.steps, run->lead);
    log_close(&run->log);
    /* A stopped run exits non-zero, and mpirun kills the job when the first
     * rank does: meet here, after rank 0's last output and files, first. */
    run->host_coll->barrier(run->r->world);
    return ckpt_failed;
}

/* A stop before the last step, its checkpoint written, is resumable (75); a
 * stop after the last step is a finished run. */
static int exit_status(int64_t step, int64_t steps, int ckpt_failed) {
    if (ckpt_failed) return ASP_EXIT_FAILURE;
    return stop_signal && step < steps ? ASP_EXIT_STOPPED : 0;
}

int train_run(const config_t *cfg, const plan_t *plan, const backend_t *be, const coll_ops_t *coll,
              const coll_ops_t *host_coll, const ranks_t *r, const train_opts_t *opts) {
    run_t run;
    if (run_open(&run, cfg, plan, be, coll, host_coll, r, opts) != 0) return ASP_EXIT_USAGE;
    while (run.step < cfg->train.steps && !stop_requested(&run)) {
        run.step++;
        maybe_inject_failure(&run);
        step_report_t s = {.step = run.step};
        double t0 = asp_now();
        progress_step(run.step, t0);
        s.flops = next_batch(&run);             /* data */
        forward_backward(&run, &s);             /* forward, backward, gradient reduction */
        optimizer_step(&run, &s, t0);           /* clip, AdamW, weights back */
        log_step(&run.log, run.e, &s);          /* console, metrics.jsonl */
        maybe_eval(&run);                       /* validation loss */
        maybe_checkpoint(&run);
    }
    int ckpt_failed = run_finish(&run);
    run_close(&run);
    return exit_status(run.step, cfg->train.steps, ckpt_failed);
}
