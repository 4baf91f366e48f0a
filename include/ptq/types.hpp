// types.hpp: the plain structs that pass between the stages of the pipeline.
//
//   calibration_statistics --channel_stats--> aciq --channel_ranges--> gemmlowp_quantizer
//                                       \--> bit_allocator --bits--/
#pragma once

#include <Eigen/Core>

#include "config.hpp"

namespace ptq {

// The model of the data being clipped (docs/method.md section 1).
//   laplace: scale parameter b = E|x - mean|;  gauss: scale parameter sigma = std.
enum class distribution { laplace, gauss };
struct laplace { static constexpr distribution value = distribution::laplace; };
struct gauss { static constexpr distribution value = distribution::gauss; };

// signed_range: values on both sides of the mean, clipped to [-a, a] around it;
// unsigned_range: one-sided data (a conv output that feeds a ReLU), range [0, a].
enum class range_kind { signed_range, unsigned_range };

// Per-channel statistics of calibration data (or of weights), in double.
// b = E|x - mean| (the Laplace scale estimate), std = unbiased standard deviation.
struct channel_stats {
  Eigen::VectorXd min, max, mean, b, std;
  index count = 0;  // values seen per channel (same for every channel)

  index channels() const { return mean.size(); }
};

// Per-channel clipping ranges [lo, hi], lo <= hi.
struct channel_ranges {
  Eigen::VectorXd lo, hi;

  index channels() const { return lo.size(); }
};

}  // namespace ptq
