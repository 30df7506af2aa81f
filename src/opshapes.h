/* The largest operand shapes of a compiled plan, as a backend needs them to
 * size its scratch (library workspaces, per-row partials, staging). Neutral:
 * the plan fills it, a backend reads it; neither knows the other. */
#ifndef AUTOSP_OPSHAPES_H
#define AUTOSP_OPSHAPES_H

#include <stdint.h>

typedef struct {
    int64_t rows;           /* tokens per rank (sequence shard) */
    int64_t attn_rows;      /* tokens attention sees (the whole padded sequence when sharded) */
    int64_t hq, hkv, hd;    /* attention heads per rank and head dim */
    int64_t d, f, vocab;    /* hidden, MLP and vocabulary widths */
    int64_t loss_chunk;     /* tokens per LM-head chunk */
    int64_t max_width;      /* widest activation row (elements) */
    int documents;          /* 1: attention runs over packed documents (data.documents eos) */
} op_shapes_t;

#endif
