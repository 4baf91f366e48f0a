#!/usr/bin/python3
"""bench_int8.py: PyTorch's int8 CPU inference time for ResNets: the target ptq's integer engine must beat.

Usage: tools/bench_int8.py [--npz examples/resnet50/fashion_resnet50.npz] [--threads 2] [--runs 20]

ResNet-50 is also quantized in eager mode through torchvision.models.quantization (the
path torchvision's int8 models take); "resnet50_224_int8_b<N>" is the faster of the two.
Static post-training quantization with torch.ao.quantization (FX graph mode, which fuses
conv-bn-relu and quantizes the residual adds that eager mode cannot reach in torchvision's
blocks): quantized engine 'onednn' if this build has it, else 'fbgemm'; the engine's default
qconfig mapping (histogram activation observer, per-channel symmetric int8 weight observer);
prepare_fx, calibration on 4 seeded random batches, convert_fx. Timed: torchvision resnet50
(seeded random weights, eval) at 3x224x224, batch 1 and 8, and, if --npz is given (default:
the bundled Fashion-MNIST ResNet-50 when it exists), that network rebuilt by
resnet_torch.from_state_dict at 1x28x28, batch 256. torch.set_num_threads(threads), no_grad,
3 warm-up runs, then the median of --runs runs. Prints a JSON dict {case: ms}.
"""
import argparse
import json
import os
import statistics
import sys
import time

import numpy as np
import torch
import torchvision
from torch.ao.quantization import get_default_qconfig_mapping
from torch.ao.quantization.quantize_fx import convert_fx, prepare_fx

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.join(ROOT, "tools"))
BUNDLED = os.path.join(ROOT, "examples", "resnet50", "fashion_resnet50.npz")


def quantize(model, engine, shape, seed):
    """FX static int8 quantization of an eval-mode float model, calibrated on random inputs of `shape`."""
    g = torch.Generator().manual_seed(seed)
    example = torch.randn(shape, generator=g)
    prepared = prepare_fx(model.eval(), get_default_qconfig_mapping(engine), example_inputs=(example,))
    with torch.no_grad():
        for _ in range(4):
            prepared(torch.randn(shape, generator=g))
    return convert_fx(prepared)


def eager_resnet50(engine, seed=0):
    """torchvision's quantizable ResNet-50 (seeded random weights), fused, static int8 in eager mode."""
    from torchvision.models.quantization import resnet50 as quantizable_resnet50
    torch.manual_seed(seed)
    m = quantizable_resnet50(weights=None, quantize=False).eval()
    m.fuse_model()
    m.qconfig = torch.ao.quantization.get_default_qconfig(engine)
    torch.ao.quantization.prepare(m, inplace=True)
    g = torch.Generator().manual_seed(seed + 1)
    with torch.no_grad():
        for _ in range(4):
            m(torch.randn(1, 3, 224, 224, generator=g))
    torch.ao.quantization.convert(m, inplace=True)
    return m


def median_ms(model, x, runs):
    with torch.no_grad():
        for _ in range(3):
            model(x)
        times = []
        for _ in range(runs):
            t0 = time.perf_counter()
            model(x)
            times.append((time.perf_counter() - t0) * 1e3)
    return statistics.median(times)


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--npz", default=BUNDLED if os.path.exists(BUNDLED) else None,
                    help="a BasicBlock/Bottleneck ResNet state_dict (.npz, torchvision keys), timed at 1x28x28")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--runs", type=int, default=20)
    a = ap.parse_args()

    engines = torch.backends.quantized.supported_engines
    engine = "onednn" if "onednn" in engines else "fbgemm"
    torch.backends.quantized.engine = engine
    torch.set_num_threads(a.threads)
    out = {"engine": engine, "threads": a.threads}

    torch.manual_seed(0)
    r50 = torchvision.models.resnet50().eval()
    q50 = quantize(r50, engine, (1, 3, 224, 224), 1)
    # Eager mode on torchvision's quantizable ResNet-50 (fused conv-bn-relu, FloatFunctional
    # adds): the path torchvision's own int8 models take, and faster than FX here.
    e50 = eager_resnet50(engine)
    for batch in (1, 8):
        x = torch.randn(batch, 3, 224, 224, generator=torch.Generator().manual_seed(2))
        fx = median_ms(q50, x, a.runs)
        eager = median_ms(e50, x, a.runs)
        out[f"resnet50_224_int8_fx_b{batch}"] = round(fx, 3)
        out[f"resnet50_224_int8_eager_b{batch}"] = round(eager, 3)
        out[f"resnet50_224_int8_b{batch}"] = round(min(fx, eager), 3)  # PyTorch's best

    if a.npz:
        from resnet_torch import from_state_dict
        with np.load(a.npz) as z:
            model = from_state_dict({k: z[k] for k in z.files}).eval()
        qm = quantize(model, engine, (8, 1, 28, 28), 3)
        x = torch.randn(256, 1, 28, 28, generator=torch.Generator().manual_seed(4))
        out[f"{os.path.splitext(os.path.basename(a.npz))[0]}_28_int8_b256"] = round(median_ms(qm, x, a.runs), 3)
    print(json.dumps(out))


if __name__ == "__main__":
    main()
