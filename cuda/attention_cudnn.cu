/* Causal GQA attention through cuDNN's fused flash-attention engines, built
 * with the backend (graph) API.
 *
 * cuDNN 9.19's SDPA operation descriptors have no causal attribute, so the
 * graphs are the composite ones its fused-attention engines recognise
 * (docs/cuda.md lists them op by op). Every attribute call is checked and
 * fatal; only "no engine takes this graph" is reported to the caller, so the
 * ops can die naming the graph and shape, and a probe can ask whether a shape
 * is supported.
 *
 * Our [s, heads, hd] row-major buffers are addressed directly as b = 1
 * tensors [1, heads, s, hd] with strides [s heads hd, hd, heads hd, 1]; K^T
 * (and V^T in the backward) swaps the last two dims and strides. lse [hq, s]
 * is the stats tensor [1, hq, s, 1]. The scale is a by-value scalar, so a
 * plan serves any scale; plans are cached per (fwd/bwd, variant, s, hq, hkv,
 * hd). The variant (ASP_CUDNN_GRAPH) only changes how the engine
 * configuration is chosen: the heuristic's first, or the fastest by timing. */
#include "autosp_config.h"

#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "cuda/cuda_common.h"

typedef cudnnBackendDescriptor_t desc_t;

/* Unique ids of the tensors the variant packs bind; virtual tensors take ids
 * from UID_VIRTUAL up. */
enum {
    UID_Q = 1,
    UID_K,
    UID_V,
    UID_O,
    UID_STATS,
    UID_SCALE,
    UID_NEG_INF,
    UID_DO,
    UID_DQ,
    UID_DK,
    UID_DV,
    UID_ONE,
    UID_DSUM,      /* bwd: rowsum(dO * O), fp32 [1, hq, s, 1] in the workspace */
    UID_DQ_ACCUM,  /* bwd: fp32 dQ accumulator [1, hq, s, hd] in the workspace */
    UID_RO_Q,      /* ragged: element offsets of each document in q, o, dq, dO (b + 1 int32) */
    UID_RO_KV,     /* ragged: the same in k, v, dk, dv */
    UID_RO_STATS,  /* ragged: the same in the [T, hq] stats and row sums */
    UID_SEQ_LEN,   /* ragged: each document's length (b int32; 0 for the batch's padding) */
    UID_VIRTUAL = 100
};

#define CACHE_MAX 32
#define ALIGN_BYTES ((size_t)256)
/* Engine configurations a tuned plan times at most (each finalisation may
 * compile a kernel at run time, so the list is kept short). */
#define CAND_MAX 8
#define TUNE_RUNS 3

/* One graph under construction or cached: every descriptor it created (kept
 * alive as long as the plan), its ops, and the plan. A tuned graph keeps every
 * candidate plan until its first execution picks one. */
typedef struct {
    int bwd;
    int variant;          /* CUDNN_GRAPH_* it was built for */
    int64_t s, hq, hkv, hd;
    /* ragged graphs (packed documents as the batch): b documents of at most
     * s rows each, addressed through ragged offsets; b = 1 for the dense ones */
    int ragged;
    int64_t b;
    desc_t ro_q, ro_kv, ro_stats, seq_len;
    desc_t neg_inf;       /* the -inf scalar, one tensor per graph however many masks use it */
    desc_t *all;
    int nall, capall;
    desc_t ops[40];
    int nops;
    int64_t next_uid;
    desc_t plan;
    int64_t ws_bytes;     /* the plan's own workspace (the largest candidate's until tuned) */
    size_t extra_bytes;   /* bwd: dsum + dq_accum, placed after the plan's workspace */
    unsigned long long last_use;
    /* how the plan was chosen, for cuda_attention_cudnn_describe */
    double build_s;       /* host seconds to build the graph and finalise its plan(s) */
    int nheur;            /* engine configurations the heuristics returned */
    int ncand, chosen;    /* finalised candidates; index of the plan (-1 until tuned) */
    desc_t cand[CAND_MAX];
    int64_t cand_ws[CAND_MAX];
    float cand_ms[CAND_MAX];
    char cand_name[CAND_MAX][160];
} graph_t;

static graph_t *g_cache[CACHE_MAX];
static unsigned long long g_clock;

static desc_t create(graph_t *g, cudnnBackendDescriptorType_t type) {
    if (g->nall == g->capall) {
        int cap = g->capall ? 2 * g->capall : 64;
        desc_t *p = (desc_t *)realloc(g->all, (size_t)cap * sizeof(desc_t));
        if (!p) asp_die(ASP_EXIT_FAILURE, "cudnn attention: out of host memory building a graph");
        g->all = p;
        g->capall = cap;
    }
    desc_t d = NULL;
    CUDNN_CHECK(cudnnBackendCreateDescriptor(type, &d));
    g->all[g->nall++] = d;
    return d;
}

static void graph_free(graph_t *g) {
    if (!g) return;
    /* reverse creation order: users before what they reference */
    for (int i = g->nall - 1; i >= 0; i--) CUDNN_CHECK(cudnnBackendDestroyDescriptor(g->all[i]));
    free(g->all);
    free(g);
}

static void set_desc(desc_t d, cudnnBackendAttributeName_t a, desc_t v) {
    CUDNN_CHECK(cudnnBackendSetAttribute(d, a, CUDNN_TYPE_BACKEND_DESCRIPTOR, 1, &v));
}

/* ---- tensors ---- */

static desc_t tensor_r(graph_t *g, int64_t uid, cudnnDataType_t dt, int nd, const int64_t *dims,
                       const int64_t *strides, bool is_virtual, bool by_value, desc_t ragged) {
    desc_t t = create(g, CUDNN_BACKEND_TENSOR_DESCRIPTOR);
    if (ragged) set_desc(t, CUDNN_ATTR_TENSOR_RAGGED_OFFSET_DESC, ragged);
    int64_t align = 16;
    CUDNN_CHECK(cudnnBackendSetAttribute(t, CUDNN_ATTR_TENSOR_DATA_TYPE, CUDNN_TYPE_DATA_TYPE, 1, &dt));
    CUDNN_CHECK(cudnnBackendSetAttribute(t, CUDNN_ATTR_TENSOR_DIMENSIONS, CUDNN_TYPE_INT64, nd, dims));
    CUDNN_CHECK(cudnnBackendSetAttribute(t, CUDNN_ATTR_TENSOR_STRIDES, CUDNN_TYPE_INT64, nd, strides));
    CUDNN_CHECK(cudnnBackendSetAttribute(t, CUDNN_ATTR_TENSOR_UNIQUE_ID, CUDNN_TYPE_INT64, 1, &uid));
    CUDNN_CHECK(cudnnBackendSetAttribute(t, CUDNN_ATTR_TENSOR_BYTE_ALIGNMENT, CUDNN_TYPE_INT64, 1, &align));
    if (is_virtual) CUDNN_CHECK(cudnnBackendSetAttribute(t, CUDNN_ATTR_TENSOR_IS_VIRTUAL, CUDNN_TYPE_BOOLEAN, 1, &is_virtual));
    if (by_value) CUDNN_CHECK(cudnnBackendSetAttribute(t, CUDNN_ATTR_TENSOR_IS_BY_VALUE, CUDNN_TYPE_BOOLEAN, 1, &by_value));
    CUDNN_CHECK(cudnnBackendFinalize(t));
    return t;
}

static desc_t tensor(graph_t *g, int64_t uid, cudnnDataType_t dt, int nd, const int64_t *dims, const int64_t *strides,
                     bool is_virtual, bool by_value) {
    return tensor_r(g, uid, dt, nd, dims, strides, is_virtual, by_value, NULL);
}

/* A 4-d tensor bound in the variant pack, its batches at ragged offsets. */
static desc_t ragged4(graph_t *g, int64_t uid, cudnnDataType_t dt, desc_t ro, int64_t d0, int64_t d1, int64_t d2,
                      int64_t d3, int64_t s0, int64_t s1, int64_t s2, int64_t s3) {
    const int64_t dims[4] = {d0, d1, d2, d3}, strides[4] = {s0, s1, s2, s3};
    return tensor_r(g, uid, dt, 4, dims, strides, uid >= UID_VIRTUAL, false, ro);
}

/* A 4-d tensor bound in the variant pack. */
static desc_t real4(graph_t *g, int64_t uid, cudnnDataType_t dt, int64_t d0, int64_t d1, int64_t d2, int64_t d3,
                    int64_t s0, int64_t s1, int64_t s2, int64_t s3) {
    const int64_t dims[4] = {d0, d1, d2, d3}, strides[4] = {s0, s1, s2, s3};
    return tensor(g, uid, dt, 4, dims, strides, false, false);
}

