// statistics.hpp: per-channel calibration statistics (min, max, mean, b, std) reduced on Thrust (any backend).
//
// The same statistics, modes and protocol as the core's calibration_statistics
// (calibration.hpp), with the reductions over the data done by the policy:
//
//   min, max     the extreme values (exact)
//   mean         (1/n) Σ x, clamped into [min, max]
//   b            (1/n) Σ |x - mean|
//   std          sqrt(Σ (x - mean)^2 / (n - 1)), 0 when n = 1
//
// stats_mode::batch_mean: each add() is one batch, its five statistics computed exactly
// on it (deviations about the batch's own mean: two reductions over the batch), and
// result() is their unweighted average over batches (the reference's estimator).
// stats_mode::exact: all values as one tensor; pass 1 merges per-batch (count, mean, M2)
// by Chan's formulas, then begin_deviation_pass() freezes the mean and pass 2 (the same
// batches again) accumulates Σ |x - mean|; result() checks pass 2 saw pass 1's data.
//
// Where what runs. Every reduction over the data runs on the policy: each tile (up to
// 16384 contiguous values of one row on a host policy, 256 on CUDA) is reduced by one
// thread (in double, four partial sums), then each channel's tile partials are summed
// in tile order by one thread per channel; only C per-channel sums come back. The
// per-channel scalar math (mean = sum / n, std = sqrt, running averages, Chan's merge)
// is tiny and runs on the host, in double, with the core's formulas. Sums are taken in
// another order than the core's, so results agree with it to rounding (the tests ask
// 1e-6 relative; in practice about 1e-13); min and max are exact.
//
// Errors: as the core (ptq::error, the accumulator unchanged): channels < 1, empty or
// ill-shaped views, NaN / Inf in a batch ("rows(r, j) = nan is not finite (channel c,
// outer index o, column j)", found by a device search once a channel's sum is not
// finite), sums that overflow double, and the exact mode's protocol misuses. merge()
// is not provided: merge the core accumulators if you need it.
//
// For the fastest GPU reduction use ptq::gpu::channel_moments / channel_deviations
// (include/ptq/cuda/statistics.cuh), which feed the same accumulator through add_sums().
#pragma once

#include <algorithm>
#include <cmath>
#include <vector>

// nvcc's front end rejects the GCC vector extensions (__builtin_convertvector) of the
// core's calibration kernels: under nvcc they use their plain loops (same results).
#if defined(__CUDACC__) && !defined(PTQ_CALIBRATION_SIMD)
#define PTQ_CALIBRATION_SIMD 0
#endif
#include "../calibration.hpp"
#include "common.hpp"

