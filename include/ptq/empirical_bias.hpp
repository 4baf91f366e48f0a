// empirical_bias.hpp: empirical bias correction of a layer's outputs (Nagel et al. 2019), accumulated over batches.
//
// The method (M. Nagel, M. van Baalen, T. Blankevoort, M. Welling, "Data-free quantization
// through weight equalization and bias correction", ICCV 2019: bias correction, its empirical
// variant with calibration data; docs/method.md section 8). Quantization error in a layer's weights (and inputs)
// shifts the expected value of each output channel; the next layers see a biased input. With
// y_float the output of the float layer and y_quant the output of the quantized layer on the
// same calibration inputs (the layer's pre-activation output, e.g. a conv output with its folded
// BatchNorm, before the ReLU), per output channel c:
//
//   mu_c = E[y_float,c - y_quant,c]      over every calibration value of channel c
//   b_c <- b_c + mu_c                    (apply: the layer's bias, folded)
//
// after which the quantized layer's mean output on the calibration data equals the float
// layer's, channel by channel (exactly, up to the rounding of b_c + mu_c to T and of the
// layer's own arithmetic). The shift is a constant per channel, so it folds into the bias and
// costs nothing at inference; integer inference adds round(mu_c / (s_x s_w)) to the int32 bias.
//
// Composition with bias_corrector (the paper's weight correction, bias_corrector.hpp). That one
// is data-free: it gives each row of Wq the mean (and norm) of W, which removes the output shift
// mu_W * Σ_j x_j but not Σ_j (W - Wq')_cj E[x_j] when the inputs' means differ, nor the effect of
// quantized inputs. Apply it first (to the weights, or folded as xi into the scale and
// beta * Σ x into the bias), then measure y_quant with the corrected layer: mu is then the
// residual shift that the weight correction left, and adding it to the bias keeps the weight
// correction (the two add; nothing is undone). Measured before the weight correction and applied
// together with it, the weight mean shift would be corrected twice. Layer by layer through a
// network, measure each layer's y_quant on the outputs of the already quantized and corrected
// layers before it (y_float on the float network's), so that each correction sees the inputs it
// will get.
//
// Accumulation: a batch is a row view (layout.hpp), y_float and y_quant of the same shape,
// rows = outer * channels, row r of channel r % channels (NCHW conv outputs (N*C) x (H*W), a
// linear layer's [N, K] output as its transpose-free (N*K) x 1 view, or K x N with outer = 1).
// Per channel, add() accumulates Σ (y_float - y_quant) in double, the difference of each pair
// formed in double (exact for float data), and the count of values; batches of any size, in any
// order, and merge() of accumulators from other threads give the same bias() up to the
// rounding of the double sums. One pass over the batch (GCC/Clang vector extensions, as
// calibration.hpp; plain loops elsewhere): a NaN or infinity in either output makes its
// channel's sum non-finite, so the finiteness check costs nothing unless it fails (then a
// second pass names the value). Contiguous rows are read in place, other expressions one row
// at a time through a buffer. About 0.5 ns per float pair from cache, 1.2 ns from memory (a
// 25 MB batch), on the project's shared 2-core machine. empirical_bias_ref is the plain twin:
// one naive double loop over every value.
//
// Errors (ptq::error naming function, argument and value; the accumulator and the bias vector
// are unchanged when one is thrown): channels < 1, y_float and y_quant of different shapes, an
// empty batch, rows not a multiple of channels, NaN or infinity in either (or a sum that
// overflows double), merging accumulators of different channel counts, bias() or apply()
// before any data, a bias vector of the wrong length or not finite, and corrected biases beyond
// the range of T.
#pragma once

#include <Eigen/Core>
#include <cmath>
#include <cstring>
#include <limits>
#include <type_traits>

#include "calibration.hpp"
#include "config.hpp"
#include "error.hpp"
#include "gemmlowp_quantizer.hpp"
#include "layout.hpp"

