#!/usr/bin/env python3
"""adaround_ref.py: AdaRound of one layer in PyTorch, an independent check of include/ptq/adaround.hpp.

Written from the paper (M. Nagel, R. A. Amjad, M. van Baalen, C. Louizos, T. Blankevoort,
"Up or Down? Adaptive Rounding for Post-Training Quantization", ICML 2020) and the
conventions docs/method.md section 9 fixes where the paper leaves a choice; it shares no
code with the C++ and lets autograd and torch.optim.Adam do the calculus and the update.

  u      = w * (1 / s), clamped to [-z - 1, Q - z + 1]; f = floor(u) + z     (floor code)
  h(V)   = clamp(sigmoid(V) (zeta - gamma) + gamma, 0, 1)                     (eq. 23)
  W_soft = s (clamp(f + h(V), 0, Q) - z),  V_0 such that h(V_0) = u - floor(u)
  loss   = (1/B) sum_b sum_k (W_soft X_b - Y_b)^2                              (eq. 25, Frobenius)
           or, with out_lo / out_hi, (clamp(W_soft X_b, lo_k, hi_k) - clamp(Y_b, lo_k, hi_k))^2
           (the output's activation: a ReLU, a quantizer's clip; section 9 of docs/method.md)
         + lambda sum (1 - |2 h(V) - 1|^beta)       once count = t + 1 >= warmup T   (eq. 24)
  beta   = beta_end + (beta_start - beta_end) max(0, 1 - (count - warmup T) / (T - warmup T))
  codes  = clamp(f + [V >= 0], 0, Q)

Usage: adaround_ref.py DIR [--iterations T] [--lambda L] [--beta-start B0] [--beta-end B1]
                           [--warmup W] [--lr LR] [--zeta Z] [--gamma G] [--float32]

Reads from DIR (.npy): w (K x D), x (D x N), y (K x N), scale, zero_point, qmax (K),
active (K: 0 marks a channel the grid maps to a constant; its row of `fixed` is used as
is and has no V), fixed (K x D), and batches (T x B column indices of each step; without
it every step uses all N columns and --iterations gives T); optionally out_lo and out_hi
(K each, +-inf allowed): each row's output clamped to [out_lo, out_hi] in the loss.
Writes to DIR: torch_rec, torch_reg, torch_beta (T: the two loss terms at each step's V
and batch, and beta), torch_codes (K x D, int64, -1 on constant rows), torch_h (K x D).
"""
import argparse
import os
import sys

