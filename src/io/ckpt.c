/* Checkpoints: see ckpt.h and docs/checkpoints.md. */
#include "io/ckpt.h"

#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <inttypes.h>
#include <limits.h>
#include <math.h>
#include <signal.h>
#include <stdarg.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#include "io/ckpt_internal.h"
#include "util.h"

#if defined(__BYTE_ORDER__) && __BYTE_ORDER__ != __ORDER_LITTLE_ENDIAN__
#error "checkpoint files are little-endian arrays written from memory: a big-endian host needs byte swapping"
#endif

#define MANIFEST "manifest"
#define MANIFEST_HEAD "asp-checkpoint-manifest"
#define STATE_FILE "state"
#define STATE_HEAD "asp-checkpoint-state"
#define NAME_FMT "step-%08" PRId64
const char *const ckpt_file_names[F__COUNT] = {"config.yaml", STATE_FILE, "weights.bin", "master.bin",
                                                 "adam_m.bin", "adam_v.bin"};

/* ------------------------------------------------------------------ small file helpers */

/* snprintf for paths: paths come from io.run_dir and are bounded by
 * CFG_PATH_MAX plus short names, which every buffer here has room for. */
static void pathf(char *buf, size_t len, const char *fmt, ...) ASP_PRINTF(3, 4);
static void pathf(char *buf, size_t len, const char *fmt, ...) {
    va_list ap;
    va_start(ap, fmt);
    int n = vsnprintf(buf, len, fmt, ap);
    va_end(ap);
    if (n < 0 || (size_t)n >= len) asp_die(ASP_EXIT_USAGE, "path '%s...' is too long; use a shorter io.run_dir", buf);
}


static int write_all_fd(int fd, const void *buf, size_t n) {
    const char *p = buf;
    while (n) {
        ssize_t w = write(fd, p, n);
        if (w < 0 && errno == EINTR) continue;
        if (w <= 0) return -1;
        p += w;
        n -= (size_t)w;
    }
    return 0;
}

int ckpt_read_at(int fd, void *buf, size_t n, off_t at) {
    char *p = buf;
    while (n) {
        ssize_t got = pread(fd, p, n, at);
        if (got < 0 && errno == EINTR) continue;
        if (got <= 0) return -1;
        p += got;
        n -= (size_t)got;
        at += got;
    }
    return 0;
}

/* Test-only (docs/checkpoints.md): ASP_CKPT_KILL_AFTER=N kills the process
 * (SIGKILL) right after the N-th file operation of checkpointing (a file
 * written, removed or renamed), so a test can stop it at every one. */
static void test_file_op(void) {
    static long count = 0, kill_after = -1;
    if (kill_after < 0) kill_after = asp_env_long("ASP_CKPT_KILL_AFTER", 0, 0, LONG_MAX);
    if (kill_after > 0 && ++count == kill_after) raise(SIGKILL);
}

/* Remove a folder of plain files (a checkpoint). */
static int remove_tree(const char *dir) {
    DIR *d = opendir(dir);
    if (!d) return errno == ENOENT ? 0 : -1;
    struct dirent *de;
    char path[CFG_PATH_MAX + 320];
    while ((de = readdir(d))) {
        if (!strcmp(de->d_name, ".") || !strcmp(de->d_name, "..")) continue;
        pathf(path, sizeof path, "%s/%s", dir, de->d_name);
        unlink(path);
        test_file_op();
    }
    closedir(d);
    return rmdir(dir);
}

/* Test-only (docs/checkpoints.md): ASP_CKPT_WRITE_DELAY_MS sleeps between
 * files so a test can kill the writer in the middle of a checkpoint. */
static void test_delay(void) {
    long ms = asp_env_long("ASP_CKPT_WRITE_DELAY_MS", 0, 0, 3600000);
    if (ms <= 0) return;
    struct timespec ts = {ms / 1000, (ms % 1000) * 1000000L};
    while (nanosleep(&ts, &ts) != 0 && errno == EINTR) {}
}

/* A checksummed file being written. */
typedef struct {
    int fd;
    file_sum_t sum;
    const char *path;
} wfile_t;

static int wopen(wfile_t *w, const char *path, char *err, size_t errlen) {
    w->path = path;
    w->sum.size = 0;
    w->sum.crc = 0;
    w->fd = open(path, O_WRONLY | O_CREAT | O_TRUNC, 0644);
    if (w->fd < 0) return asp_errf(err, errlen, "cannot create %s: %s; check that io.run_dir is writable", path, strerror(errno));
    return 0;
}

static int wput(wfile_t *w, const void *buf, size_t n, char *err, size_t errlen) {
    par_service();   /* a long write: peers waiting for rank 0 know it is alive */
    if (write_all_fd(w->fd, buf, n) != 0) {
        int e = errno;
        close(w->fd);
        return asp_errf(err, errlen, "cannot write %s: %s; check free space in io.run_dir", w->path, strerror(e));
    }
    w->sum.crc = ckpt_crc32c(w->sum.crc, buf, n);
    w->sum.size += (int64_t)n;
    return 0;
}

static int wclose(wfile_t *w, char *err, size_t errlen) {
    int e = 0;
    if (fsync(w->fd) != 0) e = errno;
    if (close(w->fd) != 0 && !e) e = errno;
    if (e) return asp_errf(err, errlen, "cannot write %s: %s; check free space in io.run_dir", w->path, strerror(e));
    test_delay();
    test_file_op();
    return 0;
}

static void put_header(uint8_t h[CKPT_HEADER_BYTES], dtype_t t, int64_t count) {
    memset(h, 0, CKPT_HEADER_BYTES);
    memcpy(h, CKPT_MAGIC, 8);
    uint32_t version = CKPT_FORMAT_VERSION, dt = (uint32_t)t;
    memcpy(h + 8, &version, 4);
    memcpy(h + 12, &dt, 4);
    memcpy(h + 16, &count, 8);
}

/* fp32 values that hold bf16 numbers (the compute weights) back to bf16:
 * dropping the low half is exact for them. */
static void f32_to_bf16_exact(uint16_t *out, const float *in, size_t n) {
    for (size_t i = 0; i < n; i++) {
        uint32_t u;
        memcpy(&u, &in[i], 4);
        out[i] = (uint16_t)(u >> 16);
    }
}

void ckpt_bf16_to_f32(float *out, const uint16_t *in, size_t n) {
    for (size_t i = n; i-- > 0;) {   /* backwards: out and in may share memory */
        uint32_t u = (uint32_t)in[i] << 16;
        memcpy(&out[i], &u, 4);
    }
}

static int discard_sink(void *ctx, const float *vals, size_t n) {
    (void)ctx, (void)vals, (void)n;
    return 0;
}

/* An array file written as its values stream in (exec_stream_*): header,
 * then the values converted to `t`. */
typedef struct {
    wfile_t w;
    dtype_t t;
    uint16_t *tmp;
    int64_t left;           /* values still expected */
    char *err;
    size_t errlen;
} array_writer_t;

static int array_begin(array_writer_t *a, const char *path, dtype_t t, size_t n, char *err, size_t errlen) {
    a->t = t;
    a->tmp = NULL;
    a->left = (int64_t)n;
    a->err = err;
    a->errlen = errlen;
    if (wopen(&a->w, path, err, errlen) != 0) return -1;
    uint8_t h[CKPT_HEADER_BYTES];
    put_header(h, t, (int64_t)n);
    if (wput(&a->w, h, sizeof h, err, errlen) != 0) return -1;
    if (t != DT_F32) a->tmp = asp_malloc(CKPT_IO_CHUNK * sizeof(uint16_t), "checkpoint conversion");
    return 0;
}

