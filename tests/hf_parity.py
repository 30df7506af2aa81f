#!/usr/bin/env python3
"""autosp-train against transformers on Hugging Face checkpoints (fp32, CPU).

For random tiny Llama models made and saved by transformers (tied and untied
embeddings, llama3 RoPE scaling, a Llama-3.2-1B-shaped model with 2 layers
saved in shards), autosp-train loads the folder (model.from_pretrained), runs
one step on the same tokens (--dump-grads) with SP = 1 and SP = 2, and its
loss and every parameter's gradient must match transformers' to 1e-4
(relative). Then a few training steps with io.export_hf: transformers loads
the exported folder and computes the same loss as autosp-train on it. And
packed documents (data.documents: eos): transformers with per-document
position_ids and a block-diagonal causal mask gives the loss and gradients of
the engine on the packed sample (SP = 1 and 2), and both equal transformers
run on each document alone. And a shard with a target mask (fine-tuning
data): transformers with the masked labels set to -100 gives the engine's loss
and gradients at SP = 1, 2 and 4, with packed documents and without.

Exit status 77 (skipped) when torch or transformers cannot be imported.
With --devices cpu,cuda the engine also runs each model on the GPU in bf16,
held to bf16 tolerances (loss 1e-2, gradients 5e-2 relative).

usage: hf_parity.py --bin BIN --srcdir DIR --tmp DIR [--mpirun MPIRUN] [--devices cpu,cuda]
"""
import argparse
import importlib.util
import inspect
import os
import struct
import subprocess
import sys

try:
    import torch
    import torch.nn.functional as F
    from transformers import LlamaConfig, LlamaForCausalLM
except ImportError as e:
    print(f"cannot import torch and transformers ({e}): skipped")
    sys.exit(77)

TOL = 1e-4
# bf16 on the GPU against fp32 transformers: the tolerances of the GPU op tests
TOL_BF16_LOSS, TOL_BF16_GRAD = 1e-2, 5e-2
DUMP_MAGIC = b"ASPDUMP1"


def load_shard_module(srcdir):
    spec = importlib.util.spec_from_file_location("text_to_shard", os.path.join(srcdir, "scripts", "text_to_shard.py"))
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def make_config(c):
    """LlamaConfig in whichever rope layout this transformers takes."""
    kw = dict(c)
    rope = kw.pop("rope", None)
    theta = kw.pop("rope_theta")
    if "rope_parameters" in inspect.signature(LlamaConfig.__init__).parameters:
        params = {"rope_type": "default", "rope_theta": theta}
        if rope:
            params = dict(rope, rope_theta=theta)
        kw["rope_parameters"] = params
    else:
        kw["rope_theta"] = theta
        kw["rope_scaling"] = rope
    kw.update(attention_bias=False, mlp_bias=False, hidden_act="silu")
    cfg = LlamaConfig(**kw)
    cfg._attn_implementation = "eager"
    return cfg


def param_names(cfg):
    """autosp-train's parameter table order (the flat gradient's layout)."""
    names = ["model.embed_tokens.weight"]
    for i in range(cfg.num_hidden_layers):
        p = f"model.layers.{i}."
        names += [p + "input_layernorm.weight", p + "self_attn.q_proj.weight", p + "self_attn.k_proj.weight",
                  p + "self_attn.v_proj.weight", p + "self_attn.o_proj.weight", p + "post_attention_layernorm.weight",
                  p + "mlp.gate_proj.weight", p + "mlp.up_proj.weight", p + "mlp.down_proj.weight"]
    names.append("model.norm.weight")
    if not cfg.tie_word_embeddings:
        names.append("lm_head.weight")
    return names


def read_dump(path):
    with open(path, "rb") as f:
        b = f.read()
    assert b[:8] == DUMP_MAGIC, f"{path}: not a gradient dump"
    n, steps = struct.unpack_from("<qq", b, 8)
    losses = struct.unpack_from(f"<{steps}d", b, 24)
    grad = torch.frombuffer(bytearray(b[24 + 8 * steps:24 + 8 * steps + 4 * n]), dtype=torch.float32)
    return list(losses), grad


