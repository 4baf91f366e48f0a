// bench_memcpy.cpp: the bandwidth baseline: std::memcpy of a float tensor of 1M..64M elements.
//
// Every ptq benchmark over a float tensor reports bytes_per_second of its *input*
// bytes (n * sizeof(float)) and uses the same sizes, so its ratio to this one,
// measured in the same run of ptq_bench, is its fraction of memcpy bandwidth.
#include <benchmark/benchmark.h>

#include <cstring>
#include <vector>

#include "bench_common.hpp"

static void BM_memcpy(benchmark::State& state) {
  const auto n = static_cast<std::size_t>(state.range(0));
  std::vector<float> src = ptq_bench::random_tensor(n), dst(n);
  for (auto _ : state) {
    std::memcpy(dst.data(), src.data(), n * sizeof(float));
    benchmark::DoNotOptimize(dst.data());
    benchmark::ClobberMemory();
  }
  ptq_bench::set_bytes(state, n);
}
BENCHMARK(BM_memcpy)->Apply(ptq_bench::tensor_sizes)->Unit(benchmark::kMillisecond);