static int array_sink(void *ctx, const float *vals, size_t n) {
    array_writer_t *a = ctx;
    if ((int64_t)n > a->left)
        return asp_errf(a->err, a->errlen, "internal: %s receives more values than its header counts", a->w.path);
    for (size_t b = 0; b < n; b += CKPT_IO_CHUNK) {
        size_t k = n - b < CKPT_IO_CHUNK ? n - b : CKPT_IO_CHUNK;
        int rc;
        if (a->t == DT_F32) {
            rc = wput(&a->w, vals + b, k * sizeof(float), a->err, a->errlen);
        } else {
            f32_to_bf16_exact(a->tmp, vals + b, k);
            rc = wput(&a->w, a->tmp, k * sizeof(uint16_t), a->err, a->errlen);
        }
        if (rc != 0) {
            free(a->tmp);
            a->tmp = NULL;
            return -1;   /* wput closed the file */
        }
    }
    a->left -= (int64_t)n;
    return 0;
}

static int array_end(array_writer_t *a, file_sum_t *sum) {
    free(a->tmp);
    if (a->left != 0) {
        close(a->w.fd);
        return asp_errf(a->err, a->errlen, "internal: %s is short of %lld values", a->w.path, (long long)a->left);
    }
    if (wclose(&a->w, a->err, a->errlen) != 0) return -1;
    *sum = a->w.sum;
    return 0;
}

/* Checkpoint files are opened without blocking on a FIFO or device. */
int ckpt_open_file(const char *path, char *err, size_t errlen) {
    return asp_open_regular(path, "checkpoint file", "the checkpoint is damaged", err, errlen);
}

static int sum_file(const char *path, file_sum_t *sum, char *err, size_t errlen) {
    int fd = ckpt_open_file(path, err, errlen);
    if (fd < 0) return -1;
    uint8_t *buf = asp_malloc(CKPT_IO_CHUNK, "checkpoint read buffer");
    sum->size = 0;
    sum->crc = 0;
    for (;;) {
        ssize_t got = read(fd, buf, CKPT_IO_CHUNK);
        if (got < 0 && errno == EINTR) continue;
        if (got < 0) {
            int e = errno;
            free(buf);
            close(fd);
            return asp_errf(err, errlen, "%s: cannot read: %s", path, strerror(e));
        }
        if (got == 0) break;
        par_service();
        sum->crc = ckpt_crc32c(sum->crc, buf, (size_t)got);
        sum->size += got;
    }
    free(buf);
    close(fd);
    return 0;
}

/* ------------------------------------------------------------------ state file */

/* The model shape keys a checkpoint must agree on. */
typedef struct {
    const char *name;
    int64_t value;
} shape_kv_t;

static int shape_of(const config_t *cfg, const plan_t *plan, shape_kv_t kv[10]) {
    const model_config_t *m = &cfg->model;
    int n = 0;
    kv[n++] = (shape_kv_t){"model.hidden_size", m->hidden_size};
    kv[n++] = (shape_kv_t){"model.intermediate_size", m->intermediate_size};
    kv[n++] = (shape_kv_t){"model.num_hidden_layers", m->num_hidden_layers};
    kv[n++] = (shape_kv_t){"model.num_attention_heads", m->num_attention_heads};
    kv[n++] = (shape_kv_t){"model.num_key_value_heads", m->num_key_value_heads};
    kv[n++] = (shape_kv_t){"model.head_dim", m->head_dim};
    kv[n++] = (shape_kv_t){"model.vocab_size", m->vocab_size};
    kv[n++] = (shape_kv_t){"model.tie_word_embeddings", m->tie_word_embeddings};
    kv[n++] = (shape_kv_t){"n_params", (int64_t)plan->n_params};   /* last: the keys above say why */
    return n;
}

/* The model's numeric settings a checkpoint must agree on too: the same
 * shapes under another RoPE base, norm epsilon or scaling are another model. */
typedef struct {
    const char *name;
    double value;
} num_kv_t;

/* The shortest of %.15g and %.17g that reads back as v, for messages. */
static const char *short_double(char *buf, size_t len, double v) {
    snprintf(buf, len, "%.15g", v);
    if (strtod(buf, NULL) != v) snprintf(buf, len, "%.17g", v);
    return buf;
}

static int numbers_of(const config_t *cfg, num_kv_t kv[10]) {
    const model_config_t *m = &cfg->model;
    const rope_scaling_t *r = &m->rope_scaling;
    int n = 0;
    kv[n++] = (num_kv_t){"model.rope_theta", m->rope_theta};
    kv[n++] = (num_kv_t){"model.rms_norm_eps", m->rms_norm_eps};
    kv[n++] = (num_kv_t){"model.max_position_embeddings", (double)m->max_position_embeddings};
    kv[n++] = (num_kv_t){"model.rope_scaling.enabled", r->enabled ? 1.0 : 0.0};
    if (r->enabled) {
        kv[n++] = (num_kv_t){"model.rope_scaling.factor", r->factor};
        kv[n++] = (num_kv_t){"model.rope_scaling.low_freq_factor", r->low_freq_factor};
        kv[n++] = (num_kv_t){"model.rope_scaling.high_freq_factor", r->high_freq_factor};
        kv[n++] = (num_kv_t){"model.rope_scaling.original_max_position_embeddings",
                             (double)r->original_max_position_embeddings};
    }
    return n;
}

/* ------------------------------------------------------------------ lineage */

/* This launch's lineage: its own run id and the checkpoints it grew from
 * (set by ckpt_resume; a fresh start has none). Rank 0 uses it. */
static ckpt_state_t run_lineage;
static int run_lineage_set = 0;

static uint64_t new_run_id(void) {
    uint64_t id = 0;
    int fd = open("/dev/urandom", O_RDONLY | O_CLOEXEC);
    if (fd >= 0) {
        if (read(fd, &id, sizeof id) != (ssize_t)sizeof id) id = 0;
        close(fd);
    }
    if (!id) {   /* no /dev/urandom: time and pid are unique enough per host */
        struct timespec ts;
        clock_gettime(CLOCK_REALTIME, &ts);
        id = ((uint64_t)ts.tv_sec * 1000000007u) ^ ((uint64_t)ts.tv_nsec << 20) ^ (uint64_t)getpid();
    }
    return id ? id : 1;
}

/* Begin this launch's lineage: fresh (from == NULL) or grown from the
 * checkpoint `from` (its state, as ckpt_validate read it). */
static void lineage_begin(const ckpt_state_t *from) {
    memset(&run_lineage, 0, sizeof run_lineage);
    run_lineage.run_id = new_run_id();
    if (from && from->run_id) {
        run_lineage.ancestor_run[0] = from->run_id;
        run_lineage.ancestor_step[0] = from->step;
        int n = 1;
        for (int i = 0; i < from->n_ancestors && n < CKPT_LINEAGE_MAX; i++, n++) {
            run_lineage.ancestor_run[n] = from->ancestor_run[i];
            run_lineage.ancestor_step[n] = from->ancestor_step[i];
        }
        run_lineage.n_ancestors = n;
    }
    run_lineage_set = 1;
}

/* Whether a checkpoint (its run id and step) belongs to this launch's lineage. */
static int lineage_owns(uint64_t run, int64_t step) {
    if (!run) return 0;
    if (run == run_lineage.run_id) return 1;
    for (int i = 0; i < run_lineage.n_ancestors; i++)
        if (run == run_lineage.ancestor_run[i] && step <= run_lineage.ancestor_step[i]) return 1;
    return 0;
}

