/* Config loader: defaults, the shipped configs, bad inputs and their messages,
 * --set overrides, the YAML writer (round trip) and path resolution. */
#include <check.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "config.h"
#include "testutil.h"

static char tmpdir[256];

static void make_tmpdir(void) { ck_assert_ptr_nonnull(test_mkdtemp(tmpdir, sizeof tmpdir, "test_config")); }

/* every test file goes through write_fixture or config_write_yaml into tmpdir */
static void remove_tmpdir(void) { ck_assert_int_eq(test_rmtree(tmpdir), 0); }

static void write_fixture(const char *name, const char *text, char *path, size_t len) {
    snprintf(path, len, "%s/%s", tmpdir, name);
    FILE *f = fopen(path, "w");
    ck_assert_ptr_nonnull(f);
    fputs(text, f);
    ck_assert_int_eq(fclose(f), 0);
}

static const char *srcdir(void) {
    const char *s = getenv("top_srcdir");
    return s && *s ? s : ".";
}

static int64_t llama_params(const model_config_t *m) {
    int64_t d = m->hidden_size, hd = m->head_dim;
    int64_t layer = 2 * d + d * (m->num_attention_heads + 2 * m->num_key_value_heads) * hd +
                    m->num_attention_heads * hd * d + 3 * d * m->intermediate_size;
    int64_t embed = m->vocab_size * d;
    return embed + (m->tie_word_embeddings ? 0 : embed) + m->num_hidden_layers * layer + d;
}

/* ------------------------------------------------------------------ defaults */

START_TEST(test_defaults_valid) {
    config_t c;
    char err[1024];
    config_defaults(&c);
    ck_assert_int_eq(config_validate(&c, err, sizeof err), 0);
    ck_assert_str_eq(c.model.architecture, "llama");
    ck_assert_int_eq(c.model.hidden_size, 64);
    ck_assert_int_eq(c.model.intermediate_size, 192);
    ck_assert_int_eq(c.model.num_hidden_layers, 4);
    ck_assert_int_eq(c.model.num_attention_heads, 4);
    ck_assert_int_eq(c.model.num_key_value_heads, 2);
    ck_assert_int_eq(c.model.head_dim, 16);
    ck_assert_int_eq(c.model.vocab_size, 256);
    ck_assert_int_eq(c.model.rope_scaling.enabled, 0);
    ck_assert_int_eq(c.model.tie_word_embeddings, 1);
    ck_assert_int_eq(c.train.seq_len, 128);
    ck_assert_int_eq(c.train.global_batch_size, 8);
    ck_assert_int_eq(c.train.steps, 300);
    ck_assert_double_eq(c.train.lr, 3e-3);
    ck_assert_double_eq(c.train.beta2, 0.95);
    ck_assert_uint_eq(c.train.seed, 1234);
    ck_assert_int_eq(c.train.device, DEVICE_AUTO);
    ck_assert_str_eq(c.data.path, "");
    ck_assert_int_eq(c.parallel.sequence_parallel_size, 0);
    ck_assert_int_eq(c.parallel.zero_stage, -1);   /* auto */
    ck_assert_int_eq(c.optimizer.offload, -1);     /* auto */
    ck_assert_int_eq(c.checkpointing.policy, SAC_AUTO);
    ck_assert_str_eq(c.io.run_dir, "runs/latest");
    ck_assert_str_eq(sac_policy_name(SAC_SAVE_ALL), "save_all");
    ck_assert_str_eq(device_kind_name(DEVICE_CUDA), "cuda");

    /* configs built in code go through the same checks */
    c.model.hidden_size = 0;
    ck_assert_int_eq(config_validate(&c, err, sizeof err), -1);
    ck_assert_str_eq(err, "model.hidden_size: expected a positive integer, got '0'");
    config_defaults(&c);
    c.model.num_key_value_heads = 3;
    ck_assert_int_eq(config_validate(&c, err, sizeof err), -1);
    ck_assert_ptr_nonnull(strstr(err, "model.num_attention_heads (4) must be divisible by model.num_key_value_heads (3)"));
    config_defaults(&c);
    c.train.beta1 = 1.0;
    ck_assert_int_eq(config_validate(&c, err, sizeof err), -1);
    ck_assert_ptr_nonnull(strstr(err, "train.beta1: expected a number in [0.0, 1.0), got '1.0'"));
}
END_TEST

