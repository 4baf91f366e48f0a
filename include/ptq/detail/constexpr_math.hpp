// constexpr_math.hpp: exp, log, erfc, the normal tail and Lambert W0 as C++17 constexpr
// functions, for the compile-time ACIQ constants (aciq.hpp). <cmath> is not constexpr in
// C++17 (Clang rejects std::exp in a constant expression), so these are written out in
// plain double arithmetic: no builtins, no FMA, no long double, so that every conforming
// compiler evaluates them to the same bits at compile time. Accuracy (measured in test_aciq.cpp against
// Boost.Math and <cmath>; "ulp" is that of the result):
//
//   exp(x)          any x. Cody-Waite reduction x = k ln2 + r, |r| <= ln2 / 2, with ln2
//                   split into hi + lo (k ln2_hi exact), then e^r by its Taylor series to
//                   r^17 / 17! (< 6e-24) and an exact scaling by 2^k: within 1.1 ulp.
//   log(x)          x > 0. x = 2^e m, m in [sqrt(1/2), sqrt 2), log m = 2 atanh(s) with
//                   s = (m - 1) / (m + 1), |s| <= 0.172, series to s^31: within 2 ulp.
//                   Used for starting points only.
//   erfc(x)         any x. x < 0.5: 1 - erf(x), erf by its Taylor series (erfc > 0.47 there,
//                   so the subtraction loses < 1 bit); x >= 0.5: e^{-x^2} / sqrt(pi) times
//                   Laplace's continued fraction 1 / (x + (1/2) / (x + 1 / (x + (3/2) / ...))),
//                   evaluated backwards from 40 + 240 / x^2 terms (enough for 1e-17 in the
//                   truncation at every x >= 0.5: the fraction converges like
//                   e^{-2 x sqrt(2 n)}); x^2 is formed exactly as hi + lo (Dekker), so the
//                   argument of e^{-x^2} carries no rounding error. Within 4 ulp for x <= 27.
//   normal_tail(a)  a >= 0.5: phi(a) = e^{-a^2/2} / sqrt(2 pi) and t(a), where the Mills
//                   ratio Q(a) / phi(a) = 1 / (a + t(a)), t(a) = 1 / (a + 2 / (a + 3 / ...))
//                   (the same fraction in a = x sqrt 2). It gives the upper tail
//                   Q(a) = phi / (a + t) and the mean excess phi(a) - a Q(a) = E (X - a)+
//                   = phi t / (a + t) with no cancellation (1 - a Q / phi = t / (a + t)),
//                   which a difference of erfc values could not: at a = 6 it would lose 5
//                   of its 53 bits.
//                   Q and the mean excess within 5 ulp for a in [0.5, 10].
//   lambert_w0(x)   x >= 0. Winitzki's start L (1 - log(1 + L) / (2 + L)), L = log(1 + x)
//                   (relative error < 2e-2), then Halley's iteration on w e^w - x until the
//                   step is below 4 eps w (cubic: at most 4 steps): within 2 ulp. The condition
//                   of W is at most 1 (dW/W = dx/x / (1 + W)), so the rounding of w e^w does
//                   not amplify.
//
// Cost: a few hundred operations each (erfc at x = 0.5: 1000 fraction terms), far below
// the constant-evaluation limits of GCC (2^25 operations) and Clang (2^20 steps).
#pragma once

#include <limits>

