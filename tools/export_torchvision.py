#!/usr/bin/python3
"""export_torchvision.py: write a torchvision ResNet's state_dict to a float32 .npz for the ptq ResNet example.

Keys are exactly the state_dict's (conv1.weight, bn1.running_var, layer1.0.conv1.weight,
layer2.0.downsample.0.weight, fc.bias, ...); num_batches_tracked entries are dropped;
every array is float32 in C order. The C++ example rebuilds the network from these keys
and shapes alone (BasicBlock or Bottleneck, depth, widths, stem, classes).

Weights come from one of:
  --weights FILE   a state_dict saved with torch.save (or a checkpoint holding one
                   under "state_dict" or "model"), e.g. downloaded ImageNet weights
                   such as resnet50-0676ba61.pth; keys may carry a "module." prefix
  --pretrained     torchvision's own weights (needs them cached or internet access)
  neither          random initialisation (for testing the pipeline only)

Examples:
  tools/export_torchvision.py resnet50 --weights ~/resnet50-0676ba61.pth -o resnet50.npz
  tools/export_torchvision.py resnet18 --pretrained -o resnet18.npz
  tools/export_torchvision.py resnet18 --seed 0 -o /tmp/r18_random.npz --check
"""
import argparse
import sys

import numpy as np
import torch
import torchvision

ARCHS = ["resnet18", "resnet34", "resnet50", "resnet101", "resnet152",
         "resnext50_32x4d", "resnext101_32x8d", "wide_resnet50_2", "wide_resnet101_2"]


def state_dict_to_arrays(sd):
    """float32 numpy copies of every entry except num_batches_tracked, keys unchanged, in order."""
    out = {}
    for k, v in sd.items():
        if k.endswith("num_batches_tracked"):
            continue
        out[k] = np.ascontiguousarray(v.detach().cpu().to(torch.float32).numpy())
    return out


def load_weights(path):
    obj = torch.load(path, map_location="cpu")
    for key in ("state_dict", "model"):
        if isinstance(obj, dict) and key in obj and isinstance(obj[key], dict):
            obj = obj[key]
    if not isinstance(obj, dict):
        raise SystemExit(f"export_torchvision: {path} does not hold a state_dict")
    return {k[len("module."):] if k.startswith("module.") else k: v for k, v in obj.items()}


def main():
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter,
                                epilog=__doc__.split("\n", 2)[2])
    p.add_argument("arch", choices=ARCHS, help="torchvision constructor name")
    p.add_argument("-o", "--output", required=True, help="output .npz path")
    src = p.add_mutually_exclusive_group()
    src.add_argument("--weights", help="state_dict file saved with torch.save")
    src.add_argument("--pretrained", action="store_true", help="torchvision's default weights")
    p.add_argument("--seed", type=int, default=0, help="seed of the random initialisation")
    p.add_argument("--compressed", action="store_true", help="np.savez_compressed instead of np.savez")
    p.add_argument("--check", action="store_true", help="reload the .npz and compare with the state_dict")
    args = p.parse_args()

    torch.manual_seed(args.seed)
    ctor = getattr(torchvision.models, args.arch)
    if args.pretrained:
        model = ctor(weights="DEFAULT")
    else:
        model = ctor(weights=None)
        if args.weights:
            # strict: a missing or unexpected key means the file is not this architecture
            model.load_state_dict(load_weights(args.weights), strict=True)
    model.eval()
    sd = model.state_dict()
    arrays = state_dict_to_arrays(sd)
    (np.savez_compressed if args.compressed else np.savez)(args.output, **arrays)
    n = sum(a.size for a in arrays.values())
    print(f"{args.output}: {len(arrays)} arrays, {n} float32 values")

    if args.check:
        with np.load(args.output) as z:
            keys = list(z.keys())
            want = [k for k in sd if not k.endswith("num_batches_tracked")]
            if keys != want:
                sys.exit(f"check failed: keys differ: {sorted(set(keys) ^ set(want))}")
            for k in keys:
                a = z[k]
                ref = sd[k].detach().cpu().to(torch.float32).numpy()
                if a.dtype != np.float32 or a.shape != ref.shape or not np.array_equal(a, ref):
                    sys.exit(f"check failed: {k}: {a.dtype} {a.shape} vs {ref.shape}")
        print("check: keys, shapes and values equal the state_dict")


if __name__ == "__main__":
    main()
