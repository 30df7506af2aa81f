/* Run configuration: YAML (libyaml document API) -> validated structs.
 *
 * One table (cfg_keys, config_keys.c) describes every key: where it lives in
 * config_t, its type and bounds, and its help text. Parsing, --set
 * overrides, validation, --help and the YAML writer here all walk that
 * table, so a key added there is parsed, checked, documented and recorded in
 * one place. */
#include "config.h"
#include "config_keys.h"
#include "util.h"

#include <errno.h>
#include <math.h>
#include <stdarg.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>
#include <yaml.h>

/* Limits on a config file: far above any real one, low enough that a damaged
 * or hostile file is refused at once. */
#define CONFIG_MAX_DEPTH 16
#define CONFIG_MAX_FILE_BYTES (1 << 20)

/* ------------------------------------------------------------------ small helpers */

static void *field(config_t *cfg, const cfg_key_t *k) { return (char *)cfg + k->off; }
static const void *cfield(const config_t *cfg, const cfg_key_t *k) { return (const char *)cfg + k->off; }

static int64_t get_int(const config_t *cfg, const cfg_key_t *k) {
    if (k->size == sizeof(int)) return *(const int *)cfield(cfg, k);
    return *(const int64_t *)cfield(cfg, k);
}

static void set_int(config_t *cfg, const cfg_key_t *k, int64_t v) {
    if (k->size == sizeof(int)) *(int *)field(cfg, k) = (int)v;
    else *(int64_t *)field(cfg, k) = v;
}

static int key_index(const char *section, const char *name) {
    for (int i = 0; i < cfg_nkeys; i++)
        if (!strcmp(cfg_keys[i].section, section) && !strcmp(cfg_keys[i].name, name)) return i;
    return -1;
}

static int section_index(const char *name) {
    for (int i = 0; i < cfg_nsections; i++)
        if (!strcmp(cfg_sections[i].name, name)) return i;
    return -1;
}

static int is_rope_sub(const cfg_key_t *k) { return !strncmp(k->name, "rope_scaling.", 13); }

/* A value as shown in a message: at most 60 characters, control characters as '?'. */
static const char *shown(const char *s, char *buf, size_t len) {
    size_t n = strlen(s), lim = len - 4 < 60 ? len - 4 : 60, j = 0;
    for (size_t i = 0; i < n && j < lim; i++) buf[j++] = (unsigned char)s[i] < 0x20 ? '?' : s[i];
    if (n > lim) { memcpy(buf + j, "...", 3); j += 3; }
    buf[j] = 0;
    return buf;
}

static size_t edit_distance(const char *a, const char *b) {
    size_t la = strlen(a), lb = strlen(b);
    if (la > 64 || lb > 64) return (size_t)-1;
    size_t row[65];
    for (size_t j = 0; j <= lb; j++) row[j] = j;
    for (size_t i = 1; i <= la; i++) {
        size_t diag = row[0];
        row[0] = i;
        for (size_t j = 1; j <= lb; j++) {
            size_t up = row[j];
            size_t best = diag + (a[i - 1] != b[j - 1]);
            if (up + 1 < best) best = up + 1;
            if (row[j - 1] + 1 < best) best = row[j - 1] + 1;
            row[j] = best;
            diag = up;
        }
    }
    return row[lb];
}

/* "; did you mean 'x'?" when a candidate is close, else the list of candidates. */
static void suggest(const char *given, const char *const *cands, int n, char *out, size_t len) {
    const char *best = NULL;
    size_t bestd = (size_t)-1;
    for (int i = 0; i < n; i++) {
        size_t d = edit_distance(given, cands[i]);
        if (d < bestd) { bestd = d; best = cands[i]; }
    }
    size_t lim = strlen(given) / 3;
    if (lim < 2) lim = 2;
    if (best && bestd <= lim) {
        snprintf(out, len, "; did you mean '%s'?", best);
        return;
    }
    size_t at = (size_t)snprintf(out, len, "; expected one of: ");
    for (int i = 0; i < n && at < len; i++)
        at += (size_t)snprintf(out + at, len - at, "%s%s", i ? ", " : "", cands[i]);
}

/* Candidates for a key: the keys of `section`, either the top level ones or
 * the rope_scaling sub-keys (without their prefix). */
static int key_candidates(const char *section, int rope_sub, const char **out) {
    int n = 0;
    for (int i = 0; i < cfg_nkeys; i++) {
        const cfg_key_t *k = &cfg_keys[i];
        if (strcmp(k->section, section) || is_rope_sub(k) != rope_sub) continue;
        out[n++] = rope_sub ? k->name + 13 : k->name;
    }
    return n;
}

static void unknown_key_text(const char *section, const char *name, char *out, size_t len) {
    const char *cands[CFG_MAX_KEYS] = {0};
    int rope_sub = !strncmp(name, "rope_scaling.", 13);
    int n = key_candidates(section, rope_sub, cands);
    char hint[640], buf[80];
    suggest(rope_sub ? name + 13 : name, cands, n, hint, sizeof hint);
    /* a key written under the wrong section: say where it belongs */
    for (int i = 0; i < cfg_nkeys && !rope_sub; i++)
        if (!strcmp(cfg_keys[i].name, name) && strcmp(cfg_keys[i].section, section)) {
            snprintf(hint, sizeof hint, "; it is a key of section %s, move it there", cfg_keys[i].section);
            break;
        }
    snprintf(out, len, "unknown key '%s' in section %s%s", shown(name, buf, sizeof buf), section, hint);
}

static void unknown_section_text(const char *name, char *out, size_t len) {
    const char *cands[CFG_MAX_KEYS] = {0};   /* sections: fewer than keys */
    for (int i = 0; i < cfg_nsections; i++) cands[i] = cfg_sections[i].name;
    char hint[512], buf[80];
    suggest(name, cands, cfg_nsections, hint, sizeof hint);
    snprintf(out, len, "unknown section '%s'%s", shown(name, buf, sizeof buf), hint);
}

/* ------------------------------------------------------------------ scalar parsing */

static int is_null_text(const char *s) {
    return !*s || !strcmp(s, "~") || !strcmp(s, "null") || !strcmp(s, "Null") || !strcmp(s, "NULL");
}

/* 0 ok, -1 not a decimal integer, -2 out of 64-bit range */
static int parse_int(const char *s, int64_t *out) {
    const char *p = s;
    if (*p == '+' || *p == '-') p++;
    if (!*p) return -1;
    for (const char *q = p; *q; q++)
        if (*q < '0' || *q > '9') return -1;
    errno = 0;
    long long v = strtoll(s, NULL, 10);
    if (errno == ERANGE) return -2;
    *out = (int64_t)v;
    return 0;
}

