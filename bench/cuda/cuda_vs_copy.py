#!/usr/bin/env python3
"""cuda_vs_copy.py: bandwidth of ptq_cuda_bench's rows as a fraction of its device-to-device copy.

Usage: ptq_cuda_bench --benchmark_repetitions=5 --benchmark_report_aggregates_only=true \\
           --benchmark_out=cuda.json && bench/cuda/cuda_vs_copy.py cuda.json
Medians; every row counts the bytes of its input tensor, the copy its n bytes, so
fraction = row GB/s / copy GB/s (goals on an H100-class GPU: fake quantize >= 0.8,
statistics >= 0.6).
"""
import json
import sys


def main(path):
    with open(path) as f:
        data = json.load(f)
    rows, copy = [], None
    for b in data["benchmarks"]:
        if b.get("aggregate_name") != "median":
            continue
        name = b["run_name"].removeprefix("BM_")
        if name.startswith("cuda_memcpy_d2d"):
            copy = b["bytes_per_second"]
        rows.append((name, b.get("label", ""), b["real_time"], b["bytes_per_second"]))
    gpu = data.get("context", {}).get("gpu", "unknown GPU")
    if copy is None:
        sys.exit("no BM_cuda_memcpy_d2d median in " + path)
    print(f"GPU: {gpu}; device-to-device copy {copy / 1e9:.0f} GB/s")
    print("| benchmark | C x H*W | ms | GB/s | fraction of copy |")
    print("|---|---|---:|---:|---:|")
    for name, label, ms, bps in rows:
        print(f"| {name} | {label} | {ms:.3f} | {bps / 1e9:.0f} | {bps / copy:.2f} |")


if __name__ == "__main__":
    if len(sys.argv) != 2:
        sys.exit(__doc__)
    main(sys.argv[1])
