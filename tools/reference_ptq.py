#!/usr/bin/python3
"""reference_ptq.py: an independent PyTorch (CPU) implementation of the reference pipeline of
Banner, Nahshan & Soudry, "Post training 4-bit quantization of convolutional networks for
rapid-deployment" (NeurIPS 2019), as its public code (submission2019/cnn-quantization) runs it.

Written from the method (docs/method.md) and from what the authors' code does; it shares no
logic with ptq's C++ code and is used to check resnet_ptq (test/fidelity/). Only the float
model is built with tools/resnet_torch.py (from_state_dict); everything else is here.

Pipeline (fake quantization, float32 network):
  * Every BatchNorm is folded into its conv: w * gamma/sqrt(var+eps), bias = beta - gamma*mean/sqrt(var+eps).
  * Quantized points: every conv output after its folded bias, before the residual add and the
    ReLU. A conv that feeds a ReLU directly ("before_relu": the stem conv, each block's conv1 and
    a bottleneck's conv2) uses the unsigned range; a block's last conv and the downsample conv
    are signed. The global average pool output is not quantized; biases stay float; the
    network input is not quantized.
  * Edge layers, always at 8 bits per tensor without clipping (the reference does this for the
    first conv's activation only with --qtype int4; here it is 8 bits for any --abits, and the
    first conv's and the classifier's weights are 8 bits for any --wbits):
      first conv output: [0, averaged max] (it feeds a ReLU);
      max-pool output (ImageNet stem only): [averaged min, averaged max];
      logits: [min of minima, max of maxima] over the calibration set (global), signed.
  * Other conv outputs: per channel at --abits. No clipping: [averaged min (0 if unsigned),
    averaged max]. ACIQ (--clip laplace|gauss): alpha = b * laplace[bits] or std * gauss[bits]
    with the reference's rounded tables; signed lo = max(min, mean - alpha), hi = lo + 2 alpha;
    unsigned lo = 0, hi = max(mean, 0) + alpha. --bit-alloc-a (bits <= 4): per-channel bits by
    the paper's 2/3-power rule on the per-channel std; Laplace then takes each channel's bits
    in its table, Gauss keeps the layer's nominal bits for alpha (a quirk of the reference)
    and uses each channel's bits for its grid.
  * Weights: per output channel over the exact min/max, --wbits (edges 8); --bit-alloc-w
    (bits <= 4) from the std of each output channel's weights. Then --var-corr-w
    (wq = (wq - mean wq) * std w / (std wq + 1e-8) + mean wq) and --bias-corr-w
    (wq = wq - mean wq + mean w), per output channel, on every quantized weight tensor.
  * Quantizer (gemmlowp scheme as the reference computes it): qmax = 2^b - 1,
    scale = max((hi - lo)/qmax or 0 when qmax = 0, 1e-8), zp = round(-lo/scale) (not clamped,
    the range is not extended to contain 0), q = clamp(round(x/scale + zp), 0, qmax),
    out = (q - zp) * scale; a 0-bit channel therefore outputs ~lo, a constant.
    --zero-in-range first extends [lo, hi] to [min(lo,0), max(hi,0)] (gemmlowp's requirement
    that 0.0 be exact, which ptq's quantizer applies) for every channel of at least 1 bit;
    a 0-bit channel keeps the constant lo.
  * Bit allocation (get_bits_alloc_fixed_target): bits_i = clamp(round(log2(n 2^t a_i^(2/3) /
    sum a_j^(2/3))), 0, 8), t re-tuned from the goal by t += (goal - mean bits)/2 at most 10
    times, stopping within 0.01 of the goal.
  * Statistics of the FP32 network over the calibration images (--calib-stats):
      image  (default; the reference's offline route, batch 1): per-image per-channel min, max,
             mean, b = mean|x - mean|, unbiased std over H*W, averaged over the images;
      batch  (--calib-batch N): the same over each batch's N*H*W values, averaged over the
             batches (unweighted);
      pooled: exact statistics over all calibration values.
    Per-tensor min/max (first conv, max-pool) are means of per-image minima/maxima for image
    and batch, global for pooled; the logits' range is always global.

Usage:
  tools/reference_ptq.py --weights W.npz --images X.npy --labels Y.npy --calib C.npy
      [--limit N] [--wbits N] [--abits N] [--clip none|laplace|gauss] [--bit-alloc-a]
      [--bit-alloc-w] [--bias-corr-w] [--var-corr-w] [--calib-stats image|batch|pooled]
      [--calib-batch N] [--zero-in-range] [--dump OUT.npz] [--dump-dir DIR] [--json OUT.json]
      [--table] [--threads N]
--wbits/--abits 32 mean float (no quantization at all of weights / activations, edges included).
--table runs the ablation rows (ACIQ rows with --clip, laplace when none is given); --dump-dir
writes DIR/row<i>.npz for each row (--dump: one configuration). Top-1 counts a hit when no class
scores strictly above the label's class.

Dump keys: logits; act/<conv>/{lo,hi,bits}, act/maxpool/..., act/logits/... (lo/hi nominal,
before --zero-in-range); weight/<conv>, weight/fc (float32, state_dict shape);
stats/<conv>/{min,max,mean,b,std}; and, reference-only, wbits/<conv|fc> (int32 per output
channel), wstep/<conv|fc> (float64: the weight grid step after the variance correction) and
wlo/<conv|fc>, whi/<conv|fc> (float64: the nominal per-channel weight range).
"""
import argparse
import json
import os
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from glibc_heap import keep_freed_memory  # noqa: E402