namespace ptq {
namespace detail {
namespace cx {

constexpr double abs(double x) { return x < 0.0 ? -x : x; }

// 2^k, exact for k in [-1074, 1023] (two factors, so that a subnormal result is one rounding).
constexpr double pow2(int k) {
  double r = 1.0;
  if (k >= 0) {
    for (; k > 0; --k) r *= 2.0;
  } else {
    for (; k < 0; ++k) r *= 0.5;
  }
  return r;
}

// a * b = hi + lo exactly (Dekker's product, Veltkamp's split; no FMA), |a|, |b| < 2^995.
struct two_double {
  double hi, lo;
};
constexpr two_double split(double a) {
  const double c = 134217729.0 * a;  // 2^27 + 1
  const double hi = c - (c - a);
  return {hi, a - hi};
}
constexpr two_double two_product(double a, double b) {
  const double p = a * b;
  const two_double x = split(a), y = split(b);
  return {p, ((x.hi * y.hi - p) + x.hi * y.lo + x.lo * y.hi) + x.lo * y.lo};
}

constexpr double ln2_hi = 6.93147180369123816490e-01;  // 0x3FE62E42FEE00000: k ln2_hi exact for |k| < 2^20
constexpr double ln2_lo = 1.90821492927058770002e-10;  // ln2 - ln2_hi
constexpr double sqrt_pi = 1.7724538509055160273;
constexpr double sqrt_2pi = 2.5066282746310005024;

constexpr double exp(double x) {
  if (x != x) return x;
  if (x > 709.782712893384) return std::numeric_limits<double>::infinity();
  if (x < -745.2) return 0.0;
  const double kd = x * 1.4426950408889634074;  // x / ln2
  const int k = static_cast<int>(kd < 0.0 ? kd - 0.5 : kd + 0.5);
  const double kk = static_cast<double>(k);
  const double r = (x - kk * ln2_hi) - kk * ln2_lo;
  double s = 0.0;  // e^r - 1 = r (1 + r/2 (1 + r/3 (1 + ...)))
  for (int n = 17; n >= 1; --n) s = r / static_cast<double>(n) * (1.0 + s);
  const double m = 1.0 + s;
  // Scale in two halves: 2^k alone is not a double for k = -1075 .. -1080 (x near -745).
  return m * pow2(k / 2) * pow2(k - k / 2);
}

constexpr double log(double x) {
  if (x != x || x < 0.0) return std::numeric_limits<double>::quiet_NaN();
  if (x == 0.0) return -std::numeric_limits<double>::infinity();
  if (x > std::numeric_limits<double>::max()) return x;
  int e = 0;
  double m = x;
  for (; m >= 0x1p64; e += 64) m *= 0x1p-64;
  for (; m < 0x1p-64; e -= 64) m *= 0x1p64;
  for (; m >= 2.0; ++e) m *= 0.5;
  for (; m < 1.0; --e) m *= 2.0;
  if (m > 1.4142135623730950488) {
    m *= 0.5;
    ++e;
  }
  const double s = (m - 1.0) / (m + 1.0), s2 = s * s;
  double p = 0.0;  // atanh(s) / s - 1 = s2 / 3 + s2^2 / 5 + ...
  for (int n = 15; n >= 1; --n) p = s2 * (1.0 / static_cast<double>(2 * n + 1) + p);
  const double ed = static_cast<double>(e);
  return ed * ln2_hi + (2.0 * s + (2.0 * s * p + ed * ln2_lo));
}

// e^{-x^2} with x^2 formed exactly (the rounding of x^2 would cost x^2 / 2 ulp).
constexpr double exp_minus_square(double x) {
  const two_double q = two_product(x, x);
  return exp(-q.hi) * (1.0 - q.lo);
}

// 1 / (x + c / (x + 2c / (x + 3c / ...))) - x, c = 1 (Mills ratio) or 1/2 (erfc),
// evaluated backwards; `terms` numerators from the last one.
constexpr double tail_fraction(double x, double c, int terms) {
  double t = 0.0;
  for (int n = terms; n >= 2; --n) t = c * static_cast<double>(n) / (x + t);
  return c / (x + t);
}

constexpr double erfc(double x) {
  if (x != x) return x;
  if (x < 0.0) return 2.0 - erfc(-x);
  if (x < 0.5) {  // erf(x) = 2 x / sqrt(pi) sum_n (-x^2)^n / (n! (2n + 1))
    const double x2 = x * x;
    double term = 1.0, sum = 1.0;
    for (int n = 1; n <= 20; ++n) {
      term *= -x2 / static_cast<double>(n);
      sum += term / static_cast<double>(2 * n + 1);
    }
    return 1.0 - 2.0 * x / sqrt_pi * sum;
  }
  if (x > 27.3) return 0.0;  // erfc(27.3) < 2^-1075
  const int terms = 40 + static_cast<int>(240.0 / (x * x));
  return exp_minus_square(x) / sqrt_pi / (x + tail_fraction(x, 0.5, terms));
}

// The standard normal's upper tail beyond a >= 0.5, as phi(a) and the fraction t(a).
struct normal_tail_t {
  double phi;  // e^{-a^2/2} / sqrt(2 pi)
  double t;    // Q(a) / phi(a) = 1 / (a + t)
};
constexpr normal_tail_t normal_tail(double a) {
  const two_double q = two_product(a, a);  // a^2 / 2 = q.hi / 2 + q.lo / 2, exactly
  const double phi = exp(-0.5 * q.hi) * (1.0 - 0.5 * q.lo) / sqrt_2pi;
  const int terms = 40 + static_cast<int>(480.0 / (a * a));
  return {phi, tail_fraction(a, 1.0, terms)};
}

constexpr double lambert_w0(double x) {
  if (x != x || x < 0.0) return std::numeric_limits<double>::quiet_NaN();
  if (x == 0.0 || x > std::numeric_limits<double>::max()) return x;
  const double l = log(1.0 + x);
  double w = l * (1.0 - log(1.0 + l) / (2.0 + l));
  for (int i = 0; i < 20; ++i) {
    const double ew = exp(w);
    const double f = w * ew - x;
    const double step = f / (ew * (w + 1.0) - (w + 2.0) * f / (2.0 * w + 2.0));
    w -= step;
    if (abs(step) <= 4.0 * std::numeric_limits<double>::epsilon() * w) break;
  }
  return w;
}

}  // namespace cx
}  // namespace detail
}  // namespace ptq