static int parse_u64(const char *s, uint64_t *out) {
    const char *p = s;
    if (*p == '+') p++;
    if (!*p) return -1;
    for (const char *q = p; *q; q++)
        if (*q < '0' || *q > '9') return -1;
    errno = 0;
    unsigned long long v = strtoull(p, NULL, 10);
    if (errno == ERANGE) return -2;
    *out = (uint64_t)v;
    return 0;
}

/* Decimal numbers only (3e-4, 1, 500000.0): strtod alone would also take
 * "nan", "inf" and hex floats. */
static int parse_float(const char *s, double *out) {
    int digits = 0;
    for (const char *q = s; *q; q++) {
        if (*q >= '0' && *q <= '9') digits++;
        else if (!strchr("+-.eE", *q)) return -1;
    }
    if (!digits) return -1;
    char *end;
    errno = 0;
    double v = strtod(s, &end);
    if (*end || end == s || !isfinite(v) || errno == ERANGE) return -1;
    *out = v;
    return 0;
}

static int parse_bool(const char *s, int *out) {
    if (!strcmp(s, "true") || !strcmp(s, "True") || !strcmp(s, "TRUE")) { *out = 1; return 0; }
    if (!strcmp(s, "false") || !strcmp(s, "False") || !strcmp(s, "FALSE")) { *out = 0; return 0; }
    return -1;
}

static void fmt_double(char *buf, size_t len, double v) {
    if (v == floor(v) && fabs(v) < 1e15) { snprintf(buf, len, "%.1f", v); return; }
    for (int p = 1; p <= 17; p++) {
        snprintf(buf, len, "%.*g", p, v);
        if (strtod(buf, NULL) == v) return;
    }
}

/* What a key accepts, for "expected <what>". over_hi: the value broke the upper bound. */
static const char *expect_text(const cfg_key_t *k, int over_hi, char *buf, size_t len) {
    if (k->expect) return k->expect;
    char a[40], b[40];
    switch (k->type) {
    case KT_INT:
    case KT_SP: {
        const char *tail = k->type == KT_SP ? " or auto" : "";
        const char *kind = k->even ? "even integer" : "integer";
        if (over_hi)
            snprintf(buf, len, "an %s no larger than %lld%s", kind, (long long)k->ihi, tail);
        else if (k->ilo == 1)
            snprintf(buf, len, "a positive %s%s", kind, tail);
        else if (k->ilo == 0)
            snprintf(buf, len, "a non-negative %s%s", kind, tail);
        else
            snprintf(buf, len, "an %s >= %lld%s", kind, (long long)k->ilo, tail);
        return buf;
    }
    case KT_SEED: return "a non-negative integer below 2^64";
    case KT_FLOAT:
        fmt_double(a, sizeof a, k->flo);
        fmt_double(b, sizeof b, k->fhi);
        if (isfinite(k->fhi))
            snprintf(buf, len, "a number in %c%s, %s%c", k->flo_open ? '(' : '[', a, b, k->fhi_open ? ')' : ']');
        else if (k->flo == 0)
            snprintf(buf, len, "a %s number", k->flo_open ? "positive" : "non-negative");
        else
            snprintf(buf, len, "a number %s %s", k->flo_open ? ">" : ">=", a);
        return buf;
    case KT_BOOL: return "true or false";
    case KT_TRI: return "true, false or auto";
    case KT_AUTO:
        snprintf(buf, len, "an integer from %lld to %lld, or auto", (long long)k->ilo, (long long)k->ihi);
        return buf;
    case KT_STR: return k->ilo ? "a non-empty string" : "a string";
    case KT_ARCH: return "llama (the supported model families)";
    case KT_SAC: return "one of auto, save_all, full";
    case KT_DEVICE: return "one of auto, cpu, cuda";
    case KT_ROPE: return "a mapping (rope_type: llama3, factor, low_freq_factor, high_freq_factor, "
                         "original_max_position_embeddings) or null";
    case KT_ROPE_TYPE: return "llama3 (the only supported rope_type)";
    }
    return "a valid value";
}

static int int_in_range(const cfg_key_t *k, int64_t v, int *over_hi) {
    *over_hi = v > k->ihi;
    return v >= k->ilo && v <= k->ihi && (!k->even || v % 2 == 0);
}

static int float_in_range(const cfg_key_t *k, double v) {
    if (!isfinite(v)) return 0;
    if (k->flo_open ? !(v > k->flo) : !(v >= k->flo)) return 0;
    if (k->fhi_open ? !(v < k->fhi) : !(v <= k->fhi)) return 0;
    return 1;
}

/* Parse `text` for key k and store it. On failure writes "expected X, got 'text'"
 * into why. quoted: the YAML scalar was quoted (a string, never a number). */
