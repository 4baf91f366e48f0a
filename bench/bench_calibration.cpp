// bench_calibration.cpp: calibration_statistics::add on NCHW float tensors: batch_mean, exact pass 1 and pass 2.
//
// One add() of the whole (N*C) x (H*W) tensor per iteration; bytes_per_second counts
// the input bytes, so the ratio to BM_memcpy (same run) is the fraction of memcpy's bandwidth.
#include <benchmark/benchmark.h>

#include <vector>

#include "bench_common.hpp"
#include "ptq/calibration.hpp"
#include "ptq/layout.hpp"

namespace {

struct tensor {
  ptq_bench::nchw shape;
  std::vector<float> data;
  ptq::const_row_map<float> rows;

  explicit tensor(std::int64_t size)
      : shape(ptq_bench::shape_of(size)),
        data(ptq_bench::random_tensor(static_cast<std::size_t>(size))),
        rows(ptq::channel_rows(static_cast<const float*>(data.data()),
                               ptq::channel_layout::of({shape.n, shape.c, shape.h, shape.w}, 1))) {}
};

void BM_calibration_batch_mean(benchmark::State& state) {
  const tensor t(state.range(0));
  ptq::calibration_statistics acc(t.shape.c, ptq::stats_mode::batch_mean);
  for (auto _ : state) {
    acc.add(t.rows);
    benchmark::ClobberMemory();
  }
  benchmark::DoNotOptimize(acc.result());
  ptq_bench::set_bytes(state, t.data.size());
}

void BM_calibration_exact_pass1(benchmark::State& state) {
  const tensor t(state.range(0));
  ptq::calibration_statistics acc(t.shape.c, ptq::stats_mode::exact);
  for (auto _ : state) {
    acc.add(t.rows);
    benchmark::ClobberMemory();
  }
  benchmark::DoNotOptimize(acc.moments());
  ptq_bench::set_bytes(state, t.data.size());
}

void BM_calibration_exact_pass2(benchmark::State& state) {
  const tensor t(state.range(0));
  ptq::calibration_statistics frozen(t.shape.c, ptq::stats_mode::exact);
  frozen.add(t.rows);
  frozen.begin_deviation_pass();
  for (auto _ : state) {
    ptq::calibration_statistics acc = frozen;  // a copy of 64-channel vectors: negligible
    acc.add(t.rows);
    benchmark::DoNotOptimize(acc);
    benchmark::ClobberMemory();
  }
  ptq_bench::set_bytes(state, t.data.size());
}

}  // namespace

BENCHMARK(BM_calibration_batch_mean)->Apply(ptq_bench::tensor_sizes)->Unit(benchmark::kMillisecond);
BENCHMARK(BM_calibration_exact_pass1)->Apply(ptq_bench::tensor_sizes)->Unit(benchmark::kMillisecond);
BENCHMARK(BM_calibration_exact_pass2)->Apply(ptq_bench::tensor_sizes)->Unit(benchmark::kMillisecond);
