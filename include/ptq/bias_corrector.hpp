// bias_corrector.hpp: per-output-channel bias (mean) and variance correction of quantized weights.
//
// The method (Banner et al. 2019, docs/method.md section 3). Quantization shifts the mean
// and shrinks the spread of each output channel's weights, which biases that
// channel's output. Weights are seen as a K x N row view, one row per output channel
// (conv KCRS weights: K x (C*R*S); linear [K, C]: K x C), W the float weights and Wq
// their quantized (fake-quantized) values. Per output channel c, in double:
//
//   mu_c = E[W_c] - E[Wq_c]
//   xi_c = ||W_c - E[W_c]||_2 / ||Wq_c - E[Wq_c]||_2     (variance correction only)
//
// The reference implementation (quantize_model in submission2019/cnn-quantization)
// corrects the variance first, then the mean:
//
//   Wq <- (Wq - E[Wq]) * xi + E[Wq]        (optional: params.variance)
//   Wq <- Wq - E[Wq] + E[W]
//
// which is one affine map per channel, the fold form used here:
//
//   corrected = xi_c * Wq + beta_c,   beta_c = E[W_c] - xi_c * E[Wq_c]
//
// After it every channel's mean equals E[W_c] and, with the variance correction, its
// norm about the mean equals ||W_c - E[W_c]||. (The paper writes xi (Wq + mu), which
// scales the restored mean by xi; the reference's order above keeps it exact.)
// Without the variance correction xi_c = 1. When the quantized channel has zero
// spread (||Wq_c - E[Wq_c]|| = 0, e.g. a 0-bit channel) no ratio exists: xi_c = 1 and
// only the mean is corrected.
//
// For true integer inference do not apply the correction to the weights (it moves
// them off the integer grid): fold it. With Wq_c = s_c (q_c - z_c),
//   y_c = sum_j corrected_cj x_j = (xi_c s_c) * sum_j (q_cj - z_c) x_j + beta_c * sum_j x_j
// so xi_c goes into the channel's scale and beta_c * sum(x) into its bias
// (mu_c * sum(x) when xi_c = 1). bias_correction holds mu, xi and beta for that.
//
// Sums, means and norms are accumulated in double (two passes: mean, then the sum
// of squares about it); apply() computes xi * Wq + beta in double and rounds once to T.
//
// Errors (ptq::error naming function, argument and value): W and Wq of different
// shapes, empty weights, NaN / Inf in W or Wq, a correction whose vectors do not
// have one entry per row of Wq or are not finite, corrected values beyond the range of
// T (huge weights whose spread the variance correction restores). Nothing is modified
// on error.
#pragma once

#include <Eigen/Core>
#include <cmath>
#include <limits>
#include <type_traits>

#include "config.hpp"
#include "error.hpp"

namespace ptq {

// Per output channel (row) c: corrected = xi[c] * Wq + beta[c].
struct bias_correction {
  Eigen::VectorXd mu;    // E[W_c] - E[Wq_c]
  Eigen::VectorXd xi;    // ||W_c - E W_c|| / ||Wq_c - E Wq_c|| (1 without variance correction or zero spread)
  Eigen::VectorXd beta;  // E[W_c] - xi_c E[Wq_c]

  index channels() const { return mu.size(); }
};

namespace detail {
// Row r of wq, whose values lie in [lo, hi], corrected by c must stay within T's range:
// xi * wq + beta is affine in wq, so its extremes over the row are at lo and hi.
// (Shared with the Thrust layer, which reduces lo and hi on the device.)
template <class T>
void check_corrected_row(const bias_correction& c, index r, double lo, double hi, const char* where) {
  const double big = static_cast<double>(std::numeric_limits<T>::max());
  for (const double q : {lo, hi}) {
    const double v = q * c.xi[r] + c.beta[r];
    require(std::abs(v) <= big, where, "row ", r, ": the corrected weight ", v, " (xi = ", c.xi[r],
            ", beta = ", c.beta[r], ") is outside the range of the weights' type");
  }
}
}  // namespace detail

struct bias_corrector_params {
  bool variance = false;  // also correct the norm about the mean (the reference's -vcw)
};

struct bias_corrector {
  using params = bias_corrector_params;

  // The correction of Wq towards W (both K x N, one row per output channel).
  template <class DW, class DQ>
  static bias_correction compute(const Eigen::DenseBase<DW>& w, const Eigen::DenseBase<DQ>& wq,
                                 const params& p = {}) {
    static constexpr const char* where = "ptq::bias_corrector::compute";
    check_pair(w, wq, where);
    return compute_unchecked(w, wq, p, where);
  }

  // wq <- xi * wq + beta, row by row.
  template <class D>
  static void apply(const bias_correction& c, Eigen::DenseBase<D>& wq) {
    static constexpr const char* where = "ptq::bias_corrector::apply";
    check_correction(c, wq.rows(), where);
    require_nonempty(wq.rows(), wq.cols(), where, "wq");
    check_finite(wq, where, "wq");
    check_fits(c, wq, where);
    apply_unchecked(c, wq);
  }
  template <class D>
  static void apply(const bias_correction& c, Eigen::DenseBase<D>&& wq) {
    apply(c, wq);
  }

