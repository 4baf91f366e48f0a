// bench_thrust_omp.cpp: ptq::device on Thrust's OpenMP backend beside the Eigen/CPU core on the same NCHW data.
//
// Per-channel fake quantization (out of place, 4 bits, finiteness check included) and
// per-channel calibration statistics (batch_mean: two reductions) of 16M and 64M floats,
// 64 channels; each with the core's single-threaded Eigen path and the OMP backend on
// all OMP_NUM_THREADS threads, plus memcpy. Real (wall) time; bytes_per_second over the
// input. bench/thrust/omp_vs_eigen.py prints the time ratios.
#include <benchmark/benchmark.h>

#include <thrust/execution_policy.h>

#include <cstdint>
#include <cstring>
#include <vector>

#include "../bench_common.hpp"
#include "ptq/calibration.hpp"
#include "ptq/gemmlowp_quantizer.hpp"
#include "ptq/thrust.hpp"

namespace {

struct tensor {
  ptq_bench::nchw shape;
  std::vector<float> data;
  ptq::index rows() const { return shape.n * shape.c; }
  ptq::index cols() const { return shape.h * shape.w; }
  ptq::const_row_map<float> map() const { return ptq::const_row_map<float>(data.data(), rows(), cols()); }
  ptq::device::span<const float> span() const { return {data.data(), data.size()}; }
  explicit tensor(std::int64_t size)
      : shape(ptq_bench::shape_of(size)), data(ptq_bench::random_tensor(static_cast<std::size_t>(size))) {}
};

ptq::quant_params<float> params(ptq::index channels) {
  ptq::channel_ranges r;
  r.lo.resize(channels), r.hi.resize(channels);
  for (ptq::index c = 0; c < channels; ++c) r.lo[c] = -5.0 - 0.01 * c, r.hi[c] = 6.0 + 0.02 * c;
  return ptq::quant_params<float>::per_channel(r, 4);
}

void sizes(benchmark::internal::Benchmark* b) {
  b->Arg(1 << 24)->Arg(1 << 26)->Unit(benchmark::kMillisecond)->UseRealTime();
}

void BM_memcpy(benchmark::State& state) {
  const tensor t(state.range(0));
  std::vector<float> out(t.data.size());
  for (auto _ : state) {
    std::memcpy(out.data(), t.data.data(), t.data.size() * sizeof(float));
    benchmark::DoNotOptimize(out.data());
    benchmark::ClobberMemory();
  }
  ptq_bench::set_bytes(state, t.data.size());
}

void BM_eigen_fake_quantize_per_channel(benchmark::State& state) {
  const tensor t(state.range(0));
  std::vector<float> out(t.data.size());
  const auto p = params(t.shape.c);
  for (auto _ : state) {
    ptq::gemmlowp_quantizer::fake_quantize(t.map(), p, ptq::row_map<float>(out.data(), t.rows(), t.cols()));
    benchmark::DoNotOptimize(out.data());
    benchmark::ClobberMemory();
  }
  ptq_bench::set_bytes(state, t.data.size());
}

void BM_thrust_omp_fake_quantize_per_channel(benchmark::State& state) {
  const tensor t(state.range(0));
  std::vector<float> out(t.data.size());
  const ptq::device::device_quant_params<float> p(params(t.shape.c));
  for (auto _ : state) {
    ptq::device::fake_quantize(thrust::omp::par, t.span(), t.cols(), p, ptq::device::span<float>(out.data(), out.size()));
    benchmark::DoNotOptimize(out.data());
    benchmark::ClobberMemory();
  }
  ptq_bench::set_bytes(state, t.data.size());
}

void BM_eigen_statistics_batch_mean(benchmark::State& state) {
  const tensor t(state.range(0));
  ptq::calibration_statistics acc(t.shape.c);
  for (auto _ : state) {
    acc.add(t.map());
    benchmark::ClobberMemory();
  }
  benchmark::DoNotOptimize(acc.result());
  ptq_bench::set_bytes(state, t.data.size());
}

void BM_thrust_omp_statistics_batch_mean(benchmark::State& state) {
  const tensor t(state.range(0));
  ptq::device::calibration_statistics acc(t.shape.c);
  for (auto _ : state) {
    acc.add(thrust::omp::par, t.span(), t.cols());
    benchmark::ClobberMemory();
  }
  benchmark::DoNotOptimize(acc.result());
  ptq_bench::set_bytes(state, t.data.size());
}

}  // namespace

BENCHMARK(BM_memcpy)->Apply(sizes);
BENCHMARK(BM_eigen_fake_quantize_per_channel)->Apply(sizes);
BENCHMARK(BM_thrust_omp_fake_quantize_per_channel)->Apply(sizes);
BENCHMARK(BM_eigen_statistics_batch_mean)->Apply(sizes);
BENCHMARK(BM_thrust_omp_statistics_batch_mean)->Apply(sizes);