static int set_value(config_t *cfg, const cfg_key_t *k, const char *text, int quoted,
                     char *why, size_t whylen) {
    char ebuf[160], vbuf[80];
    int over = 0;
    const char *q = quoted ? "\"" : "";
    shown(text, vbuf, sizeof vbuf);
#define FAIL(over_hi) \
    do { snprintf(why, whylen, "expected %s, got '%s%s%s'", expect_text(k, over_hi, ebuf, sizeof ebuf), q, vbuf, q); \
         return -1; } while (0)
    switch (k->type) {
    case KT_INT:
    case KT_SP: {
        int64_t v;
        if (k->type == KT_SP && !quoted && !strcmp(text, "auto")) { set_int(cfg, k, 0); return 0; }
        if (quoted) FAIL(0);
        int rc = parse_int(text, &v);
        if (rc == -1) FAIL(0);
        if (rc == -2) FAIL(text[0] != '-');
        if (!int_in_range(k, v, &over)) FAIL(over);
        set_int(cfg, k, v);
        return 0;
    }
    case KT_AUTO: {
        int64_t v;
        if (quoted) FAIL(0);
        if (!strcmp(text, "auto")) { *(int *)field(cfg, k) = -1; return 0; }
        if (parse_int(text, &v) || v < k->ilo || v > k->ihi) FAIL(0);
        *(int *)field(cfg, k) = (int)v;
        return 0;
    }
    case KT_TRI: {
        int v;
        if (quoted) FAIL(0);
        if (!strcmp(text, "auto")) { *(int *)field(cfg, k) = -1; return 0; }
        if (parse_bool(text, &v)) FAIL(0);
        *(int *)field(cfg, k) = v;
        return 0;
    }
    case KT_SEED: {
        uint64_t v;
        if (quoted || parse_u64(text, &v)) FAIL(0);
        *(uint64_t *)field(cfg, k) = v;
        return 0;
    }
    case KT_FLOAT: {
        double v;
        if (quoted || parse_float(text, &v) || !float_in_range(k, v)) FAIL(0);
        *(double *)field(cfg, k) = v;
        return 0;
    }
    case KT_BOOL: {
        int v;
        if (quoted || parse_bool(text, &v)) FAIL(0);
        *(int *)field(cfg, k) = v;
        return 0;
    }
    case KT_STR: {
        if (!quoted && is_null_text(text)) text = "";
        if (k->ilo && !*text) FAIL(0);
        if (strlen(text) >= k->size) {
            snprintf(why, whylen, "expected a string shorter than %zu bytes, got '%s'", k->size, vbuf);
            return -1;
        }
        strcpy((char *)field(cfg, k), text);
        return 0;
    }
    case KT_ARCH:
        for (size_t i = 0; i < sizeof cfg_arch_names / sizeof cfg_arch_names[0]; i++)
            if (!strcmp(text, cfg_arch_names[i])) { strcpy((char *)field(cfg, k), text); return 0; }
        FAIL(0);
    case KT_SAC:
        for (int i = 0; i < 3; i++)
            if (!strcmp(text, cfg_sac_names[i])) { *(sac_policy_t *)field(cfg, k) = (sac_policy_t)i; return 0; }
        FAIL(0);
    case KT_DEVICE:
        for (int i = 0; i < 3; i++)
            if (!strcmp(text, cfg_device_names[i])) { *(device_kind_t *)field(cfg, k) = (device_kind_t)i; return 0; }
        FAIL(0);
    case KT_ROPE:
        if (quoted || !is_null_text(text)) FAIL(0);
        cfg->model.rope_scaling.enabled = 0;
        return 0;
    case KT_ROPE_TYPE:
        if (strcmp(text, "llama3")) FAIL(0);
        cfg->model.rope_scaling.enabled = 1;
        return 0;
    }
#undef FAIL
    return -1;
}

/* ------------------------------------------------------------------ validation */

/* Per-key bounds (for configs built in code) and cross-key rules. *blame is the
 * key the message is about (for a position), or -1. */
static int validate_impl(const config_t *cfg, char *err, size_t errlen, int *blame, int *blame2) {
    char ebuf[160], vbuf[64];
    *blame = *blame2 = -1;   /* blame2: the other key of a rule between two */
    for (int i = 0; i < cfg_nkeys; i++) {
        const cfg_key_t *k = &cfg_keys[i];
        if (is_rope_sub(k) && !cfg->model.rope_scaling.enabled) continue;
        int ok = 1, over = 0;
        switch (k->type) {
        case KT_INT: {
            int64_t v = get_int(cfg, k);
            ok = int_in_range(k, v, &over);
            snprintf(vbuf, sizeof vbuf, "%lld", (long long)v);
            break;
        }
        case KT_SP: {
            int64_t v = get_int(cfg, k);
            ok = v == 0 || int_in_range(k, v, &over);
            snprintf(vbuf, sizeof vbuf, "%lld", (long long)v);
            break;
        }
        case KT_FLOAT: {
            double v = *(const double *)cfield(cfg, k);
            ok = float_in_range(k, v);
            fmt_double(vbuf, sizeof vbuf, v);
            break;
        }
        case KT_BOOL:
        case KT_TRI: {
            int v = *(const int *)cfield(cfg, k);
            ok = v == 0 || v == 1 || (k->type == KT_TRI && v == -1);
            snprintf(vbuf, sizeof vbuf, "%d", v);
            break;
        }
        case KT_AUTO: {
            int v = *(const int *)cfield(cfg, k);
            ok = v == -1 || (v >= k->ilo && v <= k->ihi);
            snprintf(vbuf, sizeof vbuf, "%d", v);
            break;
        }
        case KT_STR:
        case KT_ARCH: {
            const char *s = (const char *)cfield(cfg, k);
            ok = memchr(s, 0, k->size) != NULL;
            if (ok && k->type == KT_STR) ok = !k->ilo || *s;
            if (ok && k->type == KT_ARCH) ok = !strcmp(s, "llama");
            shown(ok || memchr(s, 0, k->size) ? s : "(unterminated)", vbuf, sizeof vbuf);
            break;
        }
        case KT_SAC:
        case KT_DEVICE: {
            unsigned v = k->type == KT_SAC ? (unsigned)cfg->checkpointing.policy : (unsigned)cfg->train.device;
            ok = v < 3;
            snprintf(vbuf, sizeof vbuf, "%u", v);
            break;
        }
        default:
            break;
        }
        if (!ok) {
            *blame = i;
            return asp_errf(err, errlen, "%s.%s: expected %s, got '%s'", k->section, k->name,
                            expect_text(k, over, ebuf, sizeof ebuf), vbuf);
        }
    }
    const model_config_t *m = &cfg->model;
    if (m->num_attention_heads % m->num_key_value_heads) {
        *blame = key_index("model", "num_key_value_heads");
        *blame2 = key_index("model", "num_attention_heads");
        return asp_errf(err, errlen,
                        "model.num_attention_heads (%lld) must be divisible by model.num_key_value_heads "
                        "(%lld); choose a number of key/value heads that divides the query heads",
                        (long long)m->num_attention_heads, (long long)m->num_key_value_heads);
    }
    const rope_scaling_t *r = &m->rope_scaling;
    if (r->enabled && !(r->low_freq_factor < r->high_freq_factor)) {
        char a[40], b[40];
        fmt_double(a, sizeof a, r->low_freq_factor);
        fmt_double(b, sizeof b, r->high_freq_factor);
        *blame = key_index("model", "rope_scaling.high_freq_factor");
        *blame2 = key_index("model", "rope_scaling.low_freq_factor");
        return asp_errf(err, errlen,
                        "model.rope_scaling.low_freq_factor (%s) must be smaller than "
                        "model.rope_scaling.high_freq_factor (%s); Llama 3 uses 1 and 4", a, b);
    }
    if (strcmp(cfg->data.documents, "none") && strcmp(cfg->data.documents, "eos")) {
        *blame = key_index("data", "documents");
        return asp_errf(err, errlen, "data.documents: expected none or eos, got '%.32s'", cfg->data.documents);
    }
    if (cfg->optimizer.offload_params > 0 &&
        ((cfg->parallel.zero_stage >= 0 && cfg->parallel.zero_stage != 3) || cfg->optimizer.offload == 0)) {
        *blame = key_index("optimizer", "offload_params");
        if (cfg->optimizer.offload == 0) {
            *blame2 = key_index("optimizer", "offload");
            return asp_errf(err, errlen, "optimizer.offload_params: true keeps the weight shard beside the host "
                            "optimizer, but optimizer.offload is false; set optimizer.offload true or auto, or "
                            "offload_params false or auto");
        }
        *blame2 = key_index("parallel", "zero_stage");
        return asp_errf(err, errlen, "optimizer.offload_params: true keeps ZeRO-3's weight shard on the host, but "
                        "parallel.zero_stage is %d; set zero_stage 3 or auto, or offload_params false or auto",
                        cfg->parallel.zero_stage);
    }
    if (cfg->train.min_lr > cfg->train.lr) {
        char a[40], b[40];
        fmt_double(a, sizeof a, cfg->train.min_lr);
        fmt_double(b, sizeof b, cfg->train.lr);
        *blame = key_index("train", "min_lr");
        *blame2 = key_index("train", "lr");
        return asp_errf(err, errlen, "train.min_lr (%s) must not exceed train.lr (%s); lower min_lr", a, b);
    }
    return 0;
}

