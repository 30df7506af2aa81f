/* Card profiles: the reader of the profile text, the two built-in profiles
 * (h100, h200) and the interpolation of their rates. The format is in
 * docs/plan.md ("Card profiles"); every number of the built-ins says where
 * it comes from. */
#include "plan/profile.h"

#include <ctype.h>
#include <errno.h>
#include <math.h>
#include <stdarg.h>
#include <stdlib.h>
#include <string.h>

#include "util.h"

#define MAGIC "autosp-card-profile"

/* H100 80GB HBM3. Sources: bench/RESULTS.md (2026-11-26 entries, one H100,
 * cuDNN 9.19 and cuBLASLt) and the anchors of the GPU notes. */
static const char builtin_h100[] =
    MAGIC " 1\n"
    "card h100\n"
    "peak_tflops 989                 # dense bf16 peak (the MFU convention of bench/README.md)\n"
    "# GEMMs, TFLOP/s by the FLOPs of one call\n"
    "gemm 1e9 250                    # estimate: a 4K-token k_proj-sized call is launch- and tail-bound\n"
    "gemm 1e10 560                   # estimate, between the two measured ends\n"
    "gemm 1e11 700                   # low end of the 625-800 measured at Llama shapes\n"
    "gemm 5.5e11 785                 # measured: 1B at S = 64K, forward MATMUL (q_proj 5.5e11 a call)\n"
    "gemm 4e12 800                   # measured: 1B at S = 64K, backward MATMUL (gate/up 4.4e12 a call)\n"
    "# causal attention (cuDNN), TFLOP/s by length and head dim; backward = 2.5x forward FLOPs\n"
    "attn_fwd 4096 64 330            # estimate: short sequences fill the card less\n"
    "attn_fwd 16384 64 430           # estimate\n"
    "attn_fwd 65536 64 466           # measured: bench_attention 65536 32 8 64 (37.7 ms)\n"
    "attn_bwd 4096 64 300            # estimate\n"
    "attn_bwd 16384 64 395           # estimate\n"
    "attn_bwd 65536 64 415           # measured: 1B profile at 64K, 106 ms a layer (bench: 102-115 ms)\n"
    "attn_fwd 65536 128 504          # as the H200 (same chip): fitted there, see the h200 profile\n"
    "attn_fwd 262144 128 581\n"
    "attn_bwd 65536 128 430\n"
    "attn_bwd 262144 128 496\n"
    "attn_docs_fwd 21800 64 330      # as the H200: fitted there\n"
    "attn_docs_bwd 21800 64 305\n"
    "attn_piece_us 20                # estimate: one attention call's launch and tail\n"
    "memory_gbs 3000                 # device memory, memory-bound ops (about 3 TB/s measured here)\n"
    "pcie_h2d_gbs 50                 # PCIe Gen5 x16, pinned: the plan's figure (the H200's host measured 55)\n"
    "pcie_d2h_gbs 50\n"
    "host_adamw_gparams 1.15         # 8.03e9 parameters in 6.4-7.6 s on the 16-core host (RESULTS)\n"
    "all_to_all_gbs 2 300            # 2 GPUs, NVLink: 1B at 128K, 21.5 GB of all-to-alls in 42-90 ms\n"
    "all_to_all_gbs 8 250            # estimate: more peers, smaller blocks\n"
    "reduce_scatter_gbs 2 190        # 2 GPUs: 1B's 4.9 GB fp32 gradient halved in 13 ms\n"
    "reduce_scatter_gbs 8 300        # estimate: NVLink bus bandwidth grows with the ring\n"
    "all_gather_gbs 2 190            # as reduce-scatter\n"
    "all_gather_gbs 8 300            # estimate\n";

/* H200 (141 GB HBM3e): the same compute chip as the H100 with faster
 * memory. Sources: bench/RESULTS.md (2026-12-01 entries, one H200). */
