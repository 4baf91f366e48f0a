#!/usr/bin/python3
"""imagenet_to_npy.py: turn ImageNet validation images into a normalized float32 NCHW .npy plus int64 labels.

Preprocessing (torchvision's standard ImageNet evaluation transform):
  1. decode, convert to RGB (grayscale and CMYK JPEGs included);
  2. resize so the SHORTER side is 256 pixels (bilinear, aspect ratio kept);
  3. center crop 224 x 224;
  4. x = (pixel / 255 - mean) / std per channel, with
     mean = (0.485, 0.456, 0.406), std = (0.229, 0.224, 0.225)   (R, G, B).
Output: IMAGES.npy float32 (N, 3, 224, 224) C order, LABELS.npy int64 (N,), and
IMAGES.files.txt listing the source file of every row, in order.

Class indices follow torchvision's ImageNet-1k weights: the class index of an image is
the rank of its WordNet id (synset, e.g. n01440764) among the 1000 synsets in sorted
order (n01440764 -> 0, n01443537 -> 1, ..., n15075141 -> 999). Labels come from one of
two layouts:

  folder per class (the layout of torchvision.datasets.ImageFolder):
      VAL_DIR/n01440764/ILSVRC2012_val_00000293.JPEG
      VAL_DIR/n01443537/...
    The folder name is the synset. With all 1000 class folders present nothing else is
    needed; with fewer, pass --synsets so that the ranks are among all 1000.

  flat folder plus a label file (--labels FILE), one line per image, either
      "FILENAME LABEL"  e.g. "ILSVRC2012_val_00000001.JPEG n01751748"
                        (from LOC_val_solution.csv; commas count as spaces, text after
                        the second field is ignored, ".JPEG" is added if missing), or
      "LABEL"           one per line, in the sorted order of the image file names
                        (as ILSVRC2012_validation_ground_truth.txt).
    LABEL is a synset, or a number. A number k names line k - B of --synsets (B from
    --id-base), whose synset's rank is the class; without --synsets the number is taken
    as the class index itself (0-based after --id-base).

  --synsets FILE: synset list, one per line; the first token of a line is the synset,
    so LOC_synset_mapping.txt ("n01440764 tench, Tinca tinca") works as is. Its order
    matters only for numeric labels: for ILSVRC2012_validation_ground_truth.txt (1-based
    ILSVRC2012_IDs) give the synsets in ILSVRC2012_ID order (from the devkit's meta.mat)
    and --id-base 1.
  --id-base B: numeric labels are B-based (default 0).

Examples:
  tools/imagenet_to_npy.py /data/imagenet/val --limit 1000 -o val1000.npy -l val1000_labels.npy
  tools/imagenet_to_npy.py /data/val_flat --labels val_labels.txt \
      --synsets LOC_synset_mapping.txt --limit 5000 --shuffle-seed 0 -o val.npy -l labels.npy
  # calibration set from training images, labels unused:
  tools/imagenet_to_npy.py /data/imagenet/train --per-class 1 -o calib.npy -l calib_labels.npy

--limit N keeps N images (after --per-class and optional --shuffle-seed, which picks a
seeded random subset instead of the first N in sorted order). 1000 images take
1000 * 3 * 224 * 224 * 4 bytes = 602 MB; the .npy is written with np.lib.format.open_memmap,
so memory stays small.
"""
import argparse
import os
import sys

import numpy as np

MEAN = np.array([0.485, 0.456, 0.406], dtype=np.float32)
STD = np.array([0.229, 0.224, 0.225], dtype=np.float32)
EXTS = (".jpeg", ".jpg", ".png", ".bmp", ".ppm", ".webp", ".tif", ".tiff")


def is_image(name):
    return name.lower().endswith(EXTS)


def preprocess(path, resize=256, crop=224):
    """One image -> float32 (3, crop, crop), torchvision's Resize(256)+CenterCrop(224)+Normalize."""
    from PIL import Image
    with Image.open(path) as im:
        im = im.convert("RGB")
        w, h = im.size
        # Resize(int): the shorter side becomes `resize`, the longer one int(resize * long / short)
        if w <= h:
            nw, nh = resize, int(resize * h / w)
        else:
            nw, nh = int(resize * w / h), resize
        im = im.resize((nw, nh), Image.BILINEAR)
        # CenterCrop: top-left = round((size - crop) / 2), as torchvision
        left = int(round((nw - crop) / 2.0))
        top = int(round((nh - crop) / 2.0))
        im = im.crop((left, top, left + crop, top + crop))
        a = np.asarray(im, dtype=np.float32) / np.float32(255.0)  # H, W, C
    a = (a - MEAN) / STD
    return np.ascontiguousarray(a.transpose(2, 0, 1), dtype=np.float32)


def read_synsets(path):
    out = []
    with open(path) as f:
        for line in f:
            tok = line.replace(",", " ").split()
            if tok:
                out.append(tok[0])
    if len(set(out)) != len(out):
        sys.exit(f"imagenet_to_npy: --synsets {path}: duplicate synsets")
    return out


