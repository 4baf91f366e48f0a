#!/usr/bin/python3
"""bench_resnet.py: ptq's ResNet forward (FP32, W4A4 simulated, integer engine) beside PyTorch's FP32 and int8 CPU forward, one run.

Usage: tools/bench_resnet.py BUILD/resnet_bench [--threads 2] [--runs 5] [--keep DIR]

Writes a torchvision resnet50 with seeded random weights (eval mode, float32 state_dict
without num_batches_tracked) to a temporary .npz, times PyTorch's forward (no_grad,
torch.set_num_threads(threads), warm-up, then the median of --runs runs) of it at
3x224x224, batch 1 and 8, and of the bundled Fashion-MNIST model (rebuilt by
resnet_torch.from_state_dict) at 1x28x28, batch 256; then runs resnet_bench on the same
.npz files (PTQ_BENCH_THREADS=threads, 5 repetitions, medians) and prints a Markdown
table with the ratios ptq FP32 / PyTorch (goal <= 1.5) and ptq W4A4 / ptq FP32
(goal <= 1.15). Then the integer engine (W8A8 and the W4A4 full method on codes) beside
PyTorch's int8 path timed in the same run (tools/bench_int8.py's static quantization with
the build's quantized engine, onednn: for ResNet-50 the faster of FX mode and eager mode on
torchvision's quantizable ResNet-50; for the bundled model FX mode).
Inputs are seeded standard-normal images on both sides.
"""
import os

# libgomp reads this once at start-up: set it before torch is imported, so that torch's
# idle threads sleep instead of spinning while resnet_bench runs after it.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

import argparse
import json
import statistics
import subprocess
import sys
import tempfile
import time

import numpy as np
import torch
import torchvision

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import resnet_torch  # noqa: E402

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
BUNDLED = os.path.join(ROOT, "examples", "resnet50", "fashion_resnet50.npz")

# (network, batch, C, H, W): the benchmark's cases.
CASES = [("bundled", 256, 1, 28, 28), ("resnet50_224", 1, 3, 224, 224), ("resnet50_224", 8, 3, 224, 224)]


def export_resnet50(path, seed=0):
    torch.manual_seed(seed)
    model = torchvision.models.resnet50()
    # Non-trivial BatchNorm statistics, so that folding them is not the identity.
    g = torch.Generator().manual_seed(seed + 1)
    for m in model.modules():
        if isinstance(m, torch.nn.BatchNorm2d):
            n = m.num_features
            m.running_mean.copy_(0.1 * torch.randn(n, generator=g))
            m.running_var.copy_(0.5 + torch.rand(n, generator=g))
            m.weight.data.copy_(0.5 + 0.5 * torch.rand(n, generator=g))
            m.bias.data.copy_(0.1 * torch.randn(n, generator=g))
    model.eval()
    sd = {k: v.detach().to(torch.float32).numpy().copy()
          for k, v in model.state_dict().items() if not k.endswith("num_batches_tracked")}
    np.savez(path, **sd)
    return model


def time_torch(model, batch, c, h, w, runs):
    x = torch.randn(batch, c, h, w, generator=torch.Generator().manual_seed(42))
    with torch.no_grad():
        for _ in range(2):
            model(x)
        times = []
        for _ in range(runs):
            t0 = time.perf_counter()
            model(x)
            times.append(time.perf_counter() - t0)
    return 1e3 * statistics.median(times)


