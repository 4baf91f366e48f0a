#!/usr/bin/python3
"""train_fashion_mnist.py: train the ResNet-50-topology Fashion-MNIST network of examples/resnet50 on the CPU.

Network (--arch): resnet50 (default): Bottleneck [3,4,6,3] (torchvision v1.5 keys and
block); resnet18: BasicBlock [2,2,2,2]. Both: base width W (planes W, 2W, 4W, 8W), 3x3
stride-1 stem without max-pool, 1 input channel, 10 classes (tools/resnet_torch.py).
Training images: --train-images N trains on training images 0..N-1 only and never
touches N..59999, which stay held out (e.g. to choose quantization defaults on images
the network has not seen); default all 60 000 for resnet50, the first 50 000 for resnet18.
Input: x = (pixel / 255 - mean) / std with the mean and std of the images trained on.
Augmentation: random 28x28 crop of the image zero-padded by 2 pixels, and horizontal flip
with probability 1/2. SGD, momentum 0.9, Nesterov, weight decay on conv and fc weights
only, label smoothing 0.1. Learning rate as a function of progress
p in [0, 1]: linear warm-up from 0.1 * peak to peak over p < 0.03, then cosine to 0 at p = 1.

Length: with --epochs N, p = step / (N * steps per epoch): a fixed, reproducible schedule
(given the seed and the thread count). With --epochs 0 (default), p = elapsed training
time / --budget-minutes: training stops when the budget is spent, so the run fits its
wall-clock budget on a machine shared with other work (the cores here are); the steps
done and the equivalent epochs are recorded in the JSON. OpenMP threads wait passively
(OMP_WAIT_POLICY=PASSIVE unless set), which avoids the large slowdown of spinning
threads on oversubscribed cores.

Outputs (defaults under examples/resnet50/, fashion_resnet18.* for --arch resnet18):
  fashion_resnet50.npz   float32 arrays, keys exactly as the state_dict, no num_batches_tracked
  fashion_resnet50.json  input size, normalization, class names, FP32 top-1/top-5 on the
                         10 000 test images, epochs, training seconds, architecture; with
                         --train-images N (so always for resnet18) also "train_images": [0, N]
                         and "held_out_train_images": [N, 60000]

Example:
  nohup /usr/bin/python3 tools/train_fashion_mnist.py --width 12 --budget-minutes 38 \
      > /tmp/train.log 2>&1 &
  nohup /usr/bin/python3 tools/train_fashion_mnist.py --arch resnet18 --width 16 \
      --train-images 50000 --budget-minutes 40 > /tmp/train18.log 2>&1 &
"""
import os

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")  # before torch starts OpenMP

import argparse  # noqa: E402
import gzip
import json
import math  # noqa: E402
import sys  # noqa: E402
import time  # noqa: E402

import numpy as np  # noqa: E402
import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from resnet_torch import exportable_state_dict, fashion_resnet18, fashion_resnet50  # noqa: E402

DATA_DIR = "/usr/share/datasets/fashion-mnist"
CLASSES = ["T-shirt/top", "Trouser", "Pullover", "Dress", "Coat",
           "Sandal", "Shirt", "Sneaker", "Bag", "Ankle boot"]
REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
ARCHS = {
    # name: (constructor, default width, architecture string prefix)
    "resnet50": (fashion_resnet50, 12, "resnet50 bottleneck [3,4,6,3]"),
    "resnet18": (fashion_resnet18, 16, "resnet18 basic [2,2,2,2]"),
}
DEFAULT_TRAIN_IMAGES = {"resnet50": None, "resnet18": 50000}  # None: all


