/* Causal GQA attention, the simple kernels: one warp per (query row, head)
 * for the forward and dq, one warp per (key row, kv head) for dk and dv, so
 * every output is summed by one warp in a fixed order (no atomics). Online
 * softmax in fp32; the forward writes lse = log sum exp of the scaled scores
 * (natural log), which the backward uses to rebuild the probabilities. It is
 * O(s^2 hd) with no tiling: the reference the cuDNN path is tested against,
 * correct for any s and any hd <= 128. attention_fwd/bwd dispatch here or to
 * the cuDNN graphs (cuda/attention_cudnn.cu) as init chose from ASP_ATTENTION. */
#include "autosp_config.h"

#include <math.h>

#include "cuda/cuda_common.h"

typedef __nv_bfloat16 bf16;

#define ATT_MAX_HD 128
#define ATT_PER_LANE (ATT_MAX_HD / 32)
#define ATT_WARPS 4

static __device__ __forceinline__ float warp_sum(float x) {
    for (int o = 16; o > 0; o >>= 1) x += __shfl_xor_sync(0xffffffffu, x, o);
    return x;
}

/* lane holds elements c = lane + 32 e of a head vector */
static __device__ __forceinline__ void load_vec(float r[ATT_PER_LANE], const bf16 *p, int64_t hd, int lane) {
#pragma unroll
    for (int e = 0; e < ATT_PER_LANE; e++) {
        int64_t c = lane + 32 * e;
        r[e] = c < hd ? __bfloat162float(p[c]) : 0.0f;
    }
}

static __device__ __forceinline__ float dot_vec(const float a[ATT_PER_LANE], const bf16 *p, int64_t hd, int lane) {
    float s = 0.0f;
#pragma unroll
    for (int e = 0; e < ATT_PER_LANE; e++) {
        int64_t c = lane + 32 * e;
        if (c < hd) s += a[e] * __bfloat162float(p[c]);
    }
    return warp_sum(s);
}

/* Row t attends to j in [start[t], t] (start NULL: from 0). Key j is seen by
 * the rows t >= j whose document starts at or before j: t < end, found by a
 * scan that stops at the next document (starts never decrease). */
static __device__ __forceinline__ int64_t row_first(const int32_t *start, int64_t t) { return start ? start[t] : 0; }
static __device__ __forceinline__ int64_t key_last(const int32_t *start, int64_t j, int64_t s) {
    if (!start) return s;
    int64_t lo = j + 1, hi = s;   /* first t > j with start[t] > j, by bisection */
    while (lo < hi) {
        int64_t mid = lo + (hi - lo) / 2;
        if (start[mid] <= j) lo = mid + 1;
        else hi = mid;
    }
    return lo;
}

__global__ void k_att_fwd(bf16 *out, float *lse, const bf16 *q, const bf16 *k, const bf16 *v, int64_t s, int64_t hq,
                          int64_t hkv, int64_t hd, float scale, const int32_t *start) {
    int lane = threadIdx.x & 31;
    int64_t wid = (int64_t)blockIdx.x * ATT_WARPS + (threadIdx.x >> 5);
    if (wid >= s * hq) return;
    int64_t t = wid / hq, h = wid % hq, kvh = h / (hq / hkv);
    float qr[ATT_PER_LANE], acc[ATT_PER_LANE];
    load_vec(qr, q + (t * hq + h) * hd, hd, lane);
#pragma unroll
    for (int e = 0; e < ATT_PER_LANE; e++) acc[e] = 0.0f;
    float m = -INFINITY, l = 0.0f;
    for (int64_t j = row_first(start, t); j <= t; j++) {
        float sc = scale * dot_vec(qr, k + (j * hkv + kvh) * hd, hd, lane);
        float mn = fmaxf(m, sc);
        float corr = expf(m - mn), p = expf(sc - mn);
        l = l * corr + p;
        const bf16 *vr = v + (j * hkv + kvh) * hd;
#pragma unroll
        for (int e = 0; e < ATT_PER_LANE; e++) {
            int64_t c = lane + 32 * e;
            float vv = c < hd ? __bfloat162float(vr[c]) : 0.0f;
            acc[e] = acc[e] * corr + p * vv;
        }
        m = mn;
    }
    bf16 *o = out + (t * hq + h) * hd;
#pragma unroll
    for (int e = 0; e < ATT_PER_LANE; e++) {
        int64_t c = lane + 32 * e;
        if (c < hd) o[c] = __float2bfloat16_rn(acc[e] / l);
    }
    if (lane == 0) lse[h * s + t] = m + logf(l);
}