static const char builtin_h200[] =
    MAGIC " 1\n"
    "card h200\n"
    "peak_tflops 989                 # dense bf16 peak, as the H100\n"
    "gemm 1e9 250                    # as the H100 (same SMs and clocks)\n"
    "gemm 1e10 560\n"
    "gemm 1e11 700\n"
    "gemm 5.5e11 785\n"
    "gemm 4e12 800\n"
    "attn_fwd 4096 64 330            # as the H100: attention is compute-bound, the same SMs\n"
    "attn_fwd 16384 64 430\n"
    "attn_fwd 65536 64 466\n"
    "attn_bwd 4096 64 300\n"
    "attn_bwd 16384 64 395\n"
    "attn_bwd 65536 64 415\n"
    "# head dim 128: fitted to two measured steps (the backward kept at NVIDIA's 580/680 of the forward):\n"
    "# Llama-3.1-8B with 4 layers at 64K, 1.85 s; the full 8B at 256K, step 1 161 s (RESULTS)\n"
    "attn_fwd 65536 128 504\n"
    "attn_fwd 262144 128 581\n"
    "attn_bwd 65536 128 430\n"
    "attn_bwd 262144 128 496\n"
    "# packed documents (ragged graphs): fitted to Llama-3.2-1B on documents of 4K-32K at 131K,\n"
    "# 3.54 s a step (RESULTS 2026-12-01); the length is the documents' mean of len^2 / len\n"
    "attn_docs_fwd 21800 64 330\n"
    "attn_docs_bwd 21800 64 305\n"
    "attn_piece_us 20                # estimate\n"
    "memory_gbs 4300                 # device memory, about 4.3 TB/s\n"
    "pcie_h2d_gbs 55                 # measured: pinned 1 GiB, H2D 55.3 GB/s\n"
    "pcie_d2h_gbs 55                 # measured: D2H 55.2 GB/s\n"
    "host_adamw_gparams 1.15         # measured: 8.03e9 parameters in 6.4-7.6 s on 16 cores\n"
    "all_to_all_gbs 2 300            # measured on 2 H200s: 1B at 128K, 21.5 GB in 42-90 ms\n"
    "all_to_all_gbs 8 250            # estimate\n"
    "reduce_scatter_gbs 2 190        # measured on 2 H200s: 4.9 GB fp32 gradient halved in 13 ms\n"
    "reduce_scatter_gbs 8 300        # estimate\n"
    "all_gather_gbs 2 190            # as reduce-scatter\n"
    "all_gather_gbs 8 300            # estimate\n";

const char *profile_builtin_text(const char *card) {
    if (!strcmp(card, "h100")) return builtin_h100;
    if (!strcmp(card, "h200")) return builtin_h200;
    return NULL;
}

/* The keys: how many numbers each takes, the bounds of each, and which must appear. */
typedef enum { K_CARD, K_PEAK, K_GEMM, K_ATTN_FWD, K_ATTN_BWD, K_DOCS_FWD, K_DOCS_BWD, K_PIECE, K_MEM, K_H2D, K_D2H, K_ADAMW, K_A2A, K_RS,
               K_AG, K__COUNT } key_t_;
typedef struct {
    const char *name;
    int nums;               /* numbers after the key (K_CARD: a name) */
    int repeat;             /* 1: a table row, may repeat */
    int required;
    double lo[3], hi[3];    /* bounds of each number (inclusive) */
    int integer[3];         /* 1: the number must be whole */
    const char *form;
} key_spec_t;