/* A 4-d intermediate the engine keeps on chip. */
static desc_t virt4(graph_t *g, cudnnDataType_t dt, int64_t d0, int64_t d1, int64_t d2, int64_t d3, int64_t s0,
                    int64_t s1, int64_t s2, int64_t s3) {
    const int64_t dims[4] = {d0, d1, d2, d3}, strides[4] = {s0, s1, s2, s3};
    return tensor(g, g->next_uid++, dt, 4, dims, strides, true, false);
}

/* An fp32 scalar passed by value at execution (host pointer in the variant
 * pack). Pointwise operands must all have the same rank, so it is 4-d. */
static desc_t scalar(graph_t *g, int64_t uid) {
    const int64_t one[4] = {1, 1, 1, 1};
    return tensor(g, uid, CUDNN_DATA_FLOAT, 4, one, one, false, true);
}

/* The [1, hq, s, s] score-shaped intermediate (row-major in the last two dims). */
static desc_t scores(graph_t *g, cudnnDataType_t dt) {
    int64_t s = g->s, hq = g->hq;
    return virt4(g, dt, g->b, hq, s, s, hq * s * s, s * s, s, 1);
}

/* A per-row [1, hq, s, 1] intermediate. */
static desc_t rows(graph_t *g) {
    int64_t s = g->s, hq = g->hq;
    return virt4(g, CUDNN_DATA_FLOAT, g->b, hq, s, 1, hq * s, s, 1, 1);
}

/* ---- operations ---- */

static void add_op(graph_t *g, desc_t op) {
    if (g->nops == (int)(sizeof g->ops / sizeof g->ops[0]))
        asp_die(ASP_EXIT_FAILURE, "cudnn attention: graph has more operations than the builder holds");
    g->ops[g->nops++] = op;
}

static void pointwise(graph_t *g, cudnnPointwiseMode_t mode, cudnnDataType_t math, desc_t x, desc_t b, desc_t t,
                      desc_t y, int64_t axis) {
    desc_t pw = create(g, CUDNN_BACKEND_POINTWISE_DESCRIPTOR);
    CUDNN_CHECK(cudnnBackendSetAttribute(pw, CUDNN_ATTR_POINTWISE_MODE, CUDNN_TYPE_POINTWISE_MODE, 1, &mode));
    CUDNN_CHECK(cudnnBackendSetAttribute(pw, CUDNN_ATTR_POINTWISE_MATH_PREC, CUDNN_TYPE_DATA_TYPE, 1, &math));
    if (mode == CUDNN_POINTWISE_GEN_INDEX)
        CUDNN_CHECK(cudnnBackendSetAttribute(pw, CUDNN_ATTR_POINTWISE_AXIS, CUDNN_TYPE_INT64, 1, &axis));
    CUDNN_CHECK(cudnnBackendFinalize(pw));
    desc_t op = create(g, CUDNN_BACKEND_OPERATION_POINTWISE_DESCRIPTOR);
    set_desc(op, CUDNN_ATTR_OPERATION_POINTWISE_PW_DESCRIPTOR, pw);
    set_desc(op, CUDNN_ATTR_OPERATION_POINTWISE_XDESC, x);
    if (b) set_desc(op, CUDNN_ATTR_OPERATION_POINTWISE_BDESC, b);
    if (t) set_desc(op, CUDNN_ATTR_OPERATION_POINTWISE_TDESC, t);
    set_desc(op, CUDNN_ATTR_OPERATION_POINTWISE_YDESC, y);
    float one = 1.0f;
    CUDNN_CHECK(cudnnBackendSetAttribute(op, CUDNN_ATTR_OPERATION_POINTWISE_ALPHA1, CUDNN_TYPE_FLOAT, 1, &one));
    CUDNN_CHECK(cudnnBackendSetAttribute(op, CUDNN_ATTR_OPERATION_POINTWISE_ALPHA2, CUDNN_TYPE_FLOAT, 1, &one));
    CUDNN_CHECK(cudnnBackendFinalize(op));
    add_op(g, op);
}

/* y = op(x) or op(x, b): fp32 math */
static void pw2(graph_t *g, cudnnPointwiseMode_t mode, desc_t x, desc_t b, desc_t y) {
    pointwise(g, mode, CUDNN_DATA_FLOAT, x, b, NULL, y, 0);
}

static void reduction(graph_t *g, cudnnReduceTensorOp_t rop, desc_t x, desc_t y) {
    desc_t r = create(g, CUDNN_BACKEND_REDUCTION_DESCRIPTOR);
    cudnnDataType_t f = CUDNN_DATA_FLOAT;
    bool det = false;
    CUDNN_CHECK(cudnnBackendSetAttribute(r, CUDNN_ATTR_REDUCTION_COMP_TYPE, CUDNN_TYPE_DATA_TYPE, 1, &f));
    CUDNN_CHECK(cudnnBackendSetAttribute(r, CUDNN_ATTR_REDUCTION_OPERATOR, CUDNN_TYPE_REDUCTION_OPERATOR_TYPE, 1, &rop));
    CUDNN_CHECK(cudnnBackendSetAttribute(r, CUDNN_ATTR_REDUCTION_IS_DETERMINISTIC, CUDNN_TYPE_BOOLEAN, 1, &det));
    CUDNN_CHECK(cudnnBackendFinalize(r));
    desc_t op = create(g, CUDNN_BACKEND_OPERATION_REDUCTION_DESCRIPTOR);
    set_desc(op, CUDNN_ATTR_OPERATION_REDUCTION_DESC, r);
    set_desc(op, CUDNN_ATTR_OPERATION_REDUCTION_XDESC, x);
    set_desc(op, CUDNN_ATTR_OPERATION_REDUCTION_YDESC, y);
    CUDNN_CHECK(cudnnBackendFinalize(op));
    add_op(g, op);
}

/* c = a b over the last two dims; batch dims broadcast (GQA: hq over hkv).
 * In a ragged graph the m, n or k extent of each batch is its document's
 * length (the seq_len tensor) where `over` says so (bits 1 m, 2 n, 4 k). */
enum { OV_M = 1, OV_N = 2, OV_K = 4 };
static void matmul_ov(graph_t *g, desc_t a, desc_t b, desc_t c, int over) {
    desc_t m = create(g, CUDNN_BACKEND_MATMUL_DESCRIPTOR);
    cudnnDataType_t f = CUDNN_DATA_FLOAT;
    CUDNN_CHECK(cudnnBackendSetAttribute(m, CUDNN_ATTR_MATMUL_COMP_TYPE, CUDNN_TYPE_DATA_TYPE, 1, &f));
    CUDNN_CHECK(cudnnBackendFinalize(m));
    desc_t op = create(g, CUDNN_BACKEND_OPERATION_MATMUL_DESCRIPTOR);
    set_desc(op, CUDNN_ATTR_OPERATION_MATMUL_ADESC, a);
    set_desc(op, CUDNN_ATTR_OPERATION_MATMUL_BDESC, b);
    set_desc(op, CUDNN_ATTR_OPERATION_MATMUL_CDESC, c);
    set_desc(op, CUDNN_ATTR_OPERATION_MATMUL_DESC, m);
    if (g->ragged && (over & OV_M)) set_desc(op, CUDNN_ATTR_OPERATION_MATMUL_GEMM_M_OVERRIDE_DESC, g->seq_len);
    if (g->ragged && (over & OV_N)) set_desc(op, CUDNN_ATTR_OPERATION_MATMUL_GEMM_N_OVERRIDE_DESC, g->seq_len);
    if (g->ragged && (over & OV_K)) set_desc(op, CUDNN_ATTR_OPERATION_MATMUL_GEMM_K_OVERRIDE_DESC, g->seq_len);
    CUDNN_CHECK(cudnnBackendFinalize(op));
    add_op(g, op);
}

/* y views x with other dims/strides (the transposes of the backward) */
static void reshape(graph_t *g, desc_t x, desc_t y) {
    desc_t op = create(g, CUDNN_BACKEND_OPERATION_RESHAPE_DESCRIPTOR);
    set_desc(op, CUDNN_ATTR_OPERATION_RESHAPE_XDESC, x);
    set_desc(op, CUDNN_ATTR_OPERATION_RESHAPE_YDESC, y);
    CUDNN_CHECK(cudnnBackendFinalize(op));
    add_op(g, op);
}

