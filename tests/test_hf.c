/* Hugging Face folders: config.json in both rope layouts, export and import
 * of a tiny model (identical weights), every mismatch refused by name, and
 * model.from_pretrained merged with the YAML config. */
#include <check.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "config.h"
#include "io/hf.h"
#include "model/model.h"
#include "io/safetensors.h"
#include "testutil.h"

static char dir[256];

static void setup(void) { ck_assert_ptr_nonnull(test_mkdtemp(dir, sizeof dir, "hf-test")); }

static void teardown(void) { ck_assert_int_eq(test_rmtree(dir), 0); }

static void write_file(const char *name, const char *text) {
    char path[400];
    snprintf(path, sizeof path, "%s/%s", dir, name);
    FILE *f = fopen(path, "w");
    ck_assert_ptr_nonnull(f);
    fputs(text, f);
    fclose(f);
}

/* Llama 3.2 1B as released (transformers 4 layout) and as transformers 5 writes it. */
static const char *cfg_rope_scaling =
    "{\"architectures\": [\"LlamaForCausalLM\"], \"attention_bias\": false, \"attention_dropout\": 0.0,"
    " \"bos_token_id\": 128000, \"eos_token_id\": 128001, \"head_dim\": 64, \"hidden_act\": \"silu\","
    " \"hidden_size\": 2048, \"initializer_range\": 0.02, \"intermediate_size\": 8192,"
    " \"max_position_embeddings\": 131072, \"mlp_bias\": false, \"model_type\": \"llama\","
    " \"num_attention_heads\": 32, \"num_hidden_layers\": 16, \"num_key_value_heads\": 8, \"pretraining_tp\": 1,"
    " \"rms_norm_eps\": 1e-05, \"rope_scaling\": {\"factor\": 32.0, \"high_freq_factor\": 4.0,"
    " \"low_freq_factor\": 1.0, \"original_max_position_embeddings\": 8192, \"rope_type\": \"llama3\"},"
    " \"rope_theta\": 500000.0, \"tie_word_embeddings\": true, \"torch_dtype\": \"bfloat16\","
    " \"transformers_version\": \"4.45.0.dev0\", \"use_cache\": true, \"vocab_size\": 128256}";
static const char *cfg_rope_parameters =
    "{\n  \"architectures\": [\"LlamaForCausalLM\"],\n  \"dtype\": \"bfloat16\",\n  \"head_dim\": 64,\n"
    "  \"hidden_size\": 2048,\n  \"intermediate_size\": 8192,\n  \"max_position_embeddings\": 131072,\n"
    "  \"model_type\": \"llama\",\n  \"num_attention_heads\": 32,\n  \"num_hidden_layers\": 16,\n"
    "  \"num_key_value_heads\": 8,\n  \"rms_norm_eps\": 1e-05,\n  \"rope_parameters\": {\n"
    "    \"factor\": 32.0, \"high_freq_factor\": 4.0, \"low_freq_factor\": 1.0,\n"
    "    \"original_max_position_embeddings\": 8192, \"rope_theta\": 500000.0, \"rope_type\": \"llama3\"\n  },\n"
    "  \"tie_word_embeddings\": true,\n  \"transformers_version\": \"5.0.0\",\n  \"vocab_size\": 128256\n}\n";

static void read_cfg(const char *json, model_config_t *c) {
    write_file("config.json", json);
    config_t def;
    config_defaults(&def);
    *c = def.model;
    char err[2048];
    ck_assert_msg(hf_read_config(dir, c, err, sizeof err) == 0, "%s", err);
}

