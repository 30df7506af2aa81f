#!/usr/bin/env python3
"""A picture of one or more runs: training and validation loss, tokens/s,
MFU and device memory against the step, read from each run folder's
metrics.jsonl, in one PNG (several runs share each panel, for comparison).

  scripts/plot_run.py RUN_DIR... [-o run.png] [--title TEXT] [--labels A,B,...]

A run's label is its folder name unless --labels names them. Panels a run
has no figures for (MFU and memory on the CPU, validation without
data.val_path) show what the others have, or say that none has any.
matplotlib is installed with pip (--user) when it cannot be imported.
Exit status 2 for a missing or empty metrics.jsonl.
"""
import argparse
import json
import os
import subprocess
import sys

PROG = "plot_run"


def fail(msg):
    print(f"{PROG}: {msg}", file=sys.stderr)
    sys.exit(2)


def import_pyplot():
    try:
        import matplotlib
    except ImportError:
        print(f"{PROG}: matplotlib is missing: pip install --user matplotlib", file=sys.stderr)
        # --user: no root warning to give; the PATH note concerns scripts it does not need
        r = subprocess.run([sys.executable, "-m", "pip", "install", "--user", "--quiet", "--disable-pip-version-check",
                            "--root-user-action=ignore", "--no-warn-script-location", "matplotlib"])
        if r.returncode != 0:
            fail("could not install matplotlib with pip; install it (pip install matplotlib) and run again")
        import site
        import importlib
        site.addsitedir(site.getusersitepackages())
        importlib.invalidate_caches()
        import matplotlib
    matplotlib.use("Agg")   # files only, no display
    import matplotlib.pyplot as plt
    return plt


def read_run(folder):
    path = os.path.join(folder, "metrics.jsonl")
    if not os.path.isfile(path):
        fail(f"{path} does not exist: give run folders (io.run_dir) of autosp-train runs")
    train, val = [], []
    with open(path) as f:
        for n, line in enumerate(f, 1):
            if not line.strip():
                continue
            try:
                row = json.loads(line)
            except json.JSONDecodeError as e:
                fail(f"{path}:{n}: not a JSON line ({e.msg}); the file is damaged")
            if "val_loss" in row:
                val.append(row)
            elif "loss" in row:
                train.append(row)
    if not train:
        fail(f"{path} holds no training steps")
    # a resumed run may repeat steps: the last line of a step wins
    train = sorted({r["step"]: r for r in train}.values(), key=lambda r: r["step"])
    val = sorted({r["step"]: r for r in val}.values(), key=lambda r: r["step"])
    return train, val


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("runs", nargs="+", metavar="RUN_DIR")
    ap.add_argument("-o", "--output", default="run.png", help="the PNG to write (default run.png)")
    ap.add_argument("--title", default="", help="figure title")
    ap.add_argument("--labels", default="", help="comma-separated labels, one per run")
    a = ap.parse_args()
    labels = a.labels.split(",") if a.labels else [os.path.basename(os.path.normpath(r)) for r in a.runs]
    if len(labels) != len(a.runs):
        fail(f"--labels gives {len(labels)} labels for {len(a.runs)} runs")
    runs = [(lab,) + read_run(r) for lab, r in zip(labels, a.runs)]
    plt = import_pyplot()

    fig, ax = plt.subplots(2, 2, figsize=(11, 7), dpi=90)
    (loss, tps), (mfu, mem) = ax
    for i, (lab, train, val) in enumerate(runs):
        c = f"C{i}"
        steps = [r["step"] for r in train]
        loss.plot(steps, [r["loss"] for r in train], color=c, lw=1.2, label=f"{lab} train")
        if val:
            loss.plot([r["step"] for r in val], [r["val_loss"] for r in val], color=c, lw=1.6, ls="--",
                      marker="o", ms=3.5, label=f"{lab} validation")
        tps.plot(steps, [r.get("tokens_per_s", 0) for r in train], color=c, lw=1.2, label=lab)
        if any(r.get("mfu", 0) > 0 for r in train):
            mfu.plot(steps, [100 * r.get("mfu", 0) for r in train], color=c, lw=1.2, label=lab)
        if any(r.get("peak_gib", 0) > 0 for r in train):
            mem.plot(steps, [r.get("peak_gib", 0) for r in train], color=c, lw=1.2, label=lab)
    loss.set_title("loss (train: per step; validation: dashed)")
    loss.set_ylabel("cross entropy (nats)")
    tps.set_title("throughput")
    tps.set_ylabel("tokens / s")
    mfu.set_title("MFU")
    mfu.set_ylabel("% of the device's dense bf16 peak")
    mem.set_title("device memory")
    mem.set_ylabel("peak GiB")
    for p in (loss, tps, mfu, mem):
        p.set_xlabel("step")
        p.grid(alpha=0.3)
        if p.lines:
            p.legend(fontsize=8)
        else:
            p.text(0.5, 0.5, "not measured in these runs\n(CPU runs report neither MFU nor memory)",
                   ha="center", va="center", transform=p.transAxes, color="0.4")
    tps.set_ylim(bottom=0)
    if a.title:
        fig.suptitle(a.title)
    fig.tight_layout()
    tmp = a.output + ".tmp.png"
    fig.savefig(tmp)
    os.replace(tmp, a.output)   # never a half-written picture
    print(f"{PROG}: {len(runs)} run{'s' if len(runs) != 1 else ''} -> {a.output}")


if __name__ == "__main__":
    main()