int config_validate(const config_t *cfg, char *err, size_t errlen) {
    int blame, blame2;
    return validate_impl(cfg, err, errlen, &blame, &blame2);
}

/* ------------------------------------------------------------------ loading */

typedef enum { ORIGIN_DEFAULT = 0, ORIGIN_FILE, ORIGIN_SET } origin_kind_t;

typedef struct {
    origin_kind_t kind;
    int line, col;          /* ORIGIN_FILE: position of the value */
    const char *set;        /* ORIGIN_SET: the override as given */
} origin_t;

typedef struct {
    const char *file;
    yaml_document_t *doc;
    config_t *cfg;
    origin_t org[CFG_MAX_KEYS];
    char *err;
    size_t errlen;
} loader_t;

/* "FILE:LINE:COL: " + message */
static int at_err(loader_t *L, yaml_mark_t mark, const char *fmt, ...) ASP_PRINTF(3, 4);
static int at_err(loader_t *L, yaml_mark_t mark, const char *fmt, ...) {
    char msg[1536];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(msg, sizeof msg, fmt, ap);
    va_end(ap);
    return asp_errf(L->err, L->errlen, "%s:%zu:%zu: %s", L->file, mark.line + 1, mark.column + 1, msg);
}

/* Prefix for a message about key i: where its value came from. */
static void origin_prefix(const loader_t *L, int i, char *out, size_t len) {
    const origin_t *o = i >= 0 ? &L->org[i] : NULL;
    if (o && o->kind == ORIGIN_FILE) snprintf(out, len, "%s:%d:%d: ", L->file, o->line, o->col);
    else if (o && o->kind == ORIGIN_SET) snprintf(out, len, "--set %s: ", o->set);
    else if (L->file) snprintf(out, len, "%s: ", L->file);
    else out[0] = 0;
}

static const char *node_kind(const yaml_node_t *n) {
    return n->type == YAML_MAPPING_NODE ? "a mapping" : n->type == YAML_SEQUENCE_NODE ? "a sequence" : "a scalar";
}

static const char *scalar_text(const yaml_node_t *n) { return (const char *)n->data.scalar.value; }

static int scalar_quoted(const yaml_node_t *n) {
    return n->data.scalar.style != YAML_PLAIN_SCALAR_STYLE && n->data.scalar.style != YAML_ANY_SCALAR_STYLE;
}

/* Key node of a mapping pair; errors unless it is a plain name. Checks for an
 * earlier pair with the same name. `where` names the mapping ("model", ...). */
static const char *pair_key(loader_t *L, const yaml_node_t *map, const yaml_node_pair_t *pair,
                            const char *where) {
    yaml_node_t *kn = yaml_document_get_node(L->doc, pair->key);
    if (kn->type != YAML_SCALAR_NODE) {
        at_err(L, kn->start_mark, "%s: expected a key name, got %s", where, node_kind(kn));
        return NULL;
    }
    const char *name = scalar_text(kn);
    for (const yaml_node_pair_t *p = map->data.mapping.pairs.start; p < pair; p++) {
        yaml_node_t *pk = yaml_document_get_node(L->doc, p->key);
        if (pk->type == YAML_SCALAR_NODE && !strcmp(scalar_text(pk), name)) {
            char buf[80];
            at_err(L, kn->start_mark, "%s%s%s: duplicate key (first given at line %zu, column %zu); "
                   "remove one of them", where, *where ? "." : "", shown(name, buf, sizeof buf),
                   pk->start_mark.line + 1, pk->start_mark.column + 1);
            return NULL;
        }
    }
    return name;
}

static int load_scalar(loader_t *L, int ki, const yaml_node_t *vn) {
    const cfg_key_t *k = &cfg_keys[ki];
    char why[512], ebuf[160];
    if (vn->type != YAML_SCALAR_NODE)
        return at_err(L, vn->start_mark, "%s.%s: expected %s, got %s", k->section, k->name,
                      expect_text(k, 0, ebuf, sizeof ebuf), node_kind(vn));
    if (set_value(L->cfg, k, scalar_text(vn), scalar_quoted(vn), why, sizeof why))
        return at_err(L, vn->start_mark, "%s.%s: %s", k->section, k->name, why);
    L->org[ki] = (origin_t){ORIGIN_FILE, (int)vn->start_mark.line + 1, (int)vn->start_mark.column + 1, NULL};
    return 0;
}

static int load_rope(loader_t *L, int rope_ki, const yaml_node_t *map) {
    rope_scaling_t *r = &L->cfg->model.rope_scaling;
    *r = cfg_rope_llama3_defaults;
    L->org[rope_ki] = (origin_t){ORIGIN_FILE, (int)map->start_mark.line + 1, (int)map->start_mark.column + 1, NULL};
    int have_type = 0;
    for (yaml_node_pair_t *p = map->data.mapping.pairs.start; p < map->data.mapping.pairs.top; p++) {
        const char *name = pair_key(L, map, p, "model.rope_scaling");
        if (!name) return -1;
        char full[128];
        int ki = -1;
        if (!strchr(name, '.') && strlen(name) < 100) {
            snprintf(full, sizeof full, "rope_scaling.%s", name);
            ki = key_index("model", full);
        }
        yaml_node_t *kn = yaml_document_get_node(L->doc, p->key);
        if (ki < 0) {
            char msg[1024];
            snprintf(full, sizeof full, "rope_scaling.%.100s", name);
            unknown_key_text("model", full, msg, sizeof msg);
            return at_err(L, kn->start_mark, "model.rope_scaling: %s", msg);
        }
        if (load_scalar(L, ki, yaml_document_get_node(L->doc, p->value))) return -1;
        if (cfg_keys[ki].type == KT_ROPE_TYPE) have_type = 1;
    }
    if (!have_type)
        return at_err(L, map->start_mark, "model.rope_scaling: missing key rope_type; add "
                      "'rope_type: llama3' (the only supported scaling) or write 'rope_scaling: null'");
    r->enabled = 1;
    return 0;
}

