/* safetensors reader and writer (see safetensors.h). */
#include "io/safetensors.h"

#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

#include "io/json.h"
#include "util.h"

#define INDEX_NAME "model.safetensors.index.json"
#define SINGLE_NAME "model.safetensors"
#define INDEX_MAX_BYTES ((size_t)64 << 20)

static const char *const dtype_names[] = {"F32", "F16", "BF16"};
/* dtypes of the format that this engine does not read: named in the refusal. */
static const char *const other_dtypes[] = {"F64", "I64", "I32", "I16", "I8", "U64", "U32", "U16", "U8", "BOOL",
                                           "F8_E4M3", "F8_E5M2", "F8_E8M0", "F6_E2M3", "F6_E3M2", "F4", "C64"};

const char *st_dtype_name(st_dtype_t t) { return (unsigned)t < 3 ? dtype_names[t] : "?"; }
size_t st_dtype_size(st_dtype_t t) { return t == ST_F32 ? 4 : 2; }

/* ------------------------------------------------------------------ conversions */

float st_bf16_to_f32(uint16_t h) {
    uint32_t u = (uint32_t)h << 16;
    float x;
    memcpy(&x, &u, 4);
    return x;
}

uint16_t st_f32_to_bf16(float x) {
    uint32_t u;
    memcpy(&u, &x, 4);
    if ((u & 0x7fffffffu) > 0x7f800000u) return (uint16_t)((u >> 16) | 0x0040u);   /* quiet NaN */
    u += 0x7fffu + ((u >> 16) & 1u);    /* round to nearest even */
    return (uint16_t)(u >> 16);
}

float st_f16_to_f32(uint16_t h) {
    uint32_t sign = (uint32_t)(h & 0x8000u) << 16, exp = (h >> 10) & 0x1fu, man = h & 0x3ffu, u;
    if (exp == 0x1f) {
        u = sign | 0x7f800000u | (man << 13);           /* inf, NaN */
    } else if (exp) {
        u = sign | ((exp + 112u) << 23) | (man << 13);  /* normal: rebias 15 -> 127 */
    } else if (man) {
        /* subnormal: man * 2^-24, exact in fp32 */
        float x = ldexpf((float)man, -24);
        return sign ? -x : x;
    } else {
        u = sign;
    }
    float x;
    memcpy(&x, &u, 4);
    return x;
}

uint16_t st_f32_to_f16(float x) {
    uint32_t u;
    memcpy(&u, &x, 4);
    uint16_t sign = (uint16_t)((u >> 16) & 0x8000u);
    uint32_t ax = u & 0x7fffffffu;
    if (ax > 0x7f800000u) return (uint16_t)(sign | 0x7e00u);
    if (ax >= 0x477ff000u) return (uint16_t)(sign | 0x7c00u);   /* rounds to >= 65520: inf */
    if (ax < 0x38800000u) {
        /* below the smallest normal (2^-14): subnormal, units of 2^-24 */
        float a;
        memcpy(&a, &ax, 4);
        return (uint16_t)(sign | (uint16_t)lrintf(a * 16777216.0f));   /* exact scaling, rint is even */
    }
    uint32_t r = ax + 0xfffu + ((ax >> 13) & 1u);
    return (uint16_t)(sign | (uint16_t)((r - 0x38000000u) >> 13));
}

/* ------------------------------------------------------------------ reader */

/* A name as shown in a message: at most 80 bytes, control characters as '?'. */
static const char *shown(const char *s, char *buf, size_t len) {
    size_t n = strlen(s), lim = len - 4 < 80 ? len - 4 : 80, j = 0;
    for (size_t i = 0; i < n && j < lim; i++) buf[j++] = (unsigned char)s[i] < 0x20 ? '?' : s[i];
    if (n > lim) { memcpy(buf + j, "...", 3); j += 3; }
    buf[j] = 0;
    return buf;
}

static int cmp_name(const void *a, const void *b) {
    return strcmp(((const st_tensor_t *)a)->name, ((const st_tensor_t *)b)->name);
}

