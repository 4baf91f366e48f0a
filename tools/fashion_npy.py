#!/usr/bin/python3
"""fashion_npy.py: a slice of Fashion-MNIST as normalized float32 NCHW .npy (and int64 labels), for resnet_ptq.

resnet_ptq's --images / --calib take normalized NCHW arrays; this writes any slice of
Debian's Fashion-MNIST (dataset-fashion-mnist) with a bundled model's normalization, e.g.
the held-out training images 50 000-59 999 that tools/train_fashion_mnist.py keeps out of
the ResNet-18's training (used to choose defaults without looking at the test set):

  tools/fashion_npy.py --split train --first 50000 --count 10000 \\
      --meta examples/resnet50/fashion_resnet18.json --out /tmp/heldout.npy --labels-out /tmp/heldout_labels.npy
"""
import argparse
import json
import os
import sys

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from train_fashion_mnist import DATA_DIR, load_fashion, normalize  # noqa: E402


def main():
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter,
                                epilog=__doc__.split("\n", 2)[2])
    p.add_argument("--split", choices=("train", "t10k"), default="train")
    p.add_argument("--first", type=int, default=0, help="index of the first image")
    p.add_argument("--count", type=int, required=True, help="number of images")
    p.add_argument("--meta", required=True, help="a bundled model's .json (its normalization)")
    p.add_argument("--out", required=True, help="images .npy (float32, N x 1 x 28 x 28)")
    p.add_argument("--labels-out", help="labels .npy (int64)")
    p.add_argument("--data-dir", default=DATA_DIR)
    a = p.parse_args()
    with open(a.meta) as f:
        norm = json.load(f)["normalization"]
    x, y = load_fashion(a.split, a.data_dir)
    if a.first < 0 or a.count < 1 or a.first + a.count > len(x):
        p.error(f"images {a.first}..{a.first + a.count - 1} are outside the {len(x)} of {a.split}")
    sl = slice(a.first, a.first + a.count)
    np.save(a.out, normalize(x[sl], norm["mean"][0], norm["std"][0]))
    if a.labels_out:
        np.save(a.labels_out, y[sl].astype(np.int64))


if __name__ == "__main__":
    main()
