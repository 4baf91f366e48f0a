// aciq.hpp: ACIQ, the analytically optimal clipping range for uniform quantization.
//
// The model (Banner, Nahshan & Soudry 2019, docs/method.md section 1). X has a symmetric
// density f of scale s (Laplace: s = b = E|X - mean|; Gauss: s = sigma = std), centred
// on 0. Clip X to [-a, a] and cut [-a, a] into omega equal bins (omega = 2^M for M
// bits) of width D = 2a / omega, each value reconstructed at its bin's centre. The
// mean-square error is modelled as clipping noise + quantization noise:
//
//   MSE(a) = 2 * Int_a^inf f(x) (x - a)^2 dx  +  D^2 / 12
//          = clip(a)                          +  a^2 / (3 omega^2)
//
// The clipped values are charged (x - a)^2 (as if reconstructed at +-a), and every
// in-range value D^2/12 (as if f were flat over each bin). Both are approximations:
// see "How good is the model" below. With alpha = a / s, MSE / s^2 is a function of
// alpha and omega only, which aciq_mse returns:
//
//   Laplace: clip = 2 e^{-alpha}
//   Gauss:   clip = (1 + alpha^2) erfc(alpha / sqrt 2) - sqrt(2/pi) alpha e^{-alpha^2/2}
//
// The optimal clip alpha* solves d MSE / d alpha = 0:
//
//   Laplace: -2 e^{-alpha} + 2 alpha / (3 omega^2) = 0  <=>  alpha e^alpha = 3 omega^2,
//            so alpha* = W0(3 omega^2) (principal branch of Lambert W, closed form).
//   Gauss:   g(alpha) = alpha erfc(alpha/sqrt 2) - sqrt(2/pi) e^{-alpha^2/2}
//                       + alpha / (3 omega^2) = 0   (half the derivative).
//            g(0) < 0, g' = erfc(alpha/sqrt 2) + 1/(3 omega^2) > 0 and g -> +inf, so the
//            root is unique; no closed form exists. With phi the normal density and Q its
//            upper tail, g = alpha / (3 omega^2) - 2 psi(alpha), where psi(a) = phi(a) - a Q(a)
//            = E (X - a)+ is the mean excess over the clip.
//
// Evaluation: two independent implementations, compared in test_aciq.cpp.
//
//   Bits forms (aciq<Dist, Bits, Range>::alpha(), aciq_alpha, aciq_ranges with bits) read
//   a table of alpha* for omega = 2^0 .. 2^17, computed at compile time by C++17 constexpr
//   code (detail/constexpr_math.hpp; <cmath> is not constexpr), so that alpha() is a
//   constant expression (static_assert, template arguments). Laplace: Halley's iteration
//   for W0. Gauss: Newton's method on h(a) = ln(2 psi(a) / (c a)), c = 1 / (3 omega^2),
//   which has g's root, h' = -1/t - 1/a, and is close to the parabola -a^2 / 2: 4 to 7
//   steps from a = 0.75 for every omega in [1, 2^33], inside a bracket [0.75, 16] that
//   falls back to bisection. psi comes from the Mills-ratio continued fraction,
//   Q / phi = 1 / (a + t), t = 1 / (a + 2 / (a + 3 / ...)), as psi = phi t / (a + t): no
//   cancellation, where the difference phi - a Q of rounded values loses 2 log2(a) bits
//   (5 at 16 bits). A relative error e in psi moves alpha* by e / (1 + alpha*^2) only,
//   one in w e^w moves W by e / (1 + W). Measured against 40-digit values (mpmath), for
//   omega in [1, 2^33]: Gauss within 1.4e-16 relative, W0 within 1.5 ulp.
//   Bins forms (aciq_alpha_bins, aciq_ranges_bins: any real omega) solve at run time with
//   Boost.Math: Laplace by boost::math::lambert_w0; Gauss by TOMS 748 on g, bracketed by
//   doubling, written in x = alpha / sqrt 2 (so that erfc's argument is exact) with x^2
//   split exactly by fma: within 5.3e-16 of the 40-digit values. (With erfc(alpha / sqrt 2)
//   and e^{-alpha^2 / 2} of a rounded alpha^2 the same solve was off by up to 1e-14: g's
//   cancellation multiplies those roundings by alpha^2.)
//   The two agree to 1.8e-16 (Laplace) and 3.4e-16 (Gauss) relative for bits 1..16 and
//   both ranges, to 2.2e-16 and 6.8e-16 over real omega in [1, 2^33].
//
// Unsigned (one-sided) ranges, e.g. a conv output that feeds a ReLU: the range is
// [0, a] with omega bins, the data the folded |X|. |X| has the same clipping term
// (both tails of X fold onto the one tail of |X|), but the bins now cover [0, a]:
// D = a / omega and the quantization term is a^2 / (12 omega^2) = a^2 / (3 (2 omega)^2).
// Hence unsigned with omega bins == signed with 2 omega bins, exactly:
//   Laplace unsigned: alpha* = W0(12 omega^2);  M bits unsigned == M + 1 bits signed.
//
// Non-power-of-two bin counts (from bit allocation) use the same formulas with any
// real omega >= 1; omega = 1 (0 bits: one level, at the centre) is allowed in the
// bins forms. The scalar bits forms take M in [1, 16] (omega = 2^M) and reject 0
// bits: a tensor at 0 bits is a constant, not a clipping question. The per-channel
// bits form takes [0, 16], as bit allocation returns it, and gives a 0-bit channel
// the one-bin range (omega = 1). Bin counts are limited to 2^32 (the Gaussian
// tail terms stay far from underflow there).
//
// Bits and bins have different names, so 4 bits (omega = 16) cannot be confused with
// 4 bins: aciq_alpha(d, 4) / aciq_ranges(d, stats, 4) take integer bits, and
// aciq_alpha_bins(d, 16.0) / aciq_ranges_bins(d, stats, bins) take real bin counts.
//
// How good is the model (measured in test_aciq.cpp, 10^6 samples): with clipped
// values reconstructed at +-a and mid-bin reconstruction inside, the measured MSE is
// within 2% of aciq_mse for Laplace (M = 2..5) and within 7% / 3% / 1% for Gauss at
// M = 2 / 3 / 4 (the model assumes f flat across each bin; the Gaussian's bins are
// 0.86 sigma wide at M = 2). Either way the measured minimum is near alpha*.
// A realisable quantizer with 2^M levels behaves differently: with mid-bin levels the
// clipped values land on the outer bin's centre (a - D/2, not a) and the measured MSE
// exceeds the model by 10-47% at M = 2..4; the GEMMLOWP grid (2^M levels spanning
// [-a, a], so 2^M - 1 intervals, round to nearest) matches the model with
// omega = 2^M - 1 as closely as the model's own quantizer (Gauss M = 2: 8%). The
// alpha* of the paper and of the reference code use omega = 2^M; so does this header
// for bits; pass bins = 2^M - 1 to the bins forms for the grid-consistent optimum.
//
// Ranges from per-channel statistics (the reference code's alpha2DeltaOffset), with
// a = alpha* x (b for Laplace, std for Gauss) and mu the channel mean:
//   signed:   lo = max(min, mu - a),  hi = lo + 2a   (centred on the mean, never
//             below the data's minimum; hi may exceed the data's max as in the reference)
//   unsigned: lo = 0,  hi = max(mu, 0) + a
// A channel with zero scale gets a = 0: the zero-width signed range lo = hi = max(min, mu),
// the unsigned range [0, max(mu, 0)]; never NaN. Signed ACIQ ranges need not contain 0
// (a channel of all-positive data keeps lo = min > 0); minmax_ranges' always do.
//
// Errors (ptq::error naming function, argument and value): bits outside [1, 16],
// bins < 1, > 2^32 or NaN, alpha_over_scale negative or not finite, stats vectors
// of inconsistent lengths, non-finite stats, negative scales, min > max, per-channel
// bits / bins vectors of the wrong length, and clipping ranges that overflow.
#pragma once