if __name__ == "__main__":
    keep_freed_memory()  # before torch: large tensors would page-fault on every allocation (glibc_heap.py)

import numpy as np
import torch
import torch.nn.functional as F

from resnet_torch import from_state_dict  # noqa: E402

# The reference code's rounded ACIQ factors (int_quantizer.py).
LAPLACE = {0: 1.05, 1: 1.86, 2: 2.83, 3: 3.89, 4: 5.03, 5: 6.2, 6: 7.41, 7: 8.64, 8: 9.89}
LAPLACE_POS = {0: 1.86, 1: 2.83, 2: 3.89, 3: 5.02, 4: 6.2, 5: 7.41, 6: 8.64, 7: 9.89, 8: 11.16}
GAUSS = {1: 1.24, 2: 1.71, 3: 2.15, 4: 2.55, 5: 2.93, 6: 3.28, 7: 3.61, 8: 3.92}
GAUSS_POS = {1: 1.71, 2: 2.15, 3: 2.55, 4: 2.93, 5: 3.28, 6: 3.61, 7: 3.92, 8: 4.2}
EDGE_BITS = 8
FLOAT_BITS = 32
STAT_NAMES = ("min", "max", "mean", "b", "std")


# --------------------------------------------------------------------------------------------
# The folded network

class Conv:
    def __init__(self, name, w, b, stride, padding, before_relu):
        self.name, self.w, self.b = name, w, b
        self.stride, self.padding, self.before_relu = stride, padding, before_relu


def fold(conv, bn):
    """Conv weight and bias with the BatchNorm folded in (float32 result, float64 arithmetic)."""
    w = conv.weight.detach().double()
    scale = bn.weight.detach().double() / torch.sqrt(bn.running_var.detach().double() + bn.eps)
    wf = (w * scale.view(-1, 1, 1, 1)).float()
    bf = (bn.bias.detach().double() - scale * bn.running_mean.detach().double()).float()
    return wf, bf