/* D[h, t] = dout[t,h,:] . out[t,h,:], the softmax backward's row term */
__global__ void k_att_rowdot(float *D, const bf16 *dout, const bf16 *out, int64_t s, int64_t hq, int64_t hd) {
    int lane = threadIdx.x & 31;
    int64_t wid = (int64_t)blockIdx.x * ATT_WARPS + (threadIdx.x >> 5);
    if (wid >= s * hq) return;
    int64_t t = wid / hq, h = wid % hq;
    float o[ATT_PER_LANE];
    load_vec(o, out + (t * hq + h) * hd, hd, lane);
    float d = dot_vec(o, dout + (t * hq + h) * hd, hd, lane);
    if (lane == 0) D[h * s + t] = d;
}

__global__ void k_att_dq(bf16 *dq, const bf16 *dout, const bf16 *q, const bf16 *k, const bf16 *v, const float *lse,
                         const float *D, int64_t s, int64_t hq, int64_t hkv, int64_t hd, float scale,
                         const int32_t *start) {
    int lane = threadIdx.x & 31;
    int64_t wid = (int64_t)blockIdx.x * ATT_WARPS + (threadIdx.x >> 5);
    if (wid >= s * hq) return;
    int64_t t = wid / hq, h = wid % hq, kvh = h / (hq / hkv);
    float qr[ATT_PER_LANE], gr[ATT_PER_LANE], acc[ATT_PER_LANE];
    load_vec(qr, q + (t * hq + h) * hd, hd, lane);
    load_vec(gr, dout + (t * hq + h) * hd, hd, lane);
#pragma unroll
    for (int e = 0; e < ATT_PER_LANE; e++) acc[e] = 0.0f;
    float L = lse[h * s + t], Dt = D[h * s + t];
    for (int64_t j = row_first(start, t); j <= t; j++) {
        const bf16 *kr = k + (j * hkv + kvh) * hd;
        float p = expf(scale * dot_vec(qr, kr, hd, lane) - L);
        float dp = dot_vec(gr, v + (j * hkv + kvh) * hd, hd, lane);
        float ds = p * (dp - Dt);
#pragma unroll
        for (int e = 0; e < ATT_PER_LANE; e++) {
            int64_t c = lane + 32 * e;
            if (c < hd) acc[e] += ds * __bfloat162float(kr[c]);
        }
    }
    bf16 *o = dq + (t * hq + h) * hd;
#pragma unroll
    for (int e = 0; e < ATT_PER_LANE; e++) {
        int64_t c = lane + 32 * e;
        if (c < hd) o[c] = __float2bfloat16_rn(scale * acc[e]);
    }
}

/* dk, dv of key row j and kv head: sums over the query heads of its group and
 * the rows t >= j, in (head, t) order. */
__global__ void k_att_dkdv(bf16 *dk, bf16 *dv, const bf16 *dout, const bf16 *q, const bf16 *k, const bf16 *v,
                           const float *lse, const float *D, int64_t s, int64_t hq, int64_t hkv, int64_t hd,
                           float scale, const int32_t *start) {
    int lane = threadIdx.x & 31;
    int64_t wid = (int64_t)blockIdx.x * ATT_WARPS + (threadIdx.x >> 5);
    if (wid >= s * hkv) return;
    int64_t j = wid / hkv, kvh = wid % hkv, g = hq / hkv;
    float kr[ATT_PER_LANE], vr[ATT_PER_LANE], dka[ATT_PER_LANE], dva[ATT_PER_LANE];
    load_vec(kr, k + (j * hkv + kvh) * hd, hd, lane);
    load_vec(vr, v + (j * hkv + kvh) * hd, hd, lane);
#pragma unroll
    for (int e = 0; e < ATT_PER_LANE; e++) dka[e] = dva[e] = 0.0f;
    const int64_t t_end = key_last(start, j, s);
    for (int64_t h = kvh * g; h < (kvh + 1) * g; h++) {
        for (int64_t t = j; t < t_end; t++) {
            const bf16 *qt = q + (t * hq + h) * hd, *gt = dout + (t * hq + h) * hd;
            float p = expf(scale * dot_vec(kr, qt, hd, lane) - lse[h * s + t]);
            float dp = dot_vec(vr, gt, hd, lane);
            float ds = p * (dp - D[h * s + t]);
#pragma unroll
            for (int e = 0; e < ATT_PER_LANE; e++) {
                int64_t c = lane + 32 * e;
                if (c < hd) {
                    dva[e] += p * __bfloat162float(gt[c]);
                    dka[e] += ds * __bfloat162float(qt[c]);
                }
            }
        }
    }
#pragma unroll
    for (int e = 0; e < ATT_PER_LANE; e++) {
        int64_t c = lane + 32 * e;
        if (c < hd) {
            dk[(j * hkv + kvh) * hd + c] = __float2bfloat16_rn(scale * dka[e]);
            dv[(j * hkv + kvh) * hd + c] = __float2bfloat16_rn(dva[e]);
        }
    }
}

