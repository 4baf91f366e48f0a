#!/usr/bin/env bash
# install_deps.sh: install ptq's build, test and benchmark dependencies from Debian 12 packages (run as root).
# Idempotent: when every package is already installed it changes nothing and touches no network.
set -euo pipefail
packages=(
  cmake make g++          # toolchain
  libeigen3-dev           # Eigen 3.4: the CPU tensors (required)
  libboost-dev            # Boost.Math: Lambert W, root finding, erfc (required)
  doctest-dev             # tests
  libgemmlowp-dev         # tests compare ptq's fixed-point requantization with gemmlowp's functions; a candidate in bench/bench_int8_gemm.cpp
  libbenchmark-dev        # benchmarks
  libdnnl-dev             # oneDNN 2.6: the int8 GEMM/matmul candidate in bench/bench_int8_gemm.cpp (optional)
  libxnnpack-dev libpthreadpool-dev  # XNNPACK's qs8 fully connected (xnnpack.h includes pthreadpool.h): same benchmark (optional)
  libzip-dev zlib1g-dev   # ptq::io (.npz through libzip), IDX .gz through zlib
  zipcmp zipmerge ziptool # Debian 12's libzip-config.cmake fails unless these tools exist
  dataset-fashion-mnist   # the ResNet example's data
  python3-numpy python3-torch python3-torchvision  # reference tests, training and export tools
  python3-matplotlib      # figures: tools/plot_*.py
  clang libclang-rt-14-dev libomp-dev  # the asan preset: Clang, its ASan/UBSan/TSan and libFuzzer runtimes, OpenMP
)
missing=()
for p in "${packages[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
if ((${#missing[@]})); then
  echo "install_deps.sh: installing ${missing[*]}" >&2
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -q
  apt-get install -y -q --no-install-recommends "${missing[@]}"
fi
