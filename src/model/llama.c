/* Llama family: parameter table under Hugging Face names, flat layout, and the
 * three graphs (prologue, one layer, epilogue) of the single-device program. */
#include "model/model.h"

#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "util.h"

const char *op_name(op_kind_t op) {
    switch (op) {
    case OP_EMBED: return "EMBED";
    case OP_RMSNORM: return "RMSNORM";
    case OP_MATMUL: return "MATMUL";
    case OP_ROPE_SPLIT: return "ROPE_SPLIT";
    case OP_ATTENTION: return "ATTENTION";
    case OP_ADD: return "ADD";
    case OP_ADD_RMSNORM: return "ADD_RMSNORM";
    case OP_SWIGLU: return "SWIGLU";
    case OP_LMHEAD_LOSS: return "LMHEAD_LOSS";
    case OP_A2A_SEQ_TO_HEAD: return "A2A_SEQ_TO_HEAD";
    case OP_A2A_HEAD_TO_SEQ: return "A2A_HEAD_TO_SEQ";
    case OP__COUNT: break;
    }
    return "?";
}

/* ------------------------------------------------------------------ graph building */

static int add_tensor(graph_t *g, const char *name, int64_t width, int64_t heads, int64_t head_dim,
                      tensor_dtype_t dtype, tensor_role_t role, int stats) {
    tensor_desc_t *t = &g->t[g->nt];
    memset(t, 0, sizeof *t);
    snprintf(t->name, sizeof t->name, "%s", name);
    t->rows = ROWS_LOCAL;
    t->width = width;
    t->heads = heads;
    t->head_dim = head_dim;
    t->dtype = dtype;
    t->role = role;
    t->stats = stats;
    if (role == TENSOR_GRAPH_INPUT) g->input = g->nt;
    if (role == TENSOR_GRAPH_OUTPUT) g->output = g->nt;
    return g->nt++;
}

static graph_step_t *add_step(graph_t *g, op_kind_t op, int param, const char *label) {
    graph_step_t *s = &g->s[g->ns++];
    memset(s, 0, sizeof *s);
    s->op = op;
    s->param = param;
    snprintf(s->label, sizeof s->label, "%s", label);
    return s;
}

static void step_io(graph_step_t *s, int nin, const int *in, int nout, const int *out) {
    s->nin = nin;
    s->nout = nout;
    for (int i = 0; i < nin; i++) s->in[i] = in[i];
    for (int i = 0; i < nout; i++) s->out[i] = out[i];
}

static void graph_init(graph_t *g, const char *name) {
    memset(g, 0, sizeof *g);
    snprintf(g->name, sizeof g->name, "%s", name);
    g->input = -1;
    g->output = -1;
}