namespace ptq {

namespace detail {
namespace ebias {

// Σ (double(a) - double(b)) over n values.
template <class T>
double sum_diff(const T* a, const T* b, index n) {
  double s = 0;
  index i = 0;
#if PTQ_CALIBRATION_SIMD
  {
    using calib::dv;
    constexpr index K = calib::K;
    typedef typename calib::vec<T>::narrow N;
    dv s0 = {}, s1 = {};
    N a0, a1, b0, b1;
    for (; i + 2 * K <= n; i += 2 * K) {
      std::memcpy(&a0, a + i, sizeof(a0));
      std::memcpy(&a1, a + i + K, sizeof(a1));
      std::memcpy(&b0, b + i, sizeof(b0));
      std::memcpy(&b1, b + i + K, sizeof(b1));
      s0 += __builtin_convertvector(a0, dv) - __builtin_convertvector(b0, dv);
      s1 += __builtin_convertvector(a1, dv) - __builtin_convertvector(b1, dv);
    }
    s0 += s1;
    for (index k = 0; k < K; ++k) s += s0[k];
  }
#endif
  for (; i < n; ++i) s += static_cast<double>(a[i]) - static_cast<double>(b[i]);
  return s;
}

// Shapes and scalar types; check_pair adds the finiteness of every value.
template <class DF, class DQ>
void check_shapes(const Eigen::DenseBase<DF>& yf, const Eigen::DenseBase<DQ>& yq, index channels, const char* where) {
  using T = typename DF::Scalar;
  static_assert(std::is_same<T, float>::value || std::is_same<T, double>::value,
                "empirical_bias: the outputs must be float or double");
  static_assert(std::is_same<T, typename DQ::Scalar>::value,
                "empirical_bias: y_float and y_quant must have the same scalar type");
  require(yf.rows() == yq.rows() && yf.cols() == yq.cols(), where, "y_quant is ", yq.rows(), " x ", yq.cols(),
          " but y_float is ", yf.rows(), " x ", yf.cols());
  check_channels(yf.rows(), yf.cols(), channels, where);
}
template <class DF, class DQ>
void check_pair(const Eigen::DenseBase<DF>& yf, const Eigen::DenseBase<DQ>& yq, index channels, const char* where) {
  check_shapes(yf, yq, channels, where);
  check_finite(yf, where, "y_float");
  check_finite(yq, where, "y_quant");
}

}  // namespace ebias
}  // namespace detail

// Per-channel E[y_float - y_quant] over batches; see the top of this file.
class empirical_bias {
 public:
  explicit empirical_bias(index channels) : channels_(channels) {
    detail::require(channels >= 1, "ptq::empirical_bias::empirical_bias", "channels = ", channels,
                    " must be at least 1");
    sum_ = Eigen::VectorXd::Zero(channels);
  }

  // One batch of the layer's float and quantized outputs on the same inputs (same shape).
  template <class DF, class DQ>
  void add(const Eigen::DenseBase<DF>& y_float, const Eigen::DenseBase<DQ>& y_quant) {
    constexpr const char* where = "ptq::empirical_bias::add";
    detail::ebias::check_shapes(y_float, y_quant, channels_, where);
    const index rows = y_float.rows(), cols = y_float.cols();
    Eigen::VectorXd batch = Eigen::VectorXd::Zero(channels_);
    detail::calib::row_reader<DF> rf(y_float.derived());
    detail::calib::row_reader<DQ> rq(y_quant.derived());
    for (index r = 0; r < rows; ++r) batch[r % channels_] += detail::ebias::sum_diff(rf.row(r), rq.row(r), cols);
    const Eigen::VectorXd next = sum_ + batch;
    for (index c = 0; c < channels_; ++c) {
      if (std::isfinite(next[c])) continue;
      // A NaN or infinity anywhere makes its channel's sum NaN or infinite: name it (one
      // more pass, only on this error path), else the sum overflowed.
      detail::check_finite(y_float, where, "y_float");
      detail::check_finite(y_quant, where, "y_quant");
      detail::fail(where, "the sum of y_float - y_quant of channel ", c, " overflows double (values too large)");
    }
    sum_ = next;
    count_ += (rows / channels_) * cols;
    ++batches_;
  }