class Labeler:
    """Token (synset or number) -> class index = rank of the synset among the sorted synsets."""

    def __init__(self, synsets, id_base):
        self.synsets = synsets  # list in file order (numeric labels index it), or None
        self.rank = {s: i for i, s in enumerate(sorted(synsets))} if synsets else {}
        self.id_base = id_base

    def __call__(self, token, where):
        if token.lstrip("-").isdigit():
            k = int(token) - self.id_base
            if self.synsets is None:  # no names known: the number is the class index
                if k < 0:
                    sys.exit(f"imagenet_to_npy: {where}: label {token} - id-base {self.id_base} < 0")
                return k
            if not 0 <= k < len(self.synsets):
                sys.exit(f"imagenet_to_npy: {where}: label {token} outside {self.id_base}.."
                         f"{len(self.synsets) - 1 + self.id_base}")
            return self.rank[self.synsets[k]]
        if token not in self.rank:
            sys.exit(f"imagenet_to_npy: {where}: synset {token} not in the synset list")
        return self.rank[token]


def collect_folder_layout(root, synsets):
    classes = sorted(d for d in os.listdir(root) if os.path.isdir(os.path.join(root, d)))
    if synsets is None:
        synsets = classes
        if len(classes) != 1000:
            print(f"warning: {len(classes)} class folders, not 1000; class indices are their "
                  f"sorted order, which matches ImageNet-1k only with --synsets", file=sys.stderr)
    label = Labeler(synsets, 0)
    items = []
    for c in classes:
        y = label(c, f"folder {c}")
        d = os.path.join(root, c)
        for name in sorted(os.listdir(d)):
            if is_image(name):
                items.append((os.path.join(d, name), y))
    return items


def collect_flat_layout(root, labels_path, synsets, id_base):
    files = sorted(n for n in os.listdir(root) if is_image(n))
    rows = []
    with open(labels_path) as f:
        for line in f:
            tok = line.replace(",", " ").split()
            if tok and tok[0].lower() not in ("imageid", "filename", "image", "file"):
                rows.append(tok)
    if not rows:
        sys.exit(f"imagenet_to_npy: --labels {labels_path}: no labels")
    paired = len(rows[0]) >= 2
    if synsets is None:
        names = {t[1] if paired else t[0] for t in rows}
        if not any(s.lstrip("-").isdigit() for s in names):
            synsets = sorted(names)
            if len(synsets) != 1000:
                print(f"warning: {len(synsets)} synsets in {labels_path}, not 1000; pass "
                      f"--synsets for ImageNet-1k class indices", file=sys.stderr)
    label = Labeler(synsets, id_base)
    items = []
    if paired:
        by_name = {}
        for t in rows:
            name = t[0] if is_image(t[0]) else t[0] + ".JPEG"
            by_name[name] = label(t[1], f"--labels {labels_path}: {t[0]}")
        for name in files:
            if name not in by_name:
                sys.exit(f"imagenet_to_npy: --labels {labels_path}: no label for {name}")
            items.append((os.path.join(root, name), by_name[name]))
    else:
        if len(rows) != len(files):
            sys.exit(f"imagenet_to_npy: --labels {labels_path}: {len(rows)} labels for "
                     f"{len(files)} images")
        for name, t in zip(files, rows):
            items.append((os.path.join(root, name), label(t[0], f"--labels {labels_path}")))
    return items


def main():
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter,
                                epilog=__doc__.split("\n", 2)[2])
    p.add_argument("val_dir", help="folder of images (folder per class, or flat with --labels)")
    p.add_argument("-o", "--output", required=True, help="output images .npy (float32 NCHW)")
    p.add_argument("-l", "--labels-out", required=True, help="output labels .npy (int64)")
    p.add_argument("--labels", help="label file for a flat folder (see below)")
    p.add_argument("--synsets", help="synset list defining class indices (see below)")
    p.add_argument("--id-base", type=int, default=0, help="base of numeric labels (default 0)")
    p.add_argument("--limit", type=int, default=0, help="keep at most N images (default all)")
    p.add_argument("--per-class", type=int, default=0,
                   help="keep at most K images per class, in sorted order (default all)")
    p.add_argument("--shuffle-seed", type=int, default=None,
                   help="pick the kept images at random with this seed (default: sorted order)")
    p.add_argument("--resize", type=int, default=256)
    p.add_argument("--crop", type=int, default=224)
    args = p.parse_args()

    synsets = read_synsets(args.synsets) if args.synsets else None
    if args.labels:
        items = collect_flat_layout(args.val_dir, args.labels, synsets, args.id_base)
    else:
        items = collect_folder_layout(args.val_dir, synsets)
    if args.per_class > 0:
        seen, kept = {}, []
        for path, y in items:
            if seen.get(y, 0) < args.per_class:
                kept.append((path, y))
                seen[y] = seen.get(y, 0) + 1
        items = kept
    if args.shuffle_seed is not None:
        order = np.random.default_rng(args.shuffle_seed).permutation(len(items))
        items = [items[i] for i in order]
    if args.limit > 0:
        items = items[:args.limit]
    if not items:
        sys.exit(f"imagenet_to_npy: no images found under {args.val_dir}")

    n = len(items)
    out = np.lib.format.open_memmap(args.output, mode="w+", dtype=np.float32,
                                    shape=(n, 3, args.crop, args.crop))
    labels = np.empty(n, dtype=np.int64)
    for i, (path, y) in enumerate(items):
        out[i] = preprocess(path, args.resize, args.crop)
        labels[i] = y
        if (i + 1) % 500 == 0 or i + 1 == n:
            print(f"{i + 1}/{n}", file=sys.stderr)
    out.flush()
    del out
    np.save(args.labels_out, labels)
    with open(os.path.splitext(args.output)[0] + ".files.txt", "w") as f:
        for path, _ in items:
            f.write(path + "\n")
    print(f"{args.output}: float32 {(n, 3, args.crop, args.crop)}; {args.labels_out}: int64 ({n},)")


if __name__ == "__main__":
    main()