static int load_section(loader_t *L, const char *section, const yaml_node_t *map) {
    for (yaml_node_pair_t *p = map->data.mapping.pairs.start; p < map->data.mapping.pairs.top; p++) {
        const char *name = pair_key(L, map, p, section);
        if (!name) return -1;
        yaml_node_t *kn = yaml_document_get_node(L->doc, p->key);
        yaml_node_t *vn = yaml_document_get_node(L->doc, p->value);
        int ki = strchr(name, '.') ? -1 : key_index(section, name);
        if (ki < 0) {
            char msg[1024];
            unknown_key_text(section, name, msg, sizeof msg);
            return at_err(L, kn->start_mark, "%s.%s: %s", section, name, msg);
        }
        if (cfg_keys[ki].type == KT_ROPE && vn->type == YAML_MAPPING_NODE) {
            if (load_rope(L, ki, vn)) return -1;
        } else if (load_scalar(L, ki, vn)) {
            return -1;
        }
    }
    return 0;
}

static int load_root(loader_t *L, yaml_node_t *root) {
    char buf[80];
    if (root->type != YAML_MAPPING_NODE) {
        if (root->type == YAML_SCALAR_NODE)
            return at_err(L, root->start_mark, "expected a mapping of sections (model:, train:, data:, "
                          "parallel:, optimizer:, checkpointing:, io:) at the top level, got '%s'",
                          shown(scalar_text(root), buf, sizeof buf));
        return at_err(L, root->start_mark, "expected a mapping of sections (model:, train:, data:, "
                      "parallel:, optimizer:, checkpointing:, io:) at the top level, got %s", node_kind(root));
    }
    for (yaml_node_pair_t *p = root->data.mapping.pairs.start; p < root->data.mapping.pairs.top; p++) {
        const char *name = pair_key(L, root, p, "");
        if (!name) return -1;
        yaml_node_t *kn = yaml_document_get_node(L->doc, p->key);
        yaml_node_t *vn = yaml_document_get_node(L->doc, p->value);
        if (section_index(name) < 0) {
            char msg[1024];
            unknown_section_text(name, msg, sizeof msg);
            return at_err(L, kn->start_mark, "%s", msg);
        }
        if (vn->type == YAML_MAPPING_NODE) {
            if (load_section(L, name, vn)) return -1;
        } else if (vn->type == YAML_SCALAR_NODE && !scalar_quoted(vn) && is_null_text(scalar_text(vn))) {
            continue;   /* "model:" with nothing under it: keep the defaults */
        } else if (vn->type == YAML_SCALAR_NODE) {
            return at_err(L, vn->start_mark, "%s: expected a mapping of keys (indented 'key: value' lines "
                          "under '%s:'), got '%s'", name, name, shown(scalar_text(vn), buf, sizeof buf));
        } else {
            return at_err(L, vn->start_mark, "%s: expected a mapping of keys (indented 'key: value' lines "
                          "under '%s:'), got %s", name, name, node_kind(vn));
        }
    }
    return 0;
}

static int parser_err(loader_t *L, const yaml_parser_t *ps) {
    const char *problem = ps->problem ? ps->problem : "unknown problem";
    yaml_mark_t m = ps->problem_mark;
    if (ps->error == YAML_READER_ERROR)
        return asp_errf(L->err, L->errlen, "%s: malformed YAML: %s at byte %zu; save the file as UTF-8 text",
                        L->file, problem, ps->problem_offset);
    if (ps->context)
        return at_err(L, m, "malformed YAML: %s %s (line %zu, column %zu); fix the syntax there",
                      problem, ps->context, ps->context_mark.line + 1, ps->context_mark.column + 1);
    return at_err(L, m, "malformed YAML: %s; fix the syntax there", problem);
}

/* Streaming checks before the document is built: nesting depth (libyaml
 * takes deep nesting in quadratic time, so it is refused as it is met), tags
 * (ignored by the loader, so "!!str 32" would read as the number 32),
 * anchors and aliases (a config has no use for them), and NUL characters in
 * a scalar (C strings would end there). */
static int prescan(loader_t *L, const unsigned char *text, size_t len) {
    yaml_parser_t ps;
    if (!yaml_parser_initialize(&ps))
        return asp_errf(L->err, L->errlen, "%s: cannot initialise the YAML parser (out of memory)", L->file);
    yaml_parser_set_input_string(&ps, text, len);
    int depth = 0, rc = 0;
    for (;;) {
        yaml_event_t ev;
        if (!yaml_parser_parse(&ps, &ev)) {
            rc = parser_err(L, &ps);
            break;
        }
        const yaml_char_t *tag = NULL, *anchor = NULL;
        int alias = 0;
        char buf[80];
        switch (ev.type) {
        case YAML_SEQUENCE_START_EVENT:
        case YAML_MAPPING_START_EVENT:
            depth++;
            tag = ev.type == YAML_SEQUENCE_START_EVENT ? ev.data.sequence_start.tag : ev.data.mapping_start.tag;
            anchor = ev.type == YAML_SEQUENCE_START_EVENT ? ev.data.sequence_start.anchor : ev.data.mapping_start.anchor;
            break;
        case YAML_SEQUENCE_END_EVENT:
        case YAML_MAPPING_END_EVENT: depth--; break;
        case YAML_SCALAR_EVENT:
            tag = ev.data.scalar.tag;
            anchor = ev.data.scalar.anchor;
            if (strlen((const char *)ev.data.scalar.value) != ev.data.scalar.length)
                rc = at_err(L, ev.start_mark, "a value holds a NUL character (\\0); it would cut the string there: "
                            "remove it");
            break;
        case YAML_ALIAS_EVENT: alias = 1; break;
        default: break;
        }
        if (!rc && depth > CONFIG_MAX_DEPTH)
            rc = at_err(L, ev.start_mark, "nested deeper than %d levels; a config has sections of keys (two levels, "
                        "three under rope_scaling)", CONFIG_MAX_DEPTH);
        else if (!rc && tag)
            rc = at_err(L, ev.start_mark, "YAML tag '%s' is not read here; write the value without it (quote it to "
                        "make it a string)", shown((const char *)tag, buf, sizeof buf));
        else if (!rc && (anchor || alias))
            rc = at_err(L, ev.start_mark, "YAML anchors and aliases (&name, *name) are not read here; write the "
                        "value out");
        int end = ev.type == YAML_STREAM_END_EVENT;
        yaml_event_delete(&ev);
        if (rc || end) break;
    }
    yaml_parser_delete(&ps);
    return rc;
}