static const key_spec_t keys[K__COUNT] = {
    [K_CARD] = {"card", 0, 0, 0, {0}, {0}, {0}, "card NAME (letters, digits, '.', '_', '-')"},
    [K_PEAK] = {"peak_tflops", 1, 0, 1, {1e-3}, {1e5}, {0}, "peak_tflops TFLOPS"},
    [K_GEMM] = {"gemm", 2, 1, 1, {1, 1e-6}, {1e18, 1e5}, {0}, "gemm FLOPS_PER_CALL TFLOPS"},
    [K_ATTN_FWD] = {"attn_fwd", 3, 1, 1, {1, 1, 1e-6}, {1 << 30, 1024, 1e5}, {1, 1, 0}, "attn_fwd LENGTH HEAD_DIM TFLOPS"},
    [K_ATTN_BWD] = {"attn_bwd", 3, 1, 1, {1, 1, 1e-6}, {1 << 30, 1024, 1e5}, {1, 1, 0}, "attn_bwd LENGTH HEAD_DIM TFLOPS"},
    [K_DOCS_FWD] = {"attn_docs_fwd", 3, 1, 0, {1, 1, 1e-6}, {1 << 30, 1024, 1e5}, {1, 1, 0},
                    "attn_docs_fwd DOCUMENT_LENGTH HEAD_DIM TFLOPS"},
    [K_DOCS_BWD] = {"attn_docs_bwd", 3, 1, 0, {1, 1, 1e-6}, {1 << 30, 1024, 1e5}, {1, 1, 0},
                    "attn_docs_bwd DOCUMENT_LENGTH HEAD_DIM TFLOPS"},
    [K_PIECE] = {"attn_piece_us", 1, 0, 0, {0}, {1e6}, {0}, "attn_piece_us MICROSECONDS"},
    [K_MEM] = {"memory_gbs", 1, 0, 1, {1e-3}, {1e5}, {0}, "memory_gbs GB_PER_S"},
    [K_H2D] = {"pcie_h2d_gbs", 1, 0, 1, {1e-3}, {1e5}, {0}, "pcie_h2d_gbs GB_PER_S"},
    [K_D2H] = {"pcie_d2h_gbs", 1, 0, 1, {1e-3}, {1e5}, {0}, "pcie_d2h_gbs GB_PER_S"},
    [K_ADAMW] = {"host_adamw_gparams", 1, 0, 1, {1e-6}, {1e4}, {0}, "host_adamw_gparams BILLIONS_PER_S"},
    [K_A2A] = {"all_to_all_gbs", 2, 1, 0, {1, 1e-3}, {1 << 20, 1e5}, {1, 0}, "all_to_all_gbs GPUS GB_PER_S"},
    [K_RS] = {"reduce_scatter_gbs", 2, 1, 0, {1, 1e-3}, {1 << 20, 1e5}, {1, 0}, "reduce_scatter_gbs GPUS GB_PER_S"},
    [K_AG] = {"all_gather_gbs", 2, 1, 0, {1, 1e-3}, {1 << 20, 1e5}, {1, 0}, "all_gather_gbs GPUS GB_PER_S"},
};

typedef struct {
    const char *name;
    int line;
    char *err;
    size_t errlen;
} where_t;

static int fail(const where_t *w, const char *key, const char *fmt, ...) ASP_PRINTF(3, 4);
static int fail(const where_t *w, const char *key, const char *fmt, ...) {
    char what[512];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(what, sizeof what, fmt, ap);
    va_end(ap);
    if (key) return asp_errf(w->err, w->errlen, "%s:%d: %s: %s", w->name, w->line, key, what);
    return asp_errf(w->err, w->errlen, "%s:%d: %s", w->name, w->line, what);
}

/* Insert (x, y) into a curve kept sorted by x; a repeated x is refused. */
static int curve_add(profile_curve_t *c, double x, double y, const where_t *w, const char *key) {
    if (c->n == PROFILE_MAX_POINTS)
        return fail(w, key, "more than %d rows in this table; keep the few points that shape the curve",
                    PROFILE_MAX_POINTS);
    int i = c->n;
    while (i > 0 && c->pt[i - 1].x > x) i--;
    if (i > 0 && c->pt[i - 1].x == x) return fail(w, key, "a second row for %g; give each point once", x);
    memmove(&c->pt[i + 1], &c->pt[i], (size_t)(c->n - i) * sizeof c->pt[0]);
    c->pt[i] = (profile_point_t){x, y};
    c->n++;
    return 0;
}

static int attn_add(profile_attn_t *a, double len, int hd, double tflops, const where_t *w, const char *key) {
    int j = 0;
    while (j < a->n && a->head_dim[j] != hd) j++;
    if (j == a->n) {
        if (a->n == PROFILE_MAX_HEAD_DIMS)
            return fail(w, key, "more than %d head dims; keep those the models use", PROFILE_MAX_HEAD_DIMS);
        a->head_dim[a->n++] = hd;
    }
    return curve_add(&a->by_len[j], len, tflops * 1e12, w, key);
}

