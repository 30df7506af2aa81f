/* Whole checkpoint folders from raw bytes: manifest, state and arrays
 * together. Once per process the real engine (the tiny model on the CPU
 * backend) writes a complete checkpoint and its files are kept. Each input
 * says (byte 0, flags) whether its state replaces the written one, gives
 * extra manifest lines (before or after the real ones) and byte patches to
 * the four arrays; the manifest gets every file's true size and CRC-32C (as
 * a crafted checkpoint would), and ckpt_validate reads the folder: refused
 * with a message, or accepted with finite values and a position in range.
 *
 * Input: FLAGS, STATE up to a 0 byte, EXTRA-MANIFEST up to a 0 byte, then
 * patches of 6 bytes (array 0-3, offset u32 little-endian, value). */
#include <math.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "backend.h"
#include "io/ckpt.h"
#include "config.h"
#include "exec/exec.h"
#include "fuzz_ckpt_setup.h"
#include "fuzz_common.h"
#include "model/model.h"
#include "parallel/parallel.h"
#include "plan/plan.h"

static config_t cfg;
static model_t model;
static plan_t plan;
static char ckdir[600];
static const char *const names[6] = {"config.yaml", "state", "weights.bin", "master.bin", "adam_m.bin", "adam_v.bin"};
static uint8_t *pristine[6];
static size_t pristine_len[6];

static uint8_t *slurp(const char *path, size_t *len) {
    FILE *f = fopen(path, "rb");
    if (!f) abort();
    fseek(f, 0, SEEK_END);
    long n = ftell(f);
    fseek(f, 0, SEEK_SET);
    uint8_t *b = malloc((size_t)n + 1);
    if (!b || fread(b, 1, (size_t)n, f) != (size_t)n) abort();
    fclose(f);
    *len = (size_t)n;
    return b;
}

static void setup(void) {
    fuzz_write_checkpoint(&cfg, &model, &plan, ckdir, sizeof ckdir);
    for (int i = 0; i < 6; i++) {
        char path[700];
        snprintf(path, sizeof path, "%s/%s", ckdir, names[i]);
        pristine[i] = slurp(path, &pristine_len[i]);
    }
}

static void put(const char *name, const uint8_t *b, size_t n) {
    char path[700];
    snprintf(path, sizeof path, "%s/%s", ckdir, name);
    FILE *f = fopen(path, "wb");
    if (!f || (n && fwrite(b, 1, n, f) != n) || fclose(f)) abort();
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
    static int ready = 0;
    if (!ready) setup(), ready = 1;
    if (size < 1) return 0;
    uint8_t flags = data[0];
    const uint8_t *p = data + 1, *end = data + size;
    const uint8_t *state = p, *z = memchr(p, 0, (size_t)(end - p));
    size_t state_len = z ? (size_t)(z - p) : (size_t)(end - p);
    p = z ? z + 1 : end;
    const uint8_t *extra = p;
    z = p < end ? memchr(p, 0, (size_t)(end - p)) : NULL;
    size_t extra_len = z ? (size_t)(z - p) : (size_t)(end - p);
    p = z ? z + 1 : end;
    /* the files: pristine, state replaced, arrays patched */
    uint8_t *files[6];
    size_t lens[6];
    for (int i = 0; i < 6; i++) {
        int mine = i == 1 && (flags & 1);
        lens[i] = mine ? state_len : pristine_len[i];
        files[i] = malloc(lens[i] + 1);
        memcpy(files[i], mine ? state : pristine[i], lens[i]);
    }
    for (; end - p >= 6; p += 6) {
        int f = 2 + p[0] % 4;
        uint32_t off = (uint32_t)p[1] | (uint32_t)p[2] << 8 | (uint32_t)p[3] << 16 | (uint32_t)p[4] << 24;
        files[f][off % lens[f]] = p[5];
    }
    char man[8192];
    int at = snprintf(man, sizeof man, "asp-checkpoint-manifest 1\n");
    if (flags & 2) at += snprintf(man + at, sizeof man - (size_t)at, "%.*s\n", (int)(extra_len < 2000 ? extra_len : 2000), extra);
    for (int i = 0; i < 6; i++) {
        put(names[i], files[i], lens[i]);
        at += snprintf(man + at, sizeof man - (size_t)at, "%s %zu %08x\n", names[i], lens[i],
                       ckpt_crc32c(0, files[i], lens[i]));
    }
    if ((flags & 6) == 4)
        at += snprintf(man + at, sizeof man - (size_t)at, "%.*s\n", (int)(extra_len < 2000 ? extra_len : 2000), extra);
    put("manifest", (const uint8_t *)man, (size_t)at);
    char err[4096];
    ckpt_state_t st;
    if (ckpt_validate(ckdir, &cfg, &plan, &st, err, sizeof err) == 0) {
        const int64_t lim = (int64_t)1 << 53;
        if (st.step < 0 || st.epoch < 0 || st.cursor < 0 || st.step > lim || st.epoch > lim || st.cursor > lim)
            __builtin_trap();
        /* what is accepted holds finite values everywhere */
        for (int f = 2; f < 6; f++)
            for (size_t k = 32; k + 4 <= lens[f]; k += 4) {
                float v;
                memcpy(&v, files[f] + k, 4);
                if (!isfinite(v)) __builtin_trap();
            }
    } else if (!err[0]) {
        __builtin_trap();
    }
    for (int i = 0; i < 6; i++) free(files[i]);
    return 0;
}
