// bench_int4.cpp: pack_int4 / unpack_int4 (vectorized) beside their _ref loops, 64K and 16M codes.
//
// bytes_per_second counts the unpacked codes (one byte each), so pack and unpack of the
// same n compare directly, and the ratio fast / _ref is the speed-up.
#include <benchmark/benchmark.h>

#include <cstdint>
#include <random>
#include <type_traits>
#include <vector>

#include "ptq/int4.hpp"

namespace {

template <class Code>
std::vector<Code> codes_of(std::size_t n) {
  constexpr int lo = std::is_signed<Code>::value ? -8 : 0;
  std::mt19937_64 g(7);
  std::uniform_int_distribution<int> d(lo, lo + 15);
  std::vector<Code> c(n);
  for (auto& x : c) x = static_cast<Code>(d(g));
  return c;
}

template <class Code, bool Ref>
void BM_pack_int4(benchmark::State& state) {
  const auto n = static_cast<ptq::index>(state.range(0));
  const auto codes = codes_of<Code>(static_cast<std::size_t>(n));
  std::vector<std::uint8_t> packed(static_cast<std::size_t>(ptq::int4_packed_bytes(n)));
  for (auto _ : state) {
    if (Ref)
      ptq::pack_int4_ref(codes.data(), n, packed.data());
    else
      ptq::pack_int4(codes.data(), n, packed.data());
    benchmark::DoNotOptimize(packed.data());
    benchmark::ClobberMemory();
  }
  state.SetBytesProcessed(static_cast<std::int64_t>(state.iterations()) * n);
}

template <class Code, bool Ref>
void BM_unpack_int4(benchmark::State& state) {
  const auto n = static_cast<ptq::index>(state.range(0));
  const auto codes = codes_of<Code>(static_cast<std::size_t>(n));
  std::vector<std::uint8_t> packed(static_cast<std::size_t>(ptq::int4_packed_bytes(n)));
  ptq::pack_int4(codes.data(), n, packed.data());
  std::vector<Code> out(static_cast<std::size_t>(n));
  for (auto _ : state) {
    if (Ref)
      ptq::unpack_int4_ref(packed.data(), n, out.data());
    else
      ptq::unpack_int4(packed.data(), n, out.data());
    benchmark::DoNotOptimize(out.data());
    benchmark::ClobberMemory();
  }
  state.SetBytesProcessed(static_cast<std::int64_t>(state.iterations()) * n);
}

}  // namespace

BENCHMARK_TEMPLATE(BM_pack_int4, std::uint8_t, false)->Arg(1 << 16)->Arg(1 << 24);
BENCHMARK_TEMPLATE(BM_pack_int4, std::uint8_t, true)->Arg(1 << 16)->Arg(1 << 24);
BENCHMARK_TEMPLATE(BM_pack_int4, std::int8_t, false)->Arg(1 << 16)->Arg(1 << 24);
BENCHMARK_TEMPLATE(BM_pack_int4, std::int8_t, true)->Arg(1 << 16)->Arg(1 << 24);
BENCHMARK_TEMPLATE(BM_unpack_int4, std::uint8_t, false)->Arg(1 << 16)->Arg(1 << 24);
BENCHMARK_TEMPLATE(BM_unpack_int4, std::uint8_t, true)->Arg(1 << 16)->Arg(1 << 24);
BENCHMARK_TEMPLATE(BM_unpack_int4, std::int8_t, false)->Arg(1 << 16)->Arg(1 << 24);
BENCHMARK_TEMPLATE(BM_unpack_int4, std::int8_t, true)->Arg(1 << 16)->Arg(1 << 24);
