/* pinbench: how fast can pinned host memory be had? The activation and
 * model-state tiers pin tens of GiB at start-up, and cudaMallocHost pins a
 * page at a time on one thread; this probe compares it with what the engine
 * does (cuda/backend.cu: mmap, fault the pages in from every core, then
 * cudaHostRegister), and measures host-to-device bandwidth from each.
 *
 *   make bench/pinbench && bench/pinbench [GIB]     (default 16 GiB)
 */
#include <cuda_runtime.h>
#include <omp.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <time.h>

#define CHECK(call)                                                                                   \
    do {                                                                                              \
        cudaError_t e_ = (call);                                                                      \
        if (e_ != cudaSuccess) {                                                                      \
            fprintf(stderr, "pinbench: %s failed: %s (%s:%d)\n", #call, cudaGetErrorString(e_), __FILE__, \
                    __LINE__);                                                                        \
            exit(1);                                                                                  \
        }                                                                                             \
    } while (0)

static double now(void) {
    struct timespec t;
    clock_gettime(CLOCK_MONOTONIC, &t);
    return (double)t.tv_sec + (double)t.tv_nsec * 1e-9;
}

/* GB/s of one host-to-device copy of n bytes (after a warm-up copy). */
static double h2d_rate(void *host, void *dev, size_t n) {
    cudaEvent_t a, b;
    CHECK(cudaEventCreate(&a));
    CHECK(cudaEventCreate(&b));
    CHECK(cudaMemcpy(dev, host, n, cudaMemcpyHostToDevice));
    CHECK(cudaEventRecord(a));
    CHECK(cudaMemcpy(dev, host, n, cudaMemcpyHostToDevice));
    CHECK(cudaEventRecord(b));
    CHECK(cudaEventSynchronize(b));
    float ms = 0;
    CHECK(cudaEventElapsedTime(&ms, a, b));
    CHECK(cudaEventDestroy(a));
    CHECK(cudaEventDestroy(b));
    return (double)n / (ms * 1e-3) / 1e9;
}

int main(int argc, char **argv) {
    long gib = argc > 1 ? atol(argv[1]) : 16;
    if (gib <= 0 || gib > 4096) {
        fprintf(stderr, "usage: pinbench [GIB]   (1 to 4096, default 16)\n");
        return 2;
    }
    const size_t n = (size_t)gib << 30, probe = (size_t)1 << 30;
    void *dev = NULL;
    CHECK(cudaMalloc(&dev, probe));

    double t0 = now();
    void *pinned = NULL;
    CHECK(cudaMallocHost(&pinned, n));
    double t1 = now();
    printf("cudaMallocHost %ld GiB: %.2f s = %.2f GiB/s; H2D %.1f GB/s\n", gib, t1 - t0, (double)gib / (t1 - t0),
           h2d_rate(pinned, dev, probe));
    t0 = now();
    CHECK(cudaFreeHost(pinned));
    printf("cudaFreeHost: %.2f s\n", now() - t0);

    t0 = now();
    char *q = (char *)mmap(NULL, n, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
    if (q == MAP_FAILED) {
        perror("pinbench: mmap");
        return 1;
    }
    madvise(q, n, MADV_HUGEPAGE);
    const size_t chunk = (size_t)64 << 20;
#pragma omp parallel for schedule(dynamic)
    for (size_t off = 0; off < n; off += chunk) memset(q + off, 0, off + chunk < n ? chunk : n - off);
    t1 = now();
    CHECK(cudaHostRegister(q, n, cudaHostRegisterDefault));
    double t2 = now();
    printf("mmap + touch (%d threads) %.2f s, cudaHostRegister %.2f s: %.2f GiB/s in all; H2D %.1f GB/s\n",
           omp_get_max_threads(), t1 - t0, t2 - t1, (double)gib / (t2 - t0), h2d_rate(q, dev, probe));
    t0 = now();
    CHECK(cudaHostUnregister(q));
    munmap(q, n);
    printf("cudaHostUnregister + munmap: %.2f s\n", now() - t0);
    CHECK(cudaFree(dev));
    return 0;
}
