// test_thrust_statistics.cpp: ptq::device statistics, ACIQ ranges and bias correction on Thrust's OMP backend against the core.
#include <doctest/doctest.h>

#include <thrust/execution_policy.h>

#include <cmath>
#include <limits>
#include <random>
#include <vector>

#include "ptq/aciq.hpp"
#include "ptq/bias_corrector.hpp"
#include "ptq/calibration.hpp"
#include "ptq/gemmlowp_quantizer.hpp"
#include "ptq/thrust.hpp"
#include "device_test_util.hpp"

// Everything of this file in its own namespace: the test binary is a unity build.
namespace ptq_test_thrust_statistics {

namespace {

using namespace device_test;
const shape shapes[] = {{1, 1, 1},    {1, 1, 7},     {1, 7, 1},     {7, 1, 1},       {3, 31, 11},
                        {1, 1, 1023}, {1, 1023, 1},  {7, 163, 919}, {1, 1, 1048579}};

}  // namespace

TEST_CASE_TEMPLATE("thrust statistics: batch_mean and exact modes equal the core over several batches", T, float,
                   double) {
  std::mt19937_64 g(501);
  for (const shape& s : shapes) {
    CAPTURE(s.outer);
    CAPTURE(s.channels);
    CAPTURE(s.inner);
    // Three batches: two of shape s, one with a different outer count.
    const shape s2{s.outer + 2, s.channels, s.inner};
    const std::vector<T> b0 = channel_data<T>(g, s), b1 = channel_data<T>(g, s), b2 = channel_data<T>(g, s2);
    const auto rows = [](const std::vector<T>& v, const shape& sh) { return ptq::const_row_map<T>(v.data(), sh.rows(), sh.inner); };
    const auto sp = [](const std::vector<T>& v) { return span<const T>(v.data(), v.size()); };

    ptq::calibration_statistics core(s.channels, ptq::stats_mode::batch_mean);
    ptq::device::calibration_statistics dev(s.channels, ptq::stats_mode::batch_mean);
    core.add(rows(b0, s)), core.add(rows(b1, s)), core.add(rows(b2, s2));
    dev.add(thrust::omp::par, sp(b0), s.inner), dev.add(thrust::omp::par, sp(b1), s.inner);
    dev.add(thrust::omp::par, sp(b2), s.inner);
    check_stats(core.result(), dev.result());

    ptq::calibration_statistics ce(s.channels, ptq::stats_mode::exact);
    ptq::device::calibration_statistics de(s.channels, ptq::stats_mode::exact);
    ce.add(rows(b0, s)), ce.add(rows(b1, s)), ce.add(rows(b2, s2));
    de.add(thrust::omp::par, sp(b0), s.inner), de.add(thrust::omp::par, sp(b1), s.inner);
    de.add(thrust::omp::par, sp(b2), s.inner);
    check_stats(ce.moments(), de.moments(), false);
    CHECK_THROWS_WITH_AS(de.result(), doctest::Contains("exact mode needs a second pass"), ptq::error);
    ce.begin_deviation_pass(), de.begin_deviation_pass();
    ce.add(rows(b2, s2)), ce.add(rows(b0, s)), ce.add(rows(b1, s));
    de.add(thrust::cpp::par, sp(b2), s.inner), de.add(thrust::omp::par, sp(b0), s.inner);
    de.add(thrust::omp::par, sp(b1), s.inner);
    check_stats(ce.result(), de.result());

    // One batch: the free function against the core's naive twin.
    check_stats(ptq::batch_statistics_ref(rows(b0, s), s.channels),
                ptq::device::batch_statistics(thrust::omp::par, sp(b0), s.inner, s.channels));
  }
}

TEST_CASE("thrust statistics: constant channels give b = std = 0 and mean = the constant exactly") {
  const std::vector<float> x(3 * 4 * 9, -2.75f);
  const auto st = ptq::device::batch_statistics(thrust::omp::par, span<const float>(x.data(), x.size()), 9, 4);
  for (idx c = 0; c < 4; ++c) {
    CHECK(st.mean[c] == -2.75);
    CHECK(st.b[c] == 0.0);
    CHECK(st.std[c] == 0.0);
  }
}

TEST_CASE("thrust statistics: non-finite data and protocol misuse throw, the accumulator unchanged") {
  std::mt19937_64 g(502);
  const shape s{2, 3, 5};
  std::vector<double> x = channel_data<double>(g, s);
  ptq::device::calibration_statistics acc(3, ptq::stats_mode::exact);
  acc.add(thrust::omp::par, span<const double>(x.data(), x.size()), 5);
  const ptq::channel_stats before = acc.moments();
  x[22] = std::numeric_limits<double>::quiet_NaN();
  CHECK_THROWS_WITH_AS(acc.add(thrust::omp::par, span<const double>(x.data(), x.size()), 5),
                       doctest::Contains("rows(4, 2) = nan is not finite (channel 1, outer index 1, column 2)"),
                       ptq::error);
  x[22] = 1e308, x[23] = 1e308;
  CHECK_THROWS_WITH_AS(acc.add(thrust::omp::par, span<const double>(x.data(), x.size()), 5),
                       doctest::Contains("overflows double"), ptq::error);
  CHECK(acc.batches() == 1);
  CHECK(acc.moments().mean == before.mean);
  CHECK_THROWS_WITH_AS(acc.add(thrust::omp::par, span<const double>(x.data(), x.size()), 4),
                       doctest::Contains("not a multiple of cols = 4"), ptq::error);
  CHECK_THROWS_WITH_AS(acc.add(thrust::omp::par, span<const double>(x.data(), 25), 5),
                       doctest::Contains("rows = 5 is not a multiple of channels = 3"), ptq::error);
  CHECK_THROWS_WITH_AS(ptq::device::calibration_statistics(0), doctest::Contains("channels = 0 must be at least 1"),
                       ptq::error);
  ptq::device::calibration_statistics bm(3);
  CHECK_THROWS_WITH_AS(bm.begin_deviation_pass(), doctest::Contains("mode = batch_mean has no deviation pass"),
                       ptq::error);
  CHECK_THROWS_WITH_AS(bm.result(), doctest::Contains("batches = 0"), ptq::error);
}

TEST_CASE("thrust aciq: ranges from device statistics equal the core's, per-channel bits 0..8") {
  std::mt19937_64 g(503);
  const shape s{7, 163, 919};
  check_ranges_like_core(thrust::omp::par, channel_data<float>(g, s), s);
}

TEST_CASE_TEMPLATE("thrust bias_corrector: correction and corrected weights equal the core's (1 ulp)", T, float,
                   double) {
  std::mt19937_64 g(504);
  for (const shape& s : bias_corrector_shapes) {
    CAPTURE(s.channels);
    CAPTURE(s.inner);
    check_bias_corrector_like_core<T>(thrust::omp::par, g, s);
  }
  std::vector<float> w(10, 1.0f), wq(10, 1.0f);
  wq[7] = INFINITY;
  CHECK_THROWS_WITH_AS(ptq::device::bias_corrector::correct(thrust::omp::par, span<const float>(w.data(), 10),
                                                            span<float>(wq.data(), 10), 5),
                       doctest::Contains("ptq::device::bias_corrector::correct: wq(1, 2) = inf is not finite"),
                       ptq::error);
  CHECK(wq[0] == 1.0f);
  CHECK_THROWS_WITH_AS(ptq::device::bias_corrector::compute(thrust::omp::par, span<const float>(w.data(), 10),
                                                            span<const float>(wq.data(), 9), 5),
                       doctest::Contains("wq.size() = 9 but w.size() = 10"), ptq::error);
}

// Review finding 2: the device's apply and correct ran without the core's range check.
TEST_CASE("thrust bias_corrector: a correction that leaves float throws in apply and correct, wq untouched") {
  check_overflowing_correction_refused(thrust::omp::par);
}

TEST_CASE("thrust bias_corrector: apply refuses exactly what the core refuses (row min and max, FLT_MAX fits)") {
  check_apply_range_edges_like_core(thrust::omp::par);
}

}  // namespace ptq_test_thrust_statistics
