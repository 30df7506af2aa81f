/* Every config key in one table: where it lives in config_t, its type and
 * bounds, and its help text; the sections; the defaults. A key added here is
 * parsed, checked, documented (--help) and recorded (config.yaml) by
 * config.c, which walks the table. */
#include <math.h>
#include <string.h>

#include "config_keys.h"
#include "util.h"

#define FLD(field) .off = offsetof(config_t, field), .size = sizeof(((config_t *)0)->field)
#define BIG ((int64_t)1 << 40)
#define DIM_MAX ((int64_t)1 << 20)

const cfg_key_t cfg_keys[] = {
    /* ---------------------------------------------------------------- model */
    {"model", "architecture", KT_ARCH, FLD(model.architecture),
     .help = "model family; llama is the only one so far"},
    {"model", "hidden_size", KT_INT, FLD(model.hidden_size), .ilo = 1, .ihi = DIM_MAX,
     .help = "width d of the residual stream"},
    {"model", "intermediate_size", KT_INT, FLD(model.intermediate_size), .ilo = 1, .ihi = DIM_MAX,
     .help = "width f of the SwiGLU MLP"},
    {"model", "num_hidden_layers", KT_INT, FLD(model.num_hidden_layers), .ilo = 1, .ihi = 1 << 16,
     .help = "number of transformer layers L"},
    {"model", "num_attention_heads", KT_INT, FLD(model.num_attention_heads), .ilo = 1, .ihi = 1 << 16,
     .help = "query heads Hq"},
    {"model", "num_key_value_heads", KT_INT, FLD(model.num_key_value_heads), .ilo = 1, .ihi = 1 << 16,
     .default_text = "num_attention_heads when that is given, else 2",
     .help = "key/value heads Hkv (grouped-query attention); must divide num_attention_heads"},
    {"model", "head_dim", KT_INT, FLD(model.head_dim), .ilo = 1, .ihi = DIM_MAX, .even = 1,
     .default_text = "hidden_size / num_attention_heads (16)",
     .help = "width of one attention head; even, since RoPE rotates pairs"},
    {"model", "vocab_size", KT_INT, FLD(model.vocab_size), .ilo = 2, .ihi = INT32_MAX,
     .default_text = "the data shard's header (256 without one)",
     .help = "vocabulary size V (token ids are 0..V-1); left out, the shard's header gives it; given, a header "
             "above it is refused"},
    {"model", "max_position_embeddings", KT_INT, FLD(model.max_position_embeddings), .ilo = 1, .ihi = BIG,
     .help = "context length the model was built for; longer seq_len only warns"},
    {"model", "rms_norm_eps", KT_FLOAT, FLD(model.rms_norm_eps), .flo = 0, .flo_open = 1, .fhi = INFINITY,
     .help = "epsilon of RMSNorm"},
    {"model", "rope_theta", KT_FLOAT, FLD(model.rope_theta), .flo = 0, .flo_open = 1, .fhi = INFINITY,
     .help = "RoPE base frequency"},
    {"model", "rope_scaling", KT_ROPE, FLD(model.rope_scaling),
     .help = "null for plain RoPE, or a mapping with rope_type: llama3 and the keys below"},
    {"model", "rope_scaling.rope_type", KT_ROPE_TYPE, 0, 0,
     .default_text = "llama3",
     .help = "frequency scaling scheme; llama3 (Llama 3.1/3.2) is the only one; required in the mapping"},
    {"model", "rope_scaling.factor", KT_FLOAT, FLD(model.rope_scaling.factor), .flo = 1, .fhi = INFINITY,
     .default_text = "8.0",
     .help = "context extension factor (8 for Llama 3.1, 32 for Llama 3.2)"},
    {"model", "rope_scaling.low_freq_factor", KT_FLOAT, FLD(model.rope_scaling.low_freq_factor),
     .flo = 0, .flo_open = 1, .fhi = INFINITY, .default_text = "1.0",
     .help = "wavelengths above original_max_position_embeddings / low_freq_factor are scaled fully"},
    {"model", "rope_scaling.high_freq_factor", KT_FLOAT, FLD(model.rope_scaling.high_freq_factor),
     .flo = 0, .flo_open = 1, .fhi = INFINITY, .default_text = "4.0",
     .help = "wavelengths below original_max_position_embeddings / high_freq_factor are kept; "
             "must exceed low_freq_factor"},
    {"model", "rope_scaling.original_max_position_embeddings", KT_INT,
     FLD(model.rope_scaling.original_max_position_embeddings), .ilo = 1, .ihi = BIG,
     .default_text = "8192",
     .help = "context length of the model before the extension"},
    {"model", "tie_word_embeddings", KT_BOOL, FLD(model.tie_word_embeddings),
     .help = "the LM head shares the embedding matrix"},
    {"model", "initializer_range", KT_FLOAT, FLD(model.initializer_range), .flo = 0, .flo_open = 1,
     .fhi = INFINITY, .help = "standard deviation of the normal initialisation of weights"},
    {"model", "from_pretrained", KT_STR, FLD(model.from_pretrained),
     .help = "Hugging Face model folder (config.json and safetensors weights), relative to the config "
             "file's folder: the model keys come from its config.json (keys given here too must agree) "
             "and the initial weights from its safetensors; empty: none"},
    /* ---------------------------------------------------------------- train */
    {"train", "seq_len", KT_INT, FLD(train.seq_len), .ilo = 1, .ihi = BIG,
     .help = "tokens per sample S (each sample reads S+1 tokens)"},
    {"train", "global_batch_size", KT_INT, FLD(train.global_batch_size), .ilo = 1, .ihi = BIG,
     .help = "samples per optimizer step over all data-parallel ranks"},
    {"train", "steps", KT_INT, FLD(train.steps), .ilo = 1, .ihi = BIG,
     .help = "optimizer steps"},
    {"train", "lr", KT_FLOAT, FLD(train.lr), .flo = 0, .flo_open = 1, .fhi = INFINITY,
     .help = "peak learning rate (after warmup)"},
    {"train", "min_lr", KT_FLOAT, FLD(train.min_lr), .flo = 0, .fhi = INFINITY,
     .help = "floor of the cosine decay; at most lr"},
    {"train", "warmup_steps", KT_INT, FLD(train.warmup_steps), .ilo = 0, .ihi = BIG,
     .help = "linear warmup from 0 to lr over this many steps"},
    {"train", "weight_decay", KT_FLOAT, FLD(train.weight_decay), .flo = 0, .fhi = INFINITY,
     .help = "decoupled AdamW weight decay, applied to 2-D weights only"},
    {"train", "beta1", KT_FLOAT, FLD(train.beta1), .flo = 0, .fhi = 1, .fhi_open = 1,
     .help = "AdamW first-moment decay"},
    {"train", "beta2", KT_FLOAT, FLD(train.beta2), .flo = 0, .fhi = 1, .fhi_open = 1,
     .help = "AdamW second-moment decay"},
    {"train", "eps", KT_FLOAT, FLD(train.eps), .flo = 0, .flo_open = 1, .fhi = INFINITY,
     .help = "AdamW epsilon"},
    {"train", "grad_clip", KT_FLOAT, FLD(train.grad_clip), .flo = 0, .fhi = INFINITY,
     .help = "maximum global L2 norm of the gradient; 0 disables clipping"},
    {"train", "seed", KT_SEED, FLD(train.seed),
     .help = "seed of the weight initialisation and the data order"},
    {"train", "device", KT_DEVICE, FLD(train.device),
     .help = "where to train; auto picks cuda when built with it and a GPU is present"},
    {"train", "eval_every", KT_INT, FLD(train.eval_every), .ilo = 0, .ihi = BIG,
     .help = "optimizer steps between validation losses (data.val_path); 0: only after the last step"},
    {"train", "eval_tokens", KT_INT, FLD(train.eval_tokens), .ilo = 0, .ihi = BIG,
     .help = "validation tokens per evaluation, rounded up to whole global batches of seq_len samples, "
             "always the first ones of the shard; 0: one global batch"},
    /* ---------------------------------------------------------------- data */
    {"data", "path", KT_STR, FLD(data.path),
     .help = "token file to train on, relative to the config file's folder; "
             "required to train, not for --explain"},
    {"data", "shuffle", KT_BOOL, FLD(data.shuffle),
     .help = "visit samples in a seeded random order each epoch"},
    {"data", "documents", KT_STR, FLD(data.documents), .ilo = 1, .expect = "none or eos",
     .help = "none: every sample is one causal stream; eos: the EOS token ends a document, and attention, "
             "RoPE positions and targets stay within documents (docs/data.md)"},
    {"data", "eos_token_id", KT_INT, FLD(data.eos_token_id), .ilo = -1, .ihi = INT32_MAX,
     .help = "the EOS token id for documents: eos; -1: the id the shard's header records "
             "(scripts/prepare_data.py --eos)"},
    {"data", "val_path", KT_STR, FLD(data.val_path),
     .help = "validation token shard, relative to the config file's folder: its loss is measured every "
             "train.eval_every steps and at the end; empty: none"},
    /* ---------------------------------------------------------------- parallel */
    {"parallel", "sequence_parallel_size", KT_SP, FLD(parallel.sequence_parallel_size),
     .ilo = 1, .ihi = 1 << 20,
     .help = "ranks that share one sequence (Ulysses degree P); auto lets the plan pick it from "
             "the world size and head counts; the remaining factor of ranks is data parallel"},
    {"parallel", "zero_stage", KT_AUTO, FLD(parallel.zero_stage), .ilo = 0, .ihi = 3,
     .expect = "0, 1, 2, 3 or auto",
     .help = "how model state is sharded over all ranks: 0 nothing; 1 fp32 master weights and AdamW "
             "moments; 2 also the gradients (each layer's produced in a bucket buffer and "
             "reduce-scattered into the rank's shard); 3 also the weights (each layer's gathered just "
             "before its forward and its backward); auto: of the placements that fit, the one expected to "
             "cost least (recompute, and the host optimizer's unhidden time), the lowest stage on a tie"},
    /* ---------------------------------------------------------------- optimizer */
    {"optimizer", "offload", KT_TRI, FLD(optimizer.offload),
     .help = "keep the fp32 master weights, AdamW moments and gradient shard in pinned host memory "
             "and run AdamW on the CPU, bucket by bucket, beside the next forward; auto: when that is the "
             "placement expected to cost least (never on the CPU engine)"},
    {"optimizer", "offload_params", KT_TRI, FLD(optimizer.offload_params),
     .help = "with ZeRO-3 and the optimizer on the host, keep the rank's bf16 weight shard in pinned host "
             "memory as well: AdamW writes it there and each bucket is copied to the device just before "
             "its gather; auto: when that is the placement expected to cost least (never on the CPU engine)"},
    /* ---------------------------------------------------------------- checkpointing */
    {"checkpointing", "policy", KT_SAC, FLD(checkpointing.policy),
     .help = "what the backward keeps: save_all every activation, full the fewest (the rest is "
             "recomputed), auto lets the SAC pass choose from its cost model and the memory budget"},
    {"checkpointing", "memory_budget_gib", KT_FLOAT, FLD(checkpointing.memory_budget_gib),
     .flo = 0, .fhi = ASP_MEMORY_GIB_MAX,
     .help = "per-rank device memory (GiB) the plan must fit; 0: the device's memory"},
    {"checkpointing", "offload", KT_BOOL, FLD(checkpointing.offload),
     .help = "let the auto policy offload saved activations to pinned host memory (copied "
             "beside compute, back one layer ahead of their backward) where that is cheaper "
             "than recomputing them; false keeps them on the device"},
    {"checkpointing", "host_budget_gib", KT_FLOAT, FLD(checkpointing.host_budget_gib),
     .flo = 0, .fhi = ASP_MEMORY_GIB_MAX,
     .help = "per-rank pinned host memory (GiB) the plan may offload to; 0: the node's memory "
             "(four fifths of it) shared by its ranks; more than that is refused"},
    {"checkpointing", "host_bandwidth_gbs", KT_FLOAT, FLD(checkpointing.host_bandwidth_gbs),
     .flo = 0, .flo_open = 1, .fhi = INFINITY,
     .help = "GB/s each way between a GPU and host memory, for the offload cost model "
             "(PCIe Gen5 x16: 50)"},
    {"checkpointing", "loss_chunk_tokens", KT_INT, FLD(checkpointing.loss_chunk_tokens),
     .ilo = 0, .ihi = BIG,
     .help = "tokens per LM-head and loss chunk; 0: chosen by the plan"},
    {"checkpointing", "mlp_tile_tokens", KT_INT, FLD(checkpointing.mlp_tile_tokens),
     .ilo = 0, .ihi = BIG,
     .help = "tokens per tile when a recomputed MLP runs tile by tile over the sequence; "
             "0: chosen by the plan"},
    {"checkpointing", "attention_pieces", KT_AUTO, FLD(checkpointing.attention_pieces), .ilo = 1, .ihi = 1 << 16,
     .help = "groups of KV heads (with their query heads) the attention block runs in, one "
             "at a time, so its tensors take a piece of memory each; a count dividing the KV "
             "heads per rank, or auto: 1 when the plan fits, else the count that fits best"},
    /* ---------------------------------------------------------------- io */
    {"io", "run_dir", KT_STR, FLD(io.run_dir), .ilo = 1,
     .help = "folder for logs and the recorded config, relative to the current directory; "
             "created if missing"},
    {"io", "log_every", KT_INT, FLD(io.log_every), .ilo = 1, .ihi = BIG,
     .help = "optimizer steps between console lines"},
    {"io", "export_hf", KT_BOOL, FLD(io.export_hf),
     .help = "at the end of training write the model as a Hugging Face folder (config.json and "
             "model.safetensors) to run_dir/hf/"},
    {"io", "resume", KT_STR, FLD(io.resume), .ilo = 1, .expect = "auto, never or a checkpoint folder",
     .help = "auto: continue from the newest complete checkpoint in run_dir/checkpoints (fresh if none); "
             "never: always start fresh; or the path of a checkpoint folder (docs/checkpoints.md)"},
    {"io", "save_every", KT_INT, FLD(io.save_every), .ilo = 0, .ihi = BIG,
     .help = "optimizer steps between checkpoints; 0: only at the end of training and on SIGTERM/SIGUSR1"},
    {"io", "save_at_end", KT_BOOL, FLD(io.save_at_end),
     .help = "write a checkpoint after the last step (false for benchmarks; signals still checkpoint)"},
    {"io", "keep_last", KT_INT, FLD(io.keep_last), .ilo = 1, .ihi = 1 << 20,
     .help = "complete checkpoints kept in run_dir/checkpoints; older ones are deleted once a new one is complete"},
};
const int cfg_nkeys = (int)(sizeof cfg_keys / sizeof cfg_keys[0]);
_Static_assert(sizeof cfg_keys / sizeof cfg_keys[0] <= CFG_MAX_KEYS, "raise CFG_MAX_KEYS");

