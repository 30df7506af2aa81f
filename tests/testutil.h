/* Helpers shared by the Check tests: seeded random data, error norms. */
#ifndef AUTOSP_TESTUTIL_H
#define AUTOSP_TESTUTIL_H

#include <math.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <time.h>

/* Automake's "skipped" exit status (GPU tests without a GPU). */
#define TEST_SKIP 77

#include <fcntl.h>
#include <string.h>
#include <unistd.h>

/* Say why a test skips, in its log (stdout) and on the console (fd 9, which
 * Makefile.am's AM_TESTS_FD_REDIRECT opens), and return TEST_SKIP. */
static inline int test_skip(const char *test, const char *why) {
    printf("%s: skipped: %s\n", test, why);
    fflush(stdout);
    if (fcntl(9, F_GETFD) != -1) {
        char line[512];
        int n = snprintf(line, sizeof line, "  %s: skipped: %s\n", test, why);
        if (n > 0 && write(9, line, (size_t)n) < 0) { /* the console is optional */ }
    }
    return TEST_SKIP;
}

/* A fresh folder PREFIX.XXXXXX under $TMPDIR (or /tmp), written into dir;
 * NULL on failure. */
static inline char *test_mkdtemp(char *dir, size_t len, const char *prefix) {
    const char *base = getenv("TMPDIR");
    snprintf(dir, len, "%s/%s.XXXXXX", base && *base ? base : "/tmp", prefix);
    return mkdtemp(dir);
}

/* Remove a test folder and everything in it; 0 on success. */
static inline int test_rmtree(const char *dir) {
    char cmd[600];
    snprintf(cmd, sizeof cmd, "rm -rf '%s'", dir);
    return system(cmd);
}

/* Monotonic seconds, for "refused at once" checks. */
static inline double test_now(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + 1e-9 * (double)ts.tv_nsec;
}

/* Time limits in tests are multiplied by ASP_TEST_TIME_SCALE (default 1): the
 * sanitizer build runs several times slower. */
static inline double test_time_scale(void) {
    const char *s = getenv("ASP_TEST_TIME_SCALE");
    double v = s ? atof(s) : 0;
    return v > 0 ? v : 1.0;
}

/* PREFIX, depth '[' then depth ']', SUFFIX: a hostile nesting for the
 * parsers' depth limits (malloc'd; the caller frees it). */
static inline char *test_nested(const char *prefix, size_t depth, const char *suffix) {
    size_t lp = strlen(prefix), ls = strlen(suffix);
    char *t = malloc(lp + 2 * depth + ls + 1);
    if (!t) return NULL;
    memcpy(t, prefix, lp);
    memset(t + lp, '[', depth);
    memset(t + lp + depth, ']', depth);
    memcpy(t + lp + 2 * depth, suffix, ls + 1);
    return t;
}

typedef struct { uint64_t s; } trng_t;

static inline uint64_t trng_next(trng_t *r) {   /* splitmix64 */
    uint64_t z = (r->s += 0x9E3779B97F4A7C15ull);
    z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ull;
    z = (z ^ (z >> 27)) * 0x94D049BB133111EBull;
    return z ^ (z >> 31);
}
static inline double trng_uniform(trng_t *r) { return (double)(trng_next(r) >> 11) * 0x1.0p-53; }
static inline double trng_normal(trng_t *r) {
    double u1 = trng_uniform(r), u2 = trng_uniform(r);
    if (u1 < 1e-300) u1 = 1e-300;
    return sqrt(-2.0 * log(u1)) * cos(6.283185307179586 * u2);
}
static inline void trng_fill(trng_t *r, float *x, size_t n, double scale) {
    for (size_t i = 0; i < n; i++) x[i] = (float)(scale * trng_normal(r));
}

/* ||a - b|| / ||b|| (||a|| when b is all zero) */
static inline double rel_err(const float *a, const float *b, size_t n) {
    double num = 0, den = 0;
    for (size_t i = 0; i < n; i++) {
        double d = (double)a[i] - (double)b[i];
        num += d * d;
        den += (double)b[i] * (double)b[i];
    }
    if (den == 0) return sqrt(num);
    return sqrt(num / den);
}

#endif
