#!/usr/bin/python3
"""test_cli.py: resnet_ptq's command line on bad arguments and bad files (issue 5).

Usage: test_cli.py RESNET_PTQ
Every case must exit with status 2 (as the README says) with exactly one line on stderr
naming the argument (and the file, where there is one), and leave an existing --json file
byte-identical with no temporary file beside it. Then a good run with an .npz holding an
extra unknown key: a one-line warning, exit 0, and the --json file replaced whole; and a
good --dump run whose .npz has the documented keys.
"""
import atexit
import io
import json
import os
import shutil
import subprocess
import sys
import tempfile
import zipfile

import numpy as np

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "..", "tools"))
from tiny_resnet import tiny_resnet  # noqa: E402

exe = sys.argv[1]
tmp = tempfile.mkdtemp(prefix="ptq_cli_")
atexit.register(shutil.rmtree, tmp, True)
P = lambda name: os.path.join(tmp, name)  # noqa: E731


rng = np.random.default_rng(7)
sd = tiny_resnet(weight_scale=0.5)
np.savez(P("w.npz"), **sd)
shutil.copy(P("w.npz"), P("w_as.ptq.npz"))  # a float state_dict named like an exported model
np.savez(P("w_extra.npz"), **sd, training_epoch=np.int64(38))
bad = dict(sd)
bad["fc.weight"] = np.zeros((10, 3), "f4")
np.savez(P("w_shape.npz"), **bad)
bad = dict(sd)
del bad["layer1.0.bn2.running_var"]
np.savez(P("w_missing.npz"), **bad)
with open(P("w_text.npz"), "w") as f:
    f.write("not a zip archive\n" * 4)
# A weights archive with one corrupt member (a flipped data byte: CRC error).
buf = io.BytesIO()
np.savez(buf, **sd)
b = bytearray(buf.getvalue())
with zipfile.ZipFile(io.BytesIO(bytes(b))) as z:
    info = z.getinfo("fc.weight.npy")
start = info.header_offset + 30 + len(info.filename) + len(info.extra)
b[start + info.file_size - 5] ^= 0x5A
open(P("w_corrupt.npz"), "wb").write(bytes(b))

images = rng.standard_normal((4, 1, 8, 8)).astype("f4")
np.save(P("x.npy"), images)
np.save(P("x_f64.npy"), images.astype("f8"))
np.save(P("x_rank3.npy"), images[:, 0])
np.save(P("x_rgb.npy"), np.repeat(images, 3, axis=1))
np.save(P("x_empty.npy"), np.zeros((0, 1, 8, 8), "f4"))
nan = images.copy()
nan[2, 0, 3, 4] = np.nan
np.save(P("x_nan.npy"), nan)
with open(P("x.npy"), "rb") as f:
    whole = f.read()
open(P("x_cut.npy"), "wb").write(whole[: len(whole) - 7])
np.save(P("y.npy"), np.array([1, 0, 9, 3], "i8"))
np.save(P("y_f32.npy"), np.array([1, 0, 9, 3], "f4"))
np.save(P("y_2d.npy"), np.array([[1, 0], [9, 3]], "i8"))
np.save(P("y_10.npy"), np.array([1, 0, 10, 3], "i8"))
np.save(P("y_neg.npy"), np.array([1, -1, 9, 3], "i4"))
np.save(P("y_5.npy"), np.array([1, 0, 9, 3, 2], "i8"))
np.save(P("y_3.npy"), np.array([1, 0, 9], "i8"))
os.mkdir(P("dir.npy"))
os.mkdir(P("dir.npz"))
unreadable = P("x_unreadable.npy")
open(unreadable, "wb").write(whole)
os.chmod(unreadable, 0)

GOOD = {"--weights": P("w.npz"), "--images": P("x.npy"), "--labels": P("y.npy"), "--calib": P("x.npy")}
JSON = P("out.json")
JSON_TEXT = b'{"previous": "run", "must": "survive"}\n'


def args(**over):
    """The good arguments with some replaced (keys: weights, images, labels, calib; None drops one)."""
    a = []
    for flag, path in GOOD.items():
        v = over.get(flag[2:], path)
        if v is not None:
            a += [flag, v]
    return a


