// test_calibration_threads.cpp: statistics accumulated on several threads and merged equal one thread's (run under ThreadSanitizer).
//
// Each thread owns its accumulator (calibration_statistics is not shared between threads;
// merge() combines them afterwards), the data and the quantization parameters are shared
// read-only. Built with -fsanitize=thread (ptq_tsan_tests, the asan preset), so a data
// race inside the library (hidden static state, a shared scratch buffer) fails the test.
//
// Equality: min, max and counts exactly (order-free); mean, b and std to 1e-12 relative:
// the merged accumulator adds the same per-batch terms in another order (batch_mean: a
// weighted average of running averages; exact: Chan's merge of (count, mean, M2)), so
// only the double rounding of that order differs. The threaded result itself is
// deterministic: merged in thread order, it is the same bit for bit on every run.
#include <doctest/doctest.h>

#include <cmath>
#include <cstdint>
#include <random>
#include <thread>
#include <vector>

#include <ptq/ptq.hpp>

namespace {

using matrix = ptq::row_matrix<float>;

constexpr ptq::index C = 8, N = 4, HW = 49, batches = 16;
constexpr int threads = 4;

std::vector<matrix> make_batches() {
  std::mt19937_64 rng(2019);
  std::vector<matrix> out;
  for (ptq::index k = 0; k < batches; ++k) {
    matrix m(N * C, HW);
    for (ptq::index r = 0; r < m.rows(); ++r) {
      std::normal_distribution<float> g(0.1f * float(r % C), 1.0f + 0.25f * float(r % C));
      for (ptq::index j = 0; j < HW; ++j) m(r, j) = g(rng);
    }
    out.push_back(std::move(m));
  }
  return out;
}

bool close(const Eigen::VectorXd& a, const Eigen::VectorXd& b) {
  if (a.size() != b.size()) return false;
  for (ptq::index i = 0; i < a.size(); ++i)
    if (std::abs(a[i] - b[i]) > 1e-12 * std::max(1.0, std::abs(b[i]))) return false;
  return true;
}

bool same(const ptq::channel_stats& a, const ptq::channel_stats& b) {
  return a.min == b.min && a.max == b.max && a.mean == b.mean && a.b == b.b && a.std == b.std && a.count == b.count;
}

// Thread t adds batches t, t + threads, ...; the parts are merged in thread order.
ptq::calibration_statistics threaded(const std::vector<matrix>& data, ptq::stats_mode mode) {
  std::vector<ptq::calibration_statistics> part(threads, ptq::calibration_statistics(C, mode));
  std::vector<std::thread> pool;
  for (int t = 0; t < threads; ++t)
    pool.emplace_back([&, t] {
      for (ptq::index k = t; k < batches; k += threads) part[static_cast<std::size_t>(t)].add(data[static_cast<std::size_t>(k)]);
    });
  for (auto& th : pool) th.join();
  ptq::calibration_statistics all = part[0];
  for (int t = 1; t < threads; ++t) all.merge(part[static_cast<std::size_t>(t)]);
  if (mode == ptq::stats_mode::batch_mean) return all;
  // Exact mode, pass 2: the merged pass-1 state copied to every thread, each adds its share again.
  all.begin_deviation_pass();
  std::vector<ptq::calibration_statistics> dev(threads, all);
  pool.clear();
  for (int t = 0; t < threads; ++t)
    pool.emplace_back([&, t] {
      for (ptq::index k = t; k < batches; k += threads) dev[static_cast<std::size_t>(t)].add(data[static_cast<std::size_t>(k)]);
    });
  for (auto& th : pool) th.join();
  ptq::calibration_statistics merged = dev[0];
  for (int t = 1; t < threads; ++t) merged.merge(dev[static_cast<std::size_t>(t)]);
  return merged;
}

}  // namespace

TEST_CASE("tsan: calibration statistics from 4 threads, merged, equal the single-threaded ones") {
  const std::vector<matrix> data = make_batches();
  for (const auto mode : {ptq::stats_mode::batch_mean, ptq::stats_mode::exact}) {
    CAPTURE(static_cast<int>(mode));
    ptq::calibration_statistics one(C, mode);
    for (const auto& b : data) one.add(b);
    if (mode == ptq::stats_mode::exact) {
      one.begin_deviation_pass();
      for (const auto& b : data) one.add(b);
    }
    const ptq::channel_stats want = one.result();
    const ptq::calibration_statistics par = threaded(data, mode);
    const ptq::channel_stats got = par.result();
    CHECK(par.batches() == batches);
    CHECK(got.count == want.count);
    if (mode == ptq::stats_mode::exact) {
      CHECK(got.min == want.min);  // exact: the overall extremes
      CHECK(got.max == want.max);
    } else {
      CHECK(close(got.min, want.min));  // batch_mean: averages of per-batch extremes
      CHECK(close(got.max, want.max));
    }
    CHECK(close(got.mean, want.mean));
    CHECK(close(got.b, want.b));
    CHECK(close(got.std, want.std));
    CHECK(same(threaded(data, mode).result(), got));  // deterministic
  }
}

TEST_CASE("tsan: fake quantization of disjoint row blocks on 4 threads equals one call") {
  const std::vector<matrix> data = make_batches();
  ptq::calibration_statistics s(C);
  s.add(data[0]);
  const ptq::channel_stats st = s.result();
  const auto p = ptq::quant_params<float>::per_channel(ptq::aciq_ranges(ptq::distribution::laplace, st, 4),
                                                        Eigen::VectorXi::Constant(C, 4), st.mean);
  matrix x(batches * N * C, HW);
  for (ptq::index k = 0; k < batches; ++k) x.middleRows(k * N * C, N * C) = data[static_cast<std::size_t>(k)];
  matrix want(x.rows(), x.cols()), got = x;
  ptq::gemmlowp_quantizer::fake_quantize(x, p, want);
  std::vector<std::thread> pool;
  const ptq::index rows = x.rows() / threads;  // a multiple of C
  for (int t = 0; t < threads; ++t)
    pool.emplace_back([&, t] {
      auto block = got.middleRows(t * rows, rows);
      ptq::gemmlowp_quantizer::fake_quantize_in_place(block, p);
    });
  for (auto& th : pool) th.join();
  CHECK(got == want);
}
