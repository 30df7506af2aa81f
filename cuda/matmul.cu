/* GEMMs through cuBLASLt: bf16 inputs, fp32 accumulation (CUBLAS_COMPUTE_32F).
 * Row-major tensors are column-major transposes, so each row-major product
 * C = A B is issued as C^T = B^T A^T. Descriptors, layouts and the heuristic's
 * algorithm are cached per shape so steady-state calls only launch. */
#include "autosp_config.h"

#include <string.h>

#include "cuda/cuda_common.h"

typedef struct {
    /* key */
    int transa, transb;
    int64_t m, n, k, lda, ldb, ldc;
    cudaDataType_t ctype;
    int beta_nonzero;
    int align_a, align_b, align_c;
    /* value */
    cublasLtMatmulDesc_t desc;
    cublasLtMatrixLayout_t la, lb, lc;
    cublasLtMatmulAlgo_t algo;
    int used;
} mm_plan_t;

#define MM_CACHE 128
static mm_plan_t mm_cache[MM_CACHE];
static int mm_count;

static int ptr_align(const void *p) {
    uintptr_t u = (uintptr_t)p;
    int a = 256;
    while (a > 2 && (u % (uintptr_t)a)) a >>= 1;
    return a;
}

static mm_plan_t *mm_plan(int transa, int transb, int64_t m, int64_t n, int64_t k, int64_t lda, int64_t ldb,
                          int64_t ldc, cudaDataType_t ctype, int beta_nonzero, const void *A, const void *B,
                          const void *C) {
    int aa = ptr_align(A), ab = ptr_align(B), ac = ptr_align(C);
    for (int i = 0; i < mm_count; i++) {
        mm_plan_t *p = &mm_cache[i];
        if (p->transa == transa && p->transb == transb && p->m == m && p->n == n && p->k == k && p->lda == lda &&
            p->ldb == ldb && p->ldc == ldc && p->ctype == ctype && p->beta_nonzero == beta_nonzero &&
            p->align_a == aa && p->align_b == ab && p->align_c == ac)
            return p;
    }
    if (mm_count == MM_CACHE)
        asp_die(ASP_EXIT_FAILURE, "cuda matmul: more than %d distinct GEMM shapes; raise MM_CACHE in cuda/matmul.cu",
                MM_CACHE);
    mm_plan_t *p = &mm_cache[mm_count];
    memset(p, 0, sizeof *p);
    p->transa = transa; p->transb = transb; p->m = m; p->n = n; p->k = k;
    p->lda = lda; p->ldb = ldb; p->ldc = ldc; p->ctype = ctype; p->beta_nonzero = beta_nonzero;
    p->align_a = aa; p->align_b = ab; p->align_c = ac;

    CUBLAS_CHECK(cublasLtMatmulDescCreate(&p->desc, CUBLAS_COMPUTE_32F, CUDA_R_32F));
    cublasOperation_t ta = transa ? CUBLAS_OP_T : CUBLAS_OP_N, tb = transb ? CUBLAS_OP_T : CUBLAS_OP_N;
    CUBLAS_CHECK(cublasLtMatmulDescSetAttribute(p->desc, CUBLASLT_MATMUL_DESC_TRANSA, &ta, sizeof ta));
    CUBLAS_CHECK(cublasLtMatmulDescSetAttribute(p->desc, CUBLASLT_MATMUL_DESC_TRANSB, &tb, sizeof tb));
    /* column-major layouts: rows x cols of the stored matrix */
    CUBLAS_CHECK(cublasLtMatrixLayoutCreate(&p->la, CUDA_R_16BF, (uint64_t)(transa ? k : m),
                                            (uint64_t)(transa ? m : k), lda));
    CUBLAS_CHECK(cublasLtMatrixLayoutCreate(&p->lb, CUDA_R_16BF, (uint64_t)(transb ? n : k),
                                            (uint64_t)(transb ? k : n), ldb));
    CUBLAS_CHECK(cublasLtMatrixLayoutCreate(&p->lc, ctype, (uint64_t)m, (uint64_t)n, ldc));

    cublasLtMatmulPreference_t pref;
    CUBLAS_CHECK(cublasLtMatmulPreferenceCreate(&pref));
    CUBLAS_CHECK(cublasLtMatmulPreferenceSetAttribute(pref, CUBLASLT_MATMUL_PREF_MAX_WORKSPACE_BYTES,
                                                      &g_cuda.lt_workspace_bytes, sizeof g_cuda.lt_workspace_bytes));
    /* Operands may be offsets into larger buffers: tell the heuristic the real
     * alignment so it never picks a kernel that assumes more. */
    uint32_t ua = (uint32_t)aa, ub = (uint32_t)ab, uc = (uint32_t)ac;
    CUBLAS_CHECK(cublasLtMatmulPreferenceSetAttribute(pref, CUBLASLT_MATMUL_PREF_MIN_ALIGNMENT_A_BYTES, &ua, sizeof ua));
    CUBLAS_CHECK(cublasLtMatmulPreferenceSetAttribute(pref, CUBLASLT_MATMUL_PREF_MIN_ALIGNMENT_B_BYTES, &ub, sizeof ub));
    CUBLAS_CHECK(cublasLtMatmulPreferenceSetAttribute(pref, CUBLASLT_MATMUL_PREF_MIN_ALIGNMENT_C_BYTES, &uc, sizeof uc));
    CUBLAS_CHECK(cublasLtMatmulPreferenceSetAttribute(pref, CUBLASLT_MATMUL_PREF_MIN_ALIGNMENT_D_BYTES, &uc, sizeof uc));
    cublasLtMatmulHeuristicResult_t res;
    int found = 0;
    CUBLAS_CHECK(cublasLtMatmulAlgoGetHeuristic(g_cuda.lt, p->desc, p->la, p->lb, p->lc, p->lc, pref, 1, &res, &found));
    CUBLAS_CHECK(cublasLtMatmulPreferenceDestroy(pref));
    if (found < 1 || res.state != CUBLAS_STATUS_SUCCESS)
        asp_die(ASP_EXIT_FAILURE, "cuda matmul: cuBLASLt has no algorithm for m=%lld n=%lld k=%lld (trans %d%d, "
                "C %s, alignments %d/%d/%d bytes); check that sizes and offsets are multiples of 8 elements",
                (long long)m, (long long)n, (long long)k, transa, transb, ctype == CUDA_R_32F ? "fp32" : "bf16",
                aa, ab, ac);
    p->algo = res.algo;
    p->used = 1;
    mm_count++;
    return p;
}