def read_idx(path):
    """Read an IDX file (optionally .gz) into a numpy array of its declared type and shape."""
    opener = gzip.open if path.endswith(".gz") else open
    with opener(path, "rb") as f:
        data = f.read()
    if len(data) < 4 or data[0] != 0 or data[1] != 0:
        raise ValueError(f"read_idx: {path}: not an IDX file (bad magic)")
    types = {0x08: np.uint8, 0x09: np.int8, 0x0B: ">i2", 0x0C: ">i4", 0x0D: ">f4", 0x0E: ">f8"}
    if data[2] not in types:
        raise ValueError(f"read_idx: {path}: type code {data[2]:#x} unknown")
    ndim = data[3]
    shape = tuple(int.from_bytes(data[4 + 4 * i: 8 + 4 * i], "big") for i in range(ndim))
    arr = np.frombuffer(data, dtype=types[data[2]], offset=4 + 4 * ndim)
    if arr.size != int(np.prod(shape)):
        raise ValueError(f"read_idx: {path}: {arr.size} values, header says {shape}")
    return arr.reshape(shape)


def load_fashion(split, data_dir=DATA_DIR):
    """uint8 images (N, 28, 28) and int64 labels (N,) of split 'train' or 't10k'."""
    x = read_idx(os.path.join(data_dir, f"{split}-images-idx3-ubyte.gz"))
    y = read_idx(os.path.join(data_dir, f"{split}-labels-idx1-ubyte.gz")).astype(np.int64)
    if x.shape[0] != y.shape[0]:
        raise ValueError(f"load_fashion: {split}: {x.shape[0]} images but {y.shape[0]} labels")
    return x, y


def normalize(images_u8, mean, std):
    """uint8 (N, H, W) -> float32 NCHW (N, 1, H, W), x = (pixel / 255 - mean) / std."""
    x = images_u8.astype(np.float32) / np.float32(255.0)
    x = (x - np.float32(mean)) / np.float32(std)
    return np.ascontiguousarray(x[:, None, :, :], dtype=np.float32)


@torch.no_grad()
def evaluate(model, x, y, batch=500):
    """Top-1 and top-5 accuracy in percent; model in eval mode."""
    model.eval()
    top1 = top5 = 0
    for i in range(0, x.shape[0], batch):
        logits = model(x[i:i + batch])
        t5 = logits.topk(5, dim=1).indices
        yy = y[i:i + batch]
        top1 += (t5[:, 0] == yy).sum().item()
        top5 += (t5 == yy[:, None]).any(dim=1).sum().item()
    n = x.shape[0]
    return 100.0 * top1 / n, 100.0 * top5 / n


def augment(padded, idx, pad, gen):
    """Random crop (offsets 0..2*pad) and horizontal flip of padded[idx] in one gather."""
    b = idx.shape[0]
    size = padded.shape[-1] - 2 * pad
    oy = torch.randint(0, 2 * pad + 1, (b,), generator=gen)
    ox = torch.randint(0, 2 * pad + 1, (b,), generator=gen)
    flip = torch.rand(b, generator=gen) < 0.5
    r = torch.arange(size)
    rows = oy[:, None] + r
    cols = ox[:, None] + torch.where(flip[:, None], size - 1 - r, r)
    return padded[idx[:, None, None], rows[:, :, None], cols[:, None, :]].unsqueeze(1)


WARMUP = 0.03


def lr_at(progress, peak):
    """Warm-up 0.1 * peak -> peak over progress < WARMUP, then cosine to 0 at progress 1."""
    if progress < WARMUP:
        return peak * (0.1 + 0.9 * progress / WARMUP)
    t = min(1.0, (progress - WARMUP) / (1.0 - WARMUP))
    return 0.5 * peak * (1.0 + math.cos(math.pi * t))