START_TEST(test_minimal_config_gets_defaults) {
    char path[512], err[1024];
    config_t c, d;
    make_tmpdir();
    write_fixture("small.yaml", "train:\n  steps: 5\n", path, sizeof path);
    ck_assert_msg(config_load(&c, path, NULL, 0, err, sizeof err) == 0, "%s", err);
    config_defaults(&d);
    ck_assert_int_eq(c.train.steps, 5);
    ck_assert_mem_eq(&c.model, &d.model, sizeof d.model);
    ck_assert_str_eq(c.base_dir, tmpdir);
    ck_assert_str_eq(c.source, path);

    /* head_dim and num_key_value_heads follow the Hugging Face defaults */
    write_fixture("hf.yaml", "model:\n  hidden_size: 256\n  num_attention_heads: 8\n", path, sizeof path);
    ck_assert_msg(config_load(&c, path, NULL, 0, err, sizeof err) == 0, "%s", err);
    ck_assert_int_eq(c.model.head_dim, 32);
    ck_assert_int_eq(c.model.num_key_value_heads, 8);

    /* an empty section keeps the defaults */
    write_fixture("empty_section.yaml", "model:\ntrain:\n  seed: 7\n", path, sizeof path);
    ck_assert_msg(config_load(&c, path, NULL, 0, err, sizeof err) == 0, "%s", err);
    ck_assert_uint_eq(c.train.seed, 7);
    ck_assert_int_eq(c.model.hidden_size, 64);

    /* number forms */
    write_fixture("nums.yaml", "train:\n  lr: 1\n  min_lr: 3e-5\n  seed: 18446744073709551615\n"
                  "model:\n  rope_theta: 500000.0\n", path, sizeof path);
    ck_assert_msg(config_load(&c, path, NULL, 0, err, sizeof err) == 0, "%s", err);
    ck_assert_double_eq(c.train.lr, 1.0);
    ck_assert_double_eq(c.train.min_lr, 3e-5);
    ck_assert_uint_eq(c.train.seed, UINT64_MAX);
    ck_assert_double_eq(c.model.rope_theta, 500000.0);
    remove_tmpdir();
}
END_TEST

/* ------------------------------------------------------------------ shipped configs */

typedef struct {
    const char *file;
    int64_t d, f, layers, heads, kv, hd, seq;
    double factor;
    int tie;
    int64_t params;
} shipped_t;

static const shipped_t shipped[] = {
    {"llama32_1b.yaml", 2048, 8192, 16, 32, 8, 64, 65536, 32.0, 1, 1235814400LL},
    {"llama32_3b.yaml", 3072, 8192, 28, 24, 8, 128, 65536, 32.0, 1, 3212749824LL},
    {"llama31_8b.yaml", 4096, 14336, 32, 32, 8, 128, 131072, 8.0, 0, 8030261248LL},
    {"llama31_70b.yaml", 8192, 28672, 80, 64, 8, 128, 131072, 8.0, 0, 70553706496LL},
};

START_TEST(test_shipped_llama) {
    const shipped_t *s = &shipped[_i];
    char path[1024], err[1024], data[CFG_PATH_MAX];
    config_t c;
    snprintf(path, sizeof path, "%s/configs/%s", srcdir(), s->file);
    ck_assert_msg(config_load(&c, path, NULL, 0, err, sizeof err) == 0, "%s", err);
    const model_config_t *m = &c.model;
    ck_assert_int_eq(m->hidden_size, s->d);
    ck_assert_int_eq(m->intermediate_size, s->f);
    ck_assert_int_eq(m->num_hidden_layers, s->layers);
    ck_assert_int_eq(m->num_attention_heads, s->heads);
    ck_assert_int_eq(m->num_key_value_heads, s->kv);
    ck_assert_int_eq(m->head_dim, s->hd);
    ck_assert_int_eq(m->vocab_size, 128256);
    ck_assert_int_eq(m->max_position_embeddings, 131072);
    ck_assert_double_eq(m->rms_norm_eps, 1e-5);
    ck_assert_double_eq(m->rope_theta, 500000.0);
    ck_assert_int_eq(m->rope_scaling.enabled, 1);
    ck_assert_double_eq(m->rope_scaling.factor, s->factor);
    ck_assert_double_eq(m->rope_scaling.low_freq_factor, 1.0);
    ck_assert_double_eq(m->rope_scaling.high_freq_factor, 4.0);
    ck_assert_int_eq(m->rope_scaling.original_max_position_embeddings, 8192);
    ck_assert_int_eq(m->tie_word_embeddings, s->tie);
    ck_assert_int_eq(llama_params(m), s->params);
    ck_assert_int_eq(c.train.seq_len, s->seq);
    ck_assert_int_eq(c.train.global_batch_size, 1);
    ck_assert_int_eq(c.train.steps, 1000);
    ck_assert_int_eq(c.train.warmup_steps, 100);
    ck_assert_double_eq(c.train.lr, 3e-4);
    ck_assert_double_eq(c.train.min_lr, 3e-5);
    ck_assert_str_eq(c.data.path, "../data/english.tok");
    ck_assert_int_eq(config_resolve_path(&c, c.data.path, data, sizeof data), 0);
    char want[1100];
    snprintf(want, sizeof want, "%s/configs/../data/english.tok", srcdir());
    if (!strcmp(srcdir(), ".")) snprintf(want, sizeof want, "./configs/../data/english.tok");
    ck_assert_str_eq(data, want);
}
END_TEST