/* Column-major D = alpha op(A) op(B) + beta C, C == D. */
static void lt_gemm(int transa, int transb, int64_t m, int64_t n, int64_t k, const void *A, int64_t lda,
                    const void *B, int64_t ldb, void *C, int64_t ldc, cudaDataType_t ctype, float beta) {
    if (m <= 0 || n <= 0) return;
    if (k <= 0) {
        /* an empty sum: D = beta C (n columns of m elements, ldc apart) */
        size_t elt = ctype == CUDA_R_32F ? 4 : 2;
        if (beta == 0.0f)
            CUDA_CHECK(cudaMemset2DAsync(C, (size_t)ldc * elt, 0, (size_t)m * elt, (size_t)n, g_cuda.stream));
        return;
    }
    mm_plan_t *p = mm_plan(transa, transb, m, n, k, lda, ldb, ldc, ctype, beta != 0.0f, A, B, C);
    float alpha = 1.0f;
    CUBLAS_CHECK(cublasLtMatmul(g_cuda.lt, p->desc, &alpha, A, p->la, B, p->lb, &beta, C, p->lc, C, p->lc, &p->algo,
                                g_cuda.lt_workspace, g_cuda.lt_workspace_bytes, g_cuda.stream));
}

extern "C" void cuda_matmul_fwd(void *out, const void *x, const void *w, int64_t n, int64_t k, int64_t m) {
    /* out^T [m,n] = W [m,k] (stored k x m col-major, transposed) * x^T [k,n] */
    lt_gemm(1, 0, m, n, k, w, k, x, k, out, m, CUDA_R_16BF, 0.0f);
}

extern "C" void cuda_matmul_bwd(void *dx, int acc, void *dw, const void *dout, const void *x, const void *w,
                                int64_t n, int64_t k, int64_t m) {
    /* dw first: dx may overwrite x (backend.h) */
    /* dw^T [k,m] (fp32) += x^T [k,n] * dout [n,m] (dout stored m x n col-major, transposed) */
    if (dw) lt_gemm(0, 1, k, m, n, x, k, dout, m, dw, k, CUDA_R_32F, 1.0f);
    /* dx^T [k,n] = W^T [k,m] (W stored as k x m col-major) * dout^T [m,n] */
    if (dx) lt_gemm(0, 0, k, n, m, w, k, dout, m, dx, k, CUDA_R_16BF, acc ? 1.0f : 0.0f);
}

static int64_t block_width(const char *op, int64_t k, int blocks) {
    if (blocks < 1 || k % blocks)
        asp_die(ASP_EXIT_FAILURE, "cuda %s: %lld input features do not split into %d equal blocks; the packed "
                "layout needs the head count to be a multiple of the sequence-parallel degree",
                op, (long long)k, blocks);
    return k / blocks;
}

