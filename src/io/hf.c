/* Hugging Face Llama folders (see hf.h). */
#include "io/hf.h"

#include <errno.h>
#include <fcntl.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>
#include <yaml.h>

#include "io/json.h"
#include "util.h"

#define CONFIG_MAX_BYTES ((size_t)4 << 20)

/* ------------------------------------------------------------------ config.json */

typedef struct {
    json_doc_t j;
    const char *path;
    char *err;
    size_t errlen;
} cfgread_t;

/* Integer key; absent or null keeps *out (the default). */
static int get_int(cfgread_t *r, const yaml_node_t *obj, const char *key, int64_t lo, int64_t *out,
                   const char *where) {
    yaml_node_t *v = json_get(&r->j, obj, key);
    if (!v || json_is_null(v)) return 0;
    int64_t x;
    if (json_int(v, &x) || x < lo)
        return asp_errf(r->err, r->errlen, "%s: %s%s: expected an integer >= %lld, got %s '%s'; fix config.json",
                        r->path, where, key, (long long)lo, json_kind(v), json_text(v));
    *out = x;
    return 0;
}

static int get_num(cfgread_t *r, const yaml_node_t *obj, const char *key, double *out, const char *where) {
    yaml_node_t *v = json_get(&r->j, obj, key);
    if (!v || json_is_null(v)) return 0;
    double x;
    if (json_number(v, &x) || !(x > 0))
        return asp_errf(r->err, r->errlen, "%s: %s%s: expected a positive number, got %s '%s'; fix config.json",
                        r->path, where, key, json_kind(v), json_text(v));
    *out = x;
    return 0;
}

static int get_bool(cfgread_t *r, const yaml_node_t *obj, const char *key, int *out) {
    yaml_node_t *v = json_get(&r->j, obj, key);
    if (!v || json_is_null(v)) return 0;
    if (json_bool(v, out))
        return asp_errf(r->err, r->errlen, "%s: %s: expected true or false, got %s '%s'; fix config.json", r->path,
                        key, json_kind(v), json_text(v));
    return 0;
}

/* A string key; absent or null gives NULL. */
static int get_str(cfgread_t *r, const yaml_node_t *obj, const char *key, const char **out, const char *where) {
    *out = NULL;
    yaml_node_t *v = json_get(&r->j, obj, key);
    if (!v || json_is_null(v)) return 0;
    if (!json_is_string(v))
        return asp_errf(r->err, r->errlen, "%s: %s%s: expected a string, got %s; fix config.json", r->path, where,
                        key, json_kind(v));
    *out = json_text(v);
    return 0;
}

/* A rope mapping of either layout: rope_type (or the older "type") default or
 * llama3 with its four keys. `theta` receives rope_theta when the mapping has
 * it (rope_parameters does). */