class FoldedResNet:
    """The float network as a list of folded convs and the block structure, run functionally."""

    def __init__(self, model):
        self.imagenet = model.stem == "imagenet"
        self.convs = {}
        self.order = []

        def add(name, conv, bn, before_relu):
            w, b = fold(conv, bn)
            self.convs[name] = Conv(name, w, b, conv.stride, conv.padding, before_relu)
            self.order.append(name)

        add("conv1", model.conv1, model.bn1, True)
        self.blocks = []
        for k in range(1, 5):
            for i, blk in enumerate(getattr(model, f"layer{k}")):
                p = f"layer{k}.{i}."
                bottleneck = hasattr(blk, "conv3")
                names = [p + "conv1", p + "conv2"] + ([p + "conv3"] if bottleneck else [])
                add(p + "conv1", blk.conv1, blk.bn1, True)
                add(p + "conv2", blk.conv2, blk.bn2, bottleneck)
                if bottleneck:
                    add(p + "conv3", blk.conv3, blk.bn3, False)
                ds = None
                if blk.downsample is not None:
                    ds = p + "downsample.0"
                    add(ds, blk.downsample[0], blk.downsample[1], False)
                self.blocks.append((names, ds))
        self.fc_w = model.fc.weight.detach().float().clone()
        self.fc_b = model.fc.bias.detach().float().clone()
        self.first = "conv1"

    def weights(self):
        d = {n: c.w for n, c in self.convs.items()}
        d["fc"] = self.fc_w
        return d

    def forward(self, x, W=None, quant=None, observe=None):
        """Run the network on x with weights W (name -> tensor; default the folded float ones).
        quant: point name -> callable applied to that point's output; observe(name, tensor) is
        called on each quantized point's float output (before quant)."""
        W = W or self.weights()
        quant = quant or {}

        def point(name, y):
            if observe is not None:
                observe(name, y)
            q = quant.get(name)
            return q(y) if q is not None else y

        def conv(name, x):
            c = self.convs[name]
            return point(name, F.conv2d(x, W[name], c.b, c.stride, c.padding))

        y = F.relu(conv("conv1", x))
        if self.imagenet:
            y = point("maxpool", F.max_pool2d(y, 3, 2, 1))
        for names, ds in self.blocks:
            identity = conv(ds, y) if ds is not None else y
            h = y
            for n in names[:-1]:
                h = F.relu(conv(n, h))
            h = conv(names[-1], h)
            y = F.relu(h + identity)
        y = torch.flatten(F.adaptive_avg_pool2d(y, 1), 1)
        return point("logits", F.linear(y, W["fc"], self.fc_b))


# --------------------------------------------------------------------------------------------
# Calibration statistics

class Stats:
    """Statistics of every quantized point over the calibration set under one protocol.

    conv[name][s]: float64 per channel (s in STAT_NAMES); tensor_min/tensor_max[name]: per-tensor
    range used by the edge layers (first conv, max-pool); logits_min/logits_max: global."""

    def __init__(self, net, calib, protocol, calib_batch):
        self.protocol = protocol
        self.conv = {}
        self.tensor_min, self.tensor_max = {}, {}
        self.logits_min, self.logits_max = np.inf, -np.inf
        if protocol == "image":
            self._averaged(net, calib, 256, per_image=True)
        elif protocol == "batch":
            self._averaged(net, calib, calib_batch, per_image=False)
        elif protocol == "pooled":
            self._pooled(net, calib)
        else:
            raise ValueError(protocol)

    def _observe_logits(self, y):
        self.logits_min = min(self.logits_min, float(y.min()))
        self.logits_max = max(self.logits_max, float(y.max()))

    def _averaged(self, net, calib, batch, per_image):
        sums, tsum_min, tsum_max = {}, {}, {}
        count = [0, 0]  # units averaged (images or batches), images

        def observe(name, y):
            if name == "logits":
                self._observe_logits(y)
                return
            n = y.shape[0]
            flat = y.reshape(n, -1)
            tsum_min[name] = tsum_min.get(name, 0.0) + float(flat.amin(1).double().sum())
            tsum_max[name] = tsum_max.get(name, 0.0) + float(flat.amax(1).double().sum())
            if name == "maxpool":
                return
            c = y.shape[1]
            if per_image:
                t = y.reshape(n, c, -1)  # per image, per channel over H*W
            else:
                t = y.transpose(0, 1).reshape(1, c, -1)  # the batch: over N*H*W
            mn, mx = torch.aminmax(t, dim=2)
            t = t.double()
            m = t.shape[2]
            mean = t.mean(2)
            d = t - mean.unsqueeze(2)
            vals = {"min": mn.double(), "max": mx.double(), "mean": mean,
                    "b": torch.linalg.vector_norm(d, 1, dim=2) / m,
                    "std": torch.linalg.vector_norm(d, 2, dim=2) / np.sqrt(m - 1)}
            acc = sums.setdefault(name, {s: torch.zeros(c, dtype=torch.float64) for s in STAT_NAMES})
            for s in STAT_NAMES:
                acc[s] += vals[s].sum(0)

        with torch.no_grad():
            for i in range(0, calib.shape[0], batch):
                x = torch.from_numpy(calib[i:i + batch])
                net.forward(x, observe=observe)
                count[0] += x.shape[0] if per_image else 1
                count[1] += x.shape[0]
        for name, acc in sums.items():
            self.conv[name] = {s: (acc[s] / count[0]).numpy() for s in STAT_NAMES}
        for name in tsum_min:
            self.tensor_min[name] = tsum_min[name] / count[1]
            self.tensor_max[name] = tsum_max[name] / count[1]

    def _pooled(self, net, calib, batch=256):
        mins, maxs, sums, counts = {}, {}, {}, {}

        def pass1(name, y):
            if name == "logits":
                self._observe_logits(y)
                return
            t = y.transpose(0, 1).reshape(y.shape[1], -1)
            mn, mx = t.amin(1).double(), t.amax(1).double()
            if name in mins:
                mins[name] = torch.minimum(mins[name], mn)
                maxs[name] = torch.maximum(maxs[name], mx)
                sums[name] += t.double().sum(1)
                counts[name] += t.shape[1]
            else:
                mins[name], maxs[name], sums[name], counts[name] = mn, mx, t.double().sum(1), t.shape[1]

        with torch.no_grad():
            for i in range(0, calib.shape[0], batch):
                net.forward(torch.from_numpy(calib[i:i + batch]), observe=pass1)
        means = {n: sums[n] / counts[n] for n in sums}
        abs_dev, sq_dev = {}, {}

        def pass2(name, y):
            if name in ("logits", "maxpool"):
                return
            t = y.double().transpose(0, 1).reshape(y.shape[1], -1) - means[name].unsqueeze(1)
            abs_dev[name] = abs_dev.get(name, 0) + t.abs().sum(1)
            sq_dev[name] = sq_dev.get(name, 0) + (t * t).sum(1)

        with torch.no_grad():
            for i in range(0, calib.shape[0], batch):
                net.forward(torch.from_numpy(calib[i:i + batch]), observe=pass2)
        for name in means:
            if name == "maxpool":
                self.tensor_min[name] = float(mins[name].min())
                self.tensor_max[name] = float(maxs[name].max())
                continue
            n = counts[name]
            self.conv[name] = {"min": mins[name].numpy(), "max": maxs[name].numpy(),
                               "mean": means[name].numpy(), "b": (abs_dev[name] / n).numpy(),
                               "std": torch.sqrt(sq_dev[name] / (n - 1)).numpy()}
            self.tensor_min[name] = float(mins[name].min())
            self.tensor_max[name] = float(maxs[name].max())


