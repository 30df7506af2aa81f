/* The backend op table. The executor calls every piece of math through it;
 * src/cpu/ (fp32 reference) and cuda/ (bf16 storage, fp32 accumulation)
 * implement the same table. Backends know nothing of plans or ranks: they get
 * pointers and sizes.
 *
 * Conventions for every op:
 *   - Pointers are backend memory (host memory for cpu, device memory for
 *     cuda) from backend->alloc (or offsets into such allocations).
 *   - "act" tensors have dtype backend->act_dtype, weights param_dtype,
 *     gradients of weights grad_dtype; statistics (lse), scalars, AdamW state
 *     and master weights are fp32; token ids and positions are int32; RoPE
 *     inverse frequencies are fp64.
 *   - Matrices are row-major. A weight W has the Hugging Face shape [out, in].
 *   - n is a row (token) count; sizes are int64_t / size_t, never int.
 *   - `acc` = 0 overwrites the output, 1 adds to it. Weight gradients (dw)
 *     ALWAYS accumulate (they sum over layers' micro-steps and chunks).
 *   - Work is ordered: an op sees the effects of every earlier op (the cuda
 *     backend runs all on one stream); only copy_async runs beside them, on
 *     a copy stream, ordered by copy_wait. synchronize() waits for both.
 *   - Errors (allocation, library calls) are fatal: the backend prints the
 *     failing call, file and line and exits; ops never return errors.
 *   - The Ulysses packed layout of a tensor [n][heads][hd] for P ranks
 *     (heads % P == 0, hpr = heads / P) stores element (t, h, :) at
 *     (((h / hpr) n + t) hpr + h % hpr) hd: P contiguous blocks [n][hpr][hd],
 *     block j holding heads j hpr .. j hpr + hpr - 1, exactly what one
 *     all-to-all sends to (or receives from) rank j. P = 1 is [n][heads][hd].
 *     rope_split (pq, pkv) and the blocked matmul (blocks) read and write it;
 *     heads_pack produces it (and its replicated form, see below). */
#ifndef AUTOSP_BACKEND_H
#define AUTOSP_BACKEND_H

#include "autosp_config.h"

#include <stddef.h>
#include <stdint.h>

#include "dtype.h"
#include "opshapes.h"

/* The documents one attention sequence of s rows is packed from: document i
 * is rows [cu_host[i], cu_host[i+1]), cu_host[0] = 0, cu_host[n_docs] = s.
 * cu and start are the same in backend memory: cu (n_docs + 1 int32) and
 * start[t] (s int32), the first row of row t's document. */
typedef struct {
    int64_t n_docs;
    int64_t max_len;            /* the longest document */
    const int32_t *cu_host;     /* host memory */
    const int32_t *cu;          /* backend memory */
    const int32_t *start;       /* backend memory */
} attn_docs_t;

#define BACKEND_COPY_TAGS 8

