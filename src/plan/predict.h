/* The step-time predictor: a compiled plan and a card profile give the
 * seconds of one optimizer step, by kind, per rank (every rank does the same
 * work, so that is the job's step). The model and its limits are in
 * docs/plan.md ("Predicted step time"). */
#ifndef AUTOSP_PREDICT_H
#define AUTOSP_PREDICT_H

#include "plan/plan.h"
#include "plan/profile.h"

typedef enum {
    PRED_GEMM = 0,      /* matmuls and the LM head, forward and backward */
    PRED_ATTENTION,     /* attention forward and backward */
    PRED_MEMORY,        /* memory-bound ops (norms, RoPE, SwiGLU, adds, embedding, loss softmax, device AdamW,
                           offload staging) */
    PRED_RECOMPUTE,     /* forward steps run again before the backward (all of their kinds) */
    PRED_PCIE,          /* exposed host copies: activation offload and model state */
    PRED_COMM,          /* exposed all-to-alls and gradient reduction / weight gathers */
    PRED_HOST_ADAMW,    /* exposed host AdamW */
    PRED__COUNT
} pred_kind_t;

const char *pred_kind_name(pred_kind_t k);

typedef struct {
    double s[PRED__COUNT];      /* seconds a step, by kind (exposed parts only for the last three) */
    double step_s;              /* their sum */
    double tokens_per_s;        /* the job's tokens a step / step_s */
    double tflops_per_gpu;      /* plan FLOPs (bench/README.md count) / step_s / world */
    double mfu;                 /* tflops_per_gpu / the profile's peak */
    /* totals before overlap, for the report */
    double offload_copy_s;      /* activation copies both ways, all layers */
    double state_copy_s;        /* model state over PCIe */
    double a2a_s, grad_comm_s;  /* all-to-alls; gradient reduction and weight gathers */
    double host_adamw_s;        /* the host AdamW's whole time */
    int no_collective_rates;    /* 1: world > 1 but the profile has no collective figures (counted 0) */
} step_prediction_t;

/* The prediction for plan p on card prof. doc_len > 0: samples are packed
 * documents of about that many tokens (attention runs per document); 0:
 * one causal stream per sample. */
void plan_predict(const plan_t *p, const card_profile_t *prof, double doc_len, step_prediction_t *out);

/* Seconds of one causal attention call over `rows` query rows of `heads`
 * heads of `head_dim` on one rank, in documents of `doc_len` tokens (0: one
 * stream), run as `pieces` calls (query chunks or head groups: the same
 * FLOPs, each call paying the profile's fixed cost); its forward or its
 * backward. Non-decreasing in rows, doc_len and pieces. */
double predict_attention_s(const card_profile_t *prof, double rows, double heads, double head_dim, double doc_len,
                           int pieces, int backward);

/* What a placement adds to a step beyond the model's own work (recompute,
 * exposed copies, exposed host AdamW, exposed communication): what `auto`
 * compares between placements. */
double plan_predicted_overhead_s(const plan_t *p, const card_profile_t *prof);

/* The profile a plan is costed with: its target's, or the built-in h100. */
const card_profile_t *plan_cost_profile(const plan_t *p);

/* The PREDICTED STEP section of --explain. */
void plan_explain_predicted(const plan_t *p, const card_profile_t *prof, double doc_len, FILE *out);

#endif
