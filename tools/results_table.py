#!/usr/bin/python3
"""results_table.py: resnet_ptq's --json (a table run) as the README's Markdown tables, one per model.

  build/release/examples/resnet_ptq --calib-seeds 3 --no-progress --json docs/figures/ablation.json
  tools/results_table.py docs/figures/ablation.json

Each row names its clipping prior, bit-allocation rule and the ACIQ factors it used; the
statistics protocol and the calibration sets are the same for every row of a model (the
line above its table says which).
"""
import json
import sys


def method(c):
    """Prior, rule and factors of a row, as the README's columns."""
    if c["abits"] == 32 and c["wbits"] == 32:
        return "-", "-", "-"
    prior = {"none": "min/max", "laplace": "Laplace", "gauss": "Gauss"}[c["clip"]] if c["abits"] < 32 else "-"
    alloc = []
    if c["bit_alloc_a"]:
        alloc.append("A")
    if c["bit_alloc_w"]:
        alloc.append("W")
    rule = f"{c['bit_alloc_rule']} ({', '.join(alloc)})" if alloc else "none"
    corr = " + ".join(n for n, k in (("bias", "bias_corr_w"), ("variance", "var_corr_w")) if c[k]) or "none"
    alphas = c["aciq_alphas"] if c["clip"] != "none" and c["abits"] < 32 else "-"
    return prior, f"{rule}; corr: {corr}", alphas


def main():
    with open(sys.argv[1]) as f:
        data = json.load(f)
    for m in data["models"]:
        print(f"\n{m['model']}: {m['rows'][0]['images']} test images; {m['calibration_sets']} calibration sets of "
              f"{m['calibration_images']} training images, statistics per {m['calibration_protocol']}\n")
        print(f"| configuration | top-1 (mean ± std over {m['calibration_sets']} sets) | top-1 per set | top-5 | "
              "clip prior | bit allocation; weight correction | ACIQ factors |")
        print("|---|---|---|---|---|---|---|")
        for r in m["rows"]:
            prior, rule, alphas = method(r["config"])
            per = ", ".join(f"{t:.2f}" for t in r["top1_per_set"])
            name = r["config"]["name"]
            if "ptq best" in name:
                name = "**" + name.split(":")[0] + "** (ptq, beyond the paper)"
            print(f"| {name} | {r['top1']:.2f} ± {r['top1_std']:.2f} | {per} | {r['top5']:.2f} | {prior} | {rule} | "
                  f"{alphas} |")


if __name__ == "__main__":
    main()