cases = [
    # (name, arguments, parts the stderr line must contain)
    ("unknown flag", args() + ["--bogus"], ["unknown argument '--bogus'"]),
    ("unknown short flag", args() + ["-x"], ["unknown argument '-x'"]),
    ("flag without value", args() + ["--wbits"], ["--wbits needs a value"]),
    ("missing input flag", args(labels=None), ["--labels is required"]),
    ("missing images", args(images=P("absent.npy")), ["--images", P("absent.npy"), "no such file"]),
    ("missing labels", args(labels=P("absent.npy")), ["--labels", P("absent.npy"), "no such file"]),
    ("missing calib", args(calib=P("absent.npy")), ["--calib", P("absent.npy"), "no such file"]),
    ("missing weights", args(weights=P("absent.npz")), ["--weights", P("absent.npz")]),
    ("directory as images", args(images=P("dir.npy")), ["--images", P("dir.npy"), "not a regular file"]),
    ("directory as labels", args(labels=P("dir.npy")), ["--labels", P("dir.npy"), "not a regular file"]),
    ("directory as calib", args(calib=P("dir.npy")), ["--calib", P("dir.npy"), "not a regular file"]),
    ("directory as weights", args(weights=P("dir.npz")), ["--weights", P("dir.npz")]),
    ("directory as json", args() + ["--json", tmp], ["--json", tmp, "is a directory"]),
    ("json in a missing directory", args() + ["--json", P("no/such/out.json")], ["--json", P("no/such")]),
    ("images float64", args(images=P("x_f64.npy")), ["--images", P("x_f64.npy"), "float32"]),
    ("images rank 3", args(images=P("x_rank3.npy")), ["--images", P("x_rank3.npy"), "rank 4"]),
    ("calib rank 3", args(calib=P("x_rank3.npy")), ["--calib", P("x_rank3.npy"), "rank 4"]),
    ("images 3 channels", args(images=P("x_rgb.npy")), ["--images", P("x_rgb.npy"), "3 channels"]),
    ("images empty", args(images=P("x_empty.npy")), ["--images", P("x_empty.npy"), "no images"]),
    ("images NaN", args(images=P("x_nan.npy")), ["--images", P("x_nan.npy"), "not finite"]),
    ("calib truncated", args(calib=P("x_cut.npy")), ["--calib", P("x_cut.npy"), "truncated"]),
    ("labels float32", args(labels=P("y_f32.npy")), ["--labels", P("y_f32.npy"), "int64 or int32"]),
    ("labels rank 2", args(labels=P("y_2d.npy")), ["--labels", P("y_2d.npy"), "1-d"]),
    ("label 10 of 10 classes", args(labels=P("y_10.npy")), ["--labels", P("y_10.npy"), "label[2] = 10 is outside [0, 10)"]),
    ("label -1", args(labels=P("y_neg.npy")), ["--labels", P("y_neg.npy"), "label[1] = -1 is outside"]),
    ("more labels than images", args(labels=P("y_5.npy")), ["--labels", P("y_5.npy"), "5 labels for the 4 images"]),
    ("fewer labels than images", args(labels=P("y_3.npy")), ["--labels", P("y_3.npy"), "3 labels for the 4 images"]),
    ("fewer labels, --limit", args(labels=P("y_3.npy")) + ["--limit", "2"], ["--labels", "3 labels for the 4 images"]),
    ("weights not a zip", args(weights=P("w_text.npz")), ["--weights", P("w_text.npz"), "zip"]),
    ("weights corrupt member", args(weights=P("w_corrupt.npz")), ["--weights", P("w_corrupt.npz"), "key 'fc.weight'"]),
    ("weights wrong shape", args(weights=P("w_shape.npz")),
     ["--weights", P("w_shape.npz"), "key 'fc.weight' has shape [10, 3]", "expected 2"]),
    ("weights missing key", args(weights=P("w_missing.npz")),
     ["--weights", P("w_missing.npz"), "key 'layer1.0.bn2.running_var' is missing"]),
    ("images is an npz", args(images=P("w.npz")), ["--images", P("w.npz"), "not a .npy file"]),
    ("wbits -1", args() + ["--wbits", "-1"], ["--wbits", "'-1'"]),
    ("wbits 0", args() + ["--wbits", "0"], ["--wbits", "'0'"]),
    ("abits 17", args() + ["--abits", "17"], ["--abits", "17"]),
    ("abits 1000", args() + ["--abits", "1000"], ["--abits", "'1000'"]),
    ("wbits text", args() + ["--wbits", "four"], ["--wbits", "'four'"]),
    ("wbits 4.5", args() + ["--wbits", "4.5"], ["--wbits", "'4.5'"]),
    ("limit 0", args() + ["--limit", "0"], ["--limit", "'0'"]),
    ("batch -5", args() + ["--batch", "-5"], ["--batch", "'-5'"]),
    ("threads 0", args() + ["--threads", "0"], ["--threads", "'0'"]),
    ("clip unknown", args() + ["--clip", "cauchy"], ["--clip", "'cauchy'"]),
    ("bit alloc W at 32 bits", args() + ["--bit-alloc-w"], ["--bit-alloc-w"]),
    ("device unknown", args() + ["--device", "gpu"], ["--device", "'gpu'"]),
    ("calib-stats unknown", args() + ["--calib-stats", "median"], ["--calib-stats", "'median'"]),
    ("bit-alloc-rule unknown", args() + ["--bit-alloc-rule", "greedy"], ["--bit-alloc-rule", "'greedy'"]),
    ("edge-act unknown", args() + ["--edge-act", "none"], ["--edge-act", "'none'"]),
    ("aciq-alphas unknown", args() + ["--aciq-alphas", "rounded"], ["--aciq-alphas", "'rounded'"]),
    ("calib-batch without batch stats", args() + ["--calib-batch", "8"], ["--calib-batch", "--calib-stats batch"]),
    ("calib-batch 0", args() + ["--calib-stats", "batch", "--calib-batch", "0"], ["--calib-batch", "'0'"]),
    ("calib-seeds 0", args() + ["--calib-seeds", "0"], ["--calib-seeds", "'0'"]),
    ("calib-seeds more than images", args() + ["--calib-seeds", "5", "--wbits", "4", "--abits", "4"],
     ["--calib-seeds 5", P("x.npy"), "4 images"]),
    ("calib-seeds with calib-limit", args() + ["--calib-seeds", "2", "--calib-limit", "3", "--abits", "4"],
     ["--calib-seeds 2", "2 disjoint sets of 3 images need 6"]),
    ("dump with table", args() + ["--table", "--dump", P("d.npz")], ["--dump", "--table"]),
    ("dump as a directory", args() + ["--wbits", "4", "--dump", tmp], ["--dump", tmp, "is a directory"]),
    ("dump in a missing directory", args() + ["--wbits", "4", "--dump", P("no/such/d.npz")], ["--dump", P("no/such")]),
    ("engine unknown", args() + ["--engine", "fpga"], ["--engine", "'fpga'"]),
    ("engine int at 16 bits", args() + ["--engine", "int", "--wbits", "16", "--abits", "8"],
     ["--engine int", "--wbits 16"]),
    ("engine int with cuda", args() + ["--engine", "int", "--wbits", "8", "--abits", "8", "--device", "cuda"], ["--engine int", "cuda"]),
    ("export with table", args() + ["--table", "--export", P("m.ptq.npz")], ["--export", "--table"]),
    ("export as a directory", args() + ["--wbits", "4", "--abits", "4", "--export", tmp], ["--export", tmp]),
    ("exported model with calib", ["--weights", P("m.ptq.npz"), "--images", P("x.npy"), "--labels", P("y.npy"),
                                   "--calib", P("x.npy")], ["exported integer model", "--images"]),
    ("exported model with flags", ["--weights", P("m.ptq.npz"), "--images", P("x.npy"), "--labels", P("y.npy"),
                                   "--wbits", "4"], ["exported integer model"]),
    ("exported model missing", ["--weights", P("none.ptq.npz"), "--images", P("x.npy"), "--labels", P("y.npy")],
     ["--weights", P("none.ptq.npz")]),
    ("exported model is a float npz", ["--weights", P("w_as.ptq.npz"), "--images", P("x.npy"), "--labels", P("y.npy")],
     ["--weights", P("w_as.ptq.npz")]),
    ("model with weights", args() + ["--model", "resnet18"], ["--model", "--weights"]),
    ("model unknown", ["--model", "vgg16"], ["--model", "'vgg16'"]),
    ("table with a method flag", args() + ["--table", "--bit-alloc-rule", "exact"], ["--table", "--bit-alloc-rule"]),
    # Issue 12's data-driven steps.
    ("clip search at 32 bits", args() + ["--clip", "search"], ["--clip search", "--abits"]),
    ("clip-dist unknown", args() + ["--abits", "4", "--clip", "search", "--clip-dist", "cauchy"], ["--clip-dist", "'cauchy'"]),
    ("clip-dist without search", args() + ["--abits", "4", "--clip", "laplace", "--clip-dist", "gauss"],
     ["--clip-dist", "--clip search"]),
    ("sample-values 0", args() + ["--abits", "4", "--clip", "search", "--sample-values", "0"], ["--sample-values", "'0'"]),
    ("sample-values without search", args() + ["--abits", "4", "--sample-values", "100"], ["--sample-values", "--clip search"]),
    ("bias-corr-a at 32 bits", args() + ["--bias-corr-a"], ["--bias-corr-a", "--wbits or --abits"]),
    ("bias-corr-a-images without bias-corr-a", args() + ["--abits", "4", "--bias-corr-a-images", "2"],
     ["--bias-corr-a-images", "needs --bias-corr-a"]),
    ("bias-corr-a-images 0", args() + ["--abits", "4", "--bias-corr-a", "--bias-corr-a-images", "0"],
     ["--bias-corr-a-images", "'0'"]),
    ("adaround with float weights", args() + ["--abits", "4", "--adaround"], ["--adaround", "--wbits below 32"]),
    ("adaround-iters without adaround", args() + ["--wbits", "4", "--adaround-iters", "10"],
     ["--adaround-iters", "need --adaround"]),
    ("adaround-images 0", args() + ["--wbits", "4", "--adaround", "--adaround-images", "0"],
     ["--adaround-images", "'0'"]),
    ("adaround-iters 0", args() + ["--wbits", "4", "--abits", "4", "--adaround", "--adaround-iters", "0", "--engine", "int"],
     ["--adaround-iters", "'0'"]),
    ("adaround-seconds 0", args() + ["--wbits", "4", "--adaround", "--adaround-seconds", "0"],
     ["--adaround-seconds", "'0'", "time in seconds"]),
    ("adaround-seconds not a number", args() + ["--wbits", "4", "--brecq", "--adaround-seconds", "soon"],
     ["--adaround-seconds", "'soon'"]),
    ("adaround-seconds without adaround", args() + ["--wbits", "4", "--adaround-seconds", "60"],
     ["--adaround-seconds", "need --adaround or --brecq"]),
    ("adaround-output without adaround", args() + ["--wbits", "4", "--adaround-output", "relu"],
     ["--adaround-output", "needs --adaround"]),
    ("adaround-output with brecq", args() + ["--wbits", "4", "--brecq", "--adaround-output", "relu"],
     ["--adaround-output", "per conv"]),
    ("adaround-output unknown", args() + ["--wbits", "4", "--adaround", "--adaround-output", "gelu"],
     ["--adaround-output", "'gelu'"]),
    ("bit-alloc-a-scope without bit-alloc-a", args() + ["--abits", "4", "--bit-alloc-a-scope", "add"],
     ["--bit-alloc-a-scope", "needs --bit-alloc-a"]),
    ("bit-alloc-a-scope per tensor", args() + ["--abits", "4", "--bit-alloc-a", "--per-tensor-a", "--bit-alloc-a-scope", "add"],
     ["--bit-alloc-a-scope", "--per-tensor-a"]),
    ("bit-alloc-a-scope unknown", args() + ["--abits", "4", "--bit-alloc-a", "--bit-alloc-a-scope", "block"],
     ["--bit-alloc-a-scope", "'block'"]),
    ("qdrop without brecq", args() + ["--wbits", "4", "--adaround", "--qdrop", "0.5"], ["--qdrop", "needs --brecq"]),
    ("qdrop above 1", args() + ["--wbits", "4", "--brecq", "--qdrop", "1.5"], ["--qdrop", "'1.5'", "probability"]),
    ("qdrop not a number", args() + ["--wbits", "4", "--brecq", "--qdrop", "half"], ["--qdrop", "'half'"]),
    ("lsq without brecq", args() + ["--wbits", "4", "--abits", "4", "--adaround", "--lsq", "1e-3"], ["--lsq", "needs --brecq"]),
    ("lsq zero", args() + ["--wbits", "4", "--abits", "4", "--brecq", "--lsq", "0"], ["--lsq", "'0'", "learning rate"]),
    ("lsq float activations", args() + ["--wbits", "4", "--brecq", "--lsq", "1e-3"], ["--lsq", "--abits below 32"]),
    ("fold-bits without the integer engine", args() + ["--wbits", "3", "--abits", "3", "--fold-bits", "8"],
     ["--fold-bits", "needs --engine int or --export"]),
    ("fold-bits with an exported model", ["--weights", P("m.ptq.npz"), "--images", P("x.npy"), "--labels", P("y.npy"),
                                          "--fold-bits", "8"], ["--fold-bits", "m.ptq.npz", "exported"]),
    ("fold-bits 9", args() + ["--wbits", "3", "--abits", "3", "--engine", "int", "--fold-bits", "9"], ["--fold-bits", "'9'"]),
    ("fold-bits not a number", args() + ["--engine", "int", "--fold-bits", "wide"], ["--fold-bits", "'wide'"]),
    ("brecq with float weights", args() + ["--abits", "4", "--brecq"], ["--brecq", "--wbits below 32"]),
    ("table kind unknown", args() + ["--table", "everything"], ["unknown argument 'everything'"]),
    ("table beyond with a method flag", args() + ["--table", "beyond", "--aciq-alphas", "exact"], ["--table", "--aciq-alphas"]),
    # Without CUDA in the build, or without a GPU, --device cuda says which (a GPU run passes it).
    ("device cuda here", args() + ["--device", "cuda"], ["--device cuda: "]) if not os.path.exists("/dev/nvidia0")
    else None,
]
cases = [c for c in cases if c is not None]
# A mode-000 file: root reads it anyway, so as root the case runs as user nobody (setpriv).
if os.geteuid() != 0:
    cases.append(("unreadable images", args(images=unreadable), ["--images", unreadable, "cannot open"]))