namespace ptq {
namespace device {

// Per-channel sums of one batch (host, C entries each). Pass 1: s1 = Σ x. Pass 2 about
// a per-channel centre m: s1 = Σ |x - m|, s2 = Σ (x - m)^2. lo, hi: min and max.
struct channel_sums {
  std::vector<double> s1, s2, lo, hi;
  index count = 0;  // values per channel
};

namespace impl {

struct partial {
  double s1, s2, lo, hi;
};

// Tile k (channel-major: channel k / per_channel, then outer index, then tile of the row).
struct stats_tiling {
  index channels, outer, cols, per_row, len;
  PTQ_HOST_DEVICE index per_channel() const { return outer * per_row; }
  PTQ_HOST_DEVICE index count() const { return channels * per_channel(); }
};

PTQ_HOST_DEVICE inline double abs_of(double d) {
#if defined(__CUDA_ARCH__)
  return fabs(d);
#else
  return std::fabs(d);
#endif
}

// What a reduction computes per channel (channel_sums fields):
//   moments:   s1 = Σ x,           lo, hi = min, max
//   spread:    s1 = Σ |x - m|, s2 = Σ (x - m)^2   (lo, hi = +inf, -inf: not computed)
//   deviation: s1 = Σ |x - m|,     lo, hi = min, max   (exact mode's pass 2)
enum class reduction { moments, spread, deviation };

template <reduction R, class T>
struct tile_stats {
  const T* x;
  const double* centre;  // per channel (Deviation only)
  stats_tiling t;
  PTQ_HOST_DEVICE partial operator()(index k) const {
    const index c = k / t.per_channel(), rem = k % t.per_channel();
    const index o = rem / t.per_row, j0 = (rem % t.per_row) * t.len;
    const index n = (j0 + t.len < t.cols ? j0 + t.len : t.cols) - j0;
    const T* p = x + (o * t.channels + c) * t.cols + j0;
    constexpr bool Deviation = R != reduction::moments;
    const double m = Deviation ? centre[c] : 0.0;
#if !defined(__CUDA_ARCH__)
    // On the host: the core's own row kernels (calibration.hpp, vectorized).
    double s1 = 0, s2 = 0;
    T lo, hi;
    if constexpr (R == reduction::moments) {
      ptq::detail::calib::sum_min_max(p, n, s1, lo, hi);
    } else if constexpr (R == reduction::spread) {
      ptq::detail::calib::deviations<true>(p, n, m, s2, s1);
      return {s1, s2, HUGE_VAL, -HUGE_VAL};
    } else {
      ptq::detail::calib::abs_min_max(p, n, m, s1, lo, hi);
    }
    return {s1, s2, static_cast<double>(lo), static_cast<double>(hi)};
#else
    // U independent lanes of every accumulator (the compiler maps them to one vector).
    constexpr int U = 8;
    double a[U] = {}, q[U] = {};
    T l[U], h[U];
    for (int u = 0; u < U; ++u) l[u] = h[u] = p[0];
    index j = 0;
    for (; j + U <= n; j += U) {
      for (int u = 0; u < U; ++u) {
        const T v = p[j + u];
        l[u] = v < l[u] ? v : l[u];
        h[u] = v > h[u] ? v : h[u];
        if constexpr (Deviation) {
          const double d = static_cast<double>(v) - m;
          a[u] += abs_of(d);
          q[u] += d * d;
        } else {
          a[u] += static_cast<double>(v);
        }
      }
    }
    for (; j < n; ++j) {
      const T v = p[j];
      l[0] = v < l[0] ? v : l[0];
      h[0] = v > h[0] ? v : h[0];
      if constexpr (Deviation) {
        const double d = static_cast<double>(v) - m;
        a[0] += abs_of(d);
        q[0] += d * d;
      } else {
        a[0] += static_cast<double>(v);
      }
    }
    for (int u = 1; u < U; ++u) {
      a[0] += a[u], q[0] += q[u];
      l[0] = l[u] < l[0] ? l[u] : l[0];
      h[0] = h[u] > h[0] ? h[u] : h[0];
    }
    return {a[0], q[0], static_cast<double>(l[0]), static_cast<double>(h[0])};
#endif
  }
};

// Channel c's tile partials, summed in tile order.
struct combine_tiles {
  const partial* tiles;
  index per_channel;
  PTQ_HOST_DEVICE partial operator()(index c) const {
    const partial* p = tiles + c * per_channel;
    partial r = p[0];
    for (index k = 1; k < per_channel; ++k) {
      r.s1 += p[k].s1, r.s2 += p[k].s2;
      r.lo = p[k].lo < r.lo ? p[k].lo : r.lo;
      r.hi = p[k].hi > r.hi ? p[k].hi : r.hi;
    }
    return r;
  }
};

template <class Policy>
constexpr index stats_tile() {
  return is_cuda_policy<Policy>() ? 256 : host_tile;
}

// One reduction over the row view x (rows x cols, channel r % channels): pass 1, or
// pass 2 about d_centre (C doubles in memory the policy reaches).
template <reduction R, class Policy, class T>
channel_sums reduce_channels(Policy& policy, span<const T> x, index cols, index channels, const double* d_centre,
                             index tile_len = stats_tile<Policy>()) {
  const index rows = static_cast<index>(x.size()) / cols, outer = rows / channels;
  const stats_tiling t{channels, outer, cols, (cols + tile_len - 1) / tile_len, tile_len};
  thrust::device_vector<partial> tiles(static_cast<std::size_t>(t.count()));
  thrust::transform(policy, thrust::counting_iterator<index>(0), thrust::counting_iterator<index>(t.count()),
                    tiles.begin(), tile_stats<R, T>{x.data(), d_centre, t});
  thrust::device_vector<partial> per_channel(static_cast<std::size_t>(channels));
  thrust::transform(policy, thrust::counting_iterator<index>(0), thrust::counting_iterator<index>(channels),
                    per_channel.begin(), combine_tiles{thrust::raw_pointer_cast(tiles.data()), t.per_channel()});
  const thrust::host_vector<partial> h = per_channel;
  channel_sums s;
  s.count = outer * cols;
  const auto C = static_cast<std::size_t>(channels);
  s.s1.resize(C), s.s2.resize(C), s.lo.resize(C), s.hi.resize(C);
  for (std::size_t c = 0; c < C; ++c) s.s1[c] = h[c].s1, s.s2[c] = h[c].s2, s.lo[c] = h[c].lo, s.hi[c] = h[c].hi;
  return s;
}

// Names the first non-finite value of x (as the core does), or reports an overflow of
// channel c's `what`.
template <class Policy, class T>
[[noreturn]] void fail_not_finite(Policy& policy, span<const T> x, index cols, index channels, index c,
                                  const char* where, const char* what) {
  const T* first = thrust::find_if(policy, x.data(), x.data() + x.size(), is_not_finite<T>{});
  if (first != x.data() + x.size()) {
    const index i = first - x.data(), r = i / cols, j = i % cols;
    ptq::detail::fail(where, "rows(", r, ", ", j, ") = ", read_one(policy, first), " is not finite (channel ",
                      r % channels, ", outer index ", r / channels, ", column ", j, ")");
  }
  ptq::detail::fail(where, "the ", what, " of channel ", c, " overflows double (values too large for the statistics)");
}

}  // namespace impl

// Pass 1 of one batch on the device: per channel Σ x, min, max. Throws on non-finite data.
template <class Policy, class X>
channel_sums channel_moments(Policy&& policy, X x_any, index cols, index channels) {
  const auto x = impl::as_const(x_any);
  static constexpr const char* where = "ptq::device::channel_moments";
  impl::check_view(x.size(), cols, channels, where, "x");
  channel_sums s = impl::reduce_channels<impl::reduction::moments>(policy, x, cols, channels, nullptr);
  for (index c = 0; c < channels; ++c)
    if (!std::isfinite(s.s1[static_cast<std::size_t>(c)]))
      impl::fail_not_finite(policy, x, cols, channels, c, where, "sum");
  return s;
}

// Pass 2 of one batch on the device, about centre[c] (host, C entries): per channel
// s1 = Σ |x - centre|, s2 = Σ (x - centre)^2 (lo, hi are not computed: +inf, -inf).
template <class Policy, class X>
channel_sums channel_deviations(Policy&& policy, X x_any, index cols, index channels,
                                const std::vector<double>& centre) {
  const auto x = impl::as_const(x_any);
  static constexpr const char* where = "ptq::device::channel_deviations";
  impl::check_view(x.size(), cols, channels, where, "x");
  ptq::detail::require(static_cast<index>(centre.size()) == channels, where, "centre.size() = ", centre.size(),
                       " does not match channels = ", channels);
  const thrust::device_vector<double> d_centre(centre.begin(), centre.end());
  channel_sums s = impl::reduce_channels<impl::reduction::spread>(policy, x, cols, channels, thrust::raw_pointer_cast(d_centre.data()));
  for (index c = 0; c < channels; ++c) {
    const auto u = static_cast<std::size_t>(c);
    if (!std::isfinite(s.s1[u]) || !std::isfinite(s.s2[u]))
      impl::fail_not_finite(policy, x, cols, channels, c, where, "sum of squared deviations");
  }
  return s;
}

// The core's calibration_statistics, with the reductions on a Thrust policy. See the top.
class calibration_statistics {
 public:
  explicit calibration_statistics(index channels, stats_mode mode = stats_mode::batch_mean)
      : channels_(channels), mode_(mode) {
    ptq::detail::require(channels >= 1, "ptq::device::calibration_statistics::calibration_statistics",
                         "channels = ", channels, " must be at least 1");
    const auto zero = Eigen::VectorXd::Zero(channels);
    min_ = max_ = mean_ = b_ = std_ = zero;
  }

