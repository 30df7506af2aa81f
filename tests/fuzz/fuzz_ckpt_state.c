/* A checkpoint's `state` file from raw bytes. Once per process the real
 * engine (the tiny model on the CPU backend) writes a complete checkpoint;
 * each input replaces its state file, the manifest is given the input's size
 * and CRC-32C (as a crafted checkpoint would be), and ckpt_validate reads it:
 * refused with a message, or accepted with a position the loader can use. */
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
static char ckdir[600], manifest[4096];

static void setup(void) {
    fuzz_write_checkpoint(&cfg, &model, &plan, ckdir, sizeof ckdir);
    char path[700], keep[700];
    /* the state as written, kept next to the run (the seed corpus holds a copy) */
    snprintf(path, sizeof path, "%s/state", ckdir);
    snprintf(keep, sizeof keep, "%s/state.as-written", fuzz_folder());
    char cmd[1600];
    snprintf(cmd, sizeof cmd, "cp '%s' '%s'", path, keep);
    if (system(cmd) != 0) abort();
    snprintf(path, sizeof path, "%s/manifest", ckdir);
    FILE *f = fopen(path, "rb");
    size_t n = f ? fread(manifest, 1, sizeof manifest - 1, f) : 0;
    if (!f || !n) abort();
    fclose(f);
    manifest[n] = 0;
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
    static int ready = 0;
    if (!ready) setup(), ready = 1;
    char path[700], err[4096];
    snprintf(path, sizeof path, "%s/state", ckdir);
    FILE *f = fopen(path, "wb");
    if (!f || (size && fwrite(data, 1, size, f) != size) || fclose(f)) abort();
    /* the manifest with the state line rewritten to match the input */
    snprintf(path, sizeof path, "%s/manifest", ckdir);
    f = fopen(path, "wb");
    if (!f) abort();
    for (const char *l = manifest; *l;) {
        const char *e = strchr(l, '\n');
        size_t len = e ? (size_t)(e - l + 1) : strlen(l);
        if (!strncmp(l, "state ", 6)) fprintf(f, "state %zu %08x\n", size, ckpt_crc32c(0, data, size));
        else fwrite(l, 1, len, f);
        l += len;
    }
    if (fclose(f)) abort();
    ckpt_state_t st;
    if (ckpt_validate(ckdir, &cfg, &plan, &st, err, sizeof err) == 0) {
        const int64_t lim = (int64_t)1 << 53;
        if (st.step < 0 || st.epoch < 0 || st.cursor < 0 || st.step > lim || st.epoch > lim || st.cursor > lim)
            __builtin_trap();   /* what is accepted stays in range */
    } else if (!err[0]) {
        __builtin_trap();
    }
    return 0;
}