static int read_rope(cfgread_t *r, const yaml_node_t *obj, const char *where, rope_scaling_t *rs, double *theta) {
    if (!json_is_object(obj))
        return asp_errf(r->err, r->errlen, "%s: %s: expected an object or null, got %s; fix config.json", r->path,
                        where, json_kind(obj));
    char w[64];
    snprintf(w, sizeof w, "%s.", where);
    const char *type, *old_type;
    if (get_str(r, obj, "rope_type", &type, w) || get_str(r, obj, "type", &old_type, w)) return -1;
    if (type && old_type && strcmp(type, old_type))
        return asp_errf(r->err, r->errlen, "%s: %s: rope_type '%s' and type '%s' contradict each other; keep one "
                        "(transformers reads rope_type first)", r->path, where, type, old_type);
    if (!type) type = old_type;
    if (get_num(r, obj, "rope_theta", theta, w)) return -1;
    static const char *const need[] = {"factor", "low_freq_factor", "high_freq_factor",
                                       "original_max_position_embeddings"};
    if (!type) {   /* only rope_theta may come without a type */
        for (size_t i = 0; i < json_size(obj); i++) {
            yaml_node_t *v;
            const char *k = json_member(&r->j, obj, i, &v);
            if (k && strcmp(k, "rope_theta"))
                return asp_errf(r->err, r->errlen, "%s: %s has '%s' but no rope_type (or type): which scaling it "
                                "means is unknown; add \"rope_type\": \"llama3\" (or \"default\" and no scaling keys)",
                                r->path, where, k);
        }
    }
    if (!type || !strcmp(type, "default")) {
        for (int i = 0; i < 4; i++)
            if (json_get(&r->j, obj, need[i]))
                return asp_errf(r->err, r->errlen, "%s: %s: rope_type default (no scaling) contradicts its '%s'; "
                                "give rope_type llama3 for llama3 scaling, or remove the scaling keys", r->path,
                                where, need[i]);
        rs->enabled = 0;
        return 0;
    }
    if (strcmp(type, "llama3"))
        return asp_errf(r->err, r->errlen, "%s: %s.rope_type '%s' is not supported; autosp-train implements plain "
                        "RoPE (default) and llama3 scaling only", r->path, where, type);
    rs->enabled = 1;
    for (int i = 0; i < 4; i++)
        if (!json_get(&r->j, obj, need[i]))
            return asp_errf(r->err, r->errlen, "%s: %s: rope_type llama3 needs '%s', which is missing; fix "
                            "config.json", r->path, where, need[i]);
    if (get_num(r, obj, "factor", &rs->factor, w) || get_num(r, obj, "low_freq_factor", &rs->low_freq_factor, w) ||
        get_num(r, obj, "high_freq_factor", &rs->high_freq_factor, w) ||
        get_int(r, obj, "original_max_position_embeddings", 1, &rs->original_max_position_embeddings, w))
        return -1;
    if (!(rs->low_freq_factor < rs->high_freq_factor) || rs->factor < 1)
        return asp_errf(r->err, r->errlen, "%s: %s: needs factor >= 1 and low_freq_factor < high_freq_factor "
                        "(got %g, %g, %g); fix config.json", r->path, where, rs->factor, rs->low_freq_factor,
                        rs->high_freq_factor);
    return 0;
}

static int rope_equal(const rope_scaling_t *a, const rope_scaling_t *b) {
    if (a->enabled != b->enabled) return 0;
    return !a->enabled || (a->factor == b->factor && a->low_freq_factor == b->low_freq_factor &&
                           a->high_freq_factor == b->high_freq_factor &&
                           a->original_max_position_embeddings == b->original_max_position_embeddings);
}