  // One batch: the row view x (rows x cols, row r of channel r % channels()).
  template <class Policy, class X>
  void add(Policy&& policy, X x_any, index cols) {
    const auto x = impl::as_const(x_any);
    static constexpr const char* where = "ptq::device::calibration_statistics::add";
    impl::check_view(x.size(), cols, channels_, where, "x");
    const index n = (static_cast<index>(x.size()) / cols / channels_) * cols;
    if (pass_ == stats_pass::deviation) {
      ptq::detail::require(dev_count_ + n <= count_, where, "x has ", n, " values per channel, which would bring the deviation pass to ",
                           dev_count_ + n, ", more than the ", count_,
                           " of the moments pass: add() exactly the batches of pass 1 again");
      const std::vector<double> centre(mean_.data(), mean_.data() + channels_);
      const channel_sums d = checked_deviations<impl::reduction::deviation>(policy, x, cols, centre, where);
      add_deviation_sums(d);
      return;
    }
    const channel_sums m = checked_moments(policy, x, cols, where);
    const std::vector<double> centre = batch_mean(m);
    const channel_sums d = checked_deviations<impl::reduction::spread>(policy, x, cols, centre, where);
    add_batch_sums(m, d);
  }

  // Pass 1 and pass 2 sums of one batch computed elsewhere (ptq::gpu's kernels): m from
  // the moments pass, d (s1, s2) from the deviations pass about batch_mean(m). Not for pass 2.
  void add_batch_sums(const channel_sums& m, const channel_sums& d) {
    static constexpr const char* where = "ptq::device::calibration_statistics::add_batch_sums";
    check_sums(m, where, "m", true);
    check_sums(d, where, "d", false);
    ptq::detail::require(pass_ == stats_pass::moments, where, "pass = deviation: use add_deviation_sums()");
    ptq::detail::require(m.count == d.count && m.count > 0, where, "m.count = ", m.count, " and d.count = ", d.count,
                         " must be equal and positive");
    const std::vector<double> centre = batch_mean(m);
    const index n = m.count;
    if (mode_ == stats_mode::batch_mean) {
      const double w = 1.0 / static_cast<double>(batches_ + 1), nd = static_cast<double>(n);
      for (index c = 0; c < channels_; ++c) {
        const auto u = static_cast<std::size_t>(c);
        const double s = n > 1 ? std::sqrt(d.s2[u] / (nd - 1)) : 0.0;
        running(min_[c], m.lo[u], w), running(max_[c], m.hi[u], w), running(mean_[c], centre[u], w);
        running(b_[c], d.s1[u] / nd, w), running(std_[c], s, w);
      }
    } else {
      for (index c = 0; c < channels_; ++c) {
        const auto u = static_cast<std::size_t>(c);
        combine(c, n, centre[u], d.s2[u], m.lo[u], m.hi[u]);
      }
    }
    count_ += n;
    ++batches_;
  }

