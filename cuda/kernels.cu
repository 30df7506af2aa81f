/* Elementwise, normalisation, embedding, RoPE, SwiGLU, loss, Ulysses layout and
 * optimizer kernels: bf16 storage, fp32 math, 16-byte vector accesses where the
 * pointers and sizes allow (scalar tails otherwise). Reductions that feed
 * weights or the loss use fixed launch shapes and fixed summation orders, so
 * two runs give bitwise-equal results. */
#include "autosp_config.h"

#include <math.h>

#include <cub/device/device_radix_sort.cuh>

#include "cuda/cuda_common.h"

typedef __nv_bfloat16 bf16;

/* 8 bf16 = 16 bytes: one vector access */
struct __align__(16) bf16x8 { bf16 v[8]; };

static __device__ __forceinline__ float bf(bf16 x) { return __bfloat162float(x); }
static __device__ __forceinline__ bf16 tobf(float x) { return __float2bfloat16_rn(x); }

static __device__ __forceinline__ float warp_sum(float x) {
    for (int o = 16; o > 0; o >>= 1) x += __shfl_xor_sync(0xffffffffu, x, o);
    return x;
}
static __device__ __forceinline__ float warp_max(float x) {
    for (int o = 16; o > 0; o >>= 1) x = fmaxf(x, __shfl_xor_sync(0xffffffffu, x, o));
    return x;
}

/* Block-wide sum in a fixed order (deterministic); every thread gets the result.
 * `sh` holds 32 floats. blockDim.x must be a multiple of 32. */
static __device__ float block_sum(float x, float *sh) {
    int lane = threadIdx.x & 31, w = threadIdx.x >> 5, nw = blockDim.x >> 5;
    x = warp_sum(x);
    __syncthreads();   /* sh may still be read by a previous call */
    if (lane == 0) sh[w] = x;
    __syncthreads();
    float r = lane < nw ? sh[lane] : 0.0f;
    return warp_sum(r);
}
static __device__ float block_max(float x, float *sh) {
    int lane = threadIdx.x & 31, w = threadIdx.x >> 5, nw = blockDim.x >> 5;
    x = warp_max(x);
    __syncthreads();
    if (lane == 0) sh[w] = x;
    __syncthreads();
    float r = lane < nw ? sh[lane] : -INFINITY;
    return warp_max(r);
}
static __device__ double block_sum_d(double x, double *sh) {
    int lane = threadIdx.x & 31, w = threadIdx.x >> 5, nw = blockDim.x >> 5;
    for (int o = 16; o > 0; o >>= 1) x += __shfl_xor_sync(0xffffffffu, x, o);
    __syncthreads();
    if (lane == 0) sh[w] = x;
    __syncthreads();
    double r = lane < nw ? sh[lane] : 0.0;
    for (int o = 16; o > 0; o >>= 1) r += __shfl_xor_sync(0xffffffffu, r, o);
    return r;
}

/* ------------------------------------------------------------ conversions */

__global__ void k_f32_to_bf16(bf16 *dst, const float *src, size_t n) {
    size_t i = (size_t)blockIdx.x * blockDim.x + threadIdx.x;
    if (i < n) dst[i] = tobf(src[i]);
}
__global__ void k_bf16_to_f32(float *dst, const bf16 *src, size_t n) {
    size_t i = (size_t)blockIdx.x * blockDim.x + threadIdx.x;
    if (i < n) dst[i] = bf(src[i]);
}

extern "C" void cuda_f32_to_bf16(bf16 *dst, const float *src, size_t n) {
    if (!n) return;
    k_f32_to_bf16<<<cuda_blocks(n, 256), 256, 0, g_cuda.stream>>>(dst, src, n);
    CUDA_CHECK_LAUNCH("f32_to_bf16");
}
extern "C" void cuda_bf16_to_f32(float *dst, const bf16 *src, size_t n) {
    if (!n) return;
    k_bf16_to_f32<<<cuda_blocks(n, 256), 256, 0, g_cuda.stream>>>(dst, src, n);
    CUDA_CHECK_LAUNCH("bf16_to_f32");
}

/* ------------------------------------------------------------ embedding */

/* A bad token id is a data error the host cannot see before the launch: stop
 * the kernel loudly rather than read out of bounds. */
static __device__ void check_token(int32_t tok, int64_t vocab, int64_t t) {
    if (tok < 0 || (int64_t)tok >= vocab) {
        printf("autosp-train: cuda embedding: token %d at row %lld is outside the vocabulary [0, %lld)\n",
               (int)tok, (long long)t, (long long)vocab);
        __trap();
    }
}

__global__ void k_embed_fwd(bf16 *out, const int32_t *tokens, const bf16 *wte, int64_t d, int vec) {
    int64_t t = blockIdx.x;
    int32_t tok = tokens[t];
    if (tok < 0) check_token(tok, INT64_MAX, t);
    const bf16 *src = wte + (int64_t)tok * d;
    bf16 *dst = out + t * d;
    if (vec) {
        for (int64_t c = (int64_t)threadIdx.x * 8; c < d; c += (int64_t)blockDim.x * 8)
            *(bf16x8 *)(dst + c) = *(const bf16x8 *)(src + c);
    } else {
        for (int64_t c = threadIdx.x; c < d; c += blockDim.x) dst[c] = src[c];
    }
}

extern "C" void cuda_embed_fwd(void *out, const int32_t *tokens, const void *wte, int64_t n, int64_t d) {
    if (n <= 0) return;
    int vec = d % 8 == 0 && cuda_aligned16(out) && cuda_aligned16(wte);
    k_embed_fwd<<<cuda_blocks((size_t)n, 1), 128, 0, g_cuda.stream>>>((bf16 *)out, tokens, (const bf16 *)wte, d, vec);
    CUDA_CHECK_LAUNCH("embed_fwd");
}

__global__ void k_iota(int32_t *idx, int64_t n, const int32_t *tokens, int64_t vocab) {
    int64_t i = (int64_t)blockIdx.x * blockDim.x + threadIdx.x;
    if (i < n) {
        check_token(tokens[i], vocab, i);
        idx[i] = (int32_t)i;
    }
}

