/* Private to cuda/: error checks, the backend's shared state (stream, library
 * handles, scratch) and bf16 helpers. Every .cu file of the backend includes it
 * after autosp_config.h. */
#ifndef AUTOSP_CUDA_COMMON_H
#define AUTOSP_CUDA_COMMON_H

#include <stddef.h>
#include <stdint.h>

#include <cuda_runtime.h>
#include <cuda_bf16.h>
#include <cublasLt.h>
#include <cudnn.h>

extern "C" {
#include "util.h"
#include "backend.h"
}

/* A failing call is fatal: print the call, where it was made and what the
 * library said, then exit (asp_die aborts every rank under MPI). */
#define CUDA_CHECK(call)                                                                   \
    do {                                                                                   \
        cudaError_t e_ = (call);                                                           \
        if (e_ != cudaSuccess)                                                             \
            asp_die(ASP_EXIT_FAILURE, "CUDA call %s failed at %s:%d: %s (%s)", #call,      \
                    __FILE__, __LINE__, cudaGetErrorString(e_), cudaGetErrorName(e_));     \
    } while (0)

/* Kernel launches report configuration errors through cudaGetLastError. */
#define CUDA_CHECK_LAUNCH(what) cuda_check_launch(what, __FILE__, __LINE__)

#define CUBLAS_CHECK(call)                                                                 \
    do {                                                                                   \
        cublasStatus_t s_ = (call);                                                        \
        if (s_ != CUBLAS_STATUS_SUCCESS)                                                   \
            asp_die(ASP_EXIT_FAILURE, "cuBLASLt call %s failed at %s:%d: status %d (%s)",  \
                    #call, __FILE__, __LINE__, (int)s_, cublasLtGetStatusName(s_));        \
    } while (0)

#define CUDNN_CHECK(call)                                                                  \
    do {                                                                                   \
        cudnnStatus_t s_ = (call);                                                         \
        if (s_ != CUDNN_STATUS_SUCCESS) cuda_cudnn_fail(#call, __FILE__, __LINE__, s_);    \
    } while (0)

/* ASP_CUDNN_GRAPH: the same operation graphs either way; `current` (the
 * default) runs the heuristic's first engine configuration that finalises,
 * `tuned` times every distinct configuration of heuristic modes A and B on
 * the first call of a shape and keeps the fastest. */
enum { CUDNN_GRAPH_CURRENT = 0, CUDNN_GRAPH_TUNED = 1 };

/* Shared state of the backend; one device and one stream per process. */
typedef struct {
    int device;
    int initialised;
    cudaStream_t stream;
    /* activation offload: copies on their own stream, ordered by events */
    cudaStream_t copy_stream;
    cudaEvent_t copy_issue;         /* the compute point a copy starts after */
    cudaEvent_t copy_tag[BACKEND_COPY_TAGS]; /* the last copy of each tag */
    cudaEvent_t *copy_ev;           /* timing pairs: copies (busy) and waits (exposed) */
    int *copy_ev_kind;              /* per pair: 0 copy, 1 wait */
    int copy_ev_n, copy_ev_cap;     /* events in use, allocated */
    double copy_bytes, copy_busy_s, copy_exposed_s;
    cublasLtHandle_t lt;
    cudnnHandle_t cudnn;
    void *lt_workspace;
    size_t lt_workspace_bytes;
    void *scratch;          /* device scratch shared by ops (one stream: no overlap) */
    size_t scratch_bytes;
    int scratch_planned;    /* 1: scratch is the plan's region (set_scratch): fixed, not ours to free */
    int sm_count;
    int attention_cudnn;    /* attention through cuDNN's fused graphs (ASP_ATTENTION=cudnn, the default) */
    int cudnn_graph;        /* how its plans are chosen (ASP_CUDNN_GRAPH): CUDNN_GRAPH_CURRENT or _TUNED */
    char name[256];
} cuda_state_t;

extern "C" {
extern cuda_state_t g_cuda;

void cuda_check_launch(const char *what, const char *file, int line);
void cuda_cudnn_fail(const char *call, const char *file, int line, cudnnStatus_t s) ASP_NORETURN;
/* Device scratch of at least `bytes`, valid until the next call. Once the
 * executor has set the planned region (set_scratch), a larger request is a
 * planning bug and fatal; before that (op tests) the buffer grows. */
void *cuda_scratch(size_t bytes);
/* Scratch each op family needs at the given shapes (see cuda_scratch_bytes). */
size_t cuda_kernels_scratch_bytes(int64_t rows, int64_t d, int64_t vocab, int64_t loss_chunk);
size_t cuda_attention_scratch_bytes(int64_t s, int64_t hq, int64_t hkv, int64_t hd);
size_t cuda_attention_cudnn_scratch_bytes(int64_t s, int64_t hq, int64_t hkv, int64_t hd, int documents);
/* A CUDA event recorded on the backend's stream now, and the milliseconds
 * between two such events (waits for `stop`, then destroys both). For
 * timing programs. */
void *cuda_event_record(void);
float cuda_event_elapsed_ms(void *start, void *stop);

/* cuda/kernels.cu */
void cuda_embed_fwd(void *out, const int32_t *tokens, const void *wte, int64_t n, int64_t d);
void cuda_embed_bwd(void *dwte, const int32_t *tokens, const void *dout, int64_t n, int64_t d, int64_t vocab);
void cuda_rmsnorm_fwd(void *out, const void *x, const void *w, int64_t n, int64_t d, float eps);
void cuda_rmsnorm_bwd(void *dx, int acc, void *dw, const void *dout, const void *x, const void *w,
                      int64_t n, int64_t d, float eps);
void cuda_add_rmsnorm_fwd(void *h, void *hn, const void *a, const void *b, const void *w, int64_t n, int64_t d,
                          float eps);
void cuda_add_rmsnorm_bwd(void *da, int acc_a, void *db, int acc_b, void *dw, const void *dh, const void *dhn,
                          const void *h, const void *w, int64_t n, int64_t d, float eps);
void cuda_rope_split_fwd(void *q, void *k, void *v, const void *qkv, const int32_t *pos,
                         const double *inv_freq, int64_t n, int64_t hq, int64_t hkv, int64_t hd, int pq, int pkv);
void cuda_rope_split_bwd(void *dqkv, const void *dq, const void *dk, const void *dv, const int32_t *pos,
                         const double *inv_freq, int64_t n, int64_t hq, int64_t hkv, int64_t hd, int pq, int pkv);
void cuda_swiglu_fwd(void *out, const void *gu, int64_t n, int64_t f);
void cuda_swiglu_bwd(void *dgu, const void *dout, const void *gu, int64_t n, int64_t f);
void cuda_add_fwd(void *out, const void *a, const void *b, size_t count);
void cuda_accumulate(void *dst, const void *src, size_t count, int acc);
void cuda_grad_accumulate(void *dst, const void *src, size_t count, int acc);
void cuda_xent_fwd_bwd(void *logits, float *loss_sum, const int32_t *targets, int64_t n, int64_t vocab,
                       float grad_scale);
void cuda_heads_pack(void *dst, const void *src, int64_t n, int64_t heads, int64_t hd, int P);
void cuda_heads_unpack(void *dst, const void *src, int64_t n, int64_t heads, int64_t hd, int P, int acc);
void cuda_grad_sumsq(float *sumsq, const void *grad, size_t n);
void cuda_adamw(float *master, void *param, float *m, float *v, const void *grad, size_t n,
                float lr, float beta1, float beta2, float eps, float weight_decay, int64_t step,
                const float *grad_sumsq, float max_norm);
void cuda_f32_to_bf16(__nv_bfloat16 *dst, const float *src, size_t n);
void cuda_bf16_to_f32(float *dst, const __nv_bfloat16 *src, size_t n);

/* cuda/matmul.cu */
void cuda_matmul_fwd(void *out, const void *x, const void *w, int64_t n, int64_t k, int64_t m);
void cuda_matmul_bwd(void *dx, int acc, void *dw, const void *dout, const void *x, const void *w,
                     int64_t n, int64_t k, int64_t m);
void cuda_matmul_blocked_fwd(void *out, const void *x, const void *w, int64_t n, int64_t k, int64_t m, int blocks);
void cuda_matmul_blocked_bwd(void *dx, int acc, void *dw, const void *dout, const void *x, const void *w,
                             int64_t n, int64_t k, int64_t m, int blocks);
void cuda_matmul_slice_fwd(void *out, int64_t ldo, int acc, const void *x, const void *w, int64_t ldw,
                           int64_t n, int64_t k, int64_t m, int blocks);
void cuda_matmul_slice_bwd(void *dx, int acc, void *dw, int64_t ldw, const void *dout, int64_t ldo,
                           const void *x, const void *w, int64_t n, int64_t k, int64_t m, int blocks);
void cuda_matmul_shutdown(void);

/* cuda/attention.cu (simple kernels) */
void cuda_attention_fwd(void *out, float *lse, const void *q, const void *k, const void *v,
                        int64_t s, int64_t hq, int64_t hkv, int64_t hd, float scale, const attn_docs_t *docs);
void cuda_attention_bwd(void *dq, void *dk, void *dv, const void *dout, const void *q, const void *k,
                        const void *v, const void *out, const float *lse,
                        int64_t s, int64_t hq, int64_t hkv, int64_t hd, float scale, const attn_docs_t *docs);
/* docs NULL: one causal sequence; else docs->start (device) bounds every row */
void cuda_attention_simple_fwd(void *out, float *lse, const void *q, const void *k, const void *v,
                               int64_t s, int64_t hq, int64_t hkv, int64_t hd, float scale, const attn_docs_t *docs);
void cuda_attention_simple_bwd(void *dq, void *dk, void *dv, const void *dout, const void *q, const void *k,
                               const void *v, const void *out, const float *lse,
                               int64_t s, int64_t hq, int64_t hkv, int64_t hd, float scale, const attn_docs_t *docs);

/* cuda/attention_cudnn.cu (cuDNN fused flash attention, plans cached per shape) */
/* docs with several documents run the ragged graphs (documents as the batch) */
void cuda_attention_cudnn_fwd(void *out, float *lse, const void *q, const void *k, const void *v,
                              int64_t s, int64_t hq, int64_t hkv, int64_t hd, float scale, const attn_docs_t *docs);
void cuda_attention_cudnn_bwd(void *dq, void *dk, void *dv, const void *dout, const void *q, const void *k,
                              const void *v, const void *out, const float *lse,
                              int64_t s, int64_t hq, int64_t hkv, int64_t hd, float scale, const attn_docs_t *docs);
/* 1 when cuDNN builds both graphs for the shape (plans then cached), else 0
 * with the reason in why; never dies on an unsupported shape. */
int cuda_attention_cudnn_supported(int64_t s, int64_t hq, int64_t hkv, int64_t hd, char *why, size_t whylen);
/* One line on the cached forward (bwd = 0) or backward plan of a shape: the
 * graph variant, how long building it took, the engine configuration run and,
 * once tuned, every candidate's time. 0, or -1 when no plan is cached yet. */
int cuda_attention_cudnn_describe(int bwd, int64_t s, int64_t hq, int64_t hkv, int64_t hd, char *buf, size_t len);
void cuda_attention_cudnn_shutdown(void);
}

/* Grid size for a 1-D launch of `count` work items, `threads` per block; fits
 * gridDim.x (2^31 - 1) for any count we can allocate. */
static inline unsigned int cuda_blocks(size_t count, int threads) {
    size_t b = (count + (size_t)threads - 1) / (size_t)threads;
    if (b == 0) b = 1;
    if (b > 0x7fffffffu) asp_die(ASP_EXIT_FAILURE, "cuda: %zu work items exceed one launch; split the op", count);
    return (unsigned int)b;
}

static inline int cuda_aligned16(const void *p) { return ((uintptr_t)p & 15u) == 0; }

#endif