static int cmp_begin(const void *a, const void *b) {
    const st_tensor_t *x = *(const st_tensor_t *const *)a, *y = *(const st_tensor_t *const *)b;
    if (x->begin != y->begin) return x->begin < y->begin ? -1 : 1;
    return x->end < y->end ? -1 : x->end > y->end ? 1 : 0;
}

static void free_tensors(st_file_t *f) {
    for (int i = 0; i < f->ntensors; i++) free(f->tensors[i].name);
    free(f->tensors);
    f->tensors = NULL;
    f->ntensors = 0;
}

void st_close(st_file_t *f) {
    free_tensors(f);
    if (f->map) munmap(f->map, f->map_bytes);
    f->map = NULL;
    f->map_bytes = 0;
    f->data = NULL;
    f->data_bytes = 0;
}

/* Parse one tensor entry into t. `name` is its key. */
static int parse_entry(st_file_t *f, json_doc_t *j, const char *name, yaml_node_t *v, st_tensor_t *t, char *err,
                       size_t errlen) {
    char nb[96];
    const char *P = f->path, *N = shown(name, nb, sizeof nb);
    if (!json_is_object(v))
        return asp_errf(err, errlen, "%s: tensor '%s': expected an object {\"dtype\", \"shape\", \"data_offsets\"}, "
                        "got %s; the header is damaged", P, N, json_kind(v));
    yaml_node_t *dt = NULL, *sh = NULL, *off = NULL;
    for (size_t i = 0; i < json_size(v); i++) {
        yaml_node_t *val;
        const char *key = json_member(j, v, i, &val);
        yaml_node_t **slot = !key ? NULL : !strcmp(key, "dtype") ? &dt : !strcmp(key, "shape") ? &sh
                             : !strcmp(key, "data_offsets") ? &off : NULL;
        char kb[96];
        if (!slot)
            return asp_errf(err, errlen, "%s: tensor '%s': unknown key '%s' (expected dtype, shape, data_offsets); "
                            "the header is damaged or not safetensors", P, N, key ? shown(key, kb, sizeof kb) : "?");
        if (*slot)
            return asp_errf(err, errlen, "%s: tensor '%s': key '%s' given twice; the header is damaged", P, N, key);
        *slot = val;
    }
    const char *missing = !dt ? "dtype" : !sh ? "shape" : !off ? "data_offsets" : NULL;
    if (missing)
        return asp_errf(err, errlen, "%s: tensor '%s': missing key '%s'; the header is damaged", P, N, missing);
    /* dtype */
    char db[96];
    if (!json_is_string(dt))
        return asp_errf(err, errlen, "%s: tensor '%s': dtype must be a string such as \"BF16\", got %s", P, N,
                        json_kind(dt));
    const char *ds = json_text(dt);
    int found = -1;
    for (int i = 0; i < 3; i++)
        if (!strcmp(ds, dtype_names[i])) found = i;
    if (found < 0) {
        for (size_t i = 0; i < sizeof other_dtypes / sizeof other_dtypes[0]; i++)
            if (!strcmp(ds, other_dtypes[i]))
                return asp_errf(err, errlen, "%s: tensor '%s': dtype %s is not supported (BF16, F16 and F32 are); "
                                "convert the checkpoint, e.g. to bfloat16 with transformers", P, N, ds);
        return asp_errf(err, errlen, "%s: tensor '%s': unknown dtype '%s' (supported: BF16, F16, F32); the header "
                        "is damaged", P, N, shown(ds, db, sizeof db));
    }
    t->dtype = (st_dtype_t)found;
    /* shape */
    if (!json_is_array(sh))
        return asp_errf(err, errlen, "%s: tensor '%s': shape must be an array of sizes, got %s", P, N, json_kind(sh));
    if (json_size(sh) > ST_MAX_DIMS)
        return asp_errf(err, errlen, "%s: tensor '%s': shape has %zu dimensions, more than the %d supported", P, N,
                        json_size(sh), ST_MAX_DIMS);
    t->ndim = (int)json_size(sh);
    size_t numel = 1;
    for (int d = 0; d < t->ndim; d++) {
        yaml_node_t *e = json_at(j, sh, (size_t)d);
        int64_t x;
        if (json_int(e, &x))
            return asp_errf(err, errlen, "%s: tensor '%s': shape[%d] must be an integer, got '%s'", P, N, d,
                            json_is_string(e) || e->type == YAML_SCALAR_NODE ? shown(json_text(e), db, sizeof db)
                                                                            : json_kind(e));
        if (x < 0)
            return asp_errf(err, errlen, "%s: tensor '%s': shape[%d] is %lld, negative; the header is damaged", P,
                            N, d, (long long)x);
        t->shape[d] = x;
        if (__builtin_mul_overflow(numel, (size_t)x, &numel))
            return asp_errf(err, errlen, "%s: tensor '%s': shape has more elements than fit in memory; the header "
                            "is damaged", P, N);
    }
    t->numel = numel;
    /* data_offsets */
    if (!json_is_array(off) || json_size(off) != 2)
        return asp_errf(err, errlen, "%s: tensor '%s': data_offsets must be an array [begin, end], got %s%s", P, N,
                        json_kind(off), json_is_array(off) ? " of another length" : "");
    uint64_t be[2];
    for (int i = 0; i < 2; i++) {
        yaml_node_t *e = json_at(j, off, (size_t)i);
        if (json_uint(e, &be[i]))
            return asp_errf(err, errlen, "%s: tensor '%s': data_offsets[%d] must be a non-negative integer, got "
                            "'%s'", P, N, i, e->type == YAML_SCALAR_NODE ? shown(json_text(e), db, sizeof db)
                                                                        : json_kind(e));
    }
    if (be[1] < be[0])
        return asp_errf(err, errlen, "%s: tensor '%s': data_offsets [%llu, %llu] end before they begin; the "
                        "header is damaged", P, N, (unsigned long long)be[0], (unsigned long long)be[1]);
    if (be[1] > f->data_bytes)
        return asp_errf(err, errlen, "%s: tensor '%s': data_offsets [%llu, %llu] reach past the end of the data "
                        "(%zu bytes); the file is truncated or damaged", P, N, (unsigned long long)be[0],
                        (unsigned long long)be[1], f->data_bytes);
    size_t bytes;
    if (__builtin_mul_overflow(numel, st_dtype_size(t->dtype), &bytes) || bytes != be[1] - be[0])
        return asp_errf(err, errlen, "%s: tensor '%s': data_offsets [%llu, %llu] hold %llu bytes, but shape and "
                        "dtype %s need %zu elements x %zu bytes; the header is damaged", P, N,
                        (unsigned long long)be[0], (unsigned long long)be[1],
                        (unsigned long long)(be[1] - be[0]), ds, numel, st_dtype_size(t->dtype));
    t->begin = (size_t)be[0];
    t->end = (size_t)be[1];
    return 0;
}

