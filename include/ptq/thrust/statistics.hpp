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
// Where what runs. Every reduction over the data runs on the policy. On a host policy
// each tile of up to 16384 contiguous values of one row is reduced by one thread (the
// core's vectorized row kernels, in double), then each channel's tile partials are
// summed in tile order. On CUDA each of a channel's lanes (about 2^17 in all) reduces
// every lanes-th value of the channel, so a warp reads consecutive values, and each
// channel's lanes are summed in rounds of 32 in a fixed order (deterministic;
// impl::reduce_channels; the tests run both splits on the OMP backend). Only C
// per-channel sums come back. The per-channel scalar math (mean = sum / n, std = sqrt, running averages, Chan's merge)
// is tiny and runs on the host, in double: it is the core's own accumulator, fed the
// per-channel sums through calibration_statistics::add_sums() / add_deviation_sums(). Sums are taken in
// another order than the core's, so results agree with it to rounding (the tests ask
// 1e-6 relative; in practice about 1e-13); min and max are exact.
//
// Errors: as the core (ptq::error, the accumulator unchanged): channels < 1, empty or
// ill-shaped views, NaN / Inf in a batch ("rows(r, j) = nan is not finite (channel c,
// outer index o, column j)", found by a device search once a channel's sum is not
// finite), sums that overflow double, and the exact mode's protocol misuses (those
// found by the core accumulator name its functions). merge() is not provided: merge
// the core accumulators (core()) if you need it.
//
// On CUDA, ptq::gpu::add_batch, or ptq::gpu::channel_moments / channel_deviations
// (include/ptq/cuda/statistics.cuh: block reductions per channel slice, no partials
// round trip) are the fast path; they feed the same accumulator through
// add_batch_sums() / add_deviation_sums().
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
    // The core's own row kernels (calibration.hpp, vectorized).
    double s1 = 0, s2 = 0;
    T lo, hi;
    if constexpr (R == reduction::moments) {
      ptq::detail::calib::sum_min_max<false>(p, n, 0.0, s1, lo, hi);
    } else if constexpr (R == reduction::spread) {
      ptq::detail::calib::deviations<true>(p, n, m, s2, s1);
      return {s1, s2, HUGE_VAL, -HUGE_VAL};
    } else {
      ptq::detail::calib::sum_min_max<true>(p, n, m, s1, lo, hi);
    }
    return {s1, s2, static_cast<double>(lo), static_cast<double>(hi)};
#else
    // Not reached: on CUDA, reduce_channels uses lane_stats (default_split); this
    // host split runs only on host policies.
    (void)p, (void)n, (void)m;
    __trap();
    return {};
#endif
  }
};

// Output g = (channel c, group j) of `groups` per channel: the sum, in order, of c's
// input partials [j * run, min((j + 1) * run, per_channel)). Deterministic: a fixed
// order, whatever the backend or the timing.
struct combine_runs {
  const partial* in;
  index per_channel, run, groups;
  PTQ_HOST_DEVICE partial operator()(index g) const {
    const index c = g / groups, j = g - c * groups;
    const index k0 = j * run, k1 = k0 + run < per_channel ? k0 + run : per_channel;
    const partial* p = in + c * per_channel;
    partial r = p[k0];
    for (index k = k0 + 1; k < k1; ++k) {
      r.s1 += p[k].s1, r.s2 += p[k].s2;
      r.lo = p[k].lo < r.lo ? p[k].lo : r.lo;
      r.hi = p[k].hi > r.hi ? p[k].hi : r.hi;
    }
    return r;
  }
};

// Each channel's `per_channel` partials (channel-major in parts) down to one, in rounds
// of runs of `run` (one round, run = per_channel, on a host policy; runs of 32 on CUDA,
// so that every round has many threads): out gets C partials, in channel order.
template <class Policy>
void combine_channels(Policy& policy, thrust::device_vector<partial>& parts, index channels, index per_channel,
                      index run, thrust::device_vector<partial>& out) {
  while (per_channel > 1) {
    const index groups = (per_channel + run - 1) / run;
    thrust::device_vector<partial> next(static_cast<std::size_t>(channels * groups));
    thrust::transform(policy, thrust::counting_iterator<index>(0), thrust::counting_iterator<index>(channels * groups),
                      next.begin(), combine_runs{thrust::raw_pointer_cast(parts.data()), per_channel, run, groups});
    parts.swap(next);
    per_channel = groups;
  }
  out.swap(parts);
}