/* After a stable sort of (token, row) pairs, the thread at the start of each run
 * of equal tokens sums that run's rows in row order: fixed order, no atomics. */
__global__ void k_embed_bwd_runs(float *dwte, const int32_t *sorted_tok, const int32_t *sorted_row,
                                 const bf16 *dout, int64_t n, int64_t d) {
    int64_t i = blockIdx.x;
    int64_t c = (int64_t)blockIdx.y * blockDim.x + threadIdx.x;
    if (c >= d) return;
    int32_t tok = sorted_tok[i];
    if (i > 0 && sorted_tok[i - 1] == tok) return;
    float s = 0.0f;
    for (int64_t j = i; j < n && sorted_tok[j] == tok; j++) s += bf(dout[(int64_t)sorted_row[j] * d + c]);
    dwte[(int64_t)tok * d + c] += s;
}

extern "C" void cuda_embed_bwd(void *dwte, const int32_t *tokens, const void *dout, int64_t n, int64_t d,
                               int64_t vocab) {
    if (n <= 0) return;
    if (n > INT32_MAX)
        asp_die(ASP_EXIT_FAILURE, "cuda embed_bwd: %lld rows exceed the int32 row index; split the call",
                (long long)n);
    int end_bit = 1;
    while (end_bit < 31 && ((int64_t)1 << end_bit) < vocab) end_bit++;
    size_t cub_bytes = 0;
    CUDA_CHECK(cub::DeviceRadixSort::SortPairs(NULL, cub_bytes, (const int32_t *)NULL, (int32_t *)NULL,
                                               (const int32_t *)NULL, (int32_t *)NULL, (int)n, 0, end_bit,
                                               g_cuda.stream));
    size_t arr = asp_align_up((size_t)n * sizeof(int32_t), 256);
    char *base = (char *)cuda_scratch(3 * arr + cub_bytes);
    int32_t *idx = (int32_t *)base, *stok = (int32_t *)(base + arr), *srow = (int32_t *)(base + 2 * arr);
    void *tmp = base + 3 * arr;
    k_iota<<<cuda_blocks((size_t)n, 256), 256, 0, g_cuda.stream>>>(idx, n, tokens, vocab);
    CUDA_CHECK_LAUNCH("embed_bwd iota");
    /* Radix sort is stable: equal tokens keep their row order. */
    CUDA_CHECK(cub::DeviceRadixSort::SortPairs(tmp, cub_bytes, tokens, stok, idx, srow, (int)n, 0, end_bit,
                                               g_cuda.stream));
    dim3 grid((unsigned)n, (unsigned)asp_ceil_div(d, 256));
    if (grid.y > 65535) asp_die(ASP_EXIT_FAILURE, "cuda embed_bwd: width %lld too large", (long long)d);
    k_embed_bwd_runs<<<grid, 256, 0, g_cuda.stream>>>((float *)dwte, stok, srow, (const bf16 *)dout, n, d);
    CUDA_CHECK_LAUNCH("embed_bwd runs");
}

/* ------------------------------------------------------------ rmsnorm, add + rmsnorm */

/* One kernel pair serves rmsnorm and the residual add fused with it (rmsnorm
 * is the fused op without the add), so the two give bitwise-equal results on
 * equal rows. A row is cut into 8-element chunks; with RMS_THREADS threads,
 * thread t owns chunks t, t + RMS_THREADS, ... and sums its squares (and the
 * backward's dot product) chunk by chunk in that order, then over the block
 * (block_sum). A chunk is one 16-byte access when every pointer is 16-byte
 * aligned and d % 8 == 0 (vec), else 8 scalar accesses with elements past d
 * read as 0; the sums are the same either way. Up to PER chunks per thread
 * stay in registers between a row's two passes (statistics, then outputs);
 * wider rows read their inputs again in the second pass. */
#define RMS_THREADS 256

static __device__ __forceinline__ void ld8(float v[8], const bf16 *p, int64_t i, int64_t d, int vec) {
    if (vec) {
        bf16x8 x = *(const bf16x8 *)(p + i);
#pragma unroll
        for (int e = 0; e < 8; e++) v[e] = bf(x.v[e]);
    } else {
#pragma unroll
        for (int e = 0; e < 8; e++) v[e] = i + e < d ? bf(p[i + e]) : 0.0f;
    }
}

static __device__ __forceinline__ void st8(bf16 *p, int64_t i, int64_t d, const float v[8], int vec) {
    if (vec) {
        bf16x8 x;
#pragma unroll
        for (int e = 0; e < 8; e++) x.v[e] = tobf(v[e]);
        *(bf16x8 *)(p + i) = x;
    } else {
#pragma unroll
        for (int e = 0; e < 8; e++)
            if (i + e < d) p[i + e] = tobf(v[e]);
    }
}

/* p[i..i+8) = v (acc = 0) or p + v (acc = 1), rounded once */
static __device__ __forceinline__ void st8_acc(bf16 *p, int64_t i, int64_t d, const float v[8], int acc, int vec) {
    if (!acc) {
        st8(p, i, d, v, vec);
        return;
    }
    float t[8];
    ld8(t, p, i, d, vec);
#pragma unroll
    for (int e = 0; e < 8; e++) t[e] += v[e];
    st8(p, i, d, t, vec);
}

/* Element i.. i+7 of the norm's input row: a (b == NULL), or a + b rounded to
 * bf16, as add_fwd stores it. */
static __device__ __forceinline__ void norm_input8(float v[8], const bf16 *a, const bf16 *b, int64_t i, int64_t d,
                                                   int vec) {
    ld8(v, a, i, d, vec);
    if (!b) return;
    float u[8];
    ld8(u, b, i, d, vec);
#pragma unroll
    for (int e = 0; e < 8; e++) v[e] = bf(tobf(v[e] + u[e]));
}

/* One block per row: h = a + b (stored when b != NULL; h is not touched
 * otherwise), hn = h / sqrt(mean(h^2) + eps) * w. */