static int parse_header(st_file_t *f, const char *text, size_t len, char *err, size_t errlen) {
    char what[1100];
    snprintf(what, sizeof what, "%s: header", f->path);
    json_doc_t j;
    if (json_parse(&j, text, len, what, err, errlen)) return -1;
    int rc = -1;
    if (!json_is_object(j.root)) {
        asp_errf(err, errlen, "%s: the header is %s, expected a JSON object of tensors; the file is damaged or not "
                 "safetensors", f->path, json_kind(j.root));
        goto out;
    }
    size_t n = json_size(j.root);
    f->tensors = calloc(n ? n : 1, sizeof(st_tensor_t));
    if (!f->tensors) {
        asp_errf(err, errlen, "%s: out of memory for %zu tensor entries", f->path, n);
        goto out;
    }
    int have_meta = 0;
    for (size_t i = 0; i < n; i++) {
        yaml_node_t *v;
        const char *name = json_member(&j, j.root, i, &v);
        if (!name || !json_is_string(yaml_document_get_node(&j.doc, j.root->data.mapping.pairs.start[i].key))) {
            asp_errf(err, errlen, "%s: the header has a key that is not a string; the file is damaged", f->path);
            goto out;
        }
        if (!strcmp(name, "__metadata__")) {
            /* string -> string, as the format defines; its content is not used */
            if (have_meta++) {
                asp_errf(err, errlen, "%s: \"__metadata__\" given twice; the header is damaged", f->path);
                goto out;
            }
            if (!json_is_object(v)) {
                asp_errf(err, errlen, "%s: \"__metadata__\" must be an object of strings, got %s", f->path,
                         json_kind(v));
                goto out;
            }
            for (size_t k = 0; k < json_size(v); k++) {
                yaml_node_t *mv;
                const char *mk = json_member(&j, v, k, &mv);
                if (!mk || !json_is_string(mv)) {
                    char kb[96];
                    asp_errf(err, errlen, "%s: \"__metadata__\" entry '%s' must be a string, got %s", f->path,
                             mk ? shown(mk, kb, sizeof kb) : "?", json_kind(mv));
                    goto out;
                }
            }
            continue;
        }
        if (!*name) {
            asp_errf(err, errlen, "%s: a tensor has an empty name; the header is damaged", f->path);
            goto out;
        }
        st_tensor_t *t = &f->tensors[f->ntensors];
        if (parse_entry(f, &j, name, v, t, err, errlen)) goto out;
        t->name = strdup(name);
        if (!t->name) {
            asp_errf(err, errlen, "%s: out of memory", f->path);
            goto out;
        }
        f->ntensors++;
    }
    qsort(f->tensors, (size_t)f->ntensors, sizeof(st_tensor_t), cmp_name);
    for (int i = 1; i < f->ntensors; i++)
        if (!strcmp(f->tensors[i].name, f->tensors[i - 1].name)) {
            char nb[96];
            asp_errf(err, errlen, "%s: tensor '%s' appears twice in the header; the file is damaged", f->path,
                     shown(f->tensors[i].name, nb, sizeof nb));
            goto out;
        }
    /* The tensors tile the data region exactly, as the reference reader
     * requires: sorted by offsets, each begins where the one before ends
     * (no overlap, no gap) and the last ends at the end of the file (empty
     * tensors take no bytes but must sit on a boundary too). */
    st_tensor_t **by = malloc((size_t)(f->ntensors ? f->ntensors : 1) * sizeof *by);
    if (!by) {
        asp_errf(err, errlen, "%s: out of memory", f->path);
        goto out;
    }
    for (int i = 0; i < f->ntensors; i++) by[i] = &f->tensors[i];
    qsort(by, (size_t)f->ntensors, sizeof *by, cmp_begin);
    size_t at = 0;
    for (int i = 0; i < f->ntensors; i++) {
        char a[96], b[96];
        if (by[i]->begin < at) {
            asp_errf(err, errlen, "%s: tensors '%s' [%zu, %zu) and '%s' [%zu, %zu) overlap in the data; the header "
                     "is damaged", f->path, shown(by[i - 1]->name, a, sizeof a), by[i - 1]->begin, by[i - 1]->end,
                     shown(by[i]->name, b, sizeof b), by[i]->begin, by[i]->end);
            free(by);
            goto out;
        }
        if (by[i]->begin > at) {
            asp_errf(err, errlen, "%s: tensor '%s' begins at data byte %zu, but the data before it ends at %zu: a "
                     "gap of %zu bytes that no tensor owns; the header is damaged", f->path,
                     shown(by[i]->name, b, sizeof b), by[i]->begin, at, by[i]->begin - at);
            free(by);
            goto out;
        }
        at = by[i]->end;
    }
    if (at != f->data_bytes) {
        asp_errf(err, errlen, "%s: %zu bytes after the last tensor's data (the tensors end at data byte %zu of %zu); "
                 "the file is damaged or was appended to", f->path, f->data_bytes - at, at, f->data_bytes);
        free(by);
        goto out;
    }
    free(by);
    rc = 0;
out:
    json_free(&j);
    return rc;
}

