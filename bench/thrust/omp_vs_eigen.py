#!/usr/bin/env python3
"""omp_vs_eigen.py: time ratios of ptq_thrust_omp_bench's OMP-backend rows to the Eigen/CPU rows (and to memcpy).

Usage: ptq_thrust_omp_bench --benchmark_repetitions=5 --benchmark_report_aggregates_only=true \\
           --benchmark_out=omp.json && bench/thrust/omp_vs_eigen.py omp.json
Medians of real time; ratio = OMP time / Eigen time (goal: <= 1.5).
"""
import json
import sys


def main(path):
    with open(path) as f:
        data = json.load(f)
    med = {}
    for b in data["benchmarks"]:
        if b.get("aggregate_name") == "median":
            name, size = b["run_name"].split("/")[0], int(b["run_name"].split("/")[1])
            med[(name.removeprefix("BM_"), size)] = (b["real_time"], b["bytes_per_second"])
    sizes = sorted({s for _, s in med})
    print("| operation | size | Eigen/CPU ms | OMP ms | OMP / Eigen time | Eigen GB/s | OMP GB/s | memcpy GB/s |")
    print("|---|---|---:|---:|---:|---:|---:|---:|")
    for op in ("fake_quantize_per_channel", "statistics_batch_mean"):
        for s in sizes:
            e, o, m = med.get((f"eigen_{op}", s)), med.get((f"thrust_omp_{op}", s)), med.get(("memcpy", s))
            if not (e and o):
                continue
            print(f"| {op} | {s >> 20}M | {e[0]:.1f} | {o[0]:.1f} | {o[0] / e[0]:.2f} | {e[1] / 1e9:.1f} | "
                  f"{o[1] / 1e9:.1f} | {m[1] / 1e9 if m else float('nan'):.1f} |")


if __name__ == "__main__":
    if len(sys.argv) != 2:
        sys.exit(__doc__)
    main(sys.argv[1])