/* x packed: block j is x_j [n, kb] (kb = k / blocks, at x + j n kb), and it
 * meets the weight's columns j kb .. j kb + kb - 1, i.e. W_j [m, kb] with row
 * stride k. out^T [m,n] = sum_j W_j x_j^T: one GEMM per block, the first
 * writing (beta 0), the others adding (beta 1). Each block's partial sum is
 * rounded to bf16 when it is added, so the result carries up to `blocks`
 * bf16 roundings instead of one. */
extern "C" void cuda_matmul_blocked_fwd(void *out, const void *x, const void *w, int64_t n, int64_t k, int64_t m,
                                        int blocks) {
    int64_t kb = block_width("matmul_blocked_fwd", k, blocks);
    const __nv_bfloat16 *X = (const __nv_bfloat16 *)x, *W = (const __nv_bfloat16 *)w;
    for (int64_t j = 0; j < blocks; j++)
        lt_gemm(1, 0, m, n, kb, W + j * kb, k, X + j * n * kb, kb, out, m, CUDA_R_16BF, j ? 1.0f : 0.0f);
}

/* dx_j^T [kb,n] (+)= W_j^T dout^T, written straight into the packed dx; and
 * dw^T rows j kb .. (dw's columns, leading dimension k) += x_j^T dout. */
extern "C" void cuda_matmul_blocked_bwd(void *dx, int acc, void *dw, const void *dout, const void *x, const void *w,
                                        int64_t n, int64_t k, int64_t m, int blocks) {
    int64_t kb = block_width("matmul_blocked_bwd", k, blocks);
    const __nv_bfloat16 *X = (const __nv_bfloat16 *)x, *W = (const __nv_bfloat16 *)w;
    for (int64_t j = 0; j < blocks; j++) {
        if (dx) lt_gemm(0, 0, kb, n, m, W + j * kb, k, dout, m, (__nv_bfloat16 *)dx + j * n * kb, kb, CUDA_R_16BF,
                        acc ? 1.0f : 0.0f);
        if (dw) lt_gemm(0, 1, kb, m, n, X + j * n * kb, kb, dout, m, (float *)dw + j * kb, k, CUDA_R_32F, 1.0f);
    }
}

/* The blocked matmul on windows (attention in pieces): W_j [m, kb] at row
 * stride ldw, out / dout at row stride ldo; cuBLASLt takes both as leading
 * dimensions. The first block writes (beta 0) unless acc, the others add. */
extern "C" void cuda_matmul_slice_fwd(void *out, int64_t ldo, int acc, const void *x, const void *w, int64_t ldw,
                                      int64_t n, int64_t k, int64_t m, int blocks) {
    int64_t kb = block_width("matmul_slice_fwd", k, blocks);
    const __nv_bfloat16 *X = (const __nv_bfloat16 *)x, *W = (const __nv_bfloat16 *)w;
    for (int64_t j = 0; j < blocks; j++)
        lt_gemm(1, 0, m, n, kb, W + j * kb, ldw, X + j * n * kb, kb, out, ldo, CUDA_R_16BF, (acc || j) ? 1.0f : 0.0f);
}

extern "C" void cuda_matmul_slice_bwd(void *dx, int acc, void *dw, int64_t ldw, const void *dout, int64_t ldo,
                                      const void *x, const void *w, int64_t n, int64_t k, int64_t m, int blocks) {
    int64_t kb = block_width("matmul_slice_bwd", k, blocks);
    const __nv_bfloat16 *X = (const __nv_bfloat16 *)x, *W = (const __nv_bfloat16 *)w;
    for (int64_t j = 0; dw && j < blocks; j++)   /* dw first: dx may overwrite x */
        lt_gemm(0, 1, kb, m, n, X + j * n * kb, kb, dout, ldo, (float *)dw + j * kb, ldw, CUDA_R_32F, 1.0f);
    for (int64_t j = 0; dx && j < blocks; j++)
        lt_gemm(0, 0, kb, n, m, W + j * kb, ldw, dout, ldo, (__nv_bfloat16 *)dx + j * n * kb, kb, CUDA_R_16BF,
                acc ? 1.0f : 0.0f);
}

extern "C" void cuda_matmul_shutdown(void) {
    for (int i = 0; i < mm_count; i++) {
        mm_plan_t *p = &mm_cache[i];
        CUBLAS_CHECK(cublasLtMatrixLayoutDestroy(p->la));
        CUBLAS_CHECK(cublasLtMatrixLayoutDestroy(p->lb));
        CUBLAS_CHECK(cublasLtMatrixLayoutDestroy(p->lc));
        CUBLAS_CHECK(cublasLtMatmulDescDestroy(p->desc));
    }
    mm_count = 0;
}
