// bias_corrector.hpp: bias (mean) and variance correction of quantized weights on Thrust (any backend).
//
// The core's correction (bias_corrector.hpp), per output channel c = row c of the
// K x N row view (conv KCRS: cols = C*R*S), in double:
//
//   mu_c   = E[W_c] - E[Wq_c]
//   xi_c   = ||W_c - E W_c|| / ||Wq_c - E Wq_c||   (params.variance; 1 otherwise or at zero spread)
//   beta_c = E[W_c] - xi_c E[Wq_c]
//   apply:   Wq <- T(double(Wq) * xi_c + beta_c)   (multiply, then add: two roundings, no FMA)
//
// The per-row sums and sums of squares are reduced on the policy (statistics.hpp's
// reductions with one channel per row); mu, xi and beta (K scalars) are formed on the
// host with the core's formulas; apply runs on the policy. Sums are taken in another
// order than the core's Eigen sums, so the correction agrees with the core to rounding
// and corrected weights to within an ulp of T.
//
// Errors (ptq::error, nothing modified): w and wq of different sizes, empty, cols not
// dividing the size, NaN / Inf in w or wq (checked in that order, first one named), a
// correction that does not have one finite entry per row.
#pragma once

#include <vector>

#include "../bias_corrector.hpp"
#include "statistics.hpp"

namespace ptq {
namespace device {
namespace impl {

template <class T>
struct correct_row {
  T* wq;
  const double* xi_beta;  // per row: xi, beta
  index cols;
  PTQ_HOST_DEVICE void operator()(index i) const {
    const index r = i / cols;
    const double v = static_cast<double>(wq[i]);
#if defined(__CUDA_ARCH__)
    wq[i] = static_cast<T>(__dadd_rn(__dmul_rn(v, xi_beta[2 * r]), xi_beta[2 * r + 1]));
#else
    const double prod = v * xi_beta[2 * r];
    wq[i] = static_cast<T>(prod + xi_beta[2 * r + 1]);
#endif
  }
};

template <class T>
struct correct_tile {
  T* wq;
  const double* xi_beta;
  tiling t;
  PTQ_HOST_DEVICE void operator()(index k) const {
    const index r = k / t.per_row, j0 = (k % t.per_row) * t.len;
    const index j1 = j0 + t.len < t.cols ? j0 + t.len : t.cols;
    const double xi = xi_beta[2 * r], beta = xi_beta[2 * r + 1];
    T* p = wq + r * t.cols;
    for (index j = j0; j < j1; ++j) {
#if defined(__CUDA_ARCH__)
      p[j] = static_cast<T>(__dadd_rn(__dmul_rn(static_cast<double>(p[j]), xi), beta));
#else
      const double prod = static_cast<double>(p[j]) * xi;
      p[j] = static_cast<T>(prod + beta);
#endif
    }
  }
};

template <reduction R, class Policy, class T>
channel_sums row_sums(Policy& policy, span<const T> x, index cols, const double* d_centre = nullptr) {
  return reduce_by_channel<R>(policy, x, cols, static_cast<index>(x.size()) / cols, d_centre);
}

// wq <- xi * wq + beta, after the core's range check on each row's min and max (reduced
// on the device, or wq_moments when the caller has them): nothing is written if any
// corrected weight would leave T's range.
template <class Policy, class T>
void apply_correction(Policy& policy, const bias_correction& c, span<T> wq, index cols, const char* where,
                      const channel_sums* wq_moments = nullptr) {
  const index rows = static_cast<index>(wq.size()) / cols;
  const channel_sums m =
      wq_moments ? *wq_moments : row_sums<reduction::moments>(policy, span<const T>(wq.data(), wq.size()), cols);
  for (index r = 0; r < rows; ++r) {
    const auto u = static_cast<std::size_t>(r);
    ptq::detail::check_corrected_row<T>(c, r, m.lo[u], m.hi[u], where);
  }
  std::vector<double> h(static_cast<std::size_t>(2 * rows));
  for (index r = 0; r < rows; ++r) h[static_cast<std::size_t>(2 * r)] = c.xi[r], h[static_cast<std::size_t>(2 * r + 1)] = c.beta[r];
  const thrust::device_vector<double> d(h.begin(), h.end());
  const double* xb = thrust::raw_pointer_cast(d.data());
  if constexpr (is_cuda_policy<Policy>()) {
    thrust::for_each(policy, thrust::counting_iterator<index>(0),
                     thrust::counting_iterator<index>(static_cast<index>(wq.size())), correct_row<T>{wq.data(), xb, cols});
  } else {
    const tiling t = tiling::of(rows, cols);
    thrust::for_each(policy, thrust::counting_iterator<index>(0), thrust::counting_iterator<index>(t.count()),
                     correct_tile<T>{wq.data(), xb, t});
  }
}

template <class T>
void check_pair_shape(span<const T> w, std::size_t wq_size, index cols, const char* where) {
  ptq::detail::require(wq_size == w.size(), where, "wq.size() = ", wq_size, " but w.size() = ", w.size());
  check_view(w.size(), cols, 1, where, "w");
}

// wq_moments, if given, receives wq's per-row sums, min and max (for apply_correction).
template <class Policy, class T>
bias_correction compute(Policy& policy, span<const T> w, span<const T> wq, index cols,
                        const bias_corrector_params& p, const char* where, channel_sums* wq_moments = nullptr) {
  check_pair_shape(w, wq.size(), cols, where);
  check_finite(policy, w, cols, where, "w");
  check_finite(policy, wq, cols, where, "wq");
  const index K = static_cast<index>(w.size()) / cols;
  const double n = static_cast<double>(cols);
  const channel_sums sw = row_sums<reduction::moments>(policy, w, cols);
  const channel_sums sq = row_sums<reduction::moments>(policy, wq, cols);
  std::vector<double> mw(static_cast<std::size_t>(K)), mq(mw.size());
  for (std::size_t r = 0; r < mw.size(); ++r) mw[r] = sw.s1[r] / n, mq[r] = sq.s1[r] / n;
  channel_sums dw, dq;
  if (p.variance) {
    const thrust::device_vector<double> cw(mw.begin(), mw.end()), cq(mq.begin(), mq.end());
    dw = row_sums<reduction::spread>(policy, w, cols, thrust::raw_pointer_cast(cw.data()));
    dq = row_sums<reduction::spread>(policy, wq, cols, thrust::raw_pointer_cast(cq.data()));
  }
  bias_correction c;
  c.mu.resize(K), c.xi.resize(K), c.beta.resize(K);
  for (index r = 0; r < K; ++r) {
    const auto u = static_cast<std::size_t>(r);
    double xi = 1.0;
    if (p.variance) {
      const double a = std::sqrt(dw.s2[u]), b = std::sqrt(dq.s2[u]);
      if (b > 0 && sq.lo[u] != sq.hi[u]) xi = a / b;  // a constant row: zero spread (as the core)
    }
    ptq::detail::require(std::isfinite(mw[u]) && std::isfinite(mq[u]) && std::isfinite(xi), where, "row ", r,
                         ": the mean or spread of w or wq is not finite in double (overflow)");
    c.mu[r] = mw[u] - mq[u];
    c.xi[r] = xi;
    c.beta[r] = mw[u] - xi * mq[u];
  }
  if (wq_moments) *wq_moments = sq;
  return c;
}

inline void check_correction(const bias_correction& c, index rows, const char* where) {
  for (const auto* v : {&c.mu, &c.xi, &c.beta})
    ptq::detail::require(v->size() == rows, where, "correction vectors have ", v->size(),
                         " entries, not one per row of wq (", rows, ")");
  for (index r = 0; r < rows; ++r) {
    ptq::detail::require(std::isfinite(c.xi[r]), where, "correction.xi[", r, "] = ", c.xi[r], " is not finite");
    ptq::detail::require(std::isfinite(c.beta[r]), where, "correction.beta[", r, "] = ", c.beta[r], " is not finite");
  }
}

}  // namespace impl

struct bias_corrector {
  using params = bias_corrector_params;

