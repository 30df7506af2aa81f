/* Optimizer math on host memory: the cpu backend's grad_sumsq and adamw, and
 * the host optimizer (optimizer.offload) that runs AdamW on the CPU for a GPU
 * run. One implementation, so the optimizer on the host equals the cpu
 * backend's bitwise, whatever the thread count. Gradients and weights may be
 * fp32 or bf16 (round to nearest even, as the GPU rounds). */
#ifndef AUTOSP_HOST_OPTIM_H
#define AUTOSP_HOST_OPTIM_H

#include <stddef.h>
#include <stdint.h>

#include "dtype.h"

/* *sumsq += sum of grad[i]^2: fixed blocks of 65536 summed in fp64 and
 * combined in block order, then rounded to fp32 once. */
void host_grad_sumsq(float *sumsq, const void *grad, dtype_t grad_type, size_t n);
/* The fp64 total host_grad_sumsq adds (the same blocks in the same order). */
double host_grad_sumsq_total(const void *grad, dtype_t grad_type, size_t n);

/* One AdamW step as backend.h's adamw describes it, with the gradient and
 * the weights in the given types; sumsq is the global sum of squares of the
 * gradient (for clipping). */
void host_adamw(float *master, void *param, dtype_t param_type, float *m, float *v, const void *grad,
                dtype_t grad_type, size_t n, float lr, float beta1, float beta2, float eps, float weight_decay,
                int64_t step, float sumsq, float max_norm);

/* dst (+)= src over n elements; dst fp32 or bf16 (acc 0: overwrite). */
void host_accumulate(void *dst, dtype_t dst_type, const float *src, size_t n, int acc);
/* memcpy of a large host region from every core (one thread below 64 MiB). */
void host_copy(void *dst, const void *src, size_t bytes);
/* out = src as fp32 over n elements; src fp32 or bf16 (exact). */
void host_to_f32(float *out, const void *src, dtype_t src_type, size_t n);

/* OpenMP threads the host optimizer uses: the node's cores shared by its
 * ranks (`ranks_on_node`); 0 leaves the OpenMP default. */
void host_optim_threads(int ranks_on_node);

#endif