START_TEST(test_config_layouts) {
    model_config_t a, b;
    read_cfg(cfg_rope_scaling, &a);
    read_cfg(cfg_rope_parameters, &b);
    ck_assert_int_eq(a.hidden_size, 2048);
    ck_assert_int_eq(a.intermediate_size, 8192);
    ck_assert_int_eq(a.num_hidden_layers, 16);
    ck_assert_int_eq(a.num_attention_heads, 32);
    ck_assert_int_eq(a.num_key_value_heads, 8);
    ck_assert_int_eq(a.head_dim, 64);
    ck_assert_int_eq(a.vocab_size, 128256);
    ck_assert_int_eq(a.max_position_embeddings, 131072);
    ck_assert_double_eq(a.rms_norm_eps, 1e-5);
    ck_assert_double_eq(a.rope_theta, 500000.0);
    ck_assert_int_eq(a.rope_scaling.enabled, 1);
    ck_assert_double_eq(a.rope_scaling.factor, 32.0);
    ck_assert_double_eq(a.rope_scaling.low_freq_factor, 1.0);
    ck_assert_double_eq(a.rope_scaling.high_freq_factor, 4.0);
    ck_assert_int_eq(a.rope_scaling.original_max_position_embeddings, 8192);
    ck_assert_int_eq(a.tie_word_embeddings, 1);
    ck_assert_str_eq(a.architecture, "llama");
    ck_assert_int_eq(memcmp(&a, &b, sizeof a), 0);   /* both layouts: the same model */

    /* plain RoPE in each layout; transformers' defaults for absent keys */
    model_config_t c, d;
    read_cfg("{\"model_type\": \"llama\", \"hidden_size\": 64, \"num_attention_heads\": 4, \"rope_theta\": 10000.0,"
             " \"rope_scaling\": null}", &c);
    read_cfg("{\"model_type\": \"llama\", \"hidden_size\": 64, \"num_attention_heads\": 4,"
             " \"rope_parameters\": {\"rope_type\": \"default\", \"rope_theta\": 10000.0}}", &d);
    ck_assert_int_eq(memcmp(&c, &d, sizeof c), 0);
    ck_assert_int_eq(c.rope_scaling.enabled, 0);
    ck_assert_int_eq(c.head_dim, 16);
    ck_assert_int_eq(c.num_key_value_heads, 4);
    ck_assert_int_eq(c.vocab_size, 32000);
    ck_assert_int_eq(c.tie_word_embeddings, 0);
    ck_assert_double_eq(c.rms_norm_eps, 1e-6);
    /* the older "type" spelling of rope_type */
    read_cfg("{\"model_type\": \"llama\", \"rope_scaling\": {\"type\": \"llama3\", \"factor\": 8.0,"
             " \"low_freq_factor\": 1.0, \"high_freq_factor\": 4.0, \"original_max_position_embeddings\": 8192}}", &c);
    ck_assert_double_eq(c.rope_scaling.factor, 8.0);
    /* a key given twice: the last value, as transformers (Python's json) reads it */
    read_cfg("{\"model_type\": \"llama\", \"hidden_size\": 32, \"num_attention_heads\": 4, \"hidden_size\": 64}", &c);
    ck_assert_int_eq(c.hidden_size, 64);
    ck_assert_int_eq(c.head_dim, 16);
}
END_TEST

static void expect_cfg_error(const char *json, const char *want) {
    write_file("config.json", json);
    config_t def;
    config_defaults(&def);
    char err[2048] = "";
    ck_assert_msg(hf_read_config(dir, &def.model, err, sizeof err) == -1, "accepted: %s", json);
    ck_assert_msg(strstr(err, want) != NULL, "message '%s' lacks '%s'", err, want);
    ck_assert_msg(strstr(err, "config.json") != NULL, "message '%s' does not name the file", err);
}