START_TEST(test_shipped_tiny) {
    char path[1024], err[1024];
    config_t c, d;
    snprintf(path, sizeof path, "%s/configs/tiny.yaml", srcdir());
    ck_assert_msg(config_load(&c, path, NULL, 0, err, sizeof err) == 0, "%s", err);
    config_defaults(&d);
    /* tiny.yaml spells out the defaults; only the data files are added, and a
     * first run prints a screenful: a step line every 20 steps, the validation
     * loss every 50 */
    ck_assert_int_eq(c.io.log_every, 20);
    ck_assert_int_eq(c.train.eval_every, 50);
    c.io.log_every = d.io.log_every;
    c.train.eval_every = d.train.eval_every;
    ck_assert_mem_eq(&c.model, &d.model, sizeof d.model);
    ck_assert_mem_eq(&c.train, &d.train, sizeof d.train);
    ck_assert_mem_eq(&c.parallel, &d.parallel, sizeof d.parallel);
    ck_assert_mem_eq(&c.checkpointing, &d.checkpointing, sizeof d.checkpointing);
    ck_assert_mem_eq(&c.io, &d.io, sizeof d.io);
    ck_assert_str_eq(c.data.path, "../data/english.tok");
    ck_assert_str_eq(c.data.val_path, "../data/english_val.tok");
    ck_assert_int_eq(c.data.shuffle, 1);
}
END_TEST

/* ------------------------------------------------------------------ bad configs */

typedef struct {
    const char *yaml;   /* NULL: the file does not exist */
    const char *where;  /* expected text right after the file name: ":L:C: " or ": " */
    const char *text;   /* distinctive part of the message */
} bad_t;

