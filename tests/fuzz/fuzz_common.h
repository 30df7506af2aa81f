/* Shared by the libFuzzer harnesses: each input is written to a file in a
 * private folder and handed to the real reader, as a user's file would be. */
#ifndef AUTOSP_FUZZ_COMMON_H
#define AUTOSP_FUZZ_COMMON_H

#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

static char fuzz_dir[256];

/* The folder, made once per process. */
static inline const char *fuzz_folder(void) {
    if (!fuzz_dir[0]) {
        const char *base = getenv("TMPDIR");
        snprintf(fuzz_dir, sizeof fuzz_dir, "%s/asp-fuzz.XXXXXX", base && *base ? base : "/tmp");
        if (!mkdtemp(fuzz_dir)) abort();
    }
    return fuzz_dir;
}

/* Write the input as fuzz_folder()/name; returns the path (static buffer). */
static inline const char *fuzz_write(const char *name, const uint8_t *data, size_t size) {
    static char path[512];
    snprintf(path, sizeof path, "%s/%s", fuzz_folder(), name);
    FILE *f = fopen(path, "wb");
    if (!f) abort();
    if (size && fwrite(data, 1, size, f) != size) abort();
    if (fclose(f) != 0) abort();
    return path;
}

#endif