/* Top-left causal mask: keep score (t, j) where row t >= column j, else -inf. */
static desc_t causal_mask(graph_t *g, desc_t x) {
    desc_t row = scores(g, CUDNN_DATA_INT32), col = scores(g, CUDNN_DATA_INT32);
    desc_t keep = scores(g, CUDNN_DATA_BOOLEAN), y = scores(g, CUDNN_DATA_FLOAT);
    pointwise(g, CUDNN_POINTWISE_GEN_INDEX, CUDNN_DATA_FLOAT, x, NULL, NULL, row, 2);
    pointwise(g, CUDNN_POINTWISE_GEN_INDEX, CUDNN_DATA_FLOAT, x, NULL, NULL, col, 3);
    pointwise(g, CUDNN_POINTWISE_CMP_GE, CUDNN_DATA_BOOLEAN, row, col, NULL, keep, 0);
    if (!g->neg_inf) g->neg_inf = scalar(g, UID_NEG_INF);
    pointwise(g, CUDNN_POINTWISE_BINARY_SELECT, CUDNN_DATA_FLOAT, x, g->neg_inf, keep, y, 0);
    return y;
}

/* Ragged graphs: scores outside the batch's document (row or column at or
 * past its length) are -inf, as cudnn-frontend's padding mask builds it. */
static desc_t padding_mask(graph_t *g, desc_t x) {
    desc_t row = scores(g, CUDNN_DATA_INT32), col = scores(g, CUDNN_DATA_INT32);
    desc_t rin = scores(g, CUDNN_DATA_BOOLEAN), cin = scores(g, CUDNN_DATA_BOOLEAN), keep = scores(g, CUDNN_DATA_BOOLEAN);
    desc_t y = scores(g, CUDNN_DATA_FLOAT);
    pointwise(g, CUDNN_POINTWISE_GEN_INDEX, CUDNN_DATA_INT32, x, NULL, NULL, row, 2);
    pointwise(g, CUDNN_POINTWISE_GEN_INDEX, CUDNN_DATA_INT32, x, NULL, NULL, col, 3);
    pointwise(g, CUDNN_POINTWISE_CMP_LT, CUDNN_DATA_BOOLEAN, row, g->seq_len, NULL, rin, 0);
    pointwise(g, CUDNN_POINTWISE_CMP_LT, CUDNN_DATA_BOOLEAN, col, g->seq_len, NULL, cin, 0);
    pointwise(g, CUDNN_POINTWISE_LOGICAL_AND, CUDNN_DATA_BOOLEAN, rin, cin, NULL, keep, 0);
    if (!g->neg_inf) g->neg_inf = scalar(g, UID_NEG_INF);
    pointwise(g, CUDNN_POINTWISE_BINARY_SELECT, CUDNN_DATA_FLOAT, x, g->neg_inf, keep, y, 0);
    return y;
}

/* The index tensors of a ragged graph: [b + 1] offsets and [b] lengths. */
static void ragged_index(graph_t *g) {
    int64_t b = g->b;
    g->ro_q = real4(g, UID_RO_Q, CUDNN_DATA_INT32, b + 1, 1, 1, 1, 1, 1, 1, 1);
    g->ro_kv = real4(g, UID_RO_KV, CUDNN_DATA_INT32, b + 1, 1, 1, 1, 1, 1, 1, 1);
    g->ro_stats = real4(g, UID_RO_STATS, CUDNN_DATA_INT32, b + 1, 1, 1, 1, 1, 1, 1, 1);
    g->seq_len = real4(g, UID_SEQ_LEN, CUDNN_DATA_INT32, b, 1, 1, 1, 1, 1, 1, 1);
}

/* ---- the two graphs ----
 * One builder per direction for both layouts: dense (one sequence, b = 1,
 * lse head-major [hq, s]) and ragged (packed documents as the batch: b
 * documents of at most s rows at ragged offsets, their lengths bounding the
 * matmuls (matmul_ov) and a padding mask before the causal one; stats and
 * the backward's row sums token-major [T, hq]). */

/* A bound 4-d tensor [b, d1, d2, d3]: at the ragged offsets `ro` in a ragged
 * graph, plain (b = 1) in a dense one. */
static desc_t io4(graph_t *g, int64_t uid, cudnnDataType_t dt, desc_t ro, int64_t d1, int64_t d2, int64_t d3,
                  int64_t s0, int64_t s1, int64_t s2, int64_t s3) {
    if (g->ragged) return ragged4(g, uid, dt, ro, g->b, d1, d2, d3, s0, s1, s2, s3);
    return real4(g, uid, dt, 1, d1, d2, d3, s0, s1, s2, s3);
}

/* fp32 per-row statistics [b, hq, s, 1]: lse [hq, s] dense, [T, hq] ragged. */
static desc_t stats4(graph_t *g, int64_t uid) {
    int64_t s = g->s, hq = g->hq;
    if (g->ragged) return ragged4(g, uid, CUDNN_DATA_FLOAT, g->ro_stats, g->b, hq, s, 1, s * hq, 1, hq, 1);
    return real4(g, uid, CUDNN_DATA_FLOAT, 1, hq, s, 1, hq * s, s, 1, 1);
}

/* A ragged graph masks the scores outside each document first. */
static desc_t pad(graph_t *g, desc_t x) { return g->ragged ? padding_mask(g, x) : x; }

/* O = softmax(mask(scale Q K^T)) V, stats = max + log(sum exp) (natural log) */
static void build_fwd(graph_t *g) {
    int64_t s = g->s, hq = g->hq, hkv = g->hkv, hd = g->hd;
    const cudnnDataType_t bf = CUDNN_DATA_BFLOAT16, f = CUDNN_DATA_FLOAT;
    if (g->ragged) ragged_index(g);
    desc_t q = io4(g, UID_Q, bf, g->ro_q, hq, s, hd, s * hq * hd, hd, hq * hd, 1);
    desc_t kt = io4(g, UID_K, bf, g->ro_kv, hkv, hd, s, s * hkv * hd, hd, 1, hkv * hd);
    desc_t v = io4(g, UID_V, bf, g->ro_kv, hkv, s, hd, s * hkv * hd, hd, hkv * hd, 1);
    desc_t o = io4(g, UID_O, bf, g->ro_q, hq, s, hd, s * hq * hd, hd, hq * hd, 1);
    desc_t stats = stats4(g, UID_STATS);
    desc_t scale = scalar(g, UID_SCALE);

    desc_t sc = scores(g, f), sc1 = scores(g, f);
    matmul_ov(g, q, kt, sc, OV_M | OV_N);
    pw2(g, CUDNN_POINTWISE_MUL, sc, scale, sc1);
    desc_t sm = causal_mask(g, pad(g, sc1));
    desc_t mx = rows(g), sub = scores(g, f), ex = scores(g, f), sum = rows(g), lg = rows(g);
    reduction(g, CUDNN_REDUCE_TENSOR_MAX, sm, mx);
    pw2(g, CUDNN_POINTWISE_SUB, sm, mx, sub);
    pw2(g, CUDNN_POINTWISE_EXP, sub, NULL, ex);
    reduction(g, CUDNN_REDUCE_TENSOR_ADD, ex, sum);
    pw2(g, CUDNN_POINTWISE_LOG, sum, NULL, lg);
    pw2(g, CUDNN_POINTWISE_ADD, mx, lg, stats);
    desc_t p = scores(g, bf);   /* the second matmul takes P in the I/O type */
    pw2(g, CUDNN_POINTWISE_DIV, ex, sum, p);
    matmul_ov(g, p, v, o, OV_M | OV_K);
}

/* dK or dV (dst) = x^T y over the query heads, summed per KV head with GQA
 * (a head reduction of the [b, hq, s, hd] product). */
static void kv_grad(graph_t *g, desc_t xt, desc_t y, desc_t dst) {
    int64_t s = g->s, hq = g->hq, hd = g->hd;
    if (hq == g->hkv) {
        matmul_ov(g, xt, y, dst, OV_M | OV_K);
        return;
    }
    desc_t full = virt4(g, CUDNN_DATA_BFLOAT16, g->b, hq, s, hd, hq * s * hd, s * hd, hd, 1);
    matmul_ov(g, xt, y, full, OV_M | OV_K);
    reduction(g, CUDNN_REDUCE_TENSOR_ADD, full, dst);
}