static const bad_t bad[] = {
    {NULL, ": ", "cannot open the config file: No such file or directory"},
    {"", ": ", "the config file is empty; expected a mapping of sections"},
    {"# only a comment\n\n", ": ", "the config file is empty"},
    {"model:\n  hidden_size: [1, 2\n", ":3:1: ", "malformed YAML: did not find expected ',' or ']'"},
    {"model:\n hidden_size: 64\n  vocab_size: 2\n", ":3:13: ", "malformed YAML: mapping values are not allowed"},
    {"- model\n- train\n", ":1:1: ", "expected a mapping of sections (model:, train:, data:, parallel:, "
                                     "optimizer:, checkpointing:, io:) at the top level, got a sequence"},
    {"hello\n", ":1:1: ", "at the top level, got 'hello'"},
    {"modle:\n  hidden_size: 64\n", ":1:1: ", "unknown section 'modle'; did you mean 'model'?"},
    {"optimiser:\n  lr: 1\n", ":1:1: ", "unknown section 'optimiser'; did you mean 'optimizer'?"},
    {"optimizer:\n  lr: 1\n", ":2:3: ", "optimizer.lr: unknown key 'lr' in section optimizer; it is a key of "
                                        "section train, move it there"},
    {"optimizer:\n  offload: maybe\n", ":2:12: ", "optimizer.offload: expected true, false or auto, got 'maybe'"},
    {"model:\n  hiden_size: 64\n", ":2:3: ", "model.hiden_size: unknown key 'hiden_size' in section model; "
                                             "did you mean 'hidden_size'?"},
    {"train:\n  flux_capacitor: 1\n", ":2:3: ", "unknown key 'flux_capacitor' in section train; expected one "
                                                "of: seq_len, global_batch_size"},
    {"model:\n  hidden_size: 64\n  hidden_size: 128\n", ":3:3: ",
     "model.hidden_size: duplicate key (first given at line 2, column 3)"},
    {"train:\n  seed: 1\nmodel: {}\ntrain:\n  steps: 1\n", ":4:1: ", "train: duplicate key (first given at line 1, column 1)"},
    {"train:\n  seq_len: 1.5\n", ":2:12: ", "train.seq_len: expected a positive integer, got '1.5'"},
    {"train:\n  steps: abc\n", ":2:10: ", "train.steps: expected a positive integer, got 'abc'"},
    {"model:\n  num_hidden_layers: true\n", ":2:22: ", "model.num_hidden_layers: expected a positive integer, got 'true'"},
    {"model:\n  hidden_size: \"64\"\n", ":2:16: ", "model.hidden_size: expected a positive integer, got '\"64\"'"},
    {"model:\n  hidden_size: [64]\n", ":2:16: ", "model.hidden_size: expected a positive integer, got a sequence"},
    {"model:\n  hidden_size: 0\n", ":2:16: ", "model.hidden_size: expected a positive integer, got '0'"},
    {"model:\n  num_hidden_layers: -2\n", ":2:22: ", "expected a positive integer, got '-2'"},
    {"model:\n  hidden_size: 99999999999999999999\n", ":2:16: ", "expected an integer no larger than 1048576"},
    {"model:\n  vocab_size: 1\n", ":2:15: ", "model.vocab_size: expected an integer >= 2, got '1'"},
    {"train:\n  beta1: 1.0\n", ":2:10: ", "train.beta1: expected a number in [0.0, 1.0), got '1.0'"},
    {"train:\n  beta2: 1.5\n", ":2:10: ", "train.beta2: expected a number in [0.0, 1.0), got '1.5'"},
    {"train:\n  lr: -1e-3\n", ":2:7: ", "train.lr: expected a positive number, got '-1e-3'"},
    {"train:\n  eps: 0\n", ":2:8: ", "train.eps: expected a positive number, got '0'"},
    {"train:\n  weight_decay: .nan\n", ":2:17: ", "train.weight_decay: expected a non-negative number, got '.nan'"},
    {"train:\n  grad_clip: inf\n", ":2:14: ", "expected a non-negative number, got 'inf'"},
    {"parallel:\n  zero_stage: 4\n", ":2:15: ", "parallel.zero_stage: expected 0, 1, 2, 3 or auto, got '4'"},
    {"parallel:\n  sequence_parallel_size: 0\n", ":2:27: ", "expected a positive integer or auto, got '0'"},
    {"train:\n  device: gpu\n", ":2:11: ", "train.device: expected one of auto, cpu, cuda, got 'gpu'"},
    {"checkpointing:\n  policy: selective\n", ":2:11: ", "expected one of auto, save_all, full, got 'selective'"},
    {"checkpointing:\n  offload: yes\n", ":2:12: ", "checkpointing.offload: expected true or false, got 'yes'"},
    {"model:\n  architecture: gpt2\n", ":2:17: ", "model.architecture: expected llama (the supported model "
                                                 "families), got 'gpt2'"},
    {"train: 5\n", ":1:8: ", "train: expected a mapping of keys"},
    {"io:\n  - run_dir\n", ":2:3: ", "io: expected a mapping of keys (indented 'key: value' lines under 'io:'), "
                                     "got a sequence"},
    {"io:\n  run_dir: \"\"\n", ":2:12: ", "io.run_dir: expected a non-empty string, got '\"\"'"},
    {"model:\n  hidden_size: 65\n", ":2:16: ", "model.hidden_size (65) must be divisible by "
                                               "model.num_attention_heads (4) when model.head_dim is not given"},
    {"model:\n  hidden_size: 240\n  num_attention_heads: 24\n  num_key_value_heads: 5\n", ":4:24: ",
     "model.num_attention_heads (24) must be divisible by model.num_key_value_heads (5)"},
    {"model:\n  head_dim: 15\n", ":2:13: ", "model.head_dim: expected a positive even integer, got '15'"},
    {"model:\n  hidden_size: 60\n", ":2:16: ", "model.head_dim (hidden_size 60 / num_attention_heads 4 = 15) "
                                               "must be even"},
    {"model:\n  rope_scaling:\n    rope_type: linear\n    factor: 2.0\n", ":3:16: ",
     "model.rope_scaling.rope_type: expected llama3 (the only supported rope_type), got 'linear'"},
    {"model:\n  rope_scaling:\n    rope_type: llama3\n    low_freq_factor: 4\n    high_freq_factor: 4\n",
     ":5:23: ", "model.rope_scaling.low_freq_factor (4.0) must be smaller than "
                "model.rope_scaling.high_freq_factor (4.0)"},
    {"model:\n  rope_scaling:\n    factor: 8\n", ":3:5: ", "model.rope_scaling: missing key rope_type"},
    {"model:\n  rope_scaling:\n    rope_type: llama3\n    facter: 8\n", ":4:5: ",
     "model.rope_scaling: unknown key 'rope_scaling.facter' in section model; did you mean 'factor'?"},
    {"model:\n  rope_scaling: yes\n", ":2:17: ", "model.rope_scaling: expected a mapping (rope_type: llama3"},
    {"model:\n  rope_scaling:\n    rope_type: llama3\n    factor: 0.5\n", ":4:13: ",
     "model.rope_scaling.factor: expected a number >= 1.0, got '0.5'"},
    {"train:\n  lr: 1e-4\n  min_lr: 1e-3\n", ":3:11: ", "train.min_lr (0.001) must not exceed train.lr (0.0001)"},
    {"train:\n  steps: 3\n---\ntrain:\n  steps: 4\n", ":3:1: ", "expected one YAML document, found a second one"},
    {"model:\n  lr: 1e-3\n", ":2:3: ", "model.lr: unknown key 'lr' in section model; it is a key of section "
                                      "train, move it there"},
    {"model:\n  hidden.size: 64\n", ":2:3: ", "unknown key 'hidden.size' in section model"},
    {"train:\n  seed: -1\n", ":2:9: ", "train.seed: expected a non-negative integer below 2^64, got '-1'"},
    {"model:\n  ? [a, b]\n  : 1\n", ":2:5: ", "model: expected a key name, got a sequence"},
    /* YAML the loader would misread */
    {"model:\n  hidden_size: !!str 32\n", ":2:16: ", "YAML tag 'tag:yaml.org,2002:str' is not read here"},
    {"model:\n  hidden_size: !foo 32\n", ":2:16: ", "YAML tag '!foo'"},
    {"model: !!map\n  hidden_size: 32\n", ":1:8: ", "YAML tag"},
    {"data:\n  path: \"tok\\0rest\"\n", ":2:9: ", "a value holds a NUL character"},
    {"model: &m\n  hidden_size: 32\ntrain: *m\n", ":1:8: ", "YAML anchors and aliases"},
    {"model:\n  hidden_size: 32\n  x: [[[[[[[[[[[[[[[[[[1]]]]]]]]]]]]]]]]]]\n", ":3:", "nested deeper than 16 levels"},
};

