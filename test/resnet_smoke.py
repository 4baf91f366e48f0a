#!/usr/bin/python3
"""resnet_smoke.py: the README's main job (resnet_ptq's default table on both bundled models), and each step of the method at work.

Usage: resnet_smoke.py RESNET_PTQ OUT.json [IMAGES [STEP_IMAGES [CALIB_LIMIT]]]
  IMAGES       test images of the default table (default 500)
  STEP_IMAGES  test images of the step check (default 1000; 0: no step check)
  CALIB_LIMIT  calibration images of the default table (default 0: all 512, the main job's)

1. The default table (no arguments but --limit): FP32 top-1 >= 90 % on both models, W8A8
   within 1.5 points of FP32, and every 4-bit row within 5 points of FP32 (on the 10 000
   test images the largest gap is 2.0; the edge-layer bug, 4-bit first conv and classifier,
   gave 16.5). Which 4-bit row is best is not checked here: on a few hundred images the
   rows differ by less than the sampling noise; part 2 checks the method.
2. Every step of the paper's method must show its effect, so that the test fails when one
   is switched off or broken: at W3A3 on the bundled ResNet-50 (where each step matters;
   at W4A4 naive 4-bit is already within about 2 points of FP32 on these models), the
   full method (--clip laplace --bit-alloc-a --bit-alloc-w --bias-corr-w) must beat the
   full method without each one of its four steps by at least MARGIN points of top-1,
   both as the mean over 3 disjoint calibration sets of 512 training images, on
   STEP_IMAGES test images. Measured on 2 000 images (README, "Each step's effect"):
   ACIQ +5.6, bit allocation A +3.1, bit allocation W +4.7, bias correction W +17.2
   points; the least reliable step, bit allocation A, gives +5.4, -1.2 and +5.2 on the
   three sets (std of its mean effect 2.1), so MARGIN = 1.0 is about one standard
   deviation below its measured mean, while a disabled step gives 0. On the first 1 000
   images (the ctest's default, half the time) the effects are +5.5, +3.2, +5.3 and +16.5:
   the spread across calibration sets, not the test images, sets the margin.
STEP_IMAGES = 0 skips part 2. The ci preset runs it; the asan and portable presets do not
run this test (resnet_ptq runs under the sanitizers in the ImageNet-stem fidelity test).
"""
import json
import subprocess
import sys

MARGIN = 1.0

exe, out = sys.argv[1], sys.argv[2]
images = int(sys.argv[3]) if len(sys.argv) > 3 else 500
step_images = int(sys.argv[4]) if len(sys.argv) > 4 else 1000
calib_limit = int(sys.argv[5]) if len(sys.argv) > 5 else 0
failures = []

subprocess.run([exe, "--limit", str(images), "--no-progress", "--json", out] +
               (["--calib-limit", str(calib_limit)] if calib_limit > 0 else []), check=True)
with open(out) as f:
    models = json.load(f)["models"]
if [m["model"] for m in models] != ["fashion_resnet50", "fashion_resnet18"]:
    failures.append(f"the default run's models are {[m['model'] for m in models]}")
for m in models:
    rows = {r["config"]["name"]: r for r in m["rows"]}
    for name, r in rows.items():
        print(f"{m['model']}: {name}: top-1 {r['top1']:.2f}, top-5 {r['top5']:.2f}, {r['seconds']:.1f} s")
        if r["images"] != images:
            failures.append(f"{m['model']}: {name}: {r['images']} images, not {images}")
    fp32, w8a8 = rows["FP32"]["top1"], rows["W8A8"]["top1"]
    if fp32 < 90:
        failures.append(f"{m['model']}: FP32 top-1 {fp32} < 90")
    if abs(w8a8 - fp32) > 1.5:
        failures.append(f"{m['model']}: W8A8 {w8a8} is more than 1.5 points from FP32 {fp32}")
    four = {n: r["top1"] for n, r in rows.items() if r["config"]["wbits"] == 4 and r["config"]["abits"] == 4}
    if len(four) != 6 or not any("ptq best" in n for n in four):
        failures.append(f"{m['model']}: the table's W4A4 rows are {sorted(four)}")
    for n, t in four.items():
        if t < fp32 - 5:
            failures.append(f"{m['model']}: {n} {t} is more than 5 points below FP32 {fp32}")

FULL = ["--clip", "laplace", "--bit-alloc-a", "--bit-alloc-w", "--bias-corr-w"]
WITHOUT = {
    "ACIQ": ["--bit-alloc-a", "--bit-alloc-w", "--bias-corr-w"],
    "bit allocation A": ["--clip", "laplace", "--bit-alloc-w", "--bias-corr-w"],
    "bit allocation W": ["--clip", "laplace", "--bit-alloc-a", "--bias-corr-w"],
    "bias correction W": ["--clip", "laplace", "--bit-alloc-a", "--bit-alloc-w"],
}


def top1(flags):
    subprocess.run([exe, "--model", "resnet50", "--limit", str(step_images), "--wbits", "3", "--abits", "3",
                    "--calib-seeds", "3", "--no-progress", "--json", out] + flags, check=True, stdout=subprocess.DEVNULL)
    with open(out) as f:
        return json.load(f)["top1"]


if step_images == 0:
    WITHOUT = {}
    print("no step check (STEP_IMAGES = 0)")
else:
    full = top1(FULL)
    print(f"W3A3 full method: {full:.2f} on {step_images} images (mean over 3 calibration sets)")
for step, flags in WITHOUT.items():
    t = top1(flags)
    print(f"W3A3 without {step}: {t:.2f} (effect {full - t:+.2f}, needed >= {MARGIN})")
    if full - t < MARGIN:
        failures.append(f"W3A3: {step} adds {full - t:+.2f} points (< {MARGIN}): full {full}, without {t}")

if failures:
    sys.exit("FAILED: " + "; ".join(failures))
print("resnet smoke: all checks passed")
