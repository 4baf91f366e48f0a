#!/usr/bin/python3
"""resnet_smoke.py: the README's main job (resnet_ptq's default table) on 500 test images, with the acceptance checks.

Usage: resnet_smoke.py RESNET_PTQ OUT.json [IMAGES]   (IMAGES: default 500; the asan preset uses fewer)
Checks: FP32 top-1 >= 90 %, the full W4A4 method (with either clipping prior) >= naive W4A4,
|W8A8 - FP32| <= 1 point.
"""
import json
import subprocess
import sys

exe, out = sys.argv[1], sys.argv[2]
images = int(sys.argv[3]) if len(sys.argv) > 3 else 500
subprocess.run([exe, "--limit", str(images), "--no-progress", "--json", out], check=True)
with open(out) as f:
    rows = {r["config"]["name"]: r for r in json.load(f)["rows"]}
for name, r in rows.items():
    print(f"{name}: top-1 {r['top1']:.2f}, top-5 {r['top5']:.2f}, {r['seconds']:.1f} s")
    assert r["images"] == images, (name, r["images"])
fp32, w8a8 = rows["FP32"]["top1"], rows["W8A8"]["top1"]
naive = rows["W4A4 naive"]["top1"]
fulls = {n: rows[n]["top1"] for n in ("W4A4 full (+bias corr W)", "W4A4 full, Laplace prior")}
failures = []
if fp32 < 90:
    failures.append(f"FP32 top-1 {fp32} < 90")
for name, full in fulls.items():
    if full < naive:
        failures.append(f"{name} {full} < naive W4A4 {naive}")
if abs(w8a8 - fp32) > 1:
    failures.append(f"W8A8 {w8a8} is more than 1 point from FP32 {fp32}")
if failures:
    sys.exit("FAILED: " + "; ".join(failures))
print("resnet smoke: all checks passed")
