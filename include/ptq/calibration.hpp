// calibration.hpp: per-channel calibration statistics (min, max, mean, b, std) accumulated over batches.
//
// What is computed. A batch is a row view (layout.hpp): `outer * channels` rows of
// `inner` contiguous values, row r belonging to channel r % channels. NCHW
// activations are (N*C) x (H*W) with channels = C; KCRS weights are K x (C*R*S)
// with channels = K. For the values x_1..x_n of one channel:
//
//   min, max                     the extreme values
//   mean = (1/n) Σ x_i
//   b    = (1/n) Σ |x_i - mean|  (the Laplace scale estimate used by ACIQ, docs/method.md §1)
//   std  = sqrt(Σ (x_i - mean)^2 / (n - 1))   (unbiased; defined as 0 when n = 1)
//
// Two modes (stats_mode):
//
//   batch_mean  The reference implementation's estimator (cnn-quantization collects
//               statistics per calibration batch and averages them). Every add() is
//               one batch; its five statistics are computed exactly on that batch (b
//               about the batch's own channel mean, two passes over the batch), and
//               result() is the plain, unweighted average over batches of each
//               statistic: min and max too, so result().min is the *mean of the
//               per-batch minima*, not the overall minimum (deliberately, as the
//               reference does; it makes the range less sensitive to one outlier).
//               Batches of different sizes weigh the same.
//
//   exact       The statistics of all values seen, as if every batch were one tensor.
//               min and max are exact; mean and std are accumulated in double, to
//               rounding, by merging (count, mean, M2 = Σ (x - mean)^2) per batch and
//               channel (Chan, Golub & LeVeque), each batch's M2 taken in two passes:
//                 mean = mean_a + d·n_b/n,  M2 = M2_a + M2_b + d²·n_a·n_b/n,  d = mean_b - mean_a.
//               b = E|x - mean| needs the *global* mean, unknown until every batch
//               has been seen, and Σ |x - m| cannot be corrected afterwards for a
//               different m without the data. Hence a two-pass protocol:
//                 1. add() every batch                 (pass stats_pass::moments)
//                 2. begin_deviation_pass()            freezes the per-channel mean
//                 3. add() the same values again       (pass stats_pass::deviation),
//                    in any batching and order: accumulates Σ |x - frozen mean|
//                 4. result()
//               result() throws unless pass 2 has seen as many values per channel as
//               pass 1, with the same min and max (a check that they are the same
//               values, not a proof); moments() gives
//               min, max, mean and std after pass 1 alone (enough for Gaussian
//               clipping), with b left empty.
//
// Sums reduced elsewhere. add_sums() and add_deviation_sums() take one batch's
// per-channel sums already reduced by other code (a GPU, another process; the
// device layer, include/ptq/thrust/statistics.hpp, feeds its reductions through
// them) and accumulate them exactly as add() accumulates its own: add(x) is its
// kernels' batch_sums (or deviation_sums) followed by the same accumulation. The
// sums are validated first (sizes, finiteness, lo <= mean <= hi, m2, abs >= 0,
// mode, pass and counts); a failed check throws and changes nothing.
//
// Merging. Accumulators from threads or processes combine with merge(): the result
// equals (to rounding) one accumulator that saw all their data. batch_mean: the
// batch lists are concatenated (a batch-count-weighted average of the averages).
// exact, pass 1: Chan's merge. exact, pass 2: all parts must carry the same frozen
// pass-1 moments (merge the pass-1 accumulators, call begin_deviation_pass() on the
// merged one, copy it to each worker, add() each worker's share, merge the copies).
//
// Precision. Every sum is taken in double (float input is widened value by value;
// min and max are exact); the deviations x - mean are formed in double. mean is
// clamped into [min, max], so a channel of equal values gives min = max = mean
// exactly and b = std = 0. batch_mean averages are running means, exact for equal
// per-batch values.
//
// Errors (ptq::error, nothing changes when one is thrown): channels < 1, an empty
// batch, rows not a multiple of channels, a NaN or infinity in a batch (the message
// names the row, column, channel and outer index; all checks precede any change of
// state), a batch whose statistics overflow double (double input near DBL_MAX),
// merging accumulators of a different mode, channel count or pass, result() or
// moments() without data, the deviation-pass misuses described above, and sums given
// to add_sums() / add_deviation_sums() that fail their checks (the message names the
// field and channel, e.g. "sums.mean[2] = nan is not in [sums.lo, sums.hi] = [...]").
//
// Speed. One add() is single-threaded and allocates O(channels), nothing per row.
// Each row of `inner` contiguous values is read with vector loops (GCC/Clang vector
// extensions at the target's width; plain loops elsewhere). batch_mean and exact
// pass 1 read each row twice (sum/min/max, then deviations from the channel mean):
// channels are processed in groups whose rows fit in about 512 KiB, so the second
// read normally hits cache; rows too short for that (under 4 KiB per group and
// outer index) are read in memory order instead. Exact pass 2 reads each value
// once. Inputs are any Eigen expression of float or double; a row-contiguous one
// (RowMajor matrix, Map, row block, column vector) is read in place, anything else
// one row at a time through a buffer of `inner` values.
#pragma once