def hf_loss_and_grads(model, tokens, S):
    """Loss as autosp-train defines it: mean cross entropy of tokens[1..S] given tokens[0..S)."""
    model.zero_grad(set_to_none=True)
    ids = torch.tensor(tokens[:S + 1], dtype=torch.long)
    logits = model(input_ids=ids[None, :S]).logits[0].float()
    loss = F.cross_entropy(logits, ids[1:S + 1])
    loss.backward()
    return loss.item()


def hf_packed_loss_and_grads(model, tokens, S, eos, is_target=None):
    """The packed sample as one sequence: positions restart after every EOS
    input, attention stays in the document (an additive block-diagonal causal
    mask, which eager attention adds to its scores), the EOS input's target is
    ignored, and so is every token is_target marks 0 (label -100). eos None:
    one sequence, a plain causal mask."""
    model.zero_grad(set_to_none=True)
    ids = torch.tensor(tokens[:S + 1], dtype=torch.long)
    doc = torch.zeros(S, dtype=torch.long)
    for p in range(1, S):
        doc[p] = doc[p - 1] + (1 if eos is not None and tokens[p - 1] == eos else 0)
    first = torch.tensor([min(q for q in range(S) if doc[q] == doc[p]) for p in range(S)])
    pos = torch.arange(S) - first
    allowed = (doc[:, None] == doc[None, :]) & (torch.arange(S)[None, :] <= torch.arange(S)[:, None])
    mask = torch.zeros(S, S).masked_fill(~allowed, torch.finfo(torch.float32).min)[None, None]
    labels = ids[1:S + 1].clone()
    if eos is not None:
        labels[ids[:S] == eos] = -100
    if is_target is not None:
        labels[torch.tensor(is_target[1:S + 1]) == 0] = -100
    logits = model(input_ids=ids[None, :S], position_ids=pos[None], attention_mask=mask).logits[0].float()
    loss = F.cross_entropy(logits, labels, ignore_index=-100)
    loss.backward()
    return loss.item()


def hf_docs_alone(model, tokens, S, eos):
    """Each document as its own sequence; loss and gradients summed with the
    global count of valid targets (what the packed sample must equal)."""
    model.zero_grad(set_to_none=True)
    starts = [0] + [p + 1 for p in range(S - 1) if tokens[p] == eos]
    ends = starts[1:] + [S + 1]
    total = sum(e - b - 1 for b, e in zip(starts, ends))
    loss_sum = 0.0
    for b, e in zip(starts, ends):
        if e - b < 2:
            continue
        ids = torch.tensor(tokens[b:e], dtype=torch.long)
        logits = model(input_ids=ids[None, :-1]).logits[0].float()
        loss = F.cross_entropy(logits, ids[1:], reduction="sum") / total
        loss.backward()
        loss_sum += loss.item()
    return loss_sum


