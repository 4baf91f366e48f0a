#!/usr/bin/python3
"""int_engine_accuracy.py: the integer engine's top-1 on the bundled models, and its export round trip.

Usage: int_engine_accuracy.py RESNET_PTQ WORKDIR [IMAGES]   (IMAGES test images, default 2000)

For each bundled model (ResNet-50, ResNet-18), one calibration set of 512 training images:
  1. W8A8 on the integer engine (`resnet_ptq --engine int`, min/max over the whole
     calibration set: --calib-stats pooled) within MAX_W8A8_DROP = 0.2 points of FP32.
     (With the reference's per-image statistics the averaged maxima clip, and W8A8 loses
     about 0.7 points in the paper's float simulation as well.)
  2. The paper's full method at W4A4 (--clip laplace --bit-alloc-a --bit-alloc-w
     --bias-corr-w) on the integer engine no more than MAX_W4A4_GAP = 0.3 points below the
     paper's float simulation of the same configuration (its top-1 in the same row). The
     integer scheme differs from that simulation on purpose (int_model.hpp: activation
     scales folded into the next weights, block outputs on an 8-bit grid, the input on an
     8-bit grid, float logits); on the bundled models it comes out above it, so the bound
     is one-sided: the engine must not lose accuracy to the scheme.
  3. The integer engine and the float simulation of the integer scheme (int_model.hpp's
     simulation()) agree within MAX_SIM_IMAGES images' worth of top-1 in every row: their
     logits differ only by float rounding and output-stage ties, which move an image near
     a decision boundary now and then (test_int_engine.cpp checks the logits).
  4. --export writes the W4A4 model; `resnet_ptq --weights FILE.ptq.npz --images X.npy
     --labels Y.npy` runs it without the float weights and gets exactly the same top-1;
     the file is at most 1/7 of the FP32 .npz (the issue's size goal).
Each value is compared with a number computed in the same run, never a stored one.
"""
import json
import os
import subprocess
import sys

MAX_W8A8_DROP = 0.2
MAX_W4A4_GAP = 0.3
MAX_SIM_IMAGES = 3  # engine vs its scheme's simulation: at most 3 images' worth of top-1 (0.15 at 2 000)

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
exe, work = sys.argv[1], sys.argv[2]
images = int(sys.argv[3]) if len(sys.argv) > 3 else 2000
os.makedirs(work, exist_ok=True)
failures = []
FULL = ["--clip", "laplace", "--bit-alloc-a", "--bit-alloc-w", "--bias-corr-w"]


def run(args, name):
    out = os.path.join(work, name + ".json")
    subprocess.run([exe, "--limit", str(images), "--no-progress", "--json", out] + args, check=True)
    with open(out) as f:
        return json.load(f)


def check(ok, what):
    print(("ok   " if ok else "FAIL ") + what)
    if not ok:
        failures.append(what)


for model in ("resnet50", "resnet18"):
    fp32 = run(["--model", model, "--wbits", "32", "--abits", "32"], model + "_fp32")["top1"]
    w8 = run(["--model", model, "--wbits", "8", "--abits", "8", "--calib-stats", "pooled", "--engine", "int"],
             model + "_w8a8")
    export = os.path.join(work, model + "_w4a4.ptq.npz")
    w4 = run(["--model", model, "--wbits", "4", "--abits", "4", "--export", export] + FULL, model + "_w4a4")
    check(w8["int_top1"] >= fp32 - MAX_W8A8_DROP,
          f"{model}: integer W8A8 {w8['int_top1']:.2f} within {MAX_W8A8_DROP} of FP32 {fp32:.2f}")
    check(w4["int_top1"] >= w4["top1"] - MAX_W4A4_GAP,
          f"{model}: integer W4A4 full {w4['int_top1']:.2f} at most {MAX_W4A4_GAP} below the paper's float "
          f"simulation {w4['top1']:.2f}")
    for name, row in (("W8A8", w8), ("W4A4", w4)):
        gap = max(0.1, 100.0 * MAX_SIM_IMAGES / images)
        check(abs(row["int_top1"] - row["int_scheme_top1"]) <= gap + 1e-9,
              f"{model} {name}: integer engine {row['int_top1']:.2f} and the integer scheme's float simulation "
              f"{row['int_scheme_top1']:.2f} within {gap:.2f}")

    # The exported model on its own (test images as .npy, the model's normalization).
    meta = os.path.join(ROOT, "examples", "resnet50", f"fashion_{model}.json")
    x, y = os.path.join(work, model + "_x.npy"), os.path.join(work, model + "_y.npy")
    subprocess.run([sys.executable, os.path.join(ROOT, "tools", "fashion_npy.py"), "--split", "t10k", "--first", "0",
                    "--count", str(images), "--meta", meta, "--out", x, "--labels-out", y], check=True)
    out = os.path.join(work, model + "_exported.json")
    subprocess.run([exe, "--weights", export, "--images", x, "--labels", y, "--no-progress", "--json", out],
                   check=True)
    with open(out) as f:
        exported = json.load(f)
    check(exported["int_top1"] == w4["int_top1"],
          f"{model}: the exported model's top-1 {exported['int_top1']:.2f} equals the in-memory engine's "
          f"{w4['int_top1']:.2f}")
    fp32_bytes = os.path.getsize(os.path.join(ROOT, "examples", "resnet50", f"fashion_{model}.npz"))
    size = os.path.getsize(export)
    check(size * 7 <= fp32_bytes, f"{model}: exported W4A4 {size} bytes <= 1/7 of the FP32 .npz ({fp32_bytes} bytes): "
                                  f"ratio 1/{fp32_bytes / size:.2f}")

if failures:
    print(f"{len(failures)} check(s) failed")
    sys.exit(1)
print("all checks passed")