/* dV = P^T dO, dP = dO V^T, dS = P (dP - rowsum(dO O)) scale, dQ = dS K,
 * dK = dS^T Q; GQA sums the query heads of a group by a head reduction. The
 * row sums and the fp32 dQ accumulator are bound in the workspace (ragged:
 * at the same offsets as stats and q). */
static void build_bwd(graph_t *g) {
    int64_t s = g->s, hq = g->hq, hkv = g->hkv, hd = g->hd, b = g->b;
    const cudnnDataType_t bf = CUDNN_DATA_BFLOAT16, f = CUDNN_DATA_FLOAT;
    if (g->ragged) ragged_index(g);
    desc_t q = io4(g, UID_Q, bf, g->ro_q, hq, s, hd, s * hq * hd, hd, hq * hd, 1);
    desc_t kt = io4(g, UID_K, bf, g->ro_kv, hkv, hd, s, s * hkv * hd, hd, 1, hkv * hd);
    desc_t vt = io4(g, UID_V, bf, g->ro_kv, hkv, hd, s, s * hkv * hd, hd, 1, hkv * hd);
    desc_t o = io4(g, UID_O, bf, g->ro_q, hq, s, hd, s * hq * hd, hd, hq * hd, 1);
    desc_t dout = io4(g, UID_DO, bf, g->ro_q, hq, s, hd, s * hq * hd, hd, hq * hd, 1);
    desc_t stats = stats4(g, UID_STATS);
    desc_t dq = io4(g, UID_DQ, bf, g->ro_q, hq, s, hd, s * hq * hd, hd, hq * hd, 1);
    desc_t dk = io4(g, UID_DK, bf, g->ro_kv, hkv, s, hd, s * hkv * hd, hd, hkv * hd, 1);
    desc_t dv = io4(g, UID_DV, bf, g->ro_kv, hkv, s, hd, s * hkv * hd, hd, hkv * hd, 1);
    desc_t dsum = stats4(g, UID_DSUM);
    /* the accumulator: head-major [hq, s, hd] dense, [T, hq, hd] like q ragged */
    desc_t dq_acc = g->ragged ? io4(g, UID_DQ_ACCUM, f, g->ro_q, hq, s, hd, s * hq * hd, hd, hq * hd, 1)
                              : io4(g, UID_DQ_ACCUM, f, NULL, hq, s, hd, hq * s * hd, s * hd, hd, 1);
    desc_t scale = scalar(g, UID_SCALE);

    /* rowsum(dO * O) */
    desc_t doo = virt4(g, f, b, hq, s, hd, hq * s * hd, s * hd, g->ragged ? hd : hq * hd, 1), dr = rows(g);
    pw2(g, CUDNN_POINTWISE_MUL, dout, o, doo);
    reduction(g, CUDNN_REDUCE_TENSOR_ADD, doo, dr);
    pw2(g, CUDNN_POINTWISE_MUL, dr, scalar(g, UID_ONE), dsum);

    /* P = exp(mask(scale Q K^T - stats)) */
    desc_t sc = scores(g, f), sc1 = scores(g, f), sc2 = scores(g, f);
    matmul_ov(g, q, kt, sc, OV_M | OV_N);
    pw2(g, CUDNN_POINTWISE_MUL, sc, scale, sc1);
    pw2(g, CUDNN_POINTWISE_SUB, pad(g, sc1), stats, sc2);
    desc_t sm = causal_mask(g, sc2);
    desc_t p = scores(g, f);
    pw2(g, CUDNN_POINTWISE_EXP, sm, NULL, p);

    /* dV = P^T dO */
    desc_t pt = virt4(g, bf, b, hq, s, s, hq * s * s, s * s, 1, s);
    reshape(g, p, pt);
    kv_grad(g, pt, dout, dv);

    /* dS = (dO V^T - dsum) P scale */
    desc_t dp = scores(g, f), ds1 = scores(g, f), ds2 = scores(g, f), ds = scores(g, f);
    matmul_ov(g, dout, vt, dp, OV_M | OV_N);
    pw2(g, CUDNN_POINTWISE_SUB, dp, dsum, ds1);
    pw2(g, CUDNN_POINTWISE_MUL, ds1, p, ds2);
    pw2(g, CUDNN_POINTWISE_MUL, ds2, scale, ds);

    /* dK = dS^T Q */
    desc_t dst = virt4(g, bf, b, hq, s, s, hq * s * s, s * s, 1, s);
    reshape(g, ds, dst);
    kv_grad(g, dst, q, dk);

    /* dQ = dS K, accumulated in fp32, then converted */
    const int64_t kdims[4] = {b, hkv, s, hd}, kstr[4] = {s * hkv * hd, hd, hkv * hd, 1};
    desc_t kr = tensor_r(g, g->next_uid++, f, 4, kdims, kstr, true, false, g->ragged ? g->ro_kv : NULL);
    reshape(g, kt, kr);
    matmul_ov(g, ds, kr, dq_acc, OV_M | OV_K);
    pw2(g, CUDNN_POINTWISE_IDENTITY, dq_acc, NULL, dq);
}

/* ---- plans ---- */

static void soft_err(char *err, size_t errlen, const char *what, cudnnStatus_t st) {
    char msg[1024];
    cudnnGetLastErrorString(msg, sizeof msg);
    snprintf(err, errlen, "%s: %s%s%s", what, cudnnGetErrorString(st), msg[0] ? ": " : "", msg);
}

/* "engine 8 knobs 2=1,14=2 notes 0" for an engine configuration: the
 * engine's global index, its knob choices (cudnnBackendKnobType_t = value)
 * and behaviour notes. Introspection only, so failures print "?". */
static void cfg_name(graph_t *g, desc_t cfg, char *out, size_t len) {
    desc_t eng = create(g, CUDNN_BACKEND_ENGINE_DESCRIPTOR);
    int64_t n = 0, idx = -1;
    size_t at = 0;
    out[0] = 0;
    if (cudnnBackendGetAttribute(cfg, CUDNN_ATTR_ENGINECFG_ENGINE, CUDNN_TYPE_BACKEND_DESCRIPTOR, 1, &n, &eng) !=
            CUDNN_STATUS_SUCCESS ||
        cudnnBackendGetAttribute(eng, CUDNN_ATTR_ENGINE_GLOBAL_INDEX, CUDNN_TYPE_INT64, 1, &n, &idx) !=
            CUDNN_STATUS_SUCCESS) {
        snprintf(out, len, "engine ?");
        return;
    }
    at += (size_t)snprintf(out + at, len - at, "engine %lld knobs", (long long)idx);
    desc_t kc[CUDNN_KNOB_TYPE_COUNTS];
    for (int i = 0; i < CUDNN_KNOB_TYPE_COUNTS; i++) kc[i] = create(g, CUDNN_BACKEND_KNOB_CHOICE_DESCRIPTOR);
    int64_t nk = 0;
    if (cudnnBackendGetAttribute(cfg, CUDNN_ATTR_ENGINECFG_KNOB_CHOICES, CUDNN_TYPE_BACKEND_DESCRIPTOR,
                                 CUDNN_KNOB_TYPE_COUNTS, &nk, kc) != CUDNN_STATUS_SUCCESS)
        nk = -1;
    if (nk <= 0 && at < len) at += (size_t)snprintf(out + at, len - at, nk < 0 ? " ?" : " none");
    for (int64_t i = 0; i < nk && at < len; i++) {
        cudnnBackendKnobType_t type;
        int64_t val = 0, m = 0;
        if (cudnnBackendGetAttribute(kc[i], CUDNN_ATTR_KNOB_CHOICE_KNOB_TYPE, CUDNN_TYPE_KNOB_TYPE, 1, &m, &type) !=
                CUDNN_STATUS_SUCCESS ||
            cudnnBackendGetAttribute(kc[i], CUDNN_ATTR_KNOB_CHOICE_KNOB_VALUE, CUDNN_TYPE_INT64, 1, &m, &val) !=
                CUDNN_STATUS_SUCCESS)
            at += (size_t)snprintf(out + at, len - at, " ?");
        else
            at += (size_t)snprintf(out + at, len - at, "%s%d=%lld", i ? "," : " ", (int)type, (long long)val);
    }
    cudnnBackendBehaviorNote_t notes[CUDNN_BEHAVIOR_NOTE_TYPE_COUNT];
    int64_t nn = 0;
    if (at < len &&
        cudnnBackendGetAttribute(eng, CUDNN_ATTR_ENGINE_BEHAVIOR_NOTE, CUDNN_TYPE_BEHAVIOR_NOTE,
                                 CUDNN_BEHAVIOR_NOTE_TYPE_COUNT, &nn, notes) == CUDNN_STATUS_SUCCESS && nn > 0) {
        at += (size_t)snprintf(out + at, len - at, " notes");
        for (int64_t i = 0; i < nn && at < len; i++)
            at += (size_t)snprintf(out + at, len - at, "%s%d", i ? "," : " ", (int)notes[i]);
    }
}

