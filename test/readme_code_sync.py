#!/usr/bin/env python3
"""readme_code_sync.py: the README's C++ examples are the code the tests compile and run.

Each ```cpp block of README.md must equal, token for token (comments, #include lines and
whitespace aside), the marked copy that a test compiles (and, for the one-layer example,
the copy examples/layer_demo.cpp runs to print the README's output). A README edit that
leaves a test's copy behind, or the reverse, fails here.

  readme_code_sync.py [SOURCE_DIR]
"""
import os
import re
import sys

ROOT = sys.argv[1] if len(sys.argv) > 1 else os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

# (text that picks the README block, [(file, start marker, end marker, index of the marked block in that file), ...])
COPIES = [
    ("ptq::bit_allocator::exact", [("test/test_readme.cpp", "// ---- the README's code, verbatim ----", "// ---- end ----", 0)]),
    ("ptq::adaround(", [("test/test_readme.cpp", "// ---- the README's code, verbatim ----", "// ---- end ----", 1),
                        ("examples/layer_demo.cpp", '// ---- README, "Beyond the paper on one layer" ----',
                         "// ---- end ----", 0)]),
    ("ptq::device::calibration_statistics", [("test/thrust/test_readme_gpu.cpp", "// ---- the README's code, verbatim ----",
                                              "// ---- end of the README's code ----", 0)]),
]


def tokens(code):
    code = re.sub(r"//[^\n]*", "", code)
    code = "\n".join(line for line in code.split("\n") if not line.strip().startswith("#include"))
    return code.split()


def marked(path, start, end, index):
    text = open(os.path.join(ROOT, path)).read()
    parts = re.findall(re.escape(start) + r"\n(.*?)" + re.escape(end), text, re.S)
    if len(parts) <= index:
        sys.exit(f"{path}: marked block {index} ({start!r} ... {end!r}) not found")
    return parts[index]


def main():
    readme = open(os.path.join(ROOT, "README.md")).read()
    blocks = re.findall(r"```cpp\n(.*?)```", readme, re.S)
    failed = 0
    for needle, copies in COPIES:
        found = [b for b in blocks if needle in b]
        if len(found) != 1:
            print(f"README.md: {len(found)} ```cpp blocks contain {needle!r}, expected 1")
            failed += 1
            continue
        want = tokens(found[0])
        for path, start, end, index in copies:
            got = tokens(marked(path, start, end, index))
            if got != want:
                at = next((i for i, (a, b) in enumerate(zip(want, got)) if a != b), min(len(want), len(got)))
                print(f"{path}: block {index} differs from README.md's block with {needle!r} at token {at}: "
                      f"README {' '.join(want[max(0, at - 5):at + 5])!r}, copy {' '.join(got[max(0, at - 5):at + 5])!r}")
                failed += 1
            else:
                print(f"{path}: block {index} equals README.md's block with {needle!r} ({len(want)} tokens)")
    if failed:
        sys.exit(1)


if __name__ == "__main__":
    main()
