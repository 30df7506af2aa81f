/* The model layer: a family (Llama) turns hyperparameters into
 *   - a parameter table under Hugging Face names, laid out in one flat buffer;
 *   - three graphs of coarse ops: prologue (embedding), ONE transformer layer
 *     (repeated num_hidden_layers times with that layer's parameters), and
 *     epilogue (final norm, LM head + loss in token chunks).
 * This is the "single-GPU program": token tensors have S rows (symbolic), and
 * nothing here knows about ranks, devices or memory. The plan passes
 * (src/plan/) rewrite a copy of these graphs for P ranks. */
#ifndef AUTOSP_MODEL_H
#define AUTOSP_MODEL_H

#include <stddef.h>
#include <stdint.h>

#include "config.h"

/* ------------------------------------------------------------------ ops
 * Every op has a forward and a backward in each backend (src/backend.h).
 * in/out below are tensor ids in the graph; shapes are [rows, width]. */
typedef enum {
    OP_EMBED = 0,       /* in: -            out: x[S,d]         param: embedding [V,d]; reads the token ids */
    OP_RMSNORM,         /* in: x            out: y              param: weight [d] */
    OP_MATMUL,          /* in: x[n,k]       out: y[n,m]         param: W [m,k] (HF [out,in]); y = x W^T */
    OP_ROPE_SPLIT,      /* in: qkv[n,(Hq+2Hkv)hd]  out: q[n,Hq,hd], k[n,Hkv,hd], v[n,Hkv,hd]
                           RoPE (rotate-half, llama3 scaling) on q and k at GLOBAL positions */
    OP_ATTENTION,       /* in: q, k, v      out: o[n,Hq,hd], lse[Hq,n] (fp32 log-sum-exp)  causal GQA */
    OP_ADD,             /* in: a, b         out: y = a + b (residual) */
    OP_ADD_RMSNORM,     /* in: a, b         out: h = a + b, hn = rmsnorm(h)   param: weight [d]
                           (a residual add fused with the RMSNorm that follows it) */
    OP_SWIGLU,          /* in: gu[n,2f] (= [gate | up] per row)   out: y[n,f] = silu(gate) * up */
    OP_LMHEAD_LOSS,     /* in: x[n,d]       out: -  param: LM head [V,d]. Logits in token chunks, summed
                           cross entropy over valid targets; its forward also writes d(x) (fused backward) */
    OP_A2A_SEQ_TO_HEAD, /* (inserted by the SP pass) in: x[S/P, H, hd]  out: y[S, H/P, hd] */
    OP_A2A_HEAD_TO_SEQ, /* (inserted by the SP pass) in: y[S, H/P, hd]  out: x[S/P, H, hd] */
    OP__COUNT
} op_kind_t;

const char *op_name(op_kind_t op);

/* ------------------------------------------------------------------ tensors */
typedef enum {
    ROWS_LOCAL = 0,     /* one row per token of this rank's sequence shard (S in the model, S/P after SP) */
    ROWS_GLOBAL,        /* one row per token of the whole (padded) sequence: head-sharded tensors */
} rows_kind_t;

typedef enum {
    TENSOR_ACT = 0,     /* activation dtype of the backend (fp32 cpu, bf16 cuda) */
    TENSOR_F32,         /* always fp32 (softmax statistics) */
} tensor_dtype_t;

typedef enum {
    TENSOR_INTERNAL = 0,
    TENSOR_GRAPH_INPUT, /* layer: the residual stream in (layer checkpoint); epilogue: final hidden */
    TENSOR_GRAPH_OUTPUT,/* layer: the residual stream out (next layer's input); prologue: embeddings */
} tensor_role_t;

#define TENSOR_NAME_MAX 32

typedef struct {
    char name[TENSOR_NAME_MAX]; /* "xn", "qkv", "q", ... */
    rows_kind_t rows;
    int64_t width;      /* elements per row (= heads * head_dim for head tensors) */
    int64_t heads;      /* heads per row for q/k/v/o-like tensors, 0 otherwise */
    int64_t head_dim;
    tensor_dtype_t dtype;
    tensor_role_t role;
    int stats;          /* 1: stored [heads][rows] (lse), not [rows][width] */
    int packed;         /* P > 1: stored (and its gradient too) in the Ulysses packed layout for P
                           ranks, the per-peer blocks an all-to-all sends (src/backend.h); 0: plain.
                           Set by the SP pass. */
} tensor_desc_t;

