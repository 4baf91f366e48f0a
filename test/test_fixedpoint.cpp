// test_fixedpoint.cpp: fixed-point requantization against gemmlowp's functions, exact integer references, errors.
#include <doctest/doctest.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <limits>
#include <random>
#include <vector>

#pragma GCC diagnostic push
#pragma GCC diagnostic ignored "-Wpedantic"
#pragma GCC diagnostic ignored "-Wconversion"
#pragma GCC diagnostic ignored "-Wsign-compare"
#pragma GCC diagnostic ignored "-Wunused-parameter"
#include <gemmlowp/fixedpoint/fixedpoint.h>
#pragma GCC diagnostic pop

#include "ptq/fixedpoint.hpp"

// Everything of this file in its own namespace: the test binary is a unity build.
namespace ptq_test_fixedpoint {

namespace {

using i32 = std::int32_t;
using i64 = std::int64_t;
constexpr i32 kMin = std::numeric_limits<i32>::min();
constexpr i32 kMax = std::numeric_limits<i32>::max();

// Corner values: 0, +-1, INT32_MIN/MAX, +-2^k and +-2^k +- 1, and ties for small exponents.
std::vector<i32> corner_values() {
  std::vector<i32> v = {0, 1, -1, kMin, kMax, kMin + 1, kMax - 1};
  for (int k = 1; k < 31; ++k) {
    const i32 p = i32{1} << k;
    for (i32 d : {-1, 0, 1}) {
      v.push_back(p + d);
      v.push_back(-p + d);
    }
  }
  for (int e = 1; e < 8; ++e)  // x = q * 2^e + 2^(e-1): remainder exactly half
    for (i32 q = -5; q <= 5; ++q) v.push_back(q * (i32{1} << e) + (i32{1} << (e - 1)));
  return v;
}

// floor(a / d) for d > 0, by division (not by an arithmetic shift).
i64 floor_div(i64 a, i64 d) {
  i64 q = a / d;
  if (a % d != 0 && a < 0) --q;
  return q;
}

// The two roundings written out exactly: h = floor((s * M + 2^30) / 2^31), then h / 2^rs
// rounded half away from zero, s = x saturating-shifted left by -shift first when shift < 0.
i32 multiply_exact(i32 x, ptq::fixed_multiplier m) {
  i64 s = x;
  if (m.shift < 0) s = std::clamp<i64>(s * (i64{1} << -m.shift), kMin, kMax);
  const i64 h = floor_div(s * m.multiplier + (i64{1} << 30), i64{1} << 31);
  if (m.shift <= 0) return static_cast<i32>(h);
  const i64 d = i64{1} << m.shift, mag = h < 0 ? -h : h;
  i64 q = mag / d;
  if (2 * (mag % d) >= d) ++q;
  return static_cast<i32>(h < 0 ? -q : q);
}

// TFLite's MultiplyByQuantizedMultiplier composed from gemmlowp's functions.
i32 multiply_gemmlowp(i32 x, ptq::fixed_multiplier m) {
  if (m.shift >= 0)
    return gemmlowp::RoundingDivideByPOT(gemmlowp::SaturatingRoundingDoublingHighMul(x, m.multiplier), m.shift);
  const i32 s = static_cast<i32>(std::clamp<i64>(i64{x} * (i64{1} << -m.shift), kMin, kMax));
  return gemmlowp::SaturatingRoundingDoublingHighMul(s, m.multiplier);
}

}  // namespace

TEST_CASE("fixedpoint: saturating_rounding_doubling_high_mul equals gemmlowp's") {
  const auto corners = corner_values();
  for (i32 a : corners)
    for (i32 b : corners) REQUIRE(ptq::saturating_rounding_doubling_high_mul(a, b) == gemmlowp::SaturatingRoundingDoublingHighMul(a, b));
  CHECK(ptq::saturating_rounding_doubling_high_mul(kMin, kMin) == kMax);
  // Ties: a * b = +-2^30 is +-1/2 after the doubling high mul: +1/2 -> 1, -1/2 -> 0 (toward +inf).
  CHECK(ptq::saturating_rounding_doubling_high_mul(1 << 15, 1 << 15) == 1);
  CHECK(ptq::saturating_rounding_doubling_high_mul(1 << 15, -(1 << 15)) == 0);
  CHECK(ptq::saturating_rounding_doubling_high_mul(3 << 15, -(1 << 15)) == -1);
  std::mt19937_64 g(1);
  std::uniform_int_distribution<i32> any(kMin, kMax);
  for (int i = 0; i < 200000; ++i) {
    const i32 a = any(g), b = i % 2 ? any(g) >> (i % 31) : any(g);
    REQUIRE(ptq::saturating_rounding_doubling_high_mul(a, b) == gemmlowp::SaturatingRoundingDoublingHighMul(a, b));
  }
}

TEST_CASE("fixedpoint: rounding_divide_by_pot equals gemmlowp's, every exponent") {
  const auto corners = corner_values();
  std::mt19937_64 g(2);
  std::uniform_int_distribution<i32> any(kMin, kMax);
  for (int e = 0; e <= 31; ++e) {
    for (i32 x : corners) REQUIRE(ptq::rounding_divide_by_pot(x, e) == gemmlowp::RoundingDivideByPOT(x, e));
    for (int i = 0; i < 20000; ++i) {
      const i32 x = i % 3 ? any(g) : any(g) >> (i % 32);
      REQUIRE(ptq::rounding_divide_by_pot(x, e) == gemmlowp::RoundingDivideByPOT(x, e));
    }
    if (e >= 1 && e <= 29) {  // ties away from zero: +-(2k+1) * 2^(e-1)
      const i32 half = i32{1} << (e - 1);
      CHECK(ptq::rounding_divide_by_pot(half, e) == 1);
      CHECK(ptq::rounding_divide_by_pot(-half, e) == -1);
      CHECK(ptq::rounding_divide_by_pot(3 * half, e) == 2);
      CHECK(ptq::rounding_divide_by_pot(-3 * half, e) == -2);
      CHECK(ptq::rounding_divide_by_pot(half - 1, e) == 0);
      CHECK(ptq::rounding_divide_by_pot(-half + 1, e) == 0);
    }
  }
  CHECK(ptq::rounding_divide_by_pot(kMin, 31) == -1);
  CHECK(ptq::rounding_divide_by_pot(kMax, 31) == 1);
  CHECK_THROWS_WITH_AS(ptq::rounding_divide_by_pot(1, 32), doctest::Contains("exponent = 32 is outside [0, 31]"), ptq::error);
  CHECK_THROWS_AS(ptq::rounding_divide_by_pot(1, -1), ptq::error);
}

TEST_CASE("fixedpoint: quantize_multiplier, hand values and the half-ulp bound") {
  using fm = ptq::fixed_multiplier;
  auto same = [](fm a, fm b) { return a.multiplier == b.multiplier && a.shift == b.shift; };
  CHECK(same(ptq::quantize_multiplier(0.0), fm{0, 0}));
  CHECK(same(ptq::quantize_multiplier(0.5), fm{1 << 30, 0}));
  CHECK(same(ptq::quantize_multiplier(0.75), fm{3 << 29, 0}));
  CHECK(same(ptq::quantize_multiplier(1.0), fm{1 << 30, -1}));
  CHECK(same(ptq::quantize_multiplier(3.0), fm{3 << 29, -2}));
  CHECK(same(ptq::quantize_multiplier(0.25), fm{1 << 30, 1}));
  CHECK(same(ptq::quantize_multiplier(std::ldexp(1.0, -31)), fm{1 << 30, 30}));
  CHECK(same(ptq::quantize_multiplier(std::ldexp(1.0, -32)), fm{1 << 30, 31}));
  CHECK(same(ptq::quantize_multiplier(std::ldexp(1.0, -33)), fm{0, 0}));  // underflow
  CHECK(same(ptq::quantize_multiplier(1e-300), fm{0, 0}));
  CHECK(same(ptq::quantize_multiplier(std::ldexp(1.0, 30)), fm{1 << 30, -31}));
  // Round half away from zero: (2^30 + 1/2) * 2^-31 -> 2^30 + 1.
  CHECK(same(ptq::quantize_multiplier(std::ldexp(2.0 * (1 << 30) + 1.0, -32)), fm{(1 << 30) + 1, 0}));
  CHECK(same(ptq::quantize_multiplier(std::ldexp(2.0 * (1 << 30) + 3.0, -32)), fm{(1 << 30) + 2, 0}));
  // Renormalization: q * 2^31 rounds to 2^31.
  CHECK(same(ptq::quantize_multiplier(1.0 - std::ldexp(1.0, -40)), fm{1 << 30, -1}));
  CHECK(same(ptq::quantize_multiplier(0.5 - std::ldexp(1.0, -45)), fm{1 << 30, 0}));
  CHECK(same(ptq::quantize_multiplier(std::nextafter(1.0, 0.0)), fm{1 << 30, -1}));
  CHECK(same(ptq::quantize_multiplier(1.0 - std::ldexp(1.0, -31)), fm{kMax, 0}));  // exactly representable
  // The bound: |M 2^-31 2^-shift - m| <= 2^-32 2^-shift, M in [2^30, 2^31), checked in long double.
  std::mt19937_64 g(3);
  std::uniform_real_distribution<double> lg(-32.0, 30.9);
  std::vector<double> ms;
  for (int i = 0; i < 20000; ++i) ms.push_back(std::exp2(lg(g)));
  for (int k = -31; k <= 30; ++k)
    for (double d : {-1e-12, -1e-15, 0.0, 1e-15, 1e-12}) ms.push_back(std::ldexp(1.0 + d, k));
  for (double m : ms) {
    const auto q = ptq::quantize_multiplier(m);
    CAPTURE(m);
    REQUIRE(q.multiplier >= (1 << 30));
    REQUIRE(q.shift >= -31);
    REQUIRE(q.shift <= 31);
    const long double back = std::ldexp(static_cast<long double>(q.multiplier), -31 - q.shift);
    REQUIRE(std::fabs(back - static_cast<long double>(m)) <= std::ldexp(1.0L, -32 - q.shift));
    // Independent of frexp: the shift is the one that puts m * 2^(31 + shift) in [2^30, 2^31].
    const long double scaled = std::ldexp(static_cast<long double>(m), 31 + q.shift);
    REQUIRE(scaled >= std::ldexp(1.0L, 30) - 0.5L);
    REQUIRE(scaled < std::ldexp(1.0L, 31));
    REQUIRE(q.multiplier == static_cast<i64>(std::floor(scaled + 0.5L)));  // half up = away from zero here
  }
  CHECK_THROWS_WITH_AS(ptq::quantize_multiplier(-0.5), doctest::Contains("m = -0.5 is negative"), ptq::error);
  CHECK_THROWS_WITH_AS(ptq::quantize_multiplier(std::nan("")), doctest::Contains("is not finite"), ptq::error);
  CHECK_THROWS_AS(ptq::quantize_multiplier(std::numeric_limits<double>::infinity()), ptq::error);
  CHECK_THROWS_WITH_AS(ptq::quantize_multiplier(std::ldexp(1.0, 31)), doctest::Contains("left shift of 32 bits"), ptq::error);
  CHECK_THROWS_AS(ptq::quantize_multiplier(std::ldexp(1.0, 31) - 0.25), ptq::error);  // rounds up to 2^31
  CHECK(ptq::quantize_multiplier(std::ldexp(1.0, 31) - 1.0).shift == -31);
}

TEST_CASE("fixedpoint: multiply_by_fixed equals the exact two-step rounding and gemmlowp's composition") {
  std::mt19937_64 g(4);
  std::uniform_int_distribution<i32> any(kMin, kMax);
  std::uniform_real_distribution<double> lg(-31.0, 12.0);
  const auto corners = corner_values();
  for (int t = 0; t < 3000; ++t) {
    const double m = std::exp2(lg(g));
    const auto q = ptq::quantize_multiplier(m);
    CAPTURE(m);
    for (int i = 0; i < 60; ++i) {
      const i32 x = i < 20 ? corners[static_cast<std::size_t>(g() % corners.size())] : any(g) >> (g() % 32);
      const i32 r = ptq::multiply_by_fixed(x, q);
      REQUIRE(r == multiply_exact(x, q));
      REQUIRE(r == multiply_gemmlowp(x, q));
      // Within one of x * m rounded once (two roundings, and m itself rounded), unless saturated
      // (for shift < 0 the left shift saturates first: as soon as x * 2^-shift leaves int32).
      const long double exact = static_cast<long double>(x) * std::ldexp(static_cast<long double>(q.multiplier), -31 - q.shift);
      const long double shifted = std::ldexp(static_cast<long double>(x), q.shift < 0 ? -q.shift : 0);
      if (std::fabs(exact) < 2.0e9L && std::fabs(shifted) < 2.0e9L) REQUIRE(std::fabs(static_cast<long double>(r) - exact) <= 1.0L);
    }
  }
  // Two roundings, not one: m = 0.25 = {2^30, 1}; 1 * 0.25 rounded once is 0, but the high
  // mul gives 1/2 -> 1 (tie toward +inf) and then 1/2 -> 1 (tie away from zero). For -1:
  // -1/2 -> 0, then 0.
  CHECK(ptq::multiply_by_fixed(1, {1 << 30, 1}) == 1);
  CHECK(ptq::multiply_by_fixed(-1, {1 << 30, 1}) == 0);
  CHECK(ptq::multiply_by_fixed(-3, {1 << 30, 1}) == -1);  // -3/2 -> -1, then -1/2 -> -1
  // Saturation of the left shift.
  // Saturation of the left shift: m = 1.0 is {2^30, -1}; kMax * 2 saturates to kMax, whose
  // high mul by 2^30 is (2^31 - 1) / 2 -> 2^30 (tie toward +inf), not kMax: TFLite's order.
  CHECK(ptq::multiply_by_fixed(kMax, {1 << 30, -1}) == (1 << 30));
  CHECK(ptq::multiply_by_fixed(kMin, {1 << 30, -1}) == -(1 << 30));
  CHECK(ptq::multiply_by_fixed((1 << 30) - 1, {1 << 30, -1}) == (1 << 30) - 1);  // no saturation: exact
  CHECK(ptq::multiply_by_fixed(1 << 20, {1 << 30, -31}) == multiply_exact(1 << 20, {1 << 30, -31}));
  CHECK(ptq::multiply_by_fixed(123, {0, 0}) == 0);
  CHECK_THROWS_AS(ptq::multiply_by_fixed(1, {1 << 30, 32}), ptq::error);
  CHECK_THROWS_AS(ptq::multiply_by_fixed(1, {1 << 30, -32}), ptq::error);
}

namespace {

ptq::requantize_params random_params(ptq::index channels, std::mt19937_64& g) {
  ptq::requantize_params p;
  std::uniform_real_distribution<double> lg(-20.0, 3.0);
  std::uniform_int_distribution<int> code(0, 255), pick(0, 9);
  std::uniform_int_distribution<i32> any(kMin, kMax), small(-100000, 100000);
  for (ptq::index k = 0; k < channels; ++k) {
    const int kind = pick(g);
    p.bias.push_back(kind == 0 ? any(g) : small(g));
    p.mult.push_back(kind == 1 ? ptq::fixed_multiplier{} : ptq::quantize_multiplier(kind == 2 ? std::exp2(lg(g) + 14.0) : std::exp2(lg(g))));
    p.offset.push_back(kind == 3 ? (1 << 24) * (g() % 2 ? 1 : -1) : code(g));
    int lo = code(g), hi = code(g);
    if (lo > hi) std::swap(lo, hi);
    if (kind == 4) hi = lo;                 // a constant channel
    if (kind == 5) lo = p.offset.back() & 255, hi = 255;  // a ReLU-like clamp
    p.lo.push_back(static_cast<std::uint8_t>(lo));
    p.hi.push_back(static_cast<std::uint8_t>(hi));
  }
  return p;
}

std::vector<i32> random_acc(ptq::index n, std::mt19937_64& g) {
  std::vector<i32> acc(static_cast<std::size_t>(n));
  std::uniform_int_distribution<i32> any(kMin, kMax);
  for (auto& a : acc) a = any(g) >> (g() % 32);
  return acc;
}

}  // namespace

namespace {
// One path of ptq::requantize or ptq::add_requantize run directly into a buffer that differs
// from ref wherever ref is not the padding byte 0xA5: equal to ref byte for byte afterwards.
template <class Run>
bool path_matches(const std::vector<std::uint8_t>& ref, Run run) {
  std::vector<std::uint8_t> got(ref.size(), 0xA5);
  for (std::size_t i = 0; i < ref.size(); ++i) got[i] = ref[i] == 0xA5 ? 0xA5 : static_cast<std::uint8_t>(~ref[i]);
  run(got.data());
  return got == ref;
}
// The AVX2 path (taken where the build has no AVX-512 and the CPU has AVX2); nothing to run
// where the CPU has no AVX2.
template <class Run>
bool avx2_path_matches(const std::vector<std::uint8_t>& ref, Run run) {
  return !ptq::detail::cpu_has_avx2() || path_matches(ref, run);
}
// The portable int64 loops (the path of builds without AVX-512 on CPUs without AVX2).
void requantize_portable(const i32* acc, ptq::index rows, ptq::index ld_acc, const ptq::requantize_params& p,
                         std::uint8_t* out, ptq::index ld_out) {
  const ptq::detail::requantize_lanes lanes(p);
  for (ptq::index r = 0; r < rows; ++r)
    ptq::detail::requantize_row_portable(acc + r * ld_acc, lanes, p.channels(), out + r * ld_out);
}
void add_portable(const std::uint8_t* a, const std::uint8_t* b, ptq::index rows, ptq::index ld,
                  const ptq::add_params& p, std::uint8_t* out, ptq::index ld_out) {
  const ptq::detail::add_lanes lanes(p);
  for (ptq::index r = 0; r < rows; ++r)
    ptq::detail::add_row_portable(a + r * ld, b + r * ld, lanes, p.channels(), out + r * ld_out);
}
}  // namespace

TEST_CASE("fixedpoint: requantize equals requantize_ref and the element formula, odd sizes and strides") {
  std::mt19937_64 g(5);
  auto run = [&g](ptq::index rows, ptq::index channels) {
    const auto p = random_params(channels, g);
    const ptq::index ld_acc = channels + static_cast<ptq::index>(g() % 5), ld_out = channels + static_cast<ptq::index>(g() % 7);
    const auto acc = random_acc(rows * ld_acc, g);
    std::vector<std::uint8_t> fast(static_cast<std::size_t>(rows * ld_out), 0xA5), ref = fast;
    ptq::requantize(acc.data(), rows, ld_acc, p, fast.data(), ld_out);
    ptq::requantize_ref(acc.data(), rows, ld_acc, p, ref.data(), ld_out);
    CAPTURE(rows);
    CAPTURE(channels);
    REQUIRE(fast == ref);
    REQUIRE(avx2_path_matches(ref, [&](std::uint8_t* o) { ptq::detail::requantize_avx2(acc.data(), rows, ld_acc, p, o, ld_out); }));
    REQUIRE(path_matches(ref, [&](std::uint8_t* o) { requantize_portable(acc.data(), rows, ld_acc, p, o, ld_out); }));
    for (ptq::index r = 0; r < rows; ++r)
      for (ptq::index k = 0; k < ld_out; ++k) {
        const auto i = static_cast<std::size_t>(r * ld_out + k);
        if (k >= channels) {
          REQUIRE(fast[i] == 0xA5);  // padding untouched
          continue;
        }
        const auto ku = static_cast<std::size_t>(k);
        const i32 s = static_cast<i32>(std::clamp<i64>(i64{acc[static_cast<std::size_t>(r * ld_acc + k)]} + p.bias[ku], kMin, kMax));
        const i64 v = std::clamp<i64>(p.offset[ku] + i64{multiply_gemmlowp(s, p.mult[ku])}, p.lo[ku], p.hi[ku]);
        REQUIRE(int{fast[i]} == v);
      }
  };
  for (ptq::index rows = 1; rows <= 37; ++rows)
    for (ptq::index channels = 1; channels <= 67; channels += (rows % 3 == 0 ? 1 : 5)) run(rows, channels);
  run(0, 5);
  run(3, 0);
  run(2, 256);
  run(1, 1000);
}

TEST_CASE("fixedpoint: requantize saturates, clamps and handles lo == hi") {
  ptq::requantize_params p;
  p.bias = {kMax, kMin, 0, 0, 0, 100};
  p.mult = {ptq::quantize_multiplier(1.0), ptq::quantize_multiplier(1.0), ptq::quantize_multiplier(1000.0),
            ptq::quantize_multiplier(0.5), ptq::quantize_multiplier(0.25), {}};
  p.offset = {0, 255, 128, 10, 3, 77};
  p.lo = {0, 0, 0, 10, 0, 42};
  p.hi = {255, 255, 255, 200, 255, 42};
  const std::vector<i32> acc = {kMax, kMin, 1, -5, 6, 123456, -1, 1, 3, 5, 3, 0};
  std::vector<std::uint8_t> fast(12), ref(12);
  ptq::requantize(acc.data(), 2, 6, p, fast.data(), 6);
  ptq::requantize_ref(acc.data(), 2, 6, p, ref.data(), 6);
  CHECK(fast == ref);
  CHECK(avx2_path_matches(ref, [&](std::uint8_t* o) { ptq::detail::requantize_avx2(acc.data(), 2, 6, p, o, 6); }));
  CHECK(path_matches(ref, [&](std::uint8_t* o) { requantize_portable(acc.data(), 2, 6, p, o, 6); }));
  // kMax + kMax saturates -> 255; kMin + kMin saturates -> 255 - 2^31 -> 0; 1000 * 1 + 128 -> 255;
  // -5 * 0.5 = -2.5 -> -3 (away from zero), + 10 -> 7, clamped to lo 10; 6 * 0.25 = 1.5 -> 2, +3 -> 5; constant 42.
  CHECK(std::vector<int>(fast.begin(), fast.begin() + 6) == std::vector<int>{255, 0, 255, 10, 5, 42});
  // -1 + kMax = 2^31 - 2 -> 255; 1 + kMin -> 0; 3000 + 128 -> 255; 5 * 0.5 = 2.5 -> 3, + 10 = 13; 0.75 -> 1, + 3 = 4.
  CHECK(std::vector<int>(fast.begin() + 6, fast.end()) == std::vector<int>{255, 0, 255, 13, 4, 42});
}

TEST_CASE("fixedpoint: bad requantize parameters and arguments are ptq::error naming the channel") {
  auto good = [] {
    ptq::requantize_params p;
    p.bias = {0, 0, 0};
    p.mult = {ptq::quantize_multiplier(0.1), ptq::quantize_multiplier(0.2), ptq::quantize_multiplier(3.0)};
    p.offset = {0, 1, 2};
    p.lo = {0, 0, 0};
    p.hi = {255, 255, 255};
    return p;
  };
  std::vector<i32> acc(6, 1);
  std::vector<std::uint8_t> out(6, 7);
  auto rq = [&](const ptq::requantize_params& p) { ptq::requantize(acc.data(), 2, 3, p, out.data(), 3); };
  auto rq_ref = [&](const ptq::requantize_params& p) { ptq::requantize_ref(acc.data(), 2, 3, p, out.data(), 3); };
  CHECK_NOTHROW(ptq::check(good(), "t"));
  auto p = good();
  p.hi.pop_back();
  CHECK_THROWS_WITH_AS(rq(p), doctest::Contains("ptq::requantize: requantize_params of different lengths"), ptq::error);
  p = good();
  p.lo[1] = 9, p.hi[1] = 8;
  CHECK_THROWS_WITH_AS(rq_ref(p), doctest::Contains("ptq::requantize_ref: channel 1: lo = 9 > hi = 8"), ptq::error);
  p = good();
  p.mult[2].shift = 32;
  CHECK_THROWS_WITH_AS(rq(p), doctest::Contains("mult[2].shift = 32 is outside [-31, 31]"), ptq::error);
  p = good();
  p.mult[0].multiplier = 12345;
  CHECK_THROWS_WITH_AS(rq(p), doctest::Contains("mult[0].multiplier = 12345 is neither 0 nor in [2^30, 2^31)"), ptq::error);
  p = good();
  p.mult[0].multiplier = -(1 << 30);
  CHECK_THROWS_AS(rq(p), ptq::error);
  p = good();
  p.offset[1] = (1 << 24) + 1;
  CHECK_THROWS_WITH_AS(rq(p), doctest::Contains("offset[1] = 16777217 is outside"), ptq::error);
  CHECK_THROWS_WITH_AS(ptq::requantize(acc.data(), 2, 2, good(), out.data(), 3), doctest::Contains("ld_acc = 2 is less than the 3 channels"), ptq::error);
  CHECK_THROWS_WITH_AS(ptq::requantize(acc.data(), 2, 3, good(), out.data(), 1), doctest::Contains("ld_out = 1"), ptq::error);
  CHECK_THROWS_WITH_AS(ptq::requantize(acc.data(), -1, 3, good(), out.data(), 3), doctest::Contains("rows = -1 is negative"), ptq::error);
  CHECK_THROWS_WITH_AS(ptq::requantize(nullptr, 2, 3, good(), out.data(), 3), doctest::Contains("acc is null"), ptq::error);
  CHECK(out == std::vector<std::uint8_t>(6, 7));  // nothing written on failure
}

namespace {

struct add_case {
  std::vector<double> sa, sb, so;
  std::vector<i32> za, zb, zo;
};

add_case random_add_case(ptq::index channels, std::mt19937_64& g) {
  add_case c;
  std::uniform_real_distribution<double> lg(-8.0, 2.0), ratio(-3.0, 3.0);
  std::uniform_int_distribution<i32> z(0, 255), pick(0, 9);
  for (ptq::index k = 0; k < channels; ++k) {
    const double sa = std::exp2(lg(g)), sb = sa * std::exp2(ratio(g)), so = std::max(sa, sb) * std::exp2(ratio(g) / 2 + 0.5);
    c.sa.push_back(sa), c.sb.push_back(sb), c.so.push_back(so);
    const int kind = pick(g);
    c.za.push_back(kind == 0 ? -256 : z(g));
    c.zb.push_back(kind == 1 ? 511 : z(g));
    c.zo.push_back(kind == 2 ? -1 : z(g));
  }
  return c;
}

}  // namespace

TEST_CASE("fixedpoint: add_requantize equals add_requantize_ref, gemmlowp's composition, and the real sum within one code") {
  std::mt19937_64 g(6);
  std::uniform_int_distribution<int> code(0, 255);
  auto run = [&](ptq::index rows, ptq::index channels, int left_shift) {
    const auto c = random_add_case(channels, g);
    auto p = ptq::make_add_params(c.sa, c.za, c.sb, c.zb, c.so, c.zo, left_shift);
    for (ptq::index k = 0; k < channels; k += 3) p.lo[static_cast<std::size_t>(k)] = static_cast<std::uint8_t>(std::clamp(c.zo[static_cast<std::size_t>(k)], 0, 255));  // ReLU
    if (channels > 4) p.lo[4] = p.hi[4] = 17;  // constant channel
    const ptq::index ld = channels + static_cast<ptq::index>(g() % 4), ld_out = channels + static_cast<ptq::index>(g() % 5);
    std::vector<std::uint8_t> a(static_cast<std::size_t>(rows * ld)), b(a.size());
    for (auto& x : a) x = static_cast<std::uint8_t>(code(g));
    for (auto& x : b) x = static_cast<std::uint8_t>(code(g));
    std::vector<std::uint8_t> fast(static_cast<std::size_t>(rows * ld_out), 0xA5), ref = fast;
    ptq::add_requantize(a.data(), b.data(), rows, ld, p, fast.data(), ld_out);
    ptq::add_requantize_ref(a.data(), b.data(), rows, ld, p, ref.data(), ld_out);
    CAPTURE(rows);
    CAPTURE(channels);
    CAPTURE(left_shift);
    REQUIRE(fast == ref);
    REQUIRE(avx2_path_matches(ref, [&](std::uint8_t* o) { ptq::detail::add_requantize_avx2(a.data(), b.data(), rows, ld, p, o, ld_out); }));
    REQUIRE(path_matches(ref, [&](std::uint8_t* o) { add_portable(a.data(), b.data(), rows, ld, p, o, ld_out); }));
    for (ptq::index r = 0; r < rows; ++r)
      for (ptq::index k = 0; k < ld_out; ++k) {
        const auto i = static_cast<std::size_t>(r * ld_out + k), ku = static_cast<std::size_t>(k);
        if (k >= channels) {
          REQUIRE(fast[i] == 0xA5);
          continue;
        }
        const i32 av = a[static_cast<std::size_t>(r * ld + k)], bv = b[static_cast<std::size_t>(r * ld + k)];
        const i32 sum = multiply_gemmlowp((av - p.za[ku]) * (1 << left_shift), p.ma[ku]) +
                        multiply_gemmlowp((bv - p.zb[ku]) * (1 << left_shift), p.mb[ku]);
        const i64 v = std::clamp<i64>(p.offset[ku] + i64{multiply_gemmlowp(sum, p.mo[ku])}, p.lo[ku], p.hi[ku]);
        REQUIRE(int{fast[i]} == v);
        if (left_shift == 20) {  // the real formula in double, rounded once: within one code
          const double real = c.zo[ku] + (c.sa[ku] * (av - c.za[ku]) + c.sb[ku] * (bv - c.zb[ku])) / c.so[ku];
          const double want = std::clamp(std::round(real), static_cast<double>(p.lo[ku]), static_cast<double>(p.hi[ku]));
          REQUIRE(std::fabs(fast[i] - want) <= 1.0);
        }
      }
  };
  for (ptq::index rows = 1; rows <= 13; ++rows)
    for (ptq::index channels = 1; channels <= 67; channels += 3) run(rows, channels, 20);
  run(50, 64, 20);
  run(7, 19, 0);
  run(7, 19, 8);
  run(0, 3, 20);
  run(2, 0, 20);
  // Equal scales and zero points everywhere: out = a + b - z exactly (clamped).
  const std::vector<double> s1(1, 0.1);
  const std::vector<i32> z1(1, 100);
  const auto p = ptq::make_add_params(s1, z1, s1, z1, s1, z1);
  const std::vector<std::uint8_t> a = {100, 150, 0, 255, 120}, b = {100, 90, 50, 200, 30};
  std::vector<std::uint8_t> out(5);
  ptq::add_requantize(a.data(), b.data(), 5, 1, p, out.data(), 1);
  CHECK(std::vector<int>(out.begin(), out.end()) == std::vector<int>{100, 140, 0, 255, 50});
}

TEST_CASE("fixedpoint: bad add parameters are ptq::error") {
  const std::vector<double> s = {0.1, 0.2};
  const std::vector<i32> z = {3, 4};
  const auto good = ptq::make_add_params(s, z, s, z, s, z);
  CHECK(good.ma[0].shift == 0);  // 0.1 / 0.2 = 0.5 = {2^30, 0}
  CHECK(good.ma[0].multiplier == (1 << 30));
  CHECK_THROWS_WITH_AS(ptq::make_add_params(s, z, {0.1, -1.0}, z, s, z), doctest::Contains("sb[1] = -1 is not a finite positive scale"), ptq::error);
  CHECK_THROWS_WITH_AS(ptq::make_add_params(s, z, s, {1}, s, z), doctest::Contains("vectors of different lengths"), ptq::error);
  CHECK_THROWS_WITH_AS(ptq::make_add_params(s, z, s, z, s, z, 21), doctest::Contains("left_shift = 21 is outside [0, 20]"), ptq::error);
  std::vector<std::uint8_t> a(4, 1), out(4, 9);
  auto p = good;
  p.za[1] = 600;
  CHECK_THROWS_WITH_AS(ptq::add_requantize(a.data(), a.data(), 2, 2, p, out.data(), 2), doctest::Contains("za[1] = 600 is outside [-256, 511]"), ptq::error);
  p = good;
  p.mb[0] = ptq::quantize_multiplier(2.0);
  CHECK_THROWS_WITH_AS(ptq::add_requantize_ref(a.data(), a.data(), 2, 2, p, out.data(), 2), doctest::Contains("mb[0].shift = -2 is negative"), ptq::error);
  p = good;
  p.mo.pop_back();
  CHECK_THROWS_WITH_AS(ptq::add_requantize(a.data(), a.data(), 2, 2, p, out.data(), 2), doctest::Contains("add_params of different lengths"), ptq::error);
  p = good;
  p.lo[0] = 200, p.hi[0] = 100;
  CHECK_THROWS_WITH_AS(ptq::add_requantize(a.data(), a.data(), 2, 2, p, out.data(), 2), doctest::Contains("channel 0: lo = 200 > hi = 100"), ptq::error);
  CHECK_THROWS_WITH_AS(ptq::add_requantize(a.data(), a.data(), 2, 1, good, out.data(), 2), doctest::Contains("ld = 1 is less than the 2 channels"), ptq::error);
  CHECK(out == std::vector<std::uint8_t>(4, 9));
}

}  // namespace ptq_test_fixedpoint
