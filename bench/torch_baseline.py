#!/usr/bin/env python3
"""Plain-PyTorch baseline for autosp-train's benchmarks.

A Llama model written directly in PyTorch: fused QKV, RoPE with llama3 scaling,
scaled_dot_product_attention (causal, GQA), SwiGLU; full activation
checkpointing (every layer recomputed in backward); LM head + loss in token
chunks (logits never held for the whole sequence); AdamW on fp32 weights under
bf16 autocast. Eager or torch.compile. With several ranks (torchrun or
mpirun) it runs hand-written DeepSpeed-Ulysses sequence parallelism:
all-to-all of Q, K, V to head-sharded layout around attention and back.

Prints one JSON line per measured configuration:
  {"impl": "torch-eager", "seq_len": ..., "tokens_per_s": ..., "tflops_per_gpu": ..., "mfu": ..., "peak_gib": ...}

FLOPs per token = 6 N + 6 L S Hq hd (N: matmul weights incl. the LM head; the
second term is causal attention fwd+bwd), the same count autosp-train uses.
"""
import argparse
import json
import math
import os
import sys
import time

import torch
import torch.distributed as dist
import torch.nn as nn
import torch.nn.functional as F
from torch.utils.checkpoint import checkpoint

PEAK_TFLOPS = 989.0  # H100/H200 dense bf16