START_TEST(test_config_refusals) {
    /* strict JSON: what Python's json module refuses is refused */
    expect_cfg_error("{\"model_type\": 'llama'}", "no single quotes");
    expect_cfg_error("{\"model_type\": \"llama\", // comment\n \"hidden_size\": 64}", "expected a key");
    expect_cfg_error("{\"model_type\": \"llama\", \"hidden_size\": &h 64, \"intermediate_size\": *h}", "anchors");
    expect_cfg_error("{\"model_type\": \"llama\", \"hidden_size\": 64,}", "trailing comma");
    expect_cfg_error("{\"model_type\": \"llama\", \"hidden_size\": NaN}", "expected a value");
    /* nested 100,000 deep: refused at once, not after a minute and a half */
    char *deep = test_nested("{\"model_type\": \"llama\", \"x\": ", 100000, "}");
    double t0 = test_now();
    expect_cfg_error(deep, "nested deeper than 64 levels");
    ck_assert_msg(test_now() - t0 < 0.5, "took %.2f s", test_now() - t0);
    free(deep);
    expect_cfg_error("{\"model_type\": \"mistral\"}", "model_type is \"mistral\"");
    expect_cfg_error("{\"hidden_size\": 64}", "model_type is missing");
    expect_cfg_error("{\"model_type\": \"llama\", \"attention_bias\": true}", "attention_bias is true");
    expect_cfg_error("{\"model_type\": \"llama\", \"mlp_bias\": true}", "mlp_bias is true");
    expect_cfg_error("{\"model_type\": \"llama\", \"hidden_act\": \"gelu\"}", "hidden_act is \"gelu\"");
    expect_cfg_error("{\"model_type\": \"llama\", \"rope_scaling\": {\"rope_type\": \"yarn\", \"factor\": 4.0}}",
                     "rope_scaling.rope_type 'yarn' is not supported");
    expect_cfg_error("{\"model_type\": \"llama\", \"rope_parameters\": {\"rope_type\": \"llama3\", \"factor\": 8.0}}",
                     "needs 'low_freq_factor'");
    /* a rope_scaling without a type, or whose type contradicts its fields */
    expect_cfg_error("{\"model_type\": \"llama\", \"rope_scaling\": {\"factor\": 8.0, \"low_freq_factor\": 1.0, "
                     "\"high_freq_factor\": 4.0, \"original_max_position_embeddings\": 8192}}",
                     "rope_scaling has 'factor' but no rope_type (or type)");
    expect_cfg_error("{\"model_type\": \"llama\", \"rope_scaling\": {\"rope_type\": \"default\", \"factor\": 8.0}}",
                     "rope_type default (no scaling) contradicts its 'factor'");
    expect_cfg_error("{\"model_type\": \"llama\", \"rope_scaling\": {\"rope_type\": \"llama3\", \"type\": \"default\", "
                     "\"factor\": 8.0, \"low_freq_factor\": 1.0, \"high_freq_factor\": 4.0, "
                     "\"original_max_position_embeddings\": 8192}}", "rope_type 'llama3' and type 'default' contradict");
    expect_cfg_error("{\"model_type\": \"llama\", \"rope_parameters\": {\"rope_theta\": 10000.0, \"factor\": 2.0}}",
                     "rope_parameters has 'factor' but no rope_type");
    expect_cfg_error("{\"model_type\": \"llama\", \"rope_theta\": 10000.0, \"rope_parameters\": "
                     "{\"rope_type\": \"default\", \"rope_theta\": 500000.0}}", "disagree");
    expect_cfg_error("{\"model_type\": \"llama\", \"hidden_size\": \"64\"}", "hidden_size: expected an integer");
    expect_cfg_error("{\"model_type\": \"llama\", \"hidden_size\": 0}", "hidden_size: expected an integer >= 1");
    expect_cfg_error("{\"model_type\": \"llama\", \"tie_word_embeddings\": 1}", "expected true or false");
    expect_cfg_error("{\"model_type\": \"llama\", \"hidden_size\": 60, \"num_attention_heads\": 8}", "add head_dim");
    expect_cfg_error("{\"model_type\": \"llama\",", "malformed JSON");
    expect_cfg_error("[]", "expected a JSON object");
}
END_TEST

/* The tiny model of the defaults (optionally untied, with llama3 rope). */
static void tiny(model_t *m, int tied, int rope) {
    config_t cfg;
    config_defaults(&cfg);
    cfg.model.num_hidden_layers = 2;
    cfg.model.tie_word_embeddings = tied;
    cfg.model.rope_scaling.enabled = rope;
    char err[1024];
    ck_assert_msg(model_build(m, &cfg.model, err, sizeof err) == 0, "%s", err);
}

