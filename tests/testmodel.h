/* A Llama model config for tests, with llama3 RoPE scaling (theta 500000,
 * low/high frequency factors 1 and 4, original context 8192), as the
 * released Llama 3.x checkpoints have. */
#ifndef AUTOSP_TESTMODEL_H
#define AUTOSP_TESTMODEL_H

#include <stdint.h>
#include <string.h>

#include "config.h"

static inline model_config_t test_llama_cfg(int64_t d, int64_t f, int64_t L, int64_t hq, int64_t hkv, int64_t hd,
                                            int64_t V, int tied, double rope_factor) {
    model_config_t c;
    memset(&c, 0, sizeof c);
    strcpy(c.architecture, "llama");
    c.hidden_size = d;
    c.intermediate_size = f;
    c.num_hidden_layers = L;
    c.num_attention_heads = hq;
    c.num_key_value_heads = hkv;
    c.head_dim = hd;
    c.vocab_size = V;
    c.rms_norm_eps = 1e-5;
    c.rope_theta = 500000.0;
    c.rope_scaling.enabled = 1;
    c.rope_scaling.factor = rope_factor;
    c.rope_scaling.low_freq_factor = 1.0;
    c.rope_scaling.high_freq_factor = 4.0;
    c.rope_scaling.original_max_position_embeddings = 8192;
    c.tie_word_embeddings = tied;
    c.initializer_range = 0.02;
    return c;
}

#endif