int st_open(st_file_t *f, const char *path, char *err, size_t errlen) {
    memset(f, 0, sizeof *f);
    if (strlen(path) >= sizeof f->path)
        return asp_errf(err, errlen, "%.200s...: path too long; use a shorter one", path);
    strcpy(f->path, path);
    void *map;
    size_t size;
    if (asp_map_file(path, "safetensors file", "check the path", &map, &size, err, errlen) != 0) return -1;
    if (size < 8) {
        if (map) munmap(map, size);
        return asp_errf(err, errlen, "%s: only %zu bytes, shorter than the 8-byte header length; the file is "
                        "truncated or not safetensors", path, size);
    }
    f->map = map;
    f->map_bytes = size;
    const unsigned char *b = map;
    uint64_t hlen = 0;
    for (int i = 7; i >= 0; i--) hlen = hlen << 8 | b[i];
    if (hlen > ST_MAX_HEADER_BYTES) {
        asp_errf(err, errlen, "%s: header length %llu is above the %llu-byte limit; the file is damaged or not "
                 "safetensors", path, (unsigned long long)hlen, (unsigned long long)ST_MAX_HEADER_BYTES);
        goto fail;
    }
    if (hlen > size - 8) {
        asp_errf(err, errlen, "%s: header length %llu is longer than the rest of the file (%zu bytes); the file is "
                 "truncated or not safetensors", path, (unsigned long long)hlen, size - 8);
        goto fail;
    }
    f->data = b + 8 + hlen;
    f->data_bytes = size - 8 - (size_t)hlen;
    if (parse_header(f, (const char *)b + 8, (size_t)hlen, err, errlen)) goto fail;
    return 0;
fail:
    st_close(f);
    return -1;
}