#include <Eigen/Core>
#include <algorithm>
#include <cmath>
#include <cstddef>
#include <cstring>
#include <type_traits>
#include <vector>

#include "config.hpp"
#include "error.hpp"
#include "layout.hpp"
#include "types.hpp"

namespace ptq {

enum class stats_mode { batch_mean, exact };

// The phase of an exact-mode accumulator (batch_mean stays in `moments`).
enum class stats_pass { moments, deviation };

// One batch's per-channel sums, for calibration_statistics::add_sums() (batch_mean
// mode, and pass 1 of exact mode). Each vector has one entry per channel; for the
// `count` values x of channel c in the batch (count > 0):
//   lo[c], hi[c]  min and max of x
//   mean[c]       clamp(Σ x / count, lo[c], hi[c])   (the clamp keeps a constant channel exact)
//   m2[c]         Σ (x - mean[c])^2                    (about that clamped mean)
//   abs[c]        Σ |x - mean[c]|                      (batch_mean mode; exact mode does not use
//                                                       it: leave it empty, or it is checked)
// Take every sum in double, the deviations about mean[c] in a second pass over the batch
// (a one-pass M2 loses the digits of a channel whose mean is large against its spread).
struct batch_sums {
  index count = 0;  // values per channel in the batch
  std::vector<double> lo, hi, mean, m2, abs;
};

// One batch of exact mode's pass 2, for calibration_statistics::add_deviation_sums():
// for the `count` values x of channel c (count > 0), about the frozen centre
// m[c] = calibration_statistics::mean()[c]:
//   abs[c] = Σ |x - m[c]|;   lo[c], hi[c] = min and max of x (checked against pass 1's).
struct deviation_sums {
  index count = 0;  // values per channel in the batch
  std::vector<double> abs, lo, hi;
};

namespace detail {
namespace calib {

constexpr std::size_t group_bytes = std::size_t(512) * 1024;  // cache budget for a group of channels
constexpr std::size_t min_chunk_bytes = 4096;                 // below this, traverse in memory order

// The row kernels. With GCC or Clang they use generic vector types as wide as the
// target's registers (AVX-512: 8 doubles, AVX: 4, otherwise 2: SSE2, NEON): K values
// of T are loaded and widened to K doubles; min and max use full-width vectors of T.
// Elsewhere, and for rows shorter than `simd_min`, plain loops. Both sum in double;
// min and max are exact; only the order of the additions differs.
// Define PTQ_CALIBRATION_SIMD=0 to force the plain loops. nvcc's front end does not
// take the vector extensions, so a .cu translation unit gets the plain loops.
#if !defined(PTQ_CALIBRATION_SIMD)
#if (defined(__GNUC__) || defined(__clang__)) && !defined(__CUDACC__)
#define PTQ_CALIBRATION_SIMD 1
#else
#define PTQ_CALIBRATION_SIMD 0
#endif
#endif
#if PTQ_CALIBRATION_SIMD
#if defined(__AVX512F__)
#define PTQ_CALIB_VBYTES 64
#elif defined(__AVX__)
#define PTQ_CALIB_VBYTES 32
#else
#define PTQ_CALIB_VBYTES 16
#endif
typedef double dv __attribute__((vector_size(PTQ_CALIB_VBYTES)));     // K doubles
typedef long long iv __attribute__((vector_size(PTQ_CALIB_VBYTES)));  // K int64 (for |x|)
typedef float fh __attribute__((vector_size(PTQ_CALIB_VBYTES / 2)));  // K floats (to widen)
typedef float fw __attribute__((vector_size(PTQ_CALIB_VBYTES)));      // 2K floats (min, max)
constexpr index K = PTQ_CALIB_VBYTES / 8;
template <class T>
struct vec;
template <>
struct vec<float> {
  typedef fh narrow;  // K values, widened to dv
  typedef fw wide;    // a register of values, for min and max
};
template <>
struct vec<double> {
  typedef dv narrow;
  typedef dv wide;
};
#define PTQ_CALIB_LOAD(v, p) std::memcpy(&(v), (p), sizeof(v))
#define PTQ_CALIB_WIDEN(v) __builtin_convertvector((v), dv)
#define PTQ_CALIB_ABS(v) ((dv)((iv)(v) & abs_mask))
#define PTQ_CALIB_MIN(a, b) ((a) < (b) ? (a) : (b))
#define PTQ_CALIB_MAX(a, b) ((a) > (b) ? (a) : (b))
#define PTQ_CALIB_ABS_MASK const iv abs_mask = ~iv{} ^ (iv{} + (1LL << 63))
#define PTQ_CALIB_BROADCAST(name, m) \
  dv name = {};                      \
  name += (m)
constexpr index simd_min = 4 * K;
#endif

// Over x[0, n), n >= 1: min, max and, in double, Σ x (pass 1, Abs = false) or
// Σ |x - m| (the exact mode's pass 2, Abs = true, whose min and max check that it sees
// pass 1's data).
template <bool Abs, class T>
inline void sum_min_max(const T* x, index n, double m, double& sum, T& lo, T& hi) {
  double s = 0;
  T l = x[0], h = x[0];
  index i = 0;
#if PTQ_CALIBRATION_SIMD
  if (n >= simd_min) {
    typedef typename vec<T>::narrow N;
    typedef typename vec<T>::wide W;
    constexpr index WL = static_cast<index>(sizeof(W) / sizeof(T));  // values per W: 2K (float) or K
    PTQ_CALIB_ABS_MASK;
    PTQ_CALIB_BROADCAST(mv, m);
    (void)abs_mask, (void)mv;
    const auto term = [&](N c) {
      if constexpr (Abs)
        return dv(PTQ_CALIB_ABS(PTQ_CALIB_WIDEN(c) - mv));
      else
        return dv(PTQ_CALIB_WIDEN(c));
    };
    N c0, c1, c2, c3;
    W a, b, l0, l1, h0, h1;
    PTQ_CALIB_LOAD(l0, x);
    l1 = h0 = h1 = l0;
    dv s0 = {}, s1 = {}, s2 = {}, s3 = {};
    for (; i + 4 * K <= n; i += 4 * K) {
      PTQ_CALIB_LOAD(c0, x + i);
      PTQ_CALIB_LOAD(c1, x + i + K);
      PTQ_CALIB_LOAD(c2, x + i + 2 * K);
      PTQ_CALIB_LOAD(c3, x + i + 3 * K);
      s0 += term(c0), s1 += term(c1), s2 += term(c2), s3 += term(c3);
      for (index v = 0; v < 4 * K; v += 2 * WL) {
        PTQ_CALIB_LOAD(a, x + i + v);
        PTQ_CALIB_LOAD(b, x + i + v + WL);
        l0 = PTQ_CALIB_MIN(a, l0), l1 = PTQ_CALIB_MIN(b, l1), h0 = PTQ_CALIB_MAX(a, h0), h1 = PTQ_CALIB_MAX(b, h1);
      }
    }
    s0 = (s0 + s1) + (s2 + s3);
    l0 = PTQ_CALIB_MIN(l1, l0), h0 = PTQ_CALIB_MAX(h1, h0);
    for (index k = 0; k < K; ++k) s += s0[k];
    for (index k = 0; k < WL; ++k) l = l0[k] < l ? l0[k] : l, h = h0[k] > h ? h0[k] : h;
  }
#endif
  for (; i < n; ++i) {
    const T v = x[i];
    if constexpr (Abs)
      s += std::abs(static_cast<double>(v) - m);
    else
      s += static_cast<double>(v);
    l = v < l ? v : l;
    h = v > h ? v : h;
  }
  sum = s, lo = l, hi = h;
}

// Pass 2 over x[0, n): Σ (x - m)^2 and, if Abs, Σ |x - m|, with x - m formed in double.
template <bool Abs, class T>
inline void deviations(const T* x, index n, double m, double& sq, double& ab) {
  double q = 0, a = 0;
  index i = 0;
#if PTQ_CALIBRATION_SIMD
  if (n >= simd_min) {
    typedef typename vec<T>::narrow N;
    PTQ_CALIB_ABS_MASK;
    (void)abs_mask;
    PTQ_CALIB_BROADCAST(mv, m);
    dv q0 = {}, q1 = {}, q2 = {}, q3 = {}, a0 = {}, a1 = {}, a2 = {}, a3 = {};
    N c0, c1, c2, c3;
    for (; i + 4 * K <= n; i += 4 * K) {
      PTQ_CALIB_LOAD(c0, x + i);
      PTQ_CALIB_LOAD(c1, x + i + K);
      PTQ_CALIB_LOAD(c2, x + i + 2 * K);
      PTQ_CALIB_LOAD(c3, x + i + 3 * K);
      const dv e0 = PTQ_CALIB_WIDEN(c0) - mv, e1 = PTQ_CALIB_WIDEN(c1) - mv;
      const dv e2 = PTQ_CALIB_WIDEN(c2) - mv, e3 = PTQ_CALIB_WIDEN(c3) - mv;
      q0 += e0 * e0, q1 += e1 * e1, q2 += e2 * e2, q3 += e3 * e3;
      if constexpr (Abs)
        a0 += PTQ_CALIB_ABS(e0), a1 += PTQ_CALIB_ABS(e1), a2 += PTQ_CALIB_ABS(e2), a3 += PTQ_CALIB_ABS(e3);
    }
    q0 = (q0 + q1) + (q2 + q3), a0 = (a0 + a1) + (a2 + a3);
    for (index k = 0; k < K; ++k) q += q0[k], a += a0[k];
  }
#endif
  for (; i < n; ++i) {
    const double d = static_cast<double>(x[i]) - m;
    q += d * d;
    if constexpr (Abs) a += std::abs(d);
  }
  sq = q, ab = a;
}

#if PTQ_CALIBRATION_SIMD
#undef PTQ_CALIB_VBYTES
#undef PTQ_CALIB_LOAD
#undef PTQ_CALIB_WIDEN
#undef PTQ_CALIB_ABS
#undef PTQ_CALIB_MIN
#undef PTQ_CALIB_MAX
#undef PTQ_CALIB_ABS_MASK
#undef PTQ_CALIB_BROADCAST
#endif

// Contiguous rows of any Eigen expression: in place when rows are contiguous in
// memory, else copied one row at a time into a buffer of `cols` values.
template <class D>
class row_reader {
 public:
  using T = typename D::Scalar;

