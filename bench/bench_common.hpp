// bench_common.hpp: tensor sizes, data and byte counters shared by the ptq benchmarks.
#pragma once

#include <benchmark/benchmark.h>

#include <cstdint>
#include <random>
#include <vector>

namespace ptq_bench {

// NCHW shapes with N*C*H*W = 1M, 4M, 16M and 64M floats: args {N, C, H, W}.
// C = 64 channels of 128x128 with the batch N = 1, 4, 16, 64 (see shape_of).
inline void tensor_sizes(benchmark::internal::Benchmark* b) {
  for (std::int64_t n : {1 << 20, 1 << 22, 1 << 24, 1 << 26}) b->Arg(n);
}

// Splits a size from tensor_sizes into the NCHW shape used by every benchmark.
struct nchw {
  std::int64_t n, c, h, w;
};
inline nchw shape_of(std::int64_t size) {
  // 64 channels of 128x128 = 1M elements per image.
  return {size / (64 * 128 * 128), 64, 128, 128};
}

inline std::vector<float> random_tensor(std::size_t n, std::uint64_t seed = 42) {
  std::mt19937_64 rng(seed);
  std::normal_distribution<float> dist(0.5f, 2.0f);
  std::vector<float> v(n);
  for (auto& x : v) x = dist(rng);
  return v;
}

// Reports throughput over the input tensor's bytes.
inline void set_bytes(benchmark::State& state, std::size_t n) {
  state.SetBytesProcessed(static_cast<std::int64_t>(state.iterations()) * static_cast<std::int64_t>(n * sizeof(float)));
}

}  // namespace ptq_bench
