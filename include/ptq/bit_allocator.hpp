// bit_allocator.hpp: per-channel bit widths that minimize the modelled quantization MSE.
//
// Channel i has a range a_i >= 0 (the caller chooses what a_i is: the min/max
// range, sigma, or the Laplace b; only ratios between channels matter) and is
// given M_i bits. Its modelled quantization noise is a_i^2 / (3 * 4^M_i), so the
// modelled MSE of an allocation is
//
//     mse(M) = sum_i a_i^2 / (3 * 4^M_i).
//
// Two budgets, two solutions (docs/method.md section 2):
//
// paper(): budget on the number of bins, sum_i 2^M_i = B = n * 2^target.
//   Lagrangian  sum_i a_i^2 4^-M_i / 3 + lambda (sum_i 2^M_i - B);
//   d/dM_i = 0: (2 ln2 / 3) a_i^2 4^-M_i = lambda ln2 2^M_i, i.e. 8^M_i = 2 a_i^2 / (3 lambda),
//   so 2^M_i is proportional to a_i^(2/3) and the bins budget fixes the constant:
//
//       2^M_i = B * a_i^(2/3) / sum_j a_j^(2/3)                 (the "2/3 power rule")
//       M_i   = target + log2(n) + (2/3) log2(a_i) - log2(sum_j a_j^(2/3)).
//
//   Integerization follows the reference implementation (cnn-quantization,
//   get_bits_alloc / get_bits_alloc_fixed_target): M_i is rounded (round: to
//   nearest, an exact half goes up; ceil: up, where a value within 1e-9 above an
//   integer counts as that integer, so floating-point noise never costs a whole
//   bit), clamped to [min_bits, max_bits], and the target fed to the rule is
//   re-tuned so the mean integer width meets the goal. Two re-tuning modes:
//     bit_retune::bisection (default): the integer total sum_i M_i(t) is a
//       nondecreasing step function of the target t fed to the rule. We first
//       try t = goal; if its total is not already the budget R (defined below),
//       we bisect t between a bracket where the total fits (<= R) and one where
//       it does not, for at most retune_iterations steps (default 100; it stops
//       early once the total equals R or the bracket no longer shrinks in
//       double), and return the rule at the fitting end. The result never
//       exceeds the budget; it falls below it whenever the step function jumps
//       over R (several channels crossing a rounding point at the same t, or the
//       clamps), i.e. the rule itself cannot hit R exactly.
//     bit_retune::reference: the reference's damped fixed-point iteration,
//       t <- t + (goal - mean_bits(t)) / 2 starting at t = goal, at most
//       retune_iterations times (default 10, as in the reference), stopping when
//       |goal - mean_bits| <= 0.01; returns the last allocation evaluated. It can
//       end above or below the budget.
//   fractional holds the unclamped real M_i of the rule at the requested target
//   (not the re-tuned one).
//
// exact(): budget on the total number of bits stored, sum_i M_i = R, with
//   R = floor(n * target + 1e-9) (so a target whose n * target is not an integer
//   rounds the budget down; the 1e-9 absorbs floating-point noise in n * target),
//   min_bits <= M_i <= max_bits, integer.
//   Continuous Lagrangian  sum_i a_i^2 4^-M_i / 3 + lambda (sum_i M_i - R):
//   (2 ln2 / 3) a_i^2 4^-M_i = lambda, so 4^M_i is proportional to a_i^2, i.e.
//   2^M_i is proportional to a_i:  M_i = target + log2(a_i) - mean_j log2(a_j).
//   With the box constraints the KKT conditions give water-filling,
//   M_i = clamp(log2(a_i) - nu, min_bits, max_bits) with nu chosen so that
//   sum_i M_i = R; that is `fractional` (found exactly on the piecewise-linear sum).
//   The integer optimum is found greedily, and the greedy is exact: the cost of
//   channel i is c_i(M) = a_i^2 4^-M / 3, whose marginal gain
//   g_i(M) = c_i(M) - c_i(M + 1) = a_i^2 4^-M / 4 decreases in M (c_i is convex).
//   Every allocation is min_bits plus some increments, its cost is
//   sum_i c_i(min_bits) minus the gains of the increments taken, and since each
//   channel's gains decrease, the R - n*min_bits largest gains overall always form
//   a prefix per channel: taking them one by one from a max-heap (key a_i 2^-M_i,
//   compared exactly through frexp, so no underflow and exact ties) maximizes the
//   total gain. Equal gains: the lowest channel index goes first (any choice
//   among equal gains gives the same cost). O(n log n + (R - n min_bits) log n),
//   at most 16 n heap steps.
//
// Channels with a_i = 0 gain nothing from bits and get min_bits (their
// fractional is min_bits, never -inf). In exact() they only receive bits when
// every channel with a_i > 0 is already at max_bits and budget is left; the
// remainder then goes to zero channels, lowest index first (fractional: spread
// evenly), which leaves the MSE unchanged and keeps sum_i M_i = R. In paper() a
// zero channel's rule value is -inf, clamped to min_bits, as in the reference;
// when every a_i is 0 all channels get min_bits.
//
// Errors (ptq::error): empty or non-vector ranges, a negative/NaN/Inf a_i,
// min_bits or max_bits outside [0, 16], min_bits > max_bits, target_bits NaN/Inf
// or outside [min_bits, max_bits] (an infeasible budget: with the target inside
// the bounds n*min_bits <= R <= n*max_bits always holds), retune_iterations < 0;
// modelled_mse(): bits of the wrong size or outside [0, 16].
#pragma once