elif shutil.which("setpriv"):
    os.chmod(tmp, 0o755)
    cases.append(("unreadable images (as nobody)", args(images=unreadable), ["--images", unreadable, "cannot open"],
                  ["setpriv", "--reuid=65534", "--regid=65534", "--clear-groups"]))
else:
    print("skipped: unreadable file (running as root, no setpriv)")

failures = []
for case in cases:
    name, argv, parts = case[:3]
    prefix = case[3] if len(case) > 3 else []
    with open(JSON, "wb") as f:
        f.write(JSON_TEXT)
    full = ["--no-progress"] + ([] if "--json" in argv else ["--json", JSON]) + argv  # argv last: "--wbits" at the end
    r = subprocess.run(prefix + [exe] + full, capture_output=True, timeout=300)
    err = r.stderr.decode("utf-8", "replace")
    lines = err.splitlines()
    problems = []
    if r.returncode != 2:
        problems.append(f"exit status {r.returncode}, not 2" + (" (a crash or a sanitizer report?)" if r.returncode not in (0, 1) else ""))
    if len(lines) != 1 or not err.endswith("\n"):
        problems.append(f"{len(lines)} lines on stderr")
    for p in parts:
        if p not in err:
            problems.append(f"stderr lacks {p!r}")
    if not err.startswith("resnet_ptq: "):
        problems.append("stderr does not start with 'resnet_ptq: '")
    with open(JSON, "rb") as f:
        if f.read() != JSON_TEXT:
            problems.append("the existing --json file was modified")
    leftovers = [n for n in os.listdir(tmp) if (n.startswith("out.json") and n != "out.json") or n.startswith("d.npz")]
    if leftovers:
        problems.append(f"left {leftovers}")
    print(f"{'ok  ' if not problems else 'FAIL'} {name}: exit {r.returncode}: {err.strip()[:300]}")
    if problems:
        failures.append(f"{name}: {'; '.join(problems)}\n  argv: {full}\n  stderr: {err!r}")