static int put_lineage(char *buf, size_t len) {
    int at = snprintf(buf, len, "run %016" PRIx64 "\nlineage", run_lineage.run_id);
    for (int i = 0; i < run_lineage.n_ancestors && at < (int)len; i++)
        at += snprintf(buf + at, len - (size_t)at, " %016" PRIx64 ":%" PRId64, run_lineage.ancestor_run[i],
                       run_lineage.ancestor_step[i]);
    if (at < (int)len) at += snprintf(buf + at, len - (size_t)at, "\n");
    return at;
}

/* `data_bytes` and `data_fingerprint` of a state text (optional: checkpoints
 * of older builds have neither; both or none). 0, or -1 with a message. */
static int get_data_id(const char *text, const char *path, ckpt_state_t *st, char *err, size_t errlen) {
    st->data_bytes = st->data_fingerprint = 0;
    const char *b = strstr(text, "\ndata_bytes "), *f = strstr(text, "\ndata_fingerprint ");
    if (!b && !f) return 0;
    char *end;
    errno = 0;
    unsigned long long n = b ? strtoull(b + 12, &end, 10) : 0;
    if (!b || errno || end == b + 12 || *end != '\n' || n == 0 || b[12] == '-')
        return asp_errf(err, errlen, "%s: 'data_bytes' is missing or not a positive number; the checkpoint is damaged",
                        path);
    unsigned long long h = f ? strtoull(f + 18, &end, 16) : 0;
    if (!f || errno || end != f + 34 || *end != '\n')
        return asp_errf(err, errlen, "%s: 'data_fingerprint' is missing or not 16 hex digits; the checkpoint is "
                        "damaged", path);
    st->data_bytes = n;
    st->data_fingerprint = h;
    return 0;
}

/* `run` and `lineage` of a state text (optional: checkpoints of older
 * builds have neither). 0, or -1 with a message when present but malformed. */
static int get_lineage(const char *text, const char *path, ckpt_state_t *st, char *err, size_t errlen) {
    st->run_id = 0;
    st->n_ancestors = 0;
    const char *l = strstr(text, "\nrun ");
    if (!l) return 0;
    char *end;
    errno = 0;
    st->run_id = strtoull(l + 5, &end, 16);
    if (errno || end != l + 21 || *end != '\n' || !st->run_id)
        return asp_errf(err, errlen, "%s: 'run' is not a 16-digit hex id; the checkpoint is damaged", path);
    l = strstr(text, "\nlineage");
    if (!l || (l[8] != ' ' && l[8] != '\n'))
        return asp_errf(err, errlen, "%s: 'lineage' is missing; the checkpoint is damaged", path);
    const char *p = l + 8;
    while (*p == ' ') {
        if (st->n_ancestors == CKPT_LINEAGE_MAX)
            return asp_errf(err, errlen, "%s: more than %d lineage entries; the checkpoint is damaged", path,
                            CKPT_LINEAGE_MAX);
        uint64_t r = strtoull(p + 1, &end, 16);
        if (end != p + 17 || *end != ':' || !r || end[1] < '0' || end[1] > '9') break;
        long long s = strtoll(end + 1, &end, 10);
        if (errno || s < 0) break;
        st->ancestor_run[st->n_ancestors] = r;
        st->ancestor_step[st->n_ancestors++] = s;
        p = end;
    }
    if (*p != '\n' && *p)
        return asp_errf(err, errlen, "%s: 'lineage' is malformed (want RUN:STEP pairs); the checkpoint is damaged",
                        path);
    return 0;
}

static int write_state(const char *path, const config_t *cfg, const plan_t *plan, const ranks_t *r,
                       const ckpt_state_t *st, dtype_t wdt, file_sum_t *sum, char *err, size_t errlen) {
    char buf[4096];
    int at = snprintf(buf, sizeof buf,
                      "%s %d\nstep %" PRId64 "\nepoch %" PRId64 "\ncursor %" PRId64 "\nseed %" PRIu64
                      "\nworld_size %d\nsequence_parallel %d\ndata_parallel %d\nzero_stage %d\n"
                      "weights_dtype %s\nstate_dtype fp32\n",
                      STATE_HEAD, CKPT_FORMAT_VERSION, st->step, st->epoch, st->cursor, st->seed, r->world_size,
                      r->sp_size, r->dp_size, plan->zero_stage, dtype_name(wdt));
    shape_kv_t kv[10];
    int n = shape_of(cfg, plan, kv);
    for (int i = 0; i < n; i++)
        at += snprintf(buf + at, sizeof buf - (size_t)at, "%s %" PRId64 "\n", kv[i].name, kv[i].value);
    num_kv_t nk[10];
    int nn = numbers_of(cfg, nk);
    for (int i = 0; i < nn; i++)
        at += snprintf(buf + at, sizeof buf - (size_t)at, "%s %.17g\n", nk[i].name, nk[i].value);
    if (!run_lineage_set) lineage_begin(NULL);
    at += put_lineage(buf + at, sizeof buf - (size_t)at);
    if (st->data_bytes > 0)   /* the training shard, so that a resume sees it changed */
        at += snprintf(buf + at, sizeof buf - (size_t)at, "data_bytes %" PRIu64 "\ndata_fingerprint %016" PRIx64 "\n",
                       st->data_bytes, st->data_fingerprint);
    if (st->val_step > 0)   /* the latest validation loss (data.val_path), for the record */
        at += snprintf(buf + at, sizeof buf - (size_t)at, "val_step %" PRId64 "\nval_loss %.9g\n", st->val_step,
                       st->val_loss);
    wfile_t w;
    if (wopen(&w, path, err, errlen) != 0 || wput(&w, buf, (size_t)at, err, errlen) != 0 ||
        wclose(&w, err, errlen) != 0)
        return -1;
    *sum = w.sum;
    return 0;
}

/* Value of `key` in the state text, or -1 with a message. */
static int state_get(const char *text, const char *path, const char *key, int64_t *out, char *err, size_t errlen) {
    size_t kl = strlen(key);
    for (const char *l = text; l && *l; l = strchr(l, '\n') ? strchr(l, '\n') + 1 : NULL) {
        if (strncmp(l, key, kl) || l[kl] != ' ') continue;
        char *end;
        const char *v0 = l + kl + 1;
        errno = 0;
        long long v = strtoll(v0, &end, 10);
        /* digits only: strtoll reads "" and " 5" too */
        if (errno || end == v0 || !((*v0 >= '0' && *v0 <= '9') || *v0 == '-') || (*end != '\n' && *end)) break;
        *out = v;
        return 0;
    }
    return asp_errf(err, errlen, "%s: '%s' is missing or not a number; the checkpoint is damaged", path, key);
}

static int state_get_double(const char *text, const char *path, const char *key, double *out, char *err,
                            size_t errlen) {
    size_t kl = strlen(key);
    for (const char *l = text; l && *l; l = strchr(l, '\n') ? strchr(l, '\n') + 1 : NULL) {
        if (strncmp(l, key, kl) || l[kl] != ' ') continue;
        const char *v0 = l + kl + 1;
        char *end;
        errno = 0;
        double v = strtod(v0, &end);
        if (errno || end == v0 || !strchr("0123456789-.", *v0) || !isfinite(v) || (*end != '\n' && *end)) break;
        *out = v;
        return 0;
    }
    return asp_errf(err, errlen, "%s: '%s' is missing or not a number; the checkpoint was written by an older build "
                    "or is damaged", path, key);
}