#include <Eigen/Core>
#include <algorithm>
#include <cmath>
#include <limits>
#include <queue>
#include <string>
#include <vector>

#include "config.hpp"
#include "error.hpp"

namespace ptq {

enum class bit_rounding { round, ceil };
enum class bit_retune { bisection, reference };

struct bit_allocation {
  Eigen::VectorXi bits;        // integer bits per channel, in [min_bits, max_bits]
  Eigen::VectorXd fractional;  // real-valued optimum before integerization (see above)
  double mean_bits = 0;        // mean of bits
  double modelled_mse = 0;     // sum_i a_i^2 / (3 * 4^bits_i)
};

namespace detail {

// Validated ranges as doubles plus the checked parameters.
struct bit_problem {
  Eigen::VectorXd a;
  index n = 0;
  long long budget = 0;  // R = floor(n * target + 1e-9)
};

template <class D>
Eigen::VectorXd bit_ranges(const Eigen::DenseBase<D>& ranges, const char* where) {
  const auto& r = ranges.derived();
  if (r.rows() != 1 && r.cols() != 1)
    fail(where, "ranges is ", r.rows(), "x", r.cols(), ", not a vector");
  const index n = r.size();
  if (n == 0) fail(where, "ranges.size() = 0, need at least one channel");
  Eigen::VectorXd a(n);
  const index rows = r.rows();
  for (index j = 0; j < r.cols(); ++j)
    for (index i = 0; i < rows; ++i) {
      const double v = static_cast<double>(r(i, j));
      const index k = i + j * rows;
      if (!std::isfinite(v)) fail(where, "ranges[", k, "] = ", v, " is not finite");
      if (v < 0) fail(where, "ranges[", k, "] = ", v, " is negative");
      a[k] = v;
    }
  return a;
}

}  // namespace detail

// Parameters of bit_allocator (declared outside it so that `const params& = {}` works on
// every compiler; use it as bit_allocator::params).
struct bit_allocator_params {
  double target_bits = 4;  // goal mean bit width, in [min_bits, max_bits]
  int min_bits = 0;        // in [0, 16]
  int max_bits = 8;        // in [min_bits, 16]
  bit_rounding rounding = bit_rounding::round;  // paper() only
  bit_retune retune = bit_retune::bisection;    // paper() only
  int retune_iterations = 0;  // paper() only; 0 = default (bisection 100, reference 10)
};

struct bit_allocator {
  using params = bit_allocator_params;