static void build_graphs(model_t *m) {
    const int64_t d = m->d, f = m->f, hq = m->hq, hkv = m->hkv, hd = m->hd;
    graph_step_t *s;

    graph_t *g = &m->prologue;
    graph_init(g, "prologue");
    int x0 = add_tensor(g, "x0", d, 0, 0, TENSOR_ACT, TENSOR_GRAPH_OUTPUT, 0);
    s = add_step(g, OP_EMBED, GP_EMBED, "embed_tokens");
    step_io(s, 0, NULL, 1, (int[]){x0});

    g = &m->layer;
    graph_init(g, "layer");
    int x = add_tensor(g, "x", d, 0, 0, TENSOR_ACT, TENSOR_GRAPH_INPUT, 0);
    int xn = add_tensor(g, "xn", d, 0, 0, TENSOR_ACT, TENSOR_INTERNAL, 0);
    int qkv = add_tensor(g, "qkv", (hq + 2 * hkv) * hd, 0, 0, TENSOR_ACT, TENSOR_INTERNAL, 0);
    int q = add_tensor(g, "q", hq * hd, hq, hd, TENSOR_ACT, TENSOR_INTERNAL, 0);
    int k = add_tensor(g, "k", hkv * hd, hkv, hd, TENSOR_ACT, TENSOR_INTERNAL, 0);
    int v = add_tensor(g, "v", hkv * hd, hkv, hd, TENSOR_ACT, TENSOR_INTERNAL, 0);
    int o = add_tensor(g, "o", hq * hd, hq, hd, TENSOR_ACT, TENSOR_INTERNAL, 0);
    /* lse is stored [heads][rows]: one fp32 per head and token */
    int lse = add_tensor(g, "lse", hq, hq, 0, TENSOR_F32, TENSOR_INTERNAL, 1);
    int ao = add_tensor(g, "attn_out", d, 0, 0, TENSOR_ACT, TENSOR_INTERNAL, 0);
    int h = add_tensor(g, "h", d, 0, 0, TENSOR_ACT, TENSOR_INTERNAL, 0);
    int hn = add_tensor(g, "hn", d, 0, 0, TENSOR_ACT, TENSOR_INTERNAL, 0);
    int gu = add_tensor(g, "gu", 2 * f, 0, 0, TENSOR_ACT, TENSOR_INTERNAL, 0);
    int act = add_tensor(g, "act", f, 0, 0, TENSOR_ACT, TENSOR_INTERNAL, 0);
    int mo = add_tensor(g, "mlp_out", d, 0, 0, TENSOR_ACT, TENSOR_INTERNAL, 0);
    int y = add_tensor(g, "y", d, 0, 0, TENSOR_ACT, TENSOR_GRAPH_OUTPUT, 0);

    s = add_step(g, OP_RMSNORM, LP_INPUT_NORM, "input_layernorm");
    step_io(s, 1, (int[]){x}, 1, (int[]){xn});
    s = add_step(g, OP_MATMUL, LP_QKV, "q_proj+k_proj+v_proj");
    step_io(s, 1, (int[]){xn}, 1, (int[]){qkv});
    s->m = (hq + 2 * hkv) * hd;
    s->k = d;
    /* the RoPE this model has: Hugging Face's rope_type names */
    s = add_step(g, OP_ROPE_SPLIT, -1, m->cfg.rope_scaling.enabled ? "rotary_emb (llama3) + split q,k,v"
                                                                   : "rotary_emb (default) + split q,k,v");
    step_io(s, 1, (int[]){qkv}, 3, (int[]){q, k, v});
    s->heads = hq;
    s->kv_heads = hkv;
    s->head_dim = hd;
    s = add_step(g, OP_ATTENTION, -1, "self_attn (causal GQA)");
    step_io(s, 3, (int[]){q, k, v}, 2, (int[]){o, lse});
    s->heads = hq;
    s->kv_heads = hkv;
    s->head_dim = hd;
    s = add_step(g, OP_MATMUL, LP_O, "o_proj");
    step_io(s, 1, (int[]){o}, 1, (int[]){ao});
    s->m = d;
    s->k = hq * hd;
    /* h = x + attn_out and its norm in one op: h is also read by the mlp residual */
    s = add_step(g, OP_ADD_RMSNORM, LP_POST_NORM, "residual + post_attention_layernorm");
    step_io(s, 2, (int[]){x, ao}, 2, (int[]){h, hn});
    s = add_step(g, OP_MATMUL, LP_GATE_UP, "gate_proj+up_proj");
    step_io(s, 1, (int[]){hn}, 1, (int[]){gu});
    s->m = 2 * f;
    s->k = d;
    s = add_step(g, OP_SWIGLU, -1, "act_fn (silu(gate) * up)");
    step_io(s, 1, (int[]){gu}, 1, (int[]){act});
    s = add_step(g, OP_MATMUL, LP_DOWN, "down_proj");
    step_io(s, 1, (int[]){act}, 1, (int[]){mo});
    s->m = d;
    s->k = f;
    s = add_step(g, OP_ADD, -1, "residual (mlp)");
    step_io(s, 2, (int[]){h, mo}, 1, (int[]){y});

    g = &m->epilogue;
    graph_init(g, "epilogue");
    int xl = add_tensor(g, "xL", d, 0, 0, TENSOR_ACT, TENSOR_GRAPH_INPUT, 0);
    int xf = add_tensor(g, "xf", d, 0, 0, TENSOR_ACT, TENSOR_INTERNAL, 0);
    s = add_step(g, OP_RMSNORM, GP_FINAL_NORM, "norm");
    step_io(s, 1, (int[]){xl}, 1, (int[]){xf});
    s = add_step(g, OP_LMHEAD_LOSS, GP_LM_HEAD, "lm_head + cross entropy (chunked)");
    step_io(s, 1, (int[]){xf}, 0, NULL);
}

/* ------------------------------------------------------------------ parameters */

static void add_param(model_t *m, size_t *off, int layer, const char *name, int ndim, int64_t r, int64_t c) {
    param_t *p = &m->params[m->nparams++];
    memset(p, 0, sizeof *p);
    snprintf(p->name, sizeof p->name, "%s", name);
    p->ndim = ndim;
    p->shape[0] = r;
    p->shape[1] = ndim == 2 ? c : 1;
    p->numel = (size_t)r * (size_t)(ndim == 2 ? c : 1);
    p->offset = *off;
    p->layer = layer;
    p->decay = ndim == 2;
    *off += p->numel;
}

