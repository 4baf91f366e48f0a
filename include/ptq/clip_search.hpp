// clip_search.hpp: clipping ranges that minimize the measured quantization MSE of calibration data, from ACIQ's start.
//
// ACIQ (aciq.hpp) takes the clip a from a model: a Laplace or Gauss density and 2^M bins. The
// data follow neither law exactly (heavy tails, skew, a few outliers), and the pipeline's
// quantizer is the GEMMLOWP grid: 2^M - 1 intervals (the model's optimum for omega = 2^M - 1, not
// the 2^M that aciq_alpha uses), the range extended to contain 0 and the zero point rounded, so
// that the grid is not where the model puts it. clip_search measures instead. Per channel c
// (bits M_c, statistics mu = stats.mean, min = stats.min, scale s = stats.b for Laplace,
// stats.std for Gauss) and its values x in the calibration data, for a clip a >= 0:
//
//   range(a):  signed    lo = max(min, mu - a),  hi = lo + 2a       (aciq_ranges' rule, the
//              unsigned  lo = 0,                 hi = max(mu, 0) + a  same mean and minimum)
//   MSE(a)  =  (1/n) Σ_x (fq_a(x) - t(x))^2,   t(x) = x (signed), max(x, 0) (unsigned)
//
// fq_a is exactly what gemmlowp_quantizer::fake_quantize computes with
// quant_params<T>::per_channel(range(a), M_c, stats.mean): scale and zero point from the range in
// double, stored as T; q = clamp(nearbyint(x * inv_scale) + zero_point, 0, qmax), rounding half to
// even; out = (q - zero_point) * scale in T (the same Eigen expression, so bit for bit the same
// values). out - t(x) is formed in double (exact: both are T), squared and summed in double.
// Unsigned ranges quantize a conv output that feeds a ReLU: what the next layer sees is
// max(x, 0), and the quantizer's clamp at code zero_point (real 0) is that ReLU, so negative
// values cost nothing. The range rule is ACIQ's, so the searched clip is one number per channel
// and the result plugs in wherever aciq_ranges' does.
//
// The search, per channel with M_c >= 1:
//   1. a0 = ACIQ's clip, alpha*(dist, M_c, range) * s (aciq_alpha's exact values): range(a0) is
//      aciq_ranges(dist, stats, bits, range)[c] bit for bit.
//   2. Grid: grid_points clips spaced geometrically from grid_lo * a0 to a_max = max(a0, a_cover),
//      a_cover the smallest clip whose range covers every value of the channel (its data's max).
//      Geometric: the optimum's place relative to a0 is a factor, not an offset (heavy tails put
//      a_cover at 10-100 a0). All grid clips are measured in one pass over the data, a block of
//      1024 values at a time (it stays in L1 while every clip sees it).
//   3. Refine, inside the two grid cells around the best grid clip: refine_points clips evenly
//      spaced there (one pass), then golden-section search between the neighbours of the best
//      of those, until the bracket is narrower than refine_tolerance times its upper end.
//      MSE(a) is not smooth: it steps where the zero point moves (signed ranges) and, with few
//      values per code, where values cross code boundaries; its local minima lie within ~1e-4
//      (relative) of each other. The finer grid keeps the golden section off most shallow ones:
//      on 2000 stratified values per channel the result is within 7e-6 of the best of a
//      2000-clip scan at 1 to 4 bits, within 5e-4 at 8 bits, where 2000 values put ~8 in each
//      code (test_clip_search.cpp; golden section alone, on 3000 values: 1e-4 and 4e-3).
//   4. The result is the best clip measured (grid, refine, a0; ties go to a0), so
//      MSE(result) <= MSE(ACIQ) on the data measured, by construction.
// A 0-bit channel is a constant (the mean, clamped into its range): no clip to search. It keeps
// ACIQ's one-bin range, and its MSE is measured with that constant.
//
// Subsampling (max_values > 0): a channel with more than max_values values is searched on every
// k-th of its values (k = ceil(n / max_values), in row-view order: a fixed stride, no
// randomness), gathered once into a buffer. The chosen and the ACIQ clip are then measured again
// on every value; if the chosen one is worse there, the channel keeps ACIQ's range. So
// MSE(result) <= MSE(ACIQ) holds on all the data whatever max_values. Default: 0 (all values).
//
// Cost: grid_points + 1 + refine_points + ~12 golden steps = about 77 clips measured per channel
// with the defaults, each over the channel's values (the grid's and the finer grid's in one
// pass each, a block at a time), ~0.5 ns per value and clip on AVX-512 (GCC vector extensions,
// as calibration.hpp; plain loops elsewhere): 64 channels x 512 images x 784 pixels, 25.7 M
// floats, take about 1 s on one core; with max_values = 65536, 0.3 s (MSE 0.03% higher at 4
// bits, 0.4% at 8). Single-threaded: run layers (or channel blocks with their stats) in parallel
// outside.
//
// clip_choice: per layer, one of three range sets by the layer's measured MSE (over every value of
// every channel): ACIQ Laplace, ACIQ Gauss (both exact alpha*), or the searched ranges (started
// from params.dist). Ties go to Laplace, then Gauss (no search needed), and the winner is named.
//
// Data: a row view (layout.hpp), rows = outer * channels, row r of channel r % channels (NCHW
// activations (N*C) x (H*W), K x N tensors), any Eigen expression of float or double (rows are
// read in place when contiguous, else copied one row at a time into a buffer). Granularity
// per_channel: channels = stats.channels(); per_tensor: stats of one channel, every value of the
// view is that channel. The overloads without stats compute them exactly (pooled over every
// value, calibration_statistics in stats_mode::exact, two passes). A pipeline passes the stats it
// clips with (batch_mean's average of per-image maxima, say): a0 is then its ACIQ range.
//
// Every optimized routine has a plain twin: clip_search_ref / clip_choice_ref measure every
// candidate with a scalar loop over coeff(r, j), one value at a time, in double, through the same
// candidate sequence; they agree with the fast forms to the rounding of the sums.
//
// Errors (ptq::error naming function, argument and value; nothing is returned, the caller's
// variables keep their values): an empty view, rows not a multiple of the channels, NaN or
// infinity in the data, stats of the wrong length, not finite or with a negative scale, bits of
// the wrong length or outside [0, 8] ([1, 8] per tensor), per_tensor with stats of more than one
// channel, grid_points outside [2, 4096], refine_points outside [0, 4096], grid_lo outside (0, 1],
// refine_tolerance outside (0, 1), max_values negative, an invalid distribution, range kind or
// granularity, and clipping ranges that overflow (double, or the grid in T).
#pragma once