  explicit row_reader(const D& m) : ev_(m), cols_(m.cols()) {
    if constexpr (bool(Eigen::internal::has_direct_access<D>::ret)) {
      if (m.cols() == 1 || m.colStride() == 1) data_ = m.data(), stride_ = m.rowStride();
    }
    if (!data_) buf_.resize(static_cast<std::size_t>(cols_));
  }
  const T* row(index r) {
    if (data_) return data_ + r * stride_;
    for (index j = 0; j < cols_; ++j) buf_[static_cast<std::size_t>(j)] = ev_.coeff(r, j);
    return buf_.data();
  }

 private:
  Eigen::internal::evaluator<D> ev_;
  index cols_;
  const T* data_ = nullptr;
  index stride_ = 0;
  std::vector<T> buf_;
};

// Throws naming the first non-finite value of channel c; if there is none, the
// accumulated statistic overflowed double.
template <class D>
[[noreturn]] void fail_not_finite(row_reader<D>& src, index rows, index cols, index channels, index c,
                                  const char* where, const char* what) {
  for (index r = c; r < rows; r += channels) {
    const auto* x = src.row(r);
    for (index j = 0; j < cols; ++j)
      if (!std::isfinite(x[j]))
        fail(where, "rows(", r, ", ", j, ") = ", x[j], " is not finite (channel ", c, ", outer index ",
             r / channels, ", column ", j, ")");
  }
  fail(where, "the ", what, " of channel ", c, " overflows double (values too large for the statistics)");
}

// One batch, per channel: the batch_sums (abs left 0 unless Abs). Nothing but `out`
// is written; throws on non-finite data.
template <bool Abs, class D>
void batch_kernel(const D& m, index channels, batch_sums& out, const char* where) {
  using T = typename D::Scalar;
  const index rows = m.rows(), cols = m.cols(), outer = rows / channels;
  const auto C = static_cast<std::size_t>(channels);
  out.lo.assign(C, 0.0), out.hi.assign(C, 0.0), out.mean.assign(C, 0.0);
  out.m2.assign(C, 0.0), out.abs.assign(C, 0.0);
  out.count = outer * cols;
  row_reader<D> src(m);

  const std::size_t row_bytes = static_cast<std::size_t>(cols) * sizeof(T);
  const std::size_t chan_bytes = static_cast<std::size_t>(outer) * row_bytes;
  index group = static_cast<index>(std::min<std::size_t>(C, std::max<std::size_t>(1, group_bytes / chan_bytes)));
  if (group < channels && static_cast<std::size_t>(group) * row_bytes < min_chunk_bytes) group = channels;

  std::vector<T> lo(C), hi(C);
  std::vector<double> sum(C);
  const double n = static_cast<double>(out.count);
  for (index c0 = 0; c0 < channels; c0 += group) {
    const index c1 = std::min(channels, c0 + group);
    for (index k = 0; k < outer; ++k)
      for (index c = c0; c < c1; ++c) {
        double s;
        T l, h;
        sum_min_max<false>(src.row(k * channels + c), cols, 0.0, s, l, h);
        const auto u = static_cast<std::size_t>(c);
        if (k == 0) {
          sum[u] = s, lo[u] = l, hi[u] = h;
        } else {
          sum[u] += s;
          lo[u] = l < lo[u] ? l : lo[u];
          hi[u] = h > hi[u] ? h : hi[u];
        }
      }
    for (index c = c0; c < c1; ++c) {
      const auto u = static_cast<std::size_t>(c);
      if (!std::isfinite(sum[u])) fail_not_finite(src, rows, cols, channels, c, where, "sum");
      out.lo[u] = static_cast<double>(lo[u]);
      out.hi[u] = static_cast<double>(hi[u]);
      out.mean[u] = std::min(std::max(sum[u] / n, out.lo[u]), out.hi[u]);
    }
    for (index k = 0; k < outer; ++k)
      for (index c = c0; c < c1; ++c) {
        const auto u = static_cast<std::size_t>(c);
        double q, a;
        deviations<Abs>(src.row(k * channels + c), cols, out.mean[u], q, a);
        out.m2[u] += q;
        out.abs[u] += a;
      }
    for (index c = c0; c < c1; ++c) {
      const auto u = static_cast<std::size_t>(c);
      if (!std::isfinite(out.m2[u]) || !std::isfinite(out.abs[u]))
        fail_not_finite(src, rows, cols, channels, c, where, "sum of squared deviations");
    }
  }
}

// Exact-mode pass 2 on one batch: the deviation_sums about mean.
template <class D>
void deviation_kernel(const D& m, index channels, const Eigen::VectorXd& mean, deviation_sums& out,
                      const char* where) {
  using T = typename D::Scalar;
  const index rows = m.rows(), cols = m.cols(), outer = rows / channels;
  const auto C = static_cast<std::size_t>(channels);
  row_reader<D> src(m);
  std::vector<T> lo(C), hi(C);
  std::vector<double>& abs = out.abs;
  abs.assign(C, 0.0);
  out.count = outer * cols;
  for (index k = 0; k < outer; ++k)
    for (index c = 0; c < channels; ++c) {
      const auto u = static_cast<std::size_t>(c);
      double a;
      T l, h;
      sum_min_max<true>(src.row(k * channels + c), cols, mean[c], a, l, h);
      abs[u] += a;
      if (k == 0) {
        lo[u] = l, hi[u] = h;
      } else {
        lo[u] = l < lo[u] ? l : lo[u];
        hi[u] = h > hi[u] ? h : hi[u];
      }
    }
  out.lo.resize(C), out.hi.resize(C);
  for (std::size_t u = 0; u < C; ++u) {
    if (!std::isfinite(abs[u]))
      fail_not_finite(src, rows, cols, channels, static_cast<index>(u), where, "sum of |x - mean|");
    out.lo[u] = static_cast<double>(lo[u]), out.hi[u] = static_cast<double>(hi[u]);
  }
}

template <class D>
void check_batch(const Eigen::DenseBase<D>& rows, index channels, const char* where) {
  using T = typename D::Scalar;
  static_assert(std::is_same<T, float>::value || std::is_same<T, double>::value,
                "ptq calibration statistics take float or double data");
  check_channels(rows.rows(), rows.cols(), channels, where);
}

}  // namespace calib
}  // namespace detail

// Per-channel statistics accumulated over batches; see the top of this file.
class calibration_statistics {
 public:
  explicit calibration_statistics(index channels, stats_mode mode = stats_mode::batch_mean)
      : channels_(channels), mode_(mode) {
    detail::require(channels >= 1, "ptq::calibration_statistics::calibration_statistics", "channels = ", channels,
                    " must be at least 1");
    const auto zero = Eigen::VectorXd::Zero(channels);
    min_ = max_ = mean_ = b_ = std_ = zero;
  }

