/* A card profile: the measured rates the step-time predictor (predict.c)
 * turns the plan's FLOPs, bytes and copies into seconds with. A small text
 * file of `key value` lines (docs/plan.md, "Card profiles"); two built in
 * (h100, h200), others written by `autosp-train --calibrate` or by hand.
 * The reader is a reader of outside input: bounded sizes, and every refusal
 * names the line and the key. It knows no GPU: a profile is only numbers. */
#ifndef AUTOSP_PROFILE_H
#define AUTOSP_PROFILE_H

#include <stddef.h>
#include <stdio.h>

#define PROFILE_VERSION 1
#define PROFILE_MAX_BYTES (64 * 1024)   /* a profile is a page of numbers */
#define PROFILE_MAX_LINE 256
#define PROFILE_MAX_POINTS 32           /* per table */
#define PROFILE_NAME_MAX 64

typedef struct {
    double x, y;
} profile_point_t;

/* One curve: y at x, interpolated linearly in log x, clamped at the ends. */
typedef struct {
    profile_point_t pt[PROFILE_MAX_POINTS];
    int n;
} profile_curve_t;

/* The collectives a step uses, by kind. */
typedef enum { COLL_A2A = 0, COLL_REDUCE_SCATTER, COLL_ALL_GATHER, COLL__COUNT } profile_coll_t;

/* Attention tables by head dim (one curve over sequence length each). */
#define PROFILE_MAX_HEAD_DIMS 8
typedef struct {
    int head_dim[PROFILE_MAX_HEAD_DIMS];
    profile_curve_t by_len[PROFILE_MAX_HEAD_DIMS];
    int n;
} profile_attn_t;

typedef struct {
    char card[PROFILE_NAME_MAX];   /* "h100", or what --calibrate found */
    double peak_tflops;            /* dense bf16 peak, for MFU (989 on H100/H200) */
    profile_curve_t gemm;          /* TFLOP/s by FLOPs of one GEMM call */
    profile_attn_t attn_fwd;       /* TFLOP/s (causal forward FLOPs) by keys a query sees, per head dim */
    profile_attn_t attn_bwd;       /* TFLOP/s, backward FLOPs counted as 2.5x the forward's */
    profile_attn_t docs_fwd, docs_bwd; /* the same over packed documents, by document length (ragged
                                      calls); empty: the tables above */
    double attn_piece_s;           /* fixed cost of one attention call (a piece), seconds */
    double mem_bytes_per_s;        /* memory-bound ops: device memory bytes/s */
    double h2d_bytes_per_s, d2h_bytes_per_s; /* PCIe each way, pinned host memory */
    double host_adamw_per_s;       /* host AdamW: parameters updated per second by one node */
    profile_curve_t coll[COLL__COUNT]; /* bytes/s per rank by GPU count (x); empty: unknown */
} card_profile_t;

/* Parse `len` bytes of profile text; `name` (a file name) prefixes errors.
 * Returns 0, or -1 with "NAME:LINE: key: what is wrong; what to do". */
int profile_parse(card_profile_t *p, const char *text, size_t len, const char *name, char *err, size_t errlen);
/* Read and parse a profile file (at most PROFILE_MAX_BYTES). */
int profile_load(card_profile_t *p, const char *path, char *err, size_t errlen);
/* The text of a built-in profile ("h100", "h200"); NULL for another name. */
const char *profile_builtin_text(const char *card);
/* A built-in profile, or a file when `spec` names none: 0, or -1 with err. */
int profile_select(card_profile_t *p, const char *spec, char *err, size_t errlen);
/* Write p as profile text (what profile_parse reads back). */
void profile_write(const card_profile_t *p, FILE *out);

/* Rates, interpolated. */
double profile_gemm_flops_per_s(const card_profile_t *p, double flops_per_call);
/* Causal attention: the tables are keyed by the length one causal pass
 * runs over (S, or a document's length), interpolated in log length, at
 * the nearest head dim listed; over documents the attn_docs tables when
 * the profile has them. Backward: FLOP/s of 2.5x the forward's
 * FLOPs (FlashAttention's convention, as tests/bench_attention reports). */
double profile_attn_flops_per_s(const card_profile_t *p, int backward, int documents, double len, int head_dim);
/* Bytes/s per rank of a collective among `gpus` ranks; 0 when the profile
 * has no figure for this kind. */
double profile_coll_bytes_per_s(const card_profile_t *p, profile_coll_t kind, int gpus);
/* y of a curve at x (log-linear, clamped); 0 for an empty curve. */
double profile_curve_at(const profile_curve_t *c, double x);

#endif