#include <Eigen/Core>
#include <algorithm>
#include <cmath>
#include <cstring>
#include <limits>
#include <type_traits>
#include <utility>
#include <vector>

#include "aciq.hpp"
#include "calibration.hpp"
#include "config.hpp"
#include "error.hpp"
#include "gemmlowp_quantizer.hpp"
#include "layout.hpp"
#include "types.hpp"

namespace ptq {

struct clip_search_params {
  distribution dist = distribution::laplace;     // ACIQ start: Laplace (stats.b) or Gauss (stats.std)
  range_kind range = range_kind::signed_range;   // unsigned: a conv output that feeds a ReLU
  granularity g = granularity::per_channel;      // per_tensor: stats of one channel, the whole view
  int grid_points = 32;                          // geometric grid, [2, 4096]
  double grid_lo = 0.3;                          // first grid clip = grid_lo * a0, (0, 1]
  int refine_points = 32;                        // finer grid inside the best grid cell, [0, 4096]
  double refine_tolerance = 1e-3;                // golden section's relative bracket width, (0, 1)
  index max_values = 0;                          // values per channel searched (0: all; see the top)
};

// One entry per channel (one for per tensor).
struct clip_search_result {
  channel_ranges ranges;       // the chosen ranges: range(clip)
  channel_ranges aciq_ranges;  // ACIQ's: range(aciq_clip) == aciq_ranges(dist, stats, bits, range)
  Eigen::VectorXd clip;        // the chosen clip a
  Eigen::VectorXd aciq_clip;   // a0 = alpha* x scale
  Eigen::VectorXd mse;         // measured MSE of ranges, over every value of the channel
  Eigen::VectorXd aciq_mse;    // measured MSE of aciq_ranges, over every value
  Eigen::VectorXi bits;
  Eigen::VectorXd mean;  // stats.mean: the constant of a 0-bit channel (quant_params::per_channel's mean)
  granularity g = granularity::per_channel;
  range_kind range = range_kind::signed_range;
  index evaluations = 0;  // clips measured, over all channels (the cost: values x clips)

  index channels() const { return clip.size(); }