/* The engine configurations heuristic `mode` returns for the finalised
 * operation graph, appended to cfg[*n] (cap entries at most). A mode that
 * fails or returns nothing adds nothing: the caller decides what is fatal. */
static void heur_configs(graph_t *g, desc_t og, cudnnBackendHeurMode_t mode, desc_t *cfg, int *n, int cap) {
    desc_t heur = create(g, CUDNN_BACKEND_ENGINEHEUR_DESCRIPTOR);
    set_desc(heur, CUDNN_ATTR_ENGINEHEUR_OPERATION_GRAPH, og);
    CUDNN_CHECK(cudnnBackendSetAttribute(heur, CUDNN_ATTR_ENGINEHEUR_MODE, CUDNN_TYPE_HEUR_MODE, 1, &mode));
    if (cudnnBackendFinalize(heur) != CUDNN_STATUS_SUCCESS) return;
    int64_t avail = 0;
    CUDNN_CHECK(cudnnBackendGetAttribute(heur, CUDNN_ATTR_ENGINEHEUR_RESULTS, CUDNN_TYPE_BACKEND_DESCRIPTOR, 0, &avail,
                                         NULL));
    int64_t want = avail < (int64_t)(cap - *n) ? avail : (int64_t)(cap - *n);
    if (want <= 0) return;
    for (int64_t i = 0; i < want; i++) cfg[*n + i] = create(g, CUDNN_BACKEND_ENGINECFG_DESCRIPTOR);
    int64_t got = 0;
    CUDNN_CHECK(cudnnBackendGetAttribute(heur, CUDNN_ATTR_ENGINEHEUR_RESULTS, CUDNN_TYPE_BACKEND_DESCRIPTOR, want, &got,
                                         cfg + *n));
    *n += (int)got;
}

/* The operation graph, then engine configurations finalised into execution
 * plans. `current`: mode A's configurations in order until one finalises (as
 * cudnn-frontend's default build policy does). `tuned`: every distinct
 * configuration of modes A and B that finalises, up to CAND_MAX, timed on the
 * first execution. 0, or -1 with err set when no engine takes the graph. */
static int make_plan(graph_t *g, char *err, size_t errlen) {
    desc_t og = create(g, CUDNN_BACKEND_OPERATIONGRAPH_DESCRIPTOR);
    CUDNN_CHECK(cudnnBackendSetAttribute(og, CUDNN_ATTR_OPERATIONGRAPH_HANDLE, CUDNN_TYPE_HANDLE, 1, &g_cuda.cudnn));
    CUDNN_CHECK(cudnnBackendSetAttribute(og, CUDNN_ATTR_OPERATIONGRAPH_OPS, CUDNN_TYPE_BACKEND_DESCRIPTOR, g->nops,
                                         g->ops));
    cudnnStatus_t st = cudnnBackendFinalize(og);
    if (st != CUDNN_STATUS_SUCCESS) {
        soft_err(err, errlen, "operation graph not accepted", st);
        return -1;
    }
    enum { CFG_MAX = 64 };
    desc_t cfg[CFG_MAX];
    int n = 0;
    heur_configs(g, og, CUDNN_HEUR_MODE_A, cfg, &n, CFG_MAX);
    if (g->variant == CUDNN_GRAPH_TUNED) heur_configs(g, og, CUDNN_HEUR_MODE_B, cfg, &n, CFG_MAX);
    g->nheur = n;
    if (n <= 0) {
        snprintf(err, errlen, "the engine heuristic returned no engine configuration");
        return -1;
    }
    int want = g->variant == CUDNN_GRAPH_TUNED ? CAND_MAX : 1;
    snprintf(err, errlen, "none of the %d engine configurations finalised", n);
    for (int i = 0; i < n && g->ncand < want; i++) {
        char name[160];
        cfg_name(g, cfg[i], name, sizeof name);
        int dup = 0;   /* modes A and B often return the same configuration */
        for (int j = 0; j < g->ncand && !dup; j++) dup = strcmp(g->cand_name[j], name) == 0 && strcmp(name, "engine ?") != 0;
        if (dup) continue;
        desc_t plan = create(g, CUDNN_BACKEND_EXECUTION_PLAN_DESCRIPTOR);
        CUDNN_CHECK(cudnnBackendSetAttribute(plan, CUDNN_ATTR_EXECUTION_PLAN_HANDLE, CUDNN_TYPE_HANDLE, 1, &g_cuda.cudnn));
        set_desc(plan, CUDNN_ATTR_EXECUTION_PLAN_ENGINE_CONFIG, cfg[i]);
        st = cudnnBackendFinalize(plan);
        if (st != CUDNN_STATUS_SUCCESS) {
            char what[96];
            snprintf(what, sizeof what, "none of the %d engine configurations finalised; the last said", n);
            soft_err(err, errlen, what, st);
            continue;
        }
        int64_t ws = 0, m = 0;
        CUDNN_CHECK(cudnnBackendGetAttribute(plan, CUDNN_ATTR_EXECUTION_PLAN_WORKSPACE_SIZE, CUDNN_TYPE_INT64, 1, &m,
                                             &ws));
        int c = g->ncand++;
        g->cand[c] = plan;
        g->cand_ws[c] = ws > 0 ? ws : 0;
        g->cand_ms[c] = -1;
        snprintf(g->cand_name[c], sizeof g->cand_name[c], "%s", name);
    }
    if (g->ncand == 0) return -1;
    /* One candidate needs no timing; several share the largest workspace until tuned. */
    g->chosen = g->ncand == 1 ? 0 : -1;
    g->plan = g->cand[0];
    g->ws_bytes = 0;
    for (int c = 0; c < g->ncand; c++)
        if (g->cand_ws[c] > g->ws_bytes) g->ws_bytes = g->cand_ws[c];
    return 0;
}

static const char *graph_name(int bwd) { return bwd ? "backward" : "forward"; }

/* Shapes outside what cuDNN's fused attention takes (its support surface for
 * bf16 on sm_90), refused before any graph is built. */
static int shape_supported(int64_t s, int64_t hq, int64_t hkv, int64_t hd, char *why, size_t whylen) {
    if (s <= 0 || hq <= 0 || hkv <= 0 || hd <= 0) {
        snprintf(why, whylen, "s=%lld hq=%lld hkv=%lld hd=%lld must all be positive", (long long)s, (long long)hq,
                 (long long)hkv, (long long)hd);
        return 0;
    }
    if (hq % hkv) {
        snprintf(why, whylen, "%lld query heads are not a multiple of %lld kv heads", (long long)hq, (long long)hkv);
        return 0;
    }
    if (hd % 8 || hd > 128) {
        snprintf(why, whylen, "head dim %lld: cuDNN's fused attention takes multiples of 8 up to 128", (long long)hd);
        return 0;
    }
    if (s < 2) {
        snprintf(why, whylen, "s = %lld: cuDNN's fused attention backward does not take s_q = s_kv = 1", (long long)s);
        return 0;
    }
    return 1;
}

/* The cached plan for the shape, built on first use. NULL with err set when
 * the shape is refused or no engine takes the graph. */