static int state_get_str(const char *text, const char *key, char *out, size_t len) {
    size_t kl = strlen(key);
    for (const char *l = text; l && *l; l = strchr(l, '\n') ? strchr(l, '\n') + 1 : NULL) {
        if (strncmp(l, key, kl) || l[kl] != ' ') continue;
        const char *v = l + kl + 1;
        size_t n = strcspn(v, "\n");
        if (n >= len) return -1;
        memcpy(out, v, n);
        out[n] = 0;
        return 0;
    }
    return -1;
}

/* ------------------------------------------------------------------ validation */

/* A manifest's entries: one line `NAME SIZE CRC32C` for each checkpoint file,
 * nothing else; a duplicate, an unknown name or a path-like one is refused.
 * 0 with size[] and crc[] per file, or -1 with a message. */
static int parse_manifest(const char *text, const char *path, long long size[F__COUNT], uint32_t crc[F__COUNT],
                          char *err, size_t errlen) {
    int seen[F__COUNT] = {0};
    const char *l = strchr(text, '\n');
    for (int line = 2; l && l[1]; line++, l = strchr(l + 1, '\n')) {
        const char *s = l + 1;
        size_t len = strcspn(s, "\n"), nl = strcspn(s, " \n");
        char name[64];
        snprintf(name, sizeof name, "%.*s", (int)(nl < 63 ? nl : 63), s);
        if (memchr(s, '/', nl) || (nl && s[0] == '.') || memchr(s, '\\', nl))
            return asp_errf(err, errlen, "%s: line %d names '%s', a path, not a checkpoint file; the checkpoint is "
                            "damaged or crafted", path, line, name);
        int f = 0;
        while (f < F__COUNT && (strlen(ckpt_file_names[f]) != nl || strncmp(s, ckpt_file_names[f], nl))) f++;
        if (f == F__COUNT)
            return asp_errf(err, errlen, "%s: line %d: unknown entry '%s' (a checkpoint holds %s, %s, %s, %s, %s and "
                            "%s); the checkpoint is damaged or from another program", path, line, name, ckpt_file_names[0],
                            ckpt_file_names[1], ckpt_file_names[2], ckpt_file_names[3], ckpt_file_names[4], ckpt_file_names[5]);
        if (seen[f]++)
            return asp_errf(err, errlen, "%s: line %d: a second entry for %s; the checkpoint is damaged", path, line,
                            name);
        /* SIZE: digits; CRC: 8 hex digits; then the end of the line */
        const char *p = s + nl;
        size_t sd = *p == ' ' ? strspn(p + 1, "0123456789") : 0;
        size_t cd = sd && p[1 + sd] == ' ' ? strspn(p + 2 + sd, "0123456789abcdefABCDEF") : 0;
        if (!sd || sd > 18 || cd != 8 || nl + 2 + sd + cd != len)
            return asp_errf(err, errlen, "%s: line %d: expected '%s SIZE CRC32C' (a byte count and 8 hex digits); the "
                            "checkpoint is damaged", path, line, name);
        size[f] = strtoll(p + 1, NULL, 10);
        crc[f] = (uint32_t)strtoul(p + 2 + sd, NULL, 16);
    }
    for (int f = 0; f < F__COUNT; f++)
        if (!seen[f])
            return asp_errf(err, errlen, "%s: no entry for %s; the checkpoint is damaged", path, ckpt_file_names[f]);
    return 0;
}

/* Every line of a state text is a known key, each once. */
static int check_state_keys(const char *text, const char *path, const config_t *cfg, const plan_t *plan, char *err,
                            size_t errlen) {
    static const char *const fixed[] = {"step", "epoch", "cursor", "seed", "world_size", "sequence_parallel",
                                        "data_parallel", "zero_stage", "weights_dtype", "state_dtype", "val_step",
                                        "val_loss", "run", "lineage", "data_bytes", "data_fingerprint",
                                        "model.rope_scaling.factor",
                                        "model.rope_scaling.low_freq_factor", "model.rope_scaling.high_freq_factor",
                                        "model.rope_scaling.original_max_position_embeddings"};
    enum { NFIXED = sizeof fixed / sizeof fixed[0] };
    const char *known[NFIXED + 20];
    int nk = 0;
    for (int i = 0; i < NFIXED; i++) known[nk++] = fixed[i];
    shape_kv_t kv[10];
    num_kv_t nv[10];
    int ns = shape_of(cfg, plan, kv), nn = numbers_of(cfg, nv);
    for (int i = 0; i < ns; i++) known[nk++] = kv[i].name;
    for (int i = 0; i < nn && i < 4; i++) known[nk++] = nv[i].name;   /* the first four: always written */
    int seen[NFIXED + 20] = {0};
    const char *l = strchr(text, '\n');
    for (int line = 2; l && l[1]; line++, l = strchr(l + 1, '\n')) {
        const char *s = l + 1;
        size_t kl = strcspn(s, " \n");
        int k = 0;
        while (k < nk && (strlen(known[k]) != kl || strncmp(s, known[k], kl))) k++;
        if (k == nk)
            return asp_errf(err, errlen, "%s: line %d: unknown key '%.*s'; the checkpoint is damaged or was written "
                            "by a newer build", path, line, (int)(kl < 64 ? kl : 64), s);
        if (seen[k]++)
            return asp_errf(err, errlen, "%s: line %d: '%s' a second time; the checkpoint is damaged", path, line,
                            known[k]);
    }
    return 0;
}

static int read_text(const char *path, char *buf, size_t len, char *err, size_t errlen) {
    int fd = ckpt_open_file(path, err, errlen);
    if (fd < 0) return -1;
    ssize_t n = read(fd, buf, len - 1);
    close(fd);
    if (n < 0) return asp_errf(err, errlen, "%s: cannot read: %s", path, strerror(errno));
    if ((size_t)n == len - 1) return asp_errf(err, errlen, "%s: larger than expected; the checkpoint is damaged", path);
    buf[n] = 0;
    return 0;
}

static int check_array_header(const char *path, dtype_t want_dt_f32_or_any, int any_weight_dtype, int64_t n_params,
                              dtype_t *dt, char *err, size_t errlen) {
    int fd = ckpt_open_file(path, err, errlen);
    if (fd < 0) return -1;
    uint8_t h[CKPT_HEADER_BYTES];
    int rc = ckpt_read_at(fd, h, sizeof h, 0);
    close(fd);
    if (rc != 0) return asp_errf(err, errlen, "%s: shorter than its %d-byte header; the file is truncated", path, CKPT_HEADER_BYTES);
    uint32_t version, t;
    int64_t count;
    memcpy(&version, h + 8, 4);
    memcpy(&t, h + 12, 4);
    memcpy(&count, h + 16, 8);
    if (memcmp(h, CKPT_MAGIC, 8) != 0) return asp_errf(err, errlen, "%s: not a checkpoint array (bad magic)", path);
    if (version != CKPT_FORMAT_VERSION)
        return asp_errf(err, errlen, "%s: format version %u, this build reads version %d", path, version,
                        CKPT_FORMAT_VERSION);
    int ok_t = any_weight_dtype ? (t == DT_F32 || t == DT_BF16) : t == (uint32_t)want_dt_f32_or_any;
    if (!ok_t) return asp_errf(err, errlen, "%s: element type code %u is not allowed here", path, t);
    if (count != n_params)
        return asp_errf(err, errlen, "%s: holds %" PRId64 " values but this model has %" PRId64
                        " parameters; resume with the model the checkpoint was written with, or set io.resume=never",
                        path, count, n_params);
    *dt = (dtype_t)t;
    return 0;
}

/* The manifest, and every file against it: present, its size, its CRC-32C
 * (the arrays' values checked on the same read, into vc). With `sizes_only`,
 * no file is read but the manifest (a quick look for retention). */