/* The numbers after a key: count, range and wholeness checked. */
static int parse_numbers(const key_spec_t *k, char *rest, double *v, const where_t *w) {
    for (int i = 0; i < k->nums; i++) {
        char *tok = strtok(i == 0 ? rest : NULL, " \t");
        if (!tok) return fail(w, k->name, "expects %d number%s (%s)", k->nums, k->nums > 1 ? "s" : "", k->form);
        char *end;
        errno = 0;
        v[i] = strtod(tok, &end);
        if (errno || *end || !isfinite(v[i]))
            return fail(w, k->name, "'%s' is not a number (%s)", tok, k->form);
        if (v[i] < k->lo[i] || v[i] > k->hi[i])
            return fail(w, k->name, "%s is outside %g .. %g (%s)", tok, k->lo[i], k->hi[i], k->form);
        if (k->integer[i] && v[i] != floor(v[i])) return fail(w, k->name, "%s must be a whole number (%s)", tok, k->form);
    }
    char *extra = strtok(k->nums ? NULL : rest, " \t");
    if (extra) return fail(w, k->name, "unexpected '%s' after the numbers (%s)", extra, k->form);
    return 0;
}

static int parse_card(card_profile_t *p, char *rest, const where_t *w) {
    char *tok = strtok(rest, " \t");
    if (!tok) return fail(w, "card", "expects a name (%s)", keys[K_CARD].form);
    size_t n = strlen(tok);
    if (n >= PROFILE_NAME_MAX) return fail(w, "card", "the name is longer than %d characters", PROFILE_NAME_MAX - 1);
    for (size_t i = 0; i < n; i++)
        if (!isalnum((unsigned char)tok[i]) && !strchr("._-", tok[i]))
            return fail(w, "card", "'%s' has a character other than %s", tok, keys[K_CARD].form);
    char *extra = strtok(NULL, " \t");
    if (extra) return fail(w, "card", "unexpected '%s' after the name", extra);
    memcpy(p->card, tok, n + 1);
    return 0;
}

static int apply_key(card_profile_t *p, int k, const double *v) {
    switch (k) {
    case K_PEAK: p->peak_tflops = v[0]; return 0;
    case K_PIECE: p->attn_piece_s = v[0] * 1e-6; return 0;
    case K_MEM: p->mem_bytes_per_s = v[0] * 1e9; return 0;
    case K_H2D: p->h2d_bytes_per_s = v[0] * 1e9; return 0;
    case K_D2H: p->d2h_bytes_per_s = v[0] * 1e9; return 0;
    case K_ADAMW: p->host_adamw_per_s = v[0] * 1e9; return 0;
    default: return 0;
    }
}

/* One `key values` line (comment already cut). */
static int parse_line(card_profile_t *p, char *line, int *seen, const where_t *w) {
    char *key = line + strspn(line, " \t"), *rest = key + strcspn(key, " \t");
    if (!*key) return 0;
    if (*rest) *rest++ = 0;
    int k = 0;
    while (k < K__COUNT && strcmp(keys[k].name, key)) k++;
    if (k == K__COUNT) {
        if (!strcmp(key, MAGIC)) return fail(w, key, "appears twice; it opens the file once");
        return fail(w, key, "unknown key (known: card, peak_tflops, gemm, attn_fwd, attn_bwd, attn_docs_fwd, attn_docs_bwd, "
                            "attn_piece_us, "
                            "memory_gbs, pcie_h2d_gbs, pcie_d2h_gbs, host_adamw_gparams, all_to_all_gbs, "
                            "reduce_scatter_gbs, all_gather_gbs)");
    }
    const key_spec_t *ks = &keys[k];
    if (seen[k] && !ks->repeat) return fail(w, key, "given twice; keep one line");
    seen[k]++;
    if (k == K_CARD) return parse_card(p, rest, w);
    double v[3] = {0};
    if (parse_numbers(ks, rest, v, w)) return -1;
    switch (k) {
    case K_GEMM: return curve_add(&p->gemm, v[0], v[1] * 1e12, w, key);
    case K_ATTN_FWD: return attn_add(&p->attn_fwd, v[0], (int)v[1], v[2], w, key);
    case K_ATTN_BWD: return attn_add(&p->attn_bwd, v[0], (int)v[1], v[2], w, key);
    case K_DOCS_FWD: return attn_add(&p->docs_fwd, v[0], (int)v[1], v[2], w, key);
    case K_DOCS_BWD: return attn_add(&p->docs_bwd, v[0], (int)v[1], v[2], w, key);
    case K_A2A: return curve_add(&p->coll[COLL_A2A], v[0], v[1] * 1e9, w, key);
    case K_RS: return curve_add(&p->coll[COLL_REDUCE_SCATTER], v[0], v[1] * 1e9, w, key);
    case K_AG: return curve_add(&p->coll[COLL_ALL_GATHER], v[0], v[1] * 1e9, w, key);
    default: return apply_key(p, k, v);
    }
}