template <int PER>
__global__ void __launch_bounds__(RMS_THREADS) k_add_rmsnorm_fwd(bf16 *h, bf16 *hn, const bf16 *a, const bf16 *b,
                                                                 const bf16 *w, int64_t d, float eps, int vec) {
    __shared__ float sh[32];
    const int64_t off = (int64_t)blockIdx.x * d, nc = (d + 7) / 8, stride = (int64_t)PER * RMS_THREADS;
    const bool cached = nc <= stride;
    const bf16 *ar = a + off, *br = b ? b + off : NULL;
    float v[PER][8];
    float ss = 0.0f;
    for (int64_t c0 = 0; c0 < nc; c0 += stride) {
#pragma unroll
        for (int i = 0; i < PER; i++) {
            int64_t c = c0 + threadIdx.x + (int64_t)i * RMS_THREADS;
            if (c >= nc) continue;
            norm_input8(v[i], ar, br, 8 * c, d, vec);
            if (br) st8(h + off, 8 * c, d, v[i], vec);
#pragma unroll
            for (int e = 0; e < 8; e++) ss += v[i][e] * v[i][e];
        }
    }
    ss = block_sum(ss, sh);
    const float r = rsqrtf(ss / (float)d + eps);
    for (int64_t c0 = 0; c0 < nc; c0 += stride) {
#pragma unroll
        for (int i = 0; i < PER; i++) {
            int64_t c = c0 + threadIdx.x + (int64_t)i * RMS_THREADS;
            if (c >= nc) continue;
            if (!cached) norm_input8(v[i], ar, br, 8 * c, d, vec);
            float wv[8], o[8];
            ld8(wv, w, 8 * c, d, vec);
#pragma unroll
            for (int e = 0; e < 8; e++) o[e] = v[i][e] * r * wv[e];
            st8(hn + off, 8 * c, d, o, vec);
        }
    }
}

/* Chunks per thread kept in registers for a row of d: the smallest of
 * 1, 2, 4, ... max_per that covers the row, else max_per. */
static int rms_per(int64_t d, int max_per) {
    int64_t need = asp_ceil_div(asp_ceil_div(d, 8), RMS_THREADS);
    int per = 1;
    while (per < max_per && per < need) per *= 2;
    return per;
}

static void launch_add_rmsnorm_fwd(bf16 *h, bf16 *hn, const bf16 *a, const bf16 *b, const bf16 *w, int64_t n,
                                   int64_t d, float eps, const char *what) {
    if (n <= 0 || d <= 0) return;
    int vec = d % 8 == 0 && cuda_aligned16(hn) && cuda_aligned16(a) && cuda_aligned16(w) &&
              (!b || (cuda_aligned16(h) && cuda_aligned16(b)));
    unsigned grid = cuda_blocks((size_t)n, 1);
    switch (rms_per(d, 8)) {
    case 1: k_add_rmsnorm_fwd<1><<<grid, RMS_THREADS, 0, g_cuda.stream>>>(h, hn, a, b, w, d, eps, vec); break;
    case 2: k_add_rmsnorm_fwd<2><<<grid, RMS_THREADS, 0, g_cuda.stream>>>(h, hn, a, b, w, d, eps, vec); break;
    case 4: k_add_rmsnorm_fwd<4><<<grid, RMS_THREADS, 0, g_cuda.stream>>>(h, hn, a, b, w, d, eps, vec); break;
    default: k_add_rmsnorm_fwd<8><<<grid, RMS_THREADS, 0, g_cuda.stream>>>(h, hn, a, b, w, d, eps, vec); break;
    }
    CUDA_CHECK_LAUNCH(what);
}

extern "C" void cuda_rmsnorm_fwd(void *out, const void *x, const void *w, int64_t n, int64_t d, float eps) {
    launch_add_rmsnorm_fwd(NULL, (bf16 *)out, (const bf16 *)x, NULL, (const bf16 *)w, n, d, eps, "rmsnorm_fwd");
}

extern "C" void cuda_add_rmsnorm_fwd(void *h, void *hn, const void *a, const void *b, const void *w, int64_t n,
                                     int64_t d, float eps) {
    if (!b)
        asp_die(ASP_EXIT_FAILURE, "cuda add_rmsnorm_fwd: the second addend is NULL; use rmsnorm_fwd for a plain norm");
    launch_add_rmsnorm_fwd((bf16 *)h, (bf16 *)hn, (const bf16 *)a, (const bf16 *)b, (const bf16 *)w, n, d, eps,
                           "add_rmsnorm_fwd");
}

/* A fixed number of blocks; block j owns rows j, j + gridDim.x, ... and row j
 * of `partial` [gridDim.x, d] (NULL: no dw), which k_sum_partials adds into
 * dw in block order. Per row, with y = dout and x the norm's input:
 *   g = dh + r w y - x r^3/d sum(w y x)     (dh = NULL: no term)
 *   da (+)= g, db (+)= g (each NULL: skipped); partial += y x r.
 * rmsnorm_bwd is this with dh = db = NULL. */
