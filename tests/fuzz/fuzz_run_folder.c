/* Run-folder states from raw bytes: what a launch finds in io.run_dir.
 * Byte 0 picks what RUN_DIR/checkpoints is (missing, a folder, a file, a
 * dangling link, a link loop, a link to a folder); ckpt_check_run_dir must
 * accept exactly the missing and the readable ones. The rest of the input is
 * a lock file's text for runlock_parse, and (from byte 1 on) a list of
 * checkpoints for retention, whose decision must keep the one just written,
 * the newest loadable and every unusable one, and no more usable ones than
 * keep_last asks beyond those. */
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "io/ckpt.h"
#include "config.h"
#include "fuzz_common.h"
#include "io/runlock.h"

static void check_layout(uint8_t kind) {
    static int n = 0;
    config_t cfg;
    config_defaults(&cfg);
    snprintf(cfg.io.run_dir, sizeof cfg.io.run_dir, "%s/run%d", fuzz_folder(), n++);
    char cdir[CFG_PATH_MAX + 32], cmd[2 * CFG_PATH_MAX + 64];
    snprintf(cdir, sizeof cdir, "%s/checkpoints", cfg.io.run_dir);
    if (mkdir(cfg.io.run_dir, 0755) != 0) abort();
    int readable = 1;
    switch (kind % 6) {
    case 0: break;   /* missing: a fresh run */
    case 1: if (mkdir(cdir, 0755)) abort(); break;
    case 2: { FILE *f = fopen(cdir, "w"); if (!f) abort(); fclose(f); readable = 0; break; }
    case 3: if (symlink("/nonexistent/asp-fuzz", cdir)) abort(); readable = 0; break;
    case 4: if (symlink(cdir, cdir)) abort(); readable = 0; break;
    case 5: if (symlink(".", cdir)) abort(); break;
    }
    char err[4096] = "";
    int rc = ckpt_check_run_dir(&cfg, err, sizeof err);
    if (rc != (readable ? 0 : -1) || (rc && !strstr(err, cdir))) __builtin_trap();
    snprintf(cmd, sizeof cmd, "rm -rf '%s'", cfg.io.run_dir);
    if (system(cmd) != 0) abort();
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
    if (size < 1) return 0;
    check_layout(data[0]);
    /* the lock text */
    char text[512];
    size_t n = size - 1 < sizeof text - 1 ? size - 1 : sizeof text - 1;
    memcpy(text, data + 1, n);
    text[n] = 0;
    long pid;
    char host[256];
    if (runlock_parse(text, &pid, host, sizeof host) == 0 && (pid <= 0 || !host[0])) __builtin_trap();
    /* retention: entries of 2 bytes (step delta, flags) */
    ckpt_entry_t en[64];
    int ne = 0;
    int64_t step = 1 << 20, written = -1;
    for (size_t i = 1; i + 1 < size && ne < 64; i += 2, ne++) {
        step -= 1 + data[i] % 7;
        en[ne].step = step;
        en[ne].usable = (data[i + 1] & 3) != 0;
        en[ne].own = (data[i + 1] >> 2) & 1;
        if ((data[i + 1] & 8) && en[ne].usable && en[ne].own && written < 0) written = step;
    }
    int newest = -1;
    for (int i = 0; i < ne && newest < 0; i++)
        if (en[i].usable && en[i].step <= written) newest = i;
    int64_t keep_last = 1 + data[0] % 5;
    ckpt_retain(en, ne, written, newest, keep_last);
    int64_t must = 0, kept = 0;
    for (int i = 0; i < ne; i++) {
        int m = (en[i].usable && en[i].own && en[i].step == written) || i == newest;
        if ((m || !en[i].usable) && !en[i].keep) __builtin_trap();
        must += m && en[i].usable;
        kept += en[i].keep && en[i].usable;
    }
    if (kept > (must > keep_last ? must : keep_last)) __builtin_trap();
    return 0;
}