# --------------------------------------------------------------------------------------------
# Quantizer pieces

def bits_alloc(alpha, goal):
    """The paper's 2/3-power rule with the reference's re-tuned target (get_bits_alloc_fixed_target)."""
    alpha = np.asarray(alpha, dtype=np.float64)
    p = alpha ** (2.0 / 3.0)
    target = float(goal)
    bits = None
    for _ in range(10):
        bins = len(alpha) * 2.0 ** target * p / p.sum()
        with np.errstate(divide="ignore"):
            bits = np.clip(np.round(np.log2(bins)), 0, 8)
        miss = goal - bits.mean()
        target += miss / 2
        if abs(miss) <= 0.01:
            break
    return np.nan_to_num(bits).astype(np.int32)


def grid(lo, hi, bits, zero_in_range):
    """Scale, zero point and qmax (float32 tensors, as the reference computes them in float32)
    of the gemmlowp scheme for ranges lo/hi and bits (per channel or one value)."""
    lo = torch.as_tensor(np.asarray(lo, dtype=np.float64)).float()
    hi = torch.as_tensor(np.asarray(hi, dtype=np.float64)).float()
    qmax = torch.as_tensor(2.0 ** np.asarray(bits, dtype=np.float64) - 1.0).float()
    qmax = torch.broadcast_to(qmax, lo.shape)
    if zero_in_range:  # a 0-bit channel has no grid to hold 0: it stays the constant lo
        lo = torch.where(qmax > 0, torch.clamp(lo, max=0.0), lo)
        hi = torch.where(qmax > 0, torch.clamp(hi, min=0.0), hi)
    scale = torch.where(qmax > 0, (hi - lo) / torch.clamp(qmax, min=1.0), torch.zeros_like(lo))
    scale = torch.clamp(scale, min=1e-8)
    zp = torch.round(-(lo / scale))
    return scale, zp, qmax


def fake_quantize(x, scale, zp, qmax):
    """(clamp(round(x / scale + zp), 0, qmax) - zp) * scale; scale, zp, qmax broadcast to x."""
    v = torch.addcdiv(zp, x, scale).round_()
    torch.clamp(v, torch.zeros_like(qmax), qmax, out=v)
    return v.sub_(zp).mul_(scale)