template <int PER>
__global__ void __launch_bounds__(RMS_THREADS) k_add_rmsnorm_bwd(bf16 *da, int acc_a, bf16 *db, int acc_b,
                                                                 float *partial, const bf16 *dh, const bf16 *dout,
                                                                 const bf16 *x, const bf16 *w, int64_t n, int64_t d,
                                                                 float eps, int vec) {
    __shared__ float sh[32];
    const int64_t nc = (d + 7) / 8, stride = (int64_t)PER * RMS_THREADS;
    const bool cached = nc <= stride;
    float *part = partial ? partial + (int64_t)blockIdx.x * d : NULL;
    float xv[PER][8], yv[PER][8], pw[PER][8];
#pragma unroll
    for (int i = 0; i < PER; i++)
#pragma unroll
        for (int e = 0; e < 8; e++) pw[i][e] = 0.0f;
    if (part && !cached)
        for (int64_t c = threadIdx.x; c < nc; c += RMS_THREADS)
            for (int64_t j = 8 * c; j < 8 * c + 8 && j < d; j++) part[j] = 0.0f;
    for (int64_t row = blockIdx.x; row < n; row += gridDim.x) {
        const int64_t off = row * d;
        float ss = 0.0f, dot = 0.0f;
        for (int64_t c0 = 0; c0 < nc; c0 += stride) {
#pragma unroll
            for (int i = 0; i < PER; i++) {
                int64_t c = c0 + threadIdx.x + (int64_t)i * RMS_THREADS;
                if (c >= nc) continue;
                float wv[8];
                ld8(xv[i], x + off, 8 * c, d, vec);
                ld8(yv[i], dout + off, 8 * c, d, vec);
                ld8(wv, w, 8 * c, d, vec);
#pragma unroll
                for (int e = 0; e < 8; e++) {
                    ss += xv[i][e] * xv[i][e];
                    dot += yv[i][e] * wv[e] * xv[i][e];
                }
            }
        }
        ss = block_sum(ss, sh);
        dot = block_sum(dot, sh);
        const float r = rsqrtf(ss / (float)d + eps);
        const float k = r * r * r * dot / (float)d;
        for (int64_t c0 = 0; c0 < nc; c0 += stride) {
#pragma unroll
            for (int i = 0; i < PER; i++) {
                int64_t c = c0 + threadIdx.x + (int64_t)i * RMS_THREADS;
                if (c >= nc) continue;
                if (!cached) {
                    ld8(xv[i], x + off, 8 * c, d, vec);
                    ld8(yv[i], dout + off, 8 * c, d, vec);
                }
                float wv[8], g[8], t[8];
                ld8(wv, w, 8 * c, d, vec);
#pragma unroll
                for (int e = 0; e < 8; e++) g[e] = r * yv[i][e] * wv[e] - k * xv[i][e];
                if (dh) {
                    ld8(t, dh + off, 8 * c, d, vec);
#pragma unroll
                    for (int e = 0; e < 8; e++) g[e] = t[e] + g[e];
                }
                if (da) st8_acc(da + off, 8 * c, d, g, acc_a, vec);
                if (db) st8_acc(db + off, 8 * c, d, g, acc_b, vec);
                if (!part) continue;
                if (cached) {
#pragma unroll
                    for (int e = 0; e < 8; e++) pw[i][e] += yv[i][e] * xv[i][e] * r;
                } else {
#pragma unroll
                    for (int e = 0; e < 8; e++)
                        if (8 * c + e < d) part[8 * c + e] += yv[i][e] * xv[i][e] * r;
                }
            }
        }
    }
    if (!part || !cached) return;
#pragma unroll
    for (int i = 0; i < PER; i++) {
        int64_t c = threadIdx.x + (int64_t)i * RMS_THREADS;
        if (c >= nc) continue;
#pragma unroll
        for (int e = 0; e < 8; e++)
            if (8 * c + e < d) part[8 * c + e] = pw[i][e];
    }
}

__global__ void k_sum_partials(float *dw, const float *partial, int nb, int64_t d) {
    int64_t c = (int64_t)blockIdx.x * blockDim.x + threadIdx.x;
    if (c >= d) return;
    float s = 0.0f;
    for (int b = 0; b < nb; b++) s += partial[(int64_t)b * d + c];
    dw[c] += s;
}

/* Blocks of the backward: a fixed count (not one tied to the device) keeps
 * dw bitwise reproducible across cards too. Its partials [blocks, d] fp32
 * are the scratch cuda_kernels_scratch_bytes reserves. 1024 rather than 256:
 * with 256 the per-row reductions were latency-bound (2.1 ms a call at
 * 65536 x 2048 on an H100, six times its memory traffic). */
static int rms_bwd_blocks(int64_t n) { return n < 1024 ? (int)n : 1024; }

static void launch_add_rmsnorm_bwd(bf16 *da, int acc_a, bf16 *db, int acc_b, float *dw, const bf16 *dh,
                                   const bf16 *dout, const bf16 *x, const bf16 *w, int64_t n, int64_t d, float eps,
                                   const char *what) {
    if (n <= 0 || d <= 0) return;
    int nb = rms_bwd_blocks(n);
    float *partial = dw ? (float *)cuda_scratch((size_t)nb * (size_t)d * sizeof(float)) : NULL;
    int vec = d % 8 == 0 && cuda_aligned16(dout) && cuda_aligned16(x) && cuda_aligned16(w) &&
              (!da || cuda_aligned16(da)) && (!db || cuda_aligned16(db)) && (!dh || cuda_aligned16(dh));
    switch (rms_per(d, 4)) {
    case 1: k_add_rmsnorm_bwd<1><<<nb, RMS_THREADS, 0, g_cuda.stream>>>(da, acc_a, db, acc_b, partial, dh, dout, x,
                                                                        w, n, d, eps, vec); break;
    case 2: k_add_rmsnorm_bwd<2><<<nb, RMS_THREADS, 0, g_cuda.stream>>>(da, acc_a, db, acc_b, partial, dh, dout, x,
                                                                        w, n, d, eps, vec); break;
    default: k_add_rmsnorm_bwd<4><<<nb, RMS_THREADS, 0, g_cuda.stream>>>(da, acc_a, db, acc_b, partial, dh, dout,
                                                                         x, w, n, d, eps, vec); break;
    }
    CUDA_CHECK_LAUNCH(what);
    if (dw) {
        k_sum_partials<<<cuda_blocks((size_t)d, 256), 256, 0, g_cuda.stream>>>(dw, partial, nb, d);
        CUDA_CHECK_LAUNCH(what);
    }
}

extern "C" void cuda_rmsnorm_bwd(void *dx, int acc, void *dw, const void *dout, const void *x, const void *w,
                                 int64_t n, int64_t d, float eps) {
    launch_add_rmsnorm_bwd((bf16 *)dx, acc, NULL, 0, (float *)dw, NULL, (const bf16 *)dout, (const bf16 *)x,
                           (const bf16 *)w, n, d, eps, "rmsnorm_bwd");
}

extern "C" void cuda_add_rmsnorm_bwd(void *da, int acc_a, void *db, int acc_b, void *dw, const void *dh,
                                     const void *dhn, const void *h, const void *w, int64_t n, int64_t d, float eps) {
    launch_add_rmsnorm_bwd((bf16 *)da, acc_a, (bf16 *)db, acc_b, (float *)dw, (const bf16 *)dh, (const bf16 *)dhn,
                           (const bf16 *)h, (const bf16 *)w, n, d, eps, "add_rmsnorm_bwd");
}

