/* Shared by the checkpoint reader's files (ckpt.c, ckpt_values.c); not an
 * interface for other layers. */
#ifndef AUTOSP_CKPT_INTERNAL_H
#define AUTOSP_CKPT_INTERNAL_H

#include <stddef.h>
#include <stdint.h>
#include <sys/types.h>

#include "io/ckpt.h"
#include "model/model.h"

#define CKPT_IO_CHUNK ((size_t)1 << 22)   /* elements per read/write batch */

enum { F_CONFIG, F_STATE, F_WEIGHTS, F_MASTER, F_ADAM_M, F_ADAM_V, F__COUNT };
extern const char *const ckpt_file_names[F__COUNT];

typedef struct {
    int64_t size;
    uint32_t crc;
} file_sum_t;

/* The first problem found in a checkpoint's values ("" when none), reported
 * after its checksums and headers hold (a flipped bit is damage, named so). */
typedef struct {
    const model_t *m;
    char what[3072];
} vcheck_t;

/* Open a checkpoint file (regular files only, without blocking). */
int ckpt_open_file(const char *path, char *err, size_t errlen);
/* pread all of n bytes at `at`: 0, or -1. */
int ckpt_read_at(int fd, void *buf, size_t n, off_t at);
/* bf16 to fp32, in place allowed (out and in may share memory). */
void ckpt_bf16_to_f32(float *out, const uint16_t *in, size_t n);
/* CRC-32C of the array files `fs` of `dir` (one, or the weights and the
 * master side by side, nf = 2), sizes from the manifest, their values checked
 * into vc on the same read. 0 with sums[], or -1 with a message. */
int ckpt_scan_arrays(const char *dir, const int *fs, int nf, const long long *sizes, file_sum_t *sums,
                     size_t n_params, vcheck_t *vc, char *err, size_t errlen);

#endif
