#!/usr/bin/python3
"""brecq_fisher_weights.py: how far BRECQ's Fisher weights are from 1 on a bundled model.

BRECQ (Li et al., ICLR 2021) weights the block-output reconstruction error by the diagonal
Fisher information. Its published code (yhhhli/BRECQ, quant/data_utils.py: save_grad_data,
GetLayerGrad; quant/block_recon.py: LossFunction, rec_loss 'fisher_diag') computes, per
element of block b's output z on the calibration images,

    g = d KL(softmax(f_q(x)) || softmax(f_fp(x))) / d z      (F.kl_div(..., 'batchmean'), batches of 32)
    weight = (|g| + 1)^2,   loss = mean over images of sum (weight * (z_q - z_fp)^2)

with f_q the network whose weights are quantized up to and including block b (later blocks
in FP32, activations in float) and f_fp the FP32 network. So the loss is ptq's mean-squared
block error (block_reconstruction.hpp) times 1 + 2|g| + g^2. This tool measures |g| and the
weights on the bundled models with their weights quantized to nearest at --wbits per output
channel on their min/max grid (the start of the reconstruction; the stem conv and the
classifier stay FP32), block by block, and prints per block: the KL, mean and largest |g|,
mean and largest weight. If the weights are within a small fraction of 1 everywhere, the
Fisher-weighted loss and the plain MSE are the same objective to that fraction.

Example:
  tools/brecq_fisher_weights.py --model resnet50 --wbits 4
"""
import argparse
import copy
import json
import os
import sys

import numpy as np
import torch
import torch.nn.functional as F

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)
from resnet_torch import from_state_dict  # noqa: E402
from train_fashion_mnist import load_fashion, normalize  # noqa: E402

REPO = os.path.dirname(HERE)


def quantize_rows(w, bits):
    """Round to nearest per output channel on the min/max grid (extended to 0), as ptq's weights."""
    flat = w.flatten(1)
    lo = flat.min(1)[0].clamp(max=0)
    hi = flat.max(1)[0].clamp(min=0)
    qmax = 2 ** bits - 1
    shape = (-1,) + (1,) * (w.dim() - 1)
    s = ((hi - lo) / qmax).view(shape)
    safe = torch.where(s > 0, s, torch.ones_like(s))
    z = torch.round(-lo.view(shape) / safe)
    q = (torch.clamp(torch.round(w / safe) + z, 0, qmax) - z) * safe
    return torch.where(s > 0, q, w)


def main():
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--model", choices=["resnet50", "resnet18"], default="resnet50")
    p.add_argument("--wbits", type=int, default=4)
    p.add_argument("--images", type=int, default=64, help="calibration images (training images 0..N-1)")
    p.add_argument("--batch", type=int, default=32, help="BRECQ's batch for the KL's batch mean")
    a = p.parse_args()
    sd = dict(np.load(os.path.join(REPO, "examples", "resnet50", f"fashion_{a.model}.npz")))
    meta = os.path.join(REPO, "examples", "resnet50", f"fashion_{a.model}.json")
    model = from_state_dict(sd).eval()
    images, _ = load_fashion("train")
    with open(meta) as f:
        norm = json.load(f)["normalization"]
    x = torch.from_numpy(normalize(images[:a.images], norm["mean"][0], norm["std"][0]))
    with torch.no_grad():
        out_fp = torch.cat([model(x[i:i + a.batch]) for i in range(0, a.images, a.batch)])
    blocks = [n for n, _ in model.named_modules() if n.startswith("layer") and n.count(".") == 1]
    convs = [n for n, m in model.named_modules() if isinstance(m, torch.nn.Conv2d) and n != "conv1"]
    print(f"{a.model}, W{a.wbits} round to nearest up to and including each block, {a.images} images, "
          f"KL batch mean over {a.batch}")
    print("block | KL | mean |g| | max |g| | mean (|g|+1)^2 | max (|g|+1)^2")
    worst = 1.0
    for bi, target in enumerate(blocks):
        qm = copy.deepcopy(model)
        mods = dict(qm.named_modules())
        upto = [n for n in convs if blocks.index(".".join(n.split(".")[:2])) <= bi]
        with torch.no_grad():
            for n in upto:
                mods[n].weight.copy_(quantize_rows(mods[n].weight, a.wbits))
        grads, kls = [], []
        for i in range(0, a.images, a.batch):
            store = {}

            def hook(module, inputs, output):
                output.retain_grad()
                store["z"] = output

            h = mods[target].register_forward_hook(hook)
            out_q = qm(x[i:i + a.batch])
            h.remove()
            loss = F.kl_div(F.log_softmax(out_q, 1), F.softmax(out_fp[i:i + a.batch], 1), reduction="batchmean")
            loss.backward()
            grads.append(store["z"].grad.abs().flatten())
            kls.append(loss.item())
        g = torch.cat(grads).double()
        w = (g + 1) ** 2
        worst = max(worst, w.max().item())
        print(f"{target} | {np.mean(kls):.4f} | {g.mean():.2e} | {g.max():.2e} | {w.mean():.6f} | {w.max():.6f}")
    print(f"largest weight over all blocks: {worst:.6f}")


if __name__ == "__main__":
    main()