def load_model_config(path):
    import yaml
    with open(path) as f:
        cfg = yaml.safe_load(f)
    m = cfg["model"]
    m.setdefault("num_key_value_heads", m["num_attention_heads"])
    m.setdefault("head_dim", m["hidden_size"] // m["num_attention_heads"])
    m.setdefault("rms_norm_eps", 1e-5)
    m.setdefault("rope_theta", 10000.0)
    m.setdefault("tie_word_embeddings", True)
    return m, cfg


def rope_inv_freq(m):
    hd = m["head_dim"]
    inv = 1.0 / (m["rope_theta"] ** (torch.arange(0, hd, 2, dtype=torch.float64) / hd))
    rs = m.get("rope_scaling")
    if rs:
        factor, low, high = rs["factor"], rs["low_freq_factor"], rs["high_freq_factor"]
        orig = rs["original_max_position_embeddings"]
        wavelen = 2 * math.pi / inv
        scaled = torch.where(wavelen > orig / low, inv / factor, inv)
        smooth = (orig / wavelen - low) / (high - low)
        mid = (1 - smooth) * scaled / factor + smooth * scaled
        is_mid = (wavelen >= orig / high) & (wavelen <= orig / low)
        inv = torch.where(is_mid, mid, scaled)
    return inv


def rotate(x, cos, sin):
    h = x.shape[-1] // 2
    x1, x2 = x[..., :h], x[..., h:]
    return torch.cat((x1 * cos - x2 * sin, x2 * cos + x1 * sin), dim=-1)


class SeqAllToAll(torch.autograd.Function):
    """[S/P, H, hd] (sequence-sharded) <-> [S, H/P, hd] (head-sharded)."""

    @staticmethod
    def forward(ctx, x, group, to_heads):
        ctx.group, ctx.to_heads = group, to_heads
        return _a2a(x, group, to_heads)

    @staticmethod
    def backward(ctx, g):
        return _a2a(g, ctx.group, not ctx.to_heads), None, None


def _a2a(x, group, to_heads):
    P = dist.get_world_size(group)
    if to_heads:
        s, h, d = x.shape
        send = x.reshape(s, P, h // P, d).transpose(0, 1).contiguous()  # [P, s, h/P, d]
        recv = torch.empty_like(send)
        dist.all_to_all_single(recv, send, group=group)
        return recv.reshape(P * s, h // P, d)
    S, hl, d = x.shape
    send = x.reshape(P, S // P, hl, d).contiguous()
    recv = torch.empty_like(send)
    dist.all_to_all_single(recv, send, group=group)  # [P(head group), S/P, hl, d]
    return recv.transpose(0, 1).reshape(S // P, P * hl, d)


class Layer(nn.Module):
    def __init__(self, m, sp_group):
        super().__init__()
        d, hq, hkv, hd, f = m["hidden_size"], m["num_attention_heads"], m["num_key_value_heads"], m["head_dim"], m["intermediate_size"]
        self.hq, self.hkv, self.hd, self.eps, self.sp = hq, hkv, hd, m["rms_norm_eps"], sp_group
        self.ln1 = nn.Parameter(torch.ones(d))
        self.qkv = nn.Linear(d, (hq + 2 * hkv) * hd, bias=False)
        self.o = nn.Linear(hq * hd, d, bias=False)
        self.ln2 = nn.Parameter(torch.ones(d))
        self.gate_up = nn.Linear(d, 2 * f, bias=False)
        self.down = nn.Linear(f, d, bias=False)

    def forward(self, x, cos, sin):
        s = x.shape[0]
        h = F.rms_norm(x, (x.shape[-1],), self.ln1, self.eps)
        q, k, v = self.qkv(h).split([self.hq * self.hd, self.hkv * self.hd, self.hkv * self.hd], dim=-1)
        q = rotate(q.view(s, self.hq, self.hd), cos, sin)
        k = rotate(k.view(s, self.hkv, self.hd), cos, sin)
        v = v.view(s, self.hkv, self.hd)
        if self.sp is not None:
            P = dist.get_world_size(self.sp)
            if self.hkv < P:  # replicate KV heads so every rank gets one
                k = k.repeat_interleave(P // self.hkv, dim=1)
                v = v.repeat_interleave(P // self.hkv, dim=1)
            q, k, v = (SeqAllToAll.apply(t, self.sp, True) for t in (q, k, v))
        o = F.scaled_dot_product_attention(q.transpose(0, 1)[None], k.transpose(0, 1)[None], v.transpose(0, 1)[None],
                                           is_causal=True, enable_gqa=True)[0].transpose(0, 1)
        if self.sp is not None:
            o = SeqAllToAll.apply(o.contiguous(), self.sp, False)
        x = x + self.o(o.reshape(s, -1))
        h = F.rms_norm(x, (x.shape[-1],), self.ln2, self.eps)
        g, u = self.gate_up(h).chunk(2, dim=-1)
        return x + self.down(F.silu(g) * u)


class Llama(nn.Module):
    def __init__(self, m, sp_group, loss_chunk):
        super().__init__()
        self.embed = nn.Embedding(m["vocab_size"], m["hidden_size"])
        self.layers = nn.ModuleList(Layer(m, sp_group) for _ in range(m["num_hidden_layers"]))
        self.norm = nn.Parameter(torch.ones(m["hidden_size"]))
        self.lm_head = None if m["tie_word_embeddings"] else nn.Linear(m["hidden_size"], m["vocab_size"], bias=False)
        self.eps, self.loss_chunk = m["rms_norm_eps"], loss_chunk

    def head_weight(self):
        return self.embed.weight if self.lm_head is None else self.lm_head.weight

    def forward(self, tokens, targets, cos, sin, n_valid):
        x = self.embed(tokens)
        for layer in self.layers:
            x = checkpoint(layer, x, cos, sin, use_reentrant=False)
        x = F.rms_norm(x, (x.shape[-1],), self.norm, self.eps)
        w = self.head_weight()
        total = x.new_zeros((), dtype=torch.float32)
        for c in range(0, x.shape[0], self.loss_chunk):
            total = total + checkpoint(chunk_loss, x[c:c + self.loss_chunk], w, targets[c:c + self.loss_chunk],
                                       use_reentrant=False)
        return total / n_valid


def chunk_loss(x, w, t):
    return F.cross_entropy((x @ w.t()).float(), t, ignore_index=-1, reduction="sum")


def matmul_params(m):
    d, f, L, V = m["hidden_size"], m["intermediate_size"], m["num_hidden_layers"], m["vocab_size"]
    hq, hkv, hd = m["num_attention_heads"], m["num_key_value_heads"], m["head_dim"]
    per_layer = d * (hq + 2 * hkv) * hd + hq * hd * d + 3 * d * f
    return L * per_layer + V * d


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("config", help="an autosp-train YAML config (its model section is used)")
    ap.add_argument("--seq-len", type=int, action="append", required=True, help="repeatable")
    ap.add_argument("--layers", type=int, help="override num_hidden_layers")
    ap.add_argument("--steps", type=int, default=6, help="timed steps (median reported)")
    ap.add_argument("--warmup", type=int, default=2)
    ap.add_argument("--compile", action="store_true", help="torch.compile each layer")
    ap.add_argument("--loss-chunk", type=int, default=8192)
    args = ap.parse_args()

    m, _ = load_model_config(args.config)
    if args.layers:
        m["num_hidden_layers"] = args.layers
    world = int(os.environ.get("WORLD_SIZE", os.environ.get("OMPI_COMM_WORLD_SIZE", "1")))
    rank = int(os.environ.get("RANK", os.environ.get("OMPI_COMM_WORLD_RANK", "0")))
    local = int(os.environ.get("LOCAL_RANK", os.environ.get("OMPI_COMM_WORLD_LOCAL_RANK", "0")))
    torch.cuda.set_device(local)
    sp = None
    if world > 1:
        os.environ.setdefault("MASTER_ADDR", "127.0.0.1")
        os.environ.setdefault("MASTER_PORT", "29533")
        dist.init_process_group("nccl", rank=rank, world_size=world, device_id=torch.device("cuda", local))
        sp = dist.group.WORLD
    torch.manual_seed(1234)
    dev = torch.device("cuda", local)
    model = Llama(m, sp, args.loss_chunk).to(dev)
    for p in model.parameters():
        if p.dim() == 2:
            nn.init.normal_(p, std=0.02)
    if args.compile:
        for i, layer in enumerate(model.layers):
            model.layers[i] = torch.compile(layer)
    opt = torch.optim.AdamW(model.parameters(), lr=3e-4, betas=(0.9, 0.95), weight_decay=0.1, fused=True)
    inv = rope_inv_freq(m).to(dev)
    N = matmul_params(m)
    impl = ("torch-compile" if args.compile else "torch-eager") + (f"-ulysses{world}" if world > 1 else "")

    for S in args.seq_len:
        assert S % world == 0, "seq_len must be divisible by the world size"
        s_loc = S // world
        pos = torch.arange(rank * s_loc, (rank + 1) * s_loc, device=dev, dtype=torch.float64)
        ang = pos[:, None] * inv[None, :]
        cos = torch.cos(ang).float()[:, None, :]  # [s, 1, hd/2]: rotate() works on the two halves
        sin = torch.sin(ang).float()[:, None, :]
        g = torch.Generator(device=dev).manual_seed(7)
        seq = torch.randint(0, m["vocab_size"], (S + 1,), device=dev, generator=g)
        tokens, targets = seq[:-1][rank * s_loc:(rank + 1) * s_loc], seq[1:][rank * s_loc:(rank + 1) * s_loc]
        torch.cuda.reset_peak_memory_stats(dev)
        times = []
        try:
            for it in range(args.warmup + args.steps):
                torch.cuda.synchronize()
                t0 = time.perf_counter()
                with torch.autocast("cuda", dtype=torch.bfloat16):
                    loss = model(tokens, targets, cos.to(torch.bfloat16), sin.to(torch.bfloat16), float(S))
                loss.backward()
                if world > 1:
                    flat = torch.cat([p.grad.reshape(-1) for p in model.parameters()])
                    dist.all_reduce(flat)
                    o = 0
                    for p in model.parameters():
                        p.grad.copy_(flat[o:o + p.numel()].view_as(p.grad))
                        o += p.numel()
                torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
                opt.step()
                opt.zero_grad(set_to_none=True)
                torch.cuda.synchronize()
                if it >= args.warmup:
                    times.append(time.perf_counter() - t0)
        except torch.OutOfMemoryError:
            if rank == 0:
                print(json.dumps({"impl": impl, "seq_len": S, "oom": True}), flush=True)
            opt.zero_grad(set_to_none=True)
            torch.cuda.empty_cache()
            continue
        times.sort()
        t = times[len(times) // 2]
        flops_tok = 6 * N + 6 * m["num_hidden_layers"] * S * m["num_attention_heads"] * m["head_dim"]
        tps = S / t
        tflops = tps * flops_tok / 1e12 / world
        if rank == 0:
            print(json.dumps({"impl": impl, "seq_len": S, "world": world, "layers": m["num_hidden_layers"],
                              "step_s": round(t, 4), "tokens_per_s": round(tps, 1),
                              "tflops_per_gpu": round(tflops, 1), "mfu": round(tflops / PEAK_TFLOPS, 4),
                              "peak_gib": round(torch.cuda.max_memory_allocated(dev) / 2**30, 2),
                              "loss": round(loss.item(), 4), "device": torch.cuda.get_device_name(dev)}),
                  flush=True)
    if world > 1:
        dist.destroy_process_group()


if __name__ == "__main__":
    sys.exit(main())