int model_build(model_t *m, const model_config_t *cfg, char *err, size_t errlen) {
    memset(m, 0, sizeof *m);
    if (cfg->architecture[0] && strcmp(cfg->architecture, "llama") != 0)
        return asp_errf(err, errlen, "model.architecture: \"%s\" is not supported; the only family is \"llama\"",
                        cfg->architecture);
    m->cfg = *cfg;
    m->d = cfg->hidden_size;
    m->f = cfg->intermediate_size;
    m->L = cfg->num_hidden_layers;
    m->hq = cfg->num_attention_heads;
    m->hkv = cfg->num_key_value_heads ? cfg->num_key_value_heads : cfg->num_attention_heads;
    m->V = cfg->vocab_size;
    if (m->d <= 0 || m->f <= 0 || m->L <= 0 || m->hq <= 0 || m->hkv <= 0 || m->V <= 0)
        return asp_errf(err, errlen,
                        "model: hidden_size (%lld), intermediate_size (%lld), num_hidden_layers (%lld), "
                        "num_attention_heads (%lld), num_key_value_heads (%lld) and vocab_size (%lld) must all "
                        "be positive; fix the model section",
                        (long long)m->d, (long long)m->f, (long long)m->L, (long long)m->hq, (long long)m->hkv,
                        (long long)m->V);
    m->hd = cfg->head_dim ? cfg->head_dim : (m->d % m->hq == 0 ? m->d / m->hq : 0);
    if (m->hd <= 0 || m->hd % 2)
        return asp_errf(err, errlen,
                        "model.head_dim: %lld is not a positive even number (RoPE rotates pairs); set head_dim "
                        "or make hidden_size a multiple of num_attention_heads",
                        (long long)m->hd);
    if (m->hq % m->hkv)
        return asp_errf(err, errlen,
                        "model: num_attention_heads (%lld) must be a multiple of num_key_value_heads (%lld) for "
                        "grouped-query attention",
                        (long long)m->hq, (long long)m->hkv);

    const int64_t d = m->d, f = m->f, hq = m->hq, hkv = m->hkv, hd = m->hd, V = m->V;
    m->params = asp_calloc((size_t)(m->L * 9 + 3), sizeof(param_t), "parameter table");
    size_t off = 0;
    char name[PARAM_NAME_MAX];
    add_param(m, &off, -1, "model.embed_tokens.weight", 2, V, d);
    m->layer_base = off;
    for (int64_t l = 0; l < m->L; l++) {
        int li = (int)l;
        size_t start = off;
#define LNAME(s) (snprintf(name, sizeof name, "model.layers.%d.%s", li, s), name)
        add_param(m, &off, li, LNAME("input_layernorm.weight"), 1, d, 0);
        add_param(m, &off, li, LNAME("self_attn.q_proj.weight"), 2, hq * hd, d);
        add_param(m, &off, li, LNAME("self_attn.k_proj.weight"), 2, hkv * hd, d);
        add_param(m, &off, li, LNAME("self_attn.v_proj.weight"), 2, hkv * hd, d);
        add_param(m, &off, li, LNAME("self_attn.o_proj.weight"), 2, d, hq * hd);
        add_param(m, &off, li, LNAME("post_attention_layernorm.weight"), 1, d, 0);
        add_param(m, &off, li, LNAME("mlp.gate_proj.weight"), 2, f, d);
        add_param(m, &off, li, LNAME("mlp.up_proj.weight"), 2, f, d);
        add_param(m, &off, li, LNAME("mlp.down_proj.weight"), 2, d, f);
#undef LNAME
        if (l == 0) {
            /* slot offsets follow from the order above; q,k,v and gate,up are adjacent */
            const param_t *p = &m->params[1];
            m->layer_slot[LP_INPUT_NORM] = p[0].offset - start;
            m->layer_slot[LP_QKV] = p[1].offset - start;
            m->layer_slot[LP_O] = p[4].offset - start;
            m->layer_slot[LP_POST_NORM] = p[5].offset - start;
            m->layer_slot[LP_GATE_UP] = p[6].offset - start;
            m->layer_slot[LP_DOWN] = p[8].offset - start;
            m->layer_stride = off - start;
        }
    }
    m->global_slot[GP_EMBED] = 0;
    m->global_slot[GP_FINAL_NORM] = off;
    add_param(m, &off, -1, "model.norm.weight", 1, d, 0);
    if (cfg->tie_word_embeddings) {
        m->global_slot[GP_LM_HEAD] = m->global_slot[GP_EMBED];
    } else {
        m->global_slot[GP_LM_HEAD] = off;
        add_param(m, &off, -1, "lm_head.weight", 2, V, d);
    }
    m->n_params = off;
    build_graphs(m);
    return 0;
}