#include <Eigen/Core>
#include <algorithm>
#include <boost/math/constants/constants.hpp>
#include <boost/math/special_functions/erf.hpp>
#include <boost/math/special_functions/lambert_w.hpp>
#include <boost/math/tools/roots.hpp>
#include <cmath>
#include <cstdint>
#include <limits>
#include <type_traits>
#include <utility>

#include "config.hpp"
#include "detail/constexpr_math.hpp"
#include "error.hpp"
#include "types.hpp"

namespace ptq {

// Largest bin count the run-time forms accept.
inline constexpr double aciq_max_bins = 4294967296.0;  // 2^32

namespace detail {

inline void aciq_check_dist(distribution d, const char* where) {
  if (d != distribution::laplace && d != distribution::gauss)
    fail(where, "dist = ", static_cast<int>(d), " is not a distribution (laplace or gauss)");
}
inline void aciq_check_range(range_kind r, const char* where) {
  if (r != range_kind::signed_range && r != range_kind::unsigned_range)
    fail(where, "range = ", static_cast<int>(r), " is not a range_kind (signed_range or unsigned_range)");
}
inline void aciq_check_bins(double bins, const char* where, const char* name) {
  if (std::isnan(bins)) fail(where, name, " = ", bins, " is not a number");
  if (bins < 1.0) fail(where, name, " = ", bins, " is less than 1");
  if (bins > aciq_max_bins) fail(where, name, " = ", bins, " is more than 2^32");
}

// Signed-equivalent bin count: unsigned with omega bins == signed with 2 omega bins.
inline double aciq_signed_bins(double bins, range_kind r) {
  return r == range_kind::unsigned_range ? 2.0 * bins : bins;
}

// Gauss clipping term / sigma^2, alpha >= 0.
inline double aciq_gauss_clip(double alpha) {
  // Beyond 40 both terms underflow to 0 in double; (1 + alpha^2) * erfc(...) would be
  // inf * 0 = NaN once alpha^2 overflows (alpha > ~1.3e154).
  if (alpha > 40.0) return 0.0;
  const double root_two = boost::math::constants::root_two<double>();
  const double root_two_div_pi = boost::math::constants::root_two_div_pi<double>();
  return (1.0 + alpha * alpha) * boost::math::erfc(alpha / root_two) -
         root_two_div_pi * alpha * std::exp(-0.5 * alpha * alpha);
}

// Optimal alpha for a signed range of omega (already signed-equivalent) bins, at run
// time with Boost.Math (the bins forms; see "Evaluation" at the top).
inline double aciq_alpha_signed(distribution d, double omega) {
  const double w2 = omega * omega;
  if (d == distribution::laplace) return boost::math::lambert_w0(3.0 * w2);
  // g(x sqrt 2) / sqrt 2 in x = alpha / sqrt 2, so that erfc gets its argument unrounded;
  // x^2 = hi + lo exactly (fma), e^{-x^2} = e^{-hi} (1 - lo).
  const double one_div_root_pi = boost::math::constants::one_div_root_pi<double>();
  const double c = 1.0 / (3.0 * w2);
  auto g = [&](double x) {
    const double hi = x * x, lo = std::fma(x, x, -hi);
    return x * boost::math::erfc(x) - one_div_root_pi * std::exp(-hi) * (1.0 - lo) + x * c;
  };
  double lo = 0.0, hi = 1.0;
  while (g(hi) <= 0.0) {  // at most 3 doublings for omega <= 2^33 (x* < 6.33)
    lo = hi;
    hi *= 2.0;
  }
  std::uintmax_t iters = 200;
  const auto r = boost::math::tools::toms748_solve(g, lo, hi, boost::math::tools::eps_tolerance<double>(), iters);
  return boost::math::constants::root_two<double>() * (0.5 * (r.first + r.second));
}

// Gauss alpha* as a constant expression, omega in [1, 2^33] (see "Evaluation" at the top):
// safeguarded Newton on h(a) = ln(2 psi(a) / (c a)), c = 1 / (3 omega^2), h' = -1/t - 1/a.
constexpr double aciq_gauss_alpha_cx(double omega) {
  const double c = 1.0 / (3.0 * omega * omega);
  double lo = 0.75, hi = 16.0;  // h(lo) > 0 > h(hi): alpha*(1) = 0.766, alpha*(2^33) = 8.95
  double a = lo;
  for (int i = 0; i < 100; ++i) {
    const cx::normal_tail_t n = cx::normal_tail(a);
    const double h = cx::log(2.0 * n.phi * n.t / ((a + n.t) * c * a));
    if (h > 0.0)
      lo = a;
    else
      hi = a;
    const double step = h / (1.0 / n.t + 1.0 / a);
    if (cx::abs(step) <= 4.0 * std::numeric_limits<double>::epsilon() * a) return a + step;
    a += step;
    if (!(a > lo && a < hi)) a = 0.5 * (lo + hi);  // Newton left the bracket: bisect
  }
  return a;
}

// alpha* for a signed range of omega in [1, 2^33] bins, as a constant expression.
constexpr double aciq_alpha_signed_cx(distribution d, double omega) {
  return d == distribution::laplace ? cx::lambert_w0(3.0 * omega * omega) : aciq_gauss_alpha_cx(omega);
}

// alpha* for omega = 2^k signed-equivalent bins, k = 0..17, computed at compile time:
// signed M bits is k = M, unsigned M bits k = M + 1; 0 bits (one bin) k = 0 / 1.
struct aciq_pow2_table {
  double alpha[2][18];  // [laplace, gauss][k]
};
constexpr aciq_pow2_table aciq_make_pow2_table() {
  aciq_pow2_table t{};
  double w = 1.0;
  for (int k = 0; k < 18; ++k, w *= 2.0) {
    t.alpha[0][k] = aciq_alpha_signed_cx(distribution::laplace, w);
    t.alpha[1][k] = aciq_alpha_signed_cx(distribution::gauss, w);
  }
  return t;
}
inline constexpr aciq_pow2_table aciq_alpha_pow2 = aciq_make_pow2_table();

// alpha* for `bits` in [0, 16] (0: one bin), d and r already validated.
constexpr double aciq_alpha_of_bits(distribution d, long long bits, range_kind r) {
  return aciq_alpha_pow2.alpha[d == distribution::gauss ? 1 : 0][bits + (r == range_kind::unsigned_range ? 1 : 0)];
}

template <class I>
using if_integer = std::enable_if_t<std::is_integral<I>::value && !std::is_same<I, bool>::value, int>;

// Validated view of the statistics a stage needs. `need_min`, `need_max`, `need_mean`,
// `scale` select the used vectors; every non-empty vector must have the channel count.
inline index aciq_check_stats(const channel_stats& s, const char* where, bool need_min, bool need_max,
                              bool need_mean, const Eigen::VectorXd* scale, const char* scale_name) {
  struct entry {
    const Eigen::VectorXd* v;
    const char* name;
    bool used;
  };
  const entry all[] = {{&s.min, "stats.min", need_min},
                       {&s.max, "stats.max", need_max},
                       {&s.mean, "stats.mean", need_mean},
                       {&s.b, "stats.b", scale == &s.b},
                       {&s.std, "stats.std", scale == &s.std}};
  const entry* ref = nullptr;  // the first used vector defines the channel count
  for (const entry& e : all)
    if (e.used) {
      ref = &e;
      break;
    }
  const index n = ref->v->size();
  for (const entry& e : all) {
    if (e.v->size() == n || (!e.used && e.v->size() == 0)) continue;
    fail(where, e.name, ".size() = ", e.v->size(), " does not match ", ref->name, ".size() = ", n);
  }
  for (const entry& e : all) {
    if (!e.used) continue;
    for (index c = 0; c < n; ++c) {
      const double x = (*e.v)[c];
      if (!std::isfinite(x)) fail(where, e.name, "[", c, "] = ", x, " is not finite");
      if (e.v == scale && x < 0.0) fail(where, scale_name, "[", c, "] = ", x, " is negative");
    }
  }
  if (need_min && need_max)
    for (index c = 0; c < n; ++c)
      if (s.min[c] > s.max[c])
        fail(where, "stats.min[", c, "] = ", s.min[c], " is greater than stats.max[", c, "] = ", s.max[c]);
  return n;
}

// Ranges for alpha_of(c), already validated; the only check left is overflow.
template <class AlphaOf>
channel_ranges aciq_ranges_impl(distribution d, const channel_stats& s, index n, range_kind r, AlphaOf alpha_of,
                                const char* where) {
  const Eigen::VectorXd& scale = d == distribution::laplace ? s.b : s.std;
  const char* scale_name = d == distribution::laplace ? "stats.b" : "stats.std";
  channel_ranges out;
  out.lo.resize(n);
  out.hi.resize(n);
  for (index c = 0; c < n; ++c) {
    const double a = alpha_of(c) * scale[c];
    double lo, hi;
    if (r == range_kind::signed_range) {
      lo = std::max(s.min[c], s.mean[c] - a);
      hi = lo + 2.0 * a;
    } else {
      lo = 0.0;
      hi = std::max(s.mean[c], 0.0) + a;
    }
    if (!std::isfinite(lo) || !std::isfinite(hi))
      fail(where, scale_name, "[", c, "] = ", scale[c], " gives a clipping range that overflows (a = ", a, ")");
    out.lo[c] = lo;
    out.hi[c] = hi;
  }
  return out;
}

inline index aciq_check_ranges_args(distribution d, const channel_stats& s, range_kind r, const char* where) {
  aciq_check_dist(d, where);
  aciq_check_range(r, where);
  const bool is_signed = r == range_kind::signed_range;
  const Eigen::VectorXd* scale = d == distribution::laplace ? &s.b : &s.std;
  return aciq_check_stats(s, where, is_signed, false, true, scale,
                          d == distribution::laplace ? "stats.b" : "stats.std");
}

}  // namespace detail

// Modelled MSE / scale^2 at clip a = alpha_over_scale * scale with `bins` bins (see top).
inline double aciq_mse(distribution dist, double alpha_over_scale, double bins,
                       range_kind range = range_kind::signed_range) {
  constexpr const char* where = "ptq::aciq_mse";
  detail::aciq_check_dist(dist, where);
  detail::aciq_check_range(range, where);
  if (!std::isfinite(alpha_over_scale))
    detail::fail(where, "alpha_over_scale = ", alpha_over_scale, " is not finite");
  if (alpha_over_scale < 0.0) detail::fail(where, "alpha_over_scale = ", alpha_over_scale, " is negative");
  detail::aciq_check_bins(bins, where, "bins");
  const double a = alpha_over_scale;
  const double w = detail::aciq_signed_bins(bins, range);
  const double clip = dist == distribution::laplace ? 2.0 * std::exp(-a) : detail::aciq_gauss_clip(a);
  return clip + a * a / (3.0 * w * w);
}

// Optimal clip a* / scale for any real bin count omega in [1, 2^32].
inline double aciq_alpha_bins(distribution dist, double bins, range_kind range = range_kind::signed_range) {
  constexpr const char* where = "ptq::aciq_alpha_bins";
  detail::aciq_check_dist(dist, where);
  detail::aciq_check_range(range, where);
  detail::aciq_check_bins(bins, where, "bins");
  return detail::aciq_alpha_signed(dist, detail::aciq_signed_bins(bins, range));
}

// Optimal clip a* / scale for M = bits in [1, 16] (omega = 2^M), from the compile-time table.
// Any integer type means bits (see the overload caution at the top).
template <class Int, detail::if_integer<Int> = 0>
double aciq_alpha(distribution dist, Int bits, range_kind range = range_kind::signed_range) {
  constexpr const char* where = "ptq::aciq_alpha";
  detail::aciq_check_dist(dist, where);
  detail::aciq_check_range(range, where);
  if (std::is_unsigned<Int>::value && static_cast<unsigned long long>(bits) > 16u)
    detail::fail(where, "bits = ", static_cast<unsigned long long>(bits), " is outside [1, 16]");
  detail::check_bits(static_cast<long long>(bits), 1, 16, where, "bits");
  return detail::aciq_alpha_of_bits(dist, static_cast<long long>(bits), range);
}

// Per-channel ranges, the same bits for every channel.
template <class Int, detail::if_integer<Int> = 0>
channel_ranges aciq_ranges(distribution dist, const channel_stats& stats, Int bits,
                           range_kind range = range_kind::signed_range) {
  constexpr const char* where = "ptq::aciq_ranges";
  const index n = detail::aciq_check_ranges_args(dist, stats, range, where);
  if (std::is_unsigned<Int>::value && static_cast<unsigned long long>(bits) > 16u)
    detail::fail(where, "bits = ", static_cast<unsigned long long>(bits), " is outside [1, 16]");
  detail::check_bits(static_cast<long long>(bits), 1, 16, where, "bits");
  const double alpha = detail::aciq_alpha_of_bits(dist, static_cast<long long>(bits), range);
  return detail::aciq_ranges_impl(dist, stats, n, range, [alpha](index) { return alpha; }, where);
}

// Per-channel ranges, bits[c] in [0, 16] for channel c (bits.size() == channels), as
// bit allocation returns them. A 0-bit channel becomes a constant downstream; its
// range is the model's one-bin answer (omega = 1), so that it is still a valid range.
inline channel_ranges aciq_ranges(distribution dist, const channel_stats& stats,
                                  const Eigen::Ref<const Eigen::VectorXi>& bits,
                                  range_kind range = range_kind::signed_range) {
  constexpr const char* where = "ptq::aciq_ranges";
  const index n = detail::aciq_check_ranges_args(dist, stats, range, where);
  if (bits.size() != n) detail::fail(where, "bits.size() = ", bits.size(), " does not match the ", n, " channels of stats");
  for (index c = 0; c < n; ++c)
    if (bits[c] < 0 || bits[c] > 16) detail::fail(where, "bits[", c, "] = ", bits[c], " is outside [0, 16]");
  return detail::aciq_ranges_impl(
      dist, stats, n, range, [&](index c) { return detail::aciq_alpha_of_bits(dist, bits[c], range); }, where);
}

// Per-channel ranges, bins[c] real in [1, 2^32] for channel c (e.g. 2^{M_c} from bit
// allocation before rounding). One root solve per channel for Gauss (microseconds).
inline channel_ranges aciq_ranges_bins(distribution dist, const channel_stats& stats,
                                       const Eigen::Ref<const Eigen::VectorXd>& bins,
                                       range_kind range = range_kind::signed_range) {
  constexpr const char* where = "ptq::aciq_ranges_bins";
  const index n = detail::aciq_check_ranges_args(dist, stats, range, where);
  if (bins.size() != n) detail::fail(where, "bins.size() = ", bins.size(), " does not match the ", n, " channels of stats");
  for (index c = 0; c < n; ++c) {
    if (std::isnan(bins[c])) detail::fail(where, "bins[", c, "] = ", bins[c], " is not a number");
    if (bins[c] < 1.0) detail::fail(where, "bins[", c, "] = ", bins[c], " is less than 1");
    if (bins[c] > aciq_max_bins) detail::fail(where, "bins[", c, "] = ", bins[c], " is more than 2^32");
  }
  return detail::aciq_ranges_impl(
      dist, stats, n, range,
      [&](index c) { return detail::aciq_alpha_signed(dist, detail::aciq_signed_bins(bins[c], range)); }, where);
}

// Per-channel ranges for clip factors given by the caller: alpha_over_scale[c] >= 0 finite
// (a = alpha_over_scale[c] * b or * sigma), centred as above. For factors that are not the
// exact optima: another implementation's tables (the reference's two-decimal ones, which
// the ResNet example's --aciq-alphas reference uses), or factors tuned on data.
inline channel_ranges aciq_ranges_alpha(distribution dist, const channel_stats& stats,
                                        const Eigen::Ref<const Eigen::VectorXd>& alpha_over_scale,
                                        range_kind range = range_kind::signed_range) {
  constexpr const char* where = "ptq::aciq_ranges_alpha";
  const index n = detail::aciq_check_ranges_args(dist, stats, range, where);
  if (alpha_over_scale.size() != n)
    detail::fail(where, "alpha_over_scale.size() = ", alpha_over_scale.size(), " does not match the ", n,
                 " channels of stats");
  for (index c = 0; c < n; ++c) {
    if (!std::isfinite(alpha_over_scale[c]))
      detail::fail(where, "alpha_over_scale[", c, "] = ", alpha_over_scale[c], " is not finite");
    if (alpha_over_scale[c] < 0.0)
      detail::fail(where, "alpha_over_scale[", c, "] = ", alpha_over_scale[c], " is negative");
  }
  return detail::aciq_ranges_impl(dist, stats, n, range, [&](index c) { return alpha_over_scale[c]; }, where);
}

// No clipping: signed -> [min(min, 0), max(max, 0)], unsigned -> [0, max(max, 0)].
// Always contains 0 (so that 0.0 is exactly representable after quantization).
inline channel_ranges minmax_ranges(const channel_stats& stats, range_kind range = range_kind::signed_range) {
  constexpr const char* where = "ptq::minmax_ranges";
  detail::aciq_check_range(range, where);
  const bool is_signed = range == range_kind::signed_range;
  const index n = detail::aciq_check_stats(stats, where, is_signed, true, false, nullptr, "");
  channel_ranges out;
  out.lo.resize(n);
  out.hi.resize(n);
  for (index c = 0; c < n; ++c) {
    out.lo[c] = is_signed ? std::min(stats.min[c], 0.0) : 0.0;
    out.hi[c] = std::max(stats.max[c], 0.0);
  }
  return out;
}

// Compile-time form: aciq<laplace, 4>::alpha() == W0(3 * 4^4) == 5.028640...
template <class Dist, int Bits, range_kind Range = range_kind::signed_range>
struct aciq {
  static_assert(std::is_same<Dist, laplace>::value || std::is_same<Dist, gauss>::value,
                "ptq::aciq: Dist must be ptq::laplace or ptq::gauss");
  static_assert(Bits >= 1 && Bits <= 16, "ptq::aciq: Bits must be in [1, 16]");

  static constexpr distribution dist = Dist::value;
  static constexpr int bits = Bits;
  static constexpr range_kind range = Range;

  // a* / scale, a constant expression (computed at compile time; see the top).
  static constexpr double alpha() { return detail::aciq_alpha_of_bits(Dist::value, Bits, Range); }
  // Modelled MSE / scale^2 at a clip of alpha_over_scale.
  static double mse(double alpha_over_scale) {
    return aciq_mse(Dist::value, alpha_over_scale, std::ldexp(1.0, Bits), Range);
  }
  // Per-channel clipping ranges from statistics (see the top of this header).
  static channel_ranges ranges(const channel_stats& stats) { return aciq_ranges(Dist::value, stats, Bits, Range); }
};

}  // namespace ptq