  // The 2/3 power rule with the reference integerization (header comment).
  template <class D>
  static bit_allocation paper(const Eigen::DenseBase<D>& ranges, const params& p = {}) {
    static constexpr const char* where = "ptq::bit_allocator::paper";
    const detail::bit_problem pb = check(ranges, p, where);
    const index n = pb.n;
    const Eigen::VectorXd& a = pb.a;
    const double amax = a.maxCoeff();

    // c_i = log2(n) + (2/3) log2(a_i) - log2(sum_j a_j^(2/3)), computed on a / amax
    // so nothing overflows; -inf for a zero channel, and for one whose a_i / amax
    // underflows to 0 (below 2^-1074: treated as a zero channel, `live` is false).
    const double ninf = -std::numeric_limits<double>::infinity();
    Eigen::VectorXd c = Eigen::VectorXd::Constant(n, ninf);
    bool any = amax > 0;
    if (any) {
      double s = 0;
      for (index i = 0; i < n; ++i) s += std::cbrt((a[i] / amax) * (a[i] / amax));
      const double shift = std::log2(static_cast<double>(n)) - std::log2(s);
      for (index i = 0; i < n; ++i)
        if (a[i] > 0) c[i] = shift + (2.0 / 3.0) * std::log2(a[i] / amax);
    }

    auto live = [&](index i) { return a[i] > 0 && c[i] > ninf; };
    bit_allocation out;
    out.fractional.resize(n);
    for (index i = 0; i < n; ++i)
      out.fractional[i] = live(i) ? p.target_bits + c[i] : static_cast<double>(p.min_bits);

    Eigen::VectorXi bits(n);
    // Integer bits of the rule at target t; returns their sum.
    auto rule = [&](double t, Eigen::VectorXi& b) {
      long long sum = 0;
      for (index i = 0; i < n; ++i) {
        int m = p.min_bits;
        if (live(i)) {
          const double x = t + c[i];
          const double r = p.rounding == bit_rounding::round ? std::floor(x + 0.5) : std::ceil(x - 1e-9);
          m = static_cast<int>(std::min<double>(std::max<double>(r, p.min_bits), p.max_bits));
        }
        b[i] = m;
        sum += m;
      }
      return sum;
    };

    const double goal = p.target_bits;
    if (p.retune == bit_retune::reference) {
      const int iters = p.retune_iterations > 0 ? p.retune_iterations : 10;
      double t = goal;
      for (int it = 0; it < iters; ++it) {
        const double mean = static_cast<double>(rule(t, bits)) / static_cast<double>(n);
        const double delta = (goal - mean) / 2;
        t += delta;
        if (std::abs(2 * delta) <= 0.01) break;
      }
    } else {
      const int iters = p.retune_iterations > 0 ? p.retune_iterations : 100;
      const long long R = pb.budget;
      long long sum = rule(goal, bits);
      if (any && sum != R) {
        // Bracket [lo, hi]: rule(lo) fits (sum <= R), rule(hi) does not.
        double cmin = std::numeric_limits<double>::infinity(), cmax = ninf;
        for (index i = 0; i < n; ++i)
          if (live(i)) cmin = std::min(cmin, c[i]), cmax = std::max(cmax, c[i]);
        double lo = goal, hi = goal;
        if (sum < R) {
          const double top = p.max_bits - cmin + 1;  // every a_i > 0 at max_bits
          if (rule(top, bits) <= R) lo = hi = top;   // saturated: nothing more to gain
          else hi = top;
        } else {
          lo = p.min_bits - cmax - 1;  // every channel at min_bits: fits, as min_bits <= goal
        }
        Eigen::VectorXi b(n);
        for (int it = 0; it < iters && lo < hi; ++it) {
          const double mid = lo + (hi - lo) / 2;
          if (mid <= lo || mid >= hi) break;
          const long long s = rule(mid, b);
          if (s <= R) {
            lo = mid;
            if (s == R) break;
          } else {
            hi = mid;
          }
        }
        rule(lo, bits);
      }
    }
    finish(a, bits, out);
    return out;
  }