static int check_files(const char *dir, int sizes_only, size_t n_params, vcheck_t *vc, char *err, size_t errlen) {
    char path[CFG_PATH_MAX + 64];
    char text[8192];
    pathf(path, sizeof path, "%s/%s", dir, MANIFEST);
    if (access(path, F_OK) != 0)
        return asp_errf(err, errlen, "%s: missing; %s is not a complete checkpoint", path, dir);
    if (read_text(path, text, sizeof text, err, errlen) != 0) return -1;
    int version = 0;
    if (sscanf(text, MANIFEST_HEAD " %d", &version) != 1)
        return asp_errf(err, errlen, "%s: not a checkpoint manifest (first line should be '%s %d')", path,
                        MANIFEST_HEAD, CKPT_FORMAT_VERSION);
    if (version != CKPT_FORMAT_VERSION)
        return asp_errf(err, errlen, "%s: format version %d, this build reads version %d", path, version,
                        CKPT_FORMAT_VERSION);
    long long sizes[F__COUNT];
    uint32_t crcs[F__COUNT];
    if (parse_manifest(text, path, sizes, crcs, err, errlen) != 0) return -1;
    for (int f = 0; f < F__COUNT; f++) {
        pathf(path, sizeof path, "%s/%s", dir, ckpt_file_names[f]);
        struct stat sb;
        if (stat(path, &sb) != 0)
            return asp_errf(err, errlen, "%s: missing (%s); the checkpoint is incomplete", path, strerror(errno));
        if ((long long)sb.st_size != sizes[f])
            return asp_errf(err, errlen, "%s: %lld bytes but the manifest says %lld; the file is %s", path,
                            (long long)sb.st_size, sizes[f], (long long)sb.st_size < sizes[f] ? "truncated" : "damaged");
    }
    if (sizes_only) return 0;
    file_sum_t sums[F__COUNT];
    static const int pair[2] = {F_WEIGHTS, F_MASTER}, am[1] = {F_ADAM_M}, av[1] = {F_ADAM_V};
    for (int f = F_CONFIG; f <= F_STATE; f++) {
        pathf(path, sizeof path, "%s/%s", dir, ckpt_file_names[f]);
        if (sum_file(path, &sums[f], err, errlen) != 0) return -1;
    }
    if (ckpt_scan_arrays(dir, pair, 2, sizes, &sums[F_WEIGHTS], n_params, vc, err, errlen) ||
        ckpt_scan_arrays(dir, am, 1, sizes, &sums[F_ADAM_M], n_params, vc, err, errlen) ||
        ckpt_scan_arrays(dir, av, 1, sizes, &sums[F_ADAM_V], n_params, vc, err, errlen))
        return -1;
    for (int f = 0; f < F__COUNT; f++) {
        pathf(path, sizeof path, "%s/%s", dir, ckpt_file_names[f]);
        if (sums[f].size != sizes[f] || sums[f].crc != crcs[f])
            return asp_errf(err, errlen, "%s: checksum mismatch (CRC-32C %08x, manifest %08x); the file is corrupt",
                            path, sums[f].crc, crcs[f]);
    }
    return 0;
}

/* A folder named step-NNNNNNNN holds the state of step NNNNNNNN: a copy or
 * rename that breaks this would otherwise rank it as newer (or older) than
 * it is. Folders of other names (a user's copy) are not judged by name. */
static int check_name_step(const char *dir, int64_t step, char *err, size_t errlen) {
    const char *base = strrchr(dir, '/');
    base = base ? base + 1 : dir;
    int64_t named;
    char tail;
    if (strlen(base) != 13 || sscanf(base, "step-%" SCNd64 "%c", &named, &tail) != 1 || named == step) return 0;
    return asp_errf(err, errlen, "%s: the folder's name says step %" PRId64 " but its state says step %" PRId64 "; "
                    "rename it to step-%08" PRId64 " (or delete it)", dir, named, step, step);
}

int ckpt_validate(const char *dir, const config_t *cfg, const plan_t *plan, ckpt_state_t *st, char *err,
                  size_t errlen) {
    char path[CFG_PATH_MAX + 64];
    char text[8192];
    int version = 0;
    /* 1. the manifest: every file with its size and checksum */
    vcheck_t vc = {.m = plan->model};
    if (check_files(dir, 0, plan->n_params, &vc, err, errlen) != 0) return -1;
    /* 2. the state: format, position, model shape */
    pathf(path, sizeof path, "%s/%s", dir, STATE_FILE);
    if (read_text(path, text, sizeof text, err, errlen) != 0) return -1;
    if (sscanf(text, STATE_HEAD " %d", &version) != 1 || version != CKPT_FORMAT_VERSION)
        return asp_errf(err, errlen, "%s: not a version %d checkpoint state", path, CKPT_FORMAT_VERSION);
    int64_t seed;
    if (state_get(text, path, "step", &st->step, err, errlen) || state_get(text, path, "epoch", &st->epoch, err, errlen) ||
        state_get(text, path, "cursor", &st->cursor, err, errlen) || state_get(text, path, "seed", &seed, err, errlen))
        return -1;
    st->seed = (uint64_t)seed;
    if (check_state_keys(text, path, cfg, plan, err, errlen) || get_lineage(text, path, st, err, errlen) ||
        get_data_id(text, path, st, err, errlen) || check_name_step(dir, st->step, err, errlen))
        return -1;
    if (st->step < 0 || st->epoch < 0 || st->cursor < 0)
        return asp_errf(err, errlen, "%s: negative step or data position; the checkpoint is damaged", path);
    /* no run takes 2^53 steps or samples: larger values are damage, and
     * would overflow the loader's arithmetic */
    const int64_t lim = (int64_t)1 << 53;
    if (st->step > lim || st->epoch > lim || st->cursor > lim)
        return asp_errf(err, errlen, "%s: step %" PRId64 ", epoch %" PRId64 ", cursor %" PRId64 " is beyond any "
                        "run (limit 2^53); the checkpoint is damaged", path, st->step, st->epoch, st->cursor);
    shape_kv_t kv[10];
    int n = shape_of(cfg, plan, kv);
    for (int i = 0; i < n; i++) {
        int64_t v;
        if (state_get(text, path, kv[i].name, &v, err, errlen)) return -1;
        if (v != kv[i].value)
            return asp_errf(err, errlen, "%s: %s is %" PRId64 " in the checkpoint but %" PRId64
                            " in this run's config; resume with the same model, or set io.resume=never "
                            "(or another io.run_dir) to start fresh", path, kv[i].name, v, kv[i].value);
    }
    num_kv_t nk[10];
    int nn = numbers_of(cfg, nk);
    for (int i = 0; i < nn; i++) {
        double v;
        if (state_get_double(text, path, nk[i].name, &v, err, errlen)) return -1;
        if (v != nk[i].value) {
            char a[40], b[40];
            return asp_errf(err, errlen, "%s: %s is %s in the checkpoint but %s in this run's config; resume with the "
                            "same model, or set io.resume=never (or another io.run_dir) to start fresh", path,
                            nk[i].name, short_double(a, sizeof a, v), short_double(b, sizeof b, nk[i].value));
        }
    }
    if (!cfg->model.rope_scaling.enabled) {
        double v;
        char scratch[8];
        if (!state_get_double(text, path, "model.rope_scaling.factor", &v, scratch, sizeof scratch))
            return asp_errf(err, errlen, "%s: model.rope_scaling is on (llama3, factor %.15g) in the checkpoint but "
                            "null in this run's config; resume with the same model, or set io.resume=never (or "
                            "another io.run_dir) to start fresh", path, v);
    }
    char wdt[16];
    if (state_get_str(text, "weights_dtype", wdt, sizeof wdt) != 0)
        return asp_errf(err, errlen, "%s: 'weights_dtype' is missing; the checkpoint is damaged", path);
    /* 3. array headers */
    for (int f = F_WEIGHTS; f < F__COUNT; f++) {
        pathf(path, sizeof path, "%s/%s", dir, ckpt_file_names[f]);
        dtype_t dt;
        if (check_array_header(path, DT_F32, f == F_WEIGHTS, (int64_t)plan->n_params, &dt, err, errlen)) return -1;
        int64_t want = CKPT_HEADER_BYTES + (int64_t)plan->n_params * (int64_t)dtype_size(dt);
        struct stat sb;
        if (stat(path, &sb) != 0 || (int64_t)sb.st_size != want)
            return asp_errf(err, errlen, "%s: %lld bytes, expected %" PRId64 " for %zu %s values", path,
                            (long long)sb.st_size, want, plan->n_params, dtype_name(dt));
        if (f == F_WEIGHTS && strcmp(wdt, dtype_name(dt)) != 0)
            return asp_errf(err, errlen, "%s: holds %s values but the state says %s; the checkpoint is damaged", path,
                            dtype_name(dt), wdt);
    }
    /* 4. the values: finite, and the weights the master's */
    if (vc.what[0]) return asp_errf(err, errlen, "%s", vc.what);
    return 0;
}