START_TEST(test_bad_config) {
    const bad_t *b = &bad[_i];
    char path[512], err[2048], want[1024];
    config_t c;
    make_tmpdir();
    if (b->yaml) write_fixture("bad.yaml", b->yaml, path, sizeof path);
    else snprintf(path, sizeof path, "%s/missing.yaml", tmpdir);
    memset(err, 0, sizeof err);
    ck_assert_int_eq(config_load(&c, path, NULL, 0, err, sizeof err), -1);
    snprintf(want, sizeof want, "%s%s", path, b->where);
    ck_assert_msg(!strncmp(err, want, strlen(want)), "case %d: message '%s' does not start with '%s'", _i, err, want);
    ck_assert_msg(strstr(err, b->text) != NULL, "case %d: message '%s' lacks '%s'", _i, err, b->text);
    ck_assert_msg(!strchr(err, '\n'), "case %d: message spans lines: '%s'", _i, err);
    remove_tmpdir();
}
END_TEST

START_TEST(test_error_truncates_safely) {
    char path[512], err[24];
    config_t c;
    make_tmpdir();
    write_fixture("bad.yaml", "model:\n  hidden_size: 0\n", path, sizeof path);
    ck_assert_int_eq(config_load(&c, path, NULL, 0, err, sizeof err), -1);
    ck_assert_int_eq(strlen(err), sizeof err - 1);
    ck_assert_int_eq(config_load(&c, path, NULL, 0, NULL, 0), -1);
    char msg[256];
    ck_assert_int_eq(config_load(&c, "", NULL, 0, msg, sizeof msg), -1);
    ck_assert_ptr_nonnull(strstr(msg, "the config file name is empty"));
    remove_tmpdir();
}
END_TEST

/* ------------------------------------------------------------------ --set */

START_TEST(test_set_good) {
    char path[1024], err[1024];
    config_t c;
    snprintf(path, sizeof path, "%s/configs/tiny.yaml", srcdir());
    char *sets[] = {"train.lr=1e-4", "model.hidden_size=128", "parallel.sequence_parallel_size=4",
                    "model.rope_scaling.factor=32", "checkpointing.policy=full", "data.path='my data.tok'",
                    "train.device=cpu", "data.shuffle=false", "train.min_lr=0", "io.run_dir=runs/x=1"};
    ck_assert_msg(config_load(&c, path, sets, 10, err, sizeof err) == 0, "%s", err);
    ck_assert_double_eq(c.train.lr, 1e-4);
    ck_assert_int_eq(c.model.hidden_size, 128);
    ck_assert_int_eq(c.model.head_dim, 16);   /* given in tiny.yaml, so not re-derived */
    ck_assert_int_eq(c.parallel.sequence_parallel_size, 4);
    ck_assert_int_eq(c.model.rope_scaling.enabled, 1);   /* switched on with the llama3 defaults */
    ck_assert_double_eq(c.model.rope_scaling.factor, 32.0);
    ck_assert_double_eq(c.model.rope_scaling.high_freq_factor, 4.0);
    ck_assert_int_eq(c.model.rope_scaling.original_max_position_embeddings, 8192);
    ck_assert_int_eq(c.checkpointing.policy, SAC_FULL);
    char cwd[600], want[700];   /* a path given by --set is the shell's: made absolute */
    ck_assert_ptr_nonnull(getcwd(cwd, sizeof cwd));
    snprintf(want, sizeof want, "%s/my data.tok", cwd);
    ck_assert_str_eq(c.data.path, want);
    ck_assert_int_eq(c.train.device, DEVICE_CPU);
    ck_assert_int_eq(c.data.shuffle, 0);
    ck_assert_str_eq(c.io.run_dir, "runs/x=1");

    /* without a file: defaults plus overrides; derived head_dim follows */
    char *sets2[] = {"model.hidden_size=128", "parallel.sequence_parallel_size=auto"};
    ck_assert_msg(config_load(&c, NULL, sets2, 2, err, sizeof err) == 0, "%s", err);
    ck_assert_int_eq(c.model.head_dim, 32);
    ck_assert_int_eq(c.parallel.sequence_parallel_size, 0);

    snprintf(path, sizeof path, "%s/configs/llama31_8b.yaml", srcdir());
    char *sets3[] = {"model.rope_scaling=null", "train.seq_len=8192"};
    ck_assert_msg(config_load(&c, path, sets3, 2, err, sizeof err) == 0, "%s", err);
    ck_assert_int_eq(c.model.rope_scaling.enabled, 0);
    ck_assert_int_eq(c.train.seq_len, 8192);
}
END_TEST

