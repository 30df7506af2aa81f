/* Checkpoint arrays read through once: their CRC-32C, and their values
 * checked on the way (finite; the compute weights the master's), naming the
 * tensor of the first problem. Part of the checkpoint reader (ckpt.c). */
#include <errno.h>
#include <inttypes.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "io/ckpt_internal.h"
#include "util.h"


static const char *tensor_at(const model_t *m, size_t i, size_t *at) {
    for (int p = 0; p < m->nparams; p++)
        if (i >= m->params[p].offset && i - m->params[p].offset < m->params[p].numel) {
            *at = i - m->params[p].offset;
            return m->params[p].name;
        }
    *at = i;
    return "(no tensor)";
}

/* Values [first, first + k) of array file `f`: NaN and Inf, and a negative
 * second moment (its square root is NaN), name the tensor. */
static void check_values(vcheck_t *vc, const char *path, int f, const float *x, size_t first, size_t k) {
    if (vc->what[0]) return;
    for (size_t j = 0; j < k; j++) {
        if (isfinite(x[j]) && !(f == F_ADAM_V && x[j] < 0)) continue;
        size_t at;
        const char *name = tensor_at(vc->m, first + j, &at);
        snprintf(vc->what, sizeof vc->what, "%s: tensor '%s' holds %s at element %zu; the checkpoint was saved from "
                 "a diverged run or is damaged: resume from an older one (delete or move this one) or set "
                 "io.resume=never", path, name, isnan(x[j]) ? "NaN" : isinf(x[j]) ? (x[j] > 0 ? "+Inf" : "-Inf")
                 : "a negative second moment", at);
        return;
    }
}

/* The compute weights are the master weights (rounded to bf16 on GPUs). */
static void check_pair(vcheck_t *vc, const char *wpath, const float *w, const float *m, size_t first, size_t k) {
    if (vc->what[0]) return;
    for (size_t j = 0; j < k; j++) {
        float d = fabsf(w[j] - m[j]);
        if (d == 0 || d <= ldexpf(fabsf(m[j]), -7) + 1e-37f) continue;
        size_t at;
        const char *name = tensor_at(vc->m, first + j, &at);
        snprintf(vc->what, sizeof vc->what, "%s and master.bin disagree: tensor '%s' element %zu is %.9g in the "
                 "weights but %.9g in the master weights; the files come from different checkpoints (resume from "
                 "another one, or set io.resume=never)", wpath, name, at, (double)w[j], (double)m[j]);
        return;
    }
}

/* One array file read through in element chunks, its CRC-32C taken. */
typedef struct {
    int fd;
    size_t es;            /* bytes per value */
    int64_t nvals, done;  /* values in the file (by its size), read so far */
    int checked;          /* header fine and n_params values: look at them */
    uint8_t *raw;
    float *vals;
    file_sum_t sum;
} ascan_t;

static int ascan_open(ascan_t *a, const char *path, long long size, size_t n_params, char *err, size_t errlen) {
    memset(a, 0, sizeof *a);
    a->fd = ckpt_open_file(path, err, errlen);
    if (a->fd < 0) return -1;
    uint8_t h[CKPT_HEADER_BYTES];
    size_t hb = size < CKPT_HEADER_BYTES ? (size_t)size : CKPT_HEADER_BYTES;
    if (ckpt_read_at(a->fd, h, hb, 0) != 0) {
        close(a->fd);
        return asp_errf(err, errlen, "%s: cannot read its header", path);
    }
    a->sum.crc = ckpt_crc32c(0, h, hb);
    a->sum.size = (int64_t)hb;
    uint32_t t = 0;
    if (hb == CKPT_HEADER_BYTES) memcpy(&t, h + 12, 4);
    a->es = t == DT_BF16 ? 2 : 4;
    a->nvals = size > CKPT_HEADER_BYTES ? (size - CKPT_HEADER_BYTES) / (long long)a->es : 0;
    a->checked = hb == CKPT_HEADER_BYTES && !memcmp(h, CKPT_MAGIC, 8) && (t == DT_F32 || t == DT_BF16) &&
                 a->nvals == (int64_t)n_params;
    a->raw = asp_malloc(CKPT_IO_CHUNK * 4, "checkpoint read buffer");
    a->vals = asp_malloc(CKPT_IO_CHUNK * sizeof(float), "checkpoint values");
    return 0;
}