/* ------------------------------------------------------------------ listing */

/* Steps of the complete-named checkpoints in `cdir` (step-NNNNNNNN exactly:
 * temporary folders never match), newest first. No folder: 0; one that
 * cannot be read: -1 with errno set. */
static int list_steps(const char *cdir, int64_t **steps) {
    *steps = NULL;
    DIR *d = opendir(cdir);
    if (!d) return errno == ENOENT ? 0 : -1;
    int n = 0, cap = 0;
    struct dirent *de;
    while ((de = readdir(d))) {
        int64_t s;
        char tail;
        if (strlen(de->d_name) != 13 || sscanf(de->d_name, "step-%" SCNd64 "%c", &s, &tail) != 1 || s < 0) continue;
        if (n == cap) {
            cap = cap ? 2 * cap : 16;
            int64_t *grown = realloc(*steps, (size_t)cap * sizeof(int64_t));
            if (!grown) asp_die(ASP_EXIT_FAILURE, "out of memory listing checkpoints in %s", cdir);
            *steps = grown;
        }
        (*steps)[n++] = s;
    }
    closedir(d);
    for (int i = 1; i < n; i++)   /* insertion sort, descending */
        for (int j = i; j > 0 && (*steps)[j] > (*steps)[j - 1]; j--) {
            int64_t t = (*steps)[j];
            (*steps)[j] = (*steps)[j - 1];
            (*steps)[j - 1] = t;
        }
    return n;
}

void ckpt_retain(ckpt_entry_t *en, int n, int64_t just_written, int newest, int64_t keep_last) {
    int64_t kept = 0;
    for (int i = 0; i < n; i++) {
        en[i].keep = !en[i].usable || (en[i].step == just_written && en[i].own) || i == newest;
        kept += en[i].keep && en[i].usable;
    }
    /* then this run's lineage, then the others, newest first */
    for (int pass = 1; pass >= 0; pass--)
        for (;;) {
            int best = -1;
            for (int i = 0; i < n; i++)
                if (!en[i].keep && en[i].usable && en[i].own == pass && (best < 0 || en[i].step > en[best].step))
                    best = i;
            if (best < 0 || kept >= keep_last) break;
            en[best].keep = 1;
            kept++;
        }
}

/* The checkpoints in cdir as retention sees them (newest first): a quick
 * look (manifest and sizes, state and name agree), and the newest that
 * would load, by a full check, in *newest. */
static int retention_entries(const char *cdir, const config_t *cfg, const plan_t *plan, int64_t just_written,
                             ckpt_entry_t **out, int *newest) {
    int64_t *steps;
    int n = list_steps(cdir, &steps);
    ckpt_entry_t *en = asp_calloc((size_t)(n > 0 ? n : 1), sizeof *en, "checkpoint list");
    *newest = -1;
    for (int i = 0; i < n; i++) {
        char dir[CFG_PATH_MAX + 64], why[4096], text[8192];
        pathf(dir, sizeof dir, "%s/" NAME_FMT, cdir, steps[i]);
        en[i].step = steps[i];
        ckpt_state_t st;
        vcheck_t vc = {.m = plan->model};
        int64_t step = -1;
        char spath[CFG_PATH_MAX + 80];
        pathf(spath, sizeof spath, "%s/%s", dir, STATE_FILE);
        en[i].usable = check_files(dir, 1, plan->n_params, &vc, why, sizeof why) == 0 &&
                       read_text(spath, text, sizeof text, why, sizeof why) == 0 &&
                       state_get(text, spath, "step", &step, why, sizeof why) == 0 &&
                       check_name_step(dir, step, why, sizeof why) == 0 &&
                       get_lineage(text, spath, &st, why, sizeof why) == 0;
        if (!en[i].usable) {
            asp_warn("checkpoint retention: %s is not usable (%s); it is kept, neither counted nor deleted", dir, why);
            continue;
        }
        en[i].own = lineage_owns(st.run_id, step);
        /* the newest that would load: a full check of those newer than what was just written */
        if (*newest < 0 && (steps[i] <= just_written || ckpt_validate(dir, cfg, plan, &st, why, sizeof why) == 0))
            *newest = i;
        if (*newest == i && !en[i].own && steps[i] > just_written)
            asp_warn("%s is newer than the checkpoint just written and of another run's history: io.resume=auto will "
                     "pick it; give io.resume the folder to continue this run's, or move it away", dir);
    }
    free(steps);
    *out = en;
    return n;
}

/* Keep io.keep_last checkpoints (ckpt_retain says which), and remove
 * temporary folders left by writers that no longer run. */
static void prune(const char *cdir, const config_t *cfg, const plan_t *plan, int64_t just_written) {
    ckpt_entry_t *en;
    int newest;
    int n = retention_entries(cdir, cfg, plan, just_written, &en, &newest);
    ckpt_retain(en, n, just_written, newest, cfg->io.keep_last);
    char path[CFG_PATH_MAX + 64];
    char gone[CFG_PATH_MAX + 96];
    for (int i = 0; i < n; i++) {
        if (en[i].keep) continue;
        /* out of the final name first (one rename), then emptied: a kill in
         * between leaves a .del- folder, never a final-named one without
         * all its files */
        pathf(path, sizeof path, "%s/" NAME_FMT, cdir, en[i].step);
        pathf(gone, sizeof gone, "%s.del-%ld", path, (long)getpid());
        if (rename(path, gone) != 0) {
            asp_warn("cannot delete old checkpoint %s: %s", path, strerror(errno));
            continue;
        }
        test_file_op();
        if (remove_tree(gone) != 0) asp_warn("cannot delete old checkpoint %s: %s", gone, strerror(errno));
    }
    free(en);
    DIR *d = opendir(cdir);
    if (!d) return;
    struct dirent *de;
    while ((de = readdir(d))) {
        /* folders of writers and pruners that no longer run */
        const char *t = strstr(de->d_name, ".tmp-");
        if (!t) t = strstr(de->d_name, ".old-");
        if (!t) t = strstr(de->d_name, ".del-");
        if (strncmp(de->d_name, "step-", 5) || !t) continue;
        long pid = strtol(t + 5, NULL, 10);
        if (pid <= 0 || pid == (long)getpid() || kill((pid_t)pid, 0) == 0 || errno != ESRCH) continue;
        pathf(path, sizeof path, "%s/%s", cdir, de->d_name);
        remove_tree(path);
    }
    closedir(d);
}

