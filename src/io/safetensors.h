/* safetensors files (the Hugging Face weight format): reader and writer.
 *
 * Layout: 8-byte little-endian header length N, N bytes of JSON header
 * {"name": {"dtype": "BF16", "shape": [r, c], "data_offsets": [begin, end]},
 *  ..., "__metadata__": {"key": "string", ...}}, then the data; offsets are
 * relative to the first byte after the header. The reader maps the file and
 * validates every entry before anything is read (malformed files are expected:
 * each problem is one message naming the file and the tensor). */
#ifndef AUTOSP_SAFETENSORS_H
#define AUTOSP_SAFETENSORS_H

#include <stddef.h>
#include <stdint.h>

/* Header size cap: a real header is kilobytes; a huge length is damage. */
#define ST_MAX_HEADER_BYTES ((uint64_t)100 * 1000 * 1000)
#define ST_MAX_DIMS 8

typedef enum { ST_F32 = 0, ST_F16, ST_BF16 } st_dtype_t;

const char *st_dtype_name(st_dtype_t t);   /* "F32", "F16", "BF16" */
size_t st_dtype_size(st_dtype_t t);

typedef struct {
    char *name;
    st_dtype_t dtype;
    int ndim;
    int64_t shape[ST_MAX_DIMS];
    size_t numel;
    size_t begin, end;          /* byte range in the data section */
} st_tensor_t;

typedef struct {
    char path[1024];
    void *map;
    size_t map_bytes;
    const unsigned char *data;  /* first byte after the header */
    size_t data_bytes;
    st_tensor_t *tensors;       /* sorted by name */
    int ntensors;
} st_file_t;

/* Map and validate a file. Returns 0, or -1 with one message in err (the file
 * is left closed). */
int st_open(st_file_t *f, const char *path, char *err, size_t errlen);
void st_close(st_file_t *f);
const st_tensor_t *st_find(const st_file_t *f, const char *name);
/* Convert a tensor to fp32 (numel values). */
void st_read_f32(const st_file_t *f, const st_tensor_t *t, float *out);

/* A whole checkpoint folder: model.safetensors, or the shards named by
 * model.safetensors.index.json ("weight_map": name -> file). */
typedef struct {
    st_file_t *files;
    int nfiles;
} st_checkpoint_t;

int st_checkpoint_open(st_checkpoint_t *c, const char *dir, char *err, size_t errlen);
void st_checkpoint_close(st_checkpoint_t *c);
/* The tensor `name` and its file, or NULL. A name is in one file only (checked
 * on open). */
const st_tensor_t *st_checkpoint_find(const st_checkpoint_t *c, const char *name, const st_file_t **file);

/* One tensor to write: fp32 values converted to the file's dtype. */
typedef struct {
    const char *name;
    int ndim;
    int64_t shape[ST_MAX_DIMS];
    const float *data;
} st_write_tensor_t;

/* Write `n` tensors in the given order as `dtype` (ST_F32 or ST_BF16;
 * ST_F16 too) atomically: a temporary file in the same folder, fsync, rename,
 * fsync of the folder. Returns 0, or -1 with a message. */
int st_write(const char *path, const st_write_tensor_t *t, int n, st_dtype_t dtype, char *err, size_t errlen);
/* As st_write, but the values (t[i].data is not read) come from `produce`,
 * which passes every tensor's values in the order of t to emit(ectx, vals,
 * k), in pieces of any size; emit returns non-zero once writing failed. So
 * a model is written without a buffer of its size. produce returns 0, or
 * non-zero when it could not produce them; the file is then not written.
 * produce is called unless the temporary file cannot be created. */
typedef int (*st_emit_fn)(void *ectx, const float *vals, size_t n);
int st_write_from(const char *path, const st_write_tensor_t *t, int n, st_dtype_t dtype,
                  int (*produce)(void *ctx, st_emit_fn emit, void *ectx), void *ctx, char *err, size_t errlen);

/* Element conversions (round to nearest even; NaN stays NaN). */
float st_bf16_to_f32(uint16_t h);
float st_f16_to_f32(uint16_t h);
uint16_t st_f32_to_bf16(float x);
uint16_t st_f32_to_f16(float x);

#endif