def run_bench(binary, resnet50_npz, threads):
    env = dict(os.environ, PTQ_BENCH_BUNDLED=BUNDLED, PTQ_BENCH_RESNET50=resnet50_npz,
               PTQ_BENCH_THREADS=str(threads))
    cmd = [binary, "--benchmark_repetitions=5", "--benchmark_report_aggregates_only=true",
           "--benchmark_format=json"]
    out = subprocess.run(cmd, env=env, check=True, stdout=subprocess.PIPE).stdout
    scale = {"ns": 1e-6, "us": 1e-3, "ms": 1.0, "s": 1e3}
    result = {}
    for b in json.loads(out)["benchmarks"]:
        if b.get("error_occurred"):
            sys.exit(f"bench_resnet.py: {b['name']}: {b.get('error_message')}")
        if b.get("aggregate_name") != "median":
            continue
        # run_name: BM_resnet_fp32/bundled/256/real_time
        kind, net, batch = b["run_name"].split("/")[:3]
        result[(kind, net, int(batch))] = b["real_time"] * scale[b["time_unit"]]
    return result


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("binary", help="the resnet_bench executable")
    ap.add_argument("--threads", type=int, default=2,
                    help="threads on both sides: torch.set_num_threads and PTQ_BENCH_THREADS (default 2)")
    ap.add_argument("--runs", type=int, default=5, help="timed PyTorch runs per case, median (>= 5)")
    ap.add_argument("--keep", help="write the random resnet50 .npz here instead of a temporary directory")
    a = ap.parse_args()
    if a.runs < 5:
        ap.error("--runs must be >= 5")
    torch.set_num_threads(a.threads)

    with tempfile.TemporaryDirectory() as tmp:
        r50_path = os.path.join(a.keep or tmp, "resnet50_random.npz")
        r50 = export_resnet50(r50_path)
        with np.load(BUNDLED) as z:
            bundled = resnet_torch.from_state_dict({k: z[k] for k in z.files}).eval()
        models = {"bundled": bundled, "resnet50_224": r50}

        t_torch = {}
        for net, batch, c, h, w in CASES:
            t_torch[(net, batch)] = time_torch(models[net], batch, c, h, w, a.runs)
            print(f"  torch {net} batch {batch}: {t_torch[(net, batch)]:.1f} ms", file=sys.stderr)
        # PyTorch's int8 path (bench_int8.py): static quantization, the quantized engine this
        # build has (onednn), the faster of FX and eager (torchvision's quantizable ResNet-50).
        import bench_int8
        engines = torch.backends.quantized.supported_engines
        engine = "onednn" if "onednn" in engines else "fbgemm"
        torch.backends.quantized.engine = engine
        t_int8 = {}
        q_bundled = bench_int8.quantize(bundled, engine, (8, 1, 28, 28), 3)
        q_r50 = {"fx": bench_int8.quantize(r50, engine, (1, 3, 224, 224), 1), "eager": bench_int8.eager_resnet50(engine)}
        for net, batch, c, h, w in CASES:
            cands = {"fx": q_bundled} if net == "bundled" else q_r50
            t_int8[(net, batch)] = min(time_torch(m, batch, c, h, w, a.runs) for m in cands.values())
            print(f"  torch int8 ({engine}) {net} batch {batch}: {t_int8[(net, batch)]:.1f} ms", file=sys.stderr)
        del models, bundled, r50, q_bundled, q_r50

        t_ptq = run_bench(a.binary, r50_path, a.threads)

    print(f"PyTorch {torch.__version__} (torch.set_num_threads({a.threads}), "
          f"OMP_WAIT_POLICY={os.environ['OMP_WAIT_POLICY']}) vs resnet_bench; medians, ms per batch.\n")
    print("| network | batch | PyTorch ms | ptq FP32 ms | ptq FP32 / PyTorch | ptq W4A4 ms | W4A4 / FP32 |")
    print("|---|---:|---:|---:|---:|---:|---:|")
    for net, batch, c, h, w in CASES:
        tt = t_torch[(net, batch)]
        f = t_ptq[("BM_resnet_fp32", net, batch)]
        q = t_ptq[("BM_resnet_w4a4", net, batch)]
        label = f"{net} ({c}x{h}x{w})"
        print(f"| {label} | {batch} | {tt:.1f} | {f:.1f} | {f / tt:.2f} | {q:.1f} | {q / f:.2f} |")
    print("\nGoals: ptq FP32 / PyTorch <= 1.5, W4A4 / FP32 <= 1.15.")
    print(f"\nInteger engine (int_engine.hpp) beside PyTorch's int8 path ({engine}), same run:\n")
    print("| network | batch | PyTorch int8 ms | ptq int W8A8 ms | / PyTorch int8 | ptq int W4A4 ms "
          "| / PyTorch int8 | ptq FP32 / int W8A8 | ptq FP32 / int W4A4 |")
    print("|---|---:|---:|---:|---:|---:|---:|---:|---:|")
    for net, batch, c, h, w in CASES:
        ti = t_int8[(net, batch)]
        f = t_ptq[("BM_resnet_fp32", net, batch)]
        i8 = t_ptq[("BM_resnet_int_w8a8", net, batch)]
        i4 = t_ptq[("BM_resnet_int_w4a4", net, batch)]
        label = f"{net} ({c}x{h}x{w})"
        print(f"| {label} | {batch} | {ti:.1f} | {i8:.1f} | {i8 / ti:.2f} | {i4:.1f} | {i4 / ti:.2f} "
              f"| {f / i8:.2f} | {f / i4:.2f} |")
    print("\nGoals: int / PyTorch int8 <= 1.0 (ResNet-50); FP32 / int >= 3.5 (ResNet-50), >= 3 (bundled W4A4).")


if __name__ == "__main__":
    main()