int hf_read_config(const char *dir, model_config_t *out, char *err, size_t errlen) {
    char path[CFG_PATH_MAX + 16];
    if (snprintf(path, sizeof path, "%s/config.json", dir) >= (int)sizeof path)
        return asp_errf(err, errlen, "%.200s: path too long", dir);
    cfgread_t r = {.path = path, .err = err, .errlen = errlen};
    if (json_parse_file(&r.j, path, CONFIG_MAX_BYTES, JSON_LAST_KEY_WINS, err, errlen)) return -1;
    int rc = -1;
    const yaml_node_t *o = r.j.root;
    if (!json_is_object(o)) {
        asp_errf(err, errlen, "%s: expected a JSON object of model settings, got %s", path, json_kind(o));
        goto out;
    }
    const char *s;
    if (get_str(&r, o, "model_type", &s, "")) goto out;
    if (!s || strcmp(s, "llama")) {
        asp_errf(err, errlen, "%s: model_type is %s%s%s; autosp-train loads Llama models (model_type \"llama\") only",
                 path, s ? "\"" : "", s ? s : "missing", s ? "\"" : "");
        goto out;
    }
    if (get_str(&r, o, "hidden_act", &s, "")) goto out;
    if (s && strcmp(s, "silu")) {
        asp_errf(err, errlen, "%s: hidden_act is \"%s\"; the Llama MLP here is SwiGLU, hidden_act must be \"silu\"",
                 path, s);
        goto out;
    }
    static const char *const biases[] = {"attention_bias", "mlp_bias"};
    for (int i = 0; i < 2; i++) {
        int b = 0;
        if (get_bool(&r, o, biases[i], &b)) goto out;
        if (b) {
            asp_errf(err, errlen, "%s: %s is true; autosp-train's Llama has no bias terms, so this checkpoint "
                     "cannot be loaded", path, biases[i]);
            goto out;
        }
    }
    /* transformers' LlamaConfig defaults for absent keys: the folder means
     * what transformers makes of it */
    model_config_t c = *out;
    strcpy(c.architecture, "llama");
    c.vocab_size = 32000;
    c.hidden_size = 4096;
    c.intermediate_size = 11008;
    c.num_hidden_layers = 32;
    c.num_attention_heads = 32;
    c.num_key_value_heads = 0;
    c.head_dim = 0;
    c.max_position_embeddings = 2048;
    c.rms_norm_eps = 1e-6;
    c.rope_theta = 10000.0;
    memset(&c.rope_scaling, 0, sizeof c.rope_scaling);
    c.tie_word_embeddings = 0;
    if (get_int(&r, o, "vocab_size", 2, &c.vocab_size, "") || get_int(&r, o, "hidden_size", 1, &c.hidden_size, "") ||
        get_int(&r, o, "intermediate_size", 1, &c.intermediate_size, "") ||
        get_int(&r, o, "num_hidden_layers", 1, &c.num_hidden_layers, "") ||
        get_int(&r, o, "num_attention_heads", 1, &c.num_attention_heads, "") ||
        get_int(&r, o, "num_key_value_heads", 1, &c.num_key_value_heads, "") ||
        get_int(&r, o, "head_dim", 2, &c.head_dim, "") ||
        get_int(&r, o, "max_position_embeddings", 1, &c.max_position_embeddings, "") ||
        get_num(&r, o, "rms_norm_eps", &c.rms_norm_eps, "") || get_num(&r, o, "rope_theta", &c.rope_theta, "") ||
        get_num(&r, o, "initializer_range", &c.initializer_range, "") ||
        get_bool(&r, o, "tie_word_embeddings", &c.tie_word_embeddings))
        goto out;
    if (!c.num_key_value_heads) c.num_key_value_heads = c.num_attention_heads;
    if (!c.head_dim) {
        if (c.hidden_size % c.num_attention_heads) {
            asp_errf(err, errlen, "%s: hidden_size %lld is not divisible by num_attention_heads %lld and head_dim is "
                     "not given; add head_dim", path, (long long)c.hidden_size, (long long)c.num_attention_heads);
            goto out;
        }
        c.head_dim = c.hidden_size / c.num_attention_heads;
    }
    if (c.head_dim % 2 || c.num_attention_heads % c.num_key_value_heads) {
        asp_errf(err, errlen, "%s: head_dim %lld must be even and num_attention_heads %lld a multiple of "
                 "num_key_value_heads %lld; the config is not a valid Llama", path, (long long)c.head_dim,
                 (long long)c.num_attention_heads, (long long)c.num_key_value_heads);
        goto out;
    }
    /* rope: rope_parameters (transformers 5) or rope_theta + rope_scaling */
    yaml_node_t *rp = json_get(&r.j, o, "rope_parameters"), *rsn = json_get(&r.j, o, "rope_scaling");
    int have_rp = rp && !json_is_null(rp), have_rs = rsn && !json_is_null(rsn);
    rope_scaling_t from_rs = {0};
    double theta_rs = c.rope_theta;
    if (have_rs && read_rope(&r, rsn, "rope_scaling", &from_rs, &theta_rs)) goto out;
    if (have_rp) {
        double theta = c.rope_theta;
        rope_scaling_t from_rp = {0};
        if (read_rope(&r, rp, "rope_parameters", &from_rp, &theta)) goto out;
        if (json_get(&r.j, o, "rope_theta") && theta != c.rope_theta) {
            asp_errf(err, errlen, "%s: rope_theta %g and rope_parameters.rope_theta %g disagree; keep one of them",
                     path, c.rope_theta, theta);
            goto out;
        }
        if (have_rs && !rope_equal(&from_rs, &from_rp)) {
            asp_errf(err, errlen, "%s: rope_scaling and rope_parameters describe different RoPE scaling; keep one "
                     "of them", path);
            goto out;
        }
        c.rope_theta = theta;
        c.rope_scaling = from_rp;
    } else {
        c.rope_theta = theta_rs;
        c.rope_scaling = from_rs;
    }
    if (!c.rope_scaling.enabled) {
        /* the config loader's switched-off state: Llama 3.1 values kept for --set */
        c.rope_scaling = (rope_scaling_t){0, 8.0, 1.0, 4.0, 8192};
    }
    *out = c;
    rc = 0;
out:
    json_free(&r.j);
    return rc;
}

/* ------------------------------------------------------------------ from_pretrained merge */

