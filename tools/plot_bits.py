#!/usr/bin/python3
"""plot_bits.py: top-1 against the bit width (W = A = 2..8): naive, the paper's full method, ptq's closed forms, learned rounding.

Runs resnet_ptq (the release build) on the bundled models, one configuration at a time,
with the same calibration sets for every point, keeps every result in a JSON cache (a
second run with the same cache only plots), and draws one panel per model:

  tools/plot_bits.py --exe build/release/examples/resnet_ptq --cache docs/figures/bits.json \\
      --out docs/figures/bits.png [--calib-seeds 3] [--limit N]

Configurations (resnet_ptq flags):
  naive        --wbits M --abits M
  paper        --wbits M --abits M --clip laplace --bit-alloc-a --bit-alloc-w --bias-corr-w
               (the reference's rule, tables and edge layers: resnet_ptq's defaults)
  ptq best     the flags of options.hpp's best_config (Gaussian prior, exact alphas, exact
               bit allocation, bias and variance correction)
  ptq + AdaRound
               beyond the paper (issue 12): searched clipping, empirical bias correction of
               activations, learned rounding per conv (--adaround at its defaults: 64
               images, 2000 iterations, through the ReLU), per-channel activations with bit
               allocation joint over each residual add's two inputs (--bit-alloc-a-scope add)
  ptq + AdaRound, per-tensor activations
               the same with --per-tensor-a (what integer hardware runs) instead of
               --bit-alloc-a
Every point is the float simulation; the integer engine's rows are in README's tables.
Error bars: one standard deviation over the calibration sets.
"""
import argparse
import json
import os
import subprocess
import tempfile

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

CONFIGS = {
    "naive": [],
    "paper's full method": ["--clip", "laplace", "--bit-alloc-a", "--bit-alloc-w", "--bias-corr-w"],
    "ptq best": ["--clip", "gauss", "--bit-alloc-a", "--bit-alloc-w", "--bias-corr-w", "--var-corr-w",
                 "--bit-alloc-rule", "exact", "--aciq-alphas", "exact"],
    "ptq + AdaRound": ["--clip", "search", "--bit-alloc-w", "--bias-corr-w", "--bias-corr-a", "--adaround",
                       "--bit-alloc-a", "--bit-alloc-a-scope", "add"],
    "ptq + AdaRound, per-tensor activations": ["--clip", "search", "--bit-alloc-w", "--bias-corr-w",
                                               "--bias-corr-a", "--adaround", "--per-tensor-a"],
}
MODELS = ("resnet50", "resnet18")


def command(exe, model, m, calib_seeds, limit, flags):
    cmd = [exe, "--model", model, "--wbits", str(m), "--abits", str(m), "--calib-seeds", str(calib_seeds),
           "--no-progress"] + flags
    return cmd + (["--limit", str(limit)] if limit else [])


def main():
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter,
                                epilog=__doc__.split("\n", 2)[2])
    p.add_argument("--exe", default="build/release/examples/resnet_ptq")
    p.add_argument("--cache", default="docs/figures/bits.json")
    p.add_argument("--out", default="docs/figures/bits.png")
    p.add_argument("--calib-seeds", type=int, default=3)
    p.add_argument("--limit", type=int, default=0, help="test images (0: all 10 000)")
    p.add_argument("--bits", default="2,3,4,5,6,7,8")
    p.add_argument("--configs", default=";".join(CONFIGS),
                   help="semicolon-separated configuration names to run (names contain commas; all are plotted "
                        "that have points)")
    a = p.parse_args()
    cache = {}
    if os.path.exists(a.cache):
        with open(a.cache) as f:
            cache = json.load(f)
    bits = [int(b) for b in a.bits.split(",")]
    run = a.configs.split(";")
    for name in run:
        if name not in CONFIGS:
            p.error(f"--configs: unknown configuration {name!r} (known: {', '.join(CONFIGS)})")
    for model in MODELS:
        for name, flags in CONFIGS.items():
            if name not in run:
                continue
            for m in bits:
                key = f"{model}|{name}|{m}|{a.calib_seeds}|{a.limit}"
                if key in cache:
                    continue
                cmd = command(a.exe, model, m, a.calib_seeds, a.limit, flags)
                with tempfile.NamedTemporaryFile(suffix=".json") as t:
                    subprocess.run(cmd + ["--json", t.name], check=True, stdout=subprocess.DEVNULL)
                    with open(t.name) as f:
                        row = json.load(f)
                cache[key] = {"top1": row["top1"], "top1_std": row["top1_std"],
                              "top1_per_set": row["top1_per_set"], "seconds": row.get("seconds"),
                              "command": " ".join(cmd)}
                print(f"{key}: {row['top1']:.2f} ± {row['top1_std']:.2f}", flush=True)
                with open(a.cache, "w") as f:
                    json.dump(cache, f, indent=1, sort_keys=True)
    fig, axes = plt.subplots(1, len(MODELS), figsize=(12, 4.6), squeeze=False)
    for ax, model in zip(axes[0], MODELS):
        for name, style in zip(CONFIGS, ("o-", "s-", "^-", "D-", "v--")):
            keys = [f"{model}|{name}|{m}|{a.calib_seeds}|{a.limit}" for m in bits]
            if not all(k in cache for k in keys):
                continue
            pts = [cache[k] for k in keys]
            ax.errorbar(bits, [q["top1"] for q in pts], yerr=[q["top1_std"] for q in pts], fmt=style, capsize=3,
                        label=name)
        ax.set_xlabel("bits (weights = activations; first conv and classifier at 8)")
        ax.set_ylabel("top-1 (%)")
        ax.set_title(f"fashion_{model}: mean ± std over {a.calib_seeds} calibration sets", fontsize=10)
        ax.set_ylim(0, 100)
        ax.grid(alpha=0.3)
        ax.legend(loc="lower right")
    fig.tight_layout()
    fig.savefig(a.out, dpi=110)


if __name__ == "__main__":
    main()
