// bench_requantize.cpp: ptq::requantize (int32 accumulators -> uint8 codes, per-channel output stage) beside requantize_ref.
//
// A conv's output stage: rows = output pixels, channels = output channels (12: a thin
// layer; 64, 256: ResNet-50's), accumulators in [-2^20, 2^20), per-channel multipliers
// below 1 and a ReLU clamp on half the channels. bytes_per_second counts the int32 input.
#include <benchmark/benchmark.h>

#include <cstdint>
#include <random>
#include <vector>

#include "ptq/fixedpoint.hpp"

namespace {

struct stage {
  ptq::requantize_params p;
  std::vector<std::int32_t> acc;
  std::vector<std::uint8_t> out;
  stage(ptq::index rows, ptq::index channels) {
    std::mt19937_64 g(3);
    std::uniform_real_distribution<double> u(0.0, 1.0);
    for (ptq::index k = 0; k < channels; ++k) {
      p.bias.push_back(static_cast<std::int32_t>(g() % 2001) - 1000);
      p.mult.push_back(ptq::quantize_multiplier(std::ldexp(0.5 + 0.5 * u(g), -8 - static_cast<int>(g() % 8))));
      const auto z = static_cast<std::int32_t>(g() % 256);
      p.offset.push_back(z);
      p.lo.push_back(static_cast<std::uint8_t>(k % 2 == 0 ? z : 0));
      p.hi.push_back(255);
    }
    acc.resize(static_cast<std::size_t>(rows * channels));
    for (auto& a : acc) a = static_cast<std::int32_t>(g() % (1 << 21)) - (1 << 20);
    out.resize(acc.size());
  }
};

template <bool Ref>
void BM_requantize(benchmark::State& state) {
  const ptq::index channels = state.range(0), rows = (1 << 20) / channels;
  stage s(rows, channels);
  for (auto _ : state) {
    if constexpr (Ref)
      ptq::requantize_ref(s.acc.data(), rows, channels, s.p, s.out.data(), channels);
    else
      ptq::requantize(s.acc.data(), rows, channels, s.p, s.out.data(), channels);
    benchmark::DoNotOptimize(s.out.data());
    benchmark::ClobberMemory();
  }
  state.SetBytesProcessed(static_cast<std::int64_t>(state.iterations()) * rows * channels * 4);
}

}  // namespace

BENCHMARK(BM_requantize<false>)->Name("BM_requantize")->Arg(12)->Arg(64)->Arg(256)->Unit(benchmark::kMicrosecond);
BENCHMARK(BM_requantize<true>)->Name("BM_requantize_ref")->Arg(12)->Arg(64)->Arg(256)->Unit(benchmark::kMicrosecond);