typedef enum { MK_INT, MK_NUM, MK_BOOL, MK_ROPE } mkind_t;
static const struct {
    const char *name;
    mkind_t kind;
    size_t off;
} merge_keys[] = {
#define MF(f) offsetof(model_config_t, f)
    {"hidden_size", MK_INT, MF(hidden_size)},
    {"intermediate_size", MK_INT, MF(intermediate_size)},
    {"num_hidden_layers", MK_INT, MF(num_hidden_layers)},
    {"num_attention_heads", MK_INT, MF(num_attention_heads)},
    {"num_key_value_heads", MK_INT, MF(num_key_value_heads)},
    {"head_dim", MK_INT, MF(head_dim)},
    {"vocab_size", MK_INT, MF(vocab_size)},
    {"max_position_embeddings", MK_INT, MF(max_position_embeddings)},
    {"rms_norm_eps", MK_NUM, MF(rms_norm_eps)},
    {"rope_theta", MK_NUM, MF(rope_theta)},
    {"rope_scaling", MK_ROPE, MF(rope_scaling)},
    {"tie_word_embeddings", MK_BOOL, MF(tie_word_embeddings)},
#undef MF
};
#define NMERGE ((int)(sizeof merge_keys / sizeof merge_keys[0]))

static void value_text(const model_config_t *c, int k, char *buf, size_t len) {
    const char *p = (const char *)c + merge_keys[k].off;
    switch (merge_keys[k].kind) {
    case MK_INT: snprintf(buf, len, "%lld", (long long)*(const int64_t *)p); break;
    case MK_NUM: snprintf(buf, len, "%.17g", *(const double *)p); break;
    case MK_BOOL: snprintf(buf, len, "%s", *(const int *)p ? "true" : "false"); break;
    case MK_ROPE: {
        const rope_scaling_t *r = (const rope_scaling_t *)p;
        if (!r->enabled) snprintf(buf, len, "null (plain RoPE)");
        else snprintf(buf, len, "llama3 (factor %g, low_freq_factor %g, high_freq_factor %g, "
                      "original_max_position_embeddings %lld)", r->factor, r->low_freq_factor, r->high_freq_factor,
                      (long long)r->original_max_position_embeddings);
        break;
    }
    }
}

static int values_equal(const model_config_t *a, const model_config_t *b, int k) {
    const char *p = (const char *)a + merge_keys[k].off, *q = (const char *)b + merge_keys[k].off;
    switch (merge_keys[k].kind) {
    case MK_INT: return *(const int64_t *)p == *(const int64_t *)q;
    case MK_NUM: return *(const double *)p == *(const double *)q;
    case MK_BOOL: return *(const int *)p == *(const int *)q;
    case MK_ROPE: return rope_equal((const rope_scaling_t *)p, (const rope_scaling_t *)q);
    }
    return 0;
}

/* Where model key k was given: "FILE:LINE:COL" of the value in the config
 * file, or the --set argument (the last one wins, as in the loader). */
static int given_where(const config_t *cfg, yaml_document_t *doc, int have_doc, char *const *sets, int nsets, int k,
                       char *out, size_t len) {
    const char *name = merge_keys[k].name;
    size_t nl = strlen(name);
    for (int i = nsets - 1; i >= 0; i--)
        if (!strncmp(sets[i], "model.", 6) && !strncmp(sets[i] + 6, name, nl) &&
            (sets[i][6 + nl] == '=' || sets[i][6 + nl] == '.')) {
            snprintf(out, len, "--set %s", sets[i]);
            return 1;
        }
    if (!have_doc) return 0;
    yaml_node_t *root = yaml_document_get_root_node(doc);
    if (!root || root->type != YAML_MAPPING_NODE) return 0;
    for (yaml_node_pair_t *p = root->data.mapping.pairs.start; p < root->data.mapping.pairs.top; p++) {
        yaml_node_t *kn = yaml_document_get_node(doc, p->key), *vn = yaml_document_get_node(doc, p->value);
        if (kn->type != YAML_SCALAR_NODE || strcmp((char *)kn->data.scalar.value, "model") ||
            vn->type != YAML_MAPPING_NODE)
            continue;
        for (yaml_node_pair_t *q = vn->data.mapping.pairs.start; q < vn->data.mapping.pairs.top; q++) {
            yaml_node_t *k2 = yaml_document_get_node(doc, q->key), *v2 = yaml_document_get_node(doc, q->value);
            if (k2->type == YAML_SCALAR_NODE && !strcmp((char *)k2->data.scalar.value, name)) {
                snprintf(out, len, "%s:%zu:%zu", cfg->source, v2->start_mark.line + 1, v2->start_mark.column + 1);
                return 1;
            }
        }
    }
    return 0;
}