/* ------------------------------------------------------------ RoPE + split */

/* Angle in fp64 from the integer position, reduced modulo 2 pi in fp64, so
 * positions in the millions keep full fp32 accuracy in sin/cos. */
static __device__ __forceinline__ void rope_sincos(int32_t pos, double inv_freq, float *s, float *c) {
    const double two_pi = 6.283185307179586476925286766559;
    double a = (double)pos * inv_freq;
    a = fmod(a, two_pi);
    sincosf((float)a, s, c);
}

/* Offset of (t, h) in a tensor of n tokens stored in the packed layout with
 * hpr heads per block (hpr = all heads: the plain [n][heads][hd] layout). */
static __device__ __forceinline__ int64_t packed_off(int64_t t, int64_t h, int64_t n, int64_t hpr, int64_t hd) {
    return ((h / hpr * n + t) * hpr + h % hpr) * hd;
}

/* One thread per (token, head of q/k/v, pair index i < hd/2); q has qb heads
 * per packed block, k and v kb. */
__global__ void k_rope_split_fwd(bf16 *q, bf16 *k, bf16 *v, const bf16 *qkv, const int32_t *pos,
                                 const double *inv_freq, int64_t n, int64_t hq, int64_t hkv, int64_t hd, int64_t qb,
                                 int64_t kb) {
    int64_t half = hd / 2, heads = hq + 2 * hkv;
    int64_t idx = (int64_t)blockIdx.x * blockDim.x + threadIdx.x;
    if (idx >= n * heads * half) return;
    int64_t i = idx % half, h = (idx / half) % heads, t = idx / (half * heads);
    const bf16 *src = qkv + (t * heads + h) * hd;
    float x1 = bf(src[i]), x2 = bf(src[i + half]);
    bf16 *dst;
    if (h < hq) dst = q + packed_off(t, h, n, qb, hd);
    else if (h < hq + hkv) dst = k + packed_off(t, h - hq, n, kb, hd);
    else {
        dst = v + packed_off(t, h - hq - hkv, n, kb, hd);
        dst[i] = src[i];
        dst[i + half] = src[i + half];
        return;
    }
    float s, c;
    rope_sincos(pos[t], inv_freq[i], &s, &c);
    dst[i] = tobf(x1 * c - x2 * s);
    dst[i + half] = tobf(x2 * c + x1 * s);
}

__global__ void k_rope_split_bwd(bf16 *dqkv, const bf16 *dq, const bf16 *dk, const bf16 *dv, const int32_t *pos,
                                 const double *inv_freq, int64_t n, int64_t hq, int64_t hkv, int64_t hd, int64_t qb,
                                 int64_t kb) {
    int64_t half = hd / 2, heads = hq + 2 * hkv;
    int64_t idx = (int64_t)blockIdx.x * blockDim.x + threadIdx.x;
    if (idx >= n * heads * half) return;
    int64_t i = idx % half, h = (idx / half) % heads, t = idx / (half * heads);
    bf16 *dst = dqkv + (t * heads + h) * hd;
    const bf16 *src;
    if (h < hq) src = dq + packed_off(t, h, n, qb, hd);
    else if (h < hq + hkv) src = dk + packed_off(t, h - hq, n, kb, hd);
    else {
        src = dv + packed_off(t, h - hq - hkv, n, kb, hd);
        dst[i] = src[i];
        dst[i + half] = src[i + half];
        return;
    }
    float g1 = bf(src[i]), g2 = bf(src[i + half]);
    float s, c;
    rope_sincos(pos[t], inv_freq[i], &s, &c);
    /* transpose of the rotation */
    dst[i] = tobf(g1 * c + g2 * s);
    dst[i + half] = tobf(g2 * c - g1 * s);
}

static void rope_check(const char *op, int64_t hq, int64_t hkv, int64_t hd, int pq, int pkv) {
    if (hd <= 0 || hd % 2)
        asp_die(ASP_EXIT_FAILURE, "cuda %s: head dim %lld must be even and positive", op, (long long)hd);
    if (pq < 1 || hq % pq || pkv < 1 || hkv % pkv)
        asp_die(ASP_EXIT_FAILURE, "cuda %s: %lld query / %lld KV heads do not split into packed blocks for %d / %d "
                "ranks; the head counts must be multiples of the sequence-parallel degree",
                op, (long long)hq, (long long)hkv, pq, pkv);
}

extern "C" void cuda_rope_split_fwd(void *q, void *k, void *v, const void *qkv, const int32_t *pos,
                                    const double *inv_freq, int64_t n, int64_t hq, int64_t hkv, int64_t hd, int pq,
                                    int pkv) {
    rope_check("rope_split_fwd", hq, hkv, hd, pq, pkv);
    size_t work = (size_t)n * (size_t)(hq + 2 * hkv) * (size_t)(hd / 2);
    if (!work) return;
    k_rope_split_fwd<<<cuda_blocks(work, 256), 256, 0, g_cuda.stream>>>(
        (bf16 *)q, (bf16 *)k, (bf16 *)v, (const bf16 *)qkv, pos, inv_freq, n, hq, hkv, hd, hq / pq, hkv / pkv);
    CUDA_CHECK_LAUNCH("rope_split_fwd");
}

extern "C" void cuda_rope_split_bwd(void *dqkv, const void *dq, const void *dk, const void *dv, const int32_t *pos,
                                    const double *inv_freq, int64_t n, int64_t hq, int64_t hkv, int64_t hd, int pq,
                                    int pkv) {
    rope_check("rope_split_bwd", hq, hkv, hd, pq, pkv);
    size_t work = (size_t)n * (size_t)(hq + 2 * hkv) * (size_t)(hd / 2);
    if (!work) return;
    k_rope_split_bwd<<<cuda_blocks(work, 256), 256, 0, g_cuda.stream>>>(
        (bf16 *)dqkv, (const bf16 *)dq, (const bf16 *)dk, (const bf16 *)dv, pos, inv_freq, n, hq, hkv, hd, hq / pq,
        hkv / pkv);
    CUDA_CHECK_LAUNCH("rope_split_bwd");
}