static int load_file(loader_t *L) {
    int fd = asp_open_regular(L->file, "the config file", "check the path", L->err, L->errlen);
    if (fd < 0) return -1;
    unsigned char *text = malloc(CONFIG_MAX_FILE_BYTES + 1);
    if (!text) {
        close(fd);
        return asp_errf(L->err, L->errlen, "%s: out of memory reading the config file", L->file);
    }
    size_t len = 0;
    for (;;) {
        ssize_t got = read(fd, text + len, CONFIG_MAX_FILE_BYTES + 1 - len);
        if (got < 0 && errno == EINTR) continue;
        if (got < 0) {
            int e = errno;
            close(fd);
            free(text);
            return asp_errf(L->err, L->errlen, "%s: cannot read the config file: %s", L->file, strerror(e));
        }
        if (got == 0 || (len += (size_t)got) > CONFIG_MAX_FILE_BYTES) break;
    }
    close(fd);
    if (len > CONFIG_MAX_FILE_BYTES) {
        free(text);
        return asp_errf(L->err, L->errlen, "%s: larger than %d KiB, too large for a config file; is it the right "
                        "file?", L->file, CONFIG_MAX_FILE_BYTES >> 10);
    }
    if (prescan(L, text, len)) {
        free(text);
        return -1;
    }
    yaml_parser_t ps;
    yaml_document_t doc, extra;
    int rc = -1;
    if (!yaml_parser_initialize(&ps)) {
        free(text);
        return asp_errf(L->err, L->errlen, "%s: cannot initialise the YAML parser (out of memory)", L->file);
    }
    yaml_parser_set_input_string(&ps, text, len);
    if (!yaml_parser_load(&ps, &doc)) {
        parser_err(L, &ps);
        goto out_parser;
    }
    L->doc = &doc;
    yaml_node_t *root = yaml_document_get_root_node(&doc);
    if (!root) {
        asp_errf(L->err, L->errlen, "%s: the config file is empty; expected a mapping of sections "
                 "(model:, train:, data:, parallel:, optimizer:, checkpointing:, io:)", L->file);
        goto out_doc;
    }
    if (load_root(L, root)) goto out_doc;
    if (!yaml_parser_load(&ps, &extra)) {
        parser_err(L, &ps);
        goto out_doc;
    }
    yaml_node_t *root2 = yaml_document_get_root_node(&extra);
    if (root2)
        at_err(L, extra.start_mark, "expected one YAML document, found a second one; "
               "remove the '---' separator and merge the documents");
    else
        rc = 0;
    yaml_document_delete(&extra);
out_doc:
    yaml_document_delete(&doc);
    L->doc = NULL;
out_parser:
    yaml_parser_delete(&ps);
    free(text);
    return rc;
}

/* Paths that a config file gives relative to its own folder: given by --set
 * they are typed at the shell, so they are made absolute against the current
 * directory. */
static int is_file_relative_path(const cfg_key_t *k) {
    return (!strcmp(k->section, "data") && strstr(k->name, "path")) ||
           (!strcmp(k->section, "model") && !strcmp(k->name, "from_pretrained"));
}

/* One "section.key=value" override. */
static int apply_set(loader_t *L, const char *arg) {
    char buf[96];
    const char *eq = strchr(arg, '=');
    const char *dot = strchr(arg, '.');
    if (!eq || !dot || dot > eq || dot == arg || dot + 1 == eq)
        return asp_errf(L->err, L->errlen, "--set %s: expected section.key=value (e.g. --set train.lr=3e-4)",
                        shown(arg, buf, sizeof buf));
    char section[64], name[128], value[CFG_PATH_MAX + 8];
    size_t slen = (size_t)(dot - arg), nlen = (size_t)(eq - dot - 1), vlen = strlen(eq + 1);
    if (slen >= sizeof section || nlen >= sizeof name || vlen >= sizeof value)
        return asp_errf(L->err, L->errlen, "--set %s: too long; expected section.key=value",
                        shown(arg, buf, sizeof buf));
    memcpy(section, arg, slen); section[slen] = 0;
    memcpy(name, dot + 1, nlen); name[nlen] = 0;
    memcpy(value, eq + 1, vlen + 1);
    if (section_index(section) < 0) {
        char msg[1024];
        unknown_section_text(section, msg, sizeof msg);
        return asp_errf(L->err, L->errlen, "--set %s: %s", shown(arg, buf, sizeof buf), msg);
    }
    int ki = key_index(section, name);
    if (ki < 0) {
        char msg[1024];
        unknown_key_text(section, name, msg, sizeof msg);
        return asp_errf(L->err, L->errlen, "--set %s: %s", shown(arg, buf, sizeof buf), msg);
    }
    /* The value reads like a YAML scalar: surrounding quotes make it a string. */
    int quoted = 0;
    if (vlen >= 2 && (value[0] == '"' || value[0] == '\'') && value[vlen - 1] == value[0]) {
        memmove(value, value + 1, vlen - 2);
        value[vlen - 2] = 0;
        quoted = 1;
    }
    const cfg_key_t *k = &cfg_keys[ki];
    rope_scaling_t *r = &L->cfg->model.rope_scaling;
    if (is_rope_sub(k) && !r->enabled) *r = cfg_rope_llama3_defaults;   /* switching scaling on */
    char why[512];
    if (is_file_relative_path(k) && value[0] && value[0] != '/') {
        char cwd[CFG_PATH_MAX], abs[2 * CFG_PATH_MAX + 8];
        if (!getcwd(cwd, sizeof cwd) || snprintf(abs, sizeof abs, "%s/%s", cwd, value) >= (int)sizeof value)
            return asp_errf(L->err, L->errlen, "--set %s: the path is too long once made absolute; use a shorter one",
                            shown(arg, buf, sizeof buf));
        strcpy(value, abs);
    }
    if (set_value(L->cfg, k, value, quoted, why, sizeof why))
        return asp_errf(L->err, L->errlen, "--set %s: %s", shown(arg, buf, sizeof buf), why);
    L->org[ki] = (origin_t){ORIGIN_SET, 0, 0, arg};
    return 0;
}