  // The correction of wq towards w, both K x cols row views (one row per output channel).
  template <class Policy, class W, class WQ>
  static bias_correction compute(Policy&& policy, W w, WQ wq, index cols, const params& p = {}) {
    return impl::compute(policy, impl::as_const(w), impl::as_const(wq), cols, p, "ptq::device::bias_corrector::compute");
  }

  // wq <- xi * wq + beta, row by row.
  template <class Policy, class T>
  static void apply(Policy&& policy, const bias_correction& c, span<T> wq, index cols) {
    static constexpr const char* where = "ptq::device::bias_corrector::apply";
    const index rows = impl::check_view(wq.size(), cols, 1, where, "wq");
    impl::check_correction(c, rows, where);
    impl::check_finite(policy, span<const T>(wq.data(), wq.size()), cols, where, "wq");
    impl::apply_correction(policy, c, wq, cols, where);
  }

  // compute(w, wq, p), then apply it to wq; returns the correction.
  template <class Policy, class W, class T>
  static bias_correction correct(Policy&& policy, W w, span<T> wq, index cols, const params& p = {}) {
    static constexpr const char* where = "ptq::device::bias_corrector::correct";
    channel_sums wq_moments;
    const bias_correction c =
        impl::compute(policy, impl::as_const(w), span<const T>(wq.data(), wq.size()), cols, p, where, &wq_moments);
    impl::apply_correction(policy, c, wq, cols, where, &wq_moments);
    return c;
  }
};

}  // namespace device
}  // namespace ptq