void model_free(model_t *m) {
    free(m->params);
    m->params = NULL;
    m->nparams = 0;
}

size_t model_param_offset(const model_t *m, int layer, int slot) {
    if (layer < 0) return m->global_slot[slot];
    return m->layer_base + (size_t)layer * m->layer_stride + m->layer_slot[slot];
}

const param_t *model_find_param(const model_t *m, const char *name) {
    for (int i = 0; i < m->nparams; i++)
        if (strcmp(m->params[i].name, name) == 0) return &m->params[i];
    return NULL;
}

void model_rope_inv_freq(const model_t *m, double *inv_freq) {
    const rope_scaling_t *rs = &m->cfg.rope_scaling;
    const double theta = m->cfg.rope_theta > 0 ? m->cfg.rope_theta : 10000.0;
    const int64_t half = m->hd / 2;
    for (int64_t i = 0; i < half; i++) {
        double inv = 1.0 / pow(theta, (double)(2 * i) / (double)m->hd);
        if (rs->enabled) {
            const double orig = (double)rs->original_max_position_embeddings;
            const double low_wavelen = orig / rs->low_freq_factor;
            const double high_wavelen = orig / rs->high_freq_factor;
            const double wavelen = 2.0 * M_PI / inv;
            if (wavelen > low_wavelen) {
                inv = inv / rs->factor;
            } else if (!(wavelen < high_wavelen)) {
                /* medium band: interpolate between scaled and unscaled */
                double smooth = (orig / wavelen - rs->low_freq_factor) / (rs->high_freq_factor - rs->low_freq_factor);
                inv = (1.0 - smooth) * inv / rs->factor + smooth * inv;
            }
        }
        inv_freq[i] = inv;
    }
}

/* splitmix64 finaliser: a counter-based generator, so element i's value does
 * not depend on which slice (rank, device) generates it */
static uint64_t mix64(uint64_t z) {
    z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ull;
    z = (z ^ (z >> 27)) * 0x94D049BB133111EBull;
    return z ^ (z >> 31);
}

static double normal_at(uint64_t seed, uint64_t index) {
    uint64_t base = mix64(seed * 0x9E3779B97F4A7C15ull + 0x632BE59BD9B4E019ull);
    uint64_t a = mix64(base ^ mix64(2 * index + 1));
    uint64_t b = mix64(base ^ mix64(2 * index + 2));
    double u1 = ((double)(a >> 11) + 1.0) * 0x1.0p-53; /* (0, 1] so log is finite */
    double u2 = (double)(b >> 11) * 0x1.0p-53;
    return sqrt(-2.0 * log(u1)) * cos(2.0 * M_PI * u2);
}

void model_init_params(const model_t *m, uint64_t seed, size_t begin, size_t count, float *out) {
    const double std = m->cfg.initializer_range > 0 ? m->cfg.initializer_range : 0.02;
    size_t end = begin + count;
    /* elements past n_params are padding (ZeRO shards): zero */
    for (size_t i = (m->n_params > begin ? m->n_params : begin); i < end; i++) out[i - begin] = 0.0f;
    for (int pi = 0; pi < m->nparams; pi++) {
        const param_t *p = &m->params[pi];
        size_t lo = p->offset > begin ? p->offset : begin;
        size_t hi = p->offset + p->numel < end ? p->offset + p->numel : end;
        /* every element depends only on (seed, index): threads may split it freely */
#pragma omp parallel for schedule(static)
        for (size_t i = lo; i < hi; i++)
            out[i - begin] = p->ndim == 1 ? 1.0f : (float)(std * normal_at(seed, (uint64_t)i));
    }
}

double model_matmul_params(const model_t *m) {
    double per_layer = (double)((m->hq + 2 * m->hkv) * m->hd * m->d) + (double)(m->d * m->hq * m->hd) +
                       3.0 * (double)(m->d * m->f);
    /* the LM head is a matmul even when its weights are tied to the embedding */
    return (double)m->L * per_layer + (double)(m->V * m->d);
}