  // The quantizer that was measured: per_channel(ranges, bits, mean), or per_tensor(lo, hi, bits).
  template <class T>
  quant_params<T> params() const {
    if (g == granularity::per_tensor) return quant_params<T>::per_tensor(ranges.lo[0], ranges.hi[0], bits[0]);
    return quant_params<T>::per_channel(ranges, bits, mean);
  }
};

enum class clip_method { aciq_laplace, aciq_gauss, searched };

inline const char* to_string(clip_method m) {
  return m == clip_method::aciq_laplace ? "aciq_laplace" : m == clip_method::aciq_gauss ? "aciq_gauss" : "searched";
}

struct clip_choice_result {
  clip_method method = clip_method::aciq_laplace;  // the winner
  channel_ranges ranges;                           // the winner's ranges
  double mse_laplace = 0, mse_gauss = 0, mse_searched = 0;  // layer MSE over every value
  Eigen::VectorXd mse;                             // the winner's per-channel MSE
  clip_search_result search;                       // the searched candidate (started from params.dist)

  template <class T>
  quant_params<T> params() const {
    if (search.g == granularity::per_tensor)
      return quant_params<T>::per_tensor(ranges.lo[0], ranges.hi[0], search.bits[0]);
    return quant_params<T>::per_channel(ranges, search.bits, search.mean);
  }
};

namespace detail {
namespace clip {

// One candidate quantizer: fake_quantize's per-channel coefficients in T.
template <class T>
struct quantizer {
  T inv, zp, qmax, scale;
};

// The quantizer quant_params<T>::per_channel builds for one channel's range, bits and mean.
template <class T>
quantizer<T> quantizer_of(double lo, double hi, int bits, double mean) {
  channel_ranges r;
  r.lo = Eigen::VectorXd::Constant(1, lo);
  r.hi = Eigen::VectorXd::Constant(1, hi);
  const quant_params<T> p =
      quant_params<T>::per_channel(r, Eigen::VectorXi::Constant(1, bits), Eigen::VectorXd::Constant(1, mean));
  return {inv_scale_of(p, 0), static_cast<T>(p.zero_point[0]), static_cast<T>(p.qmax(0)), p.scale[0]};
}

// quantizer_of's checks (a range outside T, a grid that overflows T) under `where`.
template <class T>
void check_quantizer(double lo, double hi, int bits, double mean, index c, const char* where) {
  try {
    quantizer_of<T>(lo, hi, bits, mean);
  } catch (const error& e) {
    fail(where, "channel ", c, ": ", e.what());
  }
}

// ACIQ's range rule for clip a (aciq_ranges_impl's expressions).
inline std::pair<double, double> range_of(double a, double mean, double min, bool is_signed) {
  if (is_signed) {
    const double lo = std::max(min, mean - a);
    return {lo, lo + 2.0 * a};
  }
  return {0.0, std::max(mean, 0.0) + a};
}

// ACIQ's clip and range of channel c for `dist` (aciq_ranges' values), checked under `where`:
// a range that overflows double, or whose grid overflows T, throws.
template <class T>
std::pair<double, std::pair<double, double>> aciq_channel(distribution dist, const channel_stats& s, int bits,
                                                          range_kind range, index c, const char* where) {
  const bool is_signed = range == range_kind::signed_range;
  const Eigen::VectorXd& scale = dist == distribution::laplace ? s.b : s.std;
  const double a = aciq_alpha_of_bits(dist, bits, range) * scale[c];
  const auto r = range_of(a, s.mean[c], is_signed ? s.min[c] : 0.0, is_signed);
  if (!std::isfinite(a) || !std::isfinite(r.first) || !std::isfinite(r.second))
    fail(where, dist == distribution::laplace ? "stats.b[" : "stats.std[", c, "] = ", scale[c],
         " gives a clipping range that overflows (a = ", a, ")");
  check_quantizer<T>(r.first, r.second, bits, s.mean[c], c, where);
  return {a, r};
}

constexpr index block = 1024;  // values per block: x and fq(x) stay in L1 while every clip sees them

// Σ (y - t)^2 in double, t = x or max(x, 0); y = fq(x) in T, x and y n values.
template <class T>
double sum_sq(const T* x, const T* y, index n, bool relu) {
  double s = 0;
  index i = 0;
#if PTQ_CALIBRATION_SIMD
  {
    using calib::dv;
    constexpr index K = calib::K;
    typedef typename calib::vec<T>::narrow N;
    const dv zero = {};
    dv s0 = {}, s1 = {};
    N a0, a1, b0, b1;
    for (; i + 2 * K <= n; i += 2 * K) {
      std::memcpy(&a0, y + i, sizeof(a0));
      std::memcpy(&a1, y + i + K, sizeof(a1));
      std::memcpy(&b0, x + i, sizeof(b0));
      std::memcpy(&b1, x + i + K, sizeof(b1));
      dv t0 = __builtin_convertvector(b0, dv), t1 = __builtin_convertvector(b1, dv);
      if (relu) t0 = t0 > zero ? t0 : zero, t1 = t1 > zero ? t1 : zero;
      const dv e0 = __builtin_convertvector(a0, dv) - t0, e1 = __builtin_convertvector(a1, dv) - t1;
      s0 += e0 * e0, s1 += e1 * e1;
    }
    s0 += s1;
    for (index k = 0; k < K; ++k) s += s0[k];
  }
#endif
  for (; i < n; ++i) {
    const double t = relu ? std::max(static_cast<double>(x[i]), 0.0) : static_cast<double>(x[i]);
    const double e = static_cast<double>(y[i]) - t;
    s += e * e;
  }
  return s;
}

// sse[k] += Σ (fq_k(x) - t(x))^2 over x[0, n) for every candidate k (vectorized: the
// fake_quantize kernel's expression into a buffer, then sum_sq).
template <class T>
void add_sse_fast(const T* x, index n, const std::vector<quantizer<T>>& q, bool relu, double* sse) {
  using array = Eigen::Array<T, Eigen::Dynamic, 1>;
  alignas(64) T buffer[block];
  for (index o = 0; o < n; o += block) {
    const index m = std::min(block, n - o);
    const Eigen::Map<const array> in(x + o, m);
    Eigen::Map<array> y(buffer, m);
    for (std::size_t k = 0; k < q.size(); ++k) {
      const quantizer<T>& c = q[k];
      y = (((in * c.inv).rint() + c.zp).max(T(0)).min(c.qmax) - c.zp) * c.scale;
      sse[k] += sum_sq(x + o, buffer, m, relu);
    }
  }
}

// The scalar twin: one value at a time, gemmlowp_quantizer's scalar formulas.
template <class T>
double sq_err_ref(T x, const quantizer<T>& c, bool relu) {
  const T q = quantize_value(x, c.inv, c.zp, c.qmax);
  const double t = relu ? std::max(static_cast<double>(x), 0.0) : static_cast<double>(x);
  const double e = static_cast<double>(dequantize_value(q, c.zp, c.scale)) - t;
  return e * e;
}

// The values of one channel: rows c, c + C, ... of the view (all rows with C = 1), or every
// `stride`-th of them in row-view order. measure(q, sse) adds every candidate's Σ squared error.
template <class D, bool Fast>
class channel_data {
 public:
  using T = typename D::Scalar;

