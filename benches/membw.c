/* A STREAM-like memory bandwidth measurement for the decode limit of each weight format
 * (BENCHMARKS.md, issue 25).
 *
 *     gcc -O3 -march=native -ffast-math -fopenmp benches/membw.c -o /tmp/membw && OMP_NUM_THREADS=2 /tmp/membw
 *
 * Arrays of 512 MiB (far beyond any cache). Kernels, each the best of 10 passes:
 *   copy  b[i] = a[i]              counted as STREAM counts it: bytes read + bytes written;
 *   read  s += a[i] (4 partial sums) bytes read; what a decode step does with its weights.
 * (-ffast-math lets the compiler vectorise the sums, so the read kernel is not add-bound.)
 * Prints GB/s (1e9 bytes) for each kernel at the thread count OpenMP is given. */
#include <omp.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#define N (512ul << 20) / sizeof(float)
#define PASSES 10

int main(void) {
    float *a = aligned_alloc(64, N * sizeof(float));
    float *b = aligned_alloc(64, N * sizeof(float));
    if (!a || !b) {
        fprintf(stderr, "cannot allocate 1 GiB\n");
        return 1;
    }
#pragma omp parallel for
    for (size_t i = 0; i < N; i++) {
        a[i] = (float)(i % 1000) * 0.001f;
        b[i] = 0.0f;
    }
    double best_copy = 1e30, best_read = 1e30;
    volatile float sink = 0.0f;
    for (int pass = 0; pass < PASSES; pass++) {
        double t = omp_get_wtime();
#pragma omp parallel for
        for (size_t i = 0; i < N; i++) b[i] = a[i];
        t = omp_get_wtime() - t;
        if (t < best_copy) best_copy = t;

        t = omp_get_wtime();
        float s0 = 0, s1 = 0, s2 = 0, s3 = 0;
#pragma omp parallel for reduction(+ : s0, s1, s2, s3)
        for (size_t i = 0; i < N; i += 4) {
            s0 += a[i];
            s1 += a[i + 1];
            s2 += a[i + 2];
            s3 += a[i + 3];
        }
        t = omp_get_wtime() - t;
        sink += s0 + s1 + s2 + s3 + b[pass];
        if (t < best_read) best_read = t;
    }
    double bytes = (double)N * sizeof(float);
    printf("threads %d: copy %.1f GB/s (read + write), read %.1f GB/s\n", omp_get_max_threads(),
           2.0 * bytes / best_copy / 1e9, bytes / best_read / 1e9);
    free(a);
    free(b);
    return sink == 12345.0f;
}