  // Exact pass 2 sums of one batch computed elsewhere, about the frozen mean (mean()).
  void add_deviation_sums(const channel_sums& d) {
    static constexpr const char* where = "ptq::device::calibration_statistics::add_deviation_sums";
    check_sums(d, where, "d", true);
    ptq::detail::require(pass_ == stats_pass::deviation, where, "pass = moments: call begin_deviation_pass() first");
    ptq::detail::require(d.count > 0 && dev_count_ + d.count <= count_, where, "d.count = ", d.count,
                         " would bring the deviation pass to ", dev_count_ + d.count, " values per channel, the moments pass has ",
                         count_);
    for (index c = 0; c < channels_; ++c) {
      const auto u = static_cast<std::size_t>(c);
      dev_abs_[c] += d.s1[u];
      dev_min_[c] = dev_count_ == 0 ? d.lo[u] : std::min(dev_min_[c], d.lo[u]);
      dev_max_[c] = dev_count_ == 0 ? d.hi[u] : std::max(dev_max_[c], d.hi[u]);
    }
    dev_count_ += d.count;
    ++dev_batches_;
  }

  // The batch's per-channel mean from its pass-1 sums: clamp(sum / n, min, max), as the core.
  static std::vector<double> batch_mean(const channel_sums& m) {
    std::vector<double> mean(m.s1.size());
    const double n = static_cast<double>(m.count);
    for (std::size_t c = 0; c < mean.size(); ++c) mean[c] = std::min(std::max(m.s1[c] / n, m.lo[c]), m.hi[c]);
    return mean;
  }

