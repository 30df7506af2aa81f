/* Model layer: parameter table (published counts, names, adjacency, tying),
 * RoPE llama3 frequencies, counter-based init, graph shape. */
#include <check.h>
#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "model/model.h"
#include "testutil.h"
#include "testmodel.h"

static model_config_t cfg_1b(void) { return test_llama_cfg(2048, 8192, 16, 32, 8, 64, 128256, 1, 32.0); }
static model_config_t cfg_3b(void) { return test_llama_cfg(3072, 8192, 28, 24, 8, 128, 128256, 1, 32.0); }
static model_config_t cfg_8b(void) { return test_llama_cfg(4096, 14336, 32, 32, 8, 128, 128256, 0, 8.0); }
static model_config_t cfg_70b(void) { return test_llama_cfg(8192, 28672, 80, 64, 8, 128, 128256, 0, 8.0); }

static void build(model_t *m, model_config_t c) {
    char err[512];
    ck_assert_msg(model_build(m, &c, err, sizeof err) == 0, "model_build: %s", err);
}

START_TEST(test_param_counts) {
    struct { model_config_t c; size_t n; } cases[] = {
        {cfg_1b(), 1235814400u}, {cfg_3b(), 3212749824u}, {cfg_8b(), 8030261248u}, {cfg_70b(), 70553706496u}};
    for (size_t i = 0; i < 4; i++) {
        model_t m;
        build(&m, cases[i].c);
        ck_assert_uint_eq(m.n_params, cases[i].n);
        size_t sum = 0;
        for (int p = 0; p < m.nparams; p++) sum += m.params[p].numel;
        ck_assert_uint_eq(sum, cases[i].n);
        model_free(&m);
    }
}
END_TEST

START_TEST(test_names_and_adjacency) {
    model_t m;
    build(&m, cfg_8b());
    const int64_t d = 4096, hd = 128;
    for (int l = 0; l < 32; l += 31) {
        char n[128];
        snprintf(n, sizeof n, "model.layers.%d.self_attn.q_proj.weight", l);
        const param_t *q = model_find_param(&m, n);
        snprintf(n, sizeof n, "model.layers.%d.self_attn.k_proj.weight", l);
        const param_t *k = model_find_param(&m, n);
        snprintf(n, sizeof n, "model.layers.%d.self_attn.v_proj.weight", l);
        const param_t *v = model_find_param(&m, n);
        snprintf(n, sizeof n, "model.layers.%d.mlp.gate_proj.weight", l);
        const param_t *gp = model_find_param(&m, n);
        snprintf(n, sizeof n, "model.layers.%d.mlp.up_proj.weight", l);
        const param_t *up = model_find_param(&m, n);
        snprintf(n, sizeof n, "model.layers.%d.mlp.down_proj.weight", l);
        const param_t *dn = model_find_param(&m, n);
        snprintf(n, sizeof n, "model.layers.%d.input_layernorm.weight", l);
        const param_t *in = model_find_param(&m, n);
        ck_assert_ptr_nonnull(q);
        ck_assert_ptr_nonnull(k);
        ck_assert_ptr_nonnull(v);
        ck_assert_ptr_nonnull(gp);
        ck_assert_ptr_nonnull(up);
        ck_assert_ptr_nonnull(dn);
        ck_assert_ptr_nonnull(in);
        ck_assert_int_eq(q->shape[0], 32 * hd);
        ck_assert_int_eq(q->shape[1], d);
        ck_assert_int_eq(k->shape[0], 8 * hd);
        ck_assert_uint_eq(k->offset, q->offset + q->numel);
        ck_assert_uint_eq(v->offset, k->offset + k->numel);
        ck_assert_uint_eq(up->offset, gp->offset + gp->numel);
        ck_assert_int_eq(dn->shape[0], d);
        ck_assert_int_eq(dn->shape[1], 14336);
        ck_assert_uint_eq(model_param_offset(&m, l, LP_QKV), q->offset);
        ck_assert_uint_eq(model_param_offset(&m, l, LP_GATE_UP), gp->offset);
        ck_assert_uint_eq(model_param_offset(&m, l, LP_DOWN), dn->offset);
        ck_assert_uint_eq(model_param_offset(&m, l, LP_INPUT_NORM), in->offset);
        ck_assert_int_eq(in->decay, 0);
        ck_assert_int_eq(q->decay, 1);
        ck_assert_int_eq(in->layer, l);
    }
    ck_assert_uint_eq(m.layer_stride, (size_t)(2 * d + 48 * hd * d + d * 32 * hd + 3 * d * 14336));
    const param_t *head = model_find_param(&m, "lm_head.weight");
    ck_assert_ptr_nonnull(head);
    ck_assert_uint_eq(model_param_offset(&m, -1, GP_LM_HEAD), head->offset);
    ck_assert_uint_eq(head->offset + head->numel, m.n_params);
    ck_assert_uint_eq(model_param_offset(&m, -1, GP_FINAL_NORM), model_find_param(&m, "model.norm.weight")->offset);
    ck_assert_ptr_null(model_find_param(&m, "model.layers.32.mlp.up_proj.weight"));
    model_free(&m);

    build(&m, cfg_1b());    /* tied: the LM head is the embedding */
    ck_assert_ptr_null(model_find_param(&m, "lm_head.weight"));
    ck_assert_uint_eq(model_param_offset(&m, -1, GP_LM_HEAD), 0);
    ck_assert_uint_eq(model_param_offset(&m, -1, GP_EMBED), 0);
    ck_assert_uint_eq(model_find_param(&m, "model.norm.weight")->offset + 2048, m.n_params);
    model_free(&m);
}
END_TEST

