// bench_requantize.cpp: ptq::requantize and ptq::add_requantize (output stage, residual add) beside their paths and _ref twins.
//
// A conv's output stage: rows = output pixels, channels = output channels (12: a thin
// layer; 64, 256: ResNet-50's), accumulators in [-2^20, 2^20), per-channel multipliers
// below 1 and a ReLU clamp on half the channels. bytes_per_second counts the int32 input.
// The residual add: two uint8 tensors of 2^20 codes, TFLite's scheme (make_add_params).
// Paths: the dispatched one (AVX-512 where the build has it, else AVX2 where the CPU has
// it, else portable), AVX2 and portable called directly, and the plain _ref loop.
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

enum class path { dispatched, avx2, portable, ref };

template <path P>
void BM_requantize(benchmark::State& state) {
  const ptq::index channels = state.range(0), rows = (1 << 20) / channels;
  stage s(rows, channels);
  if (P == path::avx2 && !ptq::detail::cpu_has_avx2()) return state.SkipWithError("no AVX2 on this CPU");
  const ptq::detail::requantize_lanes lanes(s.p);
  for (auto _ : state) {
    if constexpr (P == path::ref)
      ptq::requantize_ref(s.acc.data(), rows, channels, s.p, s.out.data(), channels);
    else if constexpr (P == path::avx2)
      ptq::detail::requantize_avx2(s.acc.data(), rows, channels, s.p, s.out.data(), channels);
    else if constexpr (P == path::portable)
      for (ptq::index r = 0; r < rows; ++r)
        ptq::detail::requantize_row_portable(s.acc.data() + r * channels, lanes, channels, s.out.data() + r * channels);
    else
      ptq::requantize(s.acc.data(), rows, channels, s.p, s.out.data(), channels);
    benchmark::DoNotOptimize(s.out.data());
    benchmark::ClobberMemory();
  }
  state.SetBytesProcessed(static_cast<std::int64_t>(state.iterations()) * rows * channels * 4);
}

struct add_case {
  ptq::add_params p;
  std::vector<std::uint8_t> a, b, out;
  add_case(ptq::index rows, ptq::index channels) {
    std::mt19937_64 g(4);
    std::uniform_real_distribution<double> u(0.5, 2.0);
    std::vector<double> sa, sb, so;
    std::vector<std::int32_t> za, zb, zo;
    for (ptq::index k = 0; k < channels; ++k) {
      sa.push_back(u(g)), sb.push_back(u(g)), so.push_back(u(g) * 2);
      za.push_back(static_cast<std::int32_t>(g() % 256)), zb.push_back(static_cast<std::int32_t>(g() % 256));
      zo.push_back(static_cast<std::int32_t>(g() % 256));
    }
    p = ptq::make_add_params(sa, za, sb, zb, so, zo);
    for (ptq::index k = 0; k < channels; k += 2) p.lo[static_cast<std::size_t>(k)] = static_cast<std::uint8_t>(zo[static_cast<std::size_t>(k)]);
    a.resize(static_cast<std::size_t>(rows * channels));
    b.resize(a.size());
    out.resize(a.size());
    for (auto& x : a) x = static_cast<std::uint8_t>(g());
    for (auto& x : b) x = static_cast<std::uint8_t>(g());
  }
};

template <path P>
void BM_add_requantize(benchmark::State& state) {
  const ptq::index channels = state.range(0), rows = (1 << 20) / channels;
  add_case s(rows, channels);
  if (P == path::avx2 && !ptq::detail::cpu_has_avx2()) return state.SkipWithError("no AVX2 on this CPU");
  const ptq::detail::add_lanes lanes(s.p);
  for (auto _ : state) {
    if constexpr (P == path::ref)
      ptq::add_requantize_ref(s.a.data(), s.b.data(), rows, channels, s.p, s.out.data(), channels);
    else if constexpr (P == path::avx2)
      ptq::detail::add_requantize_avx2(s.a.data(), s.b.data(), rows, channels, s.p, s.out.data(), channels);
    else if constexpr (P == path::portable)
      for (ptq::index r = 0; r < rows; ++r)
        ptq::detail::add_row_portable(s.a.data() + r * channels, s.b.data() + r * channels, lanes, channels,
                                      s.out.data() + r * channels);
    else
      ptq::add_requantize(s.a.data(), s.b.data(), rows, channels, s.p, s.out.data(), channels);
    benchmark::DoNotOptimize(s.out.data());
    benchmark::ClobberMemory();
  }
  state.SetBytesProcessed(static_cast<std::int64_t>(state.iterations()) * rows * channels * 2);
}

}  // namespace

BENCHMARK(BM_requantize<path::dispatched>)->Name("BM_requantize")->Arg(12)->Arg(64)->Arg(256)->Unit(benchmark::kMicrosecond);
BENCHMARK(BM_requantize<path::avx2>)->Name("BM_requantize_avx2")->Arg(12)->Arg(64)->Arg(256)->Unit(benchmark::kMicrosecond);
BENCHMARK(BM_requantize<path::portable>)->Name("BM_requantize_portable")->Arg(12)->Arg(64)->Arg(256)->Unit(benchmark::kMicrosecond);
BENCHMARK(BM_requantize<path::ref>)->Name("BM_requantize_ref")->Arg(12)->Arg(64)->Arg(256)->Unit(benchmark::kMicrosecond);
BENCHMARK(BM_add_requantize<path::dispatched>)->Name("BM_add_requantize")->Arg(64)->Arg(256)->Unit(benchmark::kMicrosecond);
BENCHMARK(BM_add_requantize<path::avx2>)->Name("BM_add_requantize_avx2")->Arg(64)->Arg(256)->Unit(benchmark::kMicrosecond);
BENCHMARK(BM_add_requantize<path::portable>)->Name("BM_add_requantize_portable")->Arg(64)->Arg(256)->Unit(benchmark::kMicrosecond);
BENCHMARK(BM_add_requantize<path::ref>)->Name("BM_add_requantize_ref")->Arg(64)->Arg(256)->Unit(benchmark::kMicrosecond);