static float *random_weights(const model_t *m, uint64_t seed) {
    float *w = malloc(m->n_params * sizeof(float));
    trng_t r = {seed};
    trng_fill(&r, w, m->n_params, 0.1);
    return w;
}

START_TEST(test_export_import) {
    for (int tied = 0; tied < 2; tied++)
        for (int bf16 = 0; bf16 < 2; bf16++) {
            model_t m;
            tiny(&m, tied, !tied);
            float *w = random_weights(&m, 5 + (uint64_t)tied), *back = calloc(m.n_params, sizeof(float));
            char out[400], err[2048];
            snprintf(out, sizeof out, "%s/export-%d-%d/hf", dir, tied, bf16);
            ck_assert_msg(hf_export(out, &m, w, bf16 ? ST_BF16 : ST_F32, err, sizeof err) == 0, "%s", err);
            /* config.json reads back as the same model */
            config_t def;
            config_defaults(&def);
            model_config_t c = def.model;
            ck_assert_msg(hf_read_config(out, &c, err, sizeof err) == 0, "%s", err);
            ck_assert_int_eq(memcmp(&c, &m.cfg, sizeof c), 0);
            ck_assert_msg(hf_load_weights(out, &m, back, err, sizeof err) == 0, "%s", err);
            for (size_t i = 0; i < m.n_params; i++) {
                float want = bf16 ? st_bf16_to_f32(st_f32_to_bf16(w[i])) : w[i];
                ck_assert_msg(back[i] == want, "element %zu: %g vs %g", i, back[i], want);
            }
            /* tensors in parameter-table order in the file */
            st_file_t f;
            snprintf(out + strlen(out), sizeof out - strlen(out), "/model.safetensors");
            ck_assert_msg(st_open(&f, out, err, sizeof err) == 0, "%s", err);
            ck_assert_int_eq(f.ntensors, m.nparams);
            for (int i = 1; i < m.nparams; i++)
                ck_assert(st_find(&f, m.params[i].name)->begin > st_find(&f, m.params[i - 1].name)->begin);
            st_close(&f);
            free(w);
            free(back);
            model_free(&m);
        }
}
END_TEST

/* A folder with both model.safetensors and a sharded index loads the single
 * file, as transformers does (modeling_utils checks it first). */
START_TEST(test_single_before_index) {
    model_t m;
    tiny(&m, 0, 1);
    float *a = random_weights(&m, 21), *b = random_weights(&m, 22), *back = calloc(m.n_params, sizeof(float));
    char one[400], two[400], path[600], err[2048];
    snprintf(one, sizeof one, "%s/both", dir);
    snprintf(two, sizeof two, "%s/other", dir);
    ck_assert_msg(hf_export(one, &m, a, ST_F32, err, sizeof err) == 0, "%s", err);
    ck_assert_msg(hf_export(two, &m, b, ST_F32, err, sizeof err) == 0, "%s", err);
    /* the index names a shard holding the other weights */
    char from[600];
    snprintf(from, sizeof from, "%s/model.safetensors", two);
    snprintf(path, sizeof path, "%s/model-00001-of-00001.safetensors", one);
    ck_assert_int_eq(rename(from, path), 0);
    snprintf(path, sizeof path, "%s/model.safetensors.index.json", one);
    FILE *f = fopen(path, "w");
    ck_assert_ptr_nonnull(f);
    fprintf(f, "{\"metadata\": {}, \"weight_map\": {");
    for (int i = 0; i < m.nparams; i++)
        fprintf(f, "%s\"%s\": \"model-00001-of-00001.safetensors\"", i ? ", " : "", m.params[i].name);
    fprintf(f, "}}\n");
    ck_assert_int_eq(fclose(f), 0);
    ck_assert_msg(hf_load_weights(one, &m, back, err, sizeof err) == 0, "%s", err);
    for (size_t i = 0; i < m.n_params; i++) ck_assert_msg(back[i] == a[i], "element %zu is not the single file's", i);
    /* without the single file, the index */
    snprintf(path, sizeof path, "%s/model.safetensors", one);
    ck_assert_int_eq(unlink(path), 0);
    ck_assert_msg(hf_load_weights(one, &m, back, err, sizeof err) == 0, "%s", err);
    for (size_t i = 0; i < m.n_params; i++) ck_assert_msg(back[i] == b[i], "element %zu is not the shard's", i);
    free(a);
    free(b);
    free(back);
    model_free(&m);
}
END_TEST