int config_load(config_t *cfg, const char *path, char *const *sets, int nsets, char *err, size_t errlen) {
    config_defaults(cfg);
    loader_t L = {.file = path, .cfg = cfg, .err = err, .errlen = errlen};
    if (path) {
        if (!*path)
            return asp_errf(err, errlen, "the config file name is empty; give the path of a YAML file "
                            "such as configs/tiny.yaml");
        if (strlen(path) >= sizeof cfg->source)
            return asp_errf(err, errlen, "%.200s...: config path longer than %zu bytes; use a shorter path",
                            path, sizeof cfg->source - 1);
        strcpy(cfg->source, path);
        const char *slash = strrchr(path, '/');
        if (!slash) strcpy(cfg->base_dir, ".");
        else if (slash == path) strcpy(cfg->base_dir, "/");
        else { memcpy(cfg->base_dir, path, (size_t)(slash - path)); cfg->base_dir[slash - path] = 0; }
        if (load_file(&L)) return -1;
    }
    for (int i = 0; i < nsets; i++)
        if (apply_set(&L, sets[i])) return -1;

    /* Hugging Face defaults that depend on other keys. */
    model_config_t *m = &cfg->model;
    int hd = key_index("model", "head_dim"), hs = key_index("model", "hidden_size");
    int nh = key_index("model", "num_attention_heads"), kv = key_index("model", "num_key_value_heads");
    if (L.org[hd].kind == ORIGIN_DEFAULT) {
        if (m->hidden_size % m->num_attention_heads) {
            char pre[CFG_PATH_MAX + 64];
            origin_prefix(&L, L.org[hs].kind != ORIGIN_DEFAULT ? hs : nh, pre, sizeof pre);
            return asp_errf(err, errlen, "%smodel.hidden_size (%lld) must be divisible by "
                            "model.num_attention_heads (%lld) when model.head_dim is not given; "
                            "change one of them or set model.head_dim", pre,
                            (long long)m->hidden_size, (long long)m->num_attention_heads);
        }
        m->head_dim = m->hidden_size / m->num_attention_heads;
        if (m->head_dim % 2) {
            char pre[CFG_PATH_MAX + 64];
            origin_prefix(&L, L.org[hs].kind != ORIGIN_DEFAULT ? hs : nh, pre, sizeof pre);
            return asp_errf(err, errlen, "%smodel.head_dim (hidden_size %lld / num_attention_heads %lld = "
                            "%lld) must be even, since RoPE rotates pairs; change the sizes or set "
                            "model.head_dim", pre, (long long)m->hidden_size,
                            (long long)m->num_attention_heads, (long long)m->head_dim);
        }
    }
    if (L.org[kv].kind == ORIGIN_DEFAULT && L.org[nh].kind != ORIGIN_DEFAULT)
        m->num_key_value_heads = m->num_attention_heads;
    cfg->vocab_size_given = L.org[key_index("model", "vocab_size")].kind != ORIGIN_DEFAULT;

    for (int i = 0; i < cfg_nkeys; i++) {
        cfg->origin[i].line = L.org[i].kind == ORIGIN_FILE ? L.org[i].line : 0;
        cfg->origin[i].col = L.org[i].col;
        cfg->origin[i].set = L.org[i].kind == ORIGIN_SET ? L.org[i].set : NULL;
    }
    char msg[1024];
    int blame, blame2;
    if (validate_impl(cfg, msg, sizeof msg, &blame, &blame2)) {
        char pre[CFG_PATH_MAX + 64];
        /* a rule between two keys is blamed on the one a --set changed */
        if (blame2 >= 0 && L.org[blame2].kind == ORIGIN_SET && (blame < 0 || L.org[blame].kind != ORIGIN_SET))
            blame = blame2;
        origin_prefix(&L, blame, pre, sizeof pre);
        return asp_errf(err, errlen, "%s%s", pre, msg);
    }
    return 0;
}

const char *config_where(const config_t *cfg, const char *section, const char *key, char *buf, size_t len) {
    int i = key_index(section, key);
    if (i >= 0 && cfg->origin[i].set) snprintf(buf, len, "--set %s: ", cfg->origin[i].set);
    else if (i >= 0 && cfg->origin[i].line > 0)
        snprintf(buf, len, "%s:%d:%d: ", cfg->source, cfg->origin[i].line, cfg->origin[i].col);
    else if (cfg->source[0]) snprintf(buf, len, "%s: ", cfg->source);
    else buf[0] = 0;
    return buf;
}

int config_documents_eos(const config_t *cfg) { return !strcmp(cfg->data.documents, "eos"); }

/* ------------------------------------------------------------------ paths */

int config_resolve_path(const config_t *cfg, const char *path, char *out, size_t outlen) {
    int n;
    if (path[0] == '/' || path[0] == 0 || !cfg->base_dir[0] || !strcmp(cfg->base_dir, "."))
        n = snprintf(out, outlen, "%s", path);
    else if (!strcmp(cfg->base_dir, "/"))
        n = snprintf(out, outlen, "/%s", path);
    else
        n = snprintf(out, outlen, "%s/%s", cfg->base_dir, path);
    return n < 0 || (size_t)n >= outlen ? -1 : 0;
}

/* ------------------------------------------------------------------ help and output */

/* The value of key k as YAML text. */
static void value_text(const config_t *cfg, const cfg_key_t *k, char *buf, size_t len) {
    switch (k->type) {
    case KT_INT: snprintf(buf, len, "%lld", (long long)get_int(cfg, k)); break;
    case KT_SP:
        if (get_int(cfg, k) == 0) snprintf(buf, len, "auto");
        else snprintf(buf, len, "%lld", (long long)get_int(cfg, k));
        break;
    case KT_SEED: snprintf(buf, len, "%llu", (unsigned long long)*(const uint64_t *)cfield(cfg, k)); break;
    case KT_FLOAT: fmt_double(buf, len, *(const double *)cfield(cfg, k)); break;
    case KT_BOOL: snprintf(buf, len, "%s", *(const int *)cfield(cfg, k) ? "true" : "false"); break;
    case KT_TRI: {
        int v = *(const int *)cfield(cfg, k);
        snprintf(buf, len, "%s", v < 0 ? "auto" : v ? "true" : "false");
        break;
    }
    case KT_AUTO: {
        int v = *(const int *)cfield(cfg, k);
        if (v < 0) snprintf(buf, len, "auto");
        else snprintf(buf, len, "%d", v);
        break;
    }
    case KT_STR:
    case KT_ARCH: {
        /* double-quoted YAML string */
        const char *s = (const char *)cfield(cfg, k);
        size_t j = 0;
        if (len < 8) { buf[0] = 0; break; }
        buf[j++] = '"';
        for (; *s && j + 6 < len; s++) {
            unsigned char c = (unsigned char)*s;
            if (c == '"' || c == '\\') { buf[j++] = '\\'; buf[j++] = (char)c; }
            else if (c < 0x20) j += (size_t)snprintf(buf + j, len - j, "\\x%02x", c);
            else buf[j++] = (char)c;
        }
        buf[j++] = '"';
        buf[j] = 0;
        break;
    }
    case KT_SAC: snprintf(buf, len, "%s", sac_policy_name(cfg->checkpointing.policy)); break;
    case KT_DEVICE: snprintf(buf, len, "%s", device_kind_name(cfg->train.device)); break;
    case KT_ROPE: snprintf(buf, len, "%s", cfg->model.rope_scaling.enabled ? "(mapping)" : "null"); break;
    case KT_ROPE_TYPE: snprintf(buf, len, "llama3"); break;
    }
}

