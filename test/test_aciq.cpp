// test_aciq.cpp: ACIQ optimal clipping: exact constants, independent checks, simulation, ranges, errors.
#include <doctest/doctest.h>

#include <boost/math/quadrature/exp_sinh.hpp>
#include <boost/math/special_functions/erf.hpp>
#include <boost/math/special_functions/lambert_w.hpp>
#include <algorithm>
#include <cmath>
#include <cstdint>
#include <limits>
#include <random>
#include <utility>
#include <vector>

#include "ptq/aciq.hpp"

// Everything of this file in its own namespace: the test binary is a unity build.
namespace ptq_test_aciq {

namespace {

using ptq::distribution;
using ptq::range_kind;
constexpr distribution kLap = distribution::laplace;
constexpr distribution kGau = distribution::gauss;
constexpr range_kind kS = range_kind::signed_range;
constexpr range_kind kU = range_kind::unsigned_range;

// docs/method.md's table, M = 1..8 (index 0 unused), to 1e-6. The Gaussian M = 8 signed
// (M = 7 unsigned) value is 3.92403549 (3.924035 to six places, not 3.924036).
constexpr double kLapS[9] = {0, 1.862817, 2.830683, 3.897229, 5.028640, 6.204766, 7.413126, 8.645620, 9.896760};
constexpr double kLapU[9] = {0, 2.830683, 3.897229, 5.028640, 6.204766, 7.413126, 8.645620, 9.896760, 11.162685};
constexpr double kGauS[9] = {0, 1.239905, 1.710635, 2.151593, 2.559136, 2.936201, 3.286914, 3.615114, 3.9240354899};
constexpr double kGauU[9] = {0, 1.710635, 2.151593, 2.559136, 2.936201, 3.286914, 3.615114, 3.9240354899, 4.216330};

// alpha* for omega = 2^k (signed) bins, k = 0..17, to 21 digits: mpmath at 40 digits,
// Laplace lambertw(3 * 4^k), Gauss bisection (140 halvings from a doubling bracket) on
// a erfc(a / sqrt 2) - sqrt(2 / pi) e^{-a^2 / 2} + a / (3 * 4^k). Independent of the code
// under test (other library, other method, 40 digits).
constexpr double kLapHi[18] = {
    1.04990889496403995999, 1.8628168644323579502,  2.83068298937023382105, 3.89722946494510269825,
    5.02864013623621312098, 6.20476633401332108495, 7.41312621384357037885, 8.64561998403442366765,
    9.89675977001752769476, 11.1626850177439983946, 12.4405912829053605564, 13.7283846959129942458,
    15.0244647652641853803, 16.3275830913989388465, 17.6367486288490573585, 18.951162433673050996,
    20.2701716385439003596, 21.593236296475386951};
constexpr double kGauHi[18] = {
    0.765775066233687903647, 1.23990527098445578235, 1.71063516811404367011, 2.15159274474034653383,
    2.55913646197533683641,  2.93620061210844455555, 3.2869142152137567621,  3.61511421526278090883,
    3.92403548988078223317,  4.21632982570402296044, 4.49416052930053520859, 4.75929975621900950258,
    5.01321046570130137788,  5.2571112107898837986,  5.49202627591848393238, 5.71882429535082224179,
    5.93824808461207251038,  6.15093783246488878914};

const double* table(distribution d, range_kind r) {
  if (d == kLap) return r == kS ? kLapS : kLapU;
  return r == kS ? kGauS : kGauU;
}

double rel(double x, double ref) { return std::abs(x - ref) / std::abs(ref); }

// Constant-expression |x - ref| <= tol (std::abs is not constexpr in C++17).
constexpr bool near(double x, double ref, double tol) { return (x > ref ? x - ref : ref - x) <= tol; }
constexpr bool near_rel(double x, double ref, double tol) { return near(x, ref, tol * (ref < 0 ? -ref : ref)); }

// The compile-time constants, M = 1..8, against the 6-digit table and, M = 1..16, against
// the 21-digit values (signed M is 2^M bins, unsigned M is 2^(M+1) by the model's algebra:
// the 21-digit values were computed for signed ranges only).
template <class Dist, range_kind R, int... M>
constexpr bool matches_table(const double (&want)[9], std::integer_sequence<int, M...>) {
  return (near(ptq::aciq<Dist, M + 1, R>::alpha(), want[M + 1], 1e-6) && ...);
}
template <class Dist, range_kind R, int... M>
constexpr bool matches_hi(const double (&want)[18], std::integer_sequence<int, M...>) {
  return (near_rel(ptq::aciq<Dist, M + 1, R>::alpha(), want[M + 1 + (R == range_kind::unsigned_range ? 1 : 0)], 1e-15) &&
          ...);
}
static_assert(matches_table<ptq::laplace, kS>(kLapS, std::make_integer_sequence<int, 8>{}), "Laplace signed, M = 1..8");
static_assert(matches_table<ptq::laplace, kU>(kLapU, std::make_integer_sequence<int, 8>{}), "Laplace unsigned, M = 1..8");
static_assert(matches_table<ptq::gauss, kS>(kGauS, std::make_integer_sequence<int, 8>{}), "Gauss signed, M = 1..8");
static_assert(matches_table<ptq::gauss, kU>(kGauU, std::make_integer_sequence<int, 8>{}), "Gauss unsigned, M = 1..8");
static_assert(matches_hi<ptq::laplace, kS>(kLapHi, std::make_integer_sequence<int, 16>{}), "Laplace signed, M = 1..16");
static_assert(matches_hi<ptq::laplace, kU>(kLapHi, std::make_integer_sequence<int, 16>{}), "Laplace unsigned, M = 1..16");
static_assert(matches_hi<ptq::gauss, kS>(kGauHi, std::make_integer_sequence<int, 16>{}), "Gauss signed, M = 1..16");
static_assert(matches_hi<ptq::gauss, kU>(kGauHi, std::make_integer_sequence<int, 16>{}), "Gauss unsigned, M = 1..16");
// The default range is signed (the unsigned value differs in the first digit).
static_assert(near(ptq::aciq<ptq::laplace, 4>::alpha(), kLapS[4], 1e-6), "aciq's default range");
static_assert(near(ptq::aciq<ptq::gauss, 4>::alpha(), kGauS[4], 1e-6), "aciq's default range");
// Beyond the bits: the constant-expression solvers at other bin counts (2^33, the largest
// signed-equivalent count of the bins forms; 3 and 1000.5), against mpmath as above.
static_assert(near_rel(ptq::detail::aciq_alpha_signed_cx(kGau, 8589934592.0), 8.94551367179267119064, 1e-15), "");
static_assert(near_rel(ptq::detail::aciq_alpha_signed_cx(kLap, 8589934592.0), 43.0831932327601859755, 1e-15), "");
static_assert(near_rel(ptq::detail::aciq_alpha_signed_cx(kGau, 3.0), 1.51816800254107743962, 1e-15), "");
static_assert(near_rel(ptq::detail::aciq_alpha_signed_cx(kLap, 3.0), 2.41439014057388018699, 1e-15), "");
static_assert(near_rel(ptq::detail::aciq_alpha_signed_cx(kGau, 1000.5), 4.48506909656910111227, 1e-15), "");
static_assert(near_rel(ptq::detail::aciq_alpha_signed_cx(kLap, 1000.5), 12.3976182214680766215, 1e-15), "");

template <class Dist, range_kind R, int M>
void check_template_one() {
  const double want = table(Dist::value, R)[M];
  CAPTURE(M);
  CHECK(rel(ptq::aciq<Dist, M, R>::alpha(), want) < 1e-6);
}
template <class Dist, range_kind R, int... M>
void check_template(std::integer_sequence<int, M...>) {
  (check_template_one<Dist, R, M + 1>(), ...);
}

// Boost.Math's alpha*, at run time: Laplace by lambert_w0 written out here (3 omega^2
// signed, 12 omega^2 unsigned), Gauss by ptq's run-time solver (TOMS 748 on Boost's erfc).
double boost_alpha(distribution d, int bits, range_kind r) {
  const double w = std::ldexp(1.0, bits);
  if (d == kLap) return boost::math::lambert_w0((r == kS ? 3.0 : 12.0) * w * w);
  return ptq::aciq_alpha_bins(kGau, w, r);
}

// Gauss alpha* by bisection, in long double, on half the derivative of the model's MSE
// written out for either range: the clipping term's half-derivative
// a erfc(a / sqrt 2) - sqrt(2 / pi) e^{-a^2 / 2}, plus a / (3 omega^2) signed (bins of
// 2a / omega) or a / (12 omega^2) unsigned (bins of a / omega).
long double gauss_alpha_bisect(long double omega, range_kind r) {
  const long double q = r == kS ? 3.0L : 12.0L;
  const long double root_two = std::sqrt(2.0L), root_two_div_pi = std::sqrt(2.0L / 3.14159265358979323846264338327950288L);
  auto g = [&](long double a) {
    return a * std::erfc(a / root_two) - root_two_div_pi * std::exp(-a * a / 2) + a / (q * omega * omega);
  };
  long double lo = 0.0L, hi = 16.0L;
  for (int i = 0; i < 200 && lo < hi; ++i) {
    const long double mid = (lo + hi) / 2;
    if (mid <= lo || mid >= hi) break;
    (g(mid) < 0 ? lo : hi) = mid;
  }
  return (lo + hi) / 2;
}

// The model's MSE / scale^2 written out (long double), and its minimum by brute force:
// a grid of 2001 points over [0.25, 24], zoomed onto the best point (+-2 steps, so x1/500
// each time) until the step is below 1e-15 of it.
long double mse_written_out(distribution d, long double a, long double omega, range_kind r) {
  const long double clip = d == kLap ? 2 * std::exp(-a)
                                     : (1 + a * a) * std::erfc(a / std::sqrt(2.0L)) -
                                           std::sqrt(2.0L / 3.14159265358979323846264338327950288L) * a *
                                               std::exp(-a * a / 2);
  const long double bin = (r == kS ? 2 * a : a) / omega;
  return clip + bin * bin / 12;
}
long double grid_argmin(distribution d, long double omega, range_kind r) {
  long double lo = 0.25L, hi = 24.0L;
  long double best = lo;
  for (int zoom = 0; zoom < 40; ++zoom) {
    const long double step = (hi - lo) / 2000;
    long double best_mse = mse_written_out(d, lo, omega, r);
    best = lo;
    for (int i = 1; i <= 2000; ++i) {
      const long double a = lo + step * i, e = mse_written_out(d, a, omega, r);
      if (e < best_mse) {
        best_mse = e;
        best = a;
      }
    }
    lo = std::max(0.25L, best - 2 * step);
    hi = best + 2 * step;
    if (step < 1e-15L * best) break;
  }
  return best;
}

// Independent references for the clipping term: 2 * Int_a^inf f(x) (x - a)^2 dx.
double laplace_pdf(double x) { return 0.5 * std::exp(-std::abs(x)); }
double gauss_pdf(double x) { return std::exp(-0.5 * x * x) / std::sqrt(2.0 * M_PI); }
double clip_integral(distribution d, double a) {
  boost::math::quadrature::exp_sinh<double> integrator;
  auto f = [&](double t) {  // t in (0, inf), x = a + t
    const double x = a + t;
    return 2.0 * (d == kLap ? laplace_pdf(x) : gauss_pdf(x)) * t * t;
  };
  return integrator.integrate(f, 0.0, std::numeric_limits<double>::infinity());
}

// Seeded samples, generated by hand so they are the same on every standard library.
double uniform_open(std::mt19937_64& g) {  // in (0, 1)
  return (static_cast<double>(g() >> 11) + 0.5) * 0x1.0p-53;
}
std::vector<double> laplace_samples(std::size_t n, std::uint64_t seed) {
  std::mt19937_64 g(seed);
  std::vector<double> x(n);
  for (double& v : x) {
    const double u = uniform_open(g) - 0.5;  // inverse CDF of Laplace(0, 1)
    v = (u < 0 ? 1.0 : -1.0) * std::log1p(-2.0 * std::abs(u));
  }
  return x;
}
std::vector<double> gauss_samples(std::size_t n, std::uint64_t seed) {
  std::mt19937_64 g(seed);
  std::vector<double> x(n);
  for (std::size_t i = 0; i < n; i += 2) {  // Box-Muller
    const double r = std::sqrt(-2.0 * std::log(uniform_open(g)));
    const double t = 2.0 * M_PI * uniform_open(g);
    x[i] = r * std::cos(t);
    if (i + 1 < n) x[i + 1] = r * std::sin(t);
  }
  return x;
}

// The model's quantizer over [lo, lo + width] with `bins` bins: values outside
// are reconstructed at the nearest end (error (x - a)^2, the model's clipping
// term); values inside at the centre of their bin.
double q_model(double x, double lo, double width, int bins) {
  const double hi = lo + width;
  if (x <= lo) return lo;
  if (x >= hi) return hi;
  const double d = width / bins;
  const double k = std::min(std::floor((x - lo) / d), bins - 1.0);
  return lo + (k + 0.5) * d;
}
// A realisable quantizer with `bins` levels at the bin centres: clip, then mid-bin.
double q_midbin(double x, double lo, double width, int bins) {
  const double d = width / bins;
  const double k = std::min(std::max(std::floor((x - lo) / d), 0.0), bins - 1.0);
  return lo + (k + 0.5) * d;
}
// The GEMMLOWP grid: `levels` levels spanning [lo, lo + width], round to nearest.
double q_grid(double x, double lo, double width, int levels) {
  const double d = width / (levels - 1);
  const double k = std::min(std::max(std::nearbyint((x - lo) / d), 0.0), levels - 1.0);
  return lo + k * d;
}

template <class Q>
double measured_mse(const std::vector<double>& x, Q q) {
  double s = 0;
  for (double v : x) {
    const double e = v - q(v);
    s += e * e;
  }
  return s / static_cast<double>(x.size());
}

ptq::channel_stats make_stats(std::vector<double> mn, std::vector<double> mx, std::vector<double> mean,
                              std::vector<double> b, std::vector<double> sd) {
  auto v = [](const std::vector<double>& s) {
    return Eigen::VectorXd(Eigen::Map<const Eigen::VectorXd>(s.data(), static_cast<Eigen::Index>(s.size())));
  };
  ptq::channel_stats st;
  st.min = v(mn);
  st.max = v(mx);
  st.mean = v(mean);
  st.b = v(b);
  st.std = v(sd);
  st.count = 100;
  return st;
}

}  // namespace

TEST_CASE("aciq: docs/method.md table through the template and the run-time forms") {
  const std::make_integer_sequence<int, 8> ms{};
  check_template<ptq::laplace, kS>(ms);
  check_template<ptq::laplace, kU>(ms);
  check_template<ptq::gauss, kS>(ms);
  check_template<ptq::gauss, kU>(ms);

  for (distribution d : {kLap, kGau})
    for (range_kind r : {kS, kU})
      for (int m = 1; m <= 8; ++m) {
        CAPTURE(static_cast<int>(d));
        CAPTURE(static_cast<int>(r));
        CAPTURE(m);
        const double want = table(d, r)[m];
        CHECK(rel(ptq::aciq_alpha(d, m, r), want) < 1e-6);
        CHECK(rel(ptq::aciq_alpha_bins(d, std::ldexp(1.0, m), r), want) < 1e-6);
        CHECK(rel(ptq::aciq_alpha(d, static_cast<long long>(m), r), want) < 1e-6);
        CHECK(rel(ptq::aciq_alpha(d, static_cast<unsigned>(m), r), want) < 1e-6);
      }
  // Defaults: signed range (the unsigned values differ in the first digit).
  CHECK(rel(ptq::aciq_alpha(kLap, 4), kLapS[4]) < 1e-6);
  CHECK(rel(ptq::aciq_alpha(kGau, 4), kGauS[4]) < 1e-6);
  CHECK(rel(ptq::aciq_alpha_bins(kGau, 16.0), kGauS[4]) < 1e-6);
}

namespace {
template <class Dist, range_kind R, int... M>
std::vector<double> template_alphas(std::integer_sequence<int, M...>) {
  return {0.0, ptq::aciq<Dist, M + 1, R>::alpha()...};  // index = bits
}
}  // namespace

TEST_CASE("aciq: the compile-time alpha* equal Boost's run-time ones and 21-digit values, bits 1..16") {
  const std::make_integer_sequence<int, 16> ms{};
  const std::vector<double> tmpl[2][2] = {
      {template_alphas<ptq::laplace, kS>(ms), template_alphas<ptq::laplace, kU>(ms)},
      {template_alphas<ptq::gauss, kS>(ms), template_alphas<ptq::gauss, kU>(ms)}};
  for (distribution d : {kLap, kGau})
    for (range_kind r : {kS, kU})
      for (int m = 1; m <= 16; ++m) {
        CAPTURE(static_cast<int>(d));
        CAPTURE(static_cast<int>(r));
        CAPTURE(m);
        const double cx = tmpl[d == kGau][r == kU][static_cast<std::size_t>(m)];
        const double boost = boost_alpha(d, m, r);
        CHECK(rel(cx, boost) <= 1e-15);
        CHECK(rel(ptq::aciq_alpha(d, m, r), boost) <= 1e-15);
        // Both against mpmath (unsigned M is signed M + 1 there, see kLapHi).
        const double hi = (d == kLap ? kLapHi : kGauHi)[m + (r == kU ? 1 : 0)];
        CHECK(rel(cx, hi) <= 4e-16);
        CHECK(rel(boost, hi) <= 8e-16);
      }
  // The run-time Gauss solver at the ends of its range: one bin, 2^32 bins unsigned.
  CHECK(rel(ptq::aciq_alpha_bins(kGau, 1.0), kGauHi[0]) <= 8e-16);
  CHECK(rel(ptq::aciq_alpha_bins(kGau, ptq::aciq_max_bins, kU), 8.94551367179267119064) <= 8e-16);
}

TEST_CASE("aciq: the constant-expression solvers agree with Boost's at any real bin count") {
  // 2^0 .. 2^33 signed-equivalent bins (the bins forms' range), 1000 geometric steps.
  double worst[2] = {0, 0};
  for (int i = 0; i <= 1000; ++i) {
    const double w = std::exp2(33.0 * i / 1000);
    CAPTURE(w);
    for (distribution d : {kLap, kGau}) {
      const double cx = ptq::detail::aciq_alpha_signed_cx(d, w), boost = ptq::detail::aciq_alpha_signed(d, w);
      CHECK(rel(cx, boost) <= 1e-15);
      worst[d == kGau] = std::max(worst[d == kGau], rel(cx, boost));
    }
  }
  MESSAGE("max relative difference constexpr vs Boost, omega in [1, 2^33]: Laplace ", worst[0], ", Gauss ", worst[1]);
}

TEST_CASE("aciq: alpha* from the model written out for each range (x e^x, bisection, grid search)") {
  // Independent of the code's unsigned == signed with twice the bins: each range's own
  // quantization term (a^2 / (3 omega^2) signed, a^2 / (12 omega^2) unsigned).
  const bool wide = std::numeric_limits<long double>::digits >= 64;  // x87 / quad long double
  for (range_kind r : {kS, kU})
    for (int m = 1; m <= 16; ++m) {
      CAPTURE(static_cast<int>(r));
      CAPTURE(m);
      const long double w = std::ldexp(1.0L, m);
      // Laplace: x e^x = 3 omega^2 (12 omega^2 unsigned). A relative error e in x moves
      // x e^x by (1 + x) e, so this bounds the error of x to 2 eps.
      const double x = ptq::aciq_alpha(kLap, m, r);
      const long double target = (r == kS ? 3.0L : 12.0L) * w * w;
      CHECK(std::abs(x * std::exp(static_cast<long double>(x)) / target - 1.0L) <=
            (1.0L + x) * 2.0L * std::numeric_limits<double>::epsilon() + (wide ? 0.0L : 1e-15L));
      // Gauss: bisection on the written-out derivative in long double.
      const double g = ptq::aciq_alpha(kGau, m, r);
      CHECK(std::abs(g - gauss_alpha_bisect(w, r)) <= (wide ? 1e-15L : 3e-14L) * g);
    }
  // Brute-force minimum of the written-out MSE, M = 1..8: the MSE is flat at its minimum,
  // so a grid locates it to ~sqrt(rounding) only (~1e-9 in long double).
  for (distribution d : {kLap, kGau})
    for (range_kind r : {kS, kU})
      for (int m = 1; m <= 8; ++m) {
        CAPTURE(static_cast<int>(d));
        CAPTURE(static_cast<int>(r));
        CAPTURE(m);
        const double a = ptq::aciq_alpha(d, m, r);
        const long double best = grid_argmin(d, std::ldexp(1.0L, m), r);
        CHECK(std::abs(a - best) <= (wide ? 1e-8L : 1e-6L) * a);
      }
}

TEST_CASE("aciq: constexpr exp, log, erfc, normal tail and Lambert W0 against <cmath> and Boost") {
  namespace cx = ptq::detail::cx;
  constexpr double eps = std::numeric_limits<double>::epsilon();
  static_assert(near_rel(cx::exp(1.0), 2.71828182845904523536, eps), "");
  static_assert(near_rel(cx::log(10.0), 2.30258509299404568402, eps), "");
  static_assert(near_rel(cx::erfc(1.0), 0.157299207050285130659, 2 * eps), "");
  static_assert(near_rel(cx::erfc(5.0), 1.53745979442803485018e-12, 2 * eps), "");
  static_assert(near_rel(cx::lambert_w0(1.0), 0.567143290409783872999968662210, eps), "");
  static_assert(cx::exp(0.0) == 1.0 && cx::log(1.0) == 0.0 && cx::lambert_w0(0.0) == 0.0, "");
  for (double x = -708.0; x <= 709.0; x += 0.37) CHECK(rel(cx::exp(x), std::exp(x)) <= 2 * eps);
  for (double x = -40.0; x <= 40.0; x += 0.0123) CHECK(rel(cx::exp(x), std::exp(x)) <= 2 * eps);
  for (double e = -300.0; e <= 300.0; e += 0.77) {
    const double x = std::pow(10.0, e);
    CHECK(rel(cx::log(x), std::log(x)) <= 4 * eps);
  }
  for (double x = 0.5; x <= 2.0; x += 0.00123)
    if (std::abs(x - 1.0) > 0.01) CHECK(rel(cx::log(x), std::log(x)) <= 4 * eps);
  for (double x = -3.0; x <= 27.0; x += 0.0123) CHECK(rel(cx::erfc(x), boost::math::erfc(x)) <= 6 * eps);
  for (double e = -10.0; e <= 300.0; e += 0.31) {
    const double x = std::pow(10.0, e);
    CHECK(rel(cx::lambert_w0(x), boost::math::lambert_w0(x)) <= 4 * eps);
  }
  for (double x = 0.01; x <= 100.0; x += 0.0731) CHECK(rel(cx::lambert_w0(x), boost::math::lambert_w0(x)) <= 4 * eps);
  // The normal tail Q(a) = phi / (a + t) and the mean excess phi - a Q = phi t / (a + t),
  // against long double erfc (the excess cancels: only with a long double wider than double).
  if (std::numeric_limits<long double>::digits >= 64)
    for (double a = 0.5; a <= 10.0; a += 0.00731) {
      CAPTURE(a);
      const cx::normal_tail_t n = cx::normal_tail(a);
      const long double al = a, phi = std::exp(-al * al / 2) / std::sqrt(2 * 3.14159265358979323846264338327950288L);
      const long double q = std::erfc(al / std::sqrt(2.0L)) / 2;
      CHECK(rel(n.phi / (a + n.t), static_cast<double>(q)) <= 6 * eps);
      CHECK(rel(n.phi * n.t / (a + n.t), static_cast<double>(phi - al * q)) <= 6 * eps);
    }
}

TEST_CASE("aciq: the paper's rounded constants") {
  // Paper: 2.83b, 3.89b, 5.03b (Laplace) and 1.71, 2.15, 2.55 sigma (Gauss), M = 2, 3, 4;
  // the paper truncates some (3.897 -> 3.89, 2.559 -> 2.55), hence a 0.01 tolerance.
  const double lap[] = {2.83, 3.89, 5.03}, gau[] = {1.71, 2.15, 2.55};
  for (int m = 2; m <= 4; ++m) {
    CHECK(std::abs(ptq::aciq_alpha(kLap, m, kS) - lap[m - 2]) < 0.01);
    CHECK(std::abs(ptq::aciq_alpha(kGau, m, kS) - gau[m - 2]) < 0.01);
  }
  CHECK(std::abs(ptq::aciq<ptq::laplace, 3>::alpha() - 3.89) < 0.01);
  CHECK(std::abs(ptq::aciq<ptq::gauss, 4>::alpha() - 2.55) < 0.01);
}

TEST_CASE("aciq: Laplace alpha solves x e^x = 3 omega^2 (12 omega^2 unsigned)") {
  for (double w : {1.0, 1.5, 2.0, 3.0, 7.25, 16.0, 100.0, 12345.6, 65536.0, 1e9}) {
    CAPTURE(w);
    const double s = ptq::aciq_alpha_bins(kLap, w, kS), u = ptq::aciq_alpha_bins(kLap, w, kU);
    CHECK(rel(s * std::exp(s), 3.0 * w * w) < 1e-13);
    CHECK(rel(u * std::exp(u), 12.0 * w * w) < 1e-13);
  }
  for (int m = 1; m <= 16; ++m) {
    const double w = std::ldexp(1.0, m), s = ptq::aciq_alpha(kLap, m, kS);
    CHECK(rel(s * std::exp(s), 3.0 * w * w) < 1e-13);
  }
}

TEST_CASE("aciq: alpha* minimises aciq_mse (Gauss and Laplace, signed and unsigned)") {
  for (distribution d : {kLap, kGau})
    for (range_kind r : {kS, kU}) {
      std::vector<double> ws = {1.0, 1.7, 3.0, 10.0, 1000.0, 1e6};
      for (int m = 1; m <= 16; ++m) ws.push_back(std::ldexp(1.0, m));
      for (double w : ws) {
        CAPTURE(w);
        const double a = ptq::aciq_alpha_bins(d, w, r);
        const double e = ptq::aciq_mse(d, a, w, r);
        CHECK(e < ptq::aciq_mse(d, a * (1 + 1e-3), w, r));
        CHECK(e < ptq::aciq_mse(d, a * (1 - 1e-3), w, r));
        // Central-difference derivative ~ 0 relative to the terms' own slope.
        const double h = 1e-5 * a;
        const double slope = (ptq::aciq_mse(d, a + h, w, r) - ptq::aciq_mse(d, a - h, w, r)) / (2 * h);
        const double quant_slope = 2 * a / (3 * w * w * (r == kU ? 4 : 1));
        CHECK(std::abs(slope) < 1e-4 * quant_slope);
      }
    }
}

TEST_CASE("aciq: aciq_mse equals the Laplace closed form and the numerical integral") {
  for (double b : {0.5, 1.0, 3.0})
    for (double a : {0.5, 2.0, 5.03}) {
      for (double w : {2.0, 16.0, 5.5}) {
        // In units of b^2: b^2 aciq_mse(a / b) = 2 b^2 e^{-a/b} + a^2 / (3 omega^2).
        const double closed = 2 * b * b * std::exp(-a / b) + a * a / (3 * w * w);
        CHECK(rel(b * b * ptq::aciq_mse(kLap, a / b, w, kS), closed) < 1e-14);
        const double closed_u = 2 * b * b * std::exp(-a / b) + a * a / (12 * w * w);
        CHECK(rel(b * b * ptq::aciq_mse(kLap, a / b, w, kU), closed_u) < 1e-14);
      }
    }
  for (distribution d : {kLap, kGau})
    for (double a : {0.0, 0.3, 1.0, 1.71, 2.5, 4.0, 6.0}) {
      CAPTURE(static_cast<int>(d));
      CAPTURE(a);
      for (double w : {1.0, 4.0, 9.5}) {
        const double clip = clip_integral(d, a);
        // Quantization noise: bins of width D = 2a / w (signed) or a / w (unsigned), D^2 / 12.
        const double ds = 2 * a / w, du = a / w;
        CHECK(rel(ptq::aciq_mse(d, a, w, kS), clip + ds * ds / 12) < 1e-9);
        CHECK(rel(ptq::aciq_mse(d, a, w, kU), clip + du * du / 12) < 1e-9);
      }
    }
  // No clipping at all: a = 0 leaves the whole second moment (2 b^2 = 2, sigma^2 = 1).
  CHECK(rel(ptq::aciq_mse(kLap, 0.0, 4.0), 2.0) < 1e-15);
  CHECK(rel(ptq::aciq_mse(kGau, 0.0, 4.0), 1.0) < 1e-15);
  // The template's mse(): unsigned 3 bits, bins of a / 8.
  CHECK(rel(ptq::aciq<ptq::gauss, 3, kU>::mse(2.0), clip_integral(kGau, 2.0) + (2.0 / 8) * (2.0 / 8) / 12) < 1e-9);
  CHECK(rel(ptq::aciq<ptq::laplace, 2>::mse(3.0), 2 * std::exp(-3.0) + (6.0 / 4) * (6.0 / 4) / 12) < 1e-14);
}

TEST_CASE("aciq: simulation agrees with the analysis (paper Fig. 1)") {
  const std::size_t n = 1000000;
  const std::vector<double> lap = laplace_samples(n, 20190101), gau = gauss_samples(n, 1810057230);
  // Tolerance of the model against its own quantizer: it charges every in-range
  // value D^2 / 12, i.e. assumes f flat across each bin. For the Gaussian at M = 2
  // the bins are 0.86 sigma wide and the model overestimates by ~6.6% (exact
  // integral, not noise; 2.5% at M = 3, 0.9% at M = 4). Laplace is within 1% in
  // expectation; its heavy clipped tail makes the estimate noisier (~1% at M = 5).
  auto tol = [](distribution d, int signed_bits) {
    if (d == kLap) return 0.03;
    return signed_bits <= 2 ? 0.08 : signed_bits == 3 ? 0.03 : 0.015;
  };
  for (distribution d : {kLap, kGau}) {
    const std::vector<double>& x = d == kLap ? lap : gau;
    std::vector<double> ax(x.size());
    for (std::size_t i = 0; i < x.size(); ++i) ax[i] = std::abs(x[i]);
    for (int m = 2; m <= 4; ++m) {
      CAPTURE(static_cast<int>(d));
      CAPTURE(m);
      const int bins = 1 << m;
      // Signed: clip to [-a, a], 2^M bins.
      const double a = ptq::aciq_alpha(d, m, kS);
      auto sim = [&](double aa) { return measured_mse(x, [&](double v) { return q_model(v, -aa, 2 * aa, bins); }); };
      const double at = sim(a);
      CHECK(rel(at, ptq::aciq_mse(d, a, bins, kS)) < tol(d, m));
      CHECK(at < sim(0.8 * a));
      CHECK(at < sim(1.25 * a));
      // Unsigned on |x|: [0, a], 2^M bins (== signed with 2^(M+1) bins).
      const double au = ptq::aciq_alpha(d, m, kU);
      auto sim_u = [&](double aa) { return measured_mse(ax, [&](double v) { return q_model(v, 0.0, aa, bins); }); };
      const double at_u = sim_u(au);
      CHECK(rel(at_u, ptq::aciq_mse(d, au, bins, kU)) < tol(d, m + 1));
      CHECK(at_u < sim_u(0.8 * au));
      CHECK(at_u < sim_u(1.25 * au));
      // The GEMMLOWP grid (2^M levels over [-a, a]) has 2^M - 1 intervals: it matches
      // the model with omega = 2^M - 1.
      const double ag = ptq::aciq_alpha_bins(d, bins - 1.0, kS);
      const double grid = measured_mse(x, [&](double v) { return q_grid(v, -ag, 2 * ag, bins); });
      CHECK(rel(grid, ptq::aciq_mse(d, ag, bins - 1.0, kS)) < tol(d, m) + 0.01);
      // Mid-bin levels only: the clipped tail lands on a - D/2, not a, which the
      // model does not charge; the measured error is above the model.
      const double mid = measured_mse(x, [&](double v) { return q_midbin(v, -a, 2 * a, bins); });
      CHECK(mid > at);
      CHECK(mid > ptq::aciq_mse(d, a, bins, kS));
    }
  }
}

TEST_CASE("aciq: run-time alpha is continuous and increasing in the bin count") {
  for (distribution d : {kLap, kGau})
    for (range_kind r : {kS, kU})
      for (int m = 1; m <= 15; ++m) {
        CAPTURE(static_cast<int>(d));
        CAPTURE(static_cast<int>(r));
        CAPTURE(m);
        const double w0 = std::ldexp(1.0, m), w1 = std::ldexp(1.0, m + 1);
        CHECK(rel(ptq::aciq_alpha_bins(d, w0, r), ptq::aciq_alpha(d, m, r)) < 1e-13);
        CHECK(rel(ptq::aciq_alpha_bins(d, w1, r), ptq::aciq_alpha(d, m + 1, r)) < 1e-13);
        double prev_w = w0, prev = ptq::aciq_alpha_bins(d, w0, r);
        const int steps = 32;
        for (int k = 1; k <= steps; ++k) {
          const double w = w0 * std::pow(2.0, static_cast<double>(k) / steps);
          const double a = ptq::aciq_alpha_bins(d, w, r);
          CHECK(a > prev);
          // d alpha / d ln(omega) < 2 (Laplace: 2W / (1 + W); Gauss smaller): Lipschitz in ln omega.
          CHECK(a - prev < 2.0 * std::log(w / prev_w) + 1e-12);
          prev = a;
          prev_w = w;
        }
      }
  // Tiny steps give tiny changes (no jumps inside the root finder).
  for (distribution d : {kLap, kGau}) {
    const double a = ptq::aciq_alpha_bins(d, 11.0), b = ptq::aciq_alpha_bins(d, 11.0 * (1 + 1e-9));
    CHECK(b >= a);
    CHECK(b - a < 3e-9);
  }
  // One bin (0 bits) is allowed in the bins form: Laplace alpha e^alpha = 3.
  const double one = ptq::aciq_alpha_bins(kLap, 1.0);
  CHECK(rel(one * std::exp(one), 3.0) < 1e-14);
  CHECK(ptq::aciq_alpha_bins(kGau, 1.0) > 0.0);
  CHECK(std::isfinite(ptq::aciq_alpha_bins(kGau, ptq::aciq_max_bins, kU)));
}

TEST_CASE("aciq: ranges are centred on the mean as in alpha2DeltaOffset") {
  //                          min    max   mean   b    std
  // c0: centred, inside the data
  // c1: mean - a below min -> lo = min
  // c2: zero scale
  // c3: negative mean (unsigned: hi = a)
  const ptq::channel_stats st = make_stats({-10, -1, -3, -50}, {10, 20, 4, 1}, {0.5, 3, 2, -5}, {1, 2, 0, 1.5},
                                           {2, 0.5, 0, 4});
  const double aL = kLapS[4], aLu = kLapU[4], aG = kGauS[4], aGu = kGauU[4];
  auto check = [](const ptq::channel_ranges& got, std::vector<double> lo, std::vector<double> hi) {
    REQUIRE(got.channels() == static_cast<ptq::index>(lo.size()));
    REQUIRE(got.hi.size() == static_cast<ptq::index>(hi.size()));
    for (std::size_t c = 0; c < lo.size(); ++c) {
      CAPTURE(c);
      CHECK(got.lo[c] == doctest::Approx(lo[c]).epsilon(1e-6));
      CHECK(got.hi[c] == doctest::Approx(hi[c]).epsilon(1e-6));
      CHECK(got.lo[c] <= got.hi[c]);
    }
  };
  SUBCASE("laplace signed") {
    const std::vector<double> lo = {0.5 - aL, -1, 2 /* max(min, mean) */, -5 - 1.5 * aL};
    const std::vector<double> hi = {0.5 + aL, -1 + 4 * aL, 2, -5 + 1.5 * aL};
    check(ptq::aciq_ranges(kLap, st, 4, kS), lo, hi);
    check(ptq::aciq<ptq::laplace, 4>::ranges(st), lo, hi);
    check(ptq::aciq_ranges(kLap, st, Eigen::VectorXi::Constant(4, 4), kS), lo, hi);
    check(ptq::aciq_ranges_bins(kLap, st, Eigen::VectorXd::Constant(4, 16.0), kS), lo, hi);
    check(ptq::aciq_ranges_alpha(kLap, st, Eigen::VectorXd::Constant(4, aL), kS), lo, hi);
    // Given factors (the reference's 5.03 and two others), one per channel, against the
    // alpha2DeltaOffset rule written out: lo = max(min, mean - a b), hi = lo + 2 a b.
    // c1: a = 3 * 2 = 6, mean - a = -3 below min = -1, so lo = -1 and hi = -1 + 12.
    const ptq::channel_ranges g = ptq::aciq_ranges_alpha(kLap, st, Eigen::Vector4d(5.03, 3.0, 2.5, 0.0), kS);
    check(g, {0.5 - 5.03, -1, 2, -5}, {0.5 + 5.03, 11, 2, -5});
    CHECK_THROWS_WITH_AS(ptq::aciq_ranges_alpha(kLap, st, Eigen::VectorXd::Constant(3, 1.0), kS),
                         doctest::Contains("ptq::aciq_ranges_alpha: alpha_over_scale.size() = 3"), ptq::error);
    CHECK_THROWS_WITH_AS(ptq::aciq_ranges_alpha(kLap, st, Eigen::Vector4d(1, -1, 1, 1), kS),
                         doctest::Contains("alpha_over_scale[1] = -1 is negative"), ptq::error);
    CHECK_THROWS_WITH_AS(ptq::aciq_ranges_alpha(kLap, st, Eigen::Vector4d(1, 1, std::nan(""), 1), kS),
                         doctest::Contains("alpha_over_scale[2] = nan is not finite"), ptq::error);
    const ptq::channel_ranges z = ptq::aciq_ranges(kLap, st, 4, kS);
    CHECK(z.lo[2] == z.hi[2]);  // zero scale: zero width, exactly
  }
  SUBCASE("laplace unsigned") {
    const std::vector<double> lo = {0, 0, 0, 0};
    const std::vector<double> hi = {0.5 + aLu, 3 + 2 * aLu, 2, 1.5 * aLu};
    check(ptq::aciq_ranges(kLap, st, 4, kU), lo, hi);
    check(ptq::aciq<ptq::laplace, 4, kU>::ranges(st), lo, hi);
  }
  SUBCASE("gauss signed and unsigned use std") {
    check(ptq::aciq_ranges(kGau, st, 4, kS), {0.5 - 2 * aG, 3 - 0.5 * aG, 2, -5 - 4 * aG}, {0.5 + 2 * aG, 3 + 0.5 * aG, 2, -5 + 4 * aG});
    check(ptq::aciq<ptq::gauss, 4>::ranges(st), {0.5 - 2 * aG, 3 - 0.5 * aG, 2, -5 - 4 * aG},
          {0.5 + 2 * aG, 3 + 0.5 * aG, 2, -5 + 4 * aG});
    check(ptq::aciq_ranges(kGau, st, 4, kU), {0, 0, 0, 0}, {0.5 + 2 * aGu, 3 + 0.5 * aGu, 2, 4 * aGu});
  }
  SUBCASE("per-channel bits and bins") {
    Eigen::VectorXi bits(4);
    bits << 2, 8, 3, 5;
    const std::vector<double> a = {kLapS[2] * 1, kLapS[8] * 2, 0, kLapS[5] * 1.5};
    check(ptq::aciq_ranges(kLap, st, bits, kS), {0.5 - a[0], -1, 2, -5 - a[3]},
          {0.5 + a[0], -1 + 2 * a[1], 2, -5 + a[3]});
    // Real bins: 2^bits gives the same; a fractional count lies between its neighbours.
    Eigen::VectorXd bins(4);
    bins << 4, 256, 8, 32;
    const ptq::channel_ranges rb = ptq::aciq_ranges_bins(kGau, st, bins, kU), ri = ptq::aciq_ranges(kGau, st, bits, kU);
    for (int c = 0; c < 4; ++c) CHECK(rel(rb.hi[c], ri.hi[c]) < 1e-13);
    bins[0] = 5.5;
    const ptq::channel_ranges rf = ptq::aciq_ranges_bins(kGau, st, bins, kU);
    CHECK(rf.hi[0] > ri.hi[0]);
    CHECK(rf.hi[0] < 0.5 + 2 * ptq::aciq_alpha(kGau, 3, kU));
  }
  SUBCASE("only the vectors a stage uses are required") {
    ptq::channel_stats s;
    s.mean = Eigen::VectorXd::Constant(2, 1.0);
    s.b = Eigen::VectorXd::Constant(2, 1.0);
    const ptq::channel_ranges r = ptq::aciq_ranges(kLap, s, 4, kU);  // no min, max, std
    CHECK(r.hi[1] == doctest::Approx(1 + aLu).epsilon(1e-6));
    const ptq::channel_ranges e = ptq::aciq_ranges(kLap, ptq::channel_stats{}, 4, kS);  // no channels
    CHECK(e.channels() == 0);
  }
  SUBCASE("minmax_ranges always contain 0") {
    const ptq::channel_stats m = make_stats({-2, 1, -4}, {3, 5, -1}, {0, 3, -2}, {1, 1, 1}, {1, 1, 1});
    check(ptq::minmax_ranges(m, kS), {-2, 0, -4}, {3, 5, 0});
    check(ptq::minmax_ranges(m), {-2, 0, -4}, {3, 5, 0});
    check(ptq::minmax_ranges(m, kU), {0, 0, 0}, {3, 5, 0});
  }
}

TEST_CASE("aciq: every bad argument throws a named ptq::error") {
  using doctest::Contains;
  const double nan = std::numeric_limits<double>::quiet_NaN(), inf = std::numeric_limits<double>::infinity();
  // Bits (0 bits is rejected: a constant channel is not a clipping question).
  CHECK_THROWS_WITH_AS(ptq::aciq_alpha(kLap, 0, kS), Contains("ptq::aciq_alpha: bits = 0 is outside [1, 16]"), ptq::error);
  CHECK_THROWS_WITH_AS(ptq::aciq_alpha(kGau, 17, kU), Contains("ptq::aciq_alpha: bits = 17 is outside [1, 16]"), ptq::error);
  CHECK_THROWS_WITH_AS(ptq::aciq_alpha(kGau, -3), Contains("bits = -3 is outside [1, 16]"), ptq::error);
  CHECK_THROWS_WITH_AS(ptq::aciq_alpha(kGau, 4000000000u), Contains("bits = 4000000000 is outside"), ptq::error);
  CHECK_THROWS_WITH_AS(ptq::aciq_alpha(kGau, static_cast<std::int64_t>(1) << 40), Contains("bits = 1099511627776"), ptq::error);
  // Bins.
  CHECK_THROWS_WITH_AS(ptq::aciq_alpha_bins(kLap, 0.5), Contains("ptq::aciq_alpha_bins: bins = 0.5 is less than 1"), ptq::error);
  CHECK_THROWS_WITH_AS(ptq::aciq_alpha_bins(kLap, nan), Contains("bins = nan is not a number"), ptq::error);
  CHECK_THROWS_WITH_AS(ptq::aciq_alpha_bins(kGau, inf), Contains("bins = inf is more than 2^32"), ptq::error);
  CHECK_THROWS_WITH_AS(ptq::aciq_alpha_bins(kGau, -inf), Contains("bins = -inf is less than 1"), ptq::error);
  CHECK_THROWS_WITH_AS(ptq::aciq_alpha_bins(kGau, 1e10), Contains("bins = 1e+10 is more than 2^32"), ptq::error);
  CHECK_THROWS_WITH_AS(ptq::aciq_alpha(static_cast<distribution>(7), 4), Contains("dist = 7 is not a distribution"), ptq::error);
  CHECK_THROWS_WITH_AS(ptq::aciq_alpha(kLap, 4, static_cast<range_kind>(9)), Contains("range = 9 is not a range_kind"), ptq::error);
  // aciq_mse.
  CHECK_THROWS_WITH_AS(ptq::aciq_mse(kLap, -1.0, 4.0), Contains("ptq::aciq_mse: alpha_over_scale = -1 is negative"), ptq::error);
  CHECK_THROWS_WITH_AS(ptq::aciq_mse(kLap, nan, 4.0), Contains("alpha_over_scale = nan is not finite"), ptq::error);
  CHECK_THROWS_WITH_AS(ptq::aciq_mse(kGau, inf, 4.0), Contains("alpha_over_scale = inf is not finite"), ptq::error);
  CHECK_THROWS_WITH_AS(ptq::aciq_mse(kGau, 1.0, 0.0, kU), Contains("ptq::aciq_mse: bins = 0 is less than 1"), ptq::error);
  CHECK_THROWS_WITH_AS(ptq::aciq_mse(kGau, 1.0, nan), Contains("bins = nan is not a number"), ptq::error);

  // Stats.
  const ptq::channel_stats good = make_stats({-1, -2, -3}, {1, 2, 3}, {0, 0, 0}, {1, 1, 1}, {1, 1, 1});
  const char* r = "ptq::aciq_ranges: ";
  {
    ptq::channel_stats s = good;
    s.b[1] = -1;
    CHECK_THROWS_WITH_AS(ptq::aciq_ranges(kLap, s, 4), Contains((std::string(r) + "stats.b[1] = -1 is negative").c_str()), ptq::error);
    CHECK_NOTHROW(ptq::aciq_ranges(kGau, s, 4));  // Gauss does not use b
    s.b[1] = nan;
    CHECK_THROWS_WITH_AS(ptq::aciq_ranges(kLap, s, 4), Contains("stats.b[1] = nan is not finite"), ptq::error);
  }
  {
    ptq::channel_stats s = good;
    s.std[2] = -inf;
    CHECK_THROWS_WITH_AS(ptq::aciq_ranges(kGau, s, 4, kU), Contains("stats.std[2] = -inf is not finite"), ptq::error);
    s.std[2] = -0.5;
    CHECK_THROWS_WITH_AS((ptq::aciq<ptq::gauss, 4>::ranges(s)), Contains("stats.std[2] = -0.5 is negative"), ptq::error);
  }
  {
    ptq::channel_stats s = good;
    s.mean[0] = nan;
    CHECK_THROWS_WITH_AS(ptq::aciq_ranges(kLap, s, 4, kU), Contains("stats.mean[0] = nan is not finite"), ptq::error);
    s = good;
    s.min[2] = inf;
    CHECK_THROWS_WITH_AS(ptq::aciq_ranges(kLap, s, 4, kS), Contains("stats.min[2] = inf is not finite"), ptq::error);
  }
  {
    ptq::channel_stats s = good;
    s.b.resize(2);
    CHECK_THROWS_WITH_AS(ptq::aciq_ranges(kLap, s, 4, kS),
                         Contains("ptq::aciq_ranges: stats.b.size() = 2 does not match stats.min.size() = 3"), ptq::error);
    CHECK_THROWS_WITH_AS(ptq::aciq_ranges(kGau, s, 4, kU),  // b unused but present and inconsistent
                         Contains("stats.b.size() = 2 does not match stats.mean.size() = 3"), ptq::error);
    s = good;
    s.mean.resize(4);
    s.mean.setZero();
    CHECK_THROWS_WITH_AS(ptq::aciq_ranges(kGau, s, 4, kS), Contains("stats.mean.size() = 4 does not match"), ptq::error);
  }
  {
    ptq::channel_stats s = good;
    s.b[0] = 1e308;
    CHECK_THROWS_WITH_AS(ptq::aciq_ranges(kLap, s, 4, kS),
                         Contains("stats.b[0] = 1e+308 gives a clipping range that overflows"), ptq::error);
  }
  // Bits in ranges, scalar and per channel.
  CHECK_THROWS_WITH_AS(ptq::aciq_ranges(kLap, good, 0), Contains("ptq::aciq_ranges: bits = 0 is outside [1, 16]"), ptq::error);
  CHECK_THROWS_WITH_AS(ptq::aciq_ranges(kLap, good, Eigen::VectorXi::Constant(2, 4)),
                       Contains("ptq::aciq_ranges: bits.size() = 2 does not match the 3 channels of stats"), ptq::error);
  {
    Eigen::VectorXi bits(3);
    bits << 4, 17, 4;
    CHECK_THROWS_WITH_AS(ptq::aciq_ranges(kGau, good, bits), Contains("bits[1] = 17 is outside [0, 16]"), ptq::error);
    bits[1] = -1;
    CHECK_THROWS_WITH_AS(ptq::aciq_ranges(kGau, good, bits), Contains("bits[1] = -1 is outside [0, 16]"), ptq::error);
    // 0 bits per channel (from bit allocation) is the one-bin range, like bins = 1.
    bits[1] = 0;
    Eigen::VectorXd bins(3);
    bins << 16, 1, 16;
    const ptq::channel_ranges z = ptq::aciq_ranges(kGau, good, bits), zb = ptq::aciq_ranges_bins(kGau, good, bins);
    for (int c = 0; c < 3; ++c) {
      CHECK(rel(z.lo[c], zb.lo[c]) < 1e-13);
      CHECK(rel(z.hi[c], zb.hi[c]) < 1e-13);
    }
  }
  CHECK_THROWS_WITH_AS(ptq::aciq_ranges_bins(kLap, good, Eigen::VectorXd::Constant(4, 16.0)),
                       Contains("bins.size() = 4 does not match the 3 channels of stats"), ptq::error);
  {
    Eigen::VectorXd bins = Eigen::VectorXd::Constant(3, 16.0);
    bins[2] = 0.25;
    CHECK_THROWS_WITH_AS(ptq::aciq_ranges_bins(kLap, good, bins), Contains("bins[2] = 0.25 is less than 1"), ptq::error);
    bins[2] = nan;
    CHECK_THROWS_WITH_AS(ptq::aciq_ranges_bins(kLap, good, bins), Contains("bins[2] = nan is not a number"), ptq::error);
  }
  // minmax_ranges.
  {
    ptq::channel_stats s = good;
    s.min[1] = 5;
    CHECK_THROWS_WITH_AS(ptq::minmax_ranges(s),
                         Contains("ptq::minmax_ranges: stats.min[1] = 5 is greater than stats.max[1] = 2"), ptq::error);
    s = good;
    s.max[0] = nan;
    CHECK_THROWS_WITH_AS(ptq::minmax_ranges(s, kU), Contains("stats.max[0] = nan is not finite"), ptq::error);
    s = good;
    s.min.resize(1);
    CHECK_THROWS_WITH_AS(ptq::minmax_ranges(s, kS), Contains("stats.max.size() = 3 does not match stats.min.size() = 1"),
                         ptq::error);
  }
}

}  // namespace ptq_test_aciq