/* The first line that is not blank or a comment: MAGIC VERSION. */
static int parse_magic(char *line, const where_t *w) {
    char *m = strtok(line, " \t"), *v = strtok(NULL, " \t"), *extra = strtok(NULL, " \t");
    if (!m || strcmp(m, MAGIC))
        return fail(w, NULL, "not a card profile: the first line must be '" MAGIC " %d' (write one with "
                             "autosp-train CONFIG --calibrate, or start from a built-in: docs/plan.md)",
                    PROFILE_VERSION);
    if (!v || strcmp(v, "1") || extra)
        return fail(w, MAGIC, "version '%s' is not one this build reads (%d)", v ? v : "", PROFILE_VERSION);
    return 0;
}

int profile_parse(card_profile_t *p, const char *text, size_t len, const char *name, char *err, size_t errlen) {
    memset(p, 0, sizeof *p);
    snprintf(p->card, sizeof p->card, "unnamed");
    p->attn_piece_s = 20e-6;
    where_t w = {name, 0, err, errlen};
    if (len > PROFILE_MAX_BYTES)
        return fail(&w, NULL, "%zu bytes, more than the %d a profile may have", len, PROFILE_MAX_BYTES);
    int seen[K__COUNT] = {0}, have_magic = 0;
    size_t at = 0;
    while (at < len) {
        w.line++;
        size_t end = at;
        while (end < len && text[end] != '\n') end++;
        if (end - at >= PROFILE_MAX_LINE)
            return fail(&w, NULL, "a line of %zu characters; a profile's lines are below %d", end - at,
                        PROFILE_MAX_LINE);
        if (memchr(text + at, 0, end - at)) return fail(&w, NULL, "a NUL byte: a profile is text");
        char line[PROFILE_MAX_LINE + 1];
        memcpy(line, text + at, end - at);
        line[end - at] = 0;
        at = end + 1;
        char *hash = strchr(line, '#');
        if (hash) *hash = 0;
        for (char *c = line; *c; c++)
            if (*c == '\r') *c = ' ';
            else if (!isprint((unsigned char)*c) && *c != '\t')
                return fail(&w, NULL, "a byte 0x%02x that is not text", (unsigned char)*c);
        if (!line[strspn(line, " \t")]) continue;
        if (!have_magic) {
            if (parse_magic(line, &w)) return -1;
            have_magic = 1;
            continue;
        }
        if (parse_line(p, line, seen, &w)) return -1;
    }
    if (w.line == 0) w.line = 1;
    if (!have_magic) return fail(&w, NULL, "empty: the first line must be '" MAGIC " %d'", PROFILE_VERSION);
    for (int k = 0; k < K__COUNT; k++)
        if (keys[k].required && !seen[k])
            return asp_errf(err, errlen, "%s: %s: missing (%s); every profile gives it", name, keys[k].name,
                            keys[k].form);
    return 0;
}

int profile_load(card_profile_t *p, const char *path, char *err, size_t errlen) {
    FILE *f = fopen(path, "rb");
    if (!f)
        return asp_errf(err, errlen, "cannot open card profile %s: %s; give h100, h200 or the path of a profile "
                        "file (autosp-train CONFIG --calibrate writes one)", path, strerror(errno));
    char *buf = asp_malloc(PROFILE_MAX_BYTES + 1, "card profile");
    size_t n = fread(buf, 1, PROFILE_MAX_BYTES + 1, f);
    int bad = ferror(f);
    fclose(f);
    int rc = bad ? asp_errf(err, errlen, "cannot read card profile %s", path)
                 : profile_parse(p, buf, n, path, err, errlen);
    free(buf);
    return rc;
}