static graph_t *get_plan_r(int bwd, int ragged, int64_t b, int64_t s, int64_t hq, int64_t hkv, int64_t hd, char *err,
                           size_t errlen) {
    int free_slot = -1, oldest = 0;
    for (int i = 0; i < CACHE_MAX; i++) {
        graph_t *c = g_cache[i];
        if (!c) {
            if (free_slot < 0) free_slot = i;
            continue;
        }
        if (c->bwd == bwd && c->variant == g_cuda.cudnn_graph && c->s == s && c->hq == hq && c->hkv == hkv &&
            c->hd == hd && c->ragged == ragged && c->b == b) {
            c->last_use = ++g_clock;
            return c;
        }
        if (g_cache[oldest] && c->last_use < g_cache[oldest]->last_use) oldest = i;
    }
    if (!shape_supported(s, hq, hkv, hd, err, errlen)) return NULL;
    graph_t *g = (graph_t *)calloc(1, sizeof *g);
    if (!g) asp_die(ASP_EXIT_FAILURE, "cudnn attention: out of host memory for a plan");
    g->bwd = bwd;
    g->variant = g_cuda.cudnn_graph;
    g->s = s;
    g->hq = hq;
    g->hkv = hkv;
    g->hd = hd;
    g->ragged = ragged;
    g->b = b;
    g->next_uid = UID_VIRTUAL;
    double t0 = asp_now();
    if (bwd) build_bwd(g);
    else build_fwd(g);
    if (make_plan(g, err, errlen) != 0) {
        graph_free(g);
        return NULL;
    }
    g->build_s = asp_now() - t0;
    if (bwd && !ragged) {   /* a ragged graph's accumulators are sized by the call's rows */
        size_t dsum = asp_align_up((size_t)hq * (size_t)s * sizeof(float), ALIGN_BYTES);
        g->extra_bytes = dsum + asp_align_up((size_t)hq * (size_t)s * (size_t)hd * sizeof(float), ALIGN_BYTES);
    }
    /* a full cache (many distinct shapes) drops the least recently used plan */
    int slot = free_slot;
    if (slot < 0) {
        slot = oldest;
        CUDA_CHECK(cudaStreamSynchronize(g_cuda.stream));
        graph_free(g_cache[slot]);
    }
    g->last_use = ++g_clock;
    g_cache[slot] = g;
    return g;
}

static graph_t *get_plan(int bwd, int64_t s, int64_t hq, int64_t hkv, int64_t hd, char *err, size_t errlen) {
    return get_plan_r(bwd, 0, 1, s, hq, hkv, hd, err, errlen);
}

static graph_t *need_plan(int bwd, int64_t s, int64_t hq, int64_t hkv, int64_t hd) {
    char err[1200];
    graph_t *g = get_plan(bwd, s, hq, hkv, hd, err, sizeof err);
    if (!g)
        asp_die(ASP_EXIT_FAILURE, "cudnn attention: no cuDNN engine for the causal GQA %s graph with s=%lld hq=%lld "
                "hkv=%lld hd=%lld (bf16, %s): %s; run with ASP_ATTENTION=simple for this model",
                graph_name(bwd), (long long)s, (long long)hq, (long long)hkv, (long long)hd, g_cuda.name, err);
    return g;
}

static void run_plan(desc_t plan, desc_t vp, void *clear, size_t clear_bytes) {
    if (clear_bytes) CUDA_CHECK(cudaMemsetAsync(clear, 0, clear_bytes, g_cuda.stream));
    CUDNN_CHECK(cudnnBackendExecute(g_cuda.cudnn, plan, vp));
}

/* Times every candidate plan on the call's own buffers (one warm-up run, then
 * the median of TUNE_RUNS) and keeps the fastest. The outputs are written by
 * each run and again by the real run that follows, so tuning changes nothing
 * but the plan. */
static void tune(graph_t *g, desc_t vp, void *clear, size_t clear_bytes) {
    int best = 0;
    for (int c = 0; c < g->ncand; c++) {
        run_plan(g->cand[c], vp, clear, clear_bytes);
        float ms[TUNE_RUNS];
        for (int r = 0; r < TUNE_RUNS; r++) {
            void *a = cuda_event_record();
            run_plan(g->cand[c], vp, clear, clear_bytes);
            ms[r] = cuda_event_elapsed_ms(a, cuda_event_record());
        }
        for (int i = 1; i < TUNE_RUNS; i++)   /* sort for the median */
            for (int j = i; j > 0 && ms[j] < ms[j - 1]; j--) {
                float t = ms[j];
                ms[j] = ms[j - 1];
                ms[j - 1] = t;
            }
        g->cand_ms[c] = ms[TUNE_RUNS / 2];
        if (g->cand_ms[c] < g->cand_ms[best]) best = c;
    }
    g->chosen = best;
    g->plan = g->cand[best];
    g->ws_bytes = g->cand_ws[best];
}

/* Runs the graph's plan (tuning it first if still undecided). `clear` (fp32
 * accumulator) is zeroed before every run. */
static void execute(graph_t *g, int n, const int64_t *uids, void **ptrs, void *workspace, void *clear,
                    size_t clear_bytes) {
    desc_t vp = NULL;
    CUDNN_CHECK(cudnnBackendCreateDescriptor(CUDNN_BACKEND_VARIANT_PACK_DESCRIPTOR, &vp));
    CUDNN_CHECK(cudnnBackendSetAttribute(vp, CUDNN_ATTR_VARIANT_PACK_UNIQUE_IDS, CUDNN_TYPE_INT64, n, uids));
    CUDNN_CHECK(cudnnBackendSetAttribute(vp, CUDNN_ATTR_VARIANT_PACK_DATA_POINTERS, CUDNN_TYPE_VOID_PTR, n, ptrs));
    CUDNN_CHECK(cudnnBackendSetAttribute(vp, CUDNN_ATTR_VARIANT_PACK_WORKSPACE, CUDNN_TYPE_VOID_PTR, 1, &workspace));
    CUDNN_CHECK(cudnnBackendFinalize(vp));
    if (g->chosen < 0) tune(g, vp, clear, clear_bytes);
    run_plan(g->plan, vp, clear, clear_bytes);
    CUDNN_CHECK(cudnnBackendDestroyDescriptor(vp));
}

static void check_aligned(const char *graph, const char *name, const void *p) {
    if (!cuda_aligned16(p))
        asp_die(ASP_EXIT_FAILURE, "cudnn attention %s: %s at %p is not 16-byte aligned as the graph declares; "
                "allocate it with backend alloc or run with ASP_ATTENTION=simple", graph, name, p);
}

/* ---- packed documents: the ragged graphs ---- */

/* A ragged plan serves b documents of at most sp rows each, addressed through
 * ragged offsets; the batches past the call's documents have length 0. Its
 * workspace grows with b x sp, so the documents of a sample go to the graphs
 * in groups: contiguous runs of documents with sp the longest one's rows
 * rounded up to a power of two (at least 64) and b = cap / sp, where cap =
 * 2 x pow2(T) bounds b x sp. One plan per sp serves every sample, and the
 * scratch the plan reserves (cuda_attention_cudnn_scratch_bytes with
 * documents) holds the largest group, a single document of up to T rows
 * (b = 2, sp = cap / 2). */
static int64_t pow2_at_least(int64_t x, int64_t lo) {
    int64_t p = lo;
    while (p < x) p *= 2;
    return p;
}

static int64_t ragged_cap(int64_t T) { return 2 * pow2_at_least(T, 64); }

/* The index tensors of documents cu[0..n] (element offsets into the whole
 * sample's buffers, so a group is addressed in place), padded to b. */
__global__ void k_ragged_index(int32_t *ro_q, int32_t *ro_kv, int32_t *ro_st, int32_t *len, const int32_t *cu,
                               int64_t n, int64_t b, int64_t hq, int64_t hkv, int64_t hd) {
    int64_t i = (int64_t)blockIdx.x * blockDim.x + threadIdx.x;
    if (i > b) return;
    int64_t at = cu[i < n ? i : n];
    ro_q[i] = (int32_t)(at * hq * hd);
    ro_kv[i] = (int32_t)(at * hkv * hd);
    ro_st[i] = (int32_t)(at * hq);
    if (i < b) len[i] = i < n ? (int32_t)(cu[i + 1] - cu[i]) : 0;
}

/* lse [hq, T] <-> the graphs' token-major stats [T, hq] */
__global__ void k_stats_to_lse(float *lse, const float *st, int64_t T, int64_t hq) {
    int64_t i = (int64_t)blockIdx.x * blockDim.x + threadIdx.x;
    if (i >= T * hq) return;
    int64_t t = i / hq, h = i % hq;
    lse[h * T + t] = st[i];
}
__global__ void k_lse_to_stats(float *st, const float *lse, int64_t T, int64_t hq) {
    int64_t i = (int64_t)blockIdx.x * blockDim.x + threadIdx.x;
    if (i >= T * hq) return;
    int64_t t = i / hq, h = i % hq;
    st[i] = lse[h * T + t];
}

/* Each index tensor starts 16-byte aligned, as every tensor of the graphs declares. */
static size_t ragged_index_stride(int64_t b) { return asp_align_up((size_t)(b + 1) * sizeof(int32_t), 16); }
static size_t ragged_index_bytes(int64_t b) { return asp_align_up(4 * ragged_index_stride(b), ALIGN_BYTES); }

/* The scratch of a ragged call: the plan's workspace, the index tensors, the
 * whole sample's token-major stats [T, hq], then `extra` bytes (the
 * backward's row sums and dQ accumulator, also the whole sample's). */