def act_quantizer(lo, hi, bits, zero_in_range):
    """Fake quantizer of an NCHW (or NC) tensor: per channel when lo has more than one value."""
    scale, zp, qmax = grid(lo, hi, bits, zero_in_range)
    shape = (1, -1, 1, 1) if scale.numel() > 1 else (1,)
    s, z, q = scale.reshape(shape), zp.reshape(shape), qmax.reshape(shape)
    return lambda y: fake_quantize(y, s, z, q)


def quantize_weights(w, bits_nominal, bit_alloc, var_corr, bias_corr, zero_in_range):
    """Per output channel min/max quantization of a float32 weight tensor and the corrections,
    in float32 like the reference. Returns (float32 tensor in w's shape, bits per channel,
    grid step after the variance correction)."""
    t = w.detach().float().reshape(w.shape[0], -1)
    lo, hi = t.amin(1), t.amax(1)
    if bit_alloc and bits_nominal <= 4:
        bits = bits_alloc(t.double().std(1, unbiased=True).numpy(), bits_nominal)
    else:
        bits = np.full(t.shape[0], bits_nominal, dtype=np.int32)
    scale, zp, qmax = grid(lo.numpy(), hi.numpy(), bits, zero_in_range)
    wq = fake_quantize(t, scale[:, None], zp[:, None], qmax[:, None])
    step = scale.double()
    mean_q = wq.mean(1, keepdim=True)
    if var_corr:
        ratio = t.std(1, unbiased=True) / (wq.std(1, unbiased=True) + 1e-8)
        wq = (wq - mean_q) * ratio[:, None] + mean_q
        step = step * ratio.double()
    if bias_corr:
        wq = wq - mean_q + t.mean(1, keepdim=True)
    return wq.reshape(w.shape).contiguous(), bits, step.numpy()


# --------------------------------------------------------------------------------------------
# One configuration

class Config:
    FIELDS = ("wbits", "abits", "clip", "bit_alloc_a", "bit_alloc_w", "bias_corr_w", "var_corr_w")

    def __init__(self, name, wbits=32, abits=32, clip="none", bit_alloc_a=False, bit_alloc_w=False,
                 bias_corr_w=False, var_corr_w=False):
        self.name, self.wbits, self.abits, self.clip = name, wbits, abits, clip
        self.bit_alloc_a, self.bit_alloc_w = bit_alloc_a, bit_alloc_w
        self.bias_corr_w, self.var_corr_w = bias_corr_w, var_corr_w

    def as_dict(self):
        d = {"name": self.name}
        d.update({f: getattr(self, f) for f in self.FIELDS})
        return d


def activation_ranges(net, stats, cfg):
    """point name -> (lo, hi, bits) as numpy arrays (length 1 for per-tensor points)."""
    ranges = {}
    one = lambda v: np.array([v], dtype=np.float64)  # noqa: E731
    edge_bits = np.array([EDGE_BITS], dtype=np.int32)
    for name in net.order:
        c = net.convs[name]
        if name == net.first:
            ranges[name] = (one(0.0), one(stats.tensor_max[name]), edge_bits)
            continue
        s = stats.conv[name]
        n = s["mean"].shape[0]
        unsigned = c.before_relu
        nominal = cfg.abits
        if cfg.bit_alloc_a and nominal <= 4:
            bits = bits_alloc(s["std"], nominal)
        else:
            bits = np.full(n, nominal, dtype=np.int32)
        if cfg.clip == "none":
            lo = np.zeros(n) if unsigned else s["min"].copy()
            hi = s["max"].copy()
        else:
            if cfg.clip == "laplace":
                table = LAPLACE_POS if unsigned else LAPLACE
                alpha = s["b"] * np.array([table[int(k)] for k in bits])
            else:  # gauss: the layer's nominal bits for alpha (reference quirk)
                table = GAUSS_POS if unsigned else GAUSS
                alpha = s["std"] * table[nominal]
            if unsigned:
                lo = np.zeros(n)
                hi = np.maximum(s["mean"], 0.0) + alpha
            else:
                lo = np.maximum(s["min"], s["mean"] - alpha)
                hi = lo + 2.0 * alpha
        ranges[name] = (lo, hi, bits)
    if net.imagenet:
        ranges["maxpool"] = (one(stats.tensor_min["maxpool"]), one(stats.tensor_max["maxpool"]), edge_bits)
    ranges["logits"] = (one(stats.logits_min), one(stats.logits_max), edge_bits)
    return ranges