  // Adds one batch: a row view with rows() a multiple of channels() (NCHW: (N*C) x (H*W)).
  // batch_mean and exact pass 1: one batch of the statistics; exact pass 2 (after
  // begin_deviation_pass()): the same values again, accumulating Σ |x - mean|.
  template <class D>
  void add(const Eigen::DenseBase<D>& rows) {
    constexpr const char* where = "ptq::calibration_statistics::add";
    detail::calib::check_batch(rows, channels_, where);
    const index n = (rows.rows() / channels_) * rows.cols();
    if (pass_ == stats_pass::deviation) {
      detail::require(dev_count_ + n <= count_, where, "rows = ", rows.rows(), " x ", rows.cols(),
                      " would bring the deviation pass to ", dev_count_ + n, " values per channel, more than the ",
                      count_, " of the moments pass: add() exactly the batches of pass 1 again");
      deviation_sums ds;
      detail::calib::deviation_kernel(rows.derived(), channels_, mean_, ds, where);
      accumulate(ds);  // nothing has changed before; nothing throws from here on
      return;
    }
    batch_sums bs;
    if (mode_ == stats_mode::batch_mean)
      detail::calib::batch_kernel<true>(rows.derived(), channels_, bs, where);
    else
      detail::calib::batch_kernel<false>(rows.derived(), channels_, bs, where);
    accumulate(bs);
  }

