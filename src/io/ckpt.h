/* Checkpoints: save and resume a run (format: docs/checkpoints.md).
 *
 * A checkpoint is the folder RUN_DIR/checkpoints/step-NNNNNNNN holding the
 * effective config, a state file (step, data position, seed, the layout it
 * was written with, shapes and types), the compute weights and the fp32
 * master weights and AdamW moments stored whole (gathered from the ZeRO-1
 * shards), so any world size can resume from it. A manifest gives the size
 * and CRC-32C of every file. It is written into a temporary folder, every file
 * fsynced, then renamed into place: a folder with the final name is complete. */
#ifndef AUTOSP_CKPT_H
#define AUTOSP_CKPT_H

#include <stddef.h>
#include <stdint.h>

#include "config.h"
#include "exec/exec.h"
#include "parallel/parallel.h"
#include "plan/plan.h"

#define CKPT_FORMAT_VERSION 1
#define CKPT_MAGIC "ASPCKPT1"
#define CKPT_HEADER_BYTES 32
#define CKPT_LINEAGE_MAX 32   /* ancestors recorded in a state file */

/* What a checkpoint records besides the tensors. */
typedef struct {
    int64_t step;               /* optimizer steps done */
    int64_t epoch, cursor;      /* loader position after `step` steps */
    uint64_t seed;              /* weight init and data order */
    int64_t val_step;           /* step of the latest validation loss (0: none); recorded, not read back */
    double val_loss;
    /* Lineage (read back by ckpt_validate; ckpt_save writes the run's own):
     * the launch that wrote it, and the checkpoints its history grew from,
     * parent first (run id and step). 0 and none when not recorded. */
    uint64_t run_id;
    int n_ancestors;
    uint64_t ancestor_run[CKPT_LINEAGE_MAX];
    int64_t ancestor_step[CKPT_LINEAGE_MAX];
    /* The training shard the run read (shard_fingerprint): a resume warns
     * when it changed. 0 when not recorded (older checkpoints). */
    uint64_t data_bytes, data_fingerprint;
} ckpt_state_t;

/* CRC-32C (Castagnoli, reflected 0x82F63B78) of `n` bytes continuing `crc`
 * (start with 0). */
uint32_t ckpt_crc32c(uint32_t crc, const void *data, size_t n);

/* Write the checkpoint of st->step. Collective: every rank calls it (the
 * optimizer state is gathered to world rank 0, which writes). Then prunes to
 * io.keep_last checkpoints (ckpt_retain). Returns 0 on every rank, or -1
 * on every rank with the message in err (on rank 0). */
int ckpt_save(const config_t *cfg, const plan_t *plan, exec_t *e, const ranks_t *r, const coll_ops_t *host_coll,
              const ckpt_state_t *st, char *err, size_t errlen);

/* Apply io.resume. Collective. Returns 1 when a checkpoint was loaded into
 * the engine (its state in *st, its folder in loaded, which may be NULL), 0
 * when the run starts fresh, -1 when the checkpoint to resume from is
 * corrupt, incomplete or does not match this run (message in err on rank 0;
 * nothing in the engine was changed). */
int ckpt_resume(const config_t *cfg, const plan_t *plan, exec_t *e, const ranks_t *r, const coll_ops_t *host_coll,
                ckpt_state_t *st, char *loaded, size_t loadedlen, char *err, size_t errlen);

/* Check a checkpoint folder completely against this run's model (manifest,
 * sizes, checksums, headers, state). Local (no communication). Returns 0 and
 * fills *st, or -1 with a message naming the file and the problem. */
int ckpt_validate(const char *dir, const config_t *cfg, const plan_t *plan, ckpt_state_t *st, char *err,
                  size_t errlen);

/* Rank 0, before anything in io.run_dir is written: with io.resume auto, a
 * checkpoints path that exists but cannot be read (a dangling link, a link
 * loop, a file, no permission) is an error, not a fresh start. Returns 0, or
 * -1 with a message naming the path and the reason. */
int ckpt_check_run_dir(const config_t *cfg, char *err, size_t errlen);

/* One checkpoint folder as retention sees it. */
typedef struct {
    int64_t step;       /* from the folder's name */
    int usable;         /* complete (manifest, sizes) and its state agrees with its name */
    int own;            /* of this run's lineage */
    int keep;           /* out: kept */
} ckpt_entry_t;

/* Retention's decision, pure (no files): which of `n` entries to keep, given
 * the step just written (-1: none) and keep_last. Kept always: the one just
 * written, the newest usable one (`newest`, index or -1, found by the caller
 * by a full check), and every unusable one (never deleted: it may be
 * repairable evidence); then usable ones, this run's lineage first, newest
 * first, up to keep_last in all. Sets entries[i].keep. */
void ckpt_retain(ckpt_entry_t *entries, int n, int64_t just_written, int newest, int64_t keep_last);

#endif