typedef struct { const char *set, *msg; int exact; } bad_set_t;

static const bad_set_t bad_sets[] = {
    {"model.hidden_size=abc", "--set model.hidden_size=abc: expected a positive integer, got 'abc'", 1},
    {"model.hiden_size=64", "--set model.hiden_size=64: unknown key 'hiden_size' in section model; "
                            "did you mean 'hidden_size'?", 1},
    {"modle.hidden_size=64", "--set modle.hidden_size=64: unknown section 'modle'; did you mean 'model'?", 1},
    {"train.lr", "--set train.lr: expected section.key=value", 0},
    {"lr=3", "--set lr=3: expected section.key=value", 0},
    {"train.lr=-1", "--set train.lr=-1: expected a positive number, got '-1'", 1},
    {"train.steps=\"5\"", "--set train.steps=\"5\": expected a positive integer, got '\"5\"'", 1},
    {"model.rope_scaling.rope_type=yarn", "expected llama3 (the only supported rope_type), got 'yarn'", 0},
    {"model.rope_scaling.factr=8", "unknown key 'rope_scaling.factr' in section model; did you mean 'factor'?", 0},
    {"model.rope_scaling=on", "--set model.rope_scaling=on: expected a mapping", 0},
    {"model.num_key_value_heads=3", "--set model.num_key_value_heads=3: model.num_attention_heads (4) must be "
                                    "divisible by model.num_key_value_heads (3)", 0},
    {"model.num_attention_heads=3", "--set model.num_attention_heads=3: model.hidden_size (64) must be divisible "
                                    "by model.num_attention_heads (3)", 0},
    {"train.hidden_size=64", "--set train.hidden_size=64: unknown key 'hidden_size' in section train; it is a "
                             "key of section model, move it there", 1},
    {"parallel.zero_stage=-1", "expected 0, 1, 2, 3 or auto, got '-1'", 0},
};

START_TEST(test_set_bad) {
    const bad_set_t *b = &bad_sets[_i];
    char err[1024];
    config_t c;
    char *sets[] = {(char *)b->set};
    ck_assert_int_eq(config_load(&c, NULL, sets, 1, err, sizeof err), -1);
    if (b->exact) ck_assert_str_eq(err, b->msg);
    else ck_assert_msg(strstr(err, b->msg) != NULL, "message '%s' lacks '%s'", err, b->msg);
}
END_TEST

/* A 200 KB config of nested flow sequences is refused at once (libyaml alone
 * took over 40 s), and a FIFO given as the config is refused, not waited on. */
START_TEST(test_hostile_files_fast) {
    char path[512], err[2048];
    config_t c;
    make_tmpdir();
    char *text = test_nested("model: ", 100000, "\n");
    write_fixture("deep.yaml", text, path, sizeof path);
    free(text);
    double t0 = test_now();
    ck_assert_int_eq(config_load(&c, path, NULL, 0, err, sizeof err), -1);
    ck_assert_msg(test_now() - t0 < 0.5, "took %.2f s", test_now() - t0);
    ck_assert_msg(strstr(err, "nested deeper than") != NULL, "%s", err);
    snprintf(path, sizeof path, "%s/fifo.yaml", tmpdir);
    ck_assert_int_eq(mkfifo(path, 0600), 0);
    t0 = test_now();
    ck_assert_int_eq(config_load(&c, path, NULL, 0, err, sizeof err), -1);
    ck_assert(test_now() - t0 < 0.5);
    ck_assert_msg(strstr(err, "is a FIFO (named pipe), not a regular file") != NULL, "%s", err);
    ck_assert_int_eq(config_load(&c, tmpdir, NULL, 0, err, sizeof err), -1);
    ck_assert_msg(strstr(err, "is a folder, not a regular file") != NULL, "%s", err);
    /* too large */
    snprintf(path, sizeof path, "%s/big.yaml", tmpdir);
    FILE *f = fopen(path, "w");
    for (int i = 0; i < 70000; i++) fputs("# padding comment\n", f);
    fclose(f);
    ck_assert_int_eq(config_load(&c, path, NULL, 0, err, sizeof err), -1);
    ck_assert_msg(strstr(err, "too large for a config file") != NULL, "%s", err);
    remove_tmpdir();
}
END_TEST