/* transformers' llama3 rule, written the way it is there: vector masks */
START_TEST(test_rope_llama3) {
    model_config_t cs[2] = {cfg_8b(), cfg_1b()};
    for (int c = 0; c < 2; c++) {
        model_t m;
        build(&m, cs[c]);
        int half = (int)m.hd / 2;
        double got[64];
        model_rope_inv_freq(&m, got);
        double factor = cs[c].rope_scaling.factor, old = 8192, lo = 1, hi = 4;
        int n_low = 0, n_high = 0, n_mid = 0;
        for (int i = 0; i < half; i++) {
            double inv = pow(500000.0, -(2.0 * i) / (double)m.hd);
            double wl = 2 * M_PI / inv;
            double scaled = wl > old / lo ? inv / factor : inv;
            double smooth = (old / wl - lo) / (hi - lo);
            double smoothed = (1 - smooth) * scaled / factor + smooth * scaled;
            int medium = !(wl < old / hi) && !(wl > old / lo);
            double want = medium ? smoothed : scaled;
            n_low += wl > old / lo;
            n_high += wl < old / hi;
            n_mid += medium;
            ck_assert_msg(fabs(got[i] - want) <= 1e-15 * want, "inv_freq[%d] = %.17g, want %.17g", i, got[i], want);
        }
        ck_assert_int_gt(n_low, 0);     /* all three bands exercised */
        ck_assert_int_gt(n_high, 0);
        ck_assert_int_gt(n_mid, 0);
        ck_assert(fabs(got[0] - 1.0) < 1e-15);
        model_free(&m);
    }
    /* no scaling: plain theta^(-2i/hd) */
    model_config_t c = cfg_8b();
    c.rope_scaling.enabled = 0;
    model_t m;
    build(&m, c);
    double got[64];
    model_rope_inv_freq(&m, got);
    for (int i = 0; i < 64; i++) ck_assert(fabs(got[i] - 1.0 / pow(500000.0, i / 64.0)) < 1e-15 * got[i] + 1e-300);
    model_free(&m);
}
END_TEST

START_TEST(test_init_slices) {
    model_config_t c = test_llama_cfg(64, 160, 2, 4, 2, 16, 100, 0, 8.0);
    model_t m;
    build(&m, c);
    size_t n = m.n_params + 100;   /* include padding past the end */
    float *all = malloc(n * sizeof(float)), *part = malloc(n * sizeof(float));
    model_init_params(&m, 1234, 0, n, all);
    /* any slice equals the same range of the whole */
    size_t cuts[] = {0, 7, 6400, 6401, 20000, m.n_params - 3, n};
    for (size_t i = 0; i + 1 < sizeof cuts / sizeof cuts[0]; i++) {
        model_init_params(&m, 1234, cuts[i], cuts[i + 1] - cuts[i], part);
        ck_assert(memcmp(part, all + cuts[i], (cuts[i + 1] - cuts[i]) * sizeof(float)) == 0);
    }
    for (size_t i = m.n_params; i < n; i++) ck_assert(all[i] == 0.0f);
    const param_t *nw = model_find_param(&m, "model.layers.1.post_attention_layernorm.weight");
    for (size_t i = 0; i < nw->numel; i++) ck_assert(all[nw->offset + i] == 1.0f);
    /* matrices: mean ~0, std ~0.02 */
    const param_t *e = model_find_param(&m, "model.embed_tokens.weight");
    double s = 0, s2 = 0;
    for (size_t i = 0; i < e->numel; i++) { s += all[i]; s2 += (double)all[i] * all[i]; }
    double mean = s / (double)e->numel, sd = sqrt(s2 / (double)e->numel - mean * mean);
    ck_assert_msg(fabs(mean) < 0.002 && fabs(sd - 0.02) < 0.002, "mean %g std %g", mean, sd);
    /* another seed gives other values */
    model_init_params(&m, 1235, 0, 16, part);
    ck_assert(memcmp(part, all, 16 * sizeof(float)) != 0);
    free(all);
    free(part);
    model_free(&m);
}
END_TEST

static int find_tensor(const graph_t *g, const char *name) {
    for (int t = 0; t < g->nt; t++)
        if (strcmp(g->t[t].name, name) == 0) return t;
    return -1;
}