import numpy as np
import torch


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("dir")
    ap.add_argument("--iterations", type=int, default=None, help="steps without batches.npy (full batch)")
    ap.add_argument("--lambda", dest="lam", type=float, default=0.01)
    ap.add_argument("--beta-start", type=float, default=20.0)
    ap.add_argument("--beta-end", type=float, default=2.0)
    ap.add_argument("--warmup", type=float, default=0.2)
    ap.add_argument("--lr", type=float, default=1e-3)
    ap.add_argument("--zeta", type=float, default=1.1)
    ap.add_argument("--gamma", type=float, default=-0.1)
    ap.add_argument("--float32", action="store_true", help="compute in float32 (default float64)")
    a = ap.parse_args()
    dtype = torch.float32 if a.float32 else torch.float64
    torch.set_num_threads(1)
    load = lambda name: np.load(os.path.join(a.dir, name + ".npy"))

    w = load("w").astype(np.float64)
    x = torch.from_numpy(load("x")).to(dtype)
    y = torch.from_numpy(load("y")).to(dtype)
    scale, zp, qmax = load("scale").astype(np.float64), load("zero_point").astype(np.float64), load("qmax").astype(np.float64)
    active = load("active").astype(bool)
    fixed = torch.from_numpy(load("fixed")).to(dtype)
    K, D = w.shape
    N = x.shape[1]
    assert x.shape[0] == D and y.shape == (K, N) and fixed.shape == (K, D)
    assert scale.shape == zp.shape == qmax.shape == active.shape == (K,)
    clamp = os.path.exists(os.path.join(a.dir, "out_lo.npy"))
    if clamp:
        lo = torch.from_numpy(load("out_lo").astype(np.float64)).to(dtype)[:, None]
        hi = torch.from_numpy(load("out_hi").astype(np.float64)).to(dtype)[:, None]
        assert lo.shape == hi.shape == (K, 1)
    batches_path = os.path.join(a.dir, "batches.npy")
    if os.path.exists(batches_path):
        batches = np.load(batches_path).astype(np.int64)
        T = batches.shape[0]
    else:
        if a.iterations is None:
            sys.exit("adaround_ref.py: no batches.npy and no --iterations")
        T = a.iterations
        batches = None

    # Grid position of every weight (numpy, float64); constant channels get f = 0, V = 0.
    z, q = zp[:, None], qmax[:, None]
    inv = np.where(active, 1.0 / np.where(active, scale, 1.0), 0.0)[:, None]
    u = np.clip(w * inv, -z - 1.0, q - z + 1.0)
    fl = np.floor(u)
    rest = u - fl
    f = np.where(active[:, None], fl + z, 0.0)
    v0 = np.where(active[:, None], -np.log((a.zeta - a.gamma) / (rest - a.gamma) - 1.0), 0.0)

    f_t, z_t, q_t = (torch.from_numpy(np.broadcast_to(v, (K, D)).copy()).to(dtype) for v in (f, z, q))
    s_t = torch.from_numpy(scale).to(dtype)[:, None]
    act_t = torch.from_numpy(active)[:, None].expand(K, D)
    V = torch.nn.Parameter(torch.from_numpy(v0).to(dtype))
    opt = torch.optim.Adam([V], lr=a.lr, betas=(0.9, 0.999), eps=1e-8)

    def h_of(v):
        return torch.clamp(torch.sigmoid(v) * (a.zeta - a.gamma) + a.gamma, 0.0, 1.0)

    w0 = a.warmup * T
    recs, regs, betas = [], [], []
    for t in range(T):
        cols = torch.arange(N) if batches is None else torch.from_numpy(batches[t])
        xb, yb = x[:, cols], y[:, cols]
        h = h_of(V)
        code = torch.clamp(f_t + h, min=torch.zeros_like(q_t), max=q_t)
        w_soft = torch.where(act_t, s_t * (code - z_t), fixed)
        out = w_soft @ xb
        err = torch.clamp(out, lo, hi) - torch.clamp(yb, lo, hi) if clamp else out - yb
        rec = (err * err).sum(dim=0).mean()
        count = t + 1
        if count < w0:
            beta = a.beta_start
            reg = torch.zeros((), dtype=dtype)
        else:
            beta = a.beta_end + (a.beta_start - a.beta_end) * max(0.0, 1.0 - (count - w0) / (T - w0))
            reg = a.lam * (1.0 - (2.0 * h[act_t] - 1.0).abs().pow(beta)).sum()
        loss = rec + reg
        opt.zero_grad()
        loss.backward()
        opt.step()
        recs.append(rec.item())
        regs.append(reg.item())
        betas.append(beta)

    with torch.no_grad():
        hard = torch.clamp(f_t + (V >= 0).to(dtype), min=torch.zeros_like(q_t), max=q_t)
        codes = torch.where(act_t, hard, torch.full_like(hard, -1.0)).to(torch.int64)
        h = torch.where(act_t, h_of(V), torch.zeros_like(V))
    np.save(os.path.join(a.dir, "torch_rec.npy"), np.array(recs))
    np.save(os.path.join(a.dir, "torch_reg.npy"), np.array(regs))
    np.save(os.path.join(a.dir, "torch_beta.npy"), np.array(betas))
    np.save(os.path.join(a.dir, "torch_codes.npy"), codes.numpy())
    np.save(os.path.join(a.dir, "torch_h.npy"), h.double().numpy())
    print(f"adaround_ref.py: K={K} D={D} N={N} T={T} rec {recs[0]:.6g} -> {recs[-1]:.6g}, reg {regs[-1]:.6g}")


if __name__ == "__main__":
    main()
