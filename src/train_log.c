/* What a training run reports: see train_log.h. */
#include "train_log.h"

#include <errno.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "train.h"
#include "util.h"

#define GIB (1024.0 * 1024.0 * 1024.0)

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

void write_dump(const char *path, const double *losses, int64_t steps, const float *grads, size_t n) {
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

/* Progress inside a long step: a line says which layer it has reached, so
 * that minutes-long steps at long S are not silent. */
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

void progress_begin(int64_t steps, int64_t micro_steps) {
    progress.steps = steps;
    progress.micro_steps = micro_steps;
    progress.every = asp_env_double("ASP_PROGRESS_S", 10.0, 1e-3, 1e9);
    exec_progress_hook = on_progress;
}

void progress_step(int64_t step, double t0) {
    progress.step = step;
    progress.micro = 0;
    progress.t0 = progress.last = t0;
}

void progress_step_took(double seconds) { progress.prev_dt = seconds; }

void progress_end(void) { exec_progress_hook = NULL; }

/* A metrics line that cannot be written ends the run: on a full disk the log
 * would otherwise stop mid-line while the run reports success. */
static void metrics_failed(const config_t *cfg, int e) {
    asp_die(ASP_EXIT_FAILURE, "cannot write %s/metrics.jsonl: %s; free space in io.run_dir (or fix its "
            "permissions) and run again: training resumes from the last checkpoint", cfg->io.run_dir,
            strerror(e ? e : EIO));
}

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

/* After the first step every buffer the engine uses exists (arenas, library
 * workspaces grown on first use): compare with what the plan predicted. */
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

FILE *log_open_metrics(const char *path, int64_t upto) {
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

void log_init(train_log_t *L, const config_t *cfg, const plan_t *plan, const ranks_t *r, double peak_tflops,
              int64_t first_step, FILE *metrics) {
    memset(L, 0, sizeof *L);
    L->cfg = cfg;
    L->plan = plan;
    L->ranks = r;
    L->lead = r->world_rank == 0;
    L->metrics = metrics;
    L->first_step = first_step;
    L->tokens_per_step = (double)cfg->train.global_batch_size * (double)cfg->train.seq_len;
    L->peak_tflops = peak_tflops;
    L->t_start = asp_now();
}

/* The console line: rates over the window since the previous line; ETA
 * from the mean step after the first (which also builds library plans). */
static void print_step(train_log_t *L, const step_report_t *s) {
    const ranks_t *r = L->ranks;
    const int64_t steps = L->cfg->train.steps;
    double w_tps = L->win_tokens / L->win_time, w_ms = L->win_time / (double)L->win_steps * 1e3;
    double w_tflops = L->win_flops / L->win_time / 1e12 / r->world_size;
    double mean_dt = L->n_timed > 0 ? L->t_timed / (double)L->n_timed : s->seconds;
    char rate[32], el[24], eta[24];
    char extra[96] = "", comm[96] = "", host[48] = "", copy[96] = "";
    if (L->peak_tflops > 0)
        snprintf(extra, sizeof extra, " | MFU %.1f%% | peak %.2f GiB", 100 * w_tflops / L->peak_tflops,
                 (double)L->peak_bytes / GIB);
    if (r->world_size > 1)
        snprintf(comm, sizeof comm, " | a2a %.1f ms | grad comm %.1f ms (%.1f exposed)", s->comm.a2a_s * 1e3,
                 s->comm.grad_s * 1e3, s->comm.grad_exposed_s * 1e3);
    if (L->plan->mem.offload_slot_bytes) {
        char moved[32];
        snprintf(copy, sizeof copy, " | offload %s, copy %.1f ms (%.1f exposed)",
                 asp_fmt_bytes(moved, sizeof moved, s->copy.bytes), s->copy.busy_s * 1e3, s->copy.exposed_s * 1e3);
    }
    if (L->plan->optim_offload)
        snprintf(host, sizeof host, " | host optimizer %.0f ms (%.0f exposed)", s->host_work_s * 1e3,
                 s->host_exposed_s * 1e3);
    printf("step %6lld/%lld (%.1f%%) | loss %.4f | lr %.2e | grad norm %.3f | %s tok/s | %.1f ms | %.3f TFLOP/s%s%s%s%s"
           " | elapsed %s | ETA %s\n",
           (long long)s->step, (long long)steps, 100.0 * (double)s->step / (double)steps, s->loss, s->lr,
           s->grad_norm, fmt_rate(rate, sizeof rate, w_tps), w_ms, w_tflops, extra, comm, copy, host,
           fmt_duration(el, sizeof el, asp_now() - L->t_start),
           fmt_duration(eta, sizeof eta, mean_dt * (double)(steps - s->step)));
    fflush(stdout);
}

static void metrics_step(train_log_t *L, const step_report_t *s) {
    double tps = L->tokens_per_step / s->seconds, tflops = s->flops / s->seconds / 1e12 / L->ranks->world_size;
    double mfu = L->peak_tflops > 0 ? tflops / L->peak_tflops : 0;
    char pred[48] = "";
    if (L->predicted_s > 0) snprintf(pred, sizeof pred, ", \"predicted_ms\": %.3f", L->predicted_s * 1e3);
    fprintf(L->metrics,
            "{\"step\": %lld, \"loss\": %.6f, \"lr\": %.6e, \"grad_norm\": %.6f, \"tokens_per_s\": %.1f, "
            "\"ms\": %.3f, \"tflops\": %.4f, \"mfu\": %.4f, \"peak_gib\": %.3f, \"valid_targets\": %lld, "
            "\"a2a_ms\": %.3f, \"grad_comm_ms\": %.3f, \"grad_exposed_ms\": %.3f, \"host_optimizer_ms\": %.3f, "
            "\"host_optimizer_exposed_ms\": %.3f, \"offload_gib\": %.4f, \"copy_ms\": %.3f, \"copy_exposed_ms\": %.3f%s}\n",
            (long long)s->step, s->loss, s->lr, s->grad_norm, tps, s->seconds * 1e3, tflops, mfu,
            (double)L->peak_bytes / GIB, (long long)s->valid_targets, s->comm.a2a_s * 1e3, s->comm.grad_s * 1e3,
            s->comm.grad_exposed_s * 1e3, s->host_work_s * 1e3, s->host_exposed_s * 1e3, s->copy.bytes / GIB,
            s->copy.busy_s * 1e3, s->copy.exposed_s * 1e3, pred);
    if (fflush(L->metrics) != 0 || ferror(L->metrics)) metrics_failed(L->cfg, errno);
}

void log_step(train_log_t *L, exec_t *e, const step_report_t *s) {
    const int64_t steps = L->cfg->train.steps;
    if (s->step == L->first_step) {
        L->first_loss = s->loss;
        report_memory(e, L->plan, L->lead);
        /* the first step also builds library plans: profile the rest */
        if (steps > s->step) exec_profile_reset(e);
    }
    L->last_loss = s->loss;
    if (s->step > L->first_step || steps == L->first_step) {
        L->t_timed += s->seconds;
        L->tokens_timed += L->tokens_per_step;
        L->n_timed++;
    }
    progress_step_took(s->seconds);
    L->win_time += s->seconds;
    L->win_tokens += L->tokens_per_step;
    L->win_steps++;
    L->win_flops += s->flops;
    size_t used = exec_measured_bytes(e);
    if (used > L->peak_bytes) L->peak_bytes = used;
    if (L->lead && (s->step % L->cfg->io.log_every == 0 || s->step == 1 || s->step == steps)) {
        print_step(L, s);
        L->win_time = L->win_tokens = L->win_flops = 0;
        L->win_steps = 0;
    }
    /* the first step also builds library plans: the first timed one is compared */
    if (L->lead && L->predicted_s > 0 && (s->step == L->first_step + 1 || (steps == L->first_step && s->step == steps)))
        printf("predicted step: %.3f s on the %s card profile; measured %.3f s (%+.1f%%)\n", L->predicted_s,
               L->predicted_card, s->seconds, 100 * (s->seconds - L->predicted_s) / L->predicted_s);
    if (L->metrics) metrics_step(L, s);
}

void log_eval(const train_log_t *L, int64_t step, double loss, int64_t tokens, double ms) {
    if (L->lead) {
        printf("eval %6lld/%lld | val loss %.4f | %lld tokens | %.1f ms\n", (long long)step,
               (long long)L->cfg->train.steps, loss, (long long)tokens, ms);
        fflush(stdout);
    }
    if (L->metrics) {
        fprintf(L->metrics, "{\"step\": %lld, \"val_loss\": %.6f, \"val_tokens\": %lld, \"val_ms\": %.3f}\n",
                (long long)step, loss, (long long)tokens, ms);
        fflush(L->metrics);
    }
}

void log_done(const train_log_t *L, int64_t step) {
    if (!L->lead) return;
    if (step >= L->first_step) {
        char rate[32];
        printf("done: %lld steps in %.1f s | loss %.4f -> %.4f | %s tok/s (mean after step 1)\n", (long long)step,
               asp_now() - L->t_start, L->first_loss, L->last_loss,
               fmt_rate(rate, sizeof rate, L->t_timed > 0 ? L->tokens_timed / L->t_timed : 0));
    } else {
        printf("done: no step trained (the run is at step %lld of %lld)\n", (long long)step,
               (long long)L->cfg->train.steps);
    }
    fflush(stdout);
}

void log_close(train_log_t *L) {
    if (L->metrics && fclose(L->metrics) != 0) metrics_failed(L->cfg, errno);
    L->metrics = NULL;
}