  // One batch's sums reduced elsewhere (batch_sums above): batch_mean mode, or pass 1 of
  // exact mode. Accumulated exactly as add() accumulates the sums of its own kernels.
  void add_sums(const batch_sums& sums) {
    constexpr const char* where = "ptq::calibration_statistics::add_sums";
    detail::require(pass_ == stats_pass::moments, where,
                    "pass = deviation: after begin_deviation_pass() use add_deviation_sums()");
    detail::require(sums.count > 0, where, "sums.count = ", sums.count, " must be positive");
    check_size(sums.lo, where, "sums.lo");
    check_size(sums.hi, where, "sums.hi");
    check_size(sums.mean, where, "sums.mean");
    check_size(sums.m2, where, "sums.m2");
    const bool use_abs = mode_ == stats_mode::batch_mean || !sums.abs.empty();
    if (use_abs) check_size(sums.abs, where, "sums.abs");
    for (index c = 0; c < channels_; ++c) {
      const auto u = static_cast<std::size_t>(c);
      check_range(sums.lo[u], sums.hi[u], where, c);
      const double m = sums.mean[u];
      detail::require(std::isfinite(m) && sums.lo[u] <= m && m <= sums.hi[u], where, "sums.mean[", c, "] = ", m,
                      " is not in [sums.lo, sums.hi] = [", sums.lo[u], ", ", sums.hi[u], "]");
      check_nonnegative(sums.m2[u], where, "sums.m2", c);
      if (use_abs) check_nonnegative(sums.abs[u], where, "sums.abs", c);
    }
    accumulate(sums);
  }

