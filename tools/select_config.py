#!/usr/bin/python3
"""select_config.py: compare candidate quantization configurations on held-out images, never the test set.

How ptq's "best" configuration (examples/resnet50/options.hpp: best_config) was chosen.
Every candidate runs through resnet_ptq on the same held-out images with the same K
disjoint calibration sets; the table gives top-1 as mean ± std over the sets and the gap
to FP32, and the candidates are ranked by the mean gap over every bit width asked for.

  tools/fashion_npy.py --split train --first 50000 --count 10000 --meta M.json --out ho.npy --labels-out ho_y.npy
  tools/fashion_npy.py --split train --first 0 --count 1536 --meta M.json --out calib.npy
  tools/select_config.py --exe build/release/examples/resnet_ptq --weights M.npz --images ho.npy \\
      --labels ho_y.npy --calib calib.npy --calib-seeds 3 --bits 4,3 [--limit 5000] [--json out.json]

(The bundled ResNet-18 never saw training images 50 000-59 999; the ResNet-50 was trained
on all 60 000, so for it they are only weakly held out.)
"""
import argparse
import json
import subprocess
import tempfile

PAPER = ["--clip", "laplace", "--bit-alloc-a", "--bit-alloc-w", "--bias-corr-w"]
EXACT = ["--bit-alloc-rule", "exact", "--aciq-alphas", "exact"]
# name -> (flags, calibration protocol flags)
CANDIDATES = {
    "paper (Laplace, reference rule and tables)": (PAPER, []),
    "paper, Gauss prior": (["--clip", "gauss"] + PAPER[2:], []),
    "Laplace, exact rule and alphas": (PAPER + EXACT, []),
    "Gauss, exact rule and alphas": (["--clip", "gauss"] + PAPER[2:] + EXACT, []),
    "Gauss, exact, +var corr W": (["--clip", "gauss"] + PAPER[2:] + EXACT + ["--var-corr-w"], []),
    "Gauss, exact, edge aciq": (["--clip", "gauss"] + PAPER[2:] + EXACT + ["--edge-act", "aciq"], []),
    "Gauss, exact, pooled statistics": (["--clip", "gauss"] + PAPER[2:] + EXACT, ["--calib-stats", "pooled"]),
    "Gauss, exact, batch-64 statistics": (["--clip", "gauss"] + PAPER[2:] + EXACT,
                                          ["--calib-stats", "batch", "--calib-batch", "64"]),
    "Laplace, exact, pooled statistics": (PAPER + EXACT, ["--calib-stats", "pooled"]),
    "paper rule and tables, Gauss, +var corr W": (["--clip", "gauss"] + PAPER[2:] + ["--var-corr-w"], []),
    "Laplace, exact, +var corr W": (PAPER + EXACT + ["--var-corr-w"], []),
}


def run(a, flags, bits):
    with tempfile.NamedTemporaryFile(suffix=".json") as t:
        cmd = [a.exe, "--weights", a.weights, "--images", a.images, "--labels", a.labels, "--calib", a.calib,
               "--calib-seeds", str(a.calib_seeds), "--no-progress", "--json", t.name]
        if bits:
            cmd += ["--wbits", str(bits), "--abits", str(bits)]
        if a.limit:
            cmd += ["--limit", str(a.limit)]
        subprocess.run(cmd + flags, check=True, stdout=subprocess.DEVNULL)
        with open(t.name) as f:
            return json.load(f)


def main():
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter,
                                epilog=__doc__.split("\n", 2)[2])
    for flag in ("--exe", "--weights", "--images", "--labels", "--calib"):
        p.add_argument(flag, required=True)
    p.add_argument("--calib-seeds", type=int, default=3)
    p.add_argument("--bits", default="4,3")
    p.add_argument("--limit", type=int, default=0)
    p.add_argument("--only", help="comma-separated candidate numbers (1-based) to run")
    p.add_argument("--json")
    a = p.parse_args()
    bits = [int(b) for b in a.bits.split(",")]
    fp32 = run(a, [], 0)
    print(f"FP32 top-1 {fp32['top1']:.2f} on {fp32['images']} held-out images")
    print("| candidate | " + " | ".join(f"W{b}A{b} top-1 | gap" for b in bits) + " | mean gap |")
    print("|---|" + "---|---|" * len(bits) + "---|")
    names = list(CANDIDATES)
    if a.only:
        names = [names[int(i) - 1] for i in a.only.split(",")]
    results = {}
    for name in names:
        flags, proto = CANDIDATES[name]
        rows = {b: run(a, flags + proto, b) for b in bits}
        gaps = [fp32["top1"] - rows[b]["top1"] for b in bits]
        results[name] = {"flags": flags + proto, "rows": {str(b): rows[b] for b in bits}, "mean_gap": sum(gaps) / len(gaps)}
        cells = " | ".join(f"{rows[b]['top1']:.2f} ± {rows[b]['top1_std']:.2f} | {g:.2f}" for b, g in zip(bits, gaps))
        print(f"| {name} | {cells} | {sum(gaps) / len(gaps):.2f} |", flush=True)
    best = min(results, key=lambda n: results[n]["mean_gap"])
    print(f"lowest mean gap: {best}")
    if a.json:
        with open(a.json, "w") as f:
            json.dump({"fp32": fp32, "candidates": results, "best": best}, f, indent=1)


if __name__ == "__main__":
    main()