/* ------------------------------------------------------------ SwiGLU */

static __device__ __forceinline__ float sigmoidf_(float x) { return 1.0f / (1.0f + __expf(-x)); }

/* vec: f % 8 == 0 and 16-byte aligned pointers, so 8 consecutive columns of
 * one row are one vector and never straddle the gate/up boundary. */
__global__ void k_swiglu_fwd(bf16 *out, const bf16 *gu, int64_t n, int64_t f, int vec) {
    int64_t per = vec ? 8 : 1;
    int64_t idx = ((int64_t)blockIdx.x * blockDim.x + threadIdx.x) * per;
    if (idx >= n * f) return;
    int64_t t = idx / f, j = idx % f;
    const bf16 *g = gu + t * 2 * f + j, *u = g + f;
    if (vec) {
        bf16x8 gv = *(const bf16x8 *)g, uv = *(const bf16x8 *)u, ov;
#pragma unroll
        for (int e = 0; e < 8; e++) {
            float a = bf(gv.v[e]);
            ov.v[e] = tobf(a * sigmoidf_(a) * bf(uv.v[e]));
        }
        *(bf16x8 *)(out + idx) = ov;
    } else {
        float a = bf(*g);
        out[idx] = tobf(a * sigmoidf_(a) * bf(*u));
    }
}

__global__ void k_swiglu_bwd(bf16 *dgu, const bf16 *dout, const bf16 *gu, int64_t n, int64_t f, int vec) {
    int64_t per = vec ? 8 : 1;
    int64_t idx = ((int64_t)blockIdx.x * blockDim.x + threadIdx.x) * per;
    if (idx >= n * f) return;
    int64_t t = idx / f, j = idx % f;
    const bf16 *g = gu + t * 2 * f + j, *u = g + f;
    bf16 *dg = dgu + t * 2 * f + j, *du = dg + f;
    if (vec) {
        bf16x8 gv = *(const bf16x8 *)g, uv = *(const bf16x8 *)u, dv = *(const bf16x8 *)(dout + idx), dgv, duv;
#pragma unroll
        for (int e = 0; e < 8; e++) {
            float a = bf(gv.v[e]), b = bf(uv.v[e]), d = bf(dv.v[e]), sg = sigmoidf_(a);
            dgv.v[e] = tobf(d * b * sg * (1.0f + a * (1.0f - sg)));
            duv.v[e] = tobf(d * a * sg);
        }
        *(bf16x8 *)dg = dgv;
        *(bf16x8 *)du = duv;
    } else {
        float a = bf(*g), b = bf(*u), d = bf(dout[idx]), sg = sigmoidf_(a);
        *dg = tobf(d * b * sg * (1.0f + a * (1.0f - sg)));
        *du = tobf(d * a * sg);
    }
}

extern "C" void cuda_swiglu_fwd(void *out, const void *gu, int64_t n, int64_t f) {
    size_t work = (size_t)n * (size_t)f;
    if (!work) return;
    int vec = f % 8 == 0 && cuda_aligned16(out) && cuda_aligned16(gu);
    k_swiglu_fwd<<<cuda_blocks(vec ? work / 8 : work, 256), 256, 0, g_cuda.stream>>>((bf16 *)out, (const bf16 *)gu,
                                                                                      n, f, vec);
    CUDA_CHECK_LAUNCH("swiglu_fwd");
}

extern "C" void cuda_swiglu_bwd(void *dgu, const void *dout, const void *gu, int64_t n, int64_t f) {
    size_t work = (size_t)n * (size_t)f;
    if (!work) return;
    int vec = f % 8 == 0 && cuda_aligned16(dgu) && cuda_aligned16(dout) && cuda_aligned16(gu);
    k_swiglu_bwd<<<cuda_blocks(vec ? work / 8 : work, 256), 256, 0, g_cuda.stream>>>(
        (bf16 *)dgu, (const bf16 *)dout, (const bf16 *)gu, n, f, vec);
    CUDA_CHECK_LAUNCH("swiglu_bwd");
}

/* ------------------------------------------------------------ add / accumulate */

/* mode 0: out = a + b; mode 1: out = b (copy); the vector part covers
 * count/8 vectors, one extra launch-free scalar loop covers the tail. */
__global__ void k_add(bf16 *out, const bf16 *a, const bf16 *b, size_t count, int vec) {
    size_t i = (size_t)blockIdx.x * blockDim.x + threadIdx.x;
    if (vec) {
        size_t nv = count / 8;
        if (i < nv) {
            bf16x8 av = ((const bf16x8 *)a)[i], bv = ((const bf16x8 *)b)[i], ov;
#pragma unroll
            for (int e = 0; e < 8; e++) ov.v[e] = tobf(bf(av.v[e]) + bf(bv.v[e]));
            ((bf16x8 *)out)[i] = ov;
        } else {
            size_t j = nv * 8 + (i - nv);
            if (j < count) out[j] = tobf(bf(a[j]) + bf(b[j]));
        }
    } else if (i < count) {
        out[i] = tobf(bf(a[i]) + bf(b[i]));
    }
}

static void launch_add(bf16 *out, const bf16 *a, const bf16 *b, size_t count) {
    if (!count) return;
    int vec = cuda_aligned16(out) && cuda_aligned16(a) && cuda_aligned16(b);
    size_t work = vec ? count / 8 + count % 8 : count;
    k_add<<<cuda_blocks(work, 256), 256, 0, g_cuda.stream>>>(out, a, b, count, vec);
    CUDA_CHECK_LAUNCH("add");
}

extern "C" void cuda_add_fwd(void *out, const void *a, const void *b, size_t count) {
    launch_add((bf16 *)out, (const bf16 *)a, (const bf16 *)b, count);
}

extern "C" void cuda_accumulate(void *dst, const void *src, size_t count, int acc) {
    if (acc) launch_add((bf16 *)dst, (const bf16 *)dst, (const bf16 *)src, count);
    else if (count) CUDA_CHECK(cudaMemcpyAsync(dst, src, count * sizeof(bf16), cudaMemcpyDeviceToDevice, g_cuda.stream));
}