  // Exact mode, pass 2: one batch's deviation_sums (above) reduced elsewhere, about the
  // frozen centre mean(). Accumulated exactly as add() accumulates its own in pass 2.
  void add_deviation_sums(const deviation_sums& sums) {
    constexpr const char* where = "ptq::calibration_statistics::add_deviation_sums";
    detail::require(mode_ == stats_mode::exact, where,
                    "mode = batch_mean has no deviation pass (its b is computed within each batch)");
    detail::require(pass_ == stats_pass::deviation, where, "pass = moments: call begin_deviation_pass() first");
    detail::require(sums.count > 0, where, "sums.count = ", sums.count, " must be positive");
    detail::require(dev_count_ + sums.count <= count_, where, "sums.count = ", sums.count,
                    " would bring the deviation pass to ", dev_count_ + sums.count,
                    " values per channel, more than the ", count_, " of the moments pass");
    check_size(sums.abs, where, "sums.abs");
    check_size(sums.lo, where, "sums.lo");
    check_size(sums.hi, where, "sums.hi");
    for (index c = 0; c < channels_; ++c) {
      const auto u = static_cast<std::size_t>(c);
      check_range(sums.lo[u], sums.hi[u], where, c);
      check_nonnegative(sums.abs[u], where, "sums.abs", c);
    }
    accumulate(sums);
  }

  // Exact mode: freezes the per-channel mean of pass 1; the next add() calls form pass 2.
  void begin_deviation_pass() {
    constexpr const char* where = "ptq::calibration_statistics::begin_deviation_pass";
    detail::require(mode_ == stats_mode::exact, where,
                    "mode = batch_mean has no deviation pass (its b is computed within each batch)");
    detail::require(pass_ == stats_pass::moments, where,
                    "pass = deviation: begin_deviation_pass() was already called");
    detail::require(count_ > 0, where, "count = 0: add() the batches of pass 1 first");
    pass_ = stats_pass::deviation;
    dev_abs_ = Eigen::VectorXd::Zero(channels_);
    dev_min_ = dev_max_ = dev_abs_;
    dev_count_ = 0;
    dev_batches_ = 0;
  }

  // Combines the data of `other` into this accumulator (same mode, channels and pass).
  void merge(const calibration_statistics& other_in) {
    constexpr const char* where = "ptq::calibration_statistics::merge";
    detail::require(other_in.mode_ == mode_, where, "other.mode = ", mode_name(other_in.mode_),
                    " differs from this mode = ", mode_name(mode_));
    detail::require(other_in.channels_ == channels_, where, "other.channels = ", other_in.channels_,
                    " differs from this channels = ", channels_);
    detail::require(other_in.pass_ == pass_, where, "other.pass = ", pass_name(other_in.pass_),
                    " differs from this pass = ", pass_name(pass_),
                    " (merge pass-1 accumulators before begin_deviation_pass())");
    const calibration_statistics other = other_in;  // merge(*this) is allowed
    if (pass_ == stats_pass::deviation) {
      detail::require(other.count_ == count_ && other.mean_ == mean_ && other.min_ == min_ && other.max_ == max_,
                      where, "other's deviation pass started from different pass-1 moments (count = ",
                      other.count_, " vs ", count_,
                      "): begin it once on the merged pass-1 accumulator and copy that to every part");
      detail::require(dev_count_ + other.dev_count_ <= count_, where, "the deviation passes together have ",
                      dev_count_ + other.dev_count_, " values per channel, more than the ", count_,
                      " of the moments pass");
      for (index c = 0; c < channels_; ++c) {
        if (other.dev_count_ == 0) break;
        dev_min_[c] = dev_count_ == 0 ? other.dev_min_[c] : std::min(dev_min_[c], other.dev_min_[c]);
        dev_max_[c] = dev_count_ == 0 ? other.dev_max_[c] : std::max(dev_max_[c], other.dev_max_[c]);
      }
      dev_abs_ += other.dev_abs_;
      dev_count_ += other.dev_count_;
      dev_batches_ += other.dev_batches_;
      return;
    }
    if (other.batches_ == 0) return;
    if (mode_ == stats_mode::batch_mean) {
      const double w = static_cast<double>(other.batches_) / static_cast<double>(batches_ + other.batches_);
      for (index c = 0; c < channels_; ++c) {
        running(min_[c], other.min_[c], w), running(max_[c], other.max_[c], w);
        running(mean_[c], other.mean_[c], w), running(b_[c], other.b_[c], w);
        running(std_[c], other.std_[c], w);
      }
    } else {
      for (index c = 0; c < channels_; ++c)
        combine(c, other.count_, other.mean_[c], other.std_[c], other.min_[c], other.max_[c]);
    }
    count_ += other.count_;
    batches_ += other.batches_;
  }