static void att_check(int64_t s, int64_t hq, int64_t hkv, int64_t hd) {
    if (s <= 0 || hq <= 0 || hkv <= 0 || hd <= 0)
        asp_die(ASP_EXIT_FAILURE, "cuda attention: s=%lld hq=%lld hkv=%lld hd=%lld must all be positive",
                (long long)s, (long long)hq, (long long)hkv, (long long)hd);
    if (hq % hkv)
        asp_die(ASP_EXIT_FAILURE, "cuda attention: %lld query heads are not a multiple of %lld kv heads",
                (long long)hq, (long long)hkv);
    if (hd > ATT_MAX_HD)
        asp_die(ASP_EXIT_FAILURE, "cuda attention (simple): head dim %lld exceeds %d; the simple kernels keep one head row in registers",
                (long long)hd, ATT_MAX_HD);
}

extern "C" void cuda_attention_simple_fwd(void *out, float *lse, const void *q, const void *k, const void *v,
                                          int64_t s, int64_t hq, int64_t hkv, int64_t hd, float scale,
                                          const attn_docs_t *docs) {
    att_check(s, hq, hkv, hd);
    unsigned nb = cuda_blocks((size_t)s * (size_t)hq, ATT_WARPS);
    k_att_fwd<<<nb, 32 * ATT_WARPS, 0, g_cuda.stream>>>((bf16 *)out, lse, (const bf16 *)q, (const bf16 *)k,
                                                        (const bf16 *)v, s, hq, hkv, hd, scale,
                                                        docs ? docs->start : NULL);
    CUDA_CHECK_LAUNCH("attention_simple_fwd");
}

extern "C" void cuda_attention_simple_bwd(void *dq, void *dk, void *dv, const void *dout, const void *q,
                                          const void *k, const void *v, const void *out, const float *lse, int64_t s,
                                          int64_t hq, int64_t hkv, int64_t hd, float scale, const attn_docs_t *docs) {
    att_check(s, hq, hkv, hd);
    const int32_t *start = docs ? docs->start : NULL;
    float *D = (float *)cuda_scratch((size_t)s * (size_t)hq * sizeof(float));
    unsigned nq = cuda_blocks((size_t)s * (size_t)hq, ATT_WARPS);
    k_att_rowdot<<<nq, 32 * ATT_WARPS, 0, g_cuda.stream>>>(D, (const bf16 *)dout, (const bf16 *)out, s, hq, hd);
    CUDA_CHECK_LAUNCH("attention_simple_bwd rowdot");
    k_att_dq<<<nq, 32 * ATT_WARPS, 0, g_cuda.stream>>>((bf16 *)dq, (const bf16 *)dout, (const bf16 *)q,
                                                       (const bf16 *)k, (const bf16 *)v, lse, D, s, hq, hkv, hd,
                                                       scale, start);
    CUDA_CHECK_LAUNCH("attention_simple_bwd dq");
    unsigned nk = cuda_blocks((size_t)s * (size_t)hkv, ATT_WARPS);
    k_att_dkdv<<<nk, 32 * ATT_WARPS, 0, g_cuda.stream>>>((bf16 *)dk, (bf16 *)dv, (const bf16 *)dout, (const bf16 *)q,
                                                         (const bf16 *)k, (const bf16 *)v, lse, D, s, hq, hkv, hd,
                                                         scale, start);
    CUDA_CHECK_LAUNCH("attention_simple_bwd dkdv");
}

extern "C" void cuda_attention_fwd(void *out, float *lse, const void *q, const void *k, const void *v, int64_t s,
                                   int64_t hq, int64_t hkv, int64_t hd, float scale, const attn_docs_t *docs) {
    if (g_cuda.attention_cudnn)
        cuda_attention_cudnn_fwd(out, lse, q, k, v, s, hq, hkv, hd, scale, docs);
    else
        cuda_attention_simple_fwd(out, lse, q, k, v, s, hq, hkv, hd, scale, docs);
}

extern "C" void cuda_attention_bwd(void *dq, void *dk, void *dv, const void *dout, const void *q, const void *k,
                                   const void *v, const void *out, const float *lse, int64_t s, int64_t hq,
                                   int64_t hkv, int64_t hd, float scale, const attn_docs_t *docs) {
    if (g_cuda.attention_cudnn)
        cuda_attention_cudnn_bwd(dq, dk, dv, dout, q, k, v, out, lse, s, hq, hkv, hd, scale, docs);
    else
        cuda_attention_simple_bwd(dq, dk, dv, dout, q, k, v, out, lse, s, hq, hkv, hd, scale, docs);
}

/* The simple kernels' scratch: the backward's row terms D[s, hq]. */
extern "C" size_t cuda_attention_scratch_bytes(int64_t s, int64_t hq, int64_t hkv, int64_t hd) {
    return (size_t)s * (size_t)hq * sizeof(float);
}
