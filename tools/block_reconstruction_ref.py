#!/usr/bin/env python3
"""block_reconstruction_ref.py: BRECQ block reconstruction with QDrop in PyTorch, an independent check of include/ptq/block_reconstruction.hpp.

Written from the papers (Y. Li et al., "BRECQ: Pushing the Limit of Post-Training
Quantization by Block Reconstruction", ICLR 2021; X. Wei et al., "QDrop: Randomly Dropping
Quantization for Extremely Low-bit Post-Training Quantization", ICLR 2022; AdaRound, Nagel
et al. 2020) and the conventions the C++ header documents; it shares no code with the C++:
torch.nn.functional.conv2d runs the convs, autograd does the calculus, torch.optim.Adam the
update, numpy's uint64 arithmetic the QDrop hash.

  per conv j:  z_j = conv2d(X_j, W_soft_j, bias_j, stride, pad)
               X_j = input_j, or with input scales s (the integer network: weights folded, W' = W diag(s)):
                     round(input_j * (1 / s_c)) per channel c (0 where s_c = 0; torch.round: half to even),
                     straight-through gradient 1 / s_c
               a_j = fake_quant(z_j) forward, straight-through gradient (1 where lo <= z <= hi)
                     or z_j itself where QDrop drops the element (or no quantizer)
               o_j = relu(a_j) if the conv has a ReLU
  block:       v = relu?(o_main + shortcut),  shortcut = block input, o_j, or nothing
               out = fake_quant(v) with the output quantizer (STE as above; v where dropped), or v
  W_soft       = s (clamp(f + h(V), 0, Q) - z),  h(V) = clamp(sigmoid(V) (zeta - gamma) + gamma, 0, 1)
  loss         = sum((out - y)^2) / (B OH OW) + lambda sum_all_convs (1 - |2 h(V) - 1|^beta)
  QDrop draw   = (mix(mix(mix(mix(mix(seed) + t) + tensor) + n) + e) >> 11) 2^-53 < qdrop,
                 mix = splitmix64's finalizer, tensor 0 = block input, j + 1 = conv j,
                 n_conv + 1 = the block output,
                 n = the image's index, e = the element's NCHW index within the image
  codes        = clamp(f + [V >= 0], 0, Q)
  learned steps (--act-lr > 0; LSQ): every activation quantizer's scale per channel c is
                 scale0_c exp(theta_c), theta a parameter (0 at the start, Adam with --act-lr);
                 the quantizer's value has gradient 1 in z and round(z / scale) - z / scale in
                 the scale where lo <= z <= hi, and 0 in z and its clamp code minus the zero point
                 in the scale outside; constant channels keep their scale and value

Usage: block_reconstruction_ref.py DIR [--lambda L] [--beta-start B0] [--beta-end B1]
                                       [--warmup W] [--lr LR] [--zeta Z] [--gamma G] [--act-lr A]

Reads from DIR: block.json ({"convs": [{"in_channels", "out_channels", "kernel", "stride",
"pad", "source", "relu"}, ...], "main", "shortcut", "relu", "height", "width", "qdrop",
"seed"}) and .npy files, per conv j: w{j} (K x C k k, KCRS), b{j} (K), the weight grid per
row wscale{j}, wzp{j}, wqmax{j}, wactive{j} (K; 0: a constant channel, value
s (clamp(z, 0, Q) - z), no V), and when the conv has an output quantizer, per output channel
ascale{j}, azp{j}, aqmax{j}, aactive{j} (K), and when the conv reads codes, iscale{j} (its
input's scale per input channel, C); when the block output has a quantizer, oscale, ozp, oqmax,
oactive (K_out); with --act-lr, achan{j} and ochan (K: each output channel's quantizer
channel, whose theta it shares); then x_q ((N C) x (H W)), x_fp (same, optional:
without it the block input is never dropped), y ((N K_out) x (OH OW)) and batches (T x B
image indices of each step).
Writes to DIR: torch_rec, torch_reg, torch_beta (T), torch_codes{j} (K x C k k, int64, -1 on
constant rows); with --act-lr, torch_ascale{j} and torch_oscale (K: the final scale of each
output channel's quantizer).
"""
import argparse
import json
import os
import time

import numpy as np
import torch
import torch.nn.functional as F

M64 = (1 << 64) - 1