/* ------------------------------------------------------------------ save */

static int agree(const ranks_t *r, const coll_ops_t *hc, int rc) {
    double v = rc;
    hc->bcast(r->world, &v, 1, DT_F64, 0);
    return (int)v;
}

int ckpt_save(const config_t *cfg, const plan_t *plan, exec_t *e, const ranks_t *r, const coll_ops_t *host_coll,
              const ckpt_state_t *st, char *err, size_t errlen) {
    int lead = r->world_rank == 0;
    char cdir[CFG_PATH_MAX + 32], tmp[CFG_PATH_MAX + 64], fin[CFG_PATH_MAX + 64], path[CFG_PATH_MAX + 96];
    pathf(cdir, sizeof cdir, "%s/checkpoints", cfg->io.run_dir);
    pathf(fin, sizeof fin, "%s/" NAME_FMT, cdir, st->step);
    pathf(tmp, sizeof tmp, "%s.tmp-%ld", fin, (long)getpid());
    file_sum_t sums[F__COUNT];
    int rc = 0;
    if (lead) {
        if (asp_mkdir_p(cdir) != 0)
            rc = asp_errf(err, errlen, "cannot create %s: %s; check that io.run_dir is writable", cdir, strerror(errno));
        else {
            remove_tree(tmp);
            if (mkdir(tmp, 0777) != 0)
                rc = asp_errf(err, errlen, "cannot create %s: %s; check that io.run_dir is writable", tmp, strerror(errno));
        }
        if (!rc) {
            pathf(path, sizeof path, "%s/%s", tmp, ckpt_file_names[F_CONFIG]);
            rc = config_write_yaml(cfg, path, err, errlen);
            if (!rc) rc = sum_file(path, &sums[F_CONFIG], err, errlen);
            if (!rc) test_delay(), test_file_op();
        }
    }
    if (agree(r, host_coll, rc) != 0) goto fail;

    /* Each array streams from the ranks one gradient bucket at a time (no
     * model-sized buffer: 32 GB for 8B parameters). Every rank takes part in
     * every gather even after a failure on rank 0, so the collectives stay
     * matched; the result is agreed below. */
    size_t n = plan->n_params;
    static const exec_state_t which[3] = {EXEC_MASTER, EXEC_ADAM_M, EXEC_ADAM_V};
    for (int k = -1; k < 3; k++) {
        int f = k < 0 ? F_WEIGHTS : F_MASTER + k;
        dtype_t dt = k < 0 && plan->target.param_bytes == 2 ? DT_BF16 : DT_F32;
        array_writer_t a;
        int open_ok = 0;
        if (lead && !rc) {
            pathf(path, sizeof path, "%s/%s", tmp, ckpt_file_names[f]);
            rc = array_begin(&a, path, dt, n, err, errlen);
            open_ok = !rc;
        }
        exec_sink_t sink = open_ok ? array_sink : NULL;
        int src = k < 0 ? exec_stream_params(e, 0, sink ? sink : discard_sink, &a)
                        : exec_stream_optimizer_state(e, which[k], 0, sink ? sink : discard_sink, &a);
        if (open_ok) rc = src ? -1 : array_end(&a, &sums[f]);
    }
    if (lead && !rc) {
        pathf(path, sizeof path, "%s/%s", tmp, ckpt_file_names[F_STATE]);
        rc = write_state(path, cfg, plan, r, st, plan->target.param_bytes == 2 ? DT_BF16 : DT_F32, &sums[F_STATE],
                         err, errlen);
    }
    if (lead && !rc) {
        /* the manifest last: its presence inside the renamed folder marks it whole */
        char text[2048];
        int at = snprintf(text, sizeof text, "%s %d\n", MANIFEST_HEAD, CKPT_FORMAT_VERSION);
        for (int f = 0; f < F__COUNT; f++)
            at += snprintf(text + at, sizeof text - (size_t)at, "%s %" PRId64 " %08x\n", ckpt_file_names[f], sums[f].size,
                           sums[f].crc);
        pathf(path, sizeof path, "%s/%s", tmp, MANIFEST);
        wfile_t w;
        rc = wopen(&w, path, err, errlen) || wput(&w, text, (size_t)at, err, errlen) || wclose(&w, err, errlen) ? -1 : 0;
    }
    if (lead && !rc && asp_fsync_dir(tmp) != 0)
        rc = asp_errf(err, errlen, "cannot sync %s: %s", tmp, strerror(errno));
    if (lead && !rc) {
        /* a checkpoint of the same step (a rerun of a finished step) is replaced */
        char old[CFG_PATH_MAX + 96];
        pathf(old, sizeof old, "%s.old-%ld", fin, (long)getpid());
        int had = rename(fin, old) == 0;
        if (had) test_file_op();
        if (rename(tmp, fin) != 0)
            rc = asp_errf(err, errlen, "cannot rename %s to %s: %s", tmp, fin, strerror(errno));
        else if (test_file_op(), asp_fsync_dir(cdir) != 0)
            rc = asp_errf(err, errlen, "cannot sync %s: %s", cdir, strerror(errno));
        if (had) remove_tree(old);
    }
    if (lead && !rc) prune(cdir, cfg, plan, st->step);
    if (lead && rc) remove_tree(tmp);
    if (agree(r, host_coll, rc) != 0) goto fail;
    return 0;
fail:
    if (!lead) asp_errf(err, errlen, "checkpoint of step %" PRId64 " failed on rank 0", st->step);
    return -1;
}

/* ------------------------------------------------------------------ resume */

/* Rank 0: which folder to resume from ("" for none). 0, or -1 with err. */
static int choose(const config_t *cfg, const plan_t *plan, char *dir, size_t dirlen, ckpt_state_t *st, char *err,
                  size_t errlen) {
    dir[0] = 0;
    const char *mode = cfg->io.resume;
    if (!strcmp(mode, "never")) return 0;
    if (strcmp(mode, "auto") != 0) {
        struct stat sb;
        if (stat(mode, &sb) != 0 || !S_ISDIR(sb.st_mode))
            return asp_errf(err, errlen, "io.resume: '%s' is not a checkpoint folder (%s); give a folder "
                            "RUN_DIR/checkpoints/step-NNNNNNNN, auto or never", mode,
                            stat(mode, &sb) != 0 ? strerror(errno) : "not a folder");
        if (ckpt_validate(mode, cfg, plan, st, err, errlen) != 0) return -1;
        snprintf(dir, dirlen, "%s", mode);
        return 0;
    }
    char cdir[CFG_PATH_MAX + 32];
    pathf(cdir, sizeof cdir, "%s/checkpoints", cfg->io.run_dir);
    int64_t *steps;
    int n = list_steps(cdir, &steps);
    if (n < 0) return ckpt_check_run_dir(cfg, err, errlen) ? -1
                      : asp_errf(err, errlen, "io.resume=auto: cannot read %s: %s", cdir, strerror(errno));
    char first_bad[4096] = "";
    for (int i = 0; i < n; i++) {
        char cand[CFG_PATH_MAX + 64], why[4096];
        pathf(cand, sizeof cand, "%s/" NAME_FMT, cdir, steps[i]);
        if (ckpt_validate(cand, cfg, plan, st, why, sizeof why) == 0) {
            if (first_bad[0]) asp_warn("io.resume=auto: skipping unusable newer checkpoint(s) (%s); using %s", first_bad, cand);
            snprintf(dir, dirlen, "%s", cand);
            free(steps);
            return 0;
        }
        /* a checkpoint of another model is the user's mistake, not damage:
         * older ones are of that model too, so stop here */
        if (strstr(why, "in this run's config") || strstr(why, "parameters; resume with")) {
            free(steps);
            return asp_errf(err, errlen, "io.resume=auto: %s", why);
        }
        if (first_bad[0]) asp_warn("io.resume=auto: checkpoint unusable: %s", why);
        else snprintf(first_bad, sizeof first_bad, "%s", why);
    }
    free(steps);
    if (first_bad[0])
        return asp_errf(err, errlen, "io.resume=auto: no usable checkpoint in %s: %s; repair or delete it, or set "
                        "io.resume=never to start fresh", cdir, first_bad);
    return 0;
}

