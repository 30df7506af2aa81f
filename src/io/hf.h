/* Hugging Face Llama folders: config.json (both rope layouts), safetensors
 * weights in (single file or sharded) and out (a folder that
 * transformers.LlamaForCausalLM.from_pretrained loads). See docs/hf.md. */
#ifndef AUTOSP_HF_H
#define AUTOSP_HF_H

#include <stddef.h>

#include "config.h"
#include "dtype.h"
#include "exec/exec.h"
#include "model/model.h"
#include "io/safetensors.h"

/* Read DIR/config.json into the model keys of *out (from_pretrained and
 * initializer_range are kept). Reads rope_theta + rope_scaling (Llama 3.x
 * releases) and rope_parameters (transformers 5); missing keys take
 * transformers' LlamaConfig defaults. Refuses other model types, biases and
 * activations. Returns 0, or -1 with a message naming the file and key. */
int hf_read_config(const char *dir, model_config_t *out, char *err, size_t errlen);

/* With cfg->model.from_pretrained set: resolve it against the config file's
 * folder (stored back as an absolute path), read its config.json, check that
 * every model key given in the config file or by --set agrees with it (else
 * one message naming both values), and replace the model keys. */
int hf_apply_pretrained(config_t *cfg, char *const *sets, int nsets, char *err, size_t errlen);

/* Load the checkpoint in DIR into the flat fp32 parameter buffer of m, name
 * by name; a missing, extra or misshapen tensor is an error naming it. */
int hf_load_weights(const char *dir, const model_t *m, float *flat, char *err, size_t errlen);
/* The same checks, each parameter's values passed to put(ctx, vals, begin, n)
 * (model elements [begin, begin + n) of the flat buffer) as it is read, so
 * only one tensor is held at a time. */
typedef void (*hf_put_fn)(void *ctx, const float *vals, size_t begin, size_t n);
int hf_load_weights_each(const char *dir, const model_t *m, hf_put_fn put, void *ctx, char *err, size_t errlen);

/* Write DIR/config.json and DIR/model.safetensors (creating DIR) from the flat
 * buffer, tensors in parameter-table order, as `dtype` (ST_F32 or ST_BF16). */
int hf_export(const char *dir, const model_t *m, const float *flat, st_dtype_t dtype, char *err, size_t errlen);
/* The same from a producer of the flat buffer's values in order (st_write_from). */
int hf_export_from(const char *dir, const model_t *m, st_dtype_t dtype,
                   int (*produce)(void *ctx, st_emit_fn emit, void *ectx), void *ctx, char *err, size_t errlen);
int hf_write_config(const char *path, const model_config_t *c, st_dtype_t dtype, char *err, size_t errlen);

/* Training-loop steps (every rank calls them; errors end the run):
 * load cfg->model.from_pretrained into the executor; write io.run_dir/hf/
 * from rank 0 in the backend's parameter dtype. */
void hf_train_import(exec_t *e, const config_t *cfg, const model_t *m);
void hf_train_export(exec_t *e, const config_t *cfg, const model_t *m, dtype_t param_dtype, int lead);

#endif