int profile_select(card_profile_t *p, const char *spec, char *err, size_t errlen) {
    const char *text = profile_builtin_text(spec);
    if (text) return profile_parse(p, text, strlen(text), spec, err, errlen);
    return profile_load(p, spec, err, errlen);
}

static void write_curve(FILE *out, const char *key, const profile_curve_t *c, double scale, int whole_x) {
    for (int i = 0; i < c->n; i++) {
        if (whole_x) fprintf(out, "%s %.0f %.6g\n", key, c->pt[i].x, c->pt[i].y / scale);
        else fprintf(out, "%s %.6g %.6g\n", key, c->pt[i].x, c->pt[i].y / scale);
    }
}

static void write_attn(FILE *out, const char *key, const profile_attn_t *a) {
    for (int j = 0; j < a->n; j++)
        for (int i = 0; i < a->by_len[j].n; i++)
            fprintf(out, "%s %.0f %d %.6g\n", key, a->by_len[j].pt[i].x, a->head_dim[j], a->by_len[j].pt[i].y / 1e12);
}

void profile_write(const card_profile_t *p, FILE *out) {
    fprintf(out, MAGIC " %d\ncard %s\npeak_tflops %.6g\n", PROFILE_VERSION, p->card, p->peak_tflops);
    write_curve(out, "gemm", &p->gemm, 1e12, 0);
    write_attn(out, "attn_fwd", &p->attn_fwd);
    write_attn(out, "attn_bwd", &p->attn_bwd);
    write_attn(out, "attn_docs_fwd", &p->docs_fwd);
    write_attn(out, "attn_docs_bwd", &p->docs_bwd);
    fprintf(out, "attn_piece_us %.6g\nmemory_gbs %.6g\npcie_h2d_gbs %.6g\npcie_d2h_gbs %.6g\nhost_adamw_gparams %.6g\n",
            p->attn_piece_s * 1e6, p->mem_bytes_per_s / 1e9, p->h2d_bytes_per_s / 1e9, p->d2h_bytes_per_s / 1e9,
            p->host_adamw_per_s / 1e9);
    write_curve(out, "all_to_all_gbs", &p->coll[COLL_A2A], 1e9, 1);
    write_curve(out, "reduce_scatter_gbs", &p->coll[COLL_REDUCE_SCATTER], 1e9, 1);
    write_curve(out, "all_gather_gbs", &p->coll[COLL_ALL_GATHER], 1e9, 1);
}

double profile_curve_at(const profile_curve_t *c, double x) {
    if (c->n == 0) return 0;
    if (x <= c->pt[0].x) return c->pt[0].y;
    if (x >= c->pt[c->n - 1].x) return c->pt[c->n - 1].y;
    int i = 1;
    while (c->pt[i].x < x) i++;
    const profile_point_t *a = &c->pt[i - 1], *b = &c->pt[i];
    double t = (log(x) - log(a->x)) / (log(b->x) - log(a->x));
    return a->y + t * (b->y - a->y);
}

double profile_gemm_flops_per_s(const card_profile_t *p, double flops_per_call) {
    return profile_curve_at(&p->gemm, flops_per_call);
}

double profile_attn_flops_per_s(const card_profile_t *p, int backward, int documents, double len, int head_dim) {
    const profile_attn_t *a = backward ? &p->attn_bwd : &p->attn_fwd;
    const profile_attn_t *d = backward ? &p->docs_bwd : &p->docs_fwd;
    if (documents && d->n) a = d;
    int best = 0;
    for (int j = 1; j < a->n; j++)
        if (abs(a->head_dim[j] - head_dim) < abs(a->head_dim[best] - head_dim)) best = j;
    return a->n ? profile_curve_at(&a->by_len[best], len) : 0;
}

double profile_coll_bytes_per_s(const card_profile_t *p, profile_coll_t kind, int gpus) {
    return profile_curve_at(&p->coll[kind], (double)gpus);
}