# A good run with an extra unknown key: one warning line, exit 0, the JSON replaced whole.
with open(JSON, "wb") as f:
    f.write(JSON_TEXT)
good = args(weights=P("w_extra.npz")) + ["--wbits", "4", "--abits", "4", "--clip", "laplace", "--bit-alloc-a",
                                         "--bias-corr-w", "--no-progress", "--json", JSON, "--threads", "2"]
r = subprocess.run([exe] + good, capture_output=True, timeout=300)
err = r.stderr.decode("utf-8", "replace")
print(f"good run with an extra key: exit {r.returncode}, stderr {err!r}")
if r.returncode != 0:
    failures.append(f"good run: exit {r.returncode}: {err!r}")
elif err.splitlines() != [f"resnet_ptq: warning: --weights {P('w_extra.npz')}: key 'training_epoch' is not part "
                          "of a torchvision ResNet: ignored"]:
    failures.append(f"good run: stderr is not the one warning line: {err!r}")
else:
    row = json.load(open(JSON))
    if row.get("images") != 4 or not (0 <= row.get("top1", -1) <= 100):
        failures.append(f"good run: unexpected JSON {row}")
    if [n for n in os.listdir(tmp) if n.startswith("out.json") and n != "out.json"]:
        failures.append("good run: a temporary file is left")