static size_t ragged_need(const graph_t *g, int64_t T, int64_t hq, size_t extra) {
    return asp_align_up((size_t)(g->ws_bytes > 0 ? g->ws_bytes : 1), ALIGN_BYTES) + ragged_index_bytes(g->b) +
           asp_align_up((size_t)T * (size_t)hq * sizeof(float), ALIGN_BYTES) + extra;
}

static graph_t *ragged_plan(int bwd, int64_t b, int64_t sp, int64_t hq, int64_t hkv, int64_t hd, int64_t n_docs) {
    char err[1200];
    graph_t *g = get_plan_r(bwd, 1, b, sp, hq, hkv, hd, err, sizeof err);
    if (!g)
        asp_die(ASP_EXIT_FAILURE, "cudnn attention: no cuDNN engine for the ragged (packed documents) causal GQA %s "
                "graph for %lld documents (batch %lld of at most %lld rows) hq=%lld hkv=%lld hd=%lld (bf16, %s): %s; "
                "run with ASP_ATTENTION=simple for packed documents", graph_name(bwd), (long long)n_docs,
                (long long)b, (long long)sp, (long long)hq, (long long)hkv, (long long)hd, g_cuda.name, err);
    return g;
}

/* The batch for groups of documents of at most sp rows: cap / sp, halved
 * while its plan's scratch exceeds what the plan reserved (a workspace that
 * is not linear in b x sp); at least 2. */
static int64_t ragged_batch(int bwd, int64_t T, int64_t sp, int64_t hq, int64_t hkv, int64_t hd, size_t extra,
                            int64_t n_docs) {
    int64_t b = ragged_cap(T) / sp;
    if (b < 2) b = 2;
    while (g_cuda.scratch_planned && b > 2 &&
           ragged_need(ragged_plan(bwd, b, sp, hq, hkv, hd, n_docs), T, hq, extra) > g_cuda.scratch_bytes)
        b /= 2;
    return b;
}

/* One group of documents [i, j) and the plan that runs it. */
typedef struct {
    graph_t *g;
    int64_t i, j;
} ragged_group_t;

/* The groups of the sample's documents, greedy and in order, in a buffer
 * kept between calls; their scratch laid out: the largest group's workspace
 * and index tensors first, then the whole sample's stats and `extra` bytes,
 * the same for every group. */
typedef struct {
    ragged_group_t *grp;
    int64_t n;
    char *base;        /* workspace, then index tensors */
    float *stats;      /* [T, hq] */
    char *rest;        /* `extra` bytes */
} ragged_call_t;

static ragged_group_t *g_groups;
static int64_t g_groups_cap;

static ragged_call_t ragged_setup(int bwd, int64_t T, int64_t hq, int64_t hkv, int64_t hd, const attn_docs_t *docs,
                                  size_t extra) {
    if (T * hq * hd > INT32_MAX)
        asp_die(ASP_EXIT_FAILURE, "cudnn attention: %lld rows x %lld heads x %lld do not fit the ragged graphs' int32 "
                "offsets; raise the SP degree (fewer heads per rank) or run with ASP_ATTENTION=simple",
                (long long)T, (long long)hq, (long long)hd);
    const int32_t *cu = docs->cu_host;
    const int64_t n = docs->n_docs;
    if (n > g_groups_cap) {
        ragged_group_t *grp = (ragged_group_t *)realloc(g_groups, (size_t)n * sizeof *grp);
        if (!grp) asp_die(ASP_EXIT_FAILURE, "cudnn attention: out of host memory for %lld document groups", (long long)n);
        g_groups = grp;
        g_groups_cap = n;
    }
    ragged_call_t c;
    memset(&c, 0, sizeof c);
    c.grp = g_groups;
    size_t head = 0;
    for (int64_t i = 0; i < n;) {
        int64_t sp = pow2_at_least(cu[i + 1] - cu[i], 64), b = ragged_batch(bwd, T, sp, hq, hkv, hd, extra, n);
        int64_t j = i + 1;
        for (; j < n; j++) {
            int64_t sp2 = pow2_at_least(cu[j + 1] - cu[j], 64);
            if (sp2 < sp) sp2 = sp;
            int64_t b2 = sp2 == sp ? b : ragged_batch(bwd, T, sp2, hq, hkv, hd, extra, n);
            if (j - i + 1 > b2) break;
            sp = sp2;
            b = b2;
        }
        graph_t *g = ragged_plan(bwd, b, sp, hq, hkv, hd, n);
        size_t h = asp_align_up((size_t)(g->ws_bytes > 0 ? g->ws_bytes : 1), ALIGN_BYTES) + ragged_index_bytes(b);
        if (h > head) head = h;
        c.grp[c.n++] = (ragged_group_t){g, i, j};
        i = j;
    }
    size_t stb = asp_align_up((size_t)T * (size_t)hq * sizeof(float), ALIGN_BYTES);
    c.base = (char *)cuda_scratch(head + stb + extra);
    c.stats = (float *)(c.base + head);
    c.rest = c.base + head + stb;
    return c;
}

/* Group k's index tensors, written behind its workspace; returns them in ix[4]
 * (ro_q, ro_kv, ro_stats, seq_len). */
static void ragged_index(const ragged_call_t *c, int64_t k, const attn_docs_t *docs, int64_t hq, int64_t hkv,
                         int64_t hd, int32_t *ix[4]) {
    const ragged_group_t *gr = &c->grp[k];
    const int64_t b = gr->g->b;
    size_t is = ragged_index_stride(b);
    char *at = c->base + asp_align_up((size_t)(gr->g->ws_bytes > 0 ? gr->g->ws_bytes : 1), ALIGN_BYTES);
    for (int t = 0; t < 4; t++) ix[t] = (int32_t *)(at + (size_t)t * is);
    k_ragged_index<<<cuda_blocks((size_t)b + 1, 256), 256, 0, g_cuda.stream>>>(
        ix[0], ix[1], ix[2], ix[3], docs->cu + gr->i, gr->j - gr->i, b, hq, hkv, hd);
    CUDA_CHECK_LAUNCH("cudnn attention ragged index");
}

static void ragged_fwd(void *out, float *lse, const void *q, const void *k, const void *v, int64_t T, int64_t hq,
                       int64_t hkv, int64_t hd, float scale, const attn_docs_t *docs) {
    ragged_call_t c = ragged_setup(0, T, hq, hkv, hd, docs, 0);
    float sc = scale, neg_inf = -INFINITY;
    const int64_t uids[11] = {UID_Q, UID_K, UID_V, UID_O, UID_STATS, UID_SCALE, UID_NEG_INF,
                              UID_RO_Q, UID_RO_KV, UID_RO_STATS, UID_SEQ_LEN};
    for (int64_t g = 0; g < c.n; g++) {
        int32_t *ix[4];
        ragged_index(&c, g, docs, hq, hkv, hd, ix);
        void *ptrs[11] = {(void *)q, (void *)k, (void *)v, out, c.stats, &sc, &neg_inf, ix[0], ix[1], ix[2], ix[3]};
        execute(c.grp[g].g, 11, uids, ptrs, c.base, NULL, 0);
    }
    size_t n = (size_t)T * (size_t)hq;
    k_stats_to_lse<<<cuda_blocks(n, 256), 256, 0, g_cuda.stream>>>(lse, c.stats, T, hq);
    CUDA_CHECK_LAUNCH("cudnn attention ragged stats");
}