/* An error a --set caused names the --set, not a line of the file; a path
 * given by --set is relative to the current directory. */
START_TEST(test_set_blame_and_paths) {
    char path[512], err[2048], src[1024];
    config_t c;
    snprintf(src, sizeof src, "%s/configs/tiny.yaml", srcdir());
    char *sets[] = {"train.lr=1e-9"};
    ck_assert_int_eq(config_load(&c, src, sets, 1, err, sizeof err), -1);
    ck_assert_msg(!strncmp(err, "--set train.lr=1e-9: train.min_lr (0.0003) must not exceed", 55), "%s", err);
    char *sets2[] = {"model.num_attention_heads=6"};
    make_tmpdir();
    write_fixture("kv.yaml", "model:\n  num_key_value_heads: 4\n  head_dim: 16\n", path, sizeof path);
    ck_assert_int_eq(config_load(&c, path, sets2, 1, err, sizeof err), -1);
    ck_assert_msg(!strncmp(err, "--set model.num_attention_heads=6: ", 35), "%s", err);
    /* data.path: from the file, relative to the file's folder; from --set, to the shell's */
    write_fixture("p.yaml", "data:\n  path: tokens/a.tok\n", path, sizeof path);
    char *sets3[] = {"data.path=configs/data/b.tok"};
    ck_assert_msg(config_load(&c, path, sets3, 1, err, sizeof err) == 0, "%s", err);
    char cwd[512], want[1100], out[CFG_PATH_MAX];
    ck_assert_ptr_nonnull(getcwd(cwd, sizeof cwd));
    snprintf(want, sizeof want, "%s/configs/data/b.tok", cwd);
    ck_assert_int_eq(config_resolve_path(&c, c.data.path, out, sizeof out), 0);
    ck_assert_str_eq(out, want);
    char *sets4[] = {"data.path=/abs/b.tok"};
    ck_assert_msg(config_load(&c, path, sets4, 1, err, sizeof err) == 0, "%s", err);
    ck_assert_str_eq(c.data.path, "/abs/b.tok");
    remove_tmpdir();
}
END_TEST

/* ------------------------------------------------------------------ write / reload */

START_TEST(test_round_trip) {
    char src[1024], out[512], err[1024], a[CFG_PATH_MAX], b[CFG_PATH_MAX];
    config_t c, r;
    make_tmpdir();
    for (int i = 0; i < 5; i++) {
        const char *files[] = {"tiny.yaml", "llama32_1b.yaml", "llama32_3b.yaml", "llama31_8b.yaml",
                               "llama31_70b.yaml"};
        snprintf(src, sizeof src, "%s/configs/%s", srcdir(), files[i]);
        char *sets[] = {"train.lr=1.25e-4", "train.seed=18446744073709551615", "train.eps=1e-10",
                        "checkpointing.memory_budget_gib=71.5", "parallel.sequence_parallel_size=8",
                        "io.run_dir=runs/a \"quoted\" \\ dir", "checkpointing.offload=true"};
        ck_assert_msg(config_load(&c, src, sets, i ? 7 : 0, err, sizeof err) == 0, "%s", err);
        snprintf(out, sizeof out, "%s/config.yaml", tmpdir);
        ck_assert_msg(config_write_yaml(&c, out, err, sizeof err) == 0, "%s", err);
        ck_assert_msg(config_load(&r, out, NULL, 0, err, sizeof err) == 0, "%s", err);
        ck_assert_mem_eq(&r.model, &c.model, sizeof c.model);
        ck_assert_mem_eq(&r.train, &c.train, sizeof c.train);
        ck_assert_mem_eq(&r.parallel, &c.parallel, sizeof c.parallel);
        ck_assert_mem_eq(&r.checkpointing, &c.checkpointing, sizeof c.checkpointing);
        ck_assert_mem_eq(&r.io, &c.io, sizeof c.io);
        ck_assert_int_eq(r.data.shuffle, c.data.shuffle);
        /* data.path is recorded absolute, so it names the same file from the run folder */
        ck_assert_int_eq(config_resolve_path(&c, c.data.path, a, sizeof a), 0);
        ck_assert_int_eq(config_resolve_path(&r, r.data.path, b, sizeof b), 0);
        ck_assert_int_eq(b[0], '/');
        ck_assert_msg(strstr(b, a[0] == '.' && a[1] == '/' ? a + 2 : a) != NULL, "%s vs %s", a, b);
    }
    /* no temporary file is left next to it */
    char cmd[600];
    snprintf(cmd, sizeof cmd, "test $(ls '%s' | wc -l) -eq 1", tmpdir);
    ck_assert_int_eq(system(cmd), 0);

    /* a folder that does not exist: a clear error, nothing written */
    snprintf(out, sizeof out, "%s/no/such/config.yaml", tmpdir);
    ck_assert_int_eq(config_write_yaml(&c, out, err, sizeof err), -1);
    ck_assert_ptr_nonnull(strstr(err, "cannot create a temporary file"));
    remove_tmpdir();
}
END_TEST

