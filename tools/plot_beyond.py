#!/usr/bin/env python3
"""plot_beyond.py: the README's "Beyond the paper" figure: each row's best configuration against the paper's full method.

Reads resnet_ptq --json files (mean and std over calibration sets, float simulation and integer engine):
  --paper  docs/figures/data_steps_test.json     the paper's full method (Laplace, no searched clip, no learned rounding)
                                                 and each model's FP32 top-1
  --best   docs/figures/bit_alloc_scope_test.json and docs/figures/per_tensor_test.json   the best configurations
and draws, per model, top-1 minus FP32 for W4A4 per channel, W4A4 per tensor, W3A3 and W2A4, with the issue's goals.
Bars below the axis's floor are drawn to the floor and labelled with their value.

  tools/plot_beyond.py [--out docs/figures/beyond.png]
"""
import argparse
import json
import os

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
FIG = os.path.join(ROOT, "docs", "figures")
ROWS = [("W4A4\nper channel", 4, 4, False, 0.3), ("W4A4\nper tensor", 4, 4, True, 0.8),
        ("W3A3", 3, 3, False, 1.5), ("W2A4", 2, 4, False, None)]
FLOOR = -4.0


def model_of(row, fallback=None):
    m = row.get("model") or fallback or ""
    if not m:  # older files name the model only in the command
        cmd = row.get("command", "")
        m = "resnet18" if "resnet18" in cmd else "resnet50" if "resnet50" in cmd else ""
    return m.replace("fashion_", "")


def rows_of(path):
    d = json.load(open(path))
    if "models" in d:
        return [(model_of(r, m.get("model")), r) for m in d["models"] for r in m["rows"]]
    return [(model_of(r), r) for r in d["rows"]]


def key(row):
    c = row["config"]
    return c["wbits"], c["abits"], bool(c.get("per_tensor_a"))


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--paper", default=os.path.join(FIG, "data_steps_test.json"))
    ap.add_argument("--best", nargs="+", default=[os.path.join(FIG, "bit_alloc_scope_test.json"),
                                                  os.path.join(FIG, "per_tensor_test.json")])
    ap.add_argument("--out", default=os.path.join(FIG, "beyond.png"))
    a = ap.parse_args()

    fp32 = {model_of({}, m["model"]): m["fp32_top1"] for m in json.load(open(a.paper))["models"]}
    paper, best = {}, {}
    for m, r in rows_of(a.paper):
        c = r["config"]
        if c["clip"] == "laplace" and not c.get("adaround") and c.get("bias_corr_w"):
            paper[(m,) + key(r)] = r
    for path in a.best:
        for m, r in rows_of(path):
            best[(m,) + key(r)] = r  # later files win (the per-tensor file has more calibration sets)

    fig, axes = plt.subplots(1, 2, figsize=(11, 4.2), sharey=True)
    width = 0.26
    for ax, m in zip(axes, ["resnet50", "resnet18"]):
        for i, (label, w, ab, pt, goal) in enumerate(ROWS):
            k = (m, w, ab, pt)
            bars = [("paper's full method", paper.get(k), "top1", "#9e9e9e"),
                    ("best, float simulation", best.get(k), "top1", "#1f77b4"),
                    ("best, integer engine", best.get(k), "int_top1", "#ff7f0e")]
            for j, (name, r, field, color) in enumerate(bars):
                if r is None or field not in r:
                    continue
                v = r[field] - fp32[m]
                sd = r.get(field + "_std", 0.0)
                x = i + (j - 1) * width
                ax.bar(x, max(v, FLOOR), width, color=color, label=name if i == 0 else None,
                       yerr=sd if v > FLOOR else None, capsize=2)
                if v < FLOOR:
                    ax.text(x, FLOOR + 0.1, f"{v:.1f}", ha="center", va="bottom", fontsize=8, rotation=90, color="white")
            if goal is not None:
                ax.hlines(-goal, i - 1.5 * width, i + 1.5 * width, colors="red", linestyles="dashed",
                          label="goal" if i == 0 else None)
        ax.axhline(0, color="black", linewidth=0.6)
        ax.set_xticks(range(len(ROWS)))
        ax.set_xticklabels([r[0] for r in ROWS])
        ax.set_ylim(FLOOR, 0.4)
        ax.set_title(f"{m.replace('resnet', 'ResNet-')} (FP32 {fp32[m]:.2f})")
        ax.grid(axis="y", alpha=0.3)
    axes[0].set_ylabel("top-1 - FP32 (10 000 test images)")
    axes[1].legend(fontsize=8, loc="lower left")
    fig.suptitle("Beyond the paper: best configuration per row, mean ± std over calibration sets")
    fig.tight_layout()
    fig.savefig(a.out, dpi=110)
    print("wrote", a.out)


if __name__ == "__main__":
    main()