static void ragged_bwd(void *dq, void *dk, void *dv, const void *dout, const void *q, const void *k, const void *v,
                       const void *out, const float *lse, int64_t T, int64_t hq, int64_t hkv, int64_t hd, float scale,
                       const attn_docs_t *docs) {
    size_t dsum_b = asp_align_up((size_t)T * (size_t)hq * sizeof(float), ALIGN_BYTES);
    size_t acc_b = (size_t)T * (size_t)hq * (size_t)hd * sizeof(float);
    ragged_call_t c = ragged_setup(1, T, hq, hkv, hd, docs, dsum_b + acc_b);
    size_t n = (size_t)T * (size_t)hq;
    k_lse_to_stats<<<cuda_blocks(n, 256), 256, 0, g_cuda.stream>>>(c.stats, lse, T, hq);
    CUDA_CHECK_LAUNCH("cudnn attention ragged stats");
    char *dsum = c.rest, *dq_acc = c.rest + dsum_b;
    float sc = scale, neg_inf = -INFINITY, one = 1.0f;
    const int64_t uids[18] = {UID_Q,  UID_K,  UID_V,  UID_O,  UID_STATS, UID_SCALE, UID_NEG_INF, UID_DO,     UID_DQ,
                              UID_DK, UID_DV, UID_ONE, UID_DSUM, UID_DQ_ACCUM, UID_RO_Q, UID_RO_KV, UID_RO_STATS,
                              UID_SEQ_LEN};
    const size_t row_acc = (size_t)hq * (size_t)hd * sizeof(float);
    for (int64_t g = 0; g < c.n; g++) {
        int32_t *ix[4];
        ragged_index(&c, g, docs, hq, hkv, hd, ix);
        void *ptrs[18] = {(void *)q, (void *)k, (void *)v, (void *)out, c.stats, &sc, &neg_inf, (void *)dout, dq,
                          dk, dv, &one, dsum, dq_acc, ix[0], ix[1], ix[2], ix[3]};
        /* the group's rows of the accumulator are cleared before it runs */
        const int64_t r0 = docs->cu_host[c.grp[g].i], r1 = docs->cu_host[c.grp[g].j];
        execute(c.grp[g].g, 18, uids, ptrs, c.base, dq_acc + (size_t)r0 * row_acc, (size_t)(r1 - r0) * row_acc);
    }
}

extern "C" {

void cuda_attention_cudnn_fwd(void *out, float *lse, const void *q, const void *k, const void *v, int64_t s,
                              int64_t hq, int64_t hkv, int64_t hd, float scale, const attn_docs_t *docs) {
    if (docs && docs->n_docs > 1) {
        ragged_fwd(out, lse, q, k, v, s, hq, hkv, hd, scale, docs);
        return;
    }
    check_aligned("forward", "q", q);
    check_aligned("forward", "k", k);
    check_aligned("forward", "v", v);
    check_aligned("forward", "out", out);
    check_aligned("forward", "lse", lse);
    graph_t *g = need_plan(0, s, hq, hkv, hd);
    void *ws = cuda_scratch(g->ws_bytes > 0 ? (size_t)g->ws_bytes : 1);
    float sc = scale, neg_inf = -INFINITY;
    const int64_t uids[7] = {UID_Q, UID_K, UID_V, UID_O, UID_STATS, UID_SCALE, UID_NEG_INF};
    void *ptrs[7] = {(void *)q, (void *)k, (void *)v, out, lse, &sc, &neg_inf};
    execute(g, 7, uids, ptrs, ws, NULL, 0);
}

void cuda_attention_cudnn_bwd(void *dq, void *dk, void *dv, const void *dout, const void *q, const void *k,
                              const void *v, const void *out, const float *lse, int64_t s, int64_t hq, int64_t hkv,
                              int64_t hd, float scale, const attn_docs_t *docs) {
    if (docs && docs->n_docs > 1) {
        ragged_bwd(dq, dk, dv, dout, q, k, v, out, lse, s, hq, hkv, hd, scale, docs);
        return;
    }
    const void *chk[9] = {dq, dk, dv, dout, q, k, v, out, lse};
    const char *nm[9] = {"dq", "dk", "dv", "dout", "q", "k", "v", "out", "lse"};
    for (int i = 0; i < 9; i++) check_aligned("backward", nm[i], chk[i]);
    graph_t *g = need_plan(1, s, hq, hkv, hd);
    size_t ws_bytes = asp_align_up((size_t)g->ws_bytes, ALIGN_BYTES);
    char *ws = (char *)cuda_scratch(ws_bytes + g->extra_bytes);
    char *dsum = ws + ws_bytes;
    char *dq_acc = dsum + asp_align_up((size_t)hq * (size_t)s * sizeof(float), ALIGN_BYTES);
    float sc = scale, neg_inf = -INFINITY, one = 1.0f;
    const int64_t uids[14] = {UID_Q,  UID_K,  UID_V,  UID_O,   UID_STATS, UID_SCALE,   UID_NEG_INF,
                              UID_DO, UID_DQ, UID_DK, UID_DV, UID_ONE,   UID_DSUM, UID_DQ_ACCUM};
    void *ptrs[14] = {(void *)q, (void *)k, (void *)v, (void *)out, (void *)lse, &sc,  &neg_inf,
                      (void *)dout, dq,     dk,        dv,          &one,        dsum, dq_acc};
    /* cuDNN >= 9.6 clears the dQ accumulator itself; clearing it before each
     * run as well costs one small memset and keeps the result independent of that. */
    execute(g, 14, uids, ptrs, ws, dq_acc, (size_t)hq * (size_t)s * (size_t)hd * sizeof(float));
}

int cuda_attention_cudnn_supported(int64_t s, int64_t hq, int64_t hkv, int64_t hd, char *why, size_t whylen) {
    char err[1200];
    for (int bwd = 0; bwd < 2; bwd++) {
        if (!get_plan(bwd, s, hq, hkv, hd, err, sizeof err)) {
            snprintf(why, whylen, "%s graph: %s", graph_name(bwd), err);
            return 0;
        }
    }
    return 1;
}

int cuda_attention_cudnn_describe(int bwd, int64_t s, int64_t hq, int64_t hkv, int64_t hd, char *buf, size_t len) {
    graph_t *g = NULL;
    for (int i = 0; i < CACHE_MAX && !g; i++) {
        graph_t *c = g_cache[i];
        if (c && c->bwd == bwd && c->variant == g_cuda.cudnn_graph && c->s == s && c->hq == hq && c->hkv == hkv &&
            c->hd == hd)
            g = c;
    }
    if (!g) {
        snprintf(buf, len, "no %s plan cached for s=%lld hq=%lld hkv=%lld hd=%lld", graph_name(bwd), (long long)s,
                 (long long)hq, (long long)hkv, (long long)hd);
        return -1;
    }
    size_t at = (size_t)snprintf(buf, len, "%s %s: built in %.3f s, %d heuristic configs, %d finalised; runs %s",
                                 graph_name(bwd), g->variant == CUDNN_GRAPH_TUNED ? "tuned" : "current", g->build_s,
                                 g->nheur, g->ncand, g->chosen >= 0 ? g->cand_name[g->chosen] : "(not tuned yet)");
    if (g->chosen >= 0 && at < len)
        at += (size_t)snprintf(buf + at, len - at, ", workspace %.1f MiB", (double)g->cand_ws[g->chosen] / 1048576.0);
    for (int c = 0; c < g->ncand && at < len; c++)
        if (g->cand_ms[c] >= 0)
            at += (size_t)snprintf(buf + at, len - at, "%s [%d] %s: %.3f ms", c ? ";" : "; candidates:", c,
                                   g->cand_name[c], (double)g->cand_ms[c]);
    return 0;
}

void cuda_attention_cudnn_shutdown(void) {
    for (int i = 0; i < CACHE_MAX; i++) {
        graph_free(g_cache[i]);
        g_cache[i] = NULL;
    }
    g_clock = 0;
}

}

/* Scratch of the fused graphs at this shape: builds (and caches) both plans,
 * which the first step would build anyway, to learn their workspaces. */
extern "C" size_t cuda_attention_cudnn_scratch_bytes(int64_t s, int64_t hq, int64_t hkv, int64_t hd, int documents) {
    graph_t *f = need_plan(0, s, hq, hkv, hd);
    graph_t *b = need_plan(1, s, hq, hkv, hd);
    size_t fwd = f->ws_bytes > 0 ? (size_t)f->ws_bytes : 1;
    size_t bwd = asp_align_up((size_t)b->ws_bytes, ALIGN_BYTES) + b->extra_bytes;
    size_t need = fwd > bwd ? fwd : bwd;
    if (!documents) return need;
    /* packed documents: the largest group the ragged graphs run, one document
     * of up to s rows (b = 2, sp = cap / 2; ragged_setup); a sample with no
     * EOS runs the dense graphs above */
    const int64_t sp = ragged_cap(s) / 2;
    size_t dsum_b = asp_align_up((size_t)s * (size_t)hq * sizeof(float), ALIGN_BYTES);
    size_t acc_b = (size_t)s * (size_t)hq * (size_t)hd * sizeof(float);
    size_t rf = ragged_need(ragged_plan(0, 2, sp, hq, hkv, hd, 1), s, hq, 0);
    size_t rb = ragged_need(ragged_plan(1, 2, sp, hq, hkv, hd, 1), s, hq, dsum_b + acc_b);
    if (rf > need) need = rf;
    if (rb > need) need = rb;
    return need;
}