const cfg_section_t cfg_sections[] = {
    {"model", "the network, with Hugging Face config.json names"},
    {"train", "optimizer, schedule and batch"},
    {"data", "the token file"},
    {"parallel", "how ranks split the work"},
    {"optimizer", "where the optimizer state lives (AdamW's hyperparameters are in train)"},
    {"checkpointing", "sequence-aware activation checkpointing (SAC)"},
    {"io", "where results go"},
};
const int cfg_nsections = (int)(sizeof cfg_sections / sizeof cfg_sections[0]);

const char *const cfg_arch_names[CFG_N_ARCH] = {"llama"};
const char *const cfg_sac_names[CFG_N_SAC] = {"auto", "save_all", "full"};
const char *const cfg_device_names[CFG_N_DEVICE] = {"auto", "cpu", "cuda"};

/* Llama 3.1 values, used when rope_scaling is switched on without all its keys. */
const rope_scaling_t cfg_rope_llama3_defaults = {1, 8.0, 1.0, 4.0, 8192};

const char *sac_policy_name(sac_policy_t p) {
    return (unsigned)p < 3 ? cfg_sac_names[p] : "invalid";
}

const char *device_kind_name(device_kind_t d) {
    return (unsigned)d < 3 ? cfg_device_names[d] : "invalid";
}