/* ------------------------------------------------------------------ paths and help */

START_TEST(test_resolve_path) {
    config_t c;
    char out[CFG_PATH_MAX], small[8];
    config_defaults(&c);
    strcpy(c.base_dir, "configs");
    ck_assert_int_eq(config_resolve_path(&c, "../data/x.tok", out, sizeof out), 0);
    ck_assert_str_eq(out, "configs/../data/x.tok");
    ck_assert_int_eq(config_resolve_path(&c, "/abs/x.tok", out, sizeof out), 0);
    ck_assert_str_eq(out, "/abs/x.tok");
    ck_assert_int_eq(config_resolve_path(&c, "", out, sizeof out), 0);
    ck_assert_str_eq(out, "");
    ck_assert_int_eq(config_resolve_path(&c, "data.tok", small, sizeof small), -1);
    strcpy(c.base_dir, ".");
    ck_assert_int_eq(config_resolve_path(&c, "x.tok", out, sizeof out), 0);
    ck_assert_str_eq(out, "x.tok");
    strcpy(c.base_dir, "/");
    ck_assert_int_eq(config_resolve_path(&c, "x.tok", out, sizeof out), 0);
    ck_assert_str_eq(out, "/x.tok");

    /* base_dir comes from the config file's location */
    char err[512], path[512];
    make_tmpdir();
    write_fixture("c.yaml", "data:\n  path: tokens/a.tok\n", path, sizeof path);
    ck_assert_msg(config_load(&c, path, NULL, 0, err, sizeof err) == 0, "%s", err);
    char want[600];
    snprintf(want, sizeof want, "%s/tokens/a.tok", tmpdir);
    ck_assert_int_eq(config_resolve_path(&c, c.data.path, out, sizeof out), 0);
    ck_assert_str_eq(out, want);
    remove_tmpdir();
}
END_TEST

START_TEST(test_help_lists_every_key) {
    char *buf = NULL;
    size_t len = 0;
    FILE *f = open_memstream(&buf, &len);
    ck_assert_ptr_nonnull(f);
    config_print_help(f);
    fclose(f);
    const char *want[] = {"model:", "train:", "data:", "parallel:", "checkpointing:", "io:",
                          "hidden_size", "num_key_value_heads", "head_dim", "rope_scaling.factor",
                          "rope_scaling.original_max_position_embeddings", "tie_word_embeddings",
                          "initializer_range", "global_batch_size", "warmup_steps", "grad_clip", "seed",
                          "device", "shuffle", "sequence_parallel_size", "zero_stage", "policy",
                          "memory_budget_gib", "offload", "host_budget_gib", "host_bandwidth_gbs", "loss_chunk_tokens", "mlp_tile_tokens", "run_dir", "log_every",
                          "default 64", "default 0.003", "default auto", "default \"runs/latest\""};
    for (size_t i = 0; i < sizeof want / sizeof want[0]; i++)
        ck_assert_msg(strstr(buf, want[i]) != NULL, "help lacks '%s'", want[i]);
    free(buf);
}
END_TEST

int main(void) {
    Suite *s = suite_create("config");
    TCase *tc = tcase_create("config");
    tcase_add_test(tc, test_defaults_valid);
    tcase_add_test(tc, test_minimal_config_gets_defaults);
    tcase_add_loop_test(tc, test_shipped_llama, 0, (int)(sizeof shipped / sizeof shipped[0]));
    tcase_add_test(tc, test_shipped_tiny);
    tcase_add_loop_test(tc, test_bad_config, 0, (int)(sizeof bad / sizeof bad[0]));
    tcase_add_test(tc, test_error_truncates_safely);
    tcase_add_test(tc, test_set_good);
    tcase_add_loop_test(tc, test_set_bad, 0, (int)(sizeof bad_sets / sizeof bad_sets[0]));
    tcase_add_test(tc, test_hostile_files_fast);
    tcase_add_test(tc, test_set_blame_and_paths);
    tcase_add_test(tc, test_round_trip);
    tcase_add_test(tc, test_resolve_path);
    tcase_add_test(tc, test_help_lists_every_key);
    suite_add_tcase(s, tc);
    SRunner *sr = srunner_create(s);
    srunner_run_all(sr, CK_NORMAL);
    int failed = srunner_ntests_failed(sr);
    srunner_free(sr);
    return failed ? EXIT_FAILURE : EXIT_SUCCESS;
}
