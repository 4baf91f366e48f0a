// device_test_util.hpp: data, shapes, comparisons and the checks against the core shared by the Thrust (OMP/CPP) and CUDA tests.
#pragma once

#include <doctest/doctest.h>

#include <thrust/copy.h>
#include <thrust/device_vector.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <limits>
#include <random>
#include <type_traits>
#include <utility>
#include <vector>

#include "ptq/aciq.hpp"
#include "ptq/bias_corrector.hpp"
#include "ptq/calibration.hpp"
#include "ptq/gemmlowp_quantizer.hpp"
#include "ptq/thrust/aciq.hpp"
#include "ptq/thrust/bias_corrector.hpp"
#include "ptq/thrust/common.hpp"
#include "ptq/types.hpp"
#include "../stats_checks.hpp"

namespace device_test {

using idx = ptq::index;
using ptq::device::span;

// outer x channels x inner, the core's row view: rows = outer * channels, cols = inner.
struct shape {
  idx outer, channels, inner;
  idx size() const { return outer * channels * inner; }
  idx rows() const { return outer * channels; }
};

// The bias corrector comparisons' weights: K = channels rows of `inner` values.
inline const shape bias_corrector_shapes[] = {{1, 1, 1}, {1, 7, 1}, {1, 64, 1023}, {1, 5, 7}, {1, 1, 1048579}};

template <class T>
bool same_bits(const std::vector<T>& a, const std::vector<T>& b) {
  return a.size() == b.size() && std::memcmp(a.data(), b.data(), a.size() * sizeof(T)) == 0;
}

template <class T>
ptq::const_row_map<T> rows_of(const std::vector<T>& x, const shape& s) {
  return ptq::const_row_map<T>(x.data(), s.rows(), s.inner);
}

// THRUST_DEVICE_SYSTEM's memory: the GPU's under CUDA, host memory on the OMP / CPP
// backends (which their policies reach), so the shared checks below run on both.
template <class T>
std::vector<T> to_host(const thrust::device_vector<T>& d) {
  std::vector<T> h(d.size());
  thrust::copy(d.begin(), d.end(), h.begin());
  return h;
}
template <class T>
span<T> sp(thrust::device_vector<T>& d) {
  return span<T>(thrust::raw_pointer_cast(d.data()), d.size());
}
template <class T>
span<const T> csp(const thrust::device_vector<T>& d) {
  return span<const T>(thrust::raw_pointer_cast(d.data()), d.size());
}

// The references: the core's fake quantization of x, its codes, and those codes dequantized.
template <class T, class Code = std::uint8_t>
struct core_quantized {
  std::vector<T> fake, dequantized;
  std::vector<Code> codes;
  core_quantized(const std::vector<T>& x, const shape& s, const ptq::quant_params<T>& p)
      : fake(x.size()), dequantized(x.size()), codes(x.size()) {
    ptq::gemmlowp_quantizer::fake_quantize(rows_of(x, s), p, ptq::row_map<T>(fake.data(), s.rows(), s.inner));
    ptq::gemmlowp_quantizer::quantize<Code>(rows_of(x, s), p, ptq::row_map<Code>(codes.data(), s.rows(), s.inner));
    ptq::gemmlowp_quantizer::dequantize(ptq::const_row_map<Code>(codes.data(), s.rows(), s.inner), p,
                                        ptq::row_map<T>(dequantized.data(), s.rows(), s.inner));
  }
};

// Ranges of varied widths, some excluding 0, some zero-width.
inline ptq::channel_ranges random_ranges(std::mt19937_64& g, idx channels) {
  std::uniform_real_distribution<double> u(-3, 3);
  ptq::channel_ranges r;
  r.lo.resize(channels), r.hi.resize(channels);
  for (idx c = 0; c < channels; ++c) {
    double a = u(g), b = u(g);
    if (a > b) std::swap(a, b);
    if (c % 11 == 5) b = a;                             // zero width
    if (c % 13 == 7) a = std::abs(a) + 0.1, b = a + 1;  // excludes 0
    r.lo[c] = a, r.hi[c] = b;
  }
  return r;
}

// Bits in [0, hi] with hi (channel 0) and 0 (channel 1) present.
inline Eigen::VectorXi random_bits(std::mt19937_64& g, idx channels, int hi = 8) {
  Eigen::VectorXi bits(channels);
  for (idx c = 0; c < channels; ++c) bits[c] = std::uniform_int_distribution<int>(0, hi)(g);
  bits[0] = hi;
  if (channels > 1) bits[1] = 0;
  return bits;
}

// Uniform in [-4.5, 4.5]: beyond every range, so both ends saturate.
template <class T>
std::vector<T> make_data(std::mt19937_64& g, idx n) {
  std::uniform_real_distribution<double> u(-4.5, 4.5);
  std::vector<T> x(static_cast<std::size_t>(n));
  for (auto& v : x) v = static_cast<T>(u(g));
  return x;
}

// Laplace-ish data with a per-channel offset and scale (and a constant channel).
template <class T>
std::vector<T> channel_data(std::mt19937_64& g, const shape& s, bool constant_channels = true) {
  std::exponential_distribution<double> e(1.0);
  std::bernoulli_distribution sign(0.5);
  std::vector<T> x(static_cast<std::size_t>(s.size()));
  for (idx r = 0; r < s.rows(); ++r) {
    const idx c = r % s.channels;
    for (idx j = 0; j < s.inner; ++j) {
      const double v = constant_channels && c % 17 == 3 ? 1.25 : 0.3 * c - 1 + (1 + 0.1 * c) * (sign(g) ? e(g) : -e(g));
      x[static_cast<std::size_t>(r * s.inner + j)] = static_cast<T>(v);
    }
  }
  return x;
}

// |a - b| <= tol * max(|a|, |b|, floor): relative, with an absolute floor for values near 0.
inline void check_close(const Eigen::VectorXd& a, const Eigen::VectorXd& b, double tol, double floor,
                        const char* what) {
  REQUIRE(a.size() == b.size());
  for (idx c = 0; c < a.size(); ++c) {
    INFO(what << "[" << c << "]: " << a[c] << " vs " << b[c]);
    CHECK(std::abs(a[c] - b[c]) <= tol * std::max({std::abs(a[c]), std::abs(b[c]), floor}));
  }
}

// min and max exactly, mean / std / b within 1e-9 relative (the issue asks 1e-6; the
// order of the double additions alone gives ~1e-13).
inline void check_stats(const ptq::channel_stats& a, const ptq::channel_stats& b, bool with_b = true) {
  CHECK(a.count == b.count);
  CHECK(a.min == b.min);
  CHECK(a.max == b.max);
  const double tol = 1e-9;
  check_close(a.mean, b.mean, tol, 1.0, "mean");
  check_close(a.std, b.std, tol, 1e-300, "std");
  if (with_b) check_close(a.b, b.b, tol, 1e-300, "b");
}


// ACIQ ranges (both distributions and range kinds, per-channel bits 0..8 and 4 bits) and
// minmax ranges of the float tensor x (shape s) on the policy, against the core's from
// the core's statistics: 1e-9 relative (min and max exactly).
template <class Policy>
void check_ranges_like_core(Policy&& policy, const std::vector<float>& x, const shape& s) {
  const thrust::device_vector<float> dx(x.begin(), x.end());
  const span<const float> xs = csp(dx);
  const ptq::channel_stats core = ptq::batch_statistics_ref(rows_of(x, s), s.channels);
  Eigen::VectorXi bits(s.channels);
  for (idx c = 0; c < s.channels; ++c) bits[c] = static_cast<int>(c % 9);
  for (auto d : {ptq::distribution::laplace, ptq::distribution::gauss})
    for (auto r : {ptq::range_kind::signed_range, ptq::range_kind::unsigned_range}) {
      const ptq::channel_ranges a = ptq::aciq_ranges(d, core, bits, r);
      const ptq::channel_ranges b = ptq::device::aciq_ranges(policy, xs, s.inner, s.channels, d, bits, r);
      check_close(a.lo, b.lo, 1e-9, 1.0, "lo");
      check_close(a.hi, b.hi, 1e-9, 1.0, "hi");
      const ptq::channel_ranges a4 = ptq::aciq_ranges(d, core, 4, r);
      const ptq::channel_ranges b4 = ptq::device::aciq_ranges(policy, xs, s.inner, s.channels, d, 4, r);
      check_close(a4.hi, b4.hi, 1e-9, 1.0, "hi");
    }
  for (auto r : {ptq::range_kind::signed_range, ptq::range_kind::unsigned_range}) {
    const ptq::channel_ranges m = ptq::device::minmax_ranges(policy, xs, s.inner, s.channels, r);
    const ptq::channel_ranges mc = ptq::minmax_ranges(core, r);
    CHECK(m.lo == mc.lo);
    CHECK(m.hi == mc.hi);
  }
}

// Bias correction of K = s.channels rows of s.inner weights (s.outer must be 1) on the
// policy against the core, with and without the variance correction:
//  - compute() and correct(): mu, xi, beta within 1e-9 relative of the core's;
//  - correct()'s weights: float within 1 ulp of the core's; double within what the
//    coefficient differences explain (the sums run in another order) plus the rounding
//    of the apply step;
//  - apply() of the core's own correction: the core's weights bit for bit (multiply,
//    then add, in double: two roundings, no FMA on any backend).
template <class T, class Policy>
void check_bias_corrector_like_core(Policy&& policy, std::mt19937_64& g, const shape& s) {
  REQUIRE(s.outer == 1);
  // No constant channels and no 0-bit ones: there the quantized spread is 0 up to the
  // rounding of the mean, and xi = spread(w) / rounding noise is ill-conditioned in the core.
  const std::vector<T> w = channel_data<T>(g, s, false);
  const ptq::const_row_map<T> wm(w.data(), s.channels, s.inner);
  ptq::calibration_statistics st(s.channels);
  st.add(wm);
  Eigen::VectorXi bits(s.channels);
  for (idx c = 0; c < s.channels; ++c) bits[c] = 1 + static_cast<int>(c % 8);
  const auto p = ptq::quant_params<T>::per_channel(ptq::minmax_ranges(st.result()), bits);
  std::vector<T> wq(w.size());
  ptq::gemmlowp_quantizer::fake_quantize(wm, p, ptq::row_map<T>(wq.data(), s.channels, s.inner));
  const thrust::device_vector<T> dw(w.begin(), w.end());
  for (bool variance : {false, true}) {
    CAPTURE(variance);
    std::vector<T> core_q = wq;
    const ptq::bias_correction a =
        ptq::bias_corrector::correct(wm, ptq::row_map<T>(core_q.data(), s.channels, s.inner), {variance});
    thrust::device_vector<T> dq(wq.begin(), wq.end());
    const ptq::bias_correction c =
        ptq::device::bias_corrector::compute(policy, csp(dw), csp(dq), s.inner, {variance});
    CHECK(same_bits(wq, to_host(dq)));  // compute() writes nothing
    const ptq::bias_correction b = ptq::device::bias_corrector::correct(policy, csp(dw), sp(dq), s.inner, {variance});
    for (const ptq::bias_correction* got : {&b, &c}) {
      check_close(a.mu, got->mu, 1e-9, 1e-6, "mu");
      check_close(a.xi, got->xi, 1e-9, 1.0, "xi");
      check_close(a.beta, got->beta, 1e-9, 1e-6, "beta");
    }
    const std::vector<T> dev_q = to_host(dq);
    idx far = 0;
    for (std::size_t i = 0; i < core_q.size(); ++i) {
      const T u = core_q[i], v = dev_q[i];
      const idx r = static_cast<idx>(i) / s.inner;
      const double q = std::abs(static_cast<double>(wq[i]));
      const double terms = std::abs(a.xi[r]) * q + std::abs(a.beta[r]) +
                           (std::abs(a.xi[r] - b.xi[r]) * q + std::abs(a.beta[r] - b.beta[r])) /
                               (8 * std::numeric_limits<double>::epsilon());
      const bool ok = std::is_same<T, float>::value
                          ? (u == v || std::nextafter(u, v) == v)
                          : std::abs(static_cast<double>(u) - static_cast<double>(v)) <=
                                8 * std::numeric_limits<double>::epsilon() * terms;
      if (!ok) ++far;
    }
    CHECK(far == 0);
    // The core's correction applied on the policy: the core's weights exactly.
    thrust::device_vector<T> da(wq.begin(), wq.end());
    ptq::device::bias_corrector::apply(policy, a, sp(da), s.inner);
    CHECK(same_bits(core_q, to_host(da)));
  }
}

// The core's range check of corrected weights (bias_corrector.hpp: xi * wq + beta must
// stay within T) on the policy. Float weights near FLT_MAX, whose variance correction
// (xi ~ 1e39) leaves float in row 1 (the core's bad_input case) while row 0 is ordinary.
// The core is the reference: it must refuse the same input. apply() and correct() must
// throw ptq::error naming the function and the row, and leave wq byte for byte as it was.
template <class Policy>
void check_overflowing_correction_refused(Policy&& policy) {
  const idx K = 2, N = 16;
  std::vector<float> w(static_cast<std::size_t>(K * N)), wq(w.size());
  for (std::size_t j = 0; j < static_cast<std::size_t>(N); ++j) {
    w[j] = 0.1f * static_cast<float>(j) - 0.7f;
    wq[j] = 0.125f * std::nearbyint(8.0f * w[j]);
    w[N + j] = (j % 2 ? 1.0f : -1.0f) * 3e38f;
    wq[N + j] = j == 0 ? 1.0f : 0.0f;
  }
  const ptq::const_row_map<float> wm(w.data(), K, N);
  std::vector<float> core_q = wq;
  CHECK_THROWS_WITH_AS(ptq::bias_corrector::correct(wm, ptq::row_map<float>(core_q.data(), K, N), {true}),
                       doctest::Contains("ptq::bias_corrector::correct: row 1: the corrected weight"), ptq::error);
  CHECK(same_bits(core_q, wq));

  const thrust::device_vector<float> dw(w.begin(), w.end());
  thrust::device_vector<float> dq(wq.begin(), wq.end());
  CHECK_THROWS_WITH_AS(ptq::device::bias_corrector::correct(policy, csp(dw), sp(dq), N, {true}),
                       doctest::Contains("ptq::device::bias_corrector::correct: row 1: the corrected weight"),
                       ptq::error);
  CHECK(same_bits(wq, to_host(dq)));

  // apply() with the correction compute() finds (finite, and the core's to 1e-9).
  thrust::copy(wq.begin(), wq.end(), dq.begin());  // in case correct() wrote
  const ptq::bias_correction c = ptq::device::bias_corrector::compute(policy, csp(dw), csp(dq), N, {true});
  const ptq::bias_correction cc = ptq::bias_corrector::compute(wm, ptq::const_row_map<float>(wq.data(), K, N), {true});
  check_close(c.xi, cc.xi, 1e-9, 1.0, "xi");
  check_close(c.beta, cc.beta, 1e-9, 1.0, "beta");
  REQUIRE(std::isfinite(c.xi[1]));
  CHECK(c.xi[1] > 1e38);
  core_q = wq;
  CHECK_THROWS_WITH_AS(ptq::bias_corrector::apply(c, ptq::row_map<float>(core_q.data(), K, N)),
                       doctest::Contains("ptq::bias_corrector::apply: row 1: the corrected weight"), ptq::error);
  CHECK(same_bits(core_q, wq));
  CHECK_THROWS_WITH_AS(ptq::device::bias_corrector::apply(policy, c, sp(dq), N),
                       doctest::Contains("ptq::device::bias_corrector::apply: row 1: the corrected weight"),
                       ptq::error);
  CHECK(same_bits(wq, to_host(dq)));
}

// Hand-made corrections at the edge of float, each judged by the core: the device check
// must look at both ends of a row (its min and its max) and must not refuse what fits
// (FLT_MAX itself does); what fits is applied exactly as the core applies it.
template <class Policy>
void check_apply_range_edges_like_core(Policy&& policy) {
  const float big = std::numeric_limits<float>::max();
  const idx N = 5;
  struct edge {
    std::vector<float> row;
    double xi, beta;
    bool overflows;  // what the core must say (checked, not assumed)
  };
  const edge cases[] = {
      {{-3e38f, -1.0f, 0.0f, 0.5f, 1.0f}, 2.0, 0.0, true},    // the row's min leaves float, its max fits
      {{-1.0f, 0.0f, 0.5f, 1.0f, 3e38f}, 2.0, 0.0, true},     // the row's max leaves float
      {{-1.0f, 0.0f, 0.5f, 1.0f, 3e38f}, 1.0, 1e38, true},    // beta pushes it over
      {{-big, -1.0f, 0.0f, 1.0f, big}, 1.0, 0.0, false},      // exactly FLT_MAX: fits
      {{-2.0f, -1.0f, 0.0f, 1.0f, 2.0f}, 1.5, -0.25, false},  // ordinary
  };
  for (const edge& e : cases) {
    CAPTURE(e.xi);
    CAPTURE(e.beta);
    CAPTURE(e.row.front());
    CAPTURE(e.row.back());
    // Two rows: row 0 ordinary, row 1 the edge case.
    std::vector<float> wq = {0.25f, -0.5f, 0.75f, 1.0f, -1.0f};
    wq.insert(wq.end(), e.row.begin(), e.row.end());
    ptq::bias_correction c;
    c.mu = Eigen::Vector2d(0.0, 0.0);
    c.xi = Eigen::Vector2d(1.25, e.xi);
    c.beta = Eigen::Vector2d(0.125, e.beta);
    std::vector<float> core_q = wq;
    bool core_threw = false;
    try {
      ptq::bias_corrector::apply(c, ptq::row_map<float>(core_q.data(), 2, N));
    } catch (const ptq::error&) {
      core_threw = true;
    }
    REQUIRE(core_threw == e.overflows);
    thrust::device_vector<float> dq(wq.begin(), wq.end());
    if (e.overflows) {
      CHECK_THROWS_WITH_AS(ptq::device::bias_corrector::apply(policy, c, sp(dq), N),
                           doctest::Contains("ptq::device::bias_corrector::apply: row 1: the corrected weight"),
                           ptq::error);
      CHECK(same_bits(wq, to_host(dq)));
    } else {
      CHECK_NOTHROW(ptq::device::bias_corrector::apply(policy, c, sp(dq), N));
      CHECK(same_bits(core_q, to_host(dq)));
    }
  }
}

}  // namespace device_test