  // Another accumulator's data (same channels), as if its batches had been added here.
  void merge(const empirical_bias& other) {
    constexpr const char* where = "ptq::empirical_bias::merge";
    detail::require(other.channels_ == channels_, where, "other.channels() = ", other.channels_,
                    " does not match channels() = ", channels_);
    const Eigen::VectorXd next = sum_ + other.sum_;
    for (index c = 0; c < channels_; ++c)
      detail::require(std::isfinite(next[c]), where, "the merged sum of channel ", c, " overflows double");
    sum_ = next;
    count_ += other.count_;
    batches_ += other.batches_;
  }

  // mu_c = Σ (y_float - y_quant) / count, per channel.
  Eigen::VectorXd bias() const {
    detail::require(count_ > 0, "ptq::empirical_bias::bias", "no data: add() at least one batch first");
    return sum_ / static_cast<double>(count_);
  }

  // bias[c] <- bias[c] + mu_c (in double, rounded once to the bias' type); a vector of channels() entries.
  template <class D>
  void apply(Eigen::DenseBase<D>& bias_vector) const {
    constexpr const char* where = "ptq::empirical_bias::apply";
    using T = typename D::Scalar;
    static_assert(std::is_floating_point<T>::value, "empirical_bias::apply: the bias must be float or double");
    detail::require(count_ > 0, where, "no data: add() at least one batch first");
    detail::require(bias_vector.size() == channels_ && (bias_vector.rows() == 1 || bias_vector.cols() == 1), where,
                    "bias is ", bias_vector.rows(), " x ", bias_vector.cols(), ", not a vector of the ", channels_,
                    " channels");
    const Eigen::VectorXd mu = bias();
    const double big = static_cast<double>(std::numeric_limits<T>::max());
    for (index c = 0; c < channels_; ++c) {
      const double b = static_cast<double>(bias_vector.derived().coeff(c));
      detail::require(std::isfinite(b), where, "bias[", c, "] = ", b, " is not finite");
      const double v = b + mu[c];
      detail::require(std::abs(v) <= big, where, "bias[", c, "] + mu[", c, "] = ", v,
                      " is outside the range of the bias' type");
    }
    for (index c = 0; c < channels_; ++c)
      bias_vector.derived().coeffRef(c) =
          static_cast<T>(static_cast<double>(bias_vector.derived().coeff(c)) + mu[c]);
  }
  template <class D>
  void apply(Eigen::DenseBase<D>&& bias_vector) const {
    apply(bias_vector);
  }

  index channels() const { return channels_; }
  index count() const { return count_; }      // values per channel
  index batches() const { return batches_; }  // add() calls (merged ones included)
  const Eigen::VectorXd& sum() const { return sum_; }  // Σ (y_float - y_quant) per channel

 private:
  index channels_;
  Eigen::VectorXd sum_;
  index count_ = 0, batches_ = 0;
};

// The plain twin of one batch: mu_c with a naive double loop over every value (the same
// checks; equals empirical_bias(channels) after add(y_float, y_quant), to rounding).
template <class DF, class DQ>
Eigen::VectorXd empirical_bias_ref(const Eigen::DenseBase<DF>& y_float, const Eigen::DenseBase<DQ>& y_quant,
                                   index channels) {
  constexpr const char* where = "ptq::empirical_bias_ref";
  detail::require(channels >= 1, where, "channels = ", channels, " must be at least 1");
  detail::ebias::check_pair(y_float, y_quant, channels, where);
  Eigen::VectorXd s = Eigen::VectorXd::Zero(channels);
  for (index r = 0; r < y_float.rows(); ++r)
    for (index j = 0; j < y_float.cols(); ++j)
      s[r % channels] += static_cast<double>(y_float.derived().coeff(r, j)) -
                         static_cast<double>(y_quant.derived().coeff(r, j));
  for (index c = 0; c < channels; ++c)
    detail::require(std::isfinite(s[c]), where, "the sum of y_float - y_quant of channel ", c, " overflows double");
  return s / static_cast<double>((y_float.rows() / channels) * y_float.cols());
}

}  // namespace ptq
