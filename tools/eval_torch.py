#!/usr/bin/python3
"""eval_torch.py: PyTorch FP32 reference for the ptq ResNet example (accuracy, and the exact inputs as .npy).

Loads a torchvision-keyed .npz (examples/resnet50/fashion_resnet50.npz by default), builds
the network from its keys and shapes alone (tools/resnet_torch.py: from_state_dict, the
same rule as the C++ example), evaluates top-1 and top-5 on the Fashion-MNIST test set
normalized with the JSON's mean and std, and prints one JSON object:
  {"model", "images", "top1", "top5", "correct1", "correct5", "torch_version"}
top1/top5 are percentages of the evaluated images; correct1/correct5 are counts.

--npy-out DIR also writes the inputs the C++ example should read, so both sides see
exactly the same float32 values:
  DIR/test_images.npy    float32 (N, 1, 28, 28) normalized test images (N = --limit or 10000)
  DIR/test_labels.npy    int64   (N,)
  DIR/calib_images.npy   float32 (512, 1, 28, 28) the first 512 training images, normalized
  DIR/calib_labels.npy   int64   (512,)
  DIR/test_logits.npy    float32 (N, 10) PyTorch's logits (for per-image comparison)

--images/--labels evaluate a prepared .npy pair instead (e.g. from imagenet_to_npy.py and
an ImageNet model exported with export_torchvision.py); the JSON's normalization is then
not used.

Examples:
  tools/eval_torch.py
  tools/eval_torch.py --limit 1000 --npy-out /tmp/fm
  tools/eval_torch.py --npz resnet50.npz --images val.npy --labels val_labels.npy
"""
import argparse
import json
import os
import sys

import numpy as np
import torch

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)
from resnet_torch import from_state_dict  # noqa: E402
from train_fashion_mnist import DATA_DIR, load_fashion, normalize  # noqa: E402

REPO = os.path.dirname(HERE)
CALIB_COUNT = 512


@torch.no_grad()
def run(model, x, batch):
    model.eval()
    out = []
    for i in range(0, x.shape[0], batch):
        out.append(model(torch.from_numpy(x[i:i + batch])))
    return torch.cat(out).numpy()


def topk_correct(logits, labels, k):
    k = min(k, logits.shape[1])
    # stable descending order: ties keep the lower class index first
    top = np.argsort(-logits, axis=1, kind="stable")[:, :k]
    return int((top == labels[:, None]).any(axis=1).sum())


def main():
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter,
                                epilog=__doc__.split("\n", 2)[2])
    default = os.path.join(REPO, "examples/resnet50/fashion_resnet50")
    p.add_argument("--npz", default=default + ".npz", help="weights (torchvision keys)")
    p.add_argument("--json", default=default + ".json", help="metadata with the normalization")
    p.add_argument("--images", help="float32 NCHW .npy to evaluate instead of Fashion-MNIST")
    p.add_argument("--labels", help="int64 labels .npy for --images")
    p.add_argument("--limit", type=int, default=0, help="evaluate the first N test images only")
    p.add_argument("--npy-out", help="folder to write the test and calibration inputs to")
    p.add_argument("--batch", type=int, default=250)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--data-dir", default=DATA_DIR)
    args = p.parse_args()
    torch.set_num_threads(args.threads)

    with np.load(args.npz) as z:
        sd = {k: z[k] for k in z.files}
    model = from_state_dict(sd)

    calib = None
    if args.images:
        if not args.labels:
            p.error("--images needs --labels")
        x = np.load(args.images, mmap_mode="r")
        y = np.load(args.labels).astype(np.int64)
        if args.limit > 0:
            x, y = x[:args.limit], y[:args.limit]
        x = np.array(x, dtype=np.float32, order="C")  # a writable copy of the memmap
    else:
        with open(args.json) as f:
            meta = json.load(f)
        mean = meta["normalization"]["mean"][0]
        std = meta["normalization"]["std"][0]
        xte, y = load_fashion("t10k", args.data_dir)
        if args.limit > 0:
            xte, y = xte[:args.limit], y[:args.limit]
        x = normalize(xte, mean, std)
        if args.npy_out:
            xtr, ytr = load_fashion("train", args.data_dir)
            calib = (normalize(xtr[:CALIB_COUNT], mean, std), ytr[:CALIB_COUNT].astype(np.int64))
    if x.shape[0] != y.shape[0]:
        sys.exit(f"eval_torch: {x.shape[0]} images but {y.shape[0]} labels")

    logits = run(model, x, args.batch).astype(np.float32)
    c1, c5 = topk_correct(logits, y, 1), topk_correct(logits, y, 5)
    n = int(x.shape[0])

    if args.npy_out:
        os.makedirs(args.npy_out, exist_ok=True)
        np.save(os.path.join(args.npy_out, "test_images.npy"), x)
        np.save(os.path.join(args.npy_out, "test_labels.npy"), y.astype(np.int64))
        np.save(os.path.join(args.npy_out, "test_logits.npy"), logits)
        if calib is not None:
            np.save(os.path.join(args.npy_out, "calib_images.npy"), calib[0])
            np.save(os.path.join(args.npy_out, "calib_labels.npy"), calib[1])

    print(json.dumps({"model": os.path.abspath(args.npz), "images": n,
                      "top1": 100.0 * c1 / n, "top5": 100.0 * c5 / n,
                      "correct1": c1, "correct5": c5, "torch_version": torch.__version__}))


if __name__ == "__main__":
    main()