  void begin_deviation_pass() {
    static constexpr const char* where = "ptq::device::calibration_statistics::begin_deviation_pass";
    ptq::detail::require(mode_ == stats_mode::exact, where,
                         "mode = batch_mean has no deviation pass (its b is computed within each batch)");
    ptq::detail::require(pass_ == stats_pass::moments, where, "pass = deviation: begin_deviation_pass() was already called");
    ptq::detail::require(count_ > 0, where, "count = 0: add() the batches of pass 1 first");
    pass_ = stats_pass::deviation;
    dev_abs_ = Eigen::VectorXd::Zero(channels_);
    dev_min_ = dev_max_ = dev_abs_;
    dev_count_ = dev_batches_ = 0;
  }

  channel_stats result() const {
    static constexpr const char* where = "ptq::device::calibration_statistics::result";
    channel_stats s = moments_impl(where);
    if (mode_ == stats_mode::batch_mean) {
      s.b = b_;
      return s;
    }
    ptq::detail::require(pass_ == stats_pass::deviation, where,
                         "pass = moments: exact mode needs a second pass for b = E|x - mean|: call "
                         "begin_deviation_pass() and add() the same batches again (or use moments() without b)");
    ptq::detail::require(dev_count_ == count_, where, "the deviation pass has seen ", dev_count_,
                         " values per channel, the moments pass ", count_, ": add() the remaining batches of pass 1");
    for (index c = 0; c < channels_; ++c)
      ptq::detail::require(dev_min_[c] == min_[c] && dev_max_[c] == max_[c], where, "channel ", c,
                           " saw other data in the deviation pass (min, max = ", dev_min_[c], ", ", dev_max_[c],
                           " vs ", min_[c], ", ", max_[c], " in pass 1): add() the same batches again");
    s.b = dev_abs_ / static_cast<double>(count_);
    return s;
  }
  channel_stats moments() const { return moments_impl("ptq::device::calibration_statistics::moments"); }

  index channels() const { return channels_; }
  stats_mode mode() const { return mode_; }
  stats_pass pass() const { return pass_; }
  index batches() const { return batches_; }
  index count() const { return count_; }
  const Eigen::VectorXd& mean() const { return mean_; }  // exact pass 2: the frozen centre