int hf_apply_pretrained(config_t *cfg, char *const *sets, int nsets, char *err, size_t errlen) {
    model_config_t *m = &cfg->model;
    if (!m->from_pretrained[0]) return 0;
    char dir[CFG_PATH_MAX], abs[CFG_PATH_MAX];
    if (config_resolve_path(cfg, m->from_pretrained, dir, sizeof dir))
        return asp_errf(err, errlen, "model.from_pretrained: '%.200s' is too long once resolved; use a shorter path",
                        m->from_pretrained);
    /* absolute, so that the config recorded in the run folder names the same folder */
    if (dir[0] != '/') {
        char cwd[CFG_PATH_MAX];
        if (!getcwd(cwd, sizeof cwd) || snprintf(abs, sizeof abs, "%s/%s", cwd, dir) >= (int)sizeof abs)
            return asp_errf(err, errlen, "model.from_pretrained: cannot make '%.200s' absolute; use a shorter path",
                            dir);
    } else {
        strcpy(abs, dir);
    }
    model_config_t hf = *m;
    char msg[2048];
    if (hf_read_config(abs, &hf, msg, sizeof msg))
        return asp_errf(err, errlen, "model.from_pretrained: %s", msg);

    /* the keys given in the file: read its model section again for their positions */
    yaml_document_t doc;
    int have_doc = 0;
    FILE *f = cfg->source[0] ? fopen(cfg->source, "rb") : NULL;
    if (f) {
        yaml_parser_t ps;
        if (yaml_parser_initialize(&ps)) {
            yaml_parser_set_input_file(&ps, f);
            have_doc = yaml_parser_load(&ps, &doc);
            yaml_parser_delete(&ps);
        }
        fclose(f);
    }
    int rc = 0;
    for (int k = 0; k < NMERGE && !rc; k++) {
        char where[CFG_PATH_MAX + 300];
        if (!given_where(cfg, &doc, have_doc, sets, nsets, k, where, sizeof where) || values_equal(m, &hf, k))
            continue;
        char a[256], b[256];
        value_text(m, k, a, sizeof a);
        value_text(&hf, k, b, sizeof b);
        rc = asp_errf(err, errlen, "%s: model.%s is %s here but %s in %s/config.json (model.from_pretrained); remove "
                      "the key or make the two agree", where, merge_keys[k].name, a, b, abs);
    }
    if (have_doc) yaml_document_delete(&doc);
    if (rc) return rc;
    snprintf(hf.from_pretrained, sizeof hf.from_pretrained, "%s", abs);
    *m = hf;
    if (config_validate(cfg, msg, sizeof msg))
        return asp_errf(err, errlen, "%s/config.json (model.from_pretrained): %s", abs, msg);
    return 0;
}

/* ------------------------------------------------------------------ weights in */

static void shape_text(int ndim, const int64_t *shape, char *buf, size_t len) {
    size_t at = (size_t)snprintf(buf, len, "[");
    for (int d = 0; d < ndim && at < len; d++)
        at += (size_t)snprintf(buf + at, len - at, "%s%lld", d ? ", " : "", (long long)shape[d]);
    if (at < len) snprintf(buf + at, len - at, "]");
}

/* Old checkpoints carry RoPE inverse frequencies as a buffer: derived from
 * config.json, never a weight. */
static int is_rope_buffer(const char *name) {
    const char *s = strstr(name, "rotary_emb.inv_freq");
    return s && !s[strlen("rotary_emb.inv_freq")];
}

