#!/usr/bin/python3
"""plot_ablation.py: the paper's ablation of the bundled models as bars, calibration spread as error bars.

Input: the --json of a resnet_ptq table run with several calibration sets, e.g.

  build/release/examples/resnet_ptq --calib-seeds 3 --no-progress --json docs/figures/ablation.json
  tools/plot_ablation.py docs/figures/ablation.json docs/figures/ablation.png

One panel per model; one bar per row (mean top-1 over the calibration sets), the error bar
one standard deviation over the sets, the FP32 top-1 as a dashed line. The project's best
configuration is drawn in another colour.
"""
import json
import sys

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402


def short(name):
    """A row name short enough for an axis label."""
    if "ptq best" in name:
        return name.split(":")[0]
    return (name.replace("paper's full method", "full (paper)").replace(" (+bias corr W)", "")
            .replace("+bit alloc A, W (paper)", "+BA A,W").replace("+bit alloc A (paper)", "+BA A")
            .replace(" +bit alloc A +bit alloc W (exact) +bias corr W +var corr W [exact alphas]", " BA(exact) +BC +VC")
            .replace("W4A4 +ACIQ (Laplace)", "+ACIQ"))


def main():
    if len(sys.argv) != 3:
        sys.exit("usage: plot_ablation.py RESNET_PTQ.json OUT.png")
    with open(sys.argv[1]) as f:
        data = json.load(f)
    models = data["models"]
    fig, axes = plt.subplots(1, len(models), figsize=(6.5 * len(models), 5.2), squeeze=False)
    for ax, m in zip(axes[0], models):
        rows = m["rows"]
        names = [short(r["config"]["name"]) for r in rows]
        top1 = [r["top1"] for r in rows]
        err = [r.get("top1_std", 0.0) for r in rows]
        colors = ["tab:green" if "best" in r["config"]["name"] else "tab:gray" if r["config"]["wbits"] == 32
                  else "tab:blue" for r in rows]
        x = range(len(rows))
        ax.bar(x, top1, yerr=err, color=colors, capsize=3)
        fp32 = next(r["top1"] for r in rows if r["config"]["wbits"] == 32 and r["config"]["abits"] == 32)
        ax.axhline(fp32, color="k", ls="--", lw=0.8, label=f"FP32 {fp32:.2f}")
        lo = min(t - e for t, e in zip(top1, err))
        ax.set_ylim(max(0.0, lo - 3), min(100.0, max(t + e for t, e in zip(top1, err)) + 1.0))
        ax.set_xticks(list(x))
        ax.set_xticklabels(names, rotation=55, ha="right", fontsize=8)
        ax.set_ylabel("top-1 (%)")
        ax.set_title(f"{m['model']}: {m['calibration_sets']} calibration sets of {m['calibration_images']}, "
                     f"statistics per {m['calibration_protocol']}", fontsize=9)
        ax.legend(loc="lower left", fontsize=8)
        for xi, t in zip(x, top1):
            ax.text(xi, t + 0.2, f"{t:.1f}", ha="center", va="bottom", fontsize=7)
    fig.tight_layout()
    fig.savefig(sys.argv[2], dpi=110)


if __name__ == "__main__":
    main()
