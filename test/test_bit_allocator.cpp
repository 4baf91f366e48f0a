// test_bit_allocator.cpp: the 2/3 power rule, the exact integer allocation, and their errors.
#include <doctest/doctest.h>

#include <Eigen/Core>
#include <algorithm>
#include <cmath>
#include <functional>
#include <limits>
#include <random>
#include <vector>

#include "ptq/bit_allocator.hpp"

// Everything of this file in its own namespace: the test binary is a unity build.
namespace ptq_test_bit_allocator {

namespace {

using ptq::bit_allocation;
using ptq::bit_allocator;
using ptq::bit_retune;
using ptq::bit_rounding;
using params = ptq::bit_allocator::params;

// Naive modelled MSE: a^2 / (3 * 4^M) with pow.
double naive_mse(const Eigen::VectorXd& a, const Eigen::VectorXi& bits) {
  double s = 0;
  for (Eigen::Index i = 0; i < a.size(); ++i) s += a[i] * a[i] / (3.0 * std::pow(4.0, bits[i]));
  return s;
}

bool rel_close(double x, double y, double tol) {
  return std::abs(x - y) <= tol * std::max({std::abs(x), std::abs(y), 1e-300});
}

long long total(const Eigen::VectorXi& b) {
  long long s = 0;
  for (Eigen::Index i = 0; i < b.size(); ++i) s += b[i];
  return s;
}

// Random positive ranges of several shapes, some heavy-tailed.
Eigen::VectorXd random_ranges(std::mt19937_64& g, Eigen::Index n, int kind) {
  std::normal_distribution<double> nrm(0, 1);
  std::uniform_real_distribution<double> uni(0, 1);
  std::cauchy_distribution<double> cau(0, 1);
  Eigen::VectorXd a(n);
  const double few[] = {0.25, 1.0, 1.0, 3.0};
  for (Eigen::Index i = 0; i < n; ++i) {
    switch (kind % 6) {
      case 0: a[i] = 0.05 + uni(g); break;                            // mild
      case 1: a[i] = std::exp(2.0 * nrm(g)); break;                   // lognormal, heavy
      case 2: a[i] = std::pow(1.0 - uni(g), -1.0 / 0.8); break;       // Pareto(0.8), very heavy
      case 3: a[i] = std::abs(cau(g)) + 1e-6; break;                  // |Cauchy|
      case 4: a[i] = std::exp(0.3 * nrm(g)); break;                   // narrow lognormal
      default: a[i] = few[static_cast<int>(uni(g) * 4)]; break;      // few distinct values: ties
    }
  }
  return a;
}

// Every integer vector in [lo, hi]^n with sum R: minimal naive MSE, the minimizers' count
// (within 1e-12 relative) and one minimizer.
struct brute_result {
  double best = std::numeric_limits<double>::infinity();
  int count = 0;
  Eigen::VectorXi arg;
};

brute_result brute_force(const Eigen::VectorXd& a, int lo, int hi, long long R) {
  const int n = static_cast<int>(a.size());
  brute_result br;
  Eigen::VectorXi cur(n);
  std::vector<std::pair<double, Eigen::VectorXi>> all;
  std::function<void(int, long long)> rec = [&](int i, long long left) {
    if (i == n) {
      if (left != 0) return;
      const double m = naive_mse(a, cur);
      all.emplace_back(m, cur);
      br.best = std::min(br.best, m);
      return;
    }
    const long long rest = n - i - 1;
    for (int m = lo; m <= hi; ++m) {
      const long long l = left - m;
      if (l < rest * lo || l > rest * hi) continue;
      cur[i] = m;
      rec(i + 1, l);
    }
  };
  rec(0, R);
  for (auto& e : all)
    if (rel_close(e.first, br.best, 1e-12)) {
      if (br.count == 0) br.arg = e.second;
      ++br.count;
    }
  return br;
}

// Literal port of cnn-quantization's get_bits_alloc / get_bits_alloc_fixed_target
// (bins B*p/sum(p), log2, round or ceil, clamp, damped re-tuning), clamps generalized.
Eigen::VectorXi reference_alloc(const Eigen::VectorXd& alpha, double num_bits, bool round, int lo, int hi) {
  auto alloc = [&](double nb) {
    const double B = alpha.size() * std::pow(2.0, nb);
    Eigen::VectorXd p = alpha.array().pow(2.0 / 3.0);
    Eigen::VectorXd bins = B * p / p.sum();
    Eigen::VectorXi b(alpha.size());
    for (Eigen::Index i = 0; i < alpha.size(); ++i) {
      double m = round ? std::nearbyint(std::log2(bins[i])) : std::ceil(std::log2(bins[i]));
      b[i] = static_cast<int>(std::min<double>(std::max<double>(m, lo), hi));
    }
    return b;
  };
  const double goal = num_bits;
  double target = goal, delta = 1;
  int iter = 0;
  Eigen::VectorXi b;
  while (std::abs(2 * delta) > 0.01 && iter < 10) {
    ++iter;
    b = alloc(target);
    delta = (goal - b.cast<double>().mean()) / 2;
    target += delta;
  }
  return b;
}

// The largest integer total <= R that the 2/3 rule reaches at any target t fed to it:
// the total only changes where some channel's rounded value does, so evaluate it on both
// sides of every such point. x_i(t) = fractional_i - goal + t.
long long best_rule_total(const Eigen::VectorXd& a, const Eigen::VectorXd& frac, const params& p, long long R) {
  const Eigen::Index n = a.size();
  auto rule_total = [&](double t) {
    long long s = 0;
    for (Eigen::Index i = 0; i < n; ++i) {
      int m = p.min_bits;
      if (a[i] > 0) {
        const double x = frac[i] - p.target_bits + t;
        const double r = p.rounding == bit_rounding::round ? std::floor(x + 0.5) : std::ceil(x - 1e-9);
        m = static_cast<int>(std::min<double>(std::max<double>(r, p.min_bits), p.max_bits));
      }
      s += m;
    }
    return s;
  };
  long long best = static_cast<long long>(n) * p.min_bits;
  const double off = p.rounding == bit_rounding::round ? -0.5 : 1e-9;
  for (Eigen::Index i = 0; i < n; ++i) {
    if (!(a[i] > 0)) continue;
    for (int k = p.min_bits; k <= p.max_bits; ++k) {
      const double t = k + off - (frac[i] - p.target_bits);  // channel i moves to k here
      for (double e : {-1e-12, 1e-12}) {
        const long long s = rule_total(t + e * std::max(1.0, std::abs(t)));
        if (s <= R) best = std::max(best, s);
      }
    }
  }
  return best;
}

}  // namespace

TEST_CASE("bit_allocator: paper's fractional rule satisfies its Lagrange conditions") {
  std::mt19937_64 g(1001);
  std::uniform_real_distribution<double> uni(0, 1);
  for (int rep = 0; rep < 200; ++rep) {
    const Eigen::Index n = 1 + static_cast<Eigen::Index>(uni(g) * 40);
    const Eigen::VectorXd a = random_ranges(g, n, rep);
    params p;
    p.target_bits = 8 * uni(g);
    const bit_allocation r = bit_allocator::paper(a, p);
    REQUIRE(r.fractional.size() == n);
    // Bins budget: sum 2^M_i = B = n 2^target.
    double bins = 0;
    for (Eigen::Index i = 0; i < n; ++i) bins += std::exp2(r.fractional[i]);
    CHECK(rel_close(bins, n * std::exp2(p.target_bits), 1e-9));
    // Equal multipliers: d/dM (a^2 4^-M) / d/dM 2^M = -2 a^2 8^-M must not depend on i.
    const double lambda0 = -2 * std::exp(2 * std::log(a[0]) - 3 * r.fractional[0] * std::log(2.0));
    for (Eigen::Index i = 1; i < n; ++i) {
      const double li = -2 * std::exp(2 * std::log(a[i]) - 3 * r.fractional[i] * std::log(2.0));
      CHECK(rel_close(li, lambda0, 1e-9));
    }
    // The closed form, computed directly.
    const double s = a.array().pow(2.0 / 3.0).sum();
    for (Eigen::Index i = 0; i < n; ++i)
      CHECK(std::abs(r.fractional[i] - std::log2(n * std::exp2(p.target_bits) * std::pow(a[i], 2.0 / 3.0) / s)) <
            1e-9);
    // Float input gives the same rule.
    const Eigen::VectorXf af = a.cast<float>();
    const bit_allocation rf = bit_allocator::paper(af, p);
    for (Eigen::Index i = 0; i < n; ++i) CHECK(std::abs(rf.fractional[i] - r.fractional[i]) < 1e-5);
  }
}

TEST_CASE("bit_allocator: exact equals brute force on small problems") {
  std::mt19937_64 g(2002);
  std::uniform_real_distribution<double> uni(0, 1);
  const double tie_values[] = {0.0, 0.5, 1.0, 1.0, 2.0, 4.0, 3.0};
  int cases = 0, unique = 0, with_zero = 0, with_tie = 0, odd_bounds = 0;
  for (int rep = 0; rep < 600; ++rep) {
    const int n = 1 + static_cast<int>(uni(g) * 6);
    int lo = 0, hi = 8;
    if (rep % 3 != 0) {  // bounds other than 0/8
      lo = static_cast<int>(uni(g) * 4);
      hi = std::min(16, lo + 1 + static_cast<int>(uni(g) * 7));
      if (lo != 0 || hi != 8) ++odd_bounds;
    }
    Eigen::VectorXd a(n);
    const int mode = rep % 4;
    for (int i = 0; i < n; ++i) {
      if (mode == 0) a[i] = std::exp(1.5 * (uni(g) - 0.5) * 4);
      else if (mode == 1) a[i] = tie_values[static_cast<int>(uni(g) * 7)];  // ties, powers of two, zeros
      else if (mode == 2) a[i] = uni(g) < 0.3 ? 0.0 : uni(g) * 10;
      else a[i] = std::pow(1.0 - uni(g), -1.5);
    }
    // Targets 2..6 (integer and not) when the bounds allow, else anywhere in [lo, hi].
    const double tlo = std::max<double>(2, lo), thi = std::min<double>(6, hi);
    double target = tlo <= thi ? tlo + uni(g) * (thi - tlo) : lo + uni(g) * (hi - lo);
    if (rep % 2 == 0) target = std::min<double>(hi, std::max<double>(lo, std::round(target)));
    params p;
    p.target_bits = target;
    p.min_bits = lo;
    p.max_bits = hi;
    const bit_allocation r = bit_allocator::exact(a, p);
    const long long R = static_cast<long long>(std::floor(n * target + 1e-9));
    const brute_result br = brute_force(a, lo, hi, R);
    ++cases;
    with_zero += (a.array() == 0).any();
    for (int i = 0; i < n; ++i)
      for (int j = i + 1; j < n; ++j) with_tie += a[i] == a[j] && a[i] > 0;
    REQUIRE(br.count >= 1);
    CHECK(total(r.bits) == R);
    CHECK(r.bits.minCoeff() >= lo);
    CHECK(r.bits.maxCoeff() <= hi);
    CHECK(rel_close(r.modelled_mse, br.best, 1e-12));
    CHECK(rel_close(naive_mse(a, r.bits), br.best, 1e-12));
    CHECK(r.mean_bits == doctest::Approx(static_cast<double>(R) / n).epsilon(1e-15));
    if (br.count == 1) {
      ++unique;
      CHECK(r.bits == br.arg);
    }
  }
  CHECK(unique > 100);
  CHECK(with_zero > 50);
  CHECK(with_tie > 50);
  CHECK(odd_bounds > 300);
  CHECK(cases == 600);
}

TEST_CASE("bit_allocator: exact's fractional is the water-filled total-bits optimum") {
  std::mt19937_64 g(3003);
  std::uniform_real_distribution<double> uni(0, 1);
  for (int rep = 0; rep < 300; ++rep) {
    const Eigen::Index n = 1 + static_cast<Eigen::Index>(uni(g) * 30);
    Eigen::VectorXd a = random_ranges(g, n, rep);
    if (rep % 4 == 0) a[0] = 0;
    params p;
    p.min_bits = static_cast<int>(uni(g) * 4);
    p.max_bits = p.min_bits + static_cast<int>(uni(g) * 9);
    p.target_bits = p.min_bits + uni(g) * (p.max_bits - p.min_bits);
    const bit_allocation r = bit_allocator::exact(a, p);
    const double R = std::floor(n * p.target_bits + 1e-9);
    const Eigen::VectorXd& F = r.fractional;
    CHECK(std::abs(F.sum() - R) < 1e-9 * std::max(1.0, R));
    CHECK(F.minCoeff() >= p.min_bits - 1e-12);
    CHECK(F.maxCoeff() <= p.max_bits + 1e-12);
    // KKT: a common nu = log2 a_i - F_i on free channels; clamped ones on the right side.
    double nu = std::numeric_limits<double>::quiet_NaN();
    for (Eigen::Index i = 0; i < n; ++i)
      if (a[i] > 0 && F[i] > p.min_bits + 1e-9 && F[i] < p.max_bits - 1e-9) nu = std::log2(a[i]) - F[i];
    if (std::isnan(nu)) continue;
    for (Eigen::Index i = 0; i < n; ++i) {
      if (a[i] == 0) continue;
      const double d = std::log2(a[i]) - nu;  // the unclamped optimum
      CHECK(std::abs(F[i] - std::min<double>(std::max<double>(d, p.min_bits), p.max_bits)) < 1e-9);
    }
    if (a[0] == 0 && nu == nu) CHECK(F[0] == p.min_bits);
  }
  // Unclamped, all positive: M_i = target + log2 a_i - mean_j log2 a_j.
  Eigen::VectorXd a(4);
  a << 1.0, 1.5, 2.0, 3.0;
  params p;
  p.target_bits = 4;
  const bit_allocation r = bit_allocator::exact(a, p);
  const double ml = a.array().log().mean() / std::log(2.0);
  for (int i = 0; i < 4; ++i) CHECK(r.fractional[i] == doctest::Approx(4 + std::log2(a[i]) - ml).epsilon(1e-12));
}

TEST_CASE("bit_allocator: exact tie-breaking and zero channels") {
  Eigen::VectorXd a = Eigen::VectorXd::Ones(4);
  params p;
  p.target_bits = 4.5;  // budget 18 bits: the two extra bits go to the lowest indices
  bit_allocation r = bit_allocator::exact(a, p);
  CHECK(r.bits == (Eigen::VectorXi(4) << 5, 5, 4, 4).finished());
  CHECK(r.mean_bits == 4.5);

  Eigen::VectorXd z(3);
  z << 0.0, 1.0, 0.0;
  p.target_bits = 2;  // budget 6 bits: all to the nonzero channel
  r = bit_allocator::exact(z, p);
  CHECK(r.bits == (Eigen::VectorXi(3) << 0, 6, 0).finished());
  CHECK(r.fractional == (Eigen::VectorXd(3) << 0.0, 6.0, 0.0).finished());
  p.target_bits = 6;  // budget 18 bits: channel 1 saturates at 8, the rest fills zeros from index 0
  r = bit_allocator::exact(z, p);
  CHECK(r.bits == (Eigen::VectorXi(3) << 8, 8, 2).finished());
  CHECK(r.fractional == (Eigen::VectorXd(3) << 5.0, 8.0, 5.0).finished());
  CHECK(r.modelled_mse == doctest::Approx(1.0 / (3 * 65536.0)));
  p.min_bits = 1;
  p.target_bits = 1;
  r = bit_allocator::exact(z, p);
  CHECK(r.bits == Eigen::VectorXi::Constant(3, 1));

  // Exact ties across powers of two: a = (1, 2) -> gains equal when M_1 = M_0 + 1.
  Eigen::VectorXd t(2);
  t << 1.0, 2.0;
  p = params{};
  p.target_bits = 3.5;  // 7 bits: optimum (3, 4)
  r = bit_allocator::exact(t, p);
  CHECK(r.bits == (Eigen::VectorXi(2) << 3, 4).finished());
  p.target_bits = 4;  // 8 bits: (4, 4) and (3, 5) tie; the greedy gives the extra bit to index 0
  r = bit_allocator::exact(t, p);
  CHECK(r.bits == (Eigen::VectorXi(2) << 4, 4).finished());

  // Tiny and huge ranges: no underflow in the gains.
  Eigen::VectorXd w(3);
  w << 1e-300, 1e-290, 1e300;
  p.target_bits = 8;
  r = bit_allocator::exact(w, p);
  CHECK(r.bits == Eigen::VectorXi::Constant(3, 8));
  p.target_bits = 3;
  r = bit_allocator::exact(w, p);
  CHECK(r.bits == (Eigen::VectorXi(3) << 0, 1, 8).finished());
}

TEST_CASE("bit_allocator: exact is never worse than paper within the same budget") {
  std::mt19937_64 g(4004);
  std::uniform_real_distribution<double> uni(0, 1);
  int compared = 0;
  int bis_below = 0, bis_exact = 0;                  // bisection: never above (checked)
  int ref_above = 0, ref_below = 0, ref_exact = 0;   // reference re-tuning
  int strictly_better = 0;
  const int reps = 2000;
  for (int rep = 0; rep < reps; ++rep) {
    const Eigen::Index n = 1 + static_cast<Eigen::Index>(uni(g) * 128);
    const Eigen::VectorXd a = random_ranges(g, n, rep);
    params p;
    p.target_bits = rep % 2 ? 2 + std::round(uni(g) * 4) : 2 + uni(g) * 4;
    p.rounding = (rep / 2) % 2 ? bit_rounding::ceil : bit_rounding::round;
    const long long R = static_cast<long long>(std::floor(n * p.target_bits + 1e-9));
    const bit_allocation ex = bit_allocator::exact(a, p);
    CHECK(total(ex.bits) == R);

    const bit_allocation pa = bit_allocator::paper(a, p);
    const long long tp = total(pa.bits);
    CHECK(tp <= R);  // bisection never exceeds the budget
    (tp == R ? bis_exact : bis_below)++;
    CHECK(ex.modelled_mse <= pa.modelled_mse * (1 + 1e-12));
    if (rep < 400) CHECK(tp == best_rule_total(a, pa.fractional, p, R));
    strictly_better += ex.modelled_mse < pa.modelled_mse * (1 - 1e-12);
    ++compared;

    params q = p;
    q.retune = bit_retune::reference;
    const bit_allocation rf = bit_allocator::paper(a, q);
    const long long tr = total(rf.bits);
    if (tr > R) {
      ++ref_above;
    } else {
      (tr == R ? ref_exact : ref_below)++;
      CHECK(ex.modelled_mse <= rf.modelled_mse * (1 + 1e-12));
      ++compared;
    }
  }
  MESSAGE("paper (bisection): on budget " << bis_exact << ", below " << bis_below << " of " << reps
                                          << "; paper (reference re-tune): on budget " << ref_exact << ", below "
                                          << ref_below << ", above " << ref_above << "; exact strictly better in "
                                          << strictly_better << " bisection cases");
  CHECK(compared > reps);
}

TEST_CASE("bit_allocator: paper reference re-tuning matches a literal port") {
  std::mt19937_64 g(5005);
  std::uniform_real_distribution<double> uni(0, 1);
  int same = 0;
  const int reps = 500;
  for (int rep = 0; rep < reps; ++rep) {
    const Eigen::Index n = 1 + static_cast<Eigen::Index>(uni(g) * 64);
    const Eigen::VectorXd a = random_ranges(g, n, rep);
    params p;
    p.target_bits = 2 + uni(g) * 4;
    p.rounding = rep % 2 ? bit_rounding::ceil : bit_rounding::round;
    p.retune = bit_retune::reference;
    const bit_allocation r = bit_allocator::paper(a, p);
    same += r.bits == reference_alloc(a, p.target_bits, rep % 2 == 0, 0, 8);
    // retune_iterations = 1 is the plain rule at the requested target (get_bits_alloc).
    p.retune_iterations = 1;
    const bit_allocation r1 = bit_allocator::paper(a, p);
    for (Eigen::Index i = 0; i < n; ++i) {
      const double x = r1.fractional[i];
      const double m = rep % 2 ? std::ceil(x - 1e-9) : std::floor(x + 0.5);
      CHECK(r1.bits[i] == static_cast<int>(std::min(8.0, std::max(0.0, m))));
    }
  }
  // Rounding-point coincidences (different floating-point paths) are allowed to differ, rarely.
  CHECK(same >= reps - 2);
}

TEST_CASE("bit_allocator: mean bits, equal ranges, bounds and modelled_mse") {
  std::mt19937_64 g(6006);
  std::uniform_real_distribution<double> uni(0, 1);
  // exact(): mean_bits is the target whenever n * target is an integer.
  for (int rep = 0; rep < 200; ++rep) {
    const Eigen::Index n = 1 + static_cast<Eigen::Index>(uni(g) * 50);
    const Eigen::VectorXd a = random_ranges(g, n, rep);
    params p;
    p.min_bits = static_cast<int>(uni(g) * 3);
    p.max_bits = p.min_bits + 1 + static_cast<int>(uni(g) * 10);
    p.target_bits = p.min_bits + std::round(uni(g) * (p.max_bits - p.min_bits));
    bit_allocation r = bit_allocator::exact(a, p);
    CHECK(r.mean_bits == p.target_bits);
    CHECK(r.bits.minCoeff() >= p.min_bits);
    CHECK(r.bits.maxCoeff() <= p.max_bits);
    CHECK(r.modelled_mse == doctest::Approx(naive_mse(a, r.bits)).epsilon(1e-12));
    // A non-integer n * target rounds the budget down.
    p.target_bits = p.min_bits + 0.37 * (p.max_bits - p.min_bits);
    r = bit_allocator::exact(a, p);
    CHECK(total(r.bits) == static_cast<long long>(std::floor(n * p.target_bits + 1e-9)));
    CHECK(r.mean_bits <= p.target_bits);
    CHECK(r.mean_bits > p.target_bits - 1.0 / n);
    // paper(): bits inside the bounds, mean never above the goal with bisection.
    for (bit_rounding rd : {bit_rounding::round, bit_rounding::ceil}) {
      p.rounding = rd;
      r = bit_allocator::paper(a, p);
      CHECK(r.bits.minCoeff() >= p.min_bits);
      CHECK(r.bits.maxCoeff() <= p.max_bits);
      CHECK(r.mean_bits <= p.target_bits + 1e-12);
      CHECK(r.mean_bits == doctest::Approx(total(r.bits) / static_cast<double>(n)));
      CHECK(r.modelled_mse == doctest::Approx(naive_mse(a, r.bits)).epsilon(1e-12));
    }
  }
  // paper(): all-equal ranges give the target everywhere for integer targets.
  for (int t = 0; t <= 8; ++t)
    for (Eigen::Index n : {1, 3, 7, 64})
      for (double v : {0.1, 1.0, 3.7})
        for (bit_rounding rd : {bit_rounding::round, bit_rounding::ceil})
          for (bit_retune rt : {bit_retune::bisection, bit_retune::reference}) {
            params p;
            p.target_bits = t;
            p.rounding = rd;
            p.retune = rt;
            const bit_allocation r = bit_allocator::paper(Eigen::VectorXd::Constant(n, v), p);
            CHECK(r.bits == Eigen::VectorXi::Constant(n, t));
            CHECK(r.mean_bits == t);
            const bit_allocation e = bit_allocator::exact(Eigen::VectorXf::Constant(n, static_cast<float>(v)), p);
            CHECK(e.bits == Eigen::VectorXi::Constant(n, t));
          }
  // paper(): zero channels are clamped to min_bits; fractional is min_bits, never -inf.
  {
    Eigen::VectorXd a(3);
    a << 0.0, 1.0, 8.0;
    params p;
    p.min_bits = 2;
    const bit_allocation r = bit_allocator::paper(a, p);
    CHECK(r.bits[0] == 2);
    CHECK(r.fractional[0] == 2.0);
    CHECK(std::isfinite(r.fractional.sum()));
    const bit_allocation z = bit_allocator::paper(Eigen::VectorXd::Zero(4), p);
    CHECK(z.bits == Eigen::VectorXi::Constant(4, 2));
    CHECK(z.modelled_mse == 0);
  }
  // modelled_mse against the naive loop, float and double, row and column vectors.
  for (int rep = 0; rep < 50; ++rep) {
    const Eigen::Index n = 1 + static_cast<Eigen::Index>(uni(g) * 20);
    const Eigen::VectorXd a = random_ranges(g, n, rep);
    Eigen::VectorXi b(n);
    for (Eigen::Index i = 0; i < n; ++i) b[i] = static_cast<int>(uni(g) * 17);
    CHECK(bit_allocator::modelled_mse(a, b) == doctest::Approx(naive_mse(a, b)).epsilon(1e-13));
    CHECK(bit_allocator::modelled_mse(a.transpose(), b) == doctest::Approx(naive_mse(a, b)).epsilon(1e-13));
    const Eigen::VectorXf af = a.cast<float>();
    CHECK(bit_allocator::modelled_mse(af, b) ==
          doctest::Approx(naive_mse(af.cast<double>(), b)).epsilon(1e-13));
  }
}

TEST_CASE("bit_allocator: errors name the argument and value") {
  const Eigen::VectorXd ok = Eigen::VectorXd::Ones(3);
  const double nan = std::numeric_limits<double>::quiet_NaN();
  const double inf = std::numeric_limits<double>::infinity();
  using Contains = doctest::Contains;
  auto both = [&](const Eigen::VectorXd& a, const params& p, const char* msg) {
    CHECK_THROWS_WITH_AS(bit_allocator::paper(a, p), Contains((std::string("ptq::bit_allocator::paper: ") + msg).c_str()),
                         ptq::error);
    CHECK_THROWS_WITH_AS(bit_allocator::exact(a, p), Contains((std::string("ptq::bit_allocator::exact: ") + msg).c_str()),
                         ptq::error);
  };
  both(Eigen::VectorXd(), params{}, "ranges.size() = 0");
  both((Eigen::VectorXd(3) << 1.0, -2.0, 1.0).finished(), params{}, "ranges[1] = -2 is negative");
  both((Eigen::VectorXd(3) << 1.0, 1.0, nan).finished(), params{}, "ranges[2] = nan is not finite");
  both((Eigen::VectorXd(2) << inf, 1.0).finished(), params{}, "ranges[0] = inf is not finite");
  CHECK_THROWS_WITH_AS(bit_allocator::exact(Eigen::MatrixXd::Ones(2, 2), params{}),
                       Contains("ptq::bit_allocator::exact: ranges is 2x2, not a vector"), ptq::error);
  params p;
  p.min_bits = -1;
  both(ok, p, "min_bits = -1 is outside [0, 16]");
  p = params{};
  p.max_bits = 17;
  both(ok, p, "max_bits = 17 is outside [0, 16]");
  p = params{};
  p.min_bits = 5;
  p.max_bits = 3;
  p.target_bits = 4;
  both(ok, p, "min_bits = 5 is greater than max_bits = 3");
  p = params{};
  p.target_bits = nan;
  both(ok, p, "target_bits = nan is not finite");
  p.target_bits = 9;
  both(ok, p, "target_bits = 9 is outside [min_bits, max_bits] = [0, 8] (infeasible budget)");
  p.min_bits = 2;
  p.target_bits = 1.5;
  both(ok, p, "target_bits = 1.5 is outside [min_bits, max_bits] = [2, 8] (infeasible budget)");
  p = params{};
  p.retune_iterations = -1;
  both(ok, p, "retune_iterations = -1 is negative");
  CHECK_THROWS_WITH_AS(bit_allocator::modelled_mse(ok, Eigen::VectorXi::Constant(2, 4)),
                       Contains("ptq::bit_allocator::modelled_mse: bits.size() = 2 does not match ranges.size() = 3"),
                       ptq::error);
  CHECK_THROWS_WITH_AS(bit_allocator::modelled_mse(ok, (Eigen::VectorXi(3) << 1, 17, 2).finished()),
                       Contains("ptq::bit_allocator::modelled_mse: bits[1] = 17 is outside [0, 16]"), ptq::error);
  CHECK_THROWS_WITH_AS(bit_allocator::modelled_mse((Eigen::VectorXd(1) << -1.0).finished(), Eigen::VectorXi::Zero(1)),
                       Contains("ptq::bit_allocator::modelled_mse: ranges[0] = -1 is negative"), ptq::error);
  // Float input is checked the same way.
  CHECK_THROWS_WITH_AS(bit_allocator::paper((Eigen::VectorXf(2) << 1.0f, -0.5f).finished()),
                       Contains("ptq::bit_allocator::paper: ranges[1] = -0.5 is negative"), ptq::error);
}

}  // namespace ptq_test_bit_allocator
