#!/usr/bin/python3
"""plot_aciq_mse.py: the paper's Figure 1, MSE against the clipping value, analytic (ptq::aciq_mse) beside simulated.

The analytic curves and optima come from the library: this script runs
examples/aciq_mse_curve (CSV: dist,bits,alpha,mse_analytic,alpha_opt from ptq::aciq_mse and
ptq::aciq_alpha_bins). It simulates the same quantizer on 10^6 seeded samples of Laplace(0, 1)
and Gauss(0, 1) over the same alpha grid and writes docs/figures/aciq_mse.png: one panel per
distribution, M = 2, 3, 4 bits, analytic lines, simulated markers, the optimum marked.

The simulated quantizer is the one the analytic model describes (docs/method.md section 1):
signed range [-a, a] cut into 2^M bins of width D = 2a / 2^M, an in-range value reconstructed at
its bin's midpoint (noise D^2/12 = a^2 / (3 * 4^M) when the density is flat over a bin), a value
beyond +-a reconstructed at +-a (clipping noise (|x| - a)^2). It prints the largest relative gap
|sim - analytic| / analytic over the grid points within [0.8, 1.25] x alpha_opt (a few %). Far
above the optimum the bins get wide and the density is no longer flat over one bin, so the
simulated MSE exceeds the model there (Laplace, M = 2, alpha = 8: about twice).

Usage: tools/plot_aciq_mse.py [--exe build/release/examples/aciq_mse_curve] [--out docs/figures/aciq_mse.png]
Needs Debian's python3-matplotlib and python3-numpy.
"""
import argparse
import csv
import io
import subprocess
import sys

import numpy as np
import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
from matplotlib.lines import Line2D  # noqa: E402

SAMPLES = 10**6
SEED = 20190
MARKER_EVERY = 8  # simulated markers on every 8th grid point (all points are simulated near the optimum)
WINDOW = (0.8, 1.25)  # the gap is measured for alpha in [0.8, 1.25] x alpha_opt
DISTS = (("laplace", "Laplace(0, 1)"), ("gauss", "Gauss(0, 1)"))
COLORS = {2: "tab:blue", 3: "tab:orange", 4: "tab:green"}


def read_curves(exe):
    """{(dist, bits): (alpha[], mse[], alpha_opt)} from the program's CSV."""
    out = subprocess.run([exe], check=True, capture_output=True, text=True).stdout
    rows = {}
    for r in csv.DictReader(io.StringIO(out)):
        key = (r["dist"], int(r["bits"]))
        rows.setdefault(key, ([], [], float(r["alpha_opt"])))
        rows[key][0].append(float(r["alpha"]))
        rows[key][1].append(float(r["mse_analytic"]))
    return {k: (np.array(a), np.array(m), opt) for k, (a, m, opt) in rows.items()}


def simulated_mse(x, alpha, bits):
    """MSE of the model's quantizer: clip to [-alpha, alpha], 2^bits bins, mid-bin values, clipped at +-alpha."""
    bins = 2**bits
    delta = 2.0 * alpha / bins
    xc = np.clip(x, -alpha, alpha)
    k = np.minimum(np.floor((xc + alpha) / delta), bins - 1)
    q = -alpha + (k + 0.5) * delta
    q = np.where(np.abs(x) > alpha, xc, q)  # beyond the range: reconstructed at +-alpha
    return float(np.mean((x - q) ** 2))


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--exe", default="build/release/examples/aciq_mse_curve")
    ap.add_argument("--out", default="docs/figures/aciq_mse.png")
    args = ap.parse_args()

    curves = read_curves(args.exe)
    rng = np.random.default_rng(SEED)
    samples = {"laplace": rng.laplace(0.0, 1.0, SAMPLES), "gauss": rng.standard_normal(SAMPLES)}

    fig, axes = plt.subplots(1, 2, figsize=(12, 4.8))
    worst = 0.0
    for ax, (dist, title) in zip(axes, DISTS):
        x = samples[dist]
        for bits in (2, 3, 4):
            alpha, mse, opt = curves[(dist, bits)]
            near = (alpha >= WINDOW[0] * opt) & (alpha <= WINDOW[1] * opt)
            marked = np.zeros(alpha.size, dtype=bool)
            marked[MARKER_EVERY - 1 :: MARKER_EVERY] = True
            idx = np.flatnonzero(near | marked)
            sim = np.array([simulated_mse(x, a, bits) for a in alpha[idx]])
            sel = near[idx]
            gap = np.max(np.abs(sim[sel] - mse[idx][sel]) / mse[idx][sel])
            worst = max(worst, gap)
            sim_opt = alpha[idx][np.argmin(sim)]
            mse_opt = float(np.interp(opt, alpha, mse))
            print(f"{dist:7s} M={bits}: alpha* = {opt:.6f} (simulated argmin on the grid {sim_opt:.3f}), "
                  f"max |sim - analytic| / analytic near alpha* = {100 * gap:.2f}%")

            c = COLORS[bits]
            ax.plot(alpha, mse, color=c, lw=1.6, label=f"M = {bits} bits")
            m = marked[idx]
            ax.plot(alpha[idx][m], sim[m], "o", ms=4, mfc="none", color=c)
            ax.axvline(opt, color=c, ls=":", lw=1)
            ax.plot([opt], [mse_opt], "*", ms=13, color=c, mec="black", mew=0.6, zorder=5)
            ax.annotate(f"$\\alpha^*$ = {opt:.2f}", (opt, mse_opt), xytext=(0, -20), textcoords="offset points",
                        ha="center", fontsize=9, color=c, fontweight="bold",
                        bbox=dict(boxstyle="round,pad=0.15", fc="white", ec="none", alpha=0.85))
        ax.set_yscale("log")
        ax.set_xlim(0.0, alpha[-1])
        lows = [curves[(dist, b)][1].min() for b in (2, 3, 4)]
        ax.set_ylim(0.6 * min(lows), 2.5)
        ax.set_title(f"{title}, signed range [$-\\alpha$, $\\alpha$], $2^M$ bins")
        ax.set_xlabel("clipping value $\\alpha$ (units of b for Laplace, $\\sigma$ for Gauss)")
        ax.set_ylabel("MSE (units of b$^2$ / $\\sigma^2$)")
        ax.grid(True, which="both", alpha=0.3)
        handles, _ = ax.get_legend_handles_labels()
        handles += [
            Line2D([], [], color="black", lw=1.6, label="analytic: ptq::aciq_mse"),
            Line2D([], [], color="black", ls="none", marker="o", ms=4, mfc="none", label="simulated, $10^6$ samples"),
            Line2D([], [], color="black", ls="none", marker="*", ms=11, label="optimum $\\alpha^*$ (aciq_alpha_bins)"),
        ]
        ax.legend(handles=handles, fontsize=8, loc="upper right")
    fig.suptitle("ACIQ: clipping + quantization MSE against the clipping value (stars: optimum $\\alpha^*$)")
    fig.tight_layout()
    fig.savefig(args.out, dpi=130)
    print(f"largest relative gap near the optimum: {100 * worst:.2f}%")
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