def mix(x):
    """splitmix64's finalizer on a uint64 array (wrapping arithmetic)."""
    with np.errstate(over="ignore"):
        x = x + np.uint64(0x9E3779B97F4A7C15)
        x = (x ^ (x >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)
        x = (x ^ (x >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)
        return x ^ (x >> np.uint64(31))


def dropped(seed, t, tensor, images, per_image, qdrop):
    """Boolean (len(images), per_image): which elements skip their quantizer at step t."""
    with np.errstate(over="ignore"):
        key = mix(np.array([seed & M64], dtype=np.uint64))
        key = mix(key + np.uint64(t))
        key = mix(key + np.uint64(tensor))
        key = mix(key + images.astype(np.uint64))  # one key per image
        h = mix(key[:, None] + np.arange(per_image, dtype=np.uint64)[None, :])
    u = (h >> np.uint64(11)).astype(np.float64) * 2.0 ** -53
    return u < qdrop


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("dir")
    ap.add_argument("--lambda", dest="lam", type=float, default=0.01)
    ap.add_argument("--beta-start", type=float, default=20.0)
    ap.add_argument("--beta-end", type=float, default=2.0)
    ap.add_argument("--warmup", type=float, default=0.2)
    ap.add_argument("--lr", type=float, default=1e-3)
    ap.add_argument("--zeta", type=float, default=1.1)
    ap.add_argument("--gamma", type=float, default=-0.1)
    ap.add_argument("--act-lr", type=float, default=0.0)
    a = ap.parse_args()
    learn = a.act_lr > 0.0
    torch.set_num_threads(1)
    dt = torch.float64
    path = lambda name: os.path.join(a.dir, name + ".npy")
    load = lambda name: np.load(path(name))
    with open(os.path.join(a.dir, "block.json")) as f:
        g = json.load(f)
    convs, H, W = g["convs"], g["height"], g["width"]
    qdrop, seed = float(g["qdrop"]), int(g["seed"])

    # Input, target, batches.
    c_in = next(c["in_channels"] for c in convs if c["source"] < 0)
    xq = load("x_q")
    N = xq.shape[0] // c_in
    xq = torch.from_numpy(xq.reshape(N, c_in, H, W)).to(dt)
    xfp = torch.from_numpy(load("x_fp").reshape(N, c_in, H, W)).to(dt) if os.path.exists(path("x_fp")) else None
    k_out = convs[g["main"]]["out_channels"]
    y = load("y")
    y = torch.from_numpy(y.reshape(N, k_out, -1)).to(dt)
    batches = load("batches").astype(np.int64)
    T = batches.shape[0]

    # Per conv: floor codes, V_0, the grid, constant rows, the activation quantizer.
    L = []
    for j, c in enumerate(convs):
        w = load(f"w{j}").astype(np.float64)
        K, D = w.shape
        s, z, q = load(f"wscale{j}").astype(np.float64), load(f"wzp{j}").astype(np.float64), load(f"wqmax{j}").astype(np.float64)
        active = load(f"wactive{j}").astype(bool)
        inv = np.where(active, 1.0 / np.where(active, s, 1.0), 0.0)[:, None]
        u = np.clip(w * inv, -z[:, None] - 1.0, q[:, None] - z[:, None] + 1.0)
        fl = np.floor(u)
        f = np.where(active[:, None], fl + z[:, None], 0.0)
        v0 = np.where(active[:, None], -np.log((a.zeta - a.gamma) / (u - fl - a.gamma) - 1.0), 0.0)
        const_value = (np.clip(z, 0.0, q) - z) * s  # a constant channel's weight
        e = dict(c)
        e["K"], e["D"] = K, D
        e["f"] = torch.from_numpy(f).to(dt)
        e["s"] = torch.from_numpy(np.broadcast_to(s[:, None], (K, D)).copy()).to(dt)
        e["z"] = torch.from_numpy(np.broadcast_to(z[:, None], (K, D)).copy()).to(dt)
        e["q"] = torch.from_numpy(np.broadcast_to(q[:, None], (K, D)).copy()).to(dt)
        e["active"] = torch.from_numpy(np.broadcast_to(active[:, None], (K, D)).copy())
        e["fixed"] = torch.from_numpy(np.broadcast_to(const_value[:, None], (K, D)).copy()).to(dt)
        e["V"] = torch.nn.Parameter(torch.from_numpy(v0).to(dt))
        e["bias"] = torch.from_numpy(load(f"b{j}").astype(np.float64)).to(dt)
        if os.path.exists(path(f"ascale{j}")):
            asc, azp, aq = (torch.from_numpy(load(n).astype(np.float64)).to(dt)[None, :, None, None]
                            for n in (f"ascale{j}", f"azp{j}", f"aqmax{j}"))
            aact = torch.from_numpy(load(f"aactive{j}").astype(bool))[None, :, None, None]
            e["act"] = (asc, azp, aq, aact)
            if learn:
                chan = torch.from_numpy(load(f"achan{j}").astype(np.int64))
                e["theta"] = torch.nn.Parameter(torch.zeros(int(chan.max()) + 1, dtype=dt))
                e["chan"] = chan
        else:
            e["act"] = None
        if os.path.exists(path(f"iscale{j}")):
            isc = load(f"iscale{j}").astype(np.float64)
            inv_in = np.where(isc > 0.0, 1.0 / np.where(isc > 0.0, isc, 1.0), 0.0)
            e["in_inv"] = torch.from_numpy(inv_in).to(dt)[None, :, None, None]
        else:
            e["in_inv"] = None
        L.append(e)
    if os.path.exists(path("oscale")):
        out_act = tuple(torch.from_numpy(load(n).astype(np.float64)).to(dt)[None, :, None, None]
                        for n in ("oscale", "ozp", "oqmax"))
        out_act = out_act + (torch.from_numpy(load("oactive").astype(bool))[None, :, None, None],)
    else:
        out_act = None
    out_theta = out_chan = None
    if learn and out_act is not None:
        out_chan = torch.from_numpy(load("ochan").astype(np.int64))
        out_theta = torch.nn.Parameter(torch.zeros(int(out_chan.max()) + 1, dtype=dt))
    groups = [{"params": [e["V"] for e in L]}]
    thetas = [e["theta"] for e in L if "theta" in e] + ([out_theta] if out_theta is not None else [])
    if thetas:
        groups.append({"params": thetas, "lr": a.act_lr})
    opt = torch.optim.Adam(groups, lr=a.lr, betas=(0.9, 0.999), eps=1e-8)

    def h_of(v):
        return torch.clamp(torch.sigmoid(v) * (a.zeta - a.gamma) + a.gamma, 0.0, 1.0)

    def fake_quant_ste(zz, act):
        scale, zp, qmax, active = act
        inv = torch.where(active, 1.0 / torch.where(active, scale, torch.ones_like(scale)), torch.zeros_like(scale))
        codes = torch.clamp(torch.round(zz.detach() * inv) + zp, min=torch.zeros_like(qmax), max=qmax)
        value = (codes - zp) * scale
        lo, hi = scale * (0.0 - zp), scale * (qmax - zp)
        mask = ((zz.detach() >= lo) & (zz.detach() <= hi) & active).to(dt)
        return value + (zz - zz.detach()) * mask  # forward: value; gradient: mask

    def scale_of(act, theta, chan):
        scale0, _, _, active = act
        return torch.where(active, scale0 * torch.exp(theta[chan])[None, :, None, None], scale0)

    def fake_quant_lsq(zz, act, theta, chan):
        """The quantizer with a learned scale: forward as fake_quant_ste; gradients as the docstring says."""
        scale0, zp, qmax, active = act
        scale = scale_of(act, theta, chan)
        sd = scale.detach()
        inv = torch.where(active, 1.0 / torch.where(active, sd, torch.ones_like(sd)), torch.zeros_like(sd))
        zd = zz.detach()
        u = zd * inv
        r = torch.round(u)
        lo, hi = sd * (0.0 - zp), sd * (qmax - zp)
        below, above = zd < lo, zd > hi
        inside = ~below & ~above & active
        value = (torch.clamp(r + zp, min=torch.zeros_like(qmax), max=qmax) - zp) * sd
        factor = torch.where(below, 0.0 - zp, torch.where(above, qmax - zp, r - u))
        factor = torch.where(active, factor, torch.zeros_like(factor))
        return value + (zz - zd) * inside.to(dt) + (scale - sd) * factor

    w0 = a.warmup * T
    start = time.time()
    recs, regs, betas = [], [], []
    for t in range(T):
        imgs = batches[t]
        idx = torch.from_numpy(imgs)
        B = len(imgs)
        x = xq[idx]
        if xfp is not None and qdrop > 0.0:
            d = torch.from_numpy(dropped(seed, t, 0, imgs, c_in * H * W, qdrop).reshape(x.shape))
            x = torch.where(d, xfp[idx], x)
        hs, outs = [], []
        for j, e in enumerate(L):
            h = h_of(e["V"])
            hs.append((h, e["active"]))
            code = torch.clamp(e["f"] + h, min=torch.zeros_like(e["q"]), max=e["q"])
            w_soft = torch.where(e["active"], e["s"] * (code - e["z"]), e["fixed"])
            w_soft = w_soft.reshape(e["out_channels"], e["in_channels"], e["kernel"], e["kernel"])
            inp = x if e["source"] < 0 else outs[e["source"]]
            if e["in_inv"] is not None:  # the codes, straight through: gradient 1 / s
                u = inp * e["in_inv"]
                inp = torch.round(u.detach()) + (u - u.detach())
            zz = F.conv2d(inp, w_soft, e["bias"], stride=e["stride"], padding=e["pad"])
            if e["act"] is not None:
                aa = fake_quant_lsq(zz, e["act"], e["theta"], e["chan"]) if learn else fake_quant_ste(zz, e["act"])
                if qdrop > 0.0:
                    d = dropped(seed, t, j + 1, imgs, zz[0].numel(), qdrop).reshape(zz.shape)
                    aa = torch.where(torch.from_numpy(d), zz, aa)
            else:
                aa = zz
            outs.append(F.relu(aa) if e["relu"] else aa)
        out = outs[g["main"]]
        if g["shortcut"] == -1:
            out = out + x
        elif g["shortcut"] >= 0:
            out = out + outs[g["shortcut"]]
        if g["relu"]:
            out = F.relu(out)
        if out_act is not None:
            oo = fake_quant_lsq(out, out_act, out_theta, out_chan) if learn else fake_quant_ste(out, out_act)
            if qdrop > 0.0:
                d = dropped(seed, t, len(L) + 1, imgs, out[0].numel(), qdrop).reshape(out.shape)
                oo = torch.where(torch.from_numpy(d), out, oo)
            out = oo
        err = out.reshape(B, k_out, -1) - y[idx]
        rec = (err * err).sum() / (B * err.shape[2])
        count = t + 1
        if count < w0:
            beta = a.beta_start
            reg = torch.zeros((), dtype=dt)
        else:
            beta = a.beta_end + (a.beta_start - a.beta_end) * max(0.0, 1.0 - (count - w0) / (T - w0))
            reg = a.lam * sum((1.0 - (2.0 * h[act] - 1.0).abs().pow(beta)).sum() for h, act in hs)
        opt.zero_grad()
        (rec + reg).backward()
        opt.step()
        recs.append(rec.item())
        regs.append(float(reg))
        betas.append(beta)

    np.save(os.path.join(a.dir, "torch_rec.npy"), np.array(recs))
    np.save(os.path.join(a.dir, "torch_reg.npy"), np.array(regs))
    np.save(os.path.join(a.dir, "torch_beta.npy"), np.array(betas))
    with torch.no_grad():
        for j, e in enumerate(L):
            hard = torch.clamp(e["f"] + (e["V"] >= 0).to(dt), min=torch.zeros_like(e["q"]), max=e["q"])
            codes = torch.where(e["active"], hard, torch.full_like(hard, -1.0)).to(torch.int64)
            np.save(os.path.join(a.dir, f"torch_codes{j}.npy"), codes.numpy())
            if "theta" in e:
                np.save(os.path.join(a.dir, f"torch_ascale{j}.npy"), scale_of(e["act"], e["theta"], e["chan"]).reshape(-1).numpy())
        if out_theta is not None:
            np.save(os.path.join(a.dir, "torch_oscale.npy"), scale_of(out_act, out_theta, out_chan).reshape(-1).numpy())
    print(f"block_reconstruction_ref.py: {len(L)} convs, N={N} T={T} qdrop={qdrop} "
          f"rec {recs[0]:.6g} -> {recs[-1]:.6g}, reg {regs[-1]:.6g}, {time.time() - start:.2f} s")


if __name__ == "__main__":
    main()