static const char *type_text(const cfg_key_t *k, char *buf, size_t len) {
    switch (k->type) {
    case KT_INT:
        if (k->ihi == 1 && k->ilo == 0) return "integer 0 or 1";
        if (k->ilo == 1) snprintf(buf, len, "positive %sinteger", k->even ? "even " : "");
        else snprintf(buf, len, "integer >= %lld", (long long)k->ilo);
        return buf;
    case KT_SP: return "positive integer or auto";
    case KT_SEED: return "non-negative integer";
    case KT_FLOAT:
        if (isfinite(k->fhi)) return "number in [0, 1)";
        snprintf(buf, len, "number %s %g", k->flo_open ? ">" : ">=", k->flo);
        return buf;
    case KT_BOOL: return "true | false";
    case KT_TRI: return "true | false | auto";
    case KT_AUTO:
        snprintf(buf, len, "%lld..%lld or auto", (long long)k->ilo, (long long)k->ihi);
        return buf;
    case KT_STR: return "string";
    case KT_ARCH: return "llama";
    case KT_SAC: return "auto | save_all | full";
    case KT_DEVICE: return "auto | cpu | cuda";
    case KT_ROPE: return "mapping or null";
    case KT_ROPE_TYPE: return "llama3";
    }
    return "";
}

void config_print_help(FILE *out) {
    config_t def;
    config_defaults(&def);
    fprintf(out, "Config keys (YAML sections; override any with --set section.key=value,\n"
                 "e.g. --set train.lr=3e-4 or --set model.rope_scaling.factor=8):\n");
    for (int s = 0; s < cfg_nsections; s++) {
        fprintf(out, "\n%s: %s\n", cfg_sections[s].name, cfg_sections[s].help);
        for (int i = 0; i < cfg_nkeys; i++) {
            const cfg_key_t *k = &cfg_keys[i];
            if (strcmp(k->section, cfg_sections[s].name)) continue;
            char tbuf[64], vbuf[256];
            if (k->default_text) snprintf(vbuf, sizeof vbuf, "%s", k->default_text);
            else value_text(&def, k, vbuf, sizeof vbuf);
            fprintf(out, "  %-32s %s; default %s\n      %s\n", k->name, type_text(k, tbuf, sizeof tbuf),
                    vbuf, k->help);
        }
    }
}

/* Absolute form of a path relative to the current directory (no normalisation). */
static int absolute_path(const char *path, char *out, size_t outlen) {
    if (!path[0] || path[0] == '/') return snprintf(out, outlen, "%s", path) < (int)outlen ? 0 : -1;
    char cwd[CFG_PATH_MAX];
    if (!getcwd(cwd, sizeof cwd)) return -1;
    int n = snprintf(out, outlen, "%s/%s", cwd, path);
    return n < 0 || (size_t)n >= outlen ? -1 : 0;
}

static int write_all(FILE *f, const config_t *cfg) {
    /* data.path is recorded as an absolute path: the written file lives in
     * another folder than the config it came from. */
    config_t rec = *cfg;
    char resolved[CFG_PATH_MAX];
    if (config_resolve_path(cfg, cfg->data.path, resolved, sizeof resolved) ||
        absolute_path(resolved, rec.data.path, sizeof rec.data.path))
        return -2;
    fprintf(f, "# Effective configuration of an autosp-train run%s%s%s.\n",
            cfg->source[0] ? " (from " : "", cfg->source, cfg->source[0] ? ")" : "");
    fprintf(f, "# Load it again with: autosp-train THIS_FILE\n");
    for (int s = 0; s < cfg_nsections; s++) {
        fprintf(f, "\n%s:\n", cfg_sections[s].name);
        for (int i = 0; i < cfg_nkeys; i++) {
            const cfg_key_t *k = &cfg_keys[i];
            if (strcmp(k->section, cfg_sections[s].name) || is_rope_sub(k)) continue;
            char vbuf[2 * CFG_PATH_MAX + 16];
            if (k->type == KT_ROPE && rec.model.rope_scaling.enabled) {
                fprintf(f, "  %s:\n", k->name);
                for (int j = 0; j < cfg_nkeys; j++) {
                    if (strcmp(cfg_keys[j].section, k->section) || !is_rope_sub(&cfg_keys[j])) continue;
                    value_text(&rec, &cfg_keys[j], vbuf, sizeof vbuf);
                    fprintf(f, "    %s: %s\n", cfg_keys[j].name + 13, vbuf);
                }
                continue;
            }
            value_text(&rec, k, vbuf, sizeof vbuf);
            fprintf(f, "  %s: %s\n", k->name, vbuf);
        }
    }
    return ferror(f) ? -1 : 0;
}

typedef struct {
    const config_t *cfg;
    const char *path;
} yaml_out_t;

static int fill_yaml(FILE *f, void *ctx, char *err, size_t errlen) {
    const yaml_out_t *o = ctx;
    int rc = write_all(f, o->cfg);
    if (rc == -2)
        return asp_errf(err, errlen, "%s: data.path '%s' does not fit in %d bytes once made absolute; "
                        "use a shorter path", o->path, o->cfg->data.path, CFG_PATH_MAX);
    return rc ? -1 : 0;
}

int config_write_yaml(const config_t *cfg, const char *path, char *err, size_t errlen) {
    /* a reader never sees half a config */
    yaml_out_t o = {cfg, path};
    return asp_write_atomic(path, fill_yaml, &o, err, errlen);
}