typedef struct backend {
    const char *name;               /* "cpu" or "cuda" */
    dtype_t act_dtype, param_dtype, grad_dtype;

    /* ---- lifecycle and memory */
    int (*init)(int device_index, char *err, size_t errlen); /* 0 ok, -1 with message */
    void (*shutdown)(void);
    const char *(*device_name)(void);
    size_t (*device_memory)(void);  /* total bytes of the device; 0 for host */
    size_t (*memory_used)(void);    /* bytes in use on the device now (all processes); 0 for host */
    void *(*alloc)(size_t bytes, const char *what);     /* never NULL: dies naming `what` */
    void (*free)(void *p);
    /* pinned host memory (activation offload, host model state), zeroed;
     * NULL when the node cannot give it, so that the caller can refuse the
     * run with its own figures */
    void *(*host_alloc)(size_t bytes, const char *what);
    void (*host_free)(void *p);
    void (*zero)(void *p, size_t bytes);
    void (*copy)(void *dst, const void *src, size_t bytes);        /* backend -> backend */
    void (*to_device)(void *dst, const void *host, size_t bytes);  /* host -> backend, raw bytes */
    void (*to_host)(void *host, const void *src, size_t bytes);    /* backend -> host, raw bytes (synchronous) */
    void (*from_f32)(void *dst, dtype_t dst_type, const float *host, size_t n); /* host fp32 -> backend, converted */
    void (*to_f32)(float *host, const void *src, dtype_t src_type, size_t n);   /* backend -> host fp32, converted */
    void (*synchronize)(void);
    void *(*stream)(void);          /* the stream every op runs on (cudaStream_t); NULL for cpu */
    /* 1 when every op issued so far has finished (the device stands idle);
     * NULL: ops finish as they are called (cpu) */
    int (*idle)(void);
    /* ---- copies beside compute (activation offload and prefetch)
     * copy_async enqueues a raw copy between backend memory and pinned host
     * memory (to_host: backend -> host, else host -> backend) on a copy
     * stream, after every op issued so far, and returns at once; it joins
     * `tag`'s work (tags 0 .. BACKEND_COPY_TAGS-1). copy_wait makes every op
     * issued from now on wait for the copies issued so far under `tag`; the
     * host never waits. The cpu backend copies at once (memcpy) and its
     * waits are no-ops, so both backends walk the same paths.
     * copy_times: bytes copied, seconds the copy stream was busy and seconds
     * the ops stood waiting in copy_wait (the part of the copy time the
     * compute did not hide) since the previous call; call it after
     * synchronize(). */
    void (*copy_async)(void *dst, const void *src, size_t bytes, int to_host, int tag);
    void (*copy_wait)(int tag);
    void (*copy_times)(double *bytes, double *busy_s, double *exposed_s);
    double (*peak_tflops)(void);    /* dense bf16 peak of the device for MFU (env ASP_PEAK_TFLOPS overrides); 0 unknown */
    /* Device scratch the ops other than attention need at these shapes
     * (library workspaces, partial sums, conversion staging); NULL or 0: none.
     * The executor passes that much memory to set_scratch once, so no op
     * allocates during training. */
    size_t (*scratch_bytes)(const op_shapes_t *shapes);
    void (*set_scratch)(void *p, size_t bytes);
    /* Scratch of attention_fwd / attention_bwd at these shapes (attn_rows, hq,
     * hkv, hd); NULL or 0: none. It can be large (fp32 accumulators of
     * [S, Hq, hd]), so the plan places it inside the layer workspace at the
     * attention steps, and the executor hands it over with use_scratch before
     * each attention call and gives the set_scratch memory back after. */
    size_t (*attention_scratch_bytes)(const op_shapes_t *shapes);
    /* Make [p, p + bytes) the op scratch from the next op on (stream order;
     * memory the plan owns, so nothing is freed or synchronised). */
    void (*use_scratch)(void *p, size_t bytes);

    /* ---- ops (forward / backward) */
    /* out[t,:] = wte[tokens[t],:] */
    void (*embed_fwd)(void *out, const int32_t *tokens, const void *wte, int64_t n, int64_t d);
    /* dwte[tokens[t],:] += dout[t,:], deterministic summation order */
    void (*embed_bwd)(void *dwte, const int32_t *tokens, const void *dout, int64_t n, int64_t d, int64_t vocab);

    /* out = x / sqrt(mean(x^2) + eps) * w, row-wise over d */
    void (*rmsnorm_fwd)(void *out, const void *x, const void *w, int64_t n, int64_t d, float eps);
    void (*rmsnorm_bwd)(void *dx, int acc, void *dw, const void *dout, const void *x, const void *w,
                        int64_t n, int64_t d, float eps);

    /* The residual add fused with the RMSNorm that follows it, row-wise over d:
     *   h = a + b (rounded to the act dtype), hn = rmsnorm(h) * w, the norm taken
     *   from the ROUNDED h, so hn equals add_fwd followed by rmsnorm_fwd. */
    void (*add_rmsnorm_fwd)(void *h, void *hn, const void *a, const void *b, const void *w, int64_t n, int64_t d,
                            float eps);
    /* g = dh + (the rmsnorm backward of dhn at h); da (+)= g (acc_a), db (+)= g (acc_b);
     * dw += the norm weight's gradient (deterministic). dh is the gradient h gets from
     * its other consumers, NULL for none (zero); da or db may be NULL (not wanted). */
    void (*add_rmsnorm_bwd)(void *da, int acc_a, void *db, int acc_b, void *dw, const void *dh, const void *dhn,
                            const void *h, const void *w, int64_t n, int64_t d, float eps);

    /* out[n,m] = x[n,k] w[m,k]^T */
    void (*matmul_fwd)(void *out, const void *x, const void *w, int64_t n, int64_t k, int64_t m);
    /* dw[m,k] += dout^T x (dw may be NULL), then dx[n,k] (+)= dout[n,m] w[m,k] (dx may be NULL);
     * in that order, so that dx may be x when it is overwritten (acc 0) */
    void (*matmul_bwd)(void *dx, int acc, void *dw, const void *dout, const void *x, const void *w,
                       int64_t n, int64_t k, int64_t m);

    /* matmul_fwd / matmul_bwd with x and dx in the packed layout of `blocks` ranks: `blocks`
     * contiguous blocks [n][kb], kb = k / blocks, x(t, c) = x[((c / kb) n + t) kb + c % kb]:
     *   out[n,m] = sum_j x_j w[:, j kb .. j kb + kb - 1]^T
     *   dx_j (+)= dout w[:, j kb ..] (dx may be NULL); dw[:, j kb ..] += dout^T x_j (dw may be NULL)
     * blocks = 1 is matmul_fwd / matmul_bwd; k % blocks == 0. */
    void (*matmul_blocked_fwd)(void *out, const void *x, const void *w, int64_t n, int64_t k, int64_t m,
                               int blocks);
    void (*matmul_blocked_bwd)(void *dx, int acc, void *dw, const void *dout, const void *x, const void *w,
                               int64_t n, int64_t k, int64_t m, int blocks);

    /* The matmul on windows of larger row-major matrices, for attention in pieces
     * (a group of heads takes a row range of W_qkv, a column range of W_o):
     * w is an [m, k] window with row stride ldw; out and dout are [n, m]
     * windows with row stride ldo; x and dx are [n, k], dense (blocks = 1) or
     * in the packed layout of `blocks` ranks as for matmul_blocked_*:
     *   out (+)= sum_j x_j w[:, j kb ..]^T                  (acc: add, else overwrite)
     *   dw[:, j kb ..] += dout^T x_j (dw a window like w, may be NULL),
     *   then dx_j (+)= dout w[:, j kb ..] (dx may be NULL)
     * ldw = k, ldo = m is matmul_blocked_fwd / _bwd (with acc 0 forward). */
    void (*matmul_slice_fwd)(void *out, int64_t ldo, int acc, const void *x, const void *w, int64_t ldw,
                             int64_t n, int64_t k, int64_t m, int blocks);
    void (*matmul_slice_bwd)(void *dx, int acc, void *dw, int64_t ldw, const void *dout, int64_t ldo,
                             const void *x, const void *w, int64_t n, int64_t k, int64_t m, int blocks);

    /* Split qkv[n, (hq + 2 hkv) hd] into q[n,hq,hd], k[n,hkv,hd], v[n,hkv,hd] and rotate q and k:
     * angle(t,i) = pos[t] * inv_freq[i] (fp64), pairs (i, i + hd/2) rotated (rotate-half).
     * q is written in the packed layout for pq ranks, k and v for pkv ranks (1: plain);
     * hq % pq == 0 and hkv % pkv == 0. */
    void (*rope_split_fwd)(void *q, void *k, void *v, const void *qkv, const int32_t *pos,
                           const double *inv_freq, int64_t n, int64_t hq, int64_t hkv, int64_t hd, int pq, int pkv);
    /* dqkv = merge(rotate^-1(dq), rotate^-1(dk), dv) (overwrite); dq is read in the packed
     * layout for pq ranks, dk and dv for pkv ranks */
    void (*rope_split_bwd)(void *dqkv, const void *dq, const void *dk, const void *dv, const int32_t *pos,
                           const double *inv_freq, int64_t n, int64_t hq, int64_t hkv, int64_t hd, int pq, int pkv);

    /* Causal grouped-query attention over one sequence of s tokens, or over the
     * packed documents `docs` tiles it into (NULL: one document).
     * q, out [s, hq, hd]; k, v [s, hkv, hd]; query head h uses kv head h / (hq/hkv).
     * Row t attends to rows j with start(t) <= j <= t, start(t) the first row of
     * t's document (0 without documents):
     * lse[h, t] = log sum_j exp(scale * q_t . k_j) over those j (natural log, fp32). */
    void (*attention_fwd)(void *out, float *lse, const void *q, const void *k, const void *v,
                          int64_t s, int64_t hq, int64_t hkv, int64_t hd, float scale, const attn_docs_t *docs);
    /* dq, dk, dv overwritten */
    void (*attention_bwd)(void *dq, void *dk, void *dv, const void *dout, const void *q, const void *k,
                          const void *v, const void *out, const float *lse,
                          int64_t s, int64_t hq, int64_t hkv, int64_t hd, float scale, const attn_docs_t *docs);

    /* gu[n, 2f] = [gate | up]; out[n,f] = silu(gate) * up */
    void (*swiglu_fwd)(void *out, const void *gu, int64_t n, int64_t f);
    /* dgu overwritten; dgu may be gu (in place: each gate/up pair is read before its gradient is written) */
    void (*swiglu_bwd)(void *dgu, const void *dout, const void *gu, int64_t n, int64_t f);

    /* out = a + b over count elements (act) */
    void (*add_fwd)(void *out, const void *a, const void *b, size_t count);
    /* dst (+)= src over count elements (act); the residual's backward */
    void (*accumulate)(void *dst, const void *src, size_t count, int acc);

    /* Cross entropy over one chunk: logits[n, vocab] (act) is replaced by its gradient
     * grad_scale * (softmax - onehot(target)); rows with target < 0 get zero gradient and no loss.
     * *loss_sum (fp32 backend scalar) += sum of -log softmax[target] over valid rows. */
    void (*xent_fwd_bwd)(void *logits, float *loss_sum, const int32_t *targets, int64_t n, int64_t vocab,
                         float grad_scale);

    /* Ulysses layout changes (act). With hpr = heads >= P ? heads / P : 1 and
     * h0(j) = heads >= P ? j * hpr : (j * heads) / P (KV replication when P > heads):
     *   pack:   dst[j][t][i][:] = src[t][h0(j) + i][:]           j < P, t < n, i < hpr
     *   unpack: dst[t][h][:] (+)= sum over j with h0(j) <= h < h0(j)+hpr of src[j][t][h - h0(j)][:]
     * (acc = 0: dst = that sum; replicas are summed in order j = 0..P-1) */
    void (*heads_pack)(void *dst, const void *src, int64_t n, int64_t heads, int64_t hd, int P);
    void (*heads_unpack)(void *dst, const void *src, int64_t n, int64_t heads, int64_t hd, int P, int acc);

    /* ---- optimizer */
    /* dst (+)= src over count gradient elements (grad_dtype): ZeRO 2-3 add each
     * micro-step's reduced bucket into the rank's gradient shard */
    void (*grad_accumulate)(void *dst, const void *src, size_t count, int acc);
    /* *sumsq (fp32 scalar) += sum of grad[i]^2 (grad_dtype) */
    void (*grad_sumsq)(float *sumsq, const void *grad, size_t n);
    /* One AdamW step (bias-corrected, decoupled weight decay) on n elements:
     *   clip = (max_norm > 0 && sqrt(*grad_sumsq) > max_norm) ? max_norm / sqrt(*grad_sumsq) : 1
     *   g = grad * clip; m = b1 m + (1-b1) g; v = b2 v + (1-b2) g^2
     *   master -= lr * (m / (1-b1^step) / (sqrt(v / (1-b2^step)) + eps) + wd * master)
     *   param = master (converted to param_dtype) */
    void (*adamw)(float *master, void *param, float *m, float *v, const void *grad, size_t n,
                  float lr, float beta1, float beta2, float eps, float weight_decay, int64_t step,
                  const float *grad_sumsq, float max_norm);
} backend_t;

extern const backend_t backend_cpu;
#ifdef HAVE_CUDA
extern const backend_t backend_cuda;
/* Number of usable CUDA devices (0 when the driver or devices are absent). */
int cuda_device_count(void);
#endif

#endif