const st_tensor_t *st_find(const st_file_t *f, const char *name) {
    st_tensor_t key = {.name = (char *)name};
    return f->ntensors ? bsearch(&key, f->tensors, (size_t)f->ntensors, sizeof key, cmp_name) : NULL;
}

void st_read_f32(const st_file_t *f, const st_tensor_t *t, float *out) {
    /* The data may sit at any alignment: assemble little-endian values bytewise. */
    const unsigned char *p = f->data + t->begin;
    switch (t->dtype) {
    case ST_F32:
        for (size_t i = 0; i < t->numel; i++, p += 4) {
            uint32_t u = (uint32_t)p[0] | (uint32_t)p[1] << 8 | (uint32_t)p[2] << 16 | (uint32_t)p[3] << 24;
            memcpy(&out[i], &u, 4);
        }
        break;
    case ST_BF16:
        for (size_t i = 0; i < t->numel; i++, p += 2) out[i] = st_bf16_to_f32((uint16_t)(p[0] | p[1] << 8));
        break;
    case ST_F16:
        for (size_t i = 0; i < t->numel; i++, p += 2) out[i] = st_f16_to_f32((uint16_t)(p[0] | p[1] << 8));
        break;
    }
}

/* ------------------------------------------------------------------ sharded checkpoints */

void st_checkpoint_close(st_checkpoint_t *c) {
    for (int i = 0; i < c->nfiles; i++) st_close(&c->files[i]);
    free(c->files);
    c->files = NULL;
    c->nfiles = 0;
}

const st_tensor_t *st_checkpoint_find(const st_checkpoint_t *c, const char *name, const st_file_t **file) {
    for (int i = 0; i < c->nfiles; i++) {
        const st_tensor_t *t = st_find(&c->files[i], name);
        if (t) {
            if (file) *file = &c->files[i];
            return t;
        }
    }
    return NULL;
}

static int join(char *out, size_t len, const char *dir, const char *name) {
    int n = snprintf(out, len, "%s/%s", dir, name);
    return n < 0 || (size_t)n >= len ? -1 : 0;
}

/* The shard files named by the index, each once, then every weight_map entry
 * checked against the file it names. */
