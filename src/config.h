/* Run configuration: YAML -> validated plain structs (see docs/config.md).
 *
 * config_load() reads the file, applies --set overrides, and validates every
 * key. Any problem is reported as ONE message "FILE:LINE:COL: section.key:
 * what was expected, what was found" (or "--set section.key=value: ..." for an
 * override) and the function returns -1; the caller exits with status 2.
 * Nothing else in the engine runs before the whole config is valid. */
#ifndef AUTOSP_CONFIG_H
#define AUTOSP_CONFIG_H

#include <stddef.h>
#include <stdint.h>
#include <stdio.h>

#define CFG_PATH_MAX 1024
#define CFG_MAX_KEYS 128   /* room in config_t.origin */
#define CFG_NAME_MAX 64

typedef enum { SAC_AUTO = 0, SAC_SAVE_ALL, SAC_FULL } sac_policy_t;
typedef enum { DEVICE_AUTO = 0, DEVICE_CPU, DEVICE_CUDA } device_kind_t;

/* rope_scaling with rope_type: llama3 (Llama 3.1/3.2 frequency scaling). */
typedef struct {
    int enabled;                       /* 0: plain RoPE */
    double factor;                     /* e.g. 8.0 (3.1) or 32.0 (3.2) */
    double low_freq_factor;            /* 1.0 */
    double high_freq_factor;           /* 4.0 */
    int64_t original_max_position_embeddings; /* 8192 */
} rope_scaling_t;

/* Hugging Face config.json names. */
typedef struct {
    char architecture[CFG_NAME_MAX];   /* "llama" (the only family so far) */
    int64_t hidden_size;               /* d */
    int64_t intermediate_size;         /* f */
    int64_t num_hidden_layers;         /* L */
    int64_t num_attention_heads;       /* Hq */
    int64_t num_key_value_heads;       /* Hkv (defaults to Hq) */
    int64_t head_dim;                  /* defaults to hidden_size / num_attention_heads */
    int64_t vocab_size;                /* V */
    int64_t max_position_embeddings;   /* informational; longer S warns */
    double rms_norm_eps;
    double rope_theta;
    rope_scaling_t rope_scaling;
    int tie_word_embeddings;           /* LM head shares the embedding matrix */
    double initializer_range;          /* std of the normal init of weights */
    char from_pretrained[CFG_PATH_MAX];/* Hugging Face folder: hyperparameters and initial weights; "" none */
} model_config_t;

typedef struct {
    int64_t seq_len;            /* S: tokens per sample (each sample reads S+1 tokens) */
    int64_t global_batch_size;  /* samples per optimizer step over all DP ranks */
    int64_t steps;              /* optimizer steps */
    double lr;                  /* peak learning rate */
    double min_lr;              /* floor of the cosine decay */
    int64_t warmup_steps;       /* linear warmup from 0 */
    double weight_decay;        /* decoupled, on 2-D weights only */
    double beta1, beta2, eps;   /* AdamW */
    double grad_clip;           /* max global gradient L2 norm; 0 disables */
    uint64_t seed;              /* weight init and data order */
    device_kind_t device;       /* auto: cuda when built with it and a GPU is present */
    int64_t eval_every;         /* steps between validation losses (0: only at the end); needs data.val_path */
    int64_t eval_tokens;        /* validation tokens per evaluation (0: one global batch) */
} train_config_t;

typedef struct {
    char path[CFG_PATH_MAX];    /* token shard (docs/data.md); relative to the config file's folder */
    int shuffle;                /* visit samples in a seeded random order each epoch */
    char documents[16];         /* none | eos: the EOS token ends a document (attention and positions per document) */
    int64_t eos_token_id;       /* -1: the id the shard's header records */
    char val_path[CFG_PATH_MAX];/* validation shard; "" none */
} data_config_t;

typedef struct {
    int64_t sequence_parallel_size; /* 0 means "auto" */
    int zero_stage;                 /* 0..3, or -1: auto (the lowest stage that fits) */
} parallel_config_t;