def check_bits(cfg):
    for what, b in (("wbits", cfg.wbits), ("abits", cfg.abits)):
        if b != FLOAT_BITS and not 1 <= b <= 16:
            raise SystemExit(f"reference_ptq: --{what} {b} is not 1..16 or 32")
    if cfg.clip != "none" and cfg.abits != FLOAT_BITS and cfg.abits > 8:
        raise SystemExit(f"reference_ptq: --clip {cfg.clip} has factors for 1..8 bits, not {cfg.abits}")


def run_config(net, cfg, stats, x, zero_in_range, batch=500):
    """Quantize per cfg and evaluate on x. Returns (logits, dump dict)."""
    check_bits(cfg)
    dump = {}
    W = net.weights()
    W_float = dict(W)
    if cfg.wbits != FLOAT_BITS:
        for name in list(W):
            edge = name in (net.first, "fc")
            bits = EDGE_BITS if edge else cfg.wbits
            wq, wb, step = quantize_weights(W[name], bits, cfg.bit_alloc_w and not edge, cfg.var_corr_w,
                                            cfg.bias_corr_w, zero_in_range)
            W[name] = wq
            dump[f"weight/{name}"] = wq.numpy().copy()
            dump[f"wbits/{name}"] = wb.astype(np.int32)
            dump[f"wstep/{name}"] = step.astype(np.float64)
            t = W_float[name].reshape(W_float[name].shape[0], -1)
            dump[f"wlo/{name}"] = t.amin(1).double().numpy()
            dump[f"whi/{name}"] = t.amax(1).double().numpy()
    quant = {}
    if cfg.abits != FLOAT_BITS:
        for point, (lo, hi, bits) in activation_ranges(net, stats, cfg).items():
            quant[point] = act_quantizer(lo, hi, bits, zero_in_range)
            dump[f"act/{point}/lo"] = lo.astype(np.float64)
            dump[f"act/{point}/hi"] = hi.astype(np.float64)
            dump[f"act/{point}/bits"] = bits.astype(np.int32)
    if stats is not None:
        for name, s in stats.conv.items():
            for k in STAT_NAMES:
                dump[f"stats/{name}/{k}"] = s[k].astype(np.float64)
    out = []
    with torch.no_grad():
        for i in range(0, x.shape[0], batch):
            out.append(net.forward(torch.from_numpy(x[i:i + batch]), W, quant))
    logits = torch.cat(out).numpy().astype(np.float32)
    dump["logits"] = logits
    return logits, dump


def top1(logits, labels):
    own = logits[np.arange(len(labels)), labels]
    return 100.0 * float(((logits > own[:, None]).sum(1) == 0).mean())


TABLE_ROWS = [
    ("FP32", dict()),
    ("W8A8", dict(wbits=8, abits=8)),
    ("W4A4 naive", dict(wbits=4, abits=4)),
    ("W4A4 +ACIQ", dict(wbits=4, abits=4, clip="CLIP")),
    ("W4A4 +ACIQ +bit alloc A", dict(wbits=4, abits=4, clip="CLIP", bit_alloc_a=True)),
    ("W4A4 +ACIQ +bit alloc A +bit alloc W", dict(wbits=4, abits=4, clip="CLIP", bit_alloc_a=True,
                                                  bit_alloc_w=True)),
    ("W4A4 full (+bias corr W)", dict(wbits=4, abits=4, clip="CLIP", bit_alloc_a=True, bit_alloc_w=True,
                                      bias_corr_w=True)),
]


def table_configs(clip):
    clip = clip if clip != "none" else "laplace"
    label = {"laplace": "Laplace", "gauss": "Gauss"}[clip]
    cfgs = []
    for name, kw in TABLE_ROWS:
        kw = {k: (clip if v == "CLIP" else v) for k, v in kw.items()}
        cfgs.append(Config(name.replace("+ACIQ", f"+ACIQ ({label})"), **kw))
    return cfgs