static int open_index(st_checkpoint_t *c, const char *dir, const char *ipath, char *err, size_t errlen) {
    json_doc_t j;
    if (json_parse_file(&j, ipath, INDEX_MAX_BYTES, 0, err, errlen)) return -1;
    int rc = -1;
    char nb[96], fb[96];
    yaml_node_t *wm = json_get(&j, j.root, "weight_map");
    if (!json_is_object(j.root) || !json_is_object(wm)) {
        asp_errf(err, errlen, "%s: expected an object with a \"weight_map\" object (tensor name -> file), got %s; "
                 "the index is damaged", ipath, json_is_object(j.root) ? json_kind(wm) : json_kind(j.root));
        goto out;
    }
    size_t n = json_size(wm);
    if (n == 0) {
        asp_errf(err, errlen, "%s: \"weight_map\" is empty; the index names no tensors", ipath);
        goto out;
    }
    c->files = calloc(n, sizeof(st_file_t));
    if (!c->files) {
        asp_errf(err, errlen, "%s: out of memory", ipath);
        goto out;
    }
    for (size_t i = 0; i < n; i++) {
        yaml_node_t *v;
        const char *name = json_member(&j, wm, i, &v);
        if (!name || !json_is_string(v) || !*json_text(v)) {
            asp_errf(err, errlen, "%s: weight_map entry '%s' must name a file as a string, got %s", ipath,
                     name ? shown(name, nb, sizeof nb) : "?", json_kind(v));
            goto out;
        }
        const char *file = json_text(v);
        if (strchr(file, '/')) {
            asp_errf(err, errlen, "%s: weight_map entry '%s' names '%s', outside the checkpoint folder; shard "
                     "files must sit next to the index", ipath, shown(name, nb, sizeof nb), shown(file, fb, sizeof fb));
            goto out;
        }
        char path[2048];
        if (join(path, sizeof path, dir, file)) {
            asp_errf(err, errlen, "%s: path of shard '%s' too long", ipath, shown(file, fb, sizeof fb));
            goto out;
        }
        int have = 0;
        for (int k = 0; k < c->nfiles && !have; k++) have = !strcmp(c->files[k].path, path);
        if (!have) {
            if (st_open(&c->files[c->nfiles], path, err, errlen)) goto out;
            c->nfiles++;
        }
    }
    /* every mapped name is in its file; no tensor is in two files; none unmapped */
    size_t total = 0;
    for (size_t i = 0; i < n; i++) {
        yaml_node_t *v;
        const char *name = json_member(&j, wm, i, &v);
        for (size_t k = 0; k < i; k++) {
            yaml_node_t *v2;
            if (!strcmp(json_member(&j, wm, k, &v2), name)) {
                asp_errf(err, errlen, "%s: weight_map names tensor '%s' twice; the index is damaged", ipath,
                         shown(name, nb, sizeof nb));
                goto out;
            }
        }
        char path[2048];
        join(path, sizeof path, dir, json_text(v));
        for (int k = 0; k < c->nfiles; k++) {
            int here = st_find(&c->files[k], name) != NULL, named = !strcmp(c->files[k].path, path);
            if (named && !here) {
                asp_errf(err, errlen, "%s: tensor '%s' is mapped to %s, but that file does not contain it; the "
                         "checkpoint is incomplete or the index is stale", ipath, shown(name, nb, sizeof nb), path);
                goto out;
            }
        }
    }
    for (int k = 0; k < c->nfiles; k++) {
        total += (size_t)c->files[k].ntensors;
        for (int t = 0; t < c->files[k].ntensors; t++)
            for (int k2 = 0; k2 < k; k2++)
                if (st_find(&c->files[k2], c->files[k].tensors[t].name)) {
                    asp_errf(err, errlen, "%s: tensor '%s' is in both %s and %s; the checkpoint is damaged", ipath,
                             shown(c->files[k].tensors[t].name, nb, sizeof nb), c->files[k2].path, c->files[k].path);
                    goto out;
                }
    }
    if (total != n) {
        /* files hold more tensors than the map names: find one to name */
        for (int k = 0; k < c->nfiles; k++)
            for (int t = 0; t < c->files[k].ntensors; t++)
                if (!json_get(&j, wm, c->files[k].tensors[t].name)) {
                    asp_errf(err, errlen, "%s: tensor '%s' of %s is not in weight_map; the index is stale", ipath,
                             shown(c->files[k].tensors[t].name, nb, sizeof nb), c->files[k].path);
                    goto out;
                }
    }
    rc = 0;
out:
    json_free(&j);
    if (rc) st_checkpoint_close(c);
    return rc;
}