# A good run of issue 12's data-driven steps on the integer engine (clip search per tensor, the
# empirical bias correction): exit 0, the float simulation's and the engine's top-1 in the row.
r = subprocess.run([exe] + args() + ["--wbits", "4", "--abits", "4", "--clip", "search", "--per-tensor-a", "--bias-corr-a",
                                     "--bias-corr-w", "--engine", "int", "--no-progress", "--json", JSON, "--threads", "2"],
                   capture_output=True, timeout=300)
if r.returncode != 0:
    failures.append(f"data steps run: exit {r.returncode}: {r.stderr!r}")
else:
    row = json.load(open(JSON))
    if not all(k in row for k in ("top1", "int_top1", "search_seconds", "bias_corr_a_seconds")) or \
            not row["config"].get("bias_corr_a") or row["config"].get("clip") != "search":
        failures.append(f"data steps run: unexpected JSON {row}")

# A good --dump run: the documented keys, one row per image in the logits, 4-bit weights
# on at most 16 levels per output channel, 8-bit edge activations (the stem's and the
# logits' quantizers: the edge-layer bug gave 4), no temporary file left. (The edge
# weights at 8 bits are checked against tools/reference_ptq.py by the fidelity test.)
dump = P("d.npz")
r = subprocess.run([exe] + args() + ["--wbits", "4", "--abits", "4", "--clip", "laplace", "--bit-alloc-a",
                                     "--no-progress", "--dump", dump, "--threads", "2"], capture_output=True, timeout=300)
