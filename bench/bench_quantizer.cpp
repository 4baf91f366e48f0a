// bench_quantizer.cpp: gemmlowp_quantizer on NCHW float tensors: fake quantize per tensor / per channel, quantize to uint8.
//
// One call over the whole (N*C) x (H*W) row view per iteration, finiteness check
// included; bytes_per_second counts the input bytes, so the ratio to BM_memcpy
// (same run) is the fraction of memcpy's bandwidth.
#include <benchmark/benchmark.h>

#include <cstdint>
#include <vector>

#include "bench_common.hpp"
#include "ptq/gemmlowp_quantizer.hpp"
#include "ptq/layout.hpp"

namespace {

struct nchw_tensor {
  ptq_bench::nchw shape;
  ptq::channel_layout layout;
  std::vector<float> data;

  explicit nchw_tensor(std::int64_t size)
      : shape(ptq_bench::shape_of(size)),
        layout(ptq::channel_layout::of({shape.n, shape.c, shape.h, shape.w}, 1)),
        data(ptq_bench::random_tensor(static_cast<std::size_t>(size))) {}

  ptq::const_row_map<float> rows() const { return ptq::channel_rows(static_cast<const float*>(data.data()), layout); }
};

// Channel c: a range around the data (normal, mean 0.5, std 2), a little different per channel.
ptq::quant_params<float> per_channel_params(ptq::index channels, int bits) {
  ptq::channel_ranges r;
  r.lo.resize(channels);
  r.hi.resize(channels);
  for (ptq::index c = 0; c < channels; ++c) {
    r.lo[c] = -5.0 - 0.01 * static_cast<double>(c);
    r.hi[c] = 6.0 + 0.02 * static_cast<double>(c);
  }
  return ptq::quant_params<float>::per_channel(r, bits);
}

void BM_gemmlowp_fake_quantize_per_tensor(benchmark::State& state) {
  const nchw_tensor t(state.range(0));
  std::vector<float> out(t.data.size());
  const auto p = ptq::quant_params<float>::per_tensor(-5.0, 6.0, 4);
  for (auto _ : state) {
    ptq::gemmlowp_quantizer::fake_quantize(t.rows(), p, ptq::channel_rows(out.data(), t.layout));
    benchmark::DoNotOptimize(out.data());
    benchmark::ClobberMemory();
  }
  ptq_bench::set_bytes(state, t.data.size());
}

void BM_gemmlowp_fake_quantize_per_channel(benchmark::State& state) {
  const nchw_tensor t(state.range(0));
  std::vector<float> out(t.data.size());
  const auto p = per_channel_params(t.shape.c, 4);
  for (auto _ : state) {
    ptq::gemmlowp_quantizer::fake_quantize(t.rows(), p, ptq::channel_rows(out.data(), t.layout));
    benchmark::DoNotOptimize(out.data());
    benchmark::ClobberMemory();
  }
  ptq_bench::set_bytes(state, t.data.size());
}

// In place: the data are quantized again each iteration (idempotent after the first).
void BM_gemmlowp_fake_quantize_per_channel_in_place(benchmark::State& state) {
  nchw_tensor t(state.range(0));
  const auto p = per_channel_params(t.shape.c, 4);
  for (auto _ : state) {
    ptq::gemmlowp_quantizer::fake_quantize_in_place(ptq::channel_rows(t.data.data(), t.layout), p);
    benchmark::DoNotOptimize(t.data.data());
    benchmark::ClobberMemory();
  }
  ptq_bench::set_bytes(state, t.data.size());
}

void BM_gemmlowp_quantize_u8_per_channel(benchmark::State& state) {
  const nchw_tensor t(state.range(0));
  std::vector<std::uint8_t> codes(t.data.size());
  const auto p = per_channel_params(t.shape.c, 8);
  for (auto _ : state) {
    ptq::gemmlowp_quantizer::quantize<std::uint8_t>(t.rows(), p, ptq::channel_rows(codes.data(), t.layout));
    benchmark::DoNotOptimize(codes.data());
    benchmark::ClobberMemory();
  }
  ptq_bench::set_bytes(state, t.data.size());
}

}  // namespace

BENCHMARK(BM_gemmlowp_fake_quantize_per_tensor)->Apply(ptq_bench::tensor_sizes)->Unit(benchmark::kMillisecond);
BENCHMARK(BM_gemmlowp_fake_quantize_per_channel)->Apply(ptq_bench::tensor_sizes)->Unit(benchmark::kMillisecond);
BENCHMARK(BM_gemmlowp_fake_quantize_per_channel_in_place)->Apply(ptq_bench::tensor_sizes)->Unit(benchmark::kMillisecond);
BENCHMARK(BM_gemmlowp_quantize_u8_per_channel)->Apply(ptq_bench::tensor_sizes)->Unit(benchmark::kMillisecond);