/* Write the model's tensors with one change, and expect `want` on loading. */
typedef enum { DROP, EXTRA, RESHAPE, HEAD_SAME, HEAD_DIFF, NAN_AT, INF_AT } change_t;

static void try_change(int tied, change_t ch, int which, int expect_ok, const char *want) {
    model_t m;
    tiny(&m, tied, 0);
    float *w = random_weights(&m, 11), *back = calloc(m.n_params, sizeof(float));
    if (ch == NAN_AT) w[m.params[which].offset + 5] = NAN;
    if (ch == INF_AT) w[m.params[which].offset] = -INFINITY;
    float *head = malloc((size_t)(m.V * m.d) * sizeof(float));
    st_write_tensor_t *t = calloc((size_t)m.nparams + 1, sizeof *t);
    int n = 0;
    for (int i = 0; i < m.nparams; i++) {
        const param_t *p = &m.params[i];
        if (ch == DROP && i == which) continue;
        t[n] = (st_write_tensor_t){p->name, p->ndim, {p->shape[0], p->shape[1]}, w + p->offset};
        if (ch == RESHAPE && i == which) t[n].shape[0]--;
        n++;
    }
    memcpy(head, w, (size_t)(m.V * m.d) * sizeof(float));
    if (ch == HEAD_DIFF) head[3] += 1.0f;
    if (ch == EXTRA) t[n++] = (st_write_tensor_t){"model.layers.0.self_attn.q_proj.bias", 1, {m.d}, w};
    if (ch == HEAD_SAME || ch == HEAD_DIFF) t[n++] = (st_write_tensor_t){"lm_head.weight", 2, {m.V, m.d}, head};
    char path[400], err[2048] = "";
    snprintf(path, sizeof path, "%s/model.safetensors", dir);
    ck_assert_msg(st_write(path, t, n, ST_F32, err, sizeof err) == 0, "%s", err);
    int rc = hf_load_weights(dir, &m, back, err, sizeof err);
    if (expect_ok) {
        ck_assert_msg(rc == 0, "refused: %s", err);
        ck_assert_int_eq(memcmp(back, w, m.n_params * sizeof(float)), 0);
    } else {
        ck_assert_msg(rc == -1, "accepted a checkpoint with a %d change", (int)ch);
        ck_assert_msg(strstr(err, want) != NULL, "message '%s' lacks '%s'", err, want);
    }
    free(t);
    free(head);
    free(w);
    free(back);
    model_free(&m);
}

START_TEST(test_mismatches) {
    try_change(1, DROP, 4, 0, "tensor 'model.layers.0.self_attn.v_proj.weight' (shape [32, 64]) is missing");
    try_change(0, DROP, 20, 0, "tensor 'lm_head.weight' (shape [256, 64]) is missing");
    try_change(1, EXTRA, 0, 0, "tensor 'model.layers.0.self_attn.q_proj.bias' (shape [64]) is not a parameter");
    try_change(1, RESHAPE, 7, 0, "tensor 'model.layers.0.mlp.gate_proj.weight' has shape [191, 64], but config.json "
                                 "makes it [192, 64]");
    try_change(1, HEAD_SAME, 0, 1, NULL);   /* tied, lm_head saved as a copy: fine */
    try_change(1, HEAD_DIFF, 0, 0, "tie_word_embeddings true");
    try_change(1, NAN_AT, 4, 0, "tensor 'model.layers.0.self_attn.v_proj.weight' holds NaN at element 5");
    try_change(0, INF_AT, 20, 0, "tensor 'lm_head.weight' holds -Inf at element 0");
}
END_TEST