int hf_load_weights_each(const char *dir, const model_t *m, hf_put_fn put, void *ctx, char *err, size_t errlen) {
    st_checkpoint_t c;
    if (st_checkpoint_open(&c, dir, err, errlen)) return -1;
    int rc = -1;
    char a[128], b[128];
    const param_t *embed = model_find_param(m, "model.embed_tokens.weight");
    /* one tensor at a time: a buffer of the largest */
    size_t most = 0;
    for (int i = 0; i < m->nparams; i++)
        if (m->params[i].numel > most) most = m->params[i].numel;
    float *w = malloc((most ? most : 1) * sizeof(float));
    if (!w) {
        st_checkpoint_close(&c);
        return asp_errf(err, errlen, "%s: out of host memory for a tensor of %zu values", dir, most);
    }
    for (int i = 0; i < m->nparams; i++) {
        const param_t *p = &m->params[i];
        const st_file_t *f;
        const st_tensor_t *t = st_checkpoint_find(&c, p->name, &f);
        shape_text(p->ndim, p->shape, a, sizeof a);
        if (!t) {
            asp_errf(err, errlen, "%s: tensor '%s' (shape %s) is missing from the checkpoint; it does not match its "
                     "config.json (a damaged or partial download?)", dir, p->name, a);
            goto out;
        }
        int same = t->ndim == p->ndim;
        for (int d = 0; d < p->ndim && same; d++) same = t->shape[d] == p->shape[d];
        if (!same) {
            shape_text(t->ndim, t->shape, b, sizeof b);
            asp_errf(err, errlen, "%s: tensor '%s' has shape %s, but config.json makes it %s; the weights and "
                     "config.json disagree", f->path, p->name, b, a);
            goto out;
        }
        st_read_f32(f, t, w);
        /* a NaN or Inf weight would surface at step 1 as a diverged loss,
         * far from its cause: name the tensor now */
        for (size_t k = 0; k < p->numel; k++)
            if (!isfinite(w[k])) {
                asp_errf(err, errlen, "%s: tensor '%s' holds %s at element %zu (of %zu); the checkpoint is damaged or "
                         "was saved from a diverged run: fix or re-download it", f->path, p->name,
                         isnan(w[k]) ? "NaN" : w[k] > 0 ? "+Inf" : "-Inf", k, p->numel);
                goto out;
            }
        put(ctx, w, p->offset, p->numel);
    }
    for (int k = 0; k < c.nfiles; k++) {
        const st_file_t *f = &c.files[k];
        for (int i = 0; i < f->ntensors; i++) {
            const st_tensor_t *t = &f->tensors[i];
            if (model_find_param(m, t->name) || is_rope_buffer(t->name)) continue;
            if (m->cfg.tie_word_embeddings && !strcmp(t->name, "lm_head.weight")) {
                /* tied: a copy of the embedding is accepted, anything else is not */
                int same = t->ndim == 2 && t->shape[0] == embed->shape[0] && t->shape[1] == embed->shape[1];
                float *head = same ? malloc(embed->numel * sizeof(float)) : NULL;
                const st_file_t *ef;
                const st_tensor_t *et = head ? st_checkpoint_find(&c, embed->name, &ef) : NULL;
                if (head && et) {
                    st_read_f32(f, t, head);
                    st_read_f32(ef, et, w);
                    same = !memcmp(head, w, embed->numel * sizeof(float));
                    free(head);
                } else if (same) {
                    free(head);
                    asp_errf(err, errlen, "%s: out of memory comparing lm_head.weight", f->path);
                    goto out;
                }
                if (!same) {
                    asp_errf(err, errlen, "%s: lm_head.weight differs from model.embed_tokens.weight, but config.json "
                             "has tie_word_embeddings true (one matrix shared by both); set tie_word_embeddings to "
                             "false in config.json if the LM head is its own matrix", f->path);
                    goto out;
                }
                continue;
            }
            shape_text(t->ndim, t->shape, b, sizeof b);
            asp_errf(err, errlen, "%s: tensor '%s' (shape %s) is not a parameter of this Llama model%s; the "
                     "checkpoint and its config.json disagree", f->path, t->name, b,
                     !strcmp(t->name, "lm_head.weight") ? "" : " (biases and other architectures are not supported)");
            goto out;
        }
    }
    rc = 0;
out:
    free(w);
    st_checkpoint_close(&c);
    return rc;
}

static void put_flat(void *ctx, const float *vals, size_t begin, size_t n) {
    memcpy((float *)ctx + begin, vals, n * sizeof(float));
}

int hf_load_weights(const char *dir, const model_t *m, float *flat, char *err, size_t errlen) {
    return hf_load_weights_each(dir, m, put_flat, flat, err, errlen);
}

/* ------------------------------------------------------------------ export */

static const char *torch_dtype(st_dtype_t t) {
    return t == ST_BF16 ? "bfloat16" : t == ST_F16 ? "float16" : "float32";
}