int st_checkpoint_open(st_checkpoint_t *c, const char *dir, char *err, size_t errlen) {
    memset(c, 0, sizeof *c);
    char path[2048];
    /* transformers' precedence (modeling_utils, _get_resolved_checkpoint_files):
     * a regular model.safetensors first (os.path.isfile: links followed),
     * the sharded index only without one. Loading the index where
     * transformers loads the single file would train other weights. */
    char single[2048];
    struct stat sb;
    if (join(path, sizeof path, dir, INDEX_NAME) || join(single, sizeof single, dir, SINGLE_NAME))
        return asp_errf(err, errlen, "%.200s: path too long", dir);
    int have_single = stat(single, &sb) == 0 && S_ISREG(sb.st_mode);
    if (!have_single && access(path, F_OK) == 0) return open_index(c, dir, path, err, errlen);
    if (have_single && access(path, F_OK) == 0)
        asp_warn("%s holds both %s and %s: loading %s, as transformers does (the index and its shards are ignored)",
                 dir, SINGLE_NAME, INDEX_NAME, SINGLE_NAME);
    snprintf(path, sizeof path, "%s", single);
    if (!have_single && access(single, F_OK) != 0)   /* something else in its place: st_open names it */
        return asp_errf(err, errlen, "%s: neither %s nor %s is there; give a Hugging Face model folder with "
                        "safetensors weights", dir, SINGLE_NAME, INDEX_NAME);
    c->files = calloc(1, sizeof(st_file_t));
    if (!c->files) return asp_errf(err, errlen, "%s: out of memory", dir);
    if (st_open(&c->files[0], path, err, errlen)) {
        free(c->files);
        c->files = NULL;
        return -1;
    }
    c->nfiles = 1;
    return 0;
}

/* ------------------------------------------------------------------ writer */

static int put_json_string(FILE *f, const char *s) {
    fputc('"', f);
    for (; *s; s++) {
        unsigned char ch = (unsigned char)*s;
        if (ch == '"' || ch == '\\') fprintf(f, "\\%c", ch);
        else if (ch < 0x20) fprintf(f, "\\u%04x", ch);
        else fputc(ch, f);
    }
    return fputc('"', f) == EOF ? -1 : 0;
}

static int write_header(FILE *f, const st_write_tensor_t *t, int n, st_dtype_t dtype, size_t *bytes_out,
                        size_t *data_bytes) {
    char *buf = NULL;
    size_t len = 0;
    FILE *m = open_memstream(&buf, &len);
    if (!m) return -1;
    fprintf(m, "{\"__metadata__\":{\"format\":\"pt\"}");
    size_t off = 0;
    for (int i = 0; i < n; i++) {
        size_t numel = 1;
        for (int d = 0; d < t[i].ndim; d++) numel *= (size_t)t[i].shape[d];
        size_t bytes = numel * st_dtype_size(dtype);
        fputc(',', m);
        put_json_string(m, t[i].name);
        fprintf(m, ":{\"dtype\":\"%s\",\"shape\":[", st_dtype_name(dtype));
        for (int d = 0; d < t[i].ndim; d++) fprintf(m, "%s%lld", d ? "," : "", (long long)t[i].shape[d]);
        fprintf(m, "],\"data_offsets\":[%zu,%zu]}", off, off + bytes);
        off += bytes;
    }
    fputc('}', m);
    if (fclose(m)) { free(buf); return -1; }
    /* pad with spaces so the data starts 8-byte aligned, as the reference writer does */
    size_t padded = asp_align_up(len, 8);
    unsigned char lenb[8];
    for (int i = 0; i < 8; i++) lenb[i] = (unsigned char)((uint64_t)padded >> (8 * i));
    int ok = fwrite(lenb, 1, 8, f) == 8 && fwrite(buf, 1, len, f) == len;
    for (size_t i = len; i < padded && ok; i++) ok = fputc(' ', f) != EOF;
    free(buf);
    *bytes_out = 8 + padded;
    *data_bytes = off;
    return ok ? 0 : -1;
}

/* `numel` fp32 values converted to the file's dtype, little-endian. */
static int write_values(FILE *f, const float *x, size_t numel, st_dtype_t dtype) {
    enum { CHUNK = 1 << 16 };
    unsigned char buf[CHUNK * 4];
    for (size_t s = 0; s < numel; s += CHUNK) {
        size_t k = numel - s < CHUNK ? numel - s : CHUNK, bytes = k * st_dtype_size(dtype);
        for (size_t e = 0; e < k; e++) {
            if (dtype == ST_F32) {
                uint32_t u;
                memcpy(&u, &x[s + e], 4);
                for (int b = 0; b < 4; b++) buf[4 * e + (size_t)b] = (unsigned char)(u >> (8 * b));
            } else {
                uint16_t h = dtype == ST_BF16 ? st_f32_to_bf16(x[s + e]) : st_f32_to_f16(x[s + e]);
                buf[2 * e] = (unsigned char)h;
                buf[2 * e + 1] = (unsigned char)(h >> 8);
            }
        }
        if (fwrite(buf, 1, bytes, f) != bytes) return -1;
    }
    return 0;
}

