/* The CUDA backend's op table, lifecycle and memory: one device, one stream,
 * a cuBLASLt and a cuDNN handle, and a grow-only scratch buffer that ops share
 * (they all run on the one stream, so their uses of it never overlap). */
#include "autosp_config.h"

#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <unistd.h>

#include "cuda/cuda_common.h"

extern "C" {

cuda_state_t g_cuda;

/* cuBLASLt picks faster split-K and stream-K algorithms with room to work in. */
#define ASP_LT_WORKSPACE_BYTES ((size_t)64 << 20)

void cuda_check_launch(const char *what, const char *file, int line) {
    cudaError_t e = cudaGetLastError();
    if (e != cudaSuccess)
        asp_die(ASP_EXIT_FAILURE, "CUDA kernel launch %s failed at %s:%d: %s (%s)", what, file, line,
                cudaGetErrorString(e), cudaGetErrorName(e));
}

void cuda_cudnn_fail(const char *call, const char *file, int line, cudnnStatus_t s) {
    char msg[1024];
    cudnnGetLastErrorString(msg, sizeof msg);
    asp_die(ASP_EXIT_FAILURE, "cuDNN call %s failed at %s:%d: %s%s%s", call, file, line,
            cudnnGetErrorString(s), msg[0] ? ": " : "", msg);
}

static void need_init(const char *op) {
    if (!g_cuda.initialised)
        asp_die(ASP_EXIT_FAILURE, "cuda backend: %s called before init(); call backend_cuda.init first", op);
}

void *cuda_scratch(size_t bytes) {
    need_init("scratch");
    if (bytes <= g_cuda.scratch_bytes) return g_cuda.scratch;
    if (g_cuda.scratch_planned) {
        char b1[32], b2[32];
        asp_die(ASP_EXIT_FAILURE, "cuda: an op needs %s of scratch but the plan reserved %s: the backend's "
                "scratch_bytes() under-reports this shape (a bug; please report it with the config)",
                asp_fmt_bytes(b1, sizeof b1, (double)bytes), asp_fmt_bytes(b2, sizeof b2, (double)g_cuda.scratch_bytes));
    }
    /* Growth happens on the first step's shapes; the stream must be idle before
     * the old buffer goes, since earlier ops may still read it. */
    size_t want = asp_align_up(bytes + bytes / 4, (size_t)1 << 20);
    CUDA_CHECK(cudaStreamSynchronize(g_cuda.stream));
    if (g_cuda.scratch) CUDA_CHECK(cudaFree(g_cuda.scratch));
    g_cuda.scratch = NULL;
    g_cuda.scratch_bytes = 0;
    cudaError_t e = cudaMalloc(&g_cuda.scratch, want);
    if (e != cudaSuccess) {
        size_t fr = 0, tot = 0;
        cudaGetLastError();
        cudaMemGetInfo(&fr, &tot);
        char b1[32], b2[32];
        asp_die(ASP_EXIT_FAILURE, "cuda: cannot allocate %s of op scratch (%s free): %s; lower the sequence "
                "length or chunk sizes", asp_fmt_bytes(b1, sizeof b1, (double)want),
                asp_fmt_bytes(b2, sizeof b2, (double)fr), cudaGetErrorString(e));
    }
    g_cuda.scratch_bytes = want;
    return g_cuda.scratch;
}

void *cuda_event_record(void) {
    need_init("event_record");
    cudaEvent_t ev;
    CUDA_CHECK(cudaEventCreate(&ev));
    CUDA_CHECK(cudaEventRecord(ev, g_cuda.stream));
    return (void *)ev;
}

float cuda_event_elapsed_ms(void *start, void *stop) {
    float ms = 0;
    CUDA_CHECK(cudaEventSynchronize((cudaEvent_t)stop));
    CUDA_CHECK(cudaEventElapsedTime(&ms, (cudaEvent_t)start, (cudaEvent_t)stop));
    CUDA_CHECK(cudaEventDestroy((cudaEvent_t)start));
    CUDA_CHECK(cudaEventDestroy((cudaEvent_t)stop));
    return ms;
}

int cuda_device_count(void) {
    int n = 0;
    if (cudaGetDeviceCount(&n) != cudaSuccess) {
        cudaGetLastError();   /* no driver or no device: clear the sticky-free error */
        return 0;
    }
    return n;
}

#define INIT_TRY(call, fmt_what)                                                             \
    do {                                                                                     \
        cudaError_t e_ = (call);                                                             \
        if (e_ != cudaSuccess) {                                                             \
            asp_errf(err, errlen, "cuda init: %s failed on device %d: %s", fmt_what,         \
                     device_index, cudaGetErrorString(e_));                                  \
            return -1;                                                                       \
        }                                                                                    \
    } while (0)

static int cuda_init(int device_index, char *err, size_t errlen) {
    if (g_cuda.initialised) {
        if (g_cuda.device == device_index) return 0;
        asp_errf(err, errlen, "cuda init: already initialised on device %d, asked for %d; call shutdown first",
                 g_cuda.device, device_index);
        return -1;
    }
    int count = cuda_device_count();
    if (count == 0) {
        asp_errf(err, errlen, "cuda init: no CUDA device found (driver absent or no GPU visible); "
                 "use the cpu backend or check CUDA_VISIBLE_DEVICES");
        return -1;
    }
    if (device_index < 0 || device_index >= count) {
        asp_errf(err, errlen, "cuda init: device %d does not exist (%d visible); check CUDA_VISIBLE_DEVICES "
                 "and the ranks per node", device_index, count);
        return -1;
    }
    memset(&g_cuda, 0, sizeof g_cuda);
    g_cuda.device = device_index;
    INIT_TRY(cudaSetDevice(device_index), "cudaSetDevice");
    cudaDeviceProp prop;
    INIT_TRY(cudaGetDeviceProperties(&prop, device_index), "cudaGetDeviceProperties");
    if (prop.major < 8) {
        asp_errf(err, errlen, "cuda init: device %d (%s) has compute capability %d.%d; bf16 kernels need 8.0 or newer",
                 device_index, prop.name, prop.major, prop.minor);
        return -1;
    }
    snprintf(g_cuda.name, sizeof g_cuda.name, "%s", prop.name);
    g_cuda.sm_count = prop.multiProcessorCount;
    INIT_TRY(cudaStreamCreateWithFlags(&g_cuda.stream, cudaStreamNonBlocking), "cudaStreamCreate");
    INIT_TRY(cudaStreamCreateWithFlags(&g_cuda.copy_stream, cudaStreamNonBlocking), "cudaStreamCreate (copies)");
    INIT_TRY(cudaEventCreateWithFlags(&g_cuda.copy_issue, cudaEventDisableTiming), "cudaEventCreate");
    for (int i = 0; i < BACKEND_COPY_TAGS; i++)
        INIT_TRY(cudaEventCreateWithFlags(&g_cuda.copy_tag[i], cudaEventDisableTiming), "cudaEventCreate");
    cublasStatus_t bs = cublasLtCreate(&g_cuda.lt);
    if (bs != CUBLAS_STATUS_SUCCESS) {
        asp_errf(err, errlen, "cuda init: cublasLtCreate failed: %s", cublasLtGetStatusName(bs));
        return -1;
    }
    cudnnStatus_t ds = cudnnCreate(&g_cuda.cudnn);
    if (ds != CUDNN_STATUS_SUCCESS) {
        asp_errf(err, errlen, "cuda init: cudnnCreate failed: %s (is libcudnn on LD_LIBRARY_PATH?)",
                 cudnnGetErrorString(ds));
        return -1;
    }
    ds = cudnnSetStream(g_cuda.cudnn, g_cuda.stream);
    if (ds != CUDNN_STATUS_SUCCESS) {
        asp_errf(err, errlen, "cuda init: cudnnSetStream failed: %s", cudnnGetErrorString(ds));
        return -1;
    }
    g_cuda.lt_workspace_bytes = ASP_LT_WORKSPACE_BYTES;
    INIT_TRY(cudaMalloc(&g_cuda.lt_workspace, g_cuda.lt_workspace_bytes), "cuBLASLt workspace allocation");

    /* cuDNN's fused attention is the default; the simple kernels stay
     * selectable as the GPU-side reference. */
    const char *att = getenv("ASP_ATTENTION");
    if (!att || !*att || strcmp(att, "cudnn") == 0) {
        g_cuda.attention_cudnn = 1;
    } else if (strcmp(att, "simple") == 0) {
        g_cuda.attention_cudnn = 0;
    } else {
        asp_errf(err, errlen, "cuda init: ASP_ATTENTION=%s is not known; use cudnn (default) or simple", att);
        return -1;
    }
    /* how cuDNN's plans are chosen (docs/cuda.md, Performance notes) */
    const char *graph = getenv("ASP_CUDNN_GRAPH");
    if (!graph || !*graph || strcmp(graph, "current") == 0) {
        g_cuda.cudnn_graph = CUDNN_GRAPH_CURRENT;
    } else if (strcmp(graph, "tuned") == 0) {
        g_cuda.cudnn_graph = CUDNN_GRAPH_TUNED;
    } else {
        asp_errf(err, errlen, "cuda init: ASP_CUDNN_GRAPH=%s is not known; use current (default) or tuned", graph);
        return -1;
    }
    g_cuda.initialised = 1;
    return 0;
}

static void copy_fold_times(void);

static void cuda_shutdown(void) {
    if (!g_cuda.initialised) return;
    CUDA_CHECK(cudaStreamSynchronize(g_cuda.stream));
    CUDA_CHECK(cudaStreamSynchronize(g_cuda.copy_stream));
    copy_fold_times();
    for (int i = 0; i < g_cuda.copy_ev_cap; i++) CUDA_CHECK(cudaEventDestroy(g_cuda.copy_ev[i]));
    free(g_cuda.copy_ev);
    free(g_cuda.copy_ev_kind);
    for (int i = 0; i < BACKEND_COPY_TAGS; i++) CUDA_CHECK(cudaEventDestroy(g_cuda.copy_tag[i]));
    CUDA_CHECK(cudaEventDestroy(g_cuda.copy_issue));
    CUDA_CHECK(cudaStreamDestroy(g_cuda.copy_stream));
    cuda_matmul_shutdown();
    cuda_attention_cudnn_shutdown();
    if (g_cuda.scratch && !g_cuda.scratch_planned) CUDA_CHECK(cudaFree(g_cuda.scratch));
    if (g_cuda.lt_workspace) CUDA_CHECK(cudaFree(g_cuda.lt_workspace));
    CUDNN_CHECK(cudnnDestroy(g_cuda.cudnn));
    CUBLAS_CHECK(cublasLtDestroy(g_cuda.lt));
    CUDA_CHECK(cudaStreamDestroy(g_cuda.stream));
    memset(&g_cuda, 0, sizeof g_cuda);
}

static const char *cuda_device_name(void) { return g_cuda.initialised ? g_cuda.name : "cuda (not initialised)"; }

static size_t cuda_device_memory(void) {
    need_init("device_memory");
    size_t fr = 0, tot = 0;
    CUDA_CHECK(cudaMemGetInfo(&fr, &tot));
    return tot;
}

static size_t cuda_memory_used(void) {
    need_init("memory_used");
    size_t fr = 0, tot = 0;
    CUDA_CHECK(cudaMemGetInfo(&fr, &tot));
    return tot - fr;
}

static void *cuda_alloc(size_t bytes, const char *what) {
    need_init("alloc");
    void *p = NULL;
    if (bytes == 0) bytes = 16;   /* a unique valid pointer even for empty tensors */
    cudaError_t e = cudaMalloc(&p, bytes);
    if (e != cudaSuccess) {
        cudaGetLastError();
        size_t fr = 0, tot = 0;
        cudaMemGetInfo(&fr, &tot);
        char b1[32], b2[32], b3[32];
        asp_die(ASP_EXIT_FAILURE, "cuda: cannot allocate %s for %s: %s (%s free of %s on %s); lower the "
                "sequence length, raise the SP degree or enable offload", asp_fmt_bytes(b1, sizeof b1, (double)bytes),
                what ? what : "?", cudaGetErrorString(e), asp_fmt_bytes(b2, sizeof b2, (double)fr),
                asp_fmt_bytes(b3, sizeof b3, (double)tot), g_cuda.name);
    }
    return p;
}

static void cuda_free_(void *p) {
    if (p) CUDA_CHECK(cudaFree(p));
}

/* Pinned host memory. cudaMallocHost faults and pins its pages one thread
 * at a time: 2.4 GiB/s on the H200 machine, so the 112 GiB an 8B model's
 * state and offloaded activations take cost 47 s before the first step.
 * Large regions are mapped instead, their pages faulted in by several
 * threads (transparent huge pages where the kernel gives them) and then
 * registered with the driver: 23 GiB/s there, with the same copy bandwidth.
 * A region larger than the memory the kernel says is available is refused
 * first, so a node that cannot give it fails here with a message, not in
 * the OOM killer while its pages are touched. */
#define HOST_MAP_MIN ((size_t)256 << 20)
#define HOST_MAPS_MAX 64
static struct { void *p; size_t bytes; } g_host_maps[HOST_MAPS_MAX];

typedef struct { char *p; size_t bytes; } touch_arg_t;
static void *touch_pages(void *a) {
    touch_arg_t *t = (touch_arg_t *)a;
    memset(t->p, 0, t->bytes);
    return NULL;
}

/* Write zeros over [p, p + bytes) from up to 16 threads: faults a fresh
 * mapping in several times faster than one thread, and zeroes what
 * cudaMallocHost returns (host_alloc hands out zeroed memory). */
static void zero_pages(char *p, size_t bytes) {
    long cpus = sysconf(_SC_NPROCESSORS_ONLN);
    int nt = cpus > 16 ? 16 : cpus < 1 ? 1 : (int)cpus;
    if (bytes < ((size_t)64 << 20)) nt = 1;
    pthread_t th[16];
    touch_arg_t ta[16];
    size_t per = asp_align_up((bytes + (size_t)nt - 1) / (size_t)nt, (size_t)2 << 20);
    int started = 0;
    for (int i = 0; i < nt; i++) {
        size_t lo = (size_t)i * per, hi = lo + per < bytes ? lo + per : bytes;
        if (lo >= bytes) break;
        ta[i] = (touch_arg_t){p + lo, hi - lo};
        if (pthread_create(&th[i], NULL, touch_pages, &ta[i]) != 0) {
            touch_pages(&ta[i]);
            continue;
        }
        started |= 1 << i;
    }
    for (int i = 0; i < nt; i++)
        if (started & (1 << i)) pthread_join(th[i], NULL);
}

/* MemAvailable from /proc/meminfo, bytes; 0 when unknown */
static size_t host_available(void) {
    FILE *f = fopen("/proc/meminfo", "r");
    if (!f) return 0;
    char line[256];
    unsigned long long kb = 0;
    while (fgets(line, sizeof line, f))
        if (sscanf(line, "MemAvailable: %llu kB", &kb) == 1) break;
    fclose(f);
    return (size_t)kb * 1024;
}

static void *host_map(size_t bytes, const char *what) {
    char b1[32], b2[32];
    size_t avail = host_available();
    if (avail && bytes > avail) {
        asp_warn("cuda: %s of pinned host memory for %s is more than the %s this node has available now",
                 asp_fmt_bytes(b1, sizeof b1, (double)bytes), what ? what : "?",
                 asp_fmt_bytes(b2, sizeof b2, (double)avail));
        return NULL;
    }
    int slot = -1;
    for (int i = 0; i < HOST_MAPS_MAX && slot < 0; i++)
        if (!g_host_maps[i].p) slot = i;
    if (slot < 0) return (void *)-1;   /* the caller falls back to cudaMallocHost */
    char *p = (char *)mmap(NULL, bytes, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
    if (p == (char *)MAP_FAILED) return (void *)-1;
#ifdef MADV_HUGEPAGE
    madvise(p, bytes, MADV_HUGEPAGE);
#endif
    zero_pages(p, bytes);
    cudaError_t e = cudaHostRegister(p, bytes, cudaHostRegisterDefault);
    if (e != cudaSuccess) {
        cudaGetLastError();
        asp_warn("cuda: registering %s of host memory for %s with the driver failed: %s",
                 asp_fmt_bytes(b1, sizeof b1, (double)bytes), what ? what : "?", cudaGetErrorString(e));
        munmap(p, bytes);
        return NULL;
    }
    g_host_maps[slot].p = p;
    g_host_maps[slot].bytes = bytes;
    return p;
}

static void *cuda_host_alloc(size_t bytes, const char *what) {
    need_init("host_alloc");
    void *p = NULL;
    if (bytes == 0) bytes = 16;
    if (bytes >= HOST_MAP_MIN && !asp_env_flag("ASP_PINNED_MALLOCHOST")) {
        p = host_map(bytes, what);
        if (p != (void *)-1) return p;
        p = NULL;
    }
    cudaError_t e = cudaMallocHost(&p, bytes);
    if (e != cudaSuccess) {
        cudaGetLastError();
        char b1[32];
        asp_warn("cuda: cudaMallocHost of %s for %s failed: %s", asp_fmt_bytes(b1, sizeof b1, (double)bytes),
                 what ? what : "?", cudaGetErrorString(e));
        return NULL;
    }
    zero_pages((char *)p, bytes);
    return p;
}

/* ---- copies beside compute. Each copy and each wait is bracketed by a
 * pair of timing events from a pool; copy_times reads them once the
 * streams are idle. */
static void copy_fold_times(void) {
    for (int i = 0; i + 1 < g_cuda.copy_ev_n; i += 2) {
        float ms = 0;
        CUDA_CHECK(cudaEventElapsedTime(&ms, g_cuda.copy_ev[i], g_cuda.copy_ev[i + 1]));
        if (g_cuda.copy_ev_kind[i / 2]) g_cuda.copy_exposed_s += ms * 1e-3;
        else g_cuda.copy_busy_s += ms * 1e-3;
    }
    g_cuda.copy_ev_n = 0;
}

/* The next pair of timing events (kind 0 a copy, 1 a wait). A full pool is
 * read first, which waits for the streams: it holds a few steps' worth. */
static cudaEvent_t *copy_pair(int kind) {
    if (g_cuda.copy_ev_n + 2 > g_cuda.copy_ev_cap) {
        if (g_cuda.copy_ev_cap >= 8192) {
            CUDA_CHECK(cudaStreamSynchronize(g_cuda.stream));
            CUDA_CHECK(cudaStreamSynchronize(g_cuda.copy_stream));
            copy_fold_times();
        } else {
            int cap = g_cuda.copy_ev_cap ? 2 * g_cuda.copy_ev_cap : 256;
            cudaEvent_t *ev = (cudaEvent_t *)realloc(g_cuda.copy_ev, (size_t)cap * sizeof *ev);
            int *kinds = (int *)realloc(g_cuda.copy_ev_kind, (size_t)(cap / 2) * sizeof *kinds);
            if (!ev || !kinds) asp_die(ASP_EXIT_FAILURE, "cuda: out of host memory for %d copy timing events", cap);
            g_cuda.copy_ev = ev;
            g_cuda.copy_ev_kind = kinds;
            for (int i = g_cuda.copy_ev_cap; i < cap; i++) CUDA_CHECK(cudaEventCreate(&g_cuda.copy_ev[i]));
            g_cuda.copy_ev_cap = cap;
        }
    }
    g_cuda.copy_ev_kind[g_cuda.copy_ev_n / 2] = kind;
    cudaEvent_t *p = &g_cuda.copy_ev[g_cuda.copy_ev_n];
    g_cuda.copy_ev_n += 2;
    return p;
}

static void need_tag(int tag) {
    if (tag < 0 || tag >= BACKEND_COPY_TAGS)
        asp_die(ASP_EXIT_FAILURE, "internal: copy tag %d outside 0..%d", tag, BACKEND_COPY_TAGS - 1);
}

static void cuda_copy_async(void *dst, const void *src, size_t bytes, int to_host, int tag) {
    need_init("copy_async");
    need_tag(tag);
    if (!bytes) return;
    cudaEvent_t *ev = copy_pair(0);
    CUDA_CHECK(cudaEventRecord(g_cuda.copy_issue, g_cuda.stream));
    CUDA_CHECK(cudaStreamWaitEvent(g_cuda.copy_stream, g_cuda.copy_issue, 0));
    CUDA_CHECK(cudaEventRecord(ev[0], g_cuda.copy_stream));
    CUDA_CHECK(cudaMemcpyAsync(dst, src, bytes, to_host ? cudaMemcpyDeviceToHost : cudaMemcpyHostToDevice,
                               g_cuda.copy_stream));
    CUDA_CHECK(cudaEventRecord(ev[1], g_cuda.copy_stream));
    CUDA_CHECK(cudaEventRecord(g_cuda.copy_tag[tag], g_cuda.copy_stream));
    g_cuda.copy_bytes += (double)bytes;
}

static void cuda_copy_wait(int tag) {
    need_init("copy_wait");
    need_tag(tag);
    /* the compute stream idles between the pair only as long as the copy holds it */
    cudaEvent_t *ev = copy_pair(1);
    CUDA_CHECK(cudaEventRecord(ev[0], g_cuda.stream));
    CUDA_CHECK(cudaStreamWaitEvent(g_cuda.stream, g_cuda.copy_tag[tag], 0));
    CUDA_CHECK(cudaEventRecord(ev[1], g_cuda.stream));
}

static void cuda_copy_times(double *bytes, double *busy_s, double *exposed_s) {
    need_init("copy_times");
    CUDA_CHECK(cudaStreamSynchronize(g_cuda.copy_stream));
    CUDA_CHECK(cudaStreamSynchronize(g_cuda.stream));
    copy_fold_times();
    *bytes = g_cuda.copy_bytes;
    *busy_s = g_cuda.copy_busy_s;
    *exposed_s = g_cuda.copy_exposed_s;
    g_cuda.copy_bytes = g_cuda.copy_busy_s = g_cuda.copy_exposed_s = 0;
}

static void cuda_host_free(void *p) {
    if (!p) return;
    for (int i = 0; i < HOST_MAPS_MAX; i++)
        if (g_host_maps[i].p == p) {
            CUDA_CHECK(cudaHostUnregister(p));
            munmap(p, g_host_maps[i].bytes);
            g_host_maps[i].p = NULL;
            return;
        }
    if (p) CUDA_CHECK(cudaFreeHost(p));
}

static void cuda_zero(void *p, size_t bytes) {
    if (bytes) CUDA_CHECK(cudaMemsetAsync(p, 0, bytes, g_cuda.stream));
}

static void cuda_copy(void *dst, const void *src, size_t bytes) {
    if (bytes) CUDA_CHECK(cudaMemcpyAsync(dst, src, bytes, cudaMemcpyDeviceToDevice, g_cuda.stream));
}

static void cuda_to_device(void *dst, const void *host, size_t bytes) {
    if (bytes) CUDA_CHECK(cudaMemcpyAsync(dst, host, bytes, cudaMemcpyHostToDevice, g_cuda.stream));
    /* The host buffer may be pageable and reused by the caller right away. */
    CUDA_CHECK(cudaStreamSynchronize(g_cuda.stream));
}

static void cuda_to_host(void *host, const void *src, size_t bytes) {
    if (bytes) CUDA_CHECK(cudaMemcpyAsync(host, src, bytes, cudaMemcpyDeviceToHost, g_cuda.stream));
    CUDA_CHECK(cudaStreamSynchronize(g_cuda.stream));
}

/* Conversions go through fp32 device staging in bounded chunks, so a multi-GiB
 * tensor needs no equally large scratch. */
#define ASP_STAGE_ELEMS ((size_t)8 << 20)

static void cuda_from_f32(void *dst, dtype_t dst_type, const float *host, size_t n) {
    need_init("from_f32");
    if (dst_type == DT_F32) {
        cuda_to_device(dst, host, n * sizeof(float));
        return;
    }
    if (dst_type != DT_BF16)
        asp_die(ASP_EXIT_FAILURE, "cuda from_f32: conversion to %s is not supported (fp32 and bf16 only)",
                dtype_name(dst_type));
    float *stage = (float *)cuda_scratch(ASP_STAGE_ELEMS * sizeof(float));
    for (size_t off = 0; off < n; off += ASP_STAGE_ELEMS) {
        size_t c = n - off < ASP_STAGE_ELEMS ? n - off : ASP_STAGE_ELEMS;
        CUDA_CHECK(cudaMemcpyAsync(stage, host + off, c * sizeof(float), cudaMemcpyHostToDevice, g_cuda.stream));
        cuda_f32_to_bf16((__nv_bfloat16 *)dst + off, stage, c);
    }
    CUDA_CHECK(cudaStreamSynchronize(g_cuda.stream));
}

static void cuda_to_f32(float *host, const void *src, dtype_t src_type, size_t n) {
    need_init("to_f32");
    if (src_type == DT_F32) {
        cuda_to_host(host, src, n * sizeof(float));
        return;
    }
    if (src_type != DT_BF16)
        asp_die(ASP_EXIT_FAILURE, "cuda to_f32: conversion from %s is not supported (fp32 and bf16 only)",
                dtype_name(src_type));
    float *stage = (float *)cuda_scratch(ASP_STAGE_ELEMS * sizeof(float));
    for (size_t off = 0; off < n; off += ASP_STAGE_ELEMS) {
        size_t c = n - off < ASP_STAGE_ELEMS ? n - off : ASP_STAGE_ELEMS;
        cuda_bf16_to_f32(stage, (const __nv_bfloat16 *)src + off, c);
        CUDA_CHECK(cudaMemcpyAsync(host + off, stage, c * sizeof(float), cudaMemcpyDeviceToHost, g_cuda.stream));
    }
    CUDA_CHECK(cudaStreamSynchronize(g_cuda.stream));
}

static void cuda_synchronize(void) {
    need_init("synchronize");
    CUDA_CHECK(cudaStreamSynchronize(g_cuda.stream));
    CUDA_CHECK(cudaStreamSynchronize(g_cuda.copy_stream));
}

/* Largest scratch any op asks for at the plan's shapes; keep in step with
 * the cuda_scratch() calls (a request above this is fatal once planned). */
static size_t cuda_scratch_bytes(const op_shapes_t *sh) {
    need_init("scratch_bytes");
    size_t need = ASP_STAGE_ELEMS * sizeof(float); /* from_f32 / to_f32 staging */
    size_t k = cuda_kernels_scratch_bytes(sh->rows, sh->d, sh->vocab, sh->loss_chunk);
    if (k > need) need = k;
    return asp_align_up(need, (size_t)1 << 20);
}

/* Attention's scratch (cuDNN's graphs or the simple kernels), asked for
 * apart: the plan places it in the layer workspace (backend.h). */
static size_t cuda_attention_scratch_for(const op_shapes_t *sh) {
    need_init("attention_scratch_bytes");
    if (sh->attn_rows <= 0) return 0;
    size_t a = g_cuda.attention_cudnn ? cuda_attention_cudnn_scratch_bytes(sh->attn_rows, sh->hq, sh->hkv, sh->hd, sh->documents)
                                      : cuda_attention_scratch_bytes(sh->attn_rows, sh->hq, sh->hkv, sh->hd);
    return asp_align_up(a, (size_t)1 << 20);
}

static void cuda_use_scratch(void *p, size_t bytes) {
    need_init("use_scratch");
    if (!g_cuda.scratch_planned)
        asp_die(ASP_EXIT_FAILURE, "internal: cuda use_scratch before set_scratch (the planned scratch)");
    g_cuda.scratch = p;
    g_cuda.scratch_bytes = bytes;
}

static void cuda_set_scratch(void *p, size_t bytes) {
    need_init("set_scratch");
    CUDA_CHECK(cudaStreamSynchronize(g_cuda.stream));
    if (g_cuda.scratch && !g_cuda.scratch_planned) CUDA_CHECK(cudaFree(g_cuda.scratch));
    g_cuda.scratch = p;
    g_cuda.scratch_bytes = bytes;
    g_cuda.scratch_planned = 1;
}

static void *cuda_stream_handle(void) { return (void *)g_cuda.stream; }

static int cuda_idle(void) {
    cudaError_t q = cudaStreamQuery(g_cuda.stream);
    if (q == cudaSuccess) return 1;
    if (q != cudaErrorNotReady) CUDA_CHECK(q);
    return 0;
}

/* Dense bf16 tensor-core peak in TFLOP/s (no sparsity), for MFU. */
static double cuda_peak_tflops(void) {
    double env = asp_env_double("ASP_PEAK_TFLOPS", 0, 1e-3, 1e7);
    if (env > 0) return env;
    const char *name = cuda_device_name();
    if (strstr(name, "H100") && strstr(name, "PCIe")) return 756.0;
    if (strstr(name, "H100") || strstr(name, "H200") || strstr(name, "H800") || strstr(name, "GH200")) return 989.0;
    if (strstr(name, "A100")) return 312.0;
    return 0.0;
}

static backend_t make_backend(void) {
    backend_t b;
    memset(&b, 0, sizeof b);
    b.name = "cuda";
    b.act_dtype = DT_BF16;
    b.param_dtype = DT_BF16;
    b.grad_dtype = DT_F32;
    b.init = cuda_init;
    b.shutdown = cuda_shutdown;
    b.device_name = cuda_device_name;
    b.device_memory = cuda_device_memory;
    b.memory_used = cuda_memory_used;
    b.alloc = cuda_alloc;
    b.free = cuda_free_;
    b.host_alloc = cuda_host_alloc;
    b.host_free = cuda_host_free;
    b.zero = cuda_zero;
    b.copy = cuda_copy;
    b.to_device = cuda_to_device;
    b.to_host = cuda_to_host;
    b.from_f32 = cuda_from_f32;
    b.to_f32 = cuda_to_f32;
    b.synchronize = cuda_synchronize;
    b.stream = cuda_stream_handle;
    b.idle = cuda_idle;
    b.copy_async = cuda_copy_async;
    b.copy_wait = cuda_copy_wait;
    b.copy_times = cuda_copy_times;
    b.peak_tflops = cuda_peak_tflops;
    b.scratch_bytes = cuda_scratch_bytes;
    b.set_scratch = cuda_set_scratch;
    b.attention_scratch_bytes = cuda_attention_scratch_for;
    b.use_scratch = cuda_use_scratch;
    b.embed_fwd = cuda_embed_fwd;
    b.embed_bwd = cuda_embed_bwd;
    b.rmsnorm_fwd = cuda_rmsnorm_fwd;
    b.rmsnorm_bwd = cuda_rmsnorm_bwd;
    b.add_rmsnorm_fwd = cuda_add_rmsnorm_fwd;
    b.add_rmsnorm_bwd = cuda_add_rmsnorm_bwd;
    b.matmul_fwd = cuda_matmul_fwd;
    b.matmul_bwd = cuda_matmul_bwd;
    b.matmul_blocked_fwd = cuda_matmul_blocked_fwd;
    b.matmul_blocked_bwd = cuda_matmul_blocked_bwd;
    b.matmul_slice_fwd = cuda_matmul_slice_fwd;
    b.matmul_slice_bwd = cuda_matmul_slice_bwd;
    b.rope_split_fwd = cuda_rope_split_fwd;
    b.rope_split_bwd = cuda_rope_split_bwd;
    b.attention_fwd = cuda_attention_fwd;
    b.attention_bwd = cuda_attention_bwd;
    b.swiglu_fwd = cuda_swiglu_fwd;
    b.swiglu_bwd = cuda_swiglu_bwd;
    b.add_fwd = cuda_add_fwd;
    b.accumulate = cuda_accumulate;
    b.grad_accumulate = cuda_grad_accumulate;
    b.xent_fwd_bwd = cuda_xent_fwd_bwd;
    b.heads_pack = cuda_heads_pack;
    b.heads_unpack = cuda_heads_unpack;
    b.grad_sumsq = cuda_grad_sumsq;
    b.adamw = cuda_adamw;
    return b;
}

/* A const table filled by a function keeps the field order out of the source
 * (no positional initialiser to drift from backend.h). */
const backend_t backend_cuda = make_backend();

}  /* extern "C" */