/* Read values [begin, begin + len) of an fp32 array file. */
static int read_slice(const char *path, size_t begin, size_t len, float *out, char *err, size_t errlen) {
    int fd = ckpt_open_file(path, err, errlen);
    if (fd < 0) return -1;
    int rc = ckpt_read_at(fd, out, len * sizeof(float), (off_t)(CKPT_HEADER_BYTES + begin * sizeof(float)));
    close(fd);
    if (rc != 0) return asp_errf(err, errlen, "%s: cannot read values %zu..%zu: the file is truncated", path, begin, begin + len);
    return 0;
}

int ckpt_resume(const config_t *cfg, const plan_t *plan, exec_t *e, const ranks_t *r, const coll_ops_t *host_coll,
                ckpt_state_t *st, char *loaded, size_t loadedlen, char *err, size_t errlen) {
    int lead = r->world_rank == 0;
    char dir[CFG_PATH_MAX + 64];
    memset(dir, 0, sizeof dir);
    int rc = 0;
    if (lead) rc = choose(cfg, plan, dir, sizeof dir, st, err, errlen);
    if (agree(r, host_coll, rc) != 0) {
        if (!lead) asp_errf(err, errlen, "resume failed on rank 0");
        return -1;
    }
    host_coll->bcast(r->world, dir, sizeof dir, DT_U8, 0);
    lineage_begin(dir[0] ? st : NULL);   /* checkpoints this launch writes grow from the one loaded */
    if (!dir[0]) return 0;
    int64_t pos[4] = {st->step, st->epoch, st->cursor, (int64_t)st->seed};
    host_coll->bcast(r->world, pos, 4 * sizeof(int64_t), DT_U8, 0);
    st->step = pos[0], st->epoch = pos[1], st->cursor = pos[2], st->seed = (uint64_t)pos[3];

    /* Everything was validated by rank 0 (sizes, checksums). Each rank
     * reads what it holds chunk by chunk straight into the engine: no
     * model-sized buffer (4 x 32 GB for 8B parameters, beside the pinned
     * optimizer state). A read that fails midway leaves the engine partly
     * loaded, and the run is refused (the caller ends it). */
    size_t n = plan->n_params;
    exec_piece_t *pieces = asp_malloc((size_t)plan_n_buckets(plan) * sizeof *pieces, "checkpoint pieces");
    int npieces = exec_state_pieces(e, pieces);
    char path[CFG_PATH_MAX + 96];
    const size_t chunk = (size_t)1 << 22;
    float *buf = asp_malloc(chunk * sizeof(float), "checkpoint read buffer");
    pathf(path, sizeof path, "%s/%s", dir, ckpt_file_names[F_WEIGHTS]);
    dtype_t dt = DT_F32;
    rc = check_array_header(path, DT_F32, 1, (int64_t)n, &dt, err, errlen);
    if (!rc) {
        int fd = ckpt_open_file(path, err, errlen);
        size_t es = dtype_size(dt);
        if (fd < 0) rc = -1;
        for (size_t b = 0; b < n && !rc; b += chunk) {
            size_t k = n - b < chunk ? n - b : chunk;
            if (ckpt_read_at(fd, buf, k * es, (off_t)(CKPT_HEADER_BYTES + b * es)) != 0) {
                rc = asp_errf(err, errlen, "%s: cannot read the weights", path);
                break;
            }
            if (dt == DT_BF16) ckpt_bf16_to_f32(buf, (const uint16_t *)buf, k);
            exec_set_params_range(e, buf, b, k);
        }
        if (fd >= 0) close(fd);
    }
    static const exec_state_t which[3] = {EXEC_MASTER, EXEC_ADAM_M, EXEC_ADAM_V};
    for (int k = 0; k < 3 && !rc; k++) {
        pathf(path, sizeof path, "%s/%s", dir, ckpt_file_names[F_MASTER + k]);
        for (int i = 0; i < npieces && !rc; i++)
            for (size_t c = 0; c < pieces[i].len && !rc; c += chunk) {
                size_t m = pieces[i].len - c < chunk ? pieces[i].len - c : chunk;
                rc = read_slice(path, pieces[i].model_begin + c, m, buf, err, errlen);
                if (!rc) exec_set_optimizer_state_range(e, which[k], pieces[i].shard_off + c, buf, m);
            }
    }
    double bad = rc ? 1 : 0;
    host_coll->allreduce_sum(r->world, &bad, 1, DT_F64);
    if (bad == 0) {
        if (loaded) snprintf(loaded, loadedlen, "%s", dir);
    } else if (!rc) {
        asp_errf(err, errlen, "reading checkpoint %s failed on another rank", dir);
    }
    free(buf);
    free(pieces);
    return bad == 0 ? 1 : -1;
}

/* ------------------------------------------------------------------ the run folder */

/* Why `path`, which lstat found, cannot be used as a folder; NULL when it can. */
static const char *unreadable_why(const char *path, char *buf, size_t len) {
    struct stat sb;
    if (stat(path, &sb) != 0) {
        int e = errno;
        char target[512];
        ssize_t tl = readlink(path, target, sizeof target - 1);
        if (tl >= 0) target[tl] = 0;
        if (e == ENOENT && tl >= 0)
            snprintf(buf, len, "a symbolic link to %s, which does not exist (storage not mounted?)", target);
        else if (e == ELOOP)
            snprintf(buf, len, "a loop of symbolic links");
        else
            snprintf(buf, len, "%s", strerror(e));
        return buf;
    }
    if (!S_ISDIR(sb.st_mode)) return "not a folder";
    DIR *d = opendir(path);
    if (!d) {
        snprintf(buf, len, "cannot be listed: %s", strerror(errno));
        return buf;
    }
    closedir(d);
    return NULL;
}

int ckpt_check_run_dir(const config_t *cfg, char *err, size_t errlen) {
    if (strcmp(cfg->io.resume, "auto") != 0) return 0;
    char cdir[CFG_PATH_MAX + 32], why[700];
    /* the run folder itself first: a link to storage that is not there */
    struct stat sb;
    const char *dirs[2] = {cfg->io.run_dir, cdir};
    pathf(cdir, sizeof cdir, "%s/checkpoints", cfg->io.run_dir);
    for (int i = 0; i < 2; i++) {
        if (lstat(dirs[i], &sb) != 0) {
            if (errno == ENOENT) return 0;   /* a fresh run folder */
            return asp_errf(err, errlen, "io.resume=auto: %s cannot be read (%s); fix its permissions or the path, "
                            "or set io.resume=never to start fresh", dirs[i], strerror(errno));
        }
        const char *bad = unreadable_why(dirs[i], why, sizeof why);
        if (bad)
            return asp_errf(err, errlen, "io.resume=auto: %s cannot be read: %s; its checkpoints would be ignored and "
                            "the run start over. Mount or fix it, or set io.resume=never (or another io.run_dir) to "
                            "start fresh", dirs[i], bad);
    }
    return 0;
}