void config_defaults(config_t *cfg) {
    memset(cfg, 0, sizeof *cfg);
    strcpy(cfg->base_dir, ".");
    model_config_t *m = &cfg->model;
    strcpy(m->architecture, "llama");
    m->hidden_size = 64;
    m->intermediate_size = 192;
    m->num_hidden_layers = 4;
    m->num_attention_heads = 4;
    m->num_key_value_heads = 2;
    m->head_dim = 16;
    m->vocab_size = 256;
    m->max_position_embeddings = 4096;
    m->rms_norm_eps = 1e-5;
    m->rope_theta = 10000.0;
    m->rope_scaling = cfg_rope_llama3_defaults;
    m->rope_scaling.enabled = 0;
    m->tie_word_embeddings = 1;
    m->initializer_range = 0.02;
    train_config_t *t = &cfg->train;
    t->seq_len = 128;
    t->global_batch_size = 8;
    t->steps = 300;
    t->lr = 3e-3;
    t->min_lr = 3e-4;
    t->warmup_steps = 20;
    t->weight_decay = 0.1;
    t->beta1 = 0.9;
    t->beta2 = 0.95;
    t->eps = 1e-8;
    t->grad_clip = 1.0;
    t->seed = 1234;
    t->device = DEVICE_AUTO;
    cfg->data.shuffle = 1;
    strcpy(cfg->data.documents, "none");
    cfg->data.eos_token_id = -1;
    cfg->parallel.sequence_parallel_size = 0;
    cfg->parallel.zero_stage = -1;
    cfg->optimizer.offload = -1;
    cfg->optimizer.offload_params = -1;
    cfg->checkpointing.policy = SAC_AUTO;
    cfg->checkpointing.memory_budget_gib = 0.0;
    cfg->checkpointing.offload = 1;
    cfg->checkpointing.host_budget_gib = 0.0;
    cfg->checkpointing.host_bandwidth_gbs = 50.0;
    cfg->checkpointing.loss_chunk_tokens = 0;
    cfg->checkpointing.mlp_tile_tokens = 0;
    cfg->checkpointing.attention_pieces = -1;
    strcpy(cfg->io.run_dir, "runs/latest");
    cfg->io.log_every = 1;
    strcpy(cfg->io.resume, "auto");
    cfg->io.save_every = 0;
    cfg->io.save_at_end = 1;
    cfg->io.keep_last = 3;
}