/* fp32 gradient shard: dst += src */
__global__ void k_add_f32(float *dst, const float *src, size_t count) {
    size_t i = (size_t)blockIdx.x * blockDim.x + threadIdx.x;
    if (i < count) dst[i] += src[i];
}

extern "C" void cuda_grad_accumulate(void *dst, const void *src, size_t count, int acc) {
    if (!count) return;
    if (!acc) {
        CUDA_CHECK(cudaMemcpyAsync(dst, src, count * sizeof(float), cudaMemcpyDeviceToDevice, g_cuda.stream));
        return;
    }
    k_add_f32<<<cuda_blocks(count, 256), 256, 0, g_cuda.stream>>>((float *)dst, (const float *)src, count);
    CUDA_CHECK_LAUNCH("grad_accumulate");
}

/* ------------------------------------------------------------ cross entropy */

/* One block per row: max, then sum of exp, then the gradient written over the
 * logits. The row's loss goes to row_loss[row]; a second kernel sums them in
 * a fixed order. */
__global__ void k_xent(bf16 *logits, float *row_loss, const int32_t *targets, int64_t vocab, float grad_scale) {
    __shared__ float sh[32];
    __shared__ float target_logit;
    int64_t row = blockIdx.x;
    bf16 *l = logits + row * vocab;
    int32_t tgt = targets[row];
    if (tgt >= vocab) {
        if (threadIdx.x == 0)
            printf("autosp-train: cuda xent: target %d at row %lld is outside the vocabulary [0, %lld)\n", (int)tgt,
                   (long long)row, (long long)vocab);
        __trap();
    }
    if (tgt < 0) {
        for (int64_t c = threadIdx.x; c < vocab; c += blockDim.x) l[c] = tobf(0.0f);
        if (threadIdx.x == 0) row_loss[row] = 0.0f;
        return;
    }
    if (threadIdx.x == 0) target_logit = bf(l[tgt]);
    float mx = -INFINITY;
    for (int64_t c = threadIdx.x; c < vocab; c += blockDim.x) mx = fmaxf(mx, bf(l[c]));
    mx = block_max(mx, sh);
    float se = 0.0f;
    for (int64_t c = threadIdx.x; c < vocab; c += blockDim.x) se += expf(bf(l[c]) - mx);
    se = block_sum(se, sh);   /* its barriers also publish target_logit */
    float lse = mx + logf(se);
    for (int64_t c = threadIdx.x; c < vocab; c += blockDim.x) {
        float p = expf(bf(l[c]) - lse);
        l[c] = tobf(grad_scale * (p - (c == tgt ? 1.0f : 0.0f)));
    }
    if (threadIdx.x == 0) row_loss[row] = lse - target_logit;
}

__global__ void k_sum_to_scalar(float *out, const float *v, int64_t n) {
    __shared__ double sh[32];
    double s = 0.0;
    for (int64_t i = threadIdx.x; i < n; i += blockDim.x) s += (double)v[i];
    s = block_sum_d(s, sh);
    if (threadIdx.x == 0) *out += (float)s;
}

extern "C" void cuda_xent_fwd_bwd(void *logits, float *loss_sum, const int32_t *targets, int64_t n, int64_t vocab,
                                  float grad_scale) {
    if (n <= 0) return;
    float *row_loss = (float *)cuda_scratch((size_t)n * sizeof(float));
    k_xent<<<cuda_blocks((size_t)n, 1), 512, 0, g_cuda.stream>>>((bf16 *)logits, row_loss, targets, vocab, grad_scale);
    CUDA_CHECK_LAUNCH("xent_fwd_bwd");
    k_sum_to_scalar<<<1, 1024, 0, g_cuda.stream>>>(loss_sum, row_loss, n);
    CUDA_CHECK_LAUNCH("xent loss sum");
}

/* ------------------------------------------------------------ Ulysses layout */

static __device__ __forceinline__ int64_t head0(int64_t j, int64_t heads, int P, int64_t hpr) {
    return heads >= P ? j * hpr : (j * heads) / P;
}

/* One thread per dst element of [P][n][hpr][hd]. */
__global__ void k_heads_pack(bf16 *dst, const bf16 *src, int64_t n, int64_t heads, int64_t hd, int P, int64_t hpr) {
    int64_t idx = (int64_t)blockIdx.x * blockDim.x + threadIdx.x;
    if (idx >= (int64_t)P * n * hpr * hd) return;
    int64_t c = idx % hd, i = (idx / hd) % hpr, t = (idx / (hd * hpr)) % n, j = idx / (hd * hpr * n);
    dst[idx] = src[(t * heads + head0(j, heads, P, hpr) + i) * hd + c];
}

/* One thread per dst element of [n][heads][hd]; replicas summed in j order. */
__global__ void k_heads_unpack(bf16 *dst, const bf16 *src, int64_t n, int64_t heads, int64_t hd, int P, int64_t hpr,
                               int acc) {
    int64_t idx = (int64_t)blockIdx.x * blockDim.x + threadIdx.x;
    if (idx >= n * heads * hd) return;
    int64_t c = idx % hd, h = (idx / hd) % heads, t = idx / (hd * heads);
    float s = 0.0f;
    for (int j = 0; j < P; j++) {
        int64_t h0 = head0(j, heads, P, hpr);
        if (h0 <= h && h < h0 + hpr) s += bf(src[(((int64_t)j * n + t) * hpr + (h - h0)) * hd + c]);
    }
    dst[idx] = tobf(acc ? bf(dst[idx]) + s : s);
}

static int64_t heads_per_rank(int64_t heads, int P) {
    if (P <= 0 || heads <= 0)
        asp_die(ASP_EXIT_FAILURE, "cuda heads_pack: heads %lld and P %d must be positive", (long long)heads, P);
    if (heads >= P && heads % P)
        asp_die(ASP_EXIT_FAILURE, "cuda heads_pack: %lld heads do not split over %d ranks; choose an SP degree "
                "that divides the head count", (long long)heads, P);
    if (heads < P && P % heads)
        asp_die(ASP_EXIT_FAILURE, "cuda heads_pack: %d ranks are not a multiple of %lld heads; choose an SP degree "
                "that is", P, (long long)heads);
    return heads >= P ? heads / P : 1;
}