/* A JSON number that reads back as the same double and looks like a float. */
static void json_double(char *buf, size_t len, double v) {
    if (v == floor(v) && fabs(v) < 1e15) {
        snprintf(buf, len, "%.1f", v);
        return;
    }
    for (int p = 1; p <= 17; p++) {
        snprintf(buf, len, "%.*g", p, v);
        if (strtod(buf, NULL) == v) break;
    }
    if (!strpbrk(buf, ".eE")) strncat(buf, ".0", len - strlen(buf) - 1);
}

typedef struct {
    const model_config_t *c;
    st_dtype_t dtype;
} hf_config_out_t;

static int fill_config(FILE *f, void *ctx, char *err, size_t errlen) {
    const hf_config_out_t *o = ctx;
    const model_config_t *c = o->c;
    st_dtype_t dtype = o->dtype;
    char eps[40], theta[40], init[40];
    json_double(eps, sizeof eps, c->rms_norm_eps);
    json_double(theta, sizeof theta, c->rope_theta);
    json_double(init, sizeof init, c->initializer_range);
    fprintf(f, "{\n  \"architectures\": [\"LlamaForCausalLM\"],\n  \"model_type\": \"llama\",\n"
               "  \"torch_dtype\": \"%s\",\n", torch_dtype(dtype));
    fprintf(f, "  \"hidden_size\": %lld,\n  \"intermediate_size\": %lld,\n  \"num_hidden_layers\": %lld,\n"
               "  \"num_attention_heads\": %lld,\n  \"num_key_value_heads\": %lld,\n  \"head_dim\": %lld,\n"
               "  \"vocab_size\": %lld,\n  \"max_position_embeddings\": %lld,\n",
            (long long)c->hidden_size, (long long)c->intermediate_size, (long long)c->num_hidden_layers,
            (long long)c->num_attention_heads, (long long)c->num_key_value_heads, (long long)c->head_dim,
            (long long)c->vocab_size, (long long)c->max_position_embeddings);
    fprintf(f, "  \"rms_norm_eps\": %s,\n  \"rope_theta\": %s,\n", eps, theta);
    if (c->rope_scaling.enabled) {
        char fa[40], lo[40], hi[40];
        json_double(fa, sizeof fa, c->rope_scaling.factor);
        json_double(lo, sizeof lo, c->rope_scaling.low_freq_factor);
        json_double(hi, sizeof hi, c->rope_scaling.high_freq_factor);
        fprintf(f, "  \"rope_scaling\": {\"rope_type\": \"llama3\", \"factor\": %s, \"low_freq_factor\": %s, "
                   "\"high_freq_factor\": %s, \"original_max_position_embeddings\": %lld},\n",
                fa, lo, hi, (long long)c->rope_scaling.original_max_position_embeddings);
    } else {
        fprintf(f, "  \"rope_scaling\": null,\n");
    }
    fprintf(f, "  \"tie_word_embeddings\": %s,\n  \"initializer_range\": %s,\n  \"hidden_act\": \"silu\",\n"
               "  \"attention_bias\": false,\n  \"attention_dropout\": 0.0,\n  \"mlp_bias\": false,\n"
               "  \"pretraining_tp\": 1,\n  \"use_cache\": true\n}\n",
            c->tie_word_embeddings ? "true" : "false", init);
    return ferror(f) ? -1 : 0;
}

int hf_write_config(const char *path, const model_config_t *c, st_dtype_t dtype, char *err, size_t errlen) {
    hf_config_out_t o = {c, dtype};
    return asp_write_atomic(path, fill_config, &o, err, errlen);
}

/* The tensors in the order of the flat buffer (the parameter table's, which
 * lays them out end to end): a producer passes the model's values in that
 * order. NULL with a message if the table has gaps (a bug). */
static st_write_tensor_t *export_tensors(const char *dir, const model_t *m, char *err, size_t errlen) {
    st_write_tensor_t *t = calloc((size_t)m->nparams, sizeof *t);
    if (!t) {
        asp_errf(err, errlen, "%s: out of memory", dir);
        return NULL;
    }
    size_t at = 0;
    for (int i = 0; i < m->nparams; i++) {
        const param_t *p = &m->params[i];
        if (p->offset != at) {
            free(t);
            asp_errf(err, errlen, "internal: parameter '%s' is at %zu of the flat buffer, not %zu", p->name, p->offset,
                     at);
            return NULL;
        }
        at += p->numel;
        t[i].name = p->name;
        t[i].ndim = p->ndim;
        t[i].shape[0] = p->shape[0];
        t[i].shape[1] = p->shape[1];
    }
    return t;
}