def main():
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter,
                                epilog=__doc__.split("\n", 1)[1])
    p.add_argument("--weights", required=True)
    p.add_argument("--images", required=True)
    p.add_argument("--labels", required=True)
    p.add_argument("--calib", required=True)
    p.add_argument("--limit", type=int, default=0)
    p.add_argument("--calib-limit", type=int, default=0)
    p.add_argument("--wbits", type=int, default=32)
    p.add_argument("--abits", type=int, default=32)
    p.add_argument("--clip", choices=("none", "laplace", "gauss"), default="none")
    p.add_argument("--bit-alloc-a", action="store_true")
    p.add_argument("--bit-alloc-w", action="store_true")
    p.add_argument("--bias-corr-w", action="store_true")
    p.add_argument("--var-corr-w", action="store_true")
    p.add_argument("--calib-stats", choices=("image", "batch", "pooled"), default="image")
    p.add_argument("--calib-batch", type=int, default=0, help="images per batch for --calib-stats batch")
    p.add_argument("--zero-in-range", action="store_true")
    p.add_argument("--dump", help="OUT.npz: the configuration's logits, ranges, weights, statistics")
    p.add_argument("--dump-dir", help="with --table: DIR/row<i>.npz per row")
    p.add_argument("--json")
    p.add_argument("--table", action="store_true")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--batch", type=int, default=500, help="evaluation batch")
    a = p.parse_args()
    torch.set_num_threads(a.threads)
    if a.calib_stats == "batch" and a.calib_batch <= 0:
        p.error("--calib-stats batch needs --calib-batch N (N >= 1)")
    if a.calib_stats != "batch" and a.calib_batch:
        p.error("--calib-batch needs --calib-stats batch")
    if a.dump_dir and not a.table:
        p.error("--dump-dir needs --table (--dump for one configuration)")
    if a.dump and a.table:
        p.error("--table writes --dump-dir DIR, not --dump")

    with np.load(a.weights) as z:
        sd = {k: z[k] for k in z.files}
    net = FoldedResNet(from_state_dict(sd).eval())
    x = np.load(a.images, mmap_mode="r")
    y = np.load(a.labels).astype(np.int64)
    if a.limit > 0:
        x, y = x[:a.limit], y[:a.limit]
    x = np.ascontiguousarray(x, dtype=np.float32)
    if x.shape[0] != y.shape[0]:
        sys.exit(f"reference_ptq: {x.shape[0]} images but {y.shape[0]} labels")
    calib = np.load(a.calib, mmap_mode="r")
    if a.calib_limit > 0:
        calib = calib[:a.calib_limit]
    calib = np.ascontiguousarray(calib, dtype=np.float32)

    if a.table:
        cfgs = table_configs(a.clip)
    else:
        cfgs = [Config("custom", a.wbits, a.abits, a.clip, a.bit_alloc_a, a.bit_alloc_w, a.bias_corr_w,
                       a.var_corr_w)]
    for cfg in cfgs:
        check_bits(cfg)
    stats, calib_s = None, 0.0
    if any(c.wbits != FLOAT_BITS or c.abits != FLOAT_BITS for c in cfgs) or a.dump:
        t0 = time.time()
        with torch.no_grad():
            stats = Stats(net, calib, a.calib_stats, a.calib_batch)
        calib_s = time.time() - t0
        print(f"reference_ptq: statistics ({a.calib_stats}) of {calib.shape[0]} calibration images "
              f"in {calib_s:.1f} s", file=sys.stderr)
    if a.dump_dir:
        os.makedirs(a.dump_dir, exist_ok=True)

    rows = []
    if a.table:
        print("| configuration | top-1 |\n|---|---|")
    for i, cfg in enumerate(cfgs):
        t0 = time.time()
        logits, dump = run_config(net, cfg, stats, x, a.zero_in_range, a.batch)
        acc = top1(logits, y)
        row = {"top1": acc, "images": int(x.shape[0]), "seconds": time.time() - t0,
               "config": dict(cfg.as_dict(), calib_stats=a.calib_stats, calib_batch=a.calib_batch,
                              zero_in_range=a.zero_in_range)}
        rows.append(row)
        if a.table:
            print(f"| {cfg.name} | {acc:.2f} |", flush=True)
        else:
            print(json.dumps(row))
        if a.dump:
            np.savez(a.dump, **dump)
        if a.dump_dir:
            np.savez(os.path.join(a.dump_dir, f"row{i}.npz"), **dump)
    if a.json:
        with open(a.json, "w") as f:
            json.dump({"calibration_images": int(calib.shape[0]), "calibration_seconds": calib_s,
                       "rows": rows}, f, indent=1)


if __name__ == "__main__":
    main()