extern "C" void cuda_heads_pack(void *dst, const void *src, int64_t n, int64_t heads, int64_t hd, int P) {
    int64_t hpr = heads_per_rank(heads, P);
    size_t work = (size_t)P * (size_t)n * (size_t)hpr * (size_t)hd;
    if (!work) return;
    k_heads_pack<<<cuda_blocks(work, 256), 256, 0, g_cuda.stream>>>((bf16 *)dst, (const bf16 *)src, n, heads, hd, P,
                                                                     hpr);
    CUDA_CHECK_LAUNCH("heads_pack");
}

extern "C" void cuda_heads_unpack(void *dst, const void *src, int64_t n, int64_t heads, int64_t hd, int P, int acc) {
    int64_t hpr = heads_per_rank(heads, P);
    size_t work = (size_t)n * (size_t)heads * (size_t)hd;
    if (!work) return;
    k_heads_unpack<<<cuda_blocks(work, 256), 256, 0, g_cuda.stream>>>((bf16 *)dst, (const bf16 *)src, n, heads, hd,
                                                                       P, hpr, acc);
    CUDA_CHECK_LAUNCH("heads_unpack");
}

/* ------------------------------------------------------------ optimizer */

#define SUMSQ_BLOCKS 1024

__global__ void k_sumsq_partial(double *partial, const float *g, size_t n) {
    __shared__ double sh[32];
    double s = 0.0;
    for (size_t i = (size_t)blockIdx.x * blockDim.x + threadIdx.x; i < n; i += (size_t)gridDim.x * blockDim.x) {
        double v = (double)g[i];
        s += v * v;
    }
    s = block_sum_d(s, sh);
    if (threadIdx.x == 0) partial[blockIdx.x] = s;
}

__global__ void k_sumsq_final(float *sumsq, const double *partial, int nb) {
    __shared__ double sh[32];
    double s = 0.0;
    for (int i = threadIdx.x; i < nb; i += blockDim.x) s += partial[i];
    s = block_sum_d(s, sh);
    if (threadIdx.x == 0) *sumsq += (float)s;
}

extern "C" void cuda_grad_sumsq(float *sumsq, const void *grad, size_t n) {
    if (!n) return;
    double *partial = (double *)cuda_scratch(SUMSQ_BLOCKS * sizeof(double));
    k_sumsq_partial<<<SUMSQ_BLOCKS, 256, 0, g_cuda.stream>>>(partial, (const float *)grad, n);
    CUDA_CHECK_LAUNCH("grad_sumsq partial");
    k_sumsq_final<<<1, 1024, 0, g_cuda.stream>>>(sumsq, partial, SUMSQ_BLOCKS);
    CUDA_CHECK_LAUNCH("grad_sumsq final");
}

__global__ void k_adamw(float *master, bf16 *param, float *m, float *v, const float *grad, size_t n, float lr,
                        float b1, float b2, float eps, float wd, float bc1, float bc2, const float *gsumsq,
                        float max_norm) {
    size_t i = (size_t)blockIdx.x * blockDim.x + threadIdx.x;
    if (i >= n) return;
    float clip = 1.0f;
    if (max_norm > 0.0f && gsumsq) {
        float norm = sqrtf(*gsumsq);
        if (norm > max_norm) clip = max_norm / norm;
    }
    float g = grad[i] * clip;
    float mi = b1 * m[i] + (1.0f - b1) * g;
    float vi = b2 * v[i] + (1.0f - b2) * g * g;
    m[i] = mi;
    v[i] = vi;
    float w = master[i];
    w -= lr * (mi / bc1 / (sqrtf(vi / bc2) + eps) + wd * w);
    master[i] = w;
    param[i] = tobf(w);
}

extern "C" void cuda_adamw(float *master, void *param, float *m, float *v, const void *grad, size_t n, float lr,
                           float beta1, float beta2, float eps, float weight_decay, int64_t step,
                           const float *grad_sumsq, float max_norm) {
    if (!n) return;
    if (step < 1) asp_die(ASP_EXIT_FAILURE, "cuda adamw: step %lld must start at 1", (long long)step);
    float bc1 = (float)(1.0 - pow((double)beta1, (double)step));
    float bc2 = (float)(1.0 - pow((double)beta2, (double)step));
    k_adamw<<<cuda_blocks(n, 256), 256, 0, g_cuda.stream>>>(master, (bf16 *)param, m, v, (const float *)grad, n, lr,
                                                            beta1, beta2, eps, weight_decay, bc1, bc2, grad_sumsq,
                                                            max_norm);
    CUDA_CHECK_LAUNCH("adamw");
}

/* Scratch of this file's ops at the largest shapes (mirrors their
 * cuda_scratch calls): embedding sort, rmsnorm partials, per-row losses,
 * sum-of-squares partials. */
extern "C" size_t cuda_kernels_scratch_bytes(int64_t rows, int64_t d, int64_t vocab, int64_t loss_chunk) {
    size_t need = SUMSQ_BLOCKS * sizeof(double);
    if (rows > 0 && rows <= INT32_MAX) {
        int end_bit = 1;
        while (end_bit < 31 && ((int64_t)1 << end_bit) < vocab) end_bit++;
        size_t cub_bytes = 0;
        CUDA_CHECK(cub::DeviceRadixSort::SortPairs(NULL, cub_bytes, (const int32_t *)NULL, (int32_t *)NULL,
                                                   (const int32_t *)NULL, (int32_t *)NULL, (int)rows, 0, end_bit,
                                                   g_cuda.stream));
        size_t embed = 3 * asp_align_up((size_t)rows * sizeof(int32_t), 256) + cub_bytes;
        if (embed > need) need = embed;
    }
    size_t rms = rows > 0 ? (size_t)rms_bwd_blocks(rows) * (size_t)d * sizeof(float) : 0; /* rmsnorm, add_rmsnorm dw */
    if (rms > need) need = rms;
    size_t xent = (size_t)loss_chunk * sizeof(float);
    if (xent > need) need = xent;
    return need;
}