 private:
  template <class Policy, class T>
  channel_sums checked_moments(Policy& policy, span<const T> x, index cols, const char* where) const {
    channel_sums s = impl::reduce_channels<impl::reduction::moments>(policy, x, cols, channels_, nullptr);
    for (index c = 0; c < channels_; ++c)
      if (!std::isfinite(s.s1[static_cast<std::size_t>(c)]))
        impl::fail_not_finite(policy, x, cols, channels_, c, where, "sum");
    return s;
  }
  template <impl::reduction R, class Policy, class T>
  channel_sums checked_deviations(Policy& policy, span<const T> x, index cols, const std::vector<double>& centre,
                                  const char* where) const {
    const thrust::device_vector<double> d_centre(centre.begin(), centre.end());
    channel_sums s = impl::reduce_channels<R>(policy, x, cols, channels_, thrust::raw_pointer_cast(d_centre.data()));
    for (index c = 0; c < channels_; ++c) {
      const auto u = static_cast<std::size_t>(c);
      if (!std::isfinite(s.s1[u]) || !std::isfinite(s.s2[u]))
        impl::fail_not_finite(policy, x, cols, channels_, c, where, "sum of squared deviations");
    }
    return s;
  }
  void check_sums(const channel_sums& s, const char* where, const char* name, bool minmax) const {
    const auto C = static_cast<std::size_t>(channels_);
    ptq::detail::require(s.s1.size() == C && s.s2.size() == C && s.lo.size() == C && s.hi.size() == C, where, name,
                         " does not have one entry per channel (", channels_, ")");
    for (std::size_t c = 0; c < C; ++c)
      ptq::detail::require(std::isfinite(s.s1[c]) && std::isfinite(s.s2[c]) &&
                               (!minmax || (std::isfinite(s.lo[c]) && std::isfinite(s.hi[c]) && s.lo[c] <= s.hi[c])),
                           where, name, ": channel ", c, " has non-finite sums or min > max");
  }

  static void running(double& avg, double v, double w) { avg += (v - avg) * w; }

  void combine(index c, index nb, double mean_b, double m2_b, double lo, double hi) {
    if (count_ == 0) {
      mean_[c] = mean_b, std_[c] = m2_b, min_[c] = lo, max_[c] = hi;
      return;
    }
    const double na = static_cast<double>(count_), nbd = static_cast<double>(nb), n = na + nbd;
    const double d = mean_b - mean_[c];
    min_[c] = std::min(min_[c], lo);
    max_[c] = std::max(max_[c], hi);
    mean_[c] = std::min(std::max(mean_[c] + d * (nbd / n), min_[c]), max_[c]);
    std_[c] += m2_b + d * d * (na * nbd / n);
  }

  channel_stats moments_impl(const char* where) const {
    ptq::detail::require(batches_ > 0, where, "batches = 0: add() at least one batch first");
    channel_stats s;
    s.min = min_, s.max = max_, s.mean = mean_, s.count = count_;
    if (mode_ == stats_mode::batch_mean) {
      s.std = std_;
    } else {
      s.std.resize(channels_);
      for (index c = 0; c < channels_; ++c)
        s.std[c] = count_ > 1 ? std::sqrt(std_[c] / static_cast<double>(count_ - 1)) : 0.0;
    }
    return s;
  }

  index channels_;
  stats_mode mode_;
  stats_pass pass_ = stats_pass::moments;
  index batches_ = 0, count_ = 0;
  Eigen::VectorXd min_, max_, mean_, b_, std_;  // exact: std_ holds M2
  Eigen::VectorXd dev_abs_, dev_min_, dev_max_;
  index dev_batches_ = 0, dev_count_ = 0;
};

// The statistics of one batch (exact within the batch): calibration_statistics(channels)
// after one add(), like the core's batch_statistics_ref.
template <class Policy, class X>
channel_stats batch_statistics(Policy&& policy, X x, index cols, index channels) {
  calibration_statistics acc(channels);
  acc.add(policy, x, cols);
  return acc.result();
}

}  // namespace device
}  // namespace ptq