  channel_data(const D& m, index channels) : m_(m), reader_(m), C_(channels) {}

  index count() const { return (m_.rows() / C_) * m_.cols(); }

  // Search on every stride-th value (stride > 1: gathered once; the fast form's buffer).
  void subsample(index c, index stride) {
    c_ = c;
    stride_ = stride;
    sub_.clear();
    if (!Fast || stride == 1) return;
    sub_.reserve(static_cast<std::size_t>((count() + stride - 1) / stride));
    index i = 0;
    for (index r = c; r < m_.rows(); r += C_) {
      const T* row = reader_.row(r);
      for (index j = 0; j < m_.cols(); ++j, ++i)
        if (i % stride == 0) sub_.push_back(row[j]);
    }
  }

  // Over the searched values (the subsample, or all).
  void measure(const std::vector<quantizer<T>>& q, bool relu, double* sse) { run(q, relu, sse, stride_); }
  // Over every value of the channel.
  void measure_all(const std::vector<quantizer<T>>& q, bool relu, double* sse) { run(q, relu, sse, 1); }

 private:
  void run(const std::vector<quantizer<T>>& q, bool relu, double* sse, index stride) {
    std::fill(sse, sse + q.size(), 0.0);
    if constexpr (Fast) {
      if (stride > 1) {
        add_sse_fast(sub_.data(), static_cast<index>(sub_.size()), q, relu, sse);
        return;
      }
      for (index r = c_; r < m_.rows(); r += C_) add_sse_fast(reader_.row(r), m_.cols(), q, relu, sse);
    } else {
      index i = 0;
      for (index r = c_; r < m_.rows(); r += C_)
        for (index j = 0; j < m_.cols(); ++j, ++i) {
          if (i % stride != 0) continue;
          const T x = m_.coeff(r, j);
          for (std::size_t k = 0; k < q.size(); ++k) sse[k] += sq_err_ref(x, q[k], relu);
        }
    }
  }