  // compute(w, wq, p), then apply it to wq; returns the correction.
  template <class DW, class DQ>
  static bias_correction correct(const Eigen::DenseBase<DW>& w, Eigen::DenseBase<DQ>& wq, const params& p = {}) {
    static constexpr const char* where = "ptq::bias_corrector::correct";
    check_pair(w, wq, where);
    bias_correction c = compute_unchecked(w, wq, p, where);
    check_fits(c, wq, where);
    apply_unchecked(c, wq);
    return c;
  }
  template <class DW, class DQ>
  static bias_correction correct(const Eigen::DenseBase<DW>& w, Eigen::DenseBase<DQ>&& wq, const params& p = {}) {
    return correct(w, wq, p);
  }

 private:
  static void require_nonempty(index rows, index cols, const char* where, const char* name) {
    detail::require(rows > 0 && cols > 0, where, name, " is empty (", rows, " x ", cols, ")");
  }

  template <class D>
  static void check_finite(const Eigen::DenseBase<D>& x, const char* where, const char* name) {
    using T = typename D::Scalar;
    static_assert(std::is_floating_point<T>::value, "bias_corrector: weights must be float or double");
    for (index r = 0; r < x.rows(); ++r) {
      // sum(x * 0) is 0 iff the row is finite (vectorized); then locate the culprit.
      if ((x.derived().row(r).array() * T(0)).sum() == T(0)) continue;
      for (index j = 0; j < x.cols(); ++j) {
        const T v = x.derived().coeff(r, j);
        if (!std::isfinite(v)) detail::fail(where, name, "(", r, ", ", j, ") = ", v, " is not finite");
      }
    }
  }

  template <class DW, class DQ>
  static void check_pair(const Eigen::DenseBase<DW>& w, const Eigen::DenseBase<DQ>& wq, const char* where) {
    detail::require(w.rows() == wq.rows() && w.cols() == wq.cols(), where, "wq is ", wq.rows(), " x ", wq.cols(),
                    " but w is ", w.rows(), " x ", w.cols());
    require_nonempty(w.rows(), w.cols(), where, "w");
    check_finite(w, where, "w");
    check_finite(wq, where, "wq");
  }

  static void check_correction(const bias_correction& c, index rows, const char* where) {
    detail::require(c.mu.size() == rows, where, "correction.mu.size() = ", c.mu.size(), " does not match the ",
                    rows, " rows of wq");
    detail::require(c.xi.size() == rows, where, "correction.xi.size() = ", c.xi.size(), " does not match the ",
                    rows, " rows of wq");
    detail::require(c.beta.size() == rows, where, "correction.beta.size() = ", c.beta.size(),
                    " does not match the ", rows, " rows of wq");
    for (index r = 0; r < rows; ++r) {
      detail::require(std::isfinite(c.xi[r]), where, "correction.xi[", r, "] = ", c.xi[r], " is not finite");
      detail::require(std::isfinite(c.beta[r]), where, "correction.beta[", r, "] = ", c.beta[r], " is not finite");
    }
  }

  template <class DW, class DQ>
  static bias_correction compute_unchecked(const Eigen::DenseBase<DW>& w, const Eigen::DenseBase<DQ>& wq,
                                           const params& p, const char* where) {
    const index K = w.rows();
    const double n = static_cast<double>(w.cols());
    bias_correction c;
    c.mu.resize(K);
    c.xi.resize(K);
    c.beta.resize(K);
    for (index r = 0; r < K; ++r) {
      const auto wrow = w.derived().row(r);
      const auto qrow = wq.derived().row(r);
      const auto wr = wrow.array().template cast<double>();
      const auto qr = qrow.array().template cast<double>();
      const double mw = wr.sum() / n, mq = qr.sum() / n;
      double xi = 1.0;
      if (p.variance) {
        const double sw = std::sqrt((wr - mw).square().sum());
        const double sq = std::sqrt((qr - mq).square().sum());
        // A constant quantized row has zero spread; in double its computed spread is
        // rounding noise of the mean (not 0), so the test is on the values themselves.
        if (sq > 0 && qr.maxCoeff() != qr.minCoeff()) xi = sw / sq;
      }
      detail::require(std::isfinite(mw) && std::isfinite(mq) && std::isfinite(xi), where, "row ", r,
                      ": the mean or spread of w or wq is not finite in double (overflow)");
      c.mu[r] = mw - mq;
      c.xi[r] = xi;
      c.beta[r] = mw - xi * mq;
    }
    return c;
  }

  template <class D>
  static void check_fits(const bias_correction& c, const Eigen::DenseBase<D>& wq, const char* where) {
    for (index r = 0; r < wq.rows(); ++r) {
      const auto row = wq.derived().row(r);
      detail::check_corrected_row<typename D::Scalar>(c, r, row.minCoeff(), row.maxCoeff(), where);
    }
  }

  template <class D>
  static void apply_unchecked(const bias_correction& c, Eigen::DenseBase<D>& wq) {
    using T = typename D::Scalar;
    for (index r = 0; r < wq.rows(); ++r) {
      auto row = wq.derived().row(r);
      row.array() = (row.array().template cast<double>() * c.xi[r] + c.beta[r]).template cast<T>();
    }
  }
};

}  // namespace ptq