static size_t tensor_numel(const st_write_tensor_t *t) {
    size_t numel = 1;
    for (int d = 0; d < t->ndim; d++) numel *= (size_t)t->shape[d];
    return numel;
}

typedef struct {
    const st_write_tensor_t *t;
    int n;
    st_dtype_t dtype;
} st_out_t;

static int check_write_tensors(const char *path, const st_write_tensor_t *t, int n, st_dtype_t dtype, char *err,
                               size_t errlen) {
    if ((unsigned)dtype > ST_BF16) return asp_errf(err, errlen, "%s: invalid dtype to write", path);
    for (int i = 0; i < n; i++) {
        if (t[i].ndim < 0 || t[i].ndim > ST_MAX_DIMS || !t[i].name || !*t[i].name)
            return asp_errf(err, errlen, "%s: tensor %d has no name or %d dimensions; cannot write it", path, i,
                            t[i].ndim);
        for (int d = 0; d < t[i].ndim; d++)
            if (t[i].shape[d] < 0)
                return asp_errf(err, errlen, "%s: tensor '%s' has a negative size; cannot write it", path, t[i].name);
    }
    return 0;
}

/* The values of st_write_from, as the producer emits them. */
typedef struct {
    st_out_t o;
    int (*produce)(void *ctx, st_emit_fn emit, void *ectx);
    void *ctx;
    FILE *f;
    size_t want, got;
    int failed;
    const char *path;
} st_stream_t;

static int emit_values(void *ectx, const float *vals, size_t n) {
    st_stream_t *s = ectx;
    if (s->failed) return -1;
    if (n > s->want - s->got || write_values(s->f, vals, n, s->o.dtype)) {
        s->failed = 1;
        return -1;
    }
    s->got += n;
    return 0;
}

static int fill_from(FILE *f, void *ctx, char *err, size_t errlen) {
    st_stream_t *s = ctx;
    size_t hbytes, dbytes;
    s->f = f;
    if (write_header(f, s->o.t, s->o.n, s->o.dtype, &hbytes, &dbytes)) s->failed = 1;
    for (int i = 0; i < s->o.n; i++) s->want += tensor_numel(&s->o.t[i]);
    /* the producer runs even after a failed header: it may be a collective */
    int rc = s->produce(s->ctx, emit_values, s);
    if (s->failed) return -1;   /* errno says why */
    if (rc) return asp_errf(err, errlen, "%s: the values to write could not be produced", s->path);
    if (s->got != s->want)
        return asp_errf(err, errlen, "%s: %zu values were produced for the %zu the tensors hold", s->path, s->got,
                        s->want);
    return 0;
}

int st_write_from(const char *path, const st_write_tensor_t *t, int n, st_dtype_t dtype,
                  int (*produce)(void *ctx, st_emit_fn emit, void *ectx), void *ctx, char *err, size_t errlen) {
    if (check_write_tensors(path, t, n, dtype, err, errlen)) return -1;
    st_stream_t s = {{t, n, dtype}, produce, ctx, NULL, 0, 0, 0, path};
    return asp_write_atomic(path, fill_from, &s, err, errlen);
}

/* st_write's values: each tensor's own data, in order */
static int produce_tensors(void *ctx, st_emit_fn emit, void *ectx) {
    const st_out_t *o = ctx;
    for (int i = 0; i < o->n; i++)
        if (emit(ectx, o->t[i].data, tensor_numel(&o->t[i]))) break;
    return 0;
}

int st_write(const char *path, const st_write_tensor_t *t, int n, st_dtype_t dtype, char *err, size_t errlen) {
    const st_out_t o = {t, n, dtype};
    return st_write_from(path, t, n, dtype, produce_tensors, (void *)&o, err, errlen);
}