int hf_export_from(const char *dir, const model_t *m, st_dtype_t dtype,
                   int (*produce)(void *ctx, st_emit_fn emit, void *ectx), void *ctx, char *err, size_t errlen) {
    if (asp_mkdir_p(dir))
        return asp_errf(err, errlen, "%s: cannot create the export folder: %s", dir, strerror(errno));
    st_write_tensor_t *t = export_tensors(dir, m, err, errlen);
    if (!t) return -1;
    char path[CFG_PATH_MAX + 32];
    int rc = -1;
    if (snprintf(path, sizeof path, "%s/model.safetensors", dir) >= (int)sizeof path)
        asp_errf(err, errlen, "%s: path too long", dir);
    else if (!st_write_from(path, t, m->nparams, dtype, produce, ctx, err, errlen)) {
        snprintf(path, sizeof path, "%s/config.json", dir);
        rc = hf_write_config(path, &m->cfg, dtype, err, errlen);
    }
    free(t);
    return rc;
}

typedef struct {
    const float *flat;
    size_t n;
} flat_src_t;

static int produce_flat(void *ctx, st_emit_fn emit, void *ectx) {
    const flat_src_t *s = ctx;
    (void)emit(ectx, s->flat, s->n);
    return 0;
}

int hf_export(const char *dir, const model_t *m, const float *flat, st_dtype_t dtype, char *err, size_t errlen) {
    flat_src_t s = {flat, m->n_params};
    return hf_export_from(dir, m, dtype, produce_flat, &s, err, errlen);
}

/* ------------------------------------------------------------------ training loop */

/* Weights go into the executor a tensor at a time, and come out of it a
 * gradient bucket at a time: no model-sized buffer on the host, where an
 * 8B model's optimizer state may already take most of the memory. */
static void put_exec(void *ctx, const float *vals, size_t begin, size_t n) {
    exec_set_params_range((exec_t *)ctx, vals, begin, n);
}

void hf_train_import(exec_t *e, const config_t *cfg, const model_t *m) {
    char err[2048];
    if (hf_load_weights_each(cfg->model.from_pretrained, m, put_exec, e, err, sizeof err))
        asp_die(ASP_EXIT_USAGE, "model.from_pretrained: %s", err);
    asp_info("loaded %zu weights from %s", m->n_params, cfg->model.from_pretrained);
}

typedef struct {
    exec_t *e;
    st_emit_fn emit;
    void *ectx;
    int streamed;
} export_src_t;

static int export_sink(void *ctx, const float *vals, size_t n) {
    export_src_t *s = ctx;
    return s->emit ? s->emit(s->ectx, vals, n) : 0;
}

static int produce_exec(void *ctx, st_emit_fn emit, void *ectx) {
    export_src_t *s = ctx;
    s->emit = emit;
    s->ectx = ectx;
    s->streamed = 1;
    return exec_stream_params(s->e, 0, export_sink, s);
}

void hf_train_export(exec_t *e, const config_t *cfg, const model_t *m, dtype_t param_dtype, int lead) {
    char dir[CFG_PATH_MAX + 8], err[2048];
    snprintf(dir, sizeof dir, "%s/hf", cfg->io.run_dir);
    export_src_t src = {e, NULL, NULL, 0};
    if (!lead) {   /* the stream is collective: every rank takes part */
        exec_stream_params(e, 0, export_sink, &src);
        return;
    }
    /* the weights as the backend holds them: bf16 on the GPU is exact in bf16 */
    st_dtype_t dt = param_dtype == DT_BF16 ? ST_BF16 : ST_F32;
    int rc = hf_export_from(dir, m, dt, produce_exec, &src, err, sizeof err);
    if (!src.streamed) {   /* the file was not begun: still join the other ranks' stream */
        src.emit = NULL;
        exec_stream_params(e, 0, export_sink, &src);
    }
    if (rc) asp_die(ASP_EXIT_FAILURE, "io.export_hf: %s", err);
    asp_info("exported the model (%s) to %s/ (Hugging Face config.json + model.safetensors)", st_dtype_name(dt), dir);
}