typedef struct {
    int offload;                /* optimizer state on the host: 1, 0, or -1 auto (when the GPU cannot hold it) */
    int offload_params;         /* ZeRO-3's bf16 weight shard on the host too: 1, 0, or -1 auto */
} optimizer_config_t;

typedef struct {
    sac_policy_t policy;        /* auto | save_all | full */
    double memory_budget_gib;   /* per-rank device memory the plan must fit; 0: the device's */
    int offload;                /* allow host offload of saved activations (auto policy; default on) */
    double host_budget_gib;     /* per-rank pinned host memory the plan may use; 0: the node's share */
    double host_bandwidth_gbs;  /* GB/s each way between a GPU and the host, for the offload cost */
    int64_t loss_chunk_tokens;  /* tokens per LM-head/loss chunk; 0: auto */
    int64_t mlp_tile_tokens;    /* tokens per tile of a recomputed MLP; 0: auto */
    int attention_pieces;       /* KV-head groups the attention block runs in; -1: auto */
} checkpointing_config_t;

typedef struct {
    char run_dir[CFG_PATH_MAX]; /* logs (and later checkpoints); created if missing */
    int64_t log_every;          /* steps between console lines */
    int export_hf;              /* write the trained model to run_dir/hf/ (Hugging Face folder) */
    char resume[CFG_PATH_MAX];  /* auto | never | a checkpoint folder (docs/checkpoints.md) */
    int64_t save_every;         /* steps between checkpoints; 0: only at the end and on signals */
    int64_t keep_last;          /* complete checkpoints kept */
    int save_at_end;            /* checkpoint after the last step (signals checkpoint regardless) */
} io_config_t;

typedef struct {
    char source[CFG_PATH_MAX];  /* the config file it came from */
    char base_dir[CFG_PATH_MAX];/* folder of that file: relative paths resolve here */
    model_config_t model;
    train_config_t train;
    data_config_t data;
    parallel_config_t parallel;
    optimizer_config_t optimizer;
    checkpointing_config_t checkpointing;
    io_config_t io;
    /* Where each key's value came from (by key index; line 0: a default or
     * --set), for messages after loading: config_where. */
    struct { int line, col; const char *set; } origin[CFG_MAX_KEYS];
    int vocab_size_given;       /* model.vocab_size came from the file, --set or from_pretrained (else the shard's header) */
} config_t;

/* "FILE:LINE:COL: " of the value of section.key in the config file, "--set
 * ARG: " when an override gave it, "FILE: " for a default (or "" without a
 * file): the prefix for a message about that key. */
const char *config_where(const config_t *cfg, const char *section, const char *key, char *buf, size_t len);

/* Fill every key with its default. */
void config_defaults(config_t *cfg);

/* Load `path`, apply `nsets` overrides of the form "section.key=value", then
 * validate. Returns 0, or -1 with one message in err. */
int config_load(config_t *cfg, const char *path, char *const *sets, int nsets,
                char *err, size_t errlen);

/* Check cross-key constraints (heads divide hidden size, ...). Called by
 * config_load; exposed for configs built in code (tests). */
int config_validate(const config_t *cfg, char *err, size_t errlen);

/* Resolve a path from the config (data.path, ...) against the config file's
 * folder unless it is absolute. Returns 0, or -1 when it does not fit. */
int config_resolve_path(const config_t *cfg, const char *path, char *out, size_t outlen);

/* Print every section and key with type, default and meaning. */
void config_print_help(FILE *out);

/* Write the effective config back as YAML (recorded in the run folder). */
int config_write_yaml(const config_t *cfg, const char *path, char *err, size_t errlen);

/* data.documents is eos */
int config_documents_eos(const config_t *cfg);

const char *sac_policy_name(sac_policy_t p);
const char *device_kind_name(device_kind_t d);

#endif