// The GPU-shaped split (split::elements, the default on CUDA): lane t of channel c
// reduces the channel's values k = t, t + lanes, t + 2 lanes, ... (value k of channel c
// is at row (k / cols) * channels + c, column k % cols; k / cols by divmod.hpp), so the
// 32 lanes of a warp read 32 consecutive values; combine_channels then sums each
// channel's lanes in rounds of 32, in a fixed order. Lanes report exactly what
// tile_stats reports (the table above).
template <reduction R, class T>
struct lane_stats {
  const T* x;
  const double* centre;  // per channel (Deviation only)
  index channels, cols, per_channel, lanes;
  fast_divmod by_cols;
  bool narrow;  // per_channel < 2^32: k / cols by multiply and shift
  PTQ_HOST_DEVICE T value(index c, index k) const {
    const index o = narrow ? static_cast<index>(by_cols.div(static_cast<std::uint32_t>(k))) : k / cols;
    return x[(o * channels + c) * cols + (k - o * cols)];
  }
  PTQ_HOST_DEVICE partial operator()(index g) const {
    const index c = g / lanes, t = g - c * lanes;
    constexpr bool Deviation = R != reduction::moments;
    const double m = Deviation ? centre[c] : 0.0;
    double a = 0, q = 0;
    T l = value(c, t), h = l;
    for (index k = t; k < per_channel; k += lanes) {
      const T v = value(c, k);
      l = v < l ? v : l;
      h = v > h ? v : h;
      if constexpr (Deviation) {
        const double d = static_cast<double>(v) - m;
        a += abs_of(d);
        if constexpr (R == reduction::spread) q += d * d;
      } else {
        a += static_cast<double>(v);
      }
    }
    if constexpr (R == reduction::spread) return {a, q, HUGE_VAL, -HUGE_VAL};
    return {a, 0.0, static_cast<double>(l), static_cast<double>(h)};
  }
};


// Lanes per channel: about 2^17 in all (enough threads to fill a GPU, partials of a
// few MiB), a multiple of 32 (whole warps) unless the channel has fewer than 256 values,
// about 8 values or more each; at least 1, at most per_channel.
inline index lanes_for(index per_channel, index channels) {
  index l = (index(1) << 17) / channels;
  if (l >= 32) l -= l % 32;
  const index most = (per_channel + 7) / 8;
  l = l < most ? l : most;
  return l > 0 ? l : 1;
}

// One reduction over the row view x (rows x cols, channel r % channels): pass 1, or
// pass 2 about d_centre (C doubles in memory the policy reaches). S: the work split
// (lanes on CUDA, row tiles on a host policy; the tests run both on the OMP backend).
template <reduction R, split S, class Policy, class T>
channel_sums reduce_channels(Policy& policy, span<const T> x, index cols, index channels, const double* d_centre) {
  const index rows = static_cast<index>(x.size()) / cols, outer = rows / channels;
  thrust::device_vector<partial> per_channel(static_cast<std::size_t>(channels));
  if constexpr (S == split::elements) {
    const index per_channel_n = outer * cols, lanes = lanes_for(per_channel_n, channels), n = channels * lanes;
    const bool narrow = per_channel_n <= 0xffffffffll;
    const lane_stats<R, T> f{x.data(), d_centre, channels, cols, per_channel_n, lanes,
                             narrow ? fast_divmod(static_cast<std::uint32_t>(cols)) : fast_divmod(1u), narrow};
    thrust::device_vector<partial> parts(static_cast<std::size_t>(n));
    thrust::transform(policy, thrust::counting_iterator<index>(0), thrust::counting_iterator<index>(n), parts.begin(), f);
    combine_channels(policy, parts, channels, lanes, 32, per_channel);
  } else {
    const stats_tiling t{channels, outer, cols, (cols + host_tile - 1) / host_tile, host_tile};
    thrust::device_vector<partial> tiles(static_cast<std::size_t>(t.count()));
    thrust::transform(policy, thrust::counting_iterator<index>(0), thrust::counting_iterator<index>(t.count()),
                      tiles.begin(), tile_stats<R, T>{x.data(), d_centre, t});
    combine_channels(policy, tiles, channels, t.per_channel(), t.per_channel(), per_channel);
  }
  const thrust::host_vector<partial> h = per_channel;
  channel_sums s;
  s.count = outer * cols;
  const auto C = static_cast<std::size_t>(channels);
  s.s1.resize(C), s.s2.resize(C), s.lo.resize(C), s.hi.resize(C);
  for (std::size_t c = 0; c < C; ++c) s.s1[c] = h[c].s1, s.s2[c] = h[c].s2, s.lo[c] = h[c].lo, s.hi[c] = h[c].hi;
  return s;
}