  // min, max, mean, b, std per channel (see the top of this file); count = values per channel.
  channel_stats result() const {
    constexpr const char* where = "ptq::calibration_statistics::result";
    channel_stats s = moments_impl(where);
    if (mode_ == stats_mode::batch_mean) {
      s.b = b_;
      return s;
    }
    detail::require(pass_ == stats_pass::deviation, where,
                    "pass = moments: exact mode needs a second pass for b = E|x - mean|: call "
                    "begin_deviation_pass() and add() the same batches again (or use moments() without b)");
    detail::require(dev_count_ == count_, where, "the deviation pass has seen ", dev_count_,
                    " values per channel, the moments pass ", count_, ": add() the remaining batches of pass 1");
    for (index c = 0; c < channels_; ++c)
      detail::require(dev_min_[c] == min_[c] && dev_max_[c] == max_[c], where, "channel ", c,
                      " saw other data in the deviation pass (min, max = ", dev_min_[c], ", ", dev_max_[c],
                      " vs ", min_[c], ", ", max_[c], " in pass 1): add() the same batches again");
    s.b = dev_abs_ / static_cast<double>(count_);
    return s;
  }

  // min, max, mean and std without b (s.b is left empty): available after pass 1 of exact
  // mode, and in batch_mean mode.
  channel_stats moments() const { return moments_impl("ptq::calibration_statistics::moments"); }

  index channels() const { return channels_; }
  stats_mode mode() const { return mode_; }
  stats_pass pass() const { return pass_; }
  index batches() const { return batches_; }                       // batches of pass 1 (batch_mean: averaged)
  index count() const { return count_; }                           // values per channel in pass 1
  index deviation_batches() const { return dev_batches_; }         // exact mode, pass 2
  index deviation_count() const { return dev_count_; }             // exact mode, pass 2
  // The per-channel mean so far (batch_mean: the average of the batch means; exact: the
  // mean of pass 1, frozen in pass 2: the centre that add_deviation_sums() expects).
  const Eigen::VectorXd& mean() const { return mean_; }

 private:
  // One batch's validated sums into the state; never throws.
  void accumulate(const batch_sums& bs) {
    const index n = bs.count;
    if (mode_ == stats_mode::batch_mean) {
      const double w = 1.0 / static_cast<double>(batches_ + 1), nd = static_cast<double>(n);
      for (index c = 0; c < channels_; ++c) {
        const auto u = static_cast<std::size_t>(c);
        const double s = n > 1 ? std::sqrt(bs.m2[u] / (nd - 1)) : 0.0;
        running(min_[c], bs.lo[u], w), running(max_[c], bs.hi[u], w), running(mean_[c], bs.mean[u], w);
        running(b_[c], bs.abs[u] / nd, w), running(std_[c], s, w);
      }
    } else {
      for (index c = 0; c < channels_; ++c) {
        const auto u = static_cast<std::size_t>(c);
        combine(c, n, bs.mean[u], bs.m2[u], bs.lo[u], bs.hi[u]);
      }
    }
    count_ += n;
    ++batches_;
  }
  void accumulate(const deviation_sums& ds) {
    for (index c = 0; c < channels_; ++c) {
      const auto u = static_cast<std::size_t>(c);
      dev_abs_[c] += ds.abs[u];
      dev_min_[c] = dev_count_ == 0 ? ds.lo[u] : std::min(dev_min_[c], ds.lo[u]);
      dev_max_[c] = dev_count_ == 0 ? ds.hi[u] : std::max(dev_max_[c], ds.hi[u]);
    }
    dev_count_ += ds.count;
    ++dev_batches_;
  }