if r.returncode != 0:
    failures.append(f"dump run: exit {r.returncode}: {r.stderr!r}")
else:
    d = np.load(dump)
    keys = set(d.keys())
    need = {"logits", "weight/conv1", "weight/fc", "act/conv1/lo", "act/conv1/hi", "act/conv1/bits",
            "act/layer1.0.conv1/bits", "stats/layer1.0.conv1/b", "act/logits/bits"}
    if not need <= keys:
        failures.append(f"dump: missing keys {sorted(need - keys)}")
    elif d["logits"].shape != (4, 10):
        failures.append(f"dump: logits shape {d['logits'].shape}")
    elif list(d["act/conv1/bits"]) != [8] or list(d["act/logits/bits"]) != [8]:
        failures.append(f"dump: edge activations at {d['act/conv1/bits']} / {d['act/logits/bits']} bits, not 8")
    elif max(len(np.unique(row)) for row in d["weight/layer1.0.conv1"].reshape(
            d["weight/layer1.0.conv1"].shape[0], -1)) > 16:
        failures.append("dump: a 4-bit weight channel has more than 16 distinct values")
    if [n for n in os.listdir(tmp) if n.startswith("d.npz") and n != "d.npz"]:
        failures.append("dump run: a temporary file is left")

print(f"{len(cases)} bad command lines, {len(failures)} failures")
if failures:
    sys.exit("FAILED:\n" + "\n".join(failures))