/* ------------------------------------------------------------------ parameters */
typedef enum {          /* per-layer parameter slots (fused where HF tensors are adjacent) */
    LP_INPUT_NORM = 0,  /* input_layernorm.weight [d] */
    LP_QKV,             /* q_proj, k_proj, v_proj stacked: [(Hq+2Hkv)hd, d] */
    LP_O,               /* o_proj [d, Hq hd] */
    LP_POST_NORM,       /* post_attention_layernorm.weight [d] */
    LP_GATE_UP,         /* gate_proj, up_proj stacked: [2f, d] */
    LP_DOWN,            /* down_proj [d, f] */
    LP__COUNT
} layer_param_t;

typedef enum {
    GP_EMBED = 0,       /* model.embed_tokens.weight [V, d] */
    GP_FINAL_NORM,      /* model.norm.weight [d] */
    GP_LM_HEAD,         /* lm_head.weight [V, d], or the embedding when tied */
    GP__COUNT
} global_param_t;

#define PARAM_NAME_MAX 96

typedef struct {
    char name[PARAM_NAME_MAX]; /* Hugging Face name, e.g. model.layers.3.mlp.up_proj.weight */
    int ndim;                  /* 1 or 2 */
    int64_t shape[2];          /* HF shape ([out, in] for linear weights) */
    size_t numel;
    size_t offset;             /* element offset in the flat parameter buffer */
    int layer;                 /* -1 for embedding, final norm, LM head */
    int decay;                 /* 1: AdamW weight decay applies (2-D weights) */
} param_t;

/* ------------------------------------------------------------------ graphs */
#define GRAPH_MAX_TENSORS 40
#define GRAPH_MAX_STEPS 40
#define GRAPH_MAX_IO 3

typedef struct {
    op_kind_t op;
    int nin, nout;
    int in[GRAPH_MAX_IO];   /* tensor ids */
    int out[GRAPH_MAX_IO];
    int param;              /* layer_param_t in the layer graph, global_param_t in pro/epilogue; -1 none */
    int64_t m, k;           /* OP_MATMUL: out features, in features */
    int64_t heads;          /* ROPE_SPLIT/ATTENTION: query heads of this step; A2A: heads of the S/P-side tensor */
    int64_t kv_heads;       /* ROPE_SPLIT/ATTENTION: key/value heads of this step */
    int64_t head_dim;
    char label[48];         /* what the step does, for --explain ("q_proj+k_proj+v_proj") */
} graph_step_t;

typedef struct {
    char name[16];          /* "prologue", "layer", "epilogue" */
    int nt, ns;
    tensor_desc_t t[GRAPH_MAX_TENSORS];
    graph_step_t s[GRAPH_MAX_STEPS];
    int input;              /* tensor id of TENSOR_GRAPH_INPUT, -1 if none (prologue) */
    int output;             /* tensor id of TENSOR_GRAPH_OUTPUT, -1 if none (epilogue) */
} graph_t;

/* ------------------------------------------------------------------ model */
typedef struct {
    model_config_t cfg;
    int64_t d, f, L, hq, hkv, hd, V;
    param_t *params;
    int nparams;
    size_t n_params;                    /* elements in the flat buffer (= published count) */
    size_t layer_base, layer_stride;    /* layer l's parameters start at layer_base + l*layer_stride */
    size_t layer_slot[LP__COUNT];       /* offset of a slot within a layer */
    size_t global_slot[GP__COUNT];      /* offset of a global slot (LM head = embedding when tied) */
    graph_t prologue, layer, epilogue;
} model_t;

/* Build the parameter table and graphs. Returns 0, or -1 with a message. */
int model_build(model_t *m, const model_config_t *cfg, char *err, size_t errlen);
void model_free(model_t *m);

/* Element offset of a parameter slot (layer < 0 for global slots). */
size_t model_param_offset(const model_t *m, int layer, int slot);
/* Find a parameter by its Hugging Face name; NULL if absent. */
const param_t *model_find_param(const model_t *m, const char *name);

/* RoPE inverse frequencies with llama3 scaling applied, hd/2 values in fp64,
 * exactly as transformers' _compute_llama3_parameters computes them. */
void model_rope_inv_freq(const model_t *m, double *inv_freq);

/* Deterministic initial weights for elements [begin, begin+count) of the flat
 * buffer: N(0, initializer_range) for matrices (counter-based RNG keyed by
 * seed and element index, so any rank or device can make any slice), 1.0 for
 * norm weights. */
void model_init_params(const model_t *m, uint64_t seed, size_t begin, size_t count, float *out);

/* Matmul FLOPs of one token through the whole model (2 * matmul weights incl.
 * LM head, no embedding lookup): the N in 6N. */
double model_matmul_params(const model_t *m);

#endif