// reduce_channels with the policy's own split.
template <reduction R, class Policy, class T>
channel_sums reduce_by_channel(Policy& policy, span<const T> x, index cols, index channels,
                               const double* d_centre = nullptr) {
  return reduce_channels<R, default_split<Policy>()>(policy, x, cols, channels, d_centre);
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
  channel_sums s = impl::reduce_by_channel<impl::reduction::moments>(policy, x, cols, channels, nullptr);
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
  channel_sums s =
      impl::reduce_by_channel<impl::reduction::spread>(policy, x, cols, channels, thrust::raw_pointer_cast(d_centre.data()));
  for (index c = 0; c < channels; ++c) {
    const auto u = static_cast<std::size_t>(c);
    if (!std::isfinite(s.s1[u]) || !std::isfinite(s.s2[u]))
      impl::fail_not_finite(policy, x, cols, channels, c, where, "sum of squared deviations");
  }
  return s;
}

// The core's calibration_statistics, with the reductions on a Thrust policy. See the top.
// It holds a core accumulator and feeds it each batch's per-channel sums (add_sums(),
// add_deviation_sums()): all accumulation and result formation is the core's.
class calibration_statistics {
 public:
  explicit calibration_statistics(index channels, stats_mode mode = stats_mode::batch_mean)
      : core_((ptq::detail::require(channels >= 1, "ptq::device::calibration_statistics::calibration_statistics",
                                    "channels = ", channels, " must be at least 1"),
               channels),
              mode) {}

  // One batch: the row view x (rows x cols, row r of channel r % channels()).
  template <class Policy, class X>
  void add(Policy&& policy, X x_any, index cols) {
    const auto x = impl::as_const(x_any);
    static constexpr const char* where = "ptq::device::calibration_statistics::add";
    impl::check_view(x.size(), cols, channels(), where, "x");
    const index n = (static_cast<index>(x.size()) / cols / channels()) * cols;
    if (pass() == stats_pass::deviation) {
      ptq::detail::require(core_.deviation_count() + n <= count(), where, "x has ", n,
                           " values per channel, which would bring the deviation pass to ",
                           core_.deviation_count() + n, ", more than the ", count(),
                           " of the moments pass: add() exactly the batches of pass 1 again");
      const std::vector<double> centre(mean().data(), mean().data() + channels());
      add_deviation_sums(checked_deviations<impl::reduction::deviation>(policy, x, cols, centre, where));
      return;
    }
    const channel_sums m = checked_moments(policy, x, cols, where);
    const std::vector<double> centre = batch_mean(m);
    add_batch_sums(m, checked_deviations<impl::reduction::spread>(policy, x, cols, centre, where));
  }