  // The exact integer optimum under sum_i M_i = R (header comment).
  template <class D>
  static bit_allocation exact(const Eigen::DenseBase<D>& ranges, const params& p = {}) {
    static constexpr const char* where = "ptq::bit_allocator::exact";
    const detail::bit_problem pb = check(ranges, p, where);
    const index n = pb.n;
    const Eigen::VectorXd& a = pb.a;
    const int lo = p.min_bits, hi = p.max_bits;
    const long long R = pb.budget;

    bit_allocation out;
    out.fractional = water_fill(a, lo, hi, static_cast<double>(R));

    // Greedy on marginal gains; key of channel i at M bits: a_i 2^-M as (exponent, mantissa).
    struct key {
      bool positive;
      int exp;
      double mant;
      index i;
    };
    auto less = [](const key& x, const key& y) {  // x has lower priority than y
      if (x.positive != y.positive) return !x.positive;
      if (x.positive) {
        if (x.exp != y.exp) return x.exp < y.exp;
        if (x.mant != y.mant) return x.mant < y.mant;
      }
      return x.i > y.i;
    };
    Eigen::VectorXi bits = Eigen::VectorXi::Constant(n, lo);
    auto make = [&](index i) {
      key k{a[i] > 0, 0, 0.0, i};
      if (k.positive) {
        k.mant = std::frexp(a[i], &k.exp);
        k.exp -= bits[i];
      }
      return k;
    };
    std::vector<key> heap;
    heap.reserve(static_cast<std::size_t>(n));
    if (hi > lo)
      for (index i = 0; i < n; ++i) heap.push_back(make(i));
    std::priority_queue<key, std::vector<key>, decltype(less)> q(less, std::move(heap));
    for (long long left = R - static_cast<long long>(n) * lo; left > 0 && !q.empty(); --left) {
      const index i = q.top().i;
      q.pop();
      ++bits[i];
      if (bits[i] < hi) q.push(make(i));
    }
    finish(a, bits, out);
    return out;
  }

  // sum_i a_i^2 / (3 * 4^bits_i), bits_i in [0, 16].
  template <class D>
  static double modelled_mse(const Eigen::DenseBase<D>& ranges, const Eigen::VectorXi& bits) {
    static constexpr const char* where = "ptq::bit_allocator::modelled_mse";
    const Eigen::VectorXd a = detail::bit_ranges(ranges, where);
    if (bits.size() != a.size())
      detail::fail(where, "bits.size() = ", bits.size(), " does not match ranges.size() = ", a.size());
    for (index i = 0; i < bits.size(); ++i)
      if (bits[i] < 0 || bits[i] > 16)
        detail::fail(where, "bits[", i, "] = ", bits[i], " is outside [0, 16]");
    return mse(a, bits);
  }

 private:
  template <class D>
  static detail::bit_problem check(const Eigen::DenseBase<D>& ranges, const params& p, const char* where) {
    detail::bit_problem pb;
    pb.a = detail::bit_ranges(ranges, where);
    pb.n = pb.a.size();
    detail::check_bits(p.min_bits, 0, 16, where, "min_bits");
    detail::check_bits(p.max_bits, 0, 16, where, "max_bits");
    if (p.min_bits > p.max_bits)
      detail::fail(where, "min_bits = ", p.min_bits, " is greater than max_bits = ", p.max_bits);
    if (!std::isfinite(p.target_bits)) detail::fail(where, "target_bits = ", p.target_bits, " is not finite");
    if (p.target_bits < p.min_bits || p.target_bits > p.max_bits)
      detail::fail(where, "target_bits = ", p.target_bits, " is outside [min_bits, max_bits] = [", p.min_bits,
                   ", ", p.max_bits, "] (infeasible budget)");
    if (p.retune_iterations < 0)
      detail::fail(where, "retune_iterations = ", p.retune_iterations, " is negative");
    const double total = static_cast<double>(pb.n) * p.target_bits;
    pb.budget = static_cast<long long>(std::floor(total + 1e-9));
    const long long nlo = static_cast<long long>(pb.n) * p.min_bits, nhi = static_cast<long long>(pb.n) * p.max_bits;
    if (pb.budget < nlo || pb.budget > nhi)  // cannot happen once target_bits is inside the bounds
      detail::fail(where, "budget = ", pb.budget, " total bits is outside [", nlo, ", ", nhi, "] (infeasible budget)");
    return pb;
  }