/* The next up to CKPT_IO_CHUNK values (or, past them, the trailing bytes). */
static int ascan_next(ascan_t *a, const char *path, size_t *k, char *err, size_t errlen) {
    int64_t left = a->nvals - a->done;
    *k = left > (int64_t)CKPT_IO_CHUNK ? CKPT_IO_CHUNK : (size_t)left;
    size_t bytes = *k * a->es;
    if (!*k) {   /* trailing bytes short of a value: the checksum covers them too */
        struct stat sb;
        if (fstat(a->fd, &sb) != 0) return asp_errf(err, errlen, "%s: %s", path, strerror(errno));
        bytes = (size_t)(sb.st_size - a->sum.size);
        if (bytes > CKPT_IO_CHUNK * 4) bytes = CKPT_IO_CHUNK * 4;
    }
    if (bytes && ckpt_read_at(a->fd, a->raw, bytes, (off_t)a->sum.size) != 0)
        return asp_errf(err, errlen, "%s: cannot read: the file is truncated", path);
    par_service();
    a->sum.crc = ckpt_crc32c(a->sum.crc, a->raw, bytes);
    a->sum.size += (int64_t)bytes;
    if (a->es == 2) ckpt_bf16_to_f32(a->vals, (const uint16_t *)a->raw, *k);
    else memcpy(a->vals, a->raw, *k * 4);
    a->done += (int64_t)*k;
    return 0;
}

static void ascan_close(ascan_t *a) {
    close(a->fd);
    free(a->raw);
    free(a->vals);
}

/* CRC-32C of the array files `fs` (one, or the weights and the master read
 * side by side), their values checked on the way (one read of each). */
int ckpt_scan_arrays(const char *dir, const int *fs, int nf, const long long *sizes, file_sum_t *sums, size_t n_params,
                       vcheck_t *vc, char *err, size_t errlen) {
    ascan_t a[2];
    char path[2][CFG_PATH_MAX + 64];
    for (int i = 0; i < nf; i++) {
        if ((size_t)snprintf(path[i], sizeof path[i], "%s/%s", dir, ckpt_file_names[fs[i]]) >= sizeof path[i])
            return asp_errf(err, errlen, "%s: path too long; use a shorter io.run_dir", dir);
        if (ascan_open(&a[i], path[i], sizes[fs[i]], n_params, err, errlen) != 0) {
            if (i) ascan_close(&a[0]);
            return -1;
        }
    }
    int rc = 0, more = 1;
    while (!rc && more) {
        more = 0;
        size_t k[2] = {0, 0};
        for (int i = 0; i < nf && !rc; i++) {
            int64_t was = a[i].sum.size;
            rc = ascan_next(&a[i], path[i], &k[i], err, errlen);
            if (!rc && a[i].checked) check_values(vc, path[i], fs[i], a[i].vals, (size_t)(a[i].done - (int64_t)k[i]), k[i]);
            more |= a[i].sum.size > was;
        }
        if (!rc && nf == 2 && a[0].checked && a[1].checked && k[0] == k[1])
            check_pair(vc, path[0], a[0].vals, a[1].vals, (size_t)(a[0].done - (int64_t)k[0]), k[0]);
    }
    for (int i = 0; i < nf; i++) {
        sums[i] = a[i].sum;
        ascan_close(&a[i]);
    }
    return rc;
}

/* ------------------------------------------------------------------ CRC-32C */

static uint32_t crc_table[8][256];

static void crc_init(void) {
    static int done = 0;
    if (done) return;
    for (uint32_t i = 0; i < 256; i++) {
        uint32_t c = i;
        for (int k = 0; k < 8; k++) c = c & 1 ? (c >> 1) ^ 0x82F63B78u : c >> 1;
        crc_table[0][i] = c;
    }
    /* slicing by 8: table k advances a byte through k more zero bytes */
    for (int k = 1; k < 8; k++)
        for (int i = 0; i < 256; i++) crc_table[k][i] = (crc_table[k - 1][i] >> 8) ^ crc_table[0][crc_table[k - 1][i] & 0xFF];
    done = 1;
}

uint32_t ckpt_crc32c(uint32_t crc, const void *data, size_t n) {
    crc_init();
    const uint8_t *p = data;
    uint32_t c = ~crc;
    while (n >= 8) {
        uint32_t lo = c ^ ((uint32_t)p[0] | (uint32_t)p[1] << 8 | (uint32_t)p[2] << 16 | (uint32_t)p[3] << 24);
        c = crc_table[7][lo & 0xFF] ^ crc_table[6][(lo >> 8) & 0xFF] ^ crc_table[5][(lo >> 16) & 0xFF] ^
            crc_table[4][lo >> 24] ^ crc_table[3][p[4]] ^ crc_table[2][p[5]] ^ crc_table[1][p[6]] ^
            crc_table[0][p[7]];
        p += 8;
        n -= 8;
    }
    while (n--) c = (c >> 8) ^ crc_table[0][(c ^ *p++) & 0xFF];
    return ~c;
}
