#!/usr/bin/env python3
"""bench_table.py: turn ptq_bench's JSON output into a Markdown table of medians and ratios to memcpy.

Usage: build/release/bench/ptq_bench --benchmark_repetitions=5 \
           --benchmark_report_aggregates_only=true --benchmark_out=bench.json
       tools/bench_table.py bench.json

Every row is a benchmark at one tensor size: its median throughput (GB/s of input
bytes, 1 GB = 1e9 bytes) and its ratio to BM_memcpy's median at the same size, from
the same run.
"""
import json
import sys
from collections import defaultdict


def main(path):
    with open(path) as f:
        data = json.load(f)
    medians = defaultdict(dict)  # name -> size -> bytes/s
    for b in data["benchmarks"]:
        if b.get("aggregate_name") != "median":
            continue
        name, size = b["run_name"].rsplit("/", 1)
        medians[name.removeprefix("BM_")][int(size)] = b["bytes_per_second"]
    base = medians.pop("memcpy")
    sizes = sorted(base)
    ctx = data["context"]
    print(f"{ctx.get('num_cpus')} x {ctx.get('mhz_per_cpu')} MHz, load {ctx.get('load_avg')}, "
          f"{data['benchmarks'][0].get('repetitions')} repetitions, medians")
    print()
    print("| benchmark | " + " | ".join(f"{s >> 20}M floats" for s in sizes) + " |")
    print("|---|" + "---|" * len(sizes))
    print("| memcpy | " + " | ".join(f"{base[s] / 1e9:.1f} GB/s" for s in sizes) + " |")
    for name, row in medians.items():
        if not any(s in row for s in sizes):  # not a per-tensor-size benchmark (BM_requantize/<channels>)
            continue
        cells = [f"{row[s] / 1e9:.1f} GB/s ({row[s] / base[s]:.2f})" if s in row else "" for s in sizes]
        print(f"| {name} | " + " | ".join(cells) + " |")


if __name__ == "__main__":
    if len(sys.argv) != 2:
        sys.exit(__doc__)
    main(sys.argv[1])