START_TEST(test_from_pretrained) {
    model_t m;
    tiny(&m, 1, 1);
    float *w = random_weights(&m, 3);
    char out[400], err[2048], yaml[400];
    snprintf(out, sizeof out, "%s/pre", dir);
    ck_assert(hf_export(out, &m, w, ST_F32, err, sizeof err) == 0);
    /* agreeing keys and a relative path */
    write_file("a.yaml", "model:\n  from_pretrained: pre\n  hidden_size: 64\n  num_hidden_layers: 2\n");
    snprintf(yaml, sizeof yaml, "%s/a.yaml", dir);
    config_t cfg;
    ck_assert_msg(config_load(&cfg, yaml, NULL, 0, err, sizeof err) == 0, "%s", err);
    ck_assert_msg(hf_apply_pretrained(&cfg, NULL, 0, err, sizeof err) == 0, "%s", err);
    ck_assert_int_eq(cfg.model.num_hidden_layers, 2);
    ck_assert_int_eq(cfg.model.rope_scaling.enabled, 1);
    ck_assert_str_eq(cfg.model.from_pretrained, out);   /* stored absolute */
    /* a key that disagrees, in the file and by --set */
    write_file("b.yaml", "model:\n  from_pretrained: pre\n  num_hidden_layers: 4\n");
    snprintf(yaml, sizeof yaml, "%s/b.yaml", dir);
    ck_assert(config_load(&cfg, yaml, NULL, 0, err, sizeof err) == 0);
    ck_assert_int_eq(hf_apply_pretrained(&cfg, NULL, 0, err, sizeof err), -1);
    ck_assert_msg(strstr(err, "b.yaml:3:22: model.num_hidden_layers is 4 here but 2 in") != NULL, "%s", err);
    char *sets[] = {"model.rope_scaling=null"};
    snprintf(yaml, sizeof yaml, "%s/a.yaml", dir);
    ck_assert(config_load(&cfg, yaml, sets, 1, err, sizeof err) == 0);
    ck_assert_int_eq(hf_apply_pretrained(&cfg, sets, 1, err, sizeof err), -1);
    ck_assert_msg(strstr(err, "--set model.rope_scaling=null: model.rope_scaling is null (plain RoPE) here but "
                              "llama3") != NULL, "%s", err);
    /* a folder without config.json */
    write_file("c.yaml", "model:\n  from_pretrained: nowhere\n");
    snprintf(yaml, sizeof yaml, "%s/c.yaml", dir);
    ck_assert(config_load(&cfg, yaml, NULL, 0, err, sizeof err) == 0);
    ck_assert_int_eq(hf_apply_pretrained(&cfg, NULL, 0, err, sizeof err), -1);
    ck_assert_msg(strstr(err, "nowhere/config.json: cannot open") != NULL, "%s", err);
    free(w);
    model_free(&m);
}
END_TEST

int main(void) {
    Suite *s = suite_create("hf");
    TCase *tc = tcase_create("core");
    tcase_set_timeout(tc, 60);  /* writes and reads model folders: slow on a loaded machine */
    tcase_add_checked_fixture(tc, setup, teardown);
    tcase_add_test(tc, test_config_layouts);
    tcase_add_test(tc, test_config_refusals);
    tcase_add_test(tc, test_export_import);
    tcase_add_test(tc, test_single_before_index);
    tcase_add_test(tc, test_mismatches);
    tcase_add_test(tc, test_from_pretrained);
    suite_add_tcase(s, tc);
    SRunner *sr = srunner_create(s);
    srunner_run_all(sr, CK_NORMAL);
    int failed = srunner_ntests_failed(sr);
    srunner_free(sr);
    return failed ? 1 : 0;
}