  // Pass 1 and pass 2 sums of one batch computed elsewhere (ptq::gpu's kernels): m from
  // the moments pass, d (s1, s2) from the deviations pass about batch_mean(m). Not for
  // pass 2. Converted to the core's batch_sums {m.count, m.lo, m.hi, batch_mean(m),
  // m2 = d.s2, abs = d.s1}, which the core validates and accumulates.
  void add_batch_sums(const channel_sums& m, const channel_sums& d) {
    static constexpr const char* where = "ptq::device::calibration_statistics::add_batch_sums";
    const auto C = static_cast<std::size_t>(channels());
    ptq::detail::require(m.s1.size() == C && m.lo.size() == C && m.hi.size() == C, where,
                         "m does not have one entry per channel (", C, ")");
    ptq::detail::require(d.s1.size() == C && d.s2.size() == C, where, "d does not have one entry per channel (", C,
                         ")");
    ptq::detail::require(m.count == d.count, where, "m.count = ", m.count, " and d.count = ", d.count,
                         " must be equal");
    for (std::size_t c = 0; c < C; ++c)  // the one sum not passed on (the clamp would hide an infinity)
      ptq::detail::require(std::isfinite(m.s1[c]), where, "m.s1[", c, "] = ", m.s1[c], " is not finite");
    batch_sums s;
    s.count = m.count;
    s.lo = m.lo, s.hi = m.hi, s.mean = batch_mean(m), s.m2 = d.s2, s.abs = d.s1;
    core_.add_sums(s);
  }

  // Exact pass 2 sums of one batch computed elsewhere, about the frozen mean (mean()):
  // d.s1 = Σ |x - mean|, d.lo, d.hi = min, max; the core validates and accumulates them.
  void add_deviation_sums(const channel_sums& d) {
    deviation_sums s;
    s.count = d.count;
    s.abs = d.s1, s.lo = d.lo, s.hi = d.hi;
    core_.add_deviation_sums(s);
  }

  // The batch's per-channel mean from its pass-1 sums: clamp(sum / n, min, max), as the core.
  static std::vector<double> batch_mean(const channel_sums& m) {
    std::vector<double> mean(m.s1.size());
    const double n = static_cast<double>(m.count);
    for (std::size_t c = 0; c < mean.size(); ++c) mean[c] = std::min(std::max(m.s1[c] / n, m.lo[c]), m.hi[c]);
    return mean;
  }

  void begin_deviation_pass() { core_.begin_deviation_pass(); }
  channel_stats result() const { return core_.result(); }
  channel_stats moments() const { return core_.moments(); }

  index channels() const { return core_.channels(); }
  stats_mode mode() const { return core_.mode(); }
  stats_pass pass() const { return core_.pass(); }
  index batches() const { return core_.batches(); }
  index count() const { return core_.count(); }
  index deviation_count() const { return core_.deviation_count(); }
  const Eigen::VectorXd& mean() const { return core_.mean(); }  // exact pass 2: the frozen centre
  const ptq::calibration_statistics& core() const { return core_; }  // the accumulator (to merge copies)

 private:
  template <class Policy, class T>
  channel_sums checked_moments(Policy& policy, span<const T> x, index cols, const char* where) const {
    channel_sums s = impl::reduce_by_channel<impl::reduction::moments>(policy, x, cols, channels(), nullptr);
    for (index c = 0; c < channels(); ++c)
      if (!std::isfinite(s.s1[static_cast<std::size_t>(c)]))
        impl::fail_not_finite(policy, x, cols, channels(), c, where, "sum");
    return s;
  }
  template <impl::reduction R, class Policy, class T>
  channel_sums checked_deviations(Policy& policy, span<const T> x, index cols, const std::vector<double>& centre,
                                  const char* where) const {
    const thrust::device_vector<double> d_centre(centre.begin(), centre.end());
    channel_sums s = impl::reduce_by_channel<R>(policy, x, cols, channels(), thrust::raw_pointer_cast(d_centre.data()));
    for (index c = 0; c < channels(); ++c) {
      const auto u = static_cast<std::size_t>(c);
      if (!std::isfinite(s.s1[u]) || !std::isfinite(s.s2[u]))
        impl::fail_not_finite(policy, x, cols, channels(), c, where,
                              R == impl::reduction::spread ? "sum of squared deviations" : "sum of absolute deviations");
    }
    return s;
  }

  ptq::calibration_statistics core_;
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