  const D& m_;
  calib::row_reader<D> reader_;
  index C_, c_ = 0, stride_ = 1;
  std::vector<T> sub_;
};

inline void check_params(const clip_search_params& p, const char* where) {
  aciq_check_dist(p.dist, where);
  aciq_check_range(p.range, where);
  if (p.g != granularity::per_channel && p.g != granularity::per_tensor)
    fail(where, "params.g = ", static_cast<int>(p.g), " is not a granularity (per_channel or per_tensor)");
  if (p.grid_points < 2 || p.grid_points > 4096)
    fail(where, "params.grid_points = ", p.grid_points, " is outside [2, 4096]");
  if (!(p.grid_lo > 0.0 && p.grid_lo <= 1.0)) fail(where, "params.grid_lo = ", p.grid_lo, " is outside (0, 1]");
  if (p.refine_points < 0 || p.refine_points > 4096)
    fail(where, "params.refine_points = ", p.refine_points, " is outside [0, 4096]");
  if (!(p.refine_tolerance > 0.0 && p.refine_tolerance < 1.0))
    fail(where, "params.refine_tolerance = ", p.refine_tolerance, " is outside (0, 1)");
  if (p.max_values < 0) fail(where, "params.max_values = ", p.max_values, " is negative");
}

// Validates the view and finds every channel's data min and max (the grid's upper end).
template <class D>
void check_data(const Eigen::DenseBase<D>& rows, index channels, const char* where, Eigen::VectorXd& lo,
                Eigen::VectorXd& hi) {
  using T = typename D::Scalar;
  static_assert(std::is_same<T, float>::value || std::is_same<T, double>::value,
                "clip_search: the data must be float or double");
  check_channels(rows.rows(), rows.cols(), channels, where);
  check_finite(rows, where, "rows");
  lo = Eigen::VectorXd::Constant(channels, std::numeric_limits<double>::infinity());
  hi = -lo;
  for (index r = 0; r < rows.rows(); ++r) {
    const index c = r % channels;
    lo[c] = std::min(lo[c], static_cast<double>(rows.derived().row(r).minCoeff()));
    hi[c] = std::max(hi[c], static_cast<double>(rows.derived().row(r).maxCoeff()));
  }
}

inline index result_channels(const clip_search_params& p, const channel_stats& s, const char* where) {
  const index n = s.mean.size();
  if (p.g == granularity::per_tensor && n != 1)
    fail(where, "params.g = per_tensor needs stats of 1 channel, stats.mean.size() = ", n);
  if (n < 1) fail(where, "stats.mean.size() = 0: no channels");
  return n;
}

inline Eigen::VectorXi check_bits_vector(const Eigen::Ref<const Eigen::VectorXi>& bits, index n,
                                         const clip_search_params& p, const char* where) {
  if (bits.size() != n) fail(where, "bits.size() = ", bits.size(), " does not match the ", n, " channels of stats");
  const int lo = p.g == granularity::per_tensor ? 1 : 0;
  for (index c = 0; c < n; ++c)
    if (bits[c] < lo || bits[c] > 8) fail(where, "bits[", c, "] = ", bits[c], " is outside [", lo, ", 8]");
  return bits;
}

// Validates stats for `dist` (and both scales when `both`), returns the channel count.
inline index check_stats(const clip_search_params& p, const channel_stats& s, bool both, const char* where) {
  const index n = result_channels(p, s, where);
  aciq_check_ranges_args(p.dist, s, p.range, where);
  if (both)
    aciq_check_ranges_args(p.dist == distribution::laplace ? distribution::gauss : distribution::laplace, s, p.range,
                           where);
  return n;
}

template <class D>
channel_stats pooled_stats(const Eigen::DenseBase<D>& rows, index channels) {
  calibration_statistics acc(channels, stats_mode::exact);
  acc.add(rows);
  acc.begin_deviation_pass();
  acc.add(rows);
  return acc.result();
}

// The search for every channel (see the top); data validated, stats and bits too.
template <bool Fast, class D>
clip_search_result search(const Eigen::DenseBase<D>& rows, const channel_stats& s, const Eigen::VectorXi& bits,
                          const clip_search_params& p, const Eigen::VectorXd& data_lo, const Eigen::VectorXd& data_hi,
                          const char* where) {
  using T = typename D::Scalar;
  const index C = s.mean.size();
  const bool is_signed = p.range == range_kind::signed_range, relu = !is_signed;
  clip_search_result out;
  out.g = p.g;
  out.range = p.range;
  out.bits = bits;
  out.mean = s.mean;
  out.ranges.lo.resize(C), out.ranges.hi.resize(C), out.aciq_ranges.lo.resize(C), out.aciq_ranges.hi.resize(C);
  out.clip.resize(C), out.aciq_clip.resize(C), out.mse.resize(C), out.aciq_mse.resize(C);
  // Every ACIQ range first: an overflow throws before any measuring.
  for (index c = 0; c < C; ++c) {
    const auto ar = aciq_channel<T>(p.dist, s, bits[c], p.range, c, where);
    out.aciq_clip[c] = ar.first;
    out.aciq_ranges.lo[c] = ar.second.first, out.aciq_ranges.hi[c] = ar.second.second;
  }
  const D& m = rows.derived();
  channel_data<D, Fast> data(m, C);
  const index n = data.count();
  const index stride = p.max_values > 0 && n > p.max_values ? (n + p.max_values - 1) / p.max_values : 1;
  std::vector<quantizer<T>> q;
  std::vector<double> sse;
  for (index c = 0; c < C; ++c) {
    const double mu = s.mean[c], min = is_signed ? s.min[c] : 0.0, a0 = out.aciq_clip[c];
    const int b = bits[c];
    auto cand = [&](double a) {
      const auto r = range_of(a, mu, min, is_signed);
      return quantizer_of<T>(r.first, r.second, b, mu);
    };
    data.subsample(c, stride);
    // Measure clips `as` on the searched values; returns their Σ squared errors.
    auto measure = [&](const std::vector<double>& as) {
      q.clear();
      for (double a : as) q.push_back(cand(a));
      sse.assign(as.size(), 0.0);
      data.measure(q, relu, sse.data());
      out.evaluations += static_cast<index>(as.size());
      return sse;
    };
    // The clip beyond which nothing is clipped (see the top).
    double a_cover = 0.0;
    if (is_signed) {
      const double top = std::min((data_hi[c] - min) / 2.0, data_hi[c] - mu);
      const double bottom = min <= data_lo[c] ? mu - data_lo[c] : 0.0;
      a_cover = std::max({top, bottom, 0.0});
    } else {
      a_cover = std::max(std::max(data_hi[c], 0.0) - std::max(mu, 0.0), 0.0);
    }
    const double a_max = std::max(a0, a_cover), a_lo = p.grid_lo * (a0 > 0.0 ? a0 : a_max);
    const bool grid_ok = b > 0 && a_max > a_lo;
    // a0 and the grid in one pass: clips[0] = a0, clips[1 + i] = grid clip i.
    std::vector<double> clips{a0};
    if (grid_ok) {
      const int G = p.grid_points;
      const double step = std::log(a_max / a_lo) / (G - 1);
      for (int i = 0; i < G; ++i) clips.push_back(i == G - 1 ? a_max : a_lo * std::exp(step * i));
    }
    const std::vector<double> first = measure(clips);
    const double best0 = first[0];
    double best_a = a0, best = best0;
    if (grid_ok) {
      std::size_t i_best = 1;
      for (std::size_t i = 1; i < clips.size(); ++i) {
        if (first[i] < first[i_best]) i_best = i;
        if (first[i] < best) best = first[i], best_a = clips[i];
      }
      const std::vector<double> grid(clips.begin() + 1, clips.end());
      i_best -= 1;
      // The grid neighbours of the best grid clip bracket the refine.
      double L = grid[i_best > 0 ? i_best - 1 : 0], R = grid[std::min(i_best + 1, grid.size() - 1)];
      if (p.refine_points > 0 && R > L) {
        // A finer grid inside the bracket, in one pass; then its best point's neighbours.
        std::vector<double> sub;
        for (int k = 1; k <= p.refine_points; ++k) sub.push_back(L + (R - L) * k / (p.refine_points + 1));
        const std::vector<double> f_sub = measure(sub);
        std::vector<std::pair<double, double>> pts{{L, first[1 + (i_best > 0 ? i_best - 1 : 0)]},
                                                   {grid[i_best], first[1 + i_best]},
                                                   {R, first[1 + std::min(i_best + 1, grid.size() - 1)]}};
        for (std::size_t k = 0; k < sub.size(); ++k) pts.push_back({sub[k], f_sub[k]});
        std::sort(pts.begin(), pts.end());
        std::size_t j = 0;
        for (std::size_t k = 0; k < pts.size(); ++k) {
          if (pts[k].second < pts[j].second) j = k;
          if (pts[k].second < best) best = pts[k].second, best_a = pts[k].first;
        }
        L = pts[j > 0 ? j - 1 : 0].first, R = pts[std::min(j + 1, pts.size() - 1)].first;
      }
      // Golden section on [L, R].
      const double inv_phi = 0.5 * (std::sqrt(5.0) - 1.0);
      double x1 = R - inv_phi * (R - L), x2 = L + inv_phi * (R - L);
      double f1 = measure({x1})[0], f2 = measure({x2})[0];
      auto consider = [&](double a, double f) {
        if (f < best) best = f, best_a = a;
      };
      consider(x1, f1), consider(x2, f2);
      for (int it = 0; it < 200 && R - L > p.refine_tolerance * R; ++it) {
        if (f1 <= f2) {
          R = x2, x2 = x1, f2 = f1;
          x1 = R - inv_phi * (R - L);
          f1 = measure({x1})[0];
          consider(x1, f1);
        } else {
          L = x1, x1 = x2, f1 = f2;
          x2 = L + inv_phi * (R - L);
          f2 = measure({x2})[0];
          consider(x2, f2);
        }
      }
    }
    double mse = best / static_cast<double>(n), mse0 = best0 / static_cast<double>(n);
    if (stride > 1) {  // measure the chosen and ACIQ's clip on every value
      q.assign({cand(best_a), cand(a0)});
      sse.assign(2, 0.0);
      data.measure_all(q, relu, sse.data());
      out.evaluations += 2;
      mse = sse[0] / static_cast<double>(n), mse0 = sse[1] / static_cast<double>(n);
      if (!(mse < mse0)) best_a = a0, mse = mse0;
    }
    const auto r = range_of(best_a, mu, min, is_signed);
    out.clip[c] = best_a;
    out.ranges.lo[c] = r.first, out.ranges.hi[c] = r.second;
    out.mse[c] = mse, out.aciq_mse[c] = mse0;
  }
  return out;
}

template <bool Fast, class D>
clip_search_result search_checked(const Eigen::DenseBase<D>& rows, const channel_stats& stats,
                                  const Eigen::Ref<const Eigen::VectorXi>& bits, const clip_search_params& p,
                                  const char* where) {
  check_params(p, where);
  const index C = check_stats(p, stats, false, where);
  const Eigen::VectorXi b = check_bits_vector(bits, C, p, where);
  Eigen::VectorXd lo, hi;
  check_data(rows, C, where, lo, hi);
  return search<Fast>(rows, stats, b, p, lo, hi, where);
}

// Per-channel MSE of fixed ranges (with each channel's bits and mean) over every value.
template <bool Fast, class D>
Eigen::VectorXd measure_ranges(const Eigen::DenseBase<D>& rows, const channel_ranges& r, const Eigen::VectorXi& bits,
                               const Eigen::VectorXd& mean, bool relu) {
  using T = typename D::Scalar;
  const index C = r.lo.size();
  channel_data<D, Fast> data(rows.derived(), C);
  Eigen::VectorXd mse(C);
  std::vector<quantizer<T>> q(1);
  double sse = 0;
  for (index c = 0; c < C; ++c) {
    q[0] = quantizer_of<T>(r.lo[c], r.hi[c], bits[c], mean[c]);
    data.subsample(c, 1);
    data.measure_all(q, relu, &sse);
    mse[c] = sse / static_cast<double>(data.count());
  }
  return mse;
}

template <bool Fast, class D>
clip_choice_result choose(const Eigen::DenseBase<D>& rows, const channel_stats& stats,
                          const Eigen::Ref<const Eigen::VectorXi>& bits, const clip_search_params& p,
                          const char* where) {
  check_params(p, where);
  const index C = check_stats(p, stats, true, where);
  const Eigen::VectorXi b = check_bits_vector(bits, C, p, where);
  Eigen::VectorXd lo, hi;
  check_data(rows, C, where, lo, hi);
  const bool lap = p.dist == distribution::laplace;
  const distribution d_other = lap ? distribution::gauss : distribution::laplace;
  channel_ranges r_other;
  r_other.lo.resize(C), r_other.hi.resize(C);
  for (index c = 0; c < C; ++c) {  // aciq_ranges(d_other, stats, b, p.range), checked under `where`
    const auto ar = aciq_channel<typename D::Scalar>(d_other, stats, b[c], p.range, c, where);
    r_other.lo[c] = ar.second.first, r_other.hi[c] = ar.second.second;
  }
  clip_choice_result out;
  out.search = search<Fast>(rows, stats, b, p, lo, hi, where);
  const Eigen::VectorXd mse_other =
      measure_ranges<Fast>(rows, r_other, b, stats.mean, p.range == range_kind::unsigned_range);
  // Equal counts per channel: the layer's MSE is the mean of the channels'.
  const double m_start = out.search.aciq_mse.mean(), m_other = mse_other.mean();
  out.mse_laplace = lap ? m_start : m_other;
  out.mse_gauss = lap ? m_other : m_start;
  out.mse_searched = out.search.mse.mean();
  const channel_ranges& r_lap = lap ? out.search.aciq_ranges : r_other;
  const channel_ranges& r_gau = lap ? r_other : out.search.aciq_ranges;
  const Eigen::VectorXd& e_lap = lap ? out.search.aciq_mse : mse_other;
  const Eigen::VectorXd& e_gau = lap ? mse_other : out.search.aciq_mse;
  if (out.mse_searched < std::min(out.mse_laplace, out.mse_gauss)) {
    out.method = clip_method::searched, out.ranges = out.search.ranges, out.mse = out.search.mse;
  } else if (out.mse_gauss < out.mse_laplace) {
    out.method = clip_method::aciq_gauss, out.ranges = r_gau, out.mse = e_gau;
  } else {
    out.method = clip_method::aciq_laplace, out.ranges = r_lap, out.mse = e_lap;
  }
  return out;
}

}  // namespace clip
}  // namespace detail

// Searched clipping ranges for the data `rows` (row view, see the top), starting from ACIQ's
// ranges for `stats` (channels = stats.channels(); per tensor: 1) and bits[c] in [0, 8].
template <class D>
clip_search_result clip_search(const Eigen::DenseBase<D>& rows, const channel_stats& stats,
                               const Eigen::Ref<const Eigen::VectorXi>& bits, const clip_search_params& params = {}) {
  return detail::clip::search_checked<true>(rows, stats, bits, params, "ptq::clip_search");
}
// The same bits for every channel.
template <class D>
clip_search_result clip_search(const Eigen::DenseBase<D>& rows, const channel_stats& stats, int bits,
                               const clip_search_params& params = {}) {
  return clip_search(rows, stats, Eigen::VectorXi::Constant(std::max<index>(stats.mean.size(), 0), bits), params);
}
// Statistics computed here, pooled over every value (channels: 1 for per tensor).
template <class D>
clip_search_result clip_search(const Eigen::DenseBase<D>& rows, index channels,
                               const Eigen::Ref<const Eigen::VectorXi>& bits, const clip_search_params& params = {}) {
  constexpr const char* where = "ptq::clip_search";
  detail::clip::check_params(params, where);
  if (params.g == granularity::per_tensor && channels != 1)
    detail::fail(where, "params.g = per_tensor needs channels = 1, got ", channels);
  Eigen::VectorXd lo, hi;
  detail::clip::check_data(rows, channels, where, lo, hi);
  return detail::clip::search_checked<true>(rows, detail::clip::pooled_stats(rows, channels), bits, params, where);
}

// The plain twin of clip_search: every clip measured one value at a time (see the top).
template <class D>
clip_search_result clip_search_ref(const Eigen::DenseBase<D>& rows, const channel_stats& stats,
                                   const Eigen::Ref<const Eigen::VectorXi>& bits,
                                   const clip_search_params& params = {}) {
  return detail::clip::search_checked<false>(rows, stats, bits, params, "ptq::clip_search_ref");
}

// Per layer: ACIQ Laplace, ACIQ Gauss or the searched ranges, whichever measures the lowest
// MSE over the layer (see the top). stats need mean, b, std (and min for signed ranges).
template <class D>
clip_choice_result clip_choice(const Eigen::DenseBase<D>& rows, const channel_stats& stats,
                               const Eigen::Ref<const Eigen::VectorXi>& bits, const clip_search_params& params = {}) {
  return detail::clip::choose<true>(rows, stats, bits, params, "ptq::clip_choice");
}
template <class D>
clip_choice_result clip_choice(const Eigen::DenseBase<D>& rows, const channel_stats& stats, int bits,
                               const clip_search_params& params = {}) {
  return clip_choice(rows, stats, Eigen::VectorXi::Constant(std::max<index>(stats.mean.size(), 0), bits), params);
}
template <class D>
clip_choice_result clip_choice_ref(const Eigen::DenseBase<D>& rows, const channel_stats& stats,
                                   const Eigen::Ref<const Eigen::VectorXi>& bits,
                                   const clip_search_params& params = {}) {
  return detail::clip::choose<false>(rows, stats, bits, params, "ptq::clip_choice_ref");
}

}  // namespace ptq