class Runner:
    def __init__(self, args):
        self.args = args
        self.bin = os.path.abspath(args.bin)
        self.tmp = os.path.abspath(args.tmp)
        self.shard_mod = load_shard_module(args.srcdir)
        self.write_shard = self.shard_mod.write_shard
        self.fails = 0

    def engine(self, name, model_dir, shard, S, steps, np=1, extra=(), device="cpu"):
        run_dir = os.path.join(self.tmp, "run-" + name)
        cfg = os.path.join(self.tmp, name + ".yaml")
        with open(cfg, "w") as f:
            f.write(f"model:\n  from_pretrained: {model_dir}\n"
                    f"train:\n  seq_len: {S}\n  global_batch_size: 1\n  steps: {steps}\n  device: {device}\n"
                    f"  lr: 1.0e-3\n  min_lr: 1.0e-3\n  warmup_steps: 0\n"
                    f"data:\n  path: {shard}\n  shuffle: false\n"
                    f"io:\n  run_dir: {run_dir}\n  log_every: 1\n  save_at_end: false\n")
        dump = os.path.join(self.tmp, name + ".bin")
        cmd = [self.bin, cfg, "--dump-grads", dump] + list(extra)
        if np > 1:
            cmd = [self.args.mpirun, "-np", str(np), "--oversubscribe"] + \
                  (["--allow-run-as-root"] if os.geteuid() == 0 else []) + ["-x", "OMP_NUM_THREADS"] + cmd
        r = subprocess.run(cmd, capture_output=True, text=True)
        if r.returncode != 0:
            raise RuntimeError(f"autosp-train failed ({' '.join(cmd)}):\n{r.stdout}\n{r.stderr}")
        return read_dump(dump), run_dir

    def check(self, what, ok, detail):
        print(f"{'ok:  ' if ok else 'FAIL:'} {what} ({detail})")
        if not ok:
            self.fails += 1

    def compare(self, what, model, cfg, hf_loss, losses, grad, tol_loss=TOL, tol_grad=TOL):
        rel = abs(losses[0] - hf_loss) / abs(hf_loss)
        self.check(f"{what}: loss", rel <= tol_loss, f"autosp-train {losses[0]:.7f}, transformers {hf_loss:.7f}, rel {rel:.1e}")
        params = dict(model.named_parameters())
        off, worst, worst_name = 0, 0.0, ""
        for n in param_names(cfg):
            g = params[n].grad.detach().reshape(-1).double()
            mine = grad[off:off + g.numel()].double()
            off += g.numel()
            e = ((mine - g).norm() / g.norm()).item() if g.norm() > 0 else mine.norm().item()
            if not e <= worst:
                worst, worst_name = e, n
        self.check(f"{what}: gradients", off == grad.numel() and worst <= tol_grad,
                   f"{off} of {grad.numel()} values, worst {worst_name} rel {worst:.1e}")

    def case(self, name, spec, S, shard_size=None, sp2=True):
        torch.manual_seed(sum(map(ord, name)))
        cfg = make_config(spec)
        model = LlamaForCausalLM(cfg).float()
        with torch.no_grad():   # norms away from 1 so their gradients mean something
            for n, p in model.named_parameters():
                if "norm" in n:
                    p.add_(0.1 * torch.randn_like(p))
        model_dir = os.path.join(self.tmp, "hf-" + name)
        if shard_size:
            model.save_pretrained(model_dir, max_shard_size=shard_size)
        else:
            model.save_pretrained(model_dir)
        V = cfg.vocab_size
        g = torch.Generator().manual_seed(7)
        tokens = torch.randint(0, V, (4 * S + 1,), generator=g).tolist()
        shard = os.path.join(self.tmp, name + ".tok")
        self.write_shard(shard, tokens, V)
        hf_loss = hf_loss_and_grads(model, tokens, S)
        (losses, grad), _ = self.engine(name, model_dir, shard, S, 1)
        self.compare(f"{name} SP=1", model, cfg, hf_loss, losses, grad)
        if self.args.mpirun and sp2:
            (losses, grad), _ = self.engine(name + "-sp2", model_dir, shard, S, 1, np=2,
                                            extra=["--set", "parallel.sequence_parallel_size=2"])
            self.compare(f"{name} SP=2", model, cfg, hf_loss, losses, grad)
        else:
            print(f"skip: {name} SP=2 ({'no mpirun' if sp2 else 'two ranks of its fp32 state and transformers beside them do not fit a 24 GB machine; the tiny cases check SP'})")
        if "cuda" in self.args.devices:
            (losses, grad), _ = self.engine(name + "-cuda", model_dir, shard, S, 1, device="cuda")
            self.compare(f"{name} SP=1 on the GPU (bf16)", model, cfg, hf_loss, losses, grad,
                         TOL_BF16_LOSS, TOL_BF16_GRAD)
        return model_dir, shard, tokens

    def packed(self, name, spec, lens, eos):
        """Documents of `lens` tokens (each ended by EOS) packed into one sample."""
        torch.manual_seed(sum(map(ord, name)))
        cfg = make_config(spec)
        model = LlamaForCausalLM(cfg).float()
        with torch.no_grad():
            for n, p in model.named_parameters():
                if "norm" in n:
                    p.add_(0.1 * torch.randn_like(p))
        model_dir = os.path.join(self.tmp, "hf-" + name)
        model.save_pretrained(model_dir)
        g = torch.Generator().manual_seed(11)
        tokens = []
        for n in lens:
            body = torch.randint(0, cfg.vocab_size - 1, (n - 1,), generator=g)
            tokens += [t + 1 if t >= eos else t for t in body.tolist()] + [eos]   # no EOS inside a document
        S = len(tokens) - 1
        shard = os.path.join(self.tmp, name + ".tok")
        self.write_shard(shard, tokens, cfg.vocab_size)
        hf_loss = hf_packed_loss_and_grads(model, tokens, S, eos)
        params = dict(model.named_parameters())
        packed_grads = {n: params[n].grad.detach().clone() for n in param_names(cfg)}
        alone_loss = hf_docs_alone(model, tokens, S, eos)
        worst = max(((packed_grads[n] - params[n].grad).norm() / params[n].grad.norm()).item()
                    for n in param_names(cfg))
        self.check(f"{name}: transformers packed (position_ids + block-diagonal mask) = each document alone",
                   abs(hf_loss - alone_loss) <= TOL * abs(alone_loss) and worst <= TOL,
                   f"loss {hf_loss:.7f} vs {alone_loss:.7f}, worst gradient rel {worst:.1e}")
        hf_loss = hf_packed_loss_and_grads(model, tokens, S, eos)   # the packed gradients again, for compare
        docs = ["--set", "data.documents=eos", "--set", f"data.eos_token_id={eos}"]
        (losses, grad), _ = self.engine(name, model_dir, shard, S, 1, extra=docs)
        self.compare(f"{name} packed documents SP=1", model, cfg, hf_loss, losses, grad)
        if self.args.mpirun:
            (losses, grad), _ = self.engine(name + "-sp2", model_dir, shard, S, 1, np=2,
                                            extra=docs + ["--set", "parallel.sequence_parallel_size=2"])
            self.compare(f"{name} packed documents SP=2 (S={S} padded)", model, cfg, hf_loss, losses, grad)
        if "cuda" in self.args.devices:
            (losses, grad), _ = self.engine(name + "-cuda", model_dir, shard, S, 1, device="cuda", extra=docs)
            self.compare(f"{name} packed documents on the GPU (bf16)", model, cfg, hf_loss, losses, grad,
                         TOL_BF16_LOSS, TOL_BF16_GRAD)

    def masked(self, name, spec, lens, eos):
        """Fine-tuning data: documents of `lens` tokens (EOS-ended) with a random
        target mask, written as a version-2 shard. transformers with the masked
        labels set to -100 against the engine at SP 1, 2 and 4, with documents
        and (the same shard, EOS an ordinary token) without."""
        torch.manual_seed(sum(map(ord, name)))
        cfg = make_config(spec)
        model = LlamaForCausalLM(cfg).float()
        with torch.no_grad():
            for n, p in model.named_parameters():
                if "norm" in n:
                    p.add_(0.1 * torch.randn_like(p))
        model_dir = os.path.join(self.tmp, "hf-" + name)
        model.save_pretrained(model_dir)
        g = torch.Generator().manual_seed(13)
        tokens = []
        for n in lens:
            body = torch.randint(0, cfg.vocab_size - 1, (n - 1,), generator=g)
            tokens += [t + 1 if t >= eos else t for t in body.tolist()] + [eos]
        # a prompt-like run of context, then targets, in every document; some stray flips
        is_target = [1 if (i % 11) >= 4 else 0 for i in range(len(tokens))]
        flips = torch.randint(0, len(tokens), (len(tokens) // 8,), generator=g).tolist()
        for i in flips:
            is_target[i] ^= 1
        S = len(tokens) - 1
        shard = os.path.join(self.tmp, name + ".tok")
        with self.shard_mod.ShardWriter(shard) as w:
            w.append(tokens, is_target)
            w.commit(cfg.vocab_size, eos)
        ranks = [1, 2, 4] if self.args.mpirun else [1]
        for docs in (True, False):
            hf_loss = hf_packed_loss_and_grads(model, tokens, S, eos if docs else None, is_target)
            extra = ["--set", "data.documents=eos"] if docs else []
            what = "documents + target mask" if docs else "target mask"
            for np in ranks:
                sp = ["--set", f"parallel.sequence_parallel_size={np}"] if np > 1 else []
                (losses, grad), _ = self.engine(f"{name}-{int(docs)}-sp{np}", model_dir, shard, S, 1, np=np,
                                                extra=extra + sp)
                self.compare(f"{name} {what} SP={np} (S={S})", model, cfg, hf_loss, losses, grad)
            if "cuda" in self.args.devices:
                (losses, grad), _ = self.engine(f"{name}-{int(docs)}-cuda", model_dir, shard, S, 1, device="cuda",
                                                extra=extra)
                self.compare(f"{name} {what} on the GPU (bf16)", model, cfg, hf_loss, losses, grad,
                             TOL_BF16_LOSS, TOL_BF16_GRAD)
        if not self.args.mpirun:
            print(f"skip: {name} SP=2 and 4 (no mpirun)")

    def export(self, name, model_dir, shard, tokens, S, device="cpu"):
        """Train 3 steps (on `device`) and export; transformers and autosp-train (fp32) agree on the exported model."""
        name = name if device == "cpu" else f"{name}-{device}"
        _, run_dir = self.engine(name + "-train", model_dir, shard, S, 3, extra=["--set", "io.export_hf=true"],
                                 device=device)
        exported = os.path.join(run_dir, "hf")
        (losses, _), _ = self.engine(name + "-reload", exported, shard, S, 1)
        model = LlamaForCausalLM.from_pretrained(exported, torch_dtype=torch.float32, attn_implementation="eager")
        hf_loss = hf_loss_and_grads(model, tokens, S)
        rel = abs(losses[0] - hf_loss) / abs(hf_loss)
        self.check(f"{name}: exported model in transformers", rel <= TOL,
                   f"autosp-train {losses[0]:.7f}, transformers {hf_loss:.7f}, rel {rel:.1e}")


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--bin", required=True)
    ap.add_argument("--srcdir", required=True)
    ap.add_argument("--tmp", required=True)
    ap.add_argument("--mpirun", default="")
    ap.add_argument("--devices", default="cpu", help="engine devices to check: cpu, or cpu,cuda")
    args = ap.parse_args()
    torch.set_num_threads(max(1, min(8, os.cpu_count() or 1)))
    r = Runner(args)
    tiny = dict(hidden_size=64, intermediate_size=192, num_hidden_layers=2, num_attention_heads=4,
                num_key_value_heads=2, vocab_size=256, max_position_embeddings=4096, rms_norm_eps=1e-5,
                rope_theta=10000.0)
    llama3 = {"rope_type": "llama3", "factor": 8.0, "low_freq_factor": 1.0, "high_freq_factor": 4.0,
              "original_max_position_embeddings": 64}
    S = 64
    d, sh, tok = r.case("tied", dict(tiny, tie_word_embeddings=True), S)
    r.export("tied", d, sh, tok, S)
    r.case("untied", dict(tiny, tie_word_embeddings=False), S)
    # packed documents: lengths that P = 2 does not divide, an EOS-only document; S = 65 (padded to 66 on 2 ranks)
    r.packed("packed", dict(tiny, tie_word_embeddings=False), [20, 1, 9, 31, 2, 3], eos=3)
    # fine-tuning data: a target mask, with and without documents; S = 66 (padded to 68 on 4 ranks)
    r.masked("masked", dict(tiny, tie_word_embeddings=False), [23, 9, 30, 5], eos=3)
    d, sh, tok = r.case("llama3-rope", dict(tiny, tie_word_embeddings=False, rope=llama3), S)
    r.export("llama3-rope", d, sh, tok, S)
    if "cuda" in args.devices:
        r.export("llama3-rope", d, sh, tok, S, device="cuda")
    # Llama 3.2 1B's shapes, 2 layers, saved in shards (the index path)
    l1b = dict(hidden_size=2048, intermediate_size=8192, num_hidden_layers=2, num_attention_heads=32,
               num_key_value_heads=8, head_dim=64, vocab_size=128256, max_position_embeddings=131072,
               rms_norm_eps=1e-5, rope_theta=500000.0, tie_word_embeddings=True,
               rope={"rope_type": "llama3", "factor": 32.0, "low_freq_factor": 1.0, "high_freq_factor": 4.0,
                     "original_max_position_embeddings": 8192})
    r.case("llama32-1b-2layers", l1b, 32, shard_size="300MB", sp2=False)
    if r.fails:
        print(f"{r.fails} parity check(s) failed")
        sys.exit(1)
    print("all Hugging Face parity checks passed")


if __name__ == "__main__":
    main()