  static double mse(const Eigen::VectorXd& a, const Eigen::VectorXi& bits) {
    double s = 0;
    for (index i = 0; i < a.size(); ++i) {
      const double x = std::ldexp(a[i], -bits[i]);  // a_i 2^-M_i, squared below
      s += x * x / 3;
    }
    return s;
  }

  static void finish(const Eigen::VectorXd& a, const Eigen::VectorXi& bits, bit_allocation& out) {
    out.bits = bits;
    long long sum = 0;
    for (index i = 0; i < bits.size(); ++i) sum += bits[i];
    out.mean_bits = static_cast<double>(sum) / static_cast<double>(bits.size());
    out.modelled_mse = mse(a, bits);
  }

  // M_i = clamp(log2 a_i - nu, lo, hi) with sum_i M_i = total; zero channels at lo,
  // or sharing the remainder evenly when every a_i > 0 sits at hi.
  static Eigen::VectorXd water_fill(const Eigen::VectorXd& a, int lo, int hi, double total) {
    const index n = a.size();
    Eigen::VectorXd m = Eigen::VectorXd::Constant(n, lo);
    std::vector<double> L;  // log2 a_i of positive channels
    std::vector<index> pos;
    for (index i = 0; i < n; ++i)
      if (a[i] > 0) L.push_back(std::log2(a[i])), pos.push_back(i);
    const index np = static_cast<index>(pos.size());
    const index nz = n - np;
    const double full = static_cast<double>(np) * hi + static_cast<double>(nz) * lo;
    if (lo == hi) return m;
    if (total >= full) {  // positive channels saturate; zero channels share the rest
      for (index i : pos) m[i] = hi;
      if (nz > 0) {
        const double z = lo + (total - full) / static_cast<double>(nz);
        for (index i = 0; i < n; ++i)
          if (!(a[i] > 0)) m[i] = z;
      }
      return m;
    }
    // f(nu) = sum_{positive} clamp(L_i - nu, lo, hi) + nz*lo is continuous, nonincreasing,
    // linear between the breakpoints L_i - hi and L_i - lo. Find nu with f(nu) = total.
    auto f = [&](double nu) {
      double s = static_cast<double>(nz) * lo;
      for (double l : L) s += std::min<double>(std::max<double>(l - nu, lo), hi);
      return s;
    };
    std::vector<double> bp;
    bp.reserve(2 * L.size());
    for (double l : L) bp.push_back(l - hi), bp.push_back(l - lo);
    std::sort(bp.begin(), bp.end());
    // f(bp.front()) = full > total >= n*lo = f(bp.back()); find k with f(bp[k]) > total >= f(bp[k+1]).
    std::size_t kl = 0, kh = bp.size() - 1;
    while (kh - kl > 1) {
      const std::size_t mid = kl + (kh - kl) / 2;
      if (f(bp[mid]) > total) kl = mid;
      else kh = mid;
    }
    const double fl = f(bp[kl]), fh = f(bp[kh]);
    double nu = bp[kh];
    if (fl > fh) nu = bp[kl] + (bp[kh] - bp[kl]) * ((fl - total) / (fl - fh));
    for (index k = 0; k < np; ++k) m[pos[k]] = std::min<double>(std::max<double>(L[k] - nu, lo), hi);
    return m;
  }
};

}  // namespace ptq
