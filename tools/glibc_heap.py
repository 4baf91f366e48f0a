"""glibc_heap.py: run this Python process with glibc's heap keeping freed memory (for the PyTorch tools).

glibc serves each allocation above its mmap threshold (at most 32 MiB) with its own mmap and
returns it to the kernel on free, so a PyTorch loop over large activation tensors faults every
page of every new tensor in again: tools/reference_ptq.py --table on the bundled ResNet-50 and
2000 images took 23 million minor page faults, 89 s of system time, 105 s in all. With mmap
off and the heap never trimmed, freed tensors are reused: 0.23 million faults, 50 s in all,
bit for bit the same dumps (the arithmetic is untouched). glibc reads these tunables only at start-up,
so keep_freed_memory() re-executes the script once with them set; call it before importing
torch. PTQ_GLIBC_HEAP=default in the environment keeps glibc's defaults.
"""
import os
import sys

TUNABLES = "glibc.malloc.mmap_max=0:glibc.malloc.trim_threshold=17179869184"


def keep_freed_memory():
    current = os.environ.get("GLIBC_TUNABLES", "")
    if "glibc.malloc.mmap_max" in current or os.environ.get("PTQ_GLIBC_HEAP") == "default":
        return  # already set (by us or by the user), or switched off
    os.environ["GLIBC_TUNABLES"] = f"{current}:{TUNABLES}" if current else TUNABLES
    sys.stdout.flush()
    sys.stderr.flush()
    os.execv(sys.executable, [sys.executable] + sys.argv)
