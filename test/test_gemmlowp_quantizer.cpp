// test_gemmlowp_quantizer.cpp: affine uint quantization: parameters, grid, rounding, _ref twins, errors.
#include <doctest/doctest.h>

#include <cmath>
#include <cstdint>
#include <cstring>
#include <limits>
#include <random>
#include <vector>

#include "ptq/gemmlowp_quantizer.hpp"

// Everything of this file in its own namespace: the test binary is a unity build.
namespace ptq_test_gemmlowp_quantizer {

namespace {

using ptq::channel_ranges;
using ptq::gemmlowp_quantizer;
using idx = ptq::index;
using ptq::quant_params;
template <class T>
using rmat = ptq::row_matrix<T>;
template <class C>
using codes_mat = Eigen::Matrix<C, Eigen::Dynamic, Eigen::Dynamic, Eigen::RowMajor>;

// Bitwise equality of two dense objects of the same scalar type (-0.0 != +0.0 here).
template <class A, class B>
bool same_bits(const Eigen::DenseBase<A>& a, const Eigen::DenseBase<B>& b) {
  if (a.rows() != b.rows() || a.cols() != b.cols()) return false;
  for (idx i = 0; i < a.rows(); ++i) {
    for (idx j = 0; j < a.cols(); ++j) {
      const typename A::Scalar u = a.derived().coeff(i, j);
      const typename B::Scalar v = b.derived().coeff(i, j);
      if (std::memcmp(&u, &v, sizeof u) != 0) return false;
    }
  }
  return true;
}

double uniform(std::mt19937_64& g, double lo, double hi) { return std::uniform_real_distribution<double>(lo, hi)(g); }
int uniform_int(std::mt19937_64& g, int lo, int hi) { return std::uniform_int_distribution<int>(lo, hi)(g); }

// A random range that contains 0 (sometimes with 0 at one end).
std::pair<double, double> range_with_zero(std::mt19937_64& g) {
  const int kind = uniform_int(g, 0, 9);
  const double lo = kind == 0 ? 0.0 : -std::exp(uniform(g, -4, 3));
  const double hi = kind == 1 ? 0.0 : std::exp(uniform(g, -4, 3));
  return {lo, hi};
}

// Data spread over [lo - w/4, hi + w/4]: inside and beyond the range.
template <class T>
rmat<T> make_data(std::mt19937_64& g, idx rows, idx cols, double lo, double hi) {
  const double w = hi - lo + 1e-3;
  rmat<T> x(rows, cols);
  for (idx i = 0; i < x.size(); ++i) x.data()[i] = static_cast<T>(uniform(g, lo - w / 4, hi + w / 4));
  return x;
}

// Per-channel ranges with a spread of widths, some excluding 0, some zero-width.
channel_ranges random_ranges(std::mt19937_64& g, idx channels) {
  channel_ranges r;
  r.lo.resize(channels);
  r.hi.resize(channels);
  for (idx c = 0; c < channels; ++c) {
    const int kind = uniform_int(g, 0, 9);
    double lo = -std::exp(uniform(g, -3, 2)), hi = std::exp(uniform(g, -3, 2));
    if (kind == 0) lo = hi * 0.25;   // positive range
    if (kind == 1) hi = lo * 0.5;    // negative range
    if (kind == 2) hi = lo;          // zero-width
    r.lo[c] = lo;
    r.hi[c] = hi;
  }
  return r;
}

template <class T>
T constant_of(const quant_params<T>& p, idx c) {
  const int q = std::min(std::max(p.zero_point[c], 0), p.qmax(c));
  return (static_cast<T>(q) - static_cast<T>(p.zero_point[c])) * p.scale[c];
}

}  // namespace

TEST_CASE_TEMPLATE("gemmlowp_quantizer: scale and zero_point equal a naive double computation", T, float, double) {
  std::mt19937_64 g(11);
  for (int trial = 0; trial < 400; ++trial) {
    const idx C = 4;
    const channel_ranges r = random_ranges(g, C);
    Eigen::VectorXi bits(C);
    Eigen::VectorXd mean(C);
    for (idx c = 0; c < C; ++c) {
      bits[c] = uniform_int(g, 0, 16);
      mean[c] = uniform(g, r.lo[c] - 1, r.hi[c] + 1);
    }
    const bool with_mean = trial % 2 == 0;
    const auto p = with_mean ? quant_params<T>::per_channel(r, bits, mean) : quant_params<T>::per_channel(r, bits);
    REQUIRE(p.channels() == C);
    CHECK(p.g == ptq::granularity::per_channel);
    for (idx c = 0; c < C; ++c) {
      CAPTURE(trial);
      CAPTURE(c);
      const double lo = r.lo[c], hi = r.hi[c];
      CHECK(p.bits[c] == bits[c]);
      if (bits[c] == 0 || lo == hi) {
        double v = lo;
        if (bits[c] == 0) v = with_mean ? std::min(std::max(mean[c], lo), hi) : 0.5 * (lo + hi);
        CHECK(p.is_constant(c));
        CHECK(constant_of(p, c) == static_cast<T>(v));
        continue;
      }
      // Naive: the range extended to 0, (hi - lo) / (2^M - 1), round half even, clamp.
      const double lo0 = lo < 0 ? lo : 0.0, hi0 = hi > 0 ? hi : 0.0;
      const double qmax = std::pow(2.0, bits[c]) - 1.0;
      const double s = (hi0 - lo0) / qmax;
      double z = std::nearbyint(-lo0 / s);
      z = z < 0 ? 0 : (z > qmax ? qmax : z);
      CHECK(!p.is_constant(c));
      CHECK(p.scale[c] == static_cast<T>(s));
      CHECK(p.zero_point[c] == static_cast<int>(z));
    }
  }
  // Per tensor, and the one-width per-channel form.
  const auto pt = quant_params<T>::per_tensor(-1.5, 4.5, 4);
  CHECK(pt.g == ptq::granularity::per_tensor);
  CHECK(pt.channels() == 1);
  CHECK(pt.scale[0] == static_cast<T>(6.0 / 15));
  CHECK(pt.zero_point[0] == static_cast<int>(std::nearbyint(1.5 / (6.0 / 15))));
  channel_ranges r;
  r.lo = Eigen::Vector2d(-1, -2);
  r.hi = Eigen::Vector2d(1, 6);
  const auto p8 = quant_params<T>::per_channel(r, 8);
  CHECK(p8.bits == Eigen::Vector2i(8, 8));
  CHECK(p8.scale[1] == static_cast<T>(8.0 / 255));
  CHECK(p8.zero_point[1] == 64);  // 2 / (8/255) = 63.75
  CHECK(p8.zero_point[0] == 128);  // 127.5 -> even
}

TEST_CASE_TEMPLATE("gemmlowp_quantizer: 0.0 is exact for every range that contains it", T, float, double) {
  std::mt19937_64 g(12);
  for (int trial = 0; trial < 300; ++trial) {
    const auto range = range_with_zero(g);  // not a structured binding: CAPTURE below (a lambda) cannot see one before C++20
    const auto lo = range.first, hi = range.second;
    const int bits = 1 + trial % 16;
    const auto p = quant_params<T>::per_tensor(lo, hi, bits);
    rmat<T> x = rmat<T>::Zero(2, 3), y(2, 3), yr(2, 3);
    x(1, 1) = T(-0.0);
    gemmlowp_quantizer::fake_quantize(x, p, y);
    gemmlowp_quantizer::fake_quantize_ref(x, p, yr);
    codes_mat<std::uint16_t> q(2, 3);
    gemmlowp_quantizer::quantize<std::uint16_t>(x, p, q);
    CAPTURE(lo);
    CAPTURE(hi);
    CAPTURE(bits);
    CHECK((y.array() == T(0)).all());
    CHECK((yr.array() == T(0)).all());
    CHECK((q.array().template cast<int>() == p.zero_point[0]).all());
  }
}

TEST_CASE_TEMPLATE("gemmlowp_quantizer: nearest grid point inside the range, clamping outside", T, float, double) {
  std::mt19937_64 g(13);
  for (int trial = 0; trial < 60; ++trial) {
    const auto [lo, hi] = range_with_zero(g);
    const int bits = 1 + trial % 10;
    const auto p = quant_params<T>::per_tensor(lo, hi, bits);
    const double s = static_cast<double>(p.scale[0]);
    const int zp = p.zero_point[0], qmax = (1 << bits) - 1;
    const double grid_lo = static_cast<double>((T(0) - T(zp)) * p.scale[0]);
    const double grid_hi = static_cast<double>((T(qmax) - T(zp)) * p.scale[0]);
    rmat<T> x(1, 200);
    for (idx j = 0; j < x.cols(); ++j) x(0, j) = static_cast<T>(uniform(g, lo, hi));
    rmat<T> y(1, 200);
    gemmlowp_quantizer::fake_quantize(x, p, y);
    for (idx j = 0; j < x.cols(); ++j) {
      const double v = static_cast<double>(x(0, j)), out = static_cast<double>(y(0, j));
      // Brute force: the nearest of the 2^M grid values.
      double best = std::numeric_limits<double>::infinity();
      for (int k = 0; k <= qmax; ++k) {
        best = std::min(best, std::abs(v - static_cast<double>((T(k) - T(zp)) * p.scale[0])));
      }
      CAPTURE(v);
      CHECK(std::abs(v - out) <= s * 0.5 * (1 + 1e-5));
      CHECK(std::abs(v - out) <= best + s * 1e-5);
    }
    // Saturation corners: the range ends, just beyond, far beyond, the largest finite values.
    const T big = std::numeric_limits<T>::max();
    const std::vector<double> below = {grid_lo - s, grid_lo - 0.51 * s, lo - 10 * s, -1e30, -static_cast<double>(big)};
    const std::vector<double> above = {grid_hi + s, grid_hi + 0.51 * s, hi + 10 * s, 1e30, static_cast<double>(big)};
    rmat<T> xb(1, 5), xa(1, 5), yb(1, 5), ya(1, 5);
    for (int j = 0; j < 5; ++j) {
      xb(0, j) = static_cast<T>(below[j]);
      xa(0, j) = static_cast<T>(above[j]);
    }
    gemmlowp_quantizer::fake_quantize(xb, p, yb);
    gemmlowp_quantizer::fake_quantize(xa, p, ya);
    CHECK((yb.array() == static_cast<T>(grid_lo)).all());
    CHECK((ya.array() == static_cast<T>(grid_hi)).all());
    codes_mat<std::uint16_t> qb(1, 5), qa(1, 5);
    gemmlowp_quantizer::quantize<std::uint16_t>(xb, p, qb);
    gemmlowp_quantizer::quantize<std::uint16_t>(xa, p, qa);
    CHECK((qb.array() == 0).all());
    CHECK((qa.array().template cast<int>() == qmax).all());
    // The grid ends lie within s/2 of the (extended) range ends.
    CHECK(std::abs(grid_lo - std::min(lo, 0.0)) <= 0.5 * s * (1 + 1e-6));
    CHECK(std::abs(grid_hi - std::max(hi, 0.0)) <= 0.5 * s * (1 + 1e-6));
  }
}

TEST_CASE("gemmlowp_quantizer: codes stay in [0, 2^M - 1] for every width, uint8 and uint16") {
  std::mt19937_64 g(14);
  for (int bits = 1; bits <= 16; ++bits) {
    CAPTURE(bits);
    const auto [lo, hi] = range_with_zero(g);
    const auto p = quant_params<float>::per_tensor(lo, hi, bits);
    const rmat<float> x = make_data<float>(g, 3, 301, lo, hi);
    const int qmax = (1 << bits) - 1;
    codes_mat<std::uint16_t> q16(3, 301), r16(3, 301);
    gemmlowp_quantizer::quantize<std::uint16_t>(x, p, q16);
    gemmlowp_quantizer::quantize_ref<std::uint16_t>(x, p, r16);
    CHECK(q16 == r16);
    CHECK(q16.cast<int>().maxCoeff() == qmax);  // the data reaches beyond both ends
    CHECK(q16.cast<int>().minCoeff() == 0);
    if (bits <= 8) {
      codes_mat<std::uint8_t> q8(3, 301), r8(3, 301);
      gemmlowp_quantizer::quantize<std::uint8_t>(x, p, q8);
      gemmlowp_quantizer::quantize_ref<std::uint8_t>(x, p, r8);
      CHECK(q8 == r8);
      CHECK(q8.cast<std::uint16_t>() == q16);
    } else {
      codes_mat<std::uint8_t> q8 = codes_mat<std::uint8_t>::Constant(3, 301, 7);
      CHECK_THROWS_WITH_AS(gemmlowp_quantizer::quantize<std::uint8_t>(x, p, q8),
                           doctest::Contains("does not fit the 8-bit code type"), ptq::error);
      CHECK((q8.array() == 7).all());
    }
  }
}

TEST_CASE_TEMPLATE("gemmlowp_quantizer: per channel equals per tensor applied channel by channel", T, float, double) {
  std::mt19937_64 g(15);
  for (idx inner : {1, 7, 64}) {
    const idx outer = 3, C = 5;
    channel_ranges r;
    r.lo.resize(C);
    r.hi.resize(C);
    Eigen::VectorXi bits(C);
    for (idx c = 0; c < C; ++c) {
      const auto lh = range_with_zero(g);
      r.lo[c] = lh.first;
      r.hi[c] = lh.second;
      bits[c] = uniform_int(g, 1, 16);
    }
    const auto pc = quant_params<T>::per_channel(r, bits);
    const rmat<T> x = make_data<T>(g, outer * C, inner, -5, 5);
    rmat<T> y(outer * C, inner);
    gemmlowp_quantizer::fake_quantize(x, pc, y);
    codes_mat<std::uint16_t> q(outer * C, inner);
    gemmlowp_quantizer::quantize<std::uint16_t>(x, pc, q);
    for (idx c = 0; c < C; ++c) {
      const auto pt = quant_params<T>::per_tensor(r.lo[c], r.hi[c], bits[c]);
      rmat<T> xc(outer, inner), yc(outer, inner), want(outer, inner);
      codes_mat<std::uint16_t> qc(outer, inner), qwant(outer, inner);
      for (idx o = 0; o < outer; ++o) {
        xc.row(o) = x.row(o * C + c);
        want.row(o) = y.row(o * C + c);
        qwant.row(o) = q.row(o * C + c);
      }
      gemmlowp_quantizer::fake_quantize(xc, pt, yc);
      gemmlowp_quantizer::quantize<std::uint16_t>(xc, pt, qc);
      CAPTURE(inner);
      CAPTURE(c);
      CHECK(same_bits(yc, want));
      CHECK(qc == qwant);
    }
  }
}

TEST_CASE_TEMPLATE("gemmlowp_quantizer: optimized equals _ref bit for bit on odd shapes and layouts", T, float, double) {
  std::mt19937_64 g(16);
  for (idx cols : {1, 7, 33, 1023}) {
    for (idx C : {1, 3, 5}) {
      for (idx outer : {1, 2}) {
        CAPTURE(cols);
        CAPTURE(C);
        const idx rows = outer * C;
        const channel_ranges r = random_ranges(g, C);
        Eigen::VectorXi bits(C);
        for (idx c = 0; c < C; ++c) bits[c] = uniform_int(g, 0, 8);
        const auto p = quant_params<T>::per_channel(r, bits);
        const rmat<T> x = make_data<T>(g, rows, cols, -4, 4);

        rmat<T> y(rows, cols), yr(rows, cols);
        gemmlowp_quantizer::fake_quantize(x, p, y);
        gemmlowp_quantizer::fake_quantize_ref(x, p, yr);
        CHECK(same_bits(y, yr));
        rmat<T> xi = x;
        gemmlowp_quantizer::fake_quantize_in_place(xi, p);
        CHECK(same_bits(xi, yr));

        codes_mat<std::uint8_t> q(rows, cols), qr(rows, cols);
        gemmlowp_quantizer::quantize<std::uint8_t>(x, p, q);
        gemmlowp_quantizer::quantize_ref<std::uint8_t>(x, p, qr);
        CHECK(q == qr);
        rmat<T> d(rows, cols), dr(rows, cols);
        gemmlowp_quantizer::dequantize(q, p, d);
        gemmlowp_quantizer::dequantize_ref(q, p, dr);
        CHECK(same_bits(d, dr));
        CHECK(same_bits(d, y));  // dequantize(quantize(x)) == fake_quantize(x)

        // Non-contiguous views take the row-by-row path: a block of a wider matrix,
        // a ColMajor copy, an expression; outputs into a block and a ColMajor matrix.
        rmat<T> wide = rmat<T>::Zero(rows, cols + 3);
        wide.block(0, 1, rows, cols) = x;
        Eigen::Matrix<T, Eigen::Dynamic, Eigen::Dynamic> colmajor = x;
        rmat<T> out_wide = rmat<T>::Constant(rows, cols + 3, T(9));
        gemmlowp_quantizer::fake_quantize(wide.block(0, 1, rows, cols), p, out_wide.block(0, 1, rows, cols));
        CHECK(same_bits(out_wide.block(0, 1, rows, cols), yr));
        CHECK((out_wide.col(0).array() == T(9)).all());
        Eigen::Matrix<T, Eigen::Dynamic, Eigen::Dynamic> out_cm(rows, cols);
        gemmlowp_quantizer::fake_quantize(colmajor, p, out_cm);
        CHECK(same_bits(out_cm, yr));
        gemmlowp_quantizer::fake_quantize(x.array() * T(1), p, y);
        CHECK(same_bits(y, yr));
        codes_mat<std::uint8_t> qb = codes_mat<std::uint8_t>::Zero(rows, cols + 2);
        gemmlowp_quantizer::quantize<std::uint8_t>(colmajor, p, qb.block(0, 2, rows, cols));
        CHECK(qb.block(0, 2, rows, cols) == qr);
        gemmlowp_quantizer::dequantize(qb.block(0, 2, rows, cols), p, out_cm);
        CHECK(same_bits(out_cm, yr));
      }
    }
  }
}

TEST_CASE_TEMPLATE("gemmlowp_quantizer: exact ties round half to even", T, float, double) {
  // [lo, hi] = [-2, 1.75] with 4 bits: scale = 0.25, inv_scale = 4, zero_point = 8, all exact.
  const auto p = quant_params<T>::per_tensor(-2.0, 1.75, 4);
  REQUIRE(p.scale[0] == T(0.25));
  REQUIRE(p.zero_point[0] == 8);
  std::vector<int> ks;
  for (int k = -8; k <= 6; ++k) ks.push_back(k);
  rmat<T> x(1, static_cast<idx>(ks.size()));
  for (std::size_t j = 0; j < ks.size(); ++j) x(0, static_cast<idx>(j)) = (T(ks[j]) + T(0.5)) * T(0.25);
  rmat<T> y(x.rows(), x.cols()), yr(x.rows(), x.cols());
  codes_mat<std::uint8_t> q(x.rows(), x.cols());
  gemmlowp_quantizer::fake_quantize(x, p, y);
  gemmlowp_quantizer::fake_quantize_ref(x, p, yr);
  gemmlowp_quantizer::quantize<std::uint8_t>(x, p, q);
  for (std::size_t j = 0; j < ks.size(); ++j) {
    const int k = ks[j];
    const int even = (k % 2 == 0) ? k : k + 1;  // k + 0.5 -> the even neighbour of k, k + 1
    const int code = std::min(std::max(even + 8, 0), 15);
    CAPTURE(k);
    CHECK(static_cast<int>(q(0, static_cast<idx>(j))) == code);
    CHECK(y(0, static_cast<idx>(j)) == T(code - 8) * T(0.25));
    CHECK(yr(0, static_cast<idx>(j)) == y(0, static_cast<idx>(j)));
  }
  // Same with a non-power-of-two scale where x * inv_scale is still an exact tie:
  // scale = 0.5 (hi - lo = 127.5 over 255), x = (k + 0.5) * 0.5.
  const auto p8 = quant_params<T>::per_tensor(-64.0, 63.5, 8);
  REQUIRE(p8.scale[0] == T(0.5));
  REQUIRE(p8.zero_point[0] == 128);
  rmat<T> x8(1, 4), y8(1, 4);
  x8 << T(0.25), T(0.75), T(-0.25), T(-0.75);  // 0.5 -> 0, 1.5 -> 2, -0.5 -> -0, -1.5 -> -2
  gemmlowp_quantizer::fake_quantize(x8, p8, y8);
  CHECK(y8(0, 0) == T(0));
  CHECK(y8(0, 1) == T(1));
  CHECK(y8(0, 2) == T(0));
  CHECK(y8(0, 3) == T(-1));
}

TEST_CASE_TEMPLATE("gemmlowp_quantizer: zero-width ranges and 0-bit channels are exact constants", T, float, double) {
  for (double c : {0.0, 0.3, -0.3, 1e-30, -7.25, 3e38, -3e38}) {
    for (int bits : {1, 8, 16}) {
      CAPTURE(c);
      CAPTURE(bits);
      const auto p = quant_params<T>::per_tensor(c, c, bits);
      CHECK(p.is_constant(0));
      CHECK(std::isfinite(p.scale[0]));
      rmat<T> x(1, 6), y(1, 6), yr(1, 6);
      x << T(0), T(c), T(-1e30), T(1e30), std::numeric_limits<T>::max(), T(-3);
      gemmlowp_quantizer::fake_quantize(x, p, y);
      gemmlowp_quantizer::fake_quantize_ref(x, p, yr);
      CHECK((y.array() == static_cast<T>(c)).all());
      CHECK(same_bits(y, yr));
      codes_mat<std::uint16_t> q(1, 6);
      gemmlowp_quantizer::quantize<std::uint16_t>(x, p, q);
      CHECK((q.array() == q(0, 0)).all());
      CHECK(static_cast<int>(q(0, 0)) == (c < 0 ? (1 << bits) - 1 : 0));
      rmat<T> d(1, 6);
      gemmlowp_quantizer::dequantize(q, p, d);
      CHECK(same_bits(d, y));
    }
  }
  // 0 bits: the mean clamped into [lo, hi]; the midpoint without a mean; codes all 0.
  channel_ranges r;
  r.lo = Eigen::Vector4d(-1, -1, -1, 2);
  r.hi = Eigen::Vector4d(3, 3, 3, 5);
  const Eigen::Vector4i bits(0, 0, 0, 0);
  const Eigen::Vector4d mean(0.7, -4, 9, 1);
  const auto pm = quant_params<T>::per_channel(r, bits, mean);
  const auto pn = quant_params<T>::per_channel(r, bits);
  const Eigen::Vector4d want_m(0.7, -1, 3, 2), want_n(1, 1, 1, 3.5);
  const rmat<T> x = rmat<T>::Random(8, 5) * T(10);
  rmat<T> ym(8, 5), yn(8, 5), d(8, 5);
  codes_mat<std::uint8_t> q(8, 5);
  gemmlowp_quantizer::fake_quantize(x, pm, ym);
  gemmlowp_quantizer::fake_quantize(x, pn, yn);
  gemmlowp_quantizer::quantize<std::uint8_t>(x, pm, q);
  gemmlowp_quantizer::dequantize(q, pm, d);
  CHECK((q.array() == 0).all());
  CHECK(same_bits(d, ym));
  for (idx row = 0; row < 8; ++row) {
    CHECK((ym.row(row).array() == static_cast<T>(want_m[row % 4])).all());
    CHECK((yn.row(row).array() == static_cast<T>(want_n[row % 4])).all());
  }
  // A range so narrow that (hi - lo) / qmax underflows T keeps a finite inverse.
  const auto tiny = quant_params<T>::per_tensor(0.0, 1e-310, 8);
  CHECK(tiny.scale[0] == std::numeric_limits<T>::min());
  rmat<T> xt(1, 3), yt(1, 3);
  xt << T(0), T(1), T(-1);
  gemmlowp_quantizer::fake_quantize(xt, tiny, yt);
  CHECK(yt(0, 0) == T(0));
  CHECK(yt.allFinite());
}

TEST_CASE_TEMPLATE("gemmlowp_quantizer: large outputs (streaming stores) equal _ref, aligned or not", T, float, double) {
  // More than 16 MiB of output takes the streaming path; the output starts 1 element
  // past an aligned address so the unaligned head and tail are exercised too.
  std::mt19937_64 g(18);
  const idx C = 64, outer = sizeof(T) == 4 ? 64 : 32, cols = 1031;
  const idx rows = outer * C;
  REQUIRE(static_cast<double>(rows * cols) * sizeof(T) > 16.0 * (1 << 20));
  rmat<T> x(rows, cols);
  std::uniform_real_distribution<T> u(T(-6), T(6));
  for (idx i = 0; i < x.size(); ++i) x.data()[i] = u(g);
  const channel_ranges r = random_ranges(g, C);
  Eigen::VectorXi bits(C);
  for (idx c = 0; c < C; ++c) bits[c] = uniform_int(g, 0, 8);
  std::vector<T> buf(static_cast<std::size_t>(x.size()) + 2, T(5));
  std::vector<T> want(static_cast<std::size_t>(x.size()));
  for (const auto& p : {quant_params<T>::per_channel(r, bits), quant_params<T>::per_tensor(-4, 3, 4)}) {
    Eigen::Map<rmat<T>> out(buf.data() + 1, rows, cols);
    Eigen::Map<rmat<T>> ref(want.data(), rows, cols);
    gemmlowp_quantizer::fake_quantize(x, p, out);
    gemmlowp_quantizer::fake_quantize_ref(x, p, ref);
    CHECK(std::memcmp(buf.data() + 1, want.data(), want.size() * sizeof(T)) == 0);
    CHECK(buf.front() == T(5));
    CHECK(buf.back() == T(5));
    codes_mat<std::uint8_t> q(rows, cols);
    gemmlowp_quantizer::quantize<std::uint8_t>(x, p, q);
    gemmlowp_quantizer::dequantize(q, p, out);
    CHECK(std::memcmp(buf.data() + 1, want.data(), want.size() * sizeof(T)) == 0);
  }
}

TEST_CASE("gemmlowp_quantizer: dequantize(quantize(x)) == fake_quantize(x) with 16-bit codes") {
  std::mt19937_64 g(17);
  const idx C = 7;
  const channel_ranges r = random_ranges(g, C);
  Eigen::VectorXi bits(C);
  for (idx c = 0; c < C; ++c) bits[c] = uniform_int(g, 0, 16);
  const auto p = quant_params<double>::per_channel(r, bits);
  const rmat<double> x = make_data<double>(g, 3 * C, 129, -6, 6);
  rmat<double> y(3 * C, 129), d(3 * C, 129);
  codes_mat<std::uint16_t> q(3 * C, 129);
  gemmlowp_quantizer::fake_quantize(x, p, y);
  gemmlowp_quantizer::quantize<std::uint16_t>(x, p, q);
  gemmlowp_quantizer::dequantize(q, p, d);
  CHECK(same_bits(d, y));
  // Through plain Maps, as a pipeline would call it.
  std::vector<float> buf(21 * 5);
  for (std::size_t i = 0; i < buf.size(); ++i) buf[i] = static_cast<float>(uniform(g, -6, 6));
  const auto pf = quant_params<float>::per_channel(r, bits);
  std::vector<float> out(buf.size()), out_ref(buf.size());
  const ptq::channel_layout lay = ptq::channel_layout::of({3, 7, 5}, 1);
  gemmlowp_quantizer::fake_quantize(ptq::channel_rows(static_cast<const float*>(buf.data()), lay), pf,
                                    ptq::channel_rows(out.data(), lay));
  gemmlowp_quantizer::fake_quantize_ref(ptq::channel_rows(static_cast<const float*>(buf.data()), lay), pf,
                                        ptq::channel_rows(out_ref.data(), lay));
  CHECK(std::memcmp(out.data(), out_ref.data(), out.size() * sizeof(float)) == 0);
}

TEST_CASE("gemmlowp_quantizer: every bad argument throws a named ptq::error") {
  using P = quant_params<float>;
  const auto throws = [](auto&& f, const char* what) {
    CHECK_THROWS_WITH_AS(f(), doctest::Contains(what), ptq::error);
  };
  // Factories.
  throws([] { P::per_tensor(-1, 1, 0); }, "ptq::quant_params::per_tensor: bits = 0 is outside [1, 16]");
  throws([] { P::per_tensor(-1, 1, 17); }, "bits = 17 is outside [1, 16]");
  throws([] { P::per_tensor(1, -1, 4); }, "lo = 1 is above hi = -1");
  throws([] { P::per_tensor(std::nan(""), 1, 4); }, "lo = nan is not finite");
  throws([] { P::per_tensor(-1, HUGE_VAL, 4); }, "hi = inf is not finite");
  throws([] { P::per_tensor(-1e300, 1e300, 4); }, "the range [-1e+300, 1e+300] of channel 0 is outside the range of float");
  throws([] { P::per_tensor(-3e38, 3e38, 1); }, "with 1 bits gives scale = 6e+38 and a grid that overflows float");
  throws([] { P::per_tensor(-3.4e38, 3.4e38, 8); }, "with 8 bits gives scale = ");  // grid end -128 * s overflows
  throws([] { quant_params<double>::per_tensor(-1e308, 1e308, 1); }, "a grid that overflows double");
  CHECK_NOTHROW(P::per_tensor(-3e38, 3e38, 16));
  throws([&] { P::per_channel(channel_ranges{Eigen::Vector2d(0, 1e39), Eigen::Vector2d(1, 1e39)}, 0); },
         "the range [1e+39, 1e+39] of channel 1 is outside the range of float");
  channel_ranges r;
  r.lo = Eigen::Vector3d(-1, -2, -3);
  r.hi = Eigen::Vector3d(1, 2, 3);
  throws([&] { P::per_channel(r, Eigen::Vector3i(4, 17, 4)); }, "ptq::quant_params::per_channel: bits[1] = 17 is outside [0, 16]");
  throws([&] { P::per_channel(r, Eigen::Vector3i(4, -1, 4)); }, "bits[1] = -1 is outside [0, 16]");
  throws([&] { P::per_channel(r, -2); }, "bits = -2 is outside [0, 16]");
  throws([&] { P::per_channel(r, Eigen::Vector2i(4, 4)); }, "bits.size() = 2 does not match the 3 channels");
  throws([&] { P::per_channel(r, Eigen::Vector3i(0, 4, 4), Eigen::Vector2d(0, 0)); }, "mean.size() = 2");
  throws([&] { P::per_channel(r, Eigen::Vector3i(0, 4, 4), Eigen::Vector3d(0, std::nan(""), 0)); }, "mean[1] = nan");
  {
    channel_ranges bad = r;
    bad.hi[2] = -4;
    throws([&] { P::per_channel(bad, 4); }, "ranges.lo[2] = -3 is above ranges.hi[2] = -4");
    bad = r;
    bad.lo[0] = std::nan("");
    throws([&] { P::per_channel(bad, 4); }, "ranges.lo[0] = nan is not finite");
    bad = r;
    bad.hi.resize(2);
    throws([&] { P::per_channel(bad, 4); }, "ranges.hi.size() = 2 does not match ranges.lo.size() = 3");
    throws([&] { P::per_channel(channel_ranges{}, 4); }, "no channels");
  }

  // Operations: every failure leaves the output (or the in-place data) untouched.
  const P p = P::per_channel(r, 4);
  const rmat<float> x = rmat<float>::Random(6, 5);
  rmat<float> out = rmat<float>::Constant(6, 5, 7.f);
  codes_mat<std::uint8_t> q = codes_mat<std::uint8_t>::Constant(6, 5, 9);
  const auto untouched = [&] {
    CHECK((out.array() == 7.f).all());
    CHECK((q.array() == 9).all());
  };
  const auto all_ops_throw = [&](const rmat<float>& xin, const P& pp, const char* what) {
    CHECK_THROWS_WITH_AS(gemmlowp_quantizer::fake_quantize(xin, pp, out), doctest::Contains(what), ptq::error);
    CHECK_THROWS_WITH_AS(gemmlowp_quantizer::fake_quantize_ref(xin, pp, out), doctest::Contains(what), ptq::error);
    CHECK_THROWS_WITH_AS(gemmlowp_quantizer::quantize<std::uint8_t>(xin, pp, q), doctest::Contains(what), ptq::error);
    CHECK_THROWS_WITH_AS(gemmlowp_quantizer::quantize_ref<std::uint8_t>(xin, pp, q), doctest::Contains(what), ptq::error);
    rmat<float> inplace = xin;
    CHECK_THROWS_WITH_AS(gemmlowp_quantizer::fake_quantize_in_place(inplace, pp), doctest::Contains(what), ptq::error);
    CHECK(same_bits(inplace, xin));
    untouched();
  };
  // Data: NaN / Inf anywhere (last element too, so a fused check would have written already).
  for (float bad : {std::nanf(""), HUGE_VALF, -HUGE_VALF}) {
    rmat<float> xb = x;
    xb(5, 4) = bad;
    all_ops_throw(xb, p, "ptq::gemmlowp_quantizer::");
    all_ops_throw(xb, p, "x(5, 4) = ");
    all_ops_throw(xb, p, "is not finite");
  }
  {
    rmat<float> xb = x;
    xb(0, 0) = std::nanf("");
    all_ops_throw(xb, p, "x(0, 0) = nan is not finite");
    all_ops_throw(xb, P::per_tensor(-1, 1, 8), "x(0, 0) = nan is not finite");
  }
  // Parameters.
  P bad = p;
  bad.scale[1] = std::nanf("");
  all_ops_throw(x, bad, "params.scale[1] = nan is not a finite number >= 0");
  bad = p;
  bad.scale[2] = HUGE_VALF;
  all_ops_throw(x, bad, "params.scale[2] = inf is not a finite number >= 0");
  bad = p;
  bad.scale[0] = -0.5f;
  all_ops_throw(x, bad, "params.scale[0] = -0.5 is not a finite number >= 0");
  bad = p;
  bad.scale[0] = 1e-40f;  // subnormal: 1 / scale overflows
  all_ops_throw(x, bad, "params.scale[0] = 9.9999");
  all_ops_throw(x, bad, "has no finite inverse");
  bad = p;
  bad.scale[1] = 3e37f;  // 15 * 3e37 overflows float
  bad.zero_point[1] = 0;
  all_ops_throw(x, bad, "params.scale[1] = 3.00000");
  all_ops_throw(x, bad, "with zero_point 0 and 4 bits: the grid overflows");
  bad = p;
  bad.bits[2] = 17;
  all_ops_throw(x, bad, "params.bits[2] = 17 is outside [0, 16]");
  bad = p;
  bad.bits[2] = -1;
  all_ops_throw(x, bad, "params.bits[2] = -1 is outside [0, 16]");
  bad = p;
  bad.zero_point[1] = 17;
  all_ops_throw(x, bad, "params.zero_point[1] = 17 is outside [-1, 16]");
  bad = p;
  bad.zero_point[1] = -2;
  all_ops_throw(x, bad, "params.zero_point[1] = -2 is outside [-1, 16]");
  bad = p;
  bad.zero_point.resize(2);
  all_ops_throw(x, bad, "params.zero_point.size() = 2 does not match params.scale.size() = 3");
  bad = p;
  bad.bits.resize(4);
  bad.bits.setConstant(4);
  all_ops_throw(x, bad, "params.bits.size() = 4 does not match params.scale.size() = 3");
  bad = p;
  bad.g = ptq::granularity::per_tensor;
  all_ops_throw(x, bad, "params.g = per_tensor with 3 channels");
  all_ops_throw(x, P{}, "params.scale.size() = 0: no channels");
  // Shapes.
  all_ops_throw(rmat<float>::Random(5, 5), p, "rows = 5 is not a multiple of channels = 3");
  all_ops_throw(rmat<float>(0, 5), p, "the tensor is empty (0 x 5)");
  all_ops_throw(rmat<float>(6, 0), p, "the tensor is empty (6 x 0)");
  {
    rmat<float> wrong = rmat<float>::Constant(6, 4, 7.f);
    CHECK_THROWS_WITH_AS(gemmlowp_quantizer::fake_quantize(x, p, wrong),
                         doctest::Contains("ptq::gemmlowp_quantizer::fake_quantize: out is 6 x 4 but x is 6 x 5"),
                         ptq::error);
    CHECK_THROWS_WITH_AS(gemmlowp_quantizer::fake_quantize_ref(x, p, wrong), doctest::Contains("out is 6 x 4"),
                         ptq::error);
    CHECK((wrong.array() == 7.f).all());
    codes_mat<std::uint8_t> qw = codes_mat<std::uint8_t>::Constant(3, 5, 9);
    CHECK_THROWS_WITH_AS(gemmlowp_quantizer::quantize<std::uint8_t>(x, p, qw),
                         doctest::Contains("codes is 3 x 5 but x is 6 x 5"), ptq::error);
    CHECK((qw.array() == 9).all());
  }
  // Code type too narrow, dequantize's checks.
  const P p12 = P::per_channel(r, Eigen::Vector3i(4, 12, 4));
  CHECK_THROWS_WITH_AS(gemmlowp_quantizer::quantize<std::uint8_t>(x, p12, q),
                       doctest::Contains("ptq::gemmlowp_quantizer::quantize: params.bits[1] = 12 does not fit the 8-bit code type"),
                       ptq::error);
  CHECK_THROWS_WITH_AS(gemmlowp_quantizer::quantize_ref<std::uint8_t>(x, p12, q),
                       doctest::Contains("params.bits[1] = 12 does not fit the 8-bit code type"), ptq::error);
  untouched();
  {
    codes_mat<std::uint8_t> codes = codes_mat<std::uint8_t>::Zero(6, 5);
    codes(4, 3) = 16;  // channel 1 has 4 bits: qmax = 15
    CHECK_THROWS_WITH_AS(gemmlowp_quantizer::dequantize(codes, p, out),
                         doctest::Contains("ptq::gemmlowp_quantizer::dequantize: codes(4, 3) = 16 is above qmax = 15 of channel 1 (4 bits)"),
                         ptq::error);
    CHECK_THROWS_WITH_AS(gemmlowp_quantizer::dequantize_ref(codes, p, out), doctest::Contains("codes(4, 3) = 16"),
                         ptq::error);
    CHECK_THROWS_WITH_AS(gemmlowp_quantizer::dequantize(codes, p12, out),
                         doctest::Contains("params.bits[1] = 12 does not fit the 8-bit code type"), ptq::error);
    rmat<float> small = rmat<float>::Constant(6, 4, 7.f);
    codes(4, 3) = 0;
    CHECK_THROWS_WITH_AS(gemmlowp_quantizer::dequantize(codes, p, small), doctest::Contains("out is 6 x 4 but codes is 6 x 5"),
                         ptq::error);
    CHECK((small.array() == 7.f).all());
    untouched();
  }
}

}  // namespace ptq_test_gemmlowp_quantizer
