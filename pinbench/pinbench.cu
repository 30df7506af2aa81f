#include <cuda_runtime.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <time.h>
#include <omp.h>
static double now(void) { struct timespec t; clock_gettime(CLOCK_MONOTONIC, &t); return t.tv_sec + t.tv_nsec * 1e-9; }
static double bw(void *h, void *d, size_t n) {
    cudaEvent_t a, b; cudaEventCreate(&a); cudaEventCreate(&b);
    cudaMemcpy(d, h, n, cudaMemcpyHostToDevice);
    cudaEventRecord(a); cudaMemcpy(d, h, n, cudaMemcpyHostToDevice); cudaEventRecord(b); cudaEventSynchronize(b);
    float ms; cudaEventElapsedTime(&ms, a, b); return n / (ms * 1e-3) / 1e9;
}
int main(int argc, char **argv) {
    size_t gib = argc > 1 ? atol(argv[1]) : 16, n = gib << 30;
    void *d; cudaMalloc(&d, (size_t)1 << 30); cudaFree(0);
    double t0 = now(); void *p; cudaError_t e = cudaMallocHost(&p, n); double t1 = now();
    printf("cudaMallocHost %zu GiB: %.2f s (%s) = %.2f GiB/s; H2D %.1f GB/s\n", gib, t1 - t0, cudaGetErrorString(e), gib / (t1 - t0), bw(p, d, (size_t)1 << 30));
    t0 = now(); cudaFreeHost(p); printf("cudaFreeHost: %.2f s\n", now() - t0);
    t0 = now();
    char *q = (char *)mmap(NULL, n, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
    madvise(q, n, MADV_HUGEPAGE);
    size_t chunk = (size_t)64 << 20;
#pragma omp parallel for schedule(dynamic)
    for (size_t off = 0; off < n; off += chunk) memset(q + off, 0, off + chunk < n ? chunk : n - off);
    t1 = now();
    e = cudaHostRegister(q, n, cudaHostRegisterDefault);
    double t2 = now();
    printf("mmap+touch (%d threads) %.2f s, cudaHostRegister %.2f s (%s): total %.2f GiB/s; H2D %.1f GB/s\n", omp_get_max_threads(), t1 - t0, t2 - t1, cudaGetErrorString(e), gib / (t2 - t0), bw(q, d, (size_t)1 << 30));
    t0 = now(); cudaHostUnregister(q); munmap(q, n); printf("unregister+munmap: %.2f s\n", now() - t0);
    return 0;
}
