// aciq.hpp: ACIQ clipping ranges of a device tensor: statistics reduced on Thrust, the range math on the host.
//
// The ranges are the core's (aciq.hpp): per channel a = alpha*(bits) x (b for Laplace,
// std for Gauss), signed [max(min, mu - a), max(min, mu - a) + 2a], unsigned
// [0, max(mu, 0) + a]. What is per element (the statistics: min, max, mean, b, std of
// each channel) is reduced on the policy (statistics.hpp, one batch, exact within it);
// what is per channel (alpha*, the ranges) is a handful of scalars and is computed on
// the host by the core's own aciq_ranges, so the two paths cannot drift apart. For
// statistics over many batches, accumulate a ptq::device::calibration_statistics and
// call the core's ptq::aciq_ranges on its result().
#pragma once

#include "../aciq.hpp"
#include "statistics.hpp"

namespace ptq {
namespace device {

// ACIQ ranges of the row view x (rows x cols, row r of channel r % channels), bits
// (an integer in [1, 16] or an Eigen::VectorXi of per-channel bits in [0, 16]).
template <class Policy, class X, class Bits>
channel_ranges aciq_ranges(Policy&& policy, X x, index cols, index channels, distribution dist,
                           const Bits& bits, range_kind range = range_kind::signed_range) {
  return ptq::aciq_ranges(dist, batch_statistics(policy, x, cols, channels), bits, range);
}

// The core's minmax_ranges (extended to contain 0; unsigned: [0, max(max, 0)]) from
// the per-channel min and max reduced on the policy (the paper's choice for weights).
template <class Policy, class X>
channel_ranges minmax_ranges(Policy&& policy, X x, index cols, index channels,
                             range_kind range = range_kind::signed_range) {
  const channel_sums m = channel_moments(policy, x, cols, channels);
  channel_stats s;
  s.min = Eigen::Map<const Eigen::VectorXd>(m.lo.data(), channels);
  s.max = Eigen::Map<const Eigen::VectorXd>(m.hi.data(), channels);
  s.count = m.count;
  return ptq::minmax_ranges(s, range);
}

}  // namespace device
}  // namespace ptq