  void check_size(const std::vector<double>& v, const char* where, const char* name) const {
    detail::require(static_cast<index>(v.size()) == channels_, where, name, ".size() = ", v.size(),
                    " does not match channels = ", channels_);
  }
  static void check_range(double lo, double hi, const char* where, index c) {
    detail::require(std::isfinite(lo), where, "sums.lo[", c, "] = ", lo, " is not finite");
    detail::require(std::isfinite(hi), where, "sums.hi[", c, "] = ", hi, " is not finite");
    detail::require(lo <= hi, where, "sums.lo[", c, "] = ", lo, " is above sums.hi[", c, "] = ", hi);
  }
  static void check_nonnegative(double v, const char* where, const char* name, index c) {
    detail::require(std::isfinite(v) && v >= 0, where, name, "[", c, "] = ", v, " is not a finite value >= 0");
  }

  // avg <- avg + (v - avg)·w: the running mean (w = 1/k), exact when v == avg.
  static void running(double& avg, double v, double w) { avg += (v - avg) * w; }

  // Chan's merge of (n_b, mean_b, M2_b, lo, hi) into channel c (exact mode; std_ holds M2).
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
    detail::require(batches_ > 0, where, "batches = 0: add() at least one batch first");
    channel_stats s;
    s.min = min_, s.max = max_, s.mean = mean_, s.count = count_;
    if (mode_ == stats_mode::batch_mean)
      s.std = std_;
    else {  // scalar std::sqrt: correctly rounded (Eigen's vectorized sqrt may not be)
      s.std.resize(channels_);
      for (index c = 0; c < channels_; ++c)
        s.std[c] = count_ > 1 ? std::sqrt(std_[c] / static_cast<double>(count_ - 1)) : 0.0;
    }
    return s;
  }

  static const char* mode_name(stats_mode m) { return m == stats_mode::exact ? "exact" : "batch_mean"; }
  static const char* pass_name(stats_pass p) { return p == stats_pass::deviation ? "deviation" : "moments"; }

  index channels_;
  stats_mode mode_;
  stats_pass pass_ = stats_pass::moments;
  index batches_ = 0, count_ = 0;
  // batch_mean: running means of the per-batch statistics. exact: min, max, mean, and M2 in std_.
  Eigen::VectorXd min_, max_, mean_, b_, std_;
  // exact pass 2: Σ |x - mean|, and min/max to check the data are those of pass 1.
  Eigen::VectorXd dev_abs_, dev_min_, dev_max_;
  index dev_batches_ = 0, dev_count_ = 0;
};

// The plain twin of one batch: calibration statistics of one batch with naive loops
// (two passes per channel, all in double): equals calibration_statistics(channels)
// after one add(rows).result(), to rounding. Throws like add().
template <class D>
channel_stats batch_statistics_ref(const Eigen::DenseBase<D>& rows, index channels) {
  constexpr const char* where = "ptq::batch_statistics_ref";
  detail::calib::check_batch(rows, channels, where);
  const index R = rows.rows(), cols = rows.cols();
  for (index r = 0; r < R; ++r)
    for (index j = 0; j < cols; ++j)
      if (!std::isfinite(rows(r, j)))
        detail::fail(where, "rows(", r, ", ", j, ") = ", rows(r, j), " is not finite (channel ", r % channels,
                     ", outer index ", r / channels, ", column ", j, ")");
  channel_stats s;
  s.count = (R / channels) * cols;
  const double n = static_cast<double>(s.count);
  s.min.resize(channels), s.max.resize(channels), s.mean.resize(channels), s.b.resize(channels);
  s.std.resize(channels);
  for (index c = 0; c < channels; ++c) {
    double lo = static_cast<double>(rows(c, 0)), hi = lo, sum = 0;
    for (index r = c; r < R; r += channels)
      for (index j = 0; j < cols; ++j) {
        const double v = static_cast<double>(rows(r, j));
        lo = std::min(lo, v), hi = std::max(hi, v), sum += v;
      }
    if (!std::isfinite(sum))  // as add(): never a clamped infinity passed off as the mean
      detail::fail(where, "the sum of channel ", c, " overflows double (values too large for the statistics)");
    const double mean = std::min(std::max(sum / n, lo), hi);
    double ab = 0, sq = 0;
    for (index r = c; r < R; r += channels)
      for (index j = 0; j < cols; ++j) {
        const double d = static_cast<double>(rows(r, j)) - mean;
        ab += std::abs(d), sq += d * d;
      }
    if (!std::isfinite(sq) || !std::isfinite(ab))
      detail::fail(where, "the sum of squared deviations of channel ", c,
                   " overflows double (values too large for the statistics)");
    s.min[c] = lo, s.max[c] = hi, s.mean[c] = mean, s.b[c] = ab / n;
    s.std[c] = s.count > 1 ? std::sqrt(sq / (n - 1)) : 0.0;
  }
  return s;
}

}  // namespace ptq
