#!/usr/bin/python3
"""make_fuzz_corpus.py: regenerate the fuzz targets' seed corpora in test/fuzz/corpus/ (deterministic).

Usage: tools/make_fuzz_corpus.py [OUT_DIR]   (default: test/fuzz/corpus next to this script's repository)
  npy/        small .npy files numpy writes: every dtype ptq reads, big-endian, Fortran order,
              0-d, empty, format versions 1.0, 2.0 and 3.0
  npz/        numpy.savez / savez_compressed archives, and a tiny torchvision-style ResNet state_dict
  quantizer/  seeded random bytes (the target reads them as layout, numbers and bit widths)
  int_model/  NOT written here: tiny integer models in int_io.hpp's format 2 (.npz and the CRC-free .raw
              container; W4A4, W8A8, W2A3 and one with per-channel bits 0..8 and padded bit streams) that
              the C++ test writes (rerun it whenever the format changes):
              PTQ_WRITE_INT_SEEDS=test/fuzz/corpus/int_model ptq_resnet_tests -tc='int io: fuzz seeds'
Every file is under 4 KB.
"""
import io
import os
import sys
import zipfile

import numpy as np

from tiny_resnet import tiny_resnet  # tools/, beside this script

root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
out = sys.argv[1] if len(sys.argv) > 1 else os.path.join(root, "test", "fuzz", "corpus")


def npy_bytes(a, version=None):
    b = io.BytesIO()
    np.lib.format.write_array(b, a, version=version, allow_pickle=False)
    return b.getvalue()


def put(sub, name, data):
    d = os.path.join(out, sub)
    os.makedirs(d, exist_ok=True)
    assert len(data) < 4096, (sub, name, len(data))
    with open(os.path.join(d, name), "wb") as f:
        f.write(data)


k = np.arange(24)
put("npy", "f4_2x3.npy", npy_bytes((k[:6] * 0.5 - 1).astype("<f4").reshape(2, 3)))
put("npy", "f8_scalar.npy", npy_bytes(np.float64(-0.125)))
put("npy", "i8_1d.npy", npy_bytes((k[:5] * 1000003 - 2**40).astype("<i8")))
put("npy", "i4_big_endian.npy", npy_bytes((k[:6] - 3).astype(">i4").reshape(3, 2)))
put("npy", "f8_fortran.npy", npy_bytes(np.asfortranarray((k * 0.25).reshape(2, 3, 4))))
put("npy", "u1_empty.npy", npy_bytes(np.zeros((0, 3), "u1")))
put("npy", "f4_v2.npy", npy_bytes(np.array([1.5, np.nan, np.inf, -np.inf], "<f4"), version=(2, 0)))
put("npy", "u1_v3.npy", npy_bytes((k[:7] * 37 % 256).astype("u1"), version=(3, 0)))

buf = io.BytesIO()
np.savez(buf, w=(k[:6] * 0.5).astype("f4").reshape(2, 3), s=np.float64(2.5), e=np.zeros(0, "u1"))
put("npz", "savez.npz", buf.getvalue())
buf = io.BytesIO()
np.savez_compressed(buf, (k[:5] + 1).astype(">i4"), fo=np.asfortranarray((k[:6] * 1.0).reshape(2, 3)))
put("npz", "savez_compressed.npz", buf.getvalue())


buf = io.BytesIO()
np.savez_compressed(buf, **tiny_resnet(classes=2))
put("npz", "tiny_resnet.npz", buf.getvalue())
# A stored (not deflated) archive with one member, written by zipfile directly.
buf = io.BytesIO()
with zipfile.ZipFile(buf, "w", zipfile.ZIP_STORED) as z:
    z.writestr("a.npy", npy_bytes(np.arange(4, dtype="<f8")))
put("npz", "stored_one.npz", buf.getvalue())

rng = np.random.default_rng(2019)
for i, n in enumerate([16, 64, 200, 512, 1500]):
    put("quantizer", f"random_{i}.bin", rng.integers(0, 256, n, dtype=np.uint8).tobytes())
# Tame numbers: mode byte 3 (uniform in [-10, 10]) everywhere.
put("quantizer", "tame.bin", bytes([3, 0x55, 0xaa] * 300))
print("fuzz corpus written to", out)