def main():
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter,
                                epilog=__doc__.split("\n", 2)[2])
    p.add_argument("--arch", choices=sorted(ARCHS), default="resnet50",
                   help="network (default resnet50)")
    p.add_argument("--width", type=int, default=None,
                   help="base width W (default 12 for resnet50, 16 for resnet18)")
    p.add_argument("--train-images", type=int, default=None, metavar="N",
                   help="train on training images 0..N-1 only; N..59999 are held out and "
                        "never read into training (default: all for resnet50, 50000 for resnet18)")
    p.add_argument("--epochs", type=int, default=0,
                   help="fixed number of epochs; 0 = train for --budget-minutes (default)")
    p.add_argument("--budget-minutes", type=float, default=38.0,
                   help="wall-clock training time when --epochs is 0 (default 38)")
    p.add_argument("--batch", type=int, default=128)
    p.add_argument("--lr", type=float, default=0.1, help="peak learning rate (default 0.1)")
    p.add_argument("--wd", type=float, default=5e-4)
    p.add_argument("--label-smoothing", type=float, default=0.1)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--train-limit", type=int, default=0,
                   help="use only the first N training images (smoke tests; default all)")
    p.add_argument("--data-dir", default=DATA_DIR)
    p.add_argument("--out", default=None,
                   help="output path without extension (.npz and .json are written; default "
                        "examples/resnet50/fashion_<arch>)")
    args = p.parse_args()
    make_model, default_width, arch_name = ARCHS[args.arch]
    if args.width is None:
        args.width = default_width
    if args.train_images is None:
        args.train_images = DEFAULT_TRAIN_IMAGES[args.arch]
    if args.out is None:
        args.out = os.path.join(REPO, f"examples/resnet50/fashion_{args.arch}")

    t_start = time.time()
    torch.set_num_threads(args.threads)
    torch.manual_seed(args.seed)
    np.random.seed(args.seed)
    gen = torch.Generator().manual_seed(args.seed)

    xtr_u8, ytr = load_fashion("train", args.data_dir)
    xte_u8, yte = load_fashion("t10k", args.data_dir)
    n_train_total = int(xtr_u8.shape[0])
    split = None  # N: trained on [0, N), held out [N, total); recorded in the JSON
    if args.train_images is not None:
        if not 0 < args.train_images <= n_train_total:
            p.error(f"--train-images {args.train_images} is not in 1..{n_train_total}")
        split = args.train_images
        xtr_u8, ytr = xtr_u8[:split], ytr[:split]  # the held-out part is never used below
    if args.train_limit > 0:
        xtr_u8, ytr = xtr_u8[:args.train_limit], ytr[:args.train_limit]
    n_trained = int(xtr_u8.shape[0])
    pix = xtr_u8.astype(np.float64) / 255.0
    mean, std = float(pix.mean()), float(pix.std())
    del pix
    print(f"train {xtr_u8.shape}, test {xte_u8.shape}, mean {mean:.6f}, std {std:.6f}", flush=True)

    pad = 2
    xtr = torch.from_numpy(normalize(xtr_u8, mean, std))[:, 0]
    padded = F.pad(xtr, (pad, pad, pad, pad), value=(0.0 - mean) / std)  # zero pixels
    ytr_t = torch.from_numpy(ytr)
    xte = torch.from_numpy(normalize(xte_u8, mean, std))
    yte_t = torch.from_numpy(yte)

    model = make_model(args.width)
    decay = [p_ for n, p_ in model.named_parameters() if p_.ndim > 1]
    no_decay = [p_ for n, p_ in model.named_parameters() if p_.ndim <= 1]
    opt = torch.optim.SGD([{"params": decay, "weight_decay": args.wd},
                           {"params": no_decay, "weight_decay": 0.0}],
                          lr=args.lr, momentum=0.9, nesterov=True)
    n = xtr.shape[0]
    steps_per_epoch = n // args.batch  # drop the last partial batch
    total_steps = args.epochs * steps_per_epoch
    budget_s = args.budget_minutes * 60.0
    n_params = sum(p_.numel() for p_ in model.parameters())
    print(f"{'' if args.arch == 'resnet50' else args.arch + ', '}"
          f"width {args.width}, {n_params} parameters, {steps_per_epoch} steps/epoch", flush=True)

    t_train = time.time()
    step = 0
    epoch = 0
    done = False
    while not done:
        model.train()
        t_ep = time.time()
        perm = torch.randperm(n, generator=gen)
        loss_sum = correct = seen = 0
        for i in range(steps_per_epoch):
            if total_steps > 0:
                progress = step / total_steps
            else:
                progress = (time.time() - t_train) / budget_s
            if progress >= 1.0:
                done = True
                break
            idx = perm[i * args.batch:(i + 1) * args.batch]
            xb = augment(padded, idx, pad, gen)
            yb = ytr_t[idx]
            lr = lr_at(progress, args.lr)
            for g in opt.param_groups:
                g["lr"] = lr
            logits = model(xb)
            loss = F.cross_entropy(logits, yb, label_smoothing=args.label_smoothing)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            step += 1
            loss_sum += loss.item() * yb.shape[0]
            correct += (logits.argmax(1) == yb).sum().item()
            seen += yb.shape[0]
            if i % 100 == 0:
                print(f"  epoch {epoch + 1} step {i}/{steps_per_epoch} lr {lr:.4f} "
                      f"loss {loss.item():.4f} ({time.time() - t_ep:.0f} s)", flush=True)
        if seen == 0:
            break
        epoch += 1
        ep_s = time.time() - t_ep
        print(f"epoch {epoch}: {seen // args.batch} steps in {ep_s:.1f} s, train loss "
              f"{loss_sum / seen:.4f}, train acc {100.0 * correct / seen:.2f}%, "
              f"elapsed {time.time() - t_train:.0f} s", flush=True)
        torch.save(model.state_dict(), f"/tmp/fashion_{args.arch}_ckpt.pt")
        if total_steps > 0 and step >= total_steps:
            done = True
    train_seconds = time.time() - t_train
    epochs_done = step / steps_per_epoch
    print(f"trained {step} steps = {epochs_done:.2f} epochs in {train_seconds:.0f} s "
          f"({train_seconds / epochs_done:.0f} s per epoch on average)", flush=True)

    top1, top5 = evaluate(model, xte, yte_t)
    print(f"test: top-1 {top1:.2f}%, top-5 {top5:.2f}%", flush=True)

    os.makedirs(os.path.dirname(os.path.abspath(args.out)), exist_ok=True)
    np.savez_compressed(args.out + ".npz", **exportable_state_dict(model))
    meta = {
        "input": {"channels": 1, "height": 28, "width": 28},
        "normalization": {"mean": [mean], "std": [std],
                          "formula": "x = (pixel / 255 - mean) / std, per channel"},
        "classes": CLASSES,
        "fp32_top1": round(top1, 4),
        "fp32_top5": round(top5, 4),
        "test_images": int(xte.shape[0]),
        "epochs": round(epochs_done, 3),
        "steps": step,
        "steps_per_epoch": steps_per_epoch,
        "schedule_by": (f"{args.epochs} epochs" if args.epochs > 0
                        else f"wall-clock budget of {args.budget_minutes} minutes"),
        "train_seconds": round(train_seconds, 1),
        "architecture": f"{arch_name}, base width {args.width}, 3x3 stem, no max-pool",
        "parameters": n_params,
        "training": {"optimizer": "SGD momentum 0.9 nesterov", "peak_lr": args.lr,
                     "weight_decay": args.wd, "batch": args.batch,
                     "label_smoothing": args.label_smoothing, "seed": args.seed,
                     "threads": args.threads,
                     "augmentation": "random crop 28 from 2-pixel zero padding, horizontal flip",
                     "schedule": f"linear warm-up over {WARMUP} of training, then cosine to 0"},
        "torch_version": torch.__version__,
    }
    if split is not None:
        # Insert after "parameters" so the resnet50 JSON keeps its layout when no split is made.
        items = list(meta.items())
        at = [k for k, _ in items].index("parameters") + 1
        items[at:at] = [("train_images", [0, n_trained]),
                        ("held_out_train_images", [split, n_train_total])]
        meta = dict(items)
    with open(args.out + ".json", "w") as f:
        json.dump(meta, f, indent=2)
        f.write("\n")
    print(f"wrote {args.out}.npz ({os.path.getsize(args.out + '.npz')} bytes) and {args.out}.json; "
          f"total {time.time() - t_start:.0f} s", flush=True)


if __name__ == "__main__":
    main()