START_TEST(test_graphs) {
    model_t m;
    build(&m, cfg_8b());
    const graph_t *g = &m.layer;
    const char *names[] = {"x", "xn", "qkv", "q", "k", "v", "o", "lse", "attn_out", "h", "hn", "gu", "act", "mlp_out", "y"};
    for (size_t i = 0; i < sizeof names / sizeof names[0]; i++)
        ck_assert_msg(find_tensor(g, names[i]) >= 0, "layer tensor %s missing", names[i]);
    /* the attention residual and post_attention_layernorm are one step */
    op_kind_t ops[] = {OP_RMSNORM, OP_MATMUL, OP_ROPE_SPLIT, OP_ATTENTION, OP_MATMUL, OP_ADD_RMSNORM,
                       OP_MATMUL, OP_SWIGLU, OP_MATMUL, OP_ADD};
    ck_assert_int_eq(g->ns, 10);
    for (int s = 0; s < 10; s++) ck_assert_int_eq(g->s[s].op, ops[s]);
    ck_assert_int_eq(g->input, find_tensor(g, "x"));
    ck_assert_int_eq(g->output, find_tensor(g, "y"));
    ck_assert_int_eq(g->s[1].param, LP_QKV);
    ck_assert_int_eq(g->s[1].m, 48 * 128);
    ck_assert_int_eq(g->s[1].k, 4096);
    ck_assert_int_eq(g->s[6].m, 2 * 14336);
    ck_assert_int_eq(g->s[3].heads, 32);
    ck_assert_int_eq(g->s[3].kv_heads, 8);
    int lse = find_tensor(g, "lse");
    ck_assert_int_eq(g->t[lse].dtype, TENSOR_F32);
    ck_assert_int_eq(g->t[lse].stats, 1);
    ck_assert_int_eq(g->s[3].out[1], lse);
    ck_assert_int_eq(g->s[5].in[0], g->input);
    ck_assert_int_eq(g->s[5].in[1], find_tensor(g, "attn_out"));
    ck_assert_int_eq(g->s[5].nout, 2);
    ck_assert_int_eq(g->s[5].out[0], find_tensor(g, "h"));
    ck_assert_int_eq(g->s[5].out[1], find_tensor(g, "hn"));
    ck_assert_int_eq(g->s[5].param, LP_POST_NORM);
    ck_assert_int_eq(g->s[9].in[0], find_tensor(g, "h"));  /* the mlp residual reads h */
    ck_assert_str_eq(op_name(OP_ADD_RMSNORM), "ADD_RMSNORM");
    ck_assert_str_eq(g->s[2].label[0] ? "ok" : "", "ok");
    ck_assert_int_eq(m.prologue.ns, 1);
    ck_assert_int_eq(m.prologue.s[0].op, OP_EMBED);
    ck_assert_int_eq(m.prologue.input, -1);
    ck_assert_int_eq(m.epilogue.ns, 2);
    ck_assert_int_eq(m.epilogue.s[1].op, OP_LMHEAD_LOSS);
    ck_assert_int_eq(m.epilogue.s[1].nout, 0);
    ck_assert_int_eq(m.epilogue.s[1].param, GP_LM_HEAD);
    ck_assert_int_eq(m.epilogue.output, -1);
    ck_assert_str_eq(op_name(OP_A2A_SEQ_TO_HEAD), "A2A_SEQ_TO_HEAD");
    /* 6N: matmul weights incl. the LM head */
    double n = 32.0 * (4096.0 * 48 * 128 + 4096.0 * 4096 + 3.0 * 4096 * 14336) + 128256.0 * 4096;
    ck_assert(model_matmul_params(&m) == n);
    model_free(&m);
}
END_TEST

START_TEST(test_bad_config) {
    model_config_t c = cfg_8b();
    c.num_key_value_heads = 5;
    model_t m;
    char err[512];
    ck_assert_int_eq(model_build(&m, &c, err, sizeof err), -1);
    ck_assert_ptr_nonnull(strstr(err, "num_key_value_heads"));
    c = cfg_8b();
    strcpy(c.architecture, "gpt2");
    ck_assert_int_eq(model_build(&m, &c, err, sizeof err), -1);
    ck_assert_ptr_nonnull(strstr(err, "llama"));
}
END_TEST

int main(void) {
    Suite *s = suite_create("model");
    TCase *tc = tcase_create("llama");
    tcase_add_test(tc, test_param_counts);
    tcase_add_test(tc, test_names_and_adjacency);
    tcase_add_test(tc, test_rope_llama3);
    tcase_add_test(tc, test_init_slices);
    tcase_add_test(tc, test_graphs);
    tcase_add_test(tc, test_bad_config);
    suite_add_tcase(s, tc);
    SRunner *sr = srunner_create(s);
    srunner_run_all(sr, CK_NORMAL);
    int failed = srunner_ntests_failed(sr);
    srunner_free(sr);
    return failed ? EXIT_FAILURE : EXIT_SUCCESS;
}
