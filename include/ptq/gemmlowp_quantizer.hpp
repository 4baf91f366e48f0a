// gemmlowp_quantizer.hpp: affine uint quantization (the GEMMLOWP scheme), per tensor or per channel.
//
// The scheme (docs/method.md section 4). A channel with M bits (0 <= M <= 16) has
// qmax = 2^M - 1, a scale > 0 and an integer zero_point in [0, qmax]:
//
//   real = scale * (q - zero_point),   q in [0, qmax]
//
// Parameters from a clipping range [lo, hi] (quant_params::per_tensor / per_channel),
// computed in double, stored as T (scale) and int (zero_point):
//
//   [lo', hi'] = [min(lo, 0), max(hi, 0)]     the range, extended to contain 0
//   scale      = (hi' - lo') / qmax
//   zero_point = clamp(round_half_even(-lo' / scale), 0, qmax)
//
// so the real 0.0 is exactly the code zero_point (zero padding and ReLU zeros stay
// exact). Extending the range to 0 is what gemmlowp's own example, TFLite and
// PyTorch's observers do: without it a range that excludes 0 (say [1, 3]) would get
// zero_point clamped to 0 and a grid [0, 2] that no longer covers the range. A range
// that already contains 0 (every min/max weight range, every unsigned or zero-
// straddling ACIQ range) is used unchanged.
//
// Quantize, dequantize and fake quantize (quantize then dequantize, in T), exactly
// in this order with inv_scale = 1 / scale computed once per channel in T:
//
//   q   = clamp(nearbyint(x * inv_scale) + zero_point, 0, qmax)
//   out = (q - zero_point) * scale
//
// Rounding is round half to even (std::nearbyint in the default rounding mode,
// Eigen's vectorized rint()), like torch.round (which the reference implementation
// uses) and PyTorch's fake_quantize_per_tensor_affine / _per_channel_affine kernels.
// The formula order is that of those PyTorch kernels, for three reasons:
//   - rounding x * inv_scale before adding the integer zero_point is exact, so 0.0
//     always maps to zero_point and ties stay ties (rounding x / scale + zero_point
//     in float, as the reference code does, can move a near-tie to the next code);
//   - one multiply by a per-channel inverse, not a divide per element, keeps the
//     loop at memory speed;
//   - codes then match PyTorch's, tie for tie, so results can be compared with it.
// q - zero_point is an exact small integer, so fake_quantize(x) ==
// dequantize(quantize(x)) bit for bit. Clamping before or after rounding gives the
// same codes (the bounds are integers). Do not compile with -ffast-math (it breaks
// the finiteness check and may reorder the formula).
//
// Degenerate channels. A channel whose data is one constant c (T(c) in T):
//   - 0 bits (qmax = 0): c = the channel's mean clamped into [lo, hi] (the value of
//     [lo, hi] nearest the mean), or the midpoint of [lo, hi] when no mean is given;
//   - a zero-width range lo == hi (any bits): c = lo. Every value maps to c, exactly.
// It is stored so that the formula above still holds, with inv_scale = 0 (no division
// by zero: x * 0 = 0, so q = clamp(zero_point, 0, qmax) for every x):
//   c == 0:  scale = 0,   zero_point = 0         -> q = 0,    out = 0
//   c >  0:  scale = c,   zero_point = -1        -> q = 0,    out = (0 + 1) * c
//   c <  0:  scale = -c,  zero_point = qmax + 1  -> q = qmax, out = (qmax - qmax - 1) * (-c)
// A channel is constant iff scale == 0 or zero_point is outside [0, qmax]
// (quant_params::is_constant); those are the only zero points outside [0, qmax]
// the operations accept. A 0-bit channel's codes are all 0. An integer GEMM that
// handles zero points as int32 offsets (gemmlowp does) works unchanged.
// Scales are kept >= the smallest normal T so that 1 / scale is finite.
//
// Layout: every operation works on the row view of layout.hpp: a RowMajor
// (outer * channels) x inner view, row r belonging to channel r % channels, where
// channels = params.channels() (1 for per tensor). Inputs are any Eigen dense
// expression of T (Map, Ref, Matrix, Array, blocks); outputs are never resized.
// Out of place and exactly in place (out is x) are fine; partial overlap is not.
//
// Every optimized routine (quantize, dequantize, fake_quantize, fake_quantize_in_place)
// has a scalar twin (quantize_ref, dequantize_ref, fake_quantize_ref) with the same
// arithmetic, equal bit for bit. The optimized ones run one vectorized Eigen array
// expression per row (or over the whole tensor when it is contiguous and per tensor,
// or across the channels of each outer index when inner == 1), single-threaded, with
// per-channel coefficients computed once per call and no allocation per element.
// Contiguous out-of-place float outputs of 16 MiB or more (PTQ_STREAMING_MIN_BYTES)
// are computed 8 KiB at a time into a stack buffer and written with non-temporal
// stores (x86), which skips the read for ownership of the output lines.
//
// Validation, before anything is written (ptq::error naming function, argument and
// value): bits outside [0, 16] (per tensor: [1, 16]), bits too wide for the code
// type, NaN / Inf / negative scale (or one whose inverse or grid overflows T), zero
// points other than those above, parameter vectors of different lengths, lo > hi,
// NaN or Inf in ranges or means, ranges outside T, rows not a multiple of channels,
// empty tensors, output shape mismatch, codes above their channel's qmax
// (dequantize) and NaN / Inf in the data. The data check is a vectorized pass over
// the input (sum of x * 0, NaN iff some x is not finite); it must run before the
// first write to keep the caller's output untouched on error, and costs one extra
// read of the input (about 40% of the time of a large out-of-place call).
//
// Speed (bench_quantizer.cpp, -O3 -march=native): >= 0.75 of memcpy's bandwidth on
// 16M- and 64M-element float tensors. Full speed needs SSE4.1 (roundps) or better;
// a baseline x86-64 (SSE2) build emulates rint and runs at about half that.
#pragma once

#include <Eigen/Core>
#include <algorithm>
#include <cmath>
#include <cstddef>
#include <cstdint>
#include <cstring>
#include <limits>
#include <string>
#include <type_traits>
#include <utility>
#if defined(__SSE2__)
#include <immintrin.h>
#endif

#include "config.hpp"
#include "error.hpp"
#include "layout.hpp"
#include "types.hpp"

namespace ptq {

// Quantization parameters of one tensor: length 1 (per tensor) or one entry per channel.
template <class T>
struct quant_params {
  static_assert(std::is_floating_point<T>::value, "quant_params<T>: T must be float or double");

  vector<T> scale;             // >= 0; see "Degenerate channels" above
  Eigen::VectorXi zero_point;  // in [0, qmax], or -1 / qmax + 1 for a constant channel
  Eigen::VectorXi bits;        // in [0, 16]
  granularity g = granularity::per_tensor;

  index channels() const { return scale.size(); }

  static constexpr int max_bits = 16;
  static int qmax_of(int bits) { return static_cast<int>((1u << bits) - 1u); }
  int qmax(index c) const { return qmax_of(bits[c]); }

  // True when channel c maps every value to one constant.
  bool is_constant(index c) const {
    return scale[c] == T(0) || zero_point[c] < 0 || zero_point[c] > qmax(c);
  }

  // Per tensor from the range [lo, hi] with bits in [1, 16].
  static quant_params per_tensor(double lo, double hi, int bits) {
    static constexpr const char* where = "ptq::quant_params::per_tensor";
    detail::check_bits(bits, 1, max_bits, where, "bits");
    check_range(lo, hi, where, "lo", "hi", -1);
    quant_params p = sized(1, granularity::per_tensor);
    p.fill(0, lo, hi, bits, nullptr, where);
    return p;
  }

  // Per channel, one bit width in [0, 16] for every channel (0 bits: the midpoints).
  static quant_params per_channel(const channel_ranges& r, int bits) {
    static constexpr const char* where = "ptq::quant_params::per_channel";
    detail::check_bits(bits, 0, max_bits, where, "bits");
    return per_channel(r, Eigen::VectorXi::Constant(r.lo.size(), bits), nullptr, where);
  }

  // Per channel, bits[c] in [0, 16]; 0-bit channels become the midpoint of their range.
  static quant_params per_channel(const channel_ranges& r, const Eigen::VectorXi& bits) {
    return per_channel(r, bits, nullptr, "ptq::quant_params::per_channel");
  }

  // Per channel, bits[c] in [0, 16]; a 0-bit channel c becomes mean[c] clamped into
  // [lo[c], hi[c]]. mean has one entry per channel, none NaN.
  static quant_params per_channel(const channel_ranges& r, const Eigen::VectorXi& bits,
                                  const Eigen::VectorXd& mean) {
    return per_channel(r, bits, &mean, "ptq::quant_params::per_channel");
  }

 private:
  static quant_params sized(index n, granularity g) {
    quant_params p;
    p.scale.resize(n);
    p.zero_point.resize(n);
    p.bits.resize(n);
    p.g = g;
    return p;
  }

  static void check_range(double lo, double hi, const char* where, const char* lo_name,
                          const char* hi_name, index c) {
    const auto sub = [c]() { return c < 0 ? std::string() : detail::concat("[", c, "]"); };
    detail::require(std::isfinite(lo), where, lo_name, sub(), " = ", lo, " is not finite");
    detail::require(std::isfinite(hi), where, hi_name, sub(), " = ", hi, " is not finite");
    detail::require(lo <= hi, where, lo_name, sub(), " = ", lo, " is above ", hi_name, sub(), " = ", hi);
  }

  static quant_params per_channel(const channel_ranges& r, const Eigen::VectorXi& bits,
                                  const Eigen::VectorXd* mean, const char* where) {
    const index n = r.lo.size();
    detail::require(n >= 1, where, "ranges.lo.size() = 0: no channels");
    detail::require(r.hi.size() == n, where, "ranges.hi.size() = ", r.hi.size(),
                    " does not match ranges.lo.size() = ", n);
    detail::require(bits.size() == n, where, "bits.size() = ", bits.size(),
                    " does not match the ", n, " channels of ranges");
    if (mean) {
      detail::require(mean->size() == n, where, "mean.size() = ", mean->size(),
                      " does not match the ", n, " channels of ranges");
    }
    for (index c = 0; c < n; ++c) {
      if (bits[c] < 0 || bits[c] > max_bits) {
        detail::fail(where, "bits[", c, "] = ", bits[c], " is outside [0, ", max_bits, "]");
      }
      check_range(r.lo[c], r.hi[c], where, "ranges.lo", "ranges.hi", c);
      if (mean) detail::require(!std::isnan((*mean)[c]), where, "mean[", c, "] = nan");
    }
    quant_params p = sized(n, granularity::per_channel);
    // Validate every channel's scale before returning anything (fill may throw).
    for (index c = 0; c < n; ++c) p.fill(c, r.lo[c], r.hi[c], bits[c], mean ? &(*mean)[c] : nullptr, where);
    return p;
  }

  void set_constant(index c, int b, T value) {
    bits[c] = b;
    if (value == T(0)) {
      scale[c] = T(0);
      zero_point[c] = 0;
    } else if (value > T(0)) {
      scale[c] = value;
      zero_point[c] = -1;
    } else {
      scale[c] = -value;
      zero_point[c] = qmax_of(b) + 1;
    }
  }

  static const char* type_name() {
    return std::is_same<T, float>::value ? "float" : std::is_same<T, double>::value ? "double" : "long double";
  }

  void fill(index c, double lo, double hi, int b, const double* mean, const char* where) {
    // The grid must be representable in T: its ends (within scale / 2 of lo', hi') too.
    const double big = static_cast<double>(std::numeric_limits<T>::max());
    if (!(std::abs(lo) <= big && std::abs(hi) <= big)) {
      detail::fail(where, "the range [", lo, ", ", hi, "] of channel ", c, " is outside the range of ", type_name());
    }
    if (b == 0) {
      const double v = mean ? std::min(std::max(*mean, lo), hi) : lo / 2 + hi / 2;
      set_constant(c, 0, static_cast<T>(v));
      return;
    }
    if (lo == hi) {
      set_constant(c, b, static_cast<T>(lo));
      return;
    }
    const double lo0 = std::min(lo, 0.0), hi0 = std::max(hi, 0.0);
    const int qm = qmax_of(b);
    double s = (hi0 - lo0) / qm;
    T st = static_cast<T>(s);
    if (st < std::numeric_limits<T>::min()) {  // keep 1 / scale finite
      st = std::numeric_limits<T>::min();
      s = static_cast<double>(st);
    }
    const double z = std::min(std::max(std::nearbyint(-lo0 / s), 0.0), static_cast<double>(qm));
    const T grid_lo = (T(0) - static_cast<T>(z)) * st, grid_hi = (static_cast<T>(qm) - static_cast<T>(z)) * st;
    if (!std::isfinite(st) || !std::isfinite(grid_lo) || !std::isfinite(grid_hi)) {
      detail::fail(where, "the range [", lo, ", ", hi, "] of channel ", c, " with ", b, " bits gives scale = ", s,
                   " and a grid that overflows ", type_name());
    }
    bits[c] = b;
    scale[c] = st;
    zero_point[c] = static_cast<int>(z);
  }
};

namespace detail {

// Per-channel coefficients in T, computed once per call: the clamp bounds and
// inv_scale (0 for a constant channel, else 1 / scale).
template <class T>
T inv_scale_of(const quant_params<T>& p, index c) {
  return p.is_constant(c) ? T(0) : T(1) / p.scale[c];
}

template <class T>
struct affine_coeffs {
  using array = Eigen::Array<T, Eigen::Dynamic, 1>;
  array inv, zp, qmax, scale;

  explicit affine_coeffs(const quant_params<T>& p)
      : inv(p.channels()), zp(p.channels()), qmax(p.channels()), scale(p.scale.array()) {
    for (index c = 0; c < p.channels(); ++c) {
      inv[c] = inv_scale_of(p, c);
      zp[c] = static_cast<T>(p.zero_point[c]);
      qmax[c] = static_cast<T>(p.qmax(c));
    }
  }
};

// The scalar formulas (the _ref twins and the Thrust / CUDA layers use these; the
// vector kernels spell the same operations in the same order on Eigen arrays).
// Host and device: nearbyint is round half to even in both (on a CUDA device the
// same IEEE operation, cvt.rni); the clamp is std::min(std::max(q, 0), qmax) spelled out.
template <class T>
PTQ_HOST_DEVICE inline T round_half_even(T v) {
#if defined(__CUDA_ARCH__)
  if constexpr (sizeof(T) == sizeof(float)) return ::nearbyintf(v); else return ::nearbyint(v);
#else
  return std::nearbyint(v);
#endif
}
template <class T>
PTQ_HOST_DEVICE inline T quantize_value(T x, T inv, T zp, T qmax) {
  const T q = round_half_even(x * inv) + zp;
  const T lo = q < T(0) ? T(0) : q;
  return qmax < lo ? qmax : lo;
}
template <class T>
PTQ_HOST_DEVICE inline T dequantize_value(T q, T zp, T scale) {
  return (q - zp) * scale;
}

template <class Code>
constexpr int code_bits() {
  static_assert(std::is_integral<Code>::value && std::is_unsigned<Code>::value && !std::is_same<Code, bool>::value,
                "gemmlowp_quantizer: the code type must be an unsigned integer type (uint8_t, uint16_t)");
  return std::numeric_limits<Code>::digits;
}

template <class T>
void check_params(const quant_params<T>& p, int code_width, const char* where) {
  const index n = p.channels();
  require(n >= 1, where, "params.scale.size() = 0: no channels");
  require(p.zero_point.size() == n, where, "params.zero_point.size() = ", p.zero_point.size(),
          " does not match params.scale.size() = ", n);
  require(p.bits.size() == n, where, "params.bits.size() = ", p.bits.size(),
          " does not match params.scale.size() = ", n);
  require(p.g == granularity::per_channel || n == 1, where, "params.g = per_tensor with ", n,
          " channels (params.scale.size() must be 1)");
  const int hi = std::min(quant_params<T>::max_bits, code_width);
  for (index c = 0; c < n; ++c) {
    const int b = p.bits[c];
    if (b < 0 || b > quant_params<T>::max_bits) {
      fail(where, "params.bits[", c, "] = ", b, " is outside [0, ", quant_params<T>::max_bits, "]");
    }
    if (b > hi) fail(where, "params.bits[", c, "] = ", b, " does not fit the ", code_width, "-bit code type");
    const T s = p.scale[c];
    require(std::isfinite(s) && s >= T(0), where, "params.scale[", c, "] = ", s, " is not a finite number >= 0");
    const int qm = quant_params<T>::qmax_of(b), z = p.zero_point[c];
    require(z >= -1 && z <= qm + 1, where, "params.zero_point[", c, "] = ", z, " is outside [-1, ", qm + 1,
            "] (", b, " bits)");
    if (!p.is_constant(c)) {
      require(std::isfinite(T(1) / s), where, "params.scale[", c, "] = ", s, " has no finite inverse");
      const T ends[2] = {(T(0) - T(z)) * s, (T(qm) - T(z)) * s};
      require(std::isfinite(ends[0]) && std::isfinite(ends[1]), where, "params.scale[", c, "] = ", s,
              " with zero_point ", z, " and ", b, " bits: the grid overflows");
    }
  }
}

template <class DA, class DB>
void check_same_shape(const Eigen::DenseBase<DA>& a, const Eigen::DenseBase<DB>& b, const char* where,
                      const char* a_name, const char* b_name) {
  require(a.rows() == b.rows() && a.cols() == b.cols(), where, b_name, " is ", b.rows(), " x ", b.cols(),
          " but ", a_name, " is ", a.rows(), " x ", a.cols());
}

// The data pointer of x when its coefficients are stored contiguously in row-major
// order (element (r, c) at data[r * cols + c]), else nullptr.
template <class D>
auto contiguous_data(const Eigen::DenseBase<D>& x) {
  using S = typename D::Scalar;
  if constexpr (bool(int(Eigen::internal::traits<D>::Flags) & Eigen::DirectAccessBit)) {
    const D& d = x.derived();
    const bool rows_ok = d.rows() <= 1 || d.rowStride() == d.cols();
    const bool cols_ok = d.cols() <= 1 || d.colStride() == 1;
    return rows_ok && cols_ok ? d.data() : static_cast<const S*>(nullptr);
  } else {
    return static_cast<const S*>(nullptr);
  }
}
template <class D>
auto contiguous_data(Eigen::DenseBase<D>& x) {
  using S = typename D::Scalar;
  if constexpr (bool(int(Eigen::internal::traits<D>::Flags) & Eigen::DirectAccessBit) &&
                bool(int(Eigen::internal::traits<D>::Flags) & Eigen::LvalueBit)) {
    D& d = x.derived();
    const bool rows_ok = d.rows() <= 1 || d.rowStride() == d.cols();
    const bool cols_ok = d.cols() <= 1 || d.colStride() == 1;
    return rows_ok && cols_ok ? d.data() : static_cast<S*>(nullptr);
  } else {
    return static_cast<S*>(nullptr);
  }
}

template <class D>
[[noreturn]] void fail_not_finite(const Eigen::DenseBase<D>& x, const char* where, const char* name) {
  for (index r = 0; r < x.rows(); ++r) {
    for (index c = 0; c < x.cols(); ++c) {
      const auto v = x.derived().coeff(r, c);
      if (!std::isfinite(v)) fail(where, name, "(", r, ", ", c, ") = ", v, " is not finite");
    }
  }
  fail(where, name, " has a value that is not finite");
}

// Vectorized: sum(x * 0) is 0 when every x is finite and NaN otherwise.
template <class D>
void check_finite(const Eigen::DenseBase<D>& x, const char* where, const char* name) {
  using T = typename D::Scalar;
  T acc = T(0);
  if (const T* p = contiguous_data(x)) {
    acc = (Eigen::Map<const Eigen::Array<T, Eigen::Dynamic, 1>>(p, x.size()) * T(0)).sum();
  } else {
    for (index r = 0; r < x.rows(); ++r) acc += (x.derived().row(r).array() * T(0)).sum();
  }
  if (!(acc == T(0))) fail_not_finite(x, where, name);
}

template <class D>
void check_codes(const Eigen::DenseBase<D>& codes, const Eigen::VectorXi& bits, const char* where) {
  using Code = typename D::Scalar;
  const index channels = bits.size();
  for (index r = 0; r < codes.rows(); ++r) {
    const int b = bits[r % channels];
    if (b >= code_bits<Code>()) continue;
    const Code qm = static_cast<Code>((1u << b) - 1u);
    if (codes.derived().row(r).maxCoeff() > qm) {
      for (index c = 0; c < codes.cols(); ++c) {
        const Code v = codes.derived().coeff(r, c);
        if (v > qm) {
          fail(where, "codes(", r, ", ", c, ") = ", static_cast<unsigned>(v), " is above qmax = ",
               static_cast<unsigned>(qm), " of channel ", r % channels, " (", b, " bits)");
        }
      }
    }
  }
}

// Out-of-place outputs of at least this many bytes are written with streaming
// (non-temporal) stores: they cannot stay in cache anyway, and streaming saves the
// read for ownership of every output line, a quarter of an out-of-place pass's
// traffic. In place never streams (the lines are in cache already), nor do outputs
// narrower than the input (codes).
#ifndef PTQ_STREAMING_MIN_BYTES
#define PTQ_STREAMING_MIN_BYTES (std::size_t(16) << 20)
#endif
constexpr std::size_t streaming_min_bytes = PTQ_STREAMING_MIN_BYTES;

// memcpy with non-temporal stores for the aligned middle (x86 SSE2 / AVX / AVX-512).
inline void stream_copy(void* dst, const void* src, std::size_t bytes) {
#if defined(__SSE2__)
#if defined(__AVX512F__)
  constexpr std::size_t V = 64;
#elif defined(__AVX__)
  constexpr std::size_t V = 32;
#else
  constexpr std::size_t V = 16;
#endif
  auto* d = static_cast<unsigned char*>(dst);
  const auto* s = static_cast<const unsigned char*>(src);
  const std::size_t head = std::min(bytes, (V - reinterpret_cast<std::uintptr_t>(d) % V) % V);
  std::memcpy(d, s, head);
  d += head, s += head, bytes -= head;
  for (; bytes >= V; bytes -= V, d += V, s += V) {
#if defined(__AVX512F__)
    _mm512_stream_si512(reinterpret_cast<__m512i*>(d), _mm512_loadu_si512(s));
#elif defined(__AVX__)
    _mm256_stream_si256(reinterpret_cast<__m256i*>(d), _mm256_loadu_si256(reinterpret_cast<const __m256i*>(s)));
#else
    _mm_stream_si128(reinterpret_cast<__m128i*>(d), _mm_loadu_si128(reinterpret_cast<const __m128i*>(s)));
#endif
  }
  std::memcpy(d, s, bytes);
#else
  std::memcpy(dst, src, bytes);
#endif
}
inline void stream_fence() {
#if defined(__SSE2__)
  _mm_sfence();
#endif
}

// Runs kernel(in, out, inv, zp, qmax, scale) over the row view of x / y with C
// channels: in and out are Eigen array expressions of one stretch of elements, the
// coefficients are scalars (one channel) or arrays (one per element of the stretch).
//   contiguous, one channel: the whole tensor at once;
//   contiguous, inner == 1:  each outer index, across its C channels;
//   otherwise:               row by row, channel r % C.
// Large contiguous outputs are computed 8 KiB at a time into a stack buffer (L1)
// and streamed out (stream_copy).
template <class T, class DX, class DY, class Kernel>
void for_each_stretch(const Eigen::DenseBase<DX>& x, Eigen::DenseBase<DY>& y, const affine_coeffs<T>& k,
                      Kernel&& kernel) {
  using SX = typename DX::Scalar;
  using SY = typename DY::Scalar;
  using in_map = Eigen::Map<const Eigen::Array<SX, Eigen::Dynamic, 1>>;
  using out_map = Eigen::Map<Eigen::Array<SY, Eigen::Dynamic, 1>>;
  const index C = k.inv.size(), rows = x.rows(), cols = x.cols();
  const SX* px = contiguous_data(x);
  SY* py = contiguous_data(y);
  if (px && py && cols == 1 && C > 1) {
    for (index o = 0; o < rows / C; ++o) {
      kernel(in_map(px + o * C, C), out_map(py + o * C, C), k.inv, k.zp, k.qmax, k.scale);
    }
  } else if (px && py) {
    const bool in_place = static_cast<const void*>(px) == static_cast<const void*>(py);
    // Narrower outputs (codes) gain little from streaming and lose the extra copy.
    const bool stream = !in_place && sizeof(SY) >= sizeof(SX) &&
                        static_cast<std::size_t>(x.size()) * sizeof(SY) >= streaming_min_bytes;
    const auto run = [&](index offset, index length, index c) {
      if (!stream) {
        kernel(in_map(px + offset, length), out_map(py + offset, length), k.inv[c], k.zp[c], k.qmax[c], k.scale[c]);
        return;
      }
      constexpr index chunk = 8192 / static_cast<index>(sizeof(SY));
      alignas(64) SY buffer[chunk];
      for (index i = 0; i < length; i += chunk) {
        const index m = std::min(chunk, length - i);
        kernel(in_map(px + offset + i, m), out_map(buffer, m), k.inv[c], k.zp[c], k.qmax[c], k.scale[c]);
        stream_copy(py + offset + i, buffer, static_cast<std::size_t>(m) * sizeof(SY));
      }
    };
    if (C == 1) {
      run(0, x.size(), 0);
    } else {
      for (index r = 0; r < rows; ++r) run(r * cols, cols, r % C);
    }
    if (stream) stream_fence();
  } else {
    for (index o = 0, r = 0; o < rows / C; ++o) {
      for (index c = 0; c < C; ++c, ++r) {
        kernel(x.derived().row(r).array(), y.derived().row(r).array(), k.inv[c], k.zp[c], k.qmax[c], k.scale[c]);
      }
    }
  }
}

// The plain loop the _ref twins share: f(value, channel) -> result, element by element.
template <class T, class DX, class DY, class F>
void for_each_element_ref(const Eigen::DenseBase<DX>& x, Eigen::DenseBase<DY>& y, index channels, F&& f) {
  for (index r = 0; r < x.rows(); ++r) {
    const index c = r % channels;
    for (index j = 0; j < x.cols(); ++j) y.derived().coeffRef(r, j) = f(x.derived().coeff(r, j), c);
  }
}

}  // namespace detail

// The operations. Row view, channels = params.channels(); see the top of this file.
struct gemmlowp_quantizer {
  template <class T>
  using params = quant_params<T>;

  // codes = clamp(nearbyint(x * inv_scale) + zero_point, 0, qmax). Code: an unsigned
  // integer type wide enough for every channel's bits (uint8_t <= 8, uint16_t <= 16).
  template <class Code, class T, class DX, class DQ>
  static void quantize(const Eigen::DenseBase<DX>& x, const quant_params<T>& p, Eigen::DenseBase<DQ>& codes) {
    static constexpr const char* where = "ptq::gemmlowp_quantizer::quantize";
    static_assert(std::is_same<typename DQ::Scalar, Code>::value, "quantize<Code>: codes must hold Code");
    check_quantize<Code>(x, p, codes, where);
    const detail::affine_coeffs<T> k(p);
    detail::for_each_stretch(x, codes, k, [](const auto& in, auto&& out, const auto& inv, const auto& zp,
                                             const auto& qmax, const auto&) {
      out = ((in * inv).rint() + zp).max(T(0)).min(qmax).template cast<Code>();
    });
  }
  template <class Code, class T, class DX, class DQ>
  static void quantize(const Eigen::DenseBase<DX>& x, const quant_params<T>& p, Eigen::DenseBase<DQ>&& codes) {
    quantize<Code>(x, p, codes);
  }

  // out = (codes - zero_point) * scale.
  template <class T, class DQ, class DY>
  static void dequantize(const Eigen::DenseBase<DQ>& codes, const quant_params<T>& p, Eigen::DenseBase<DY>& out) {
    static constexpr const char* where = "ptq::gemmlowp_quantizer::dequantize";
    check_dequantize(codes, p, out, where);
    const detail::affine_coeffs<T> k(p);
    detail::for_each_stretch(codes, out, k, [](const auto& in, auto&& y, const auto&, const auto& zp,
                                               const auto&, const auto& scale) {
      y = (in.template cast<T>() - zp) * scale;
    });
  }
  template <class T, class DQ, class DY>
  static void dequantize(const Eigen::DenseBase<DQ>& codes, const quant_params<T>& p, Eigen::DenseBase<DY>&& out) {
    dequantize(codes, p, out);
  }

  // out = dequantize(quantize(x)), in T, without materializing codes. out may be x.
  template <class T, class DX, class DY>
  static void fake_quantize(const Eigen::DenseBase<DX>& x, const quant_params<T>& p, Eigen::DenseBase<DY>& out) {
    static constexpr const char* where = "ptq::gemmlowp_quantizer::fake_quantize";
    check_fake(x, p, out, where);
    fake_kernel(x, p, out);
  }
  template <class T, class DX, class DY>
  static void fake_quantize(const Eigen::DenseBase<DX>& x, const quant_params<T>& p, Eigen::DenseBase<DY>&& out) {
    fake_quantize(x, p, out);
  }

  // x = dequantize(quantize(x)).
  template <class T, class D>
  static void fake_quantize_in_place(Eigen::DenseBase<D>& x, const quant_params<T>& p) {
    static constexpr const char* where = "ptq::gemmlowp_quantizer::fake_quantize_in_place";
    check_fake(x, p, x, where);
    fake_kernel(x, p, x);
  }
  template <class T, class D>
  static void fake_quantize_in_place(Eigen::DenseBase<D>&& x, const quant_params<T>& p) {
    fake_quantize_in_place(x, p);
  }

  // Scalar twins: same checks, same arithmetic, one element at a time.
  template <class Code, class T, class DX, class DQ>
  static void quantize_ref(const Eigen::DenseBase<DX>& x, const quant_params<T>& p, Eigen::DenseBase<DQ>& codes) {
    static constexpr const char* where = "ptq::gemmlowp_quantizer::quantize_ref";
    static_assert(std::is_same<typename DQ::Scalar, Code>::value, "quantize_ref<Code>: codes must hold Code");
    check_quantize<Code>(x, p, codes, where);
    detail::for_each_element_ref<T>(x, codes, p.channels(), [&p](T v, index c) {
      const T q = detail::quantize_value(v, detail::inv_scale_of(p, c), static_cast<T>(p.zero_point[c]),
                                         static_cast<T>(p.qmax(c)));
      return static_cast<Code>(q);
    });
  }
  template <class Code, class T, class DX, class DQ>
  static void quantize_ref(const Eigen::DenseBase<DX>& x, const quant_params<T>& p, Eigen::DenseBase<DQ>&& codes) {
    quantize_ref<Code>(x, p, codes);
  }

  template <class T, class DQ, class DY>
  static void dequantize_ref(const Eigen::DenseBase<DQ>& codes, const quant_params<T>& p, Eigen::DenseBase<DY>& out) {
    static constexpr const char* where = "ptq::gemmlowp_quantizer::dequantize_ref";
    check_dequantize(codes, p, out, where);
    detail::for_each_element_ref<T>(codes, out, p.channels(), [&p](typename DQ::Scalar q, index c) {
      return detail::dequantize_value(static_cast<T>(q), static_cast<T>(p.zero_point[c]), p.scale[c]);
    });
  }
  template <class T, class DQ, class DY>
  static void dequantize_ref(const Eigen::DenseBase<DQ>& codes, const quant_params<T>& p, Eigen::DenseBase<DY>&& out) {
    dequantize_ref(codes, p, out);
  }

  template <class T, class DX, class DY>
  static void fake_quantize_ref(const Eigen::DenseBase<DX>& x, const quant_params<T>& p, Eigen::DenseBase<DY>& out) {
    static constexpr const char* where = "ptq::gemmlowp_quantizer::fake_quantize_ref";
    check_fake(x, p, out, where);
    detail::for_each_element_ref<T>(x, out, p.channels(), [&p](T v, index c) {
      const T zp = static_cast<T>(p.zero_point[c]);
      const T q = detail::quantize_value(v, detail::inv_scale_of(p, c), zp, static_cast<T>(p.qmax(c)));
      return detail::dequantize_value(q, zp, p.scale[c]);
    });
  }
  template <class T, class DX, class DY>
  static void fake_quantize_ref(const Eigen::DenseBase<DX>& x, const quant_params<T>& p, Eigen::DenseBase<DY>&& out) {
    fake_quantize_ref(x, p, out);
  }

 private:
  template <class T, class DX, class DY>
  static void fake_kernel(const Eigen::DenseBase<DX>& x, const quant_params<T>& p, Eigen::DenseBase<DY>& out) {
    const detail::affine_coeffs<T> k(p);
    detail::for_each_stretch(x, out, k, [](const auto& in, auto&& y, const auto& inv, const auto& zp,
                                           const auto& qmax, const auto& scale) {
      y = (((in * inv).rint() + zp).max(T(0)).min(qmax) - zp) * scale;
    });
  }

  template <class T, class DX>
  static void check_input(const Eigen::DenseBase<DX>& x, const quant_params<T>& p, int code_width,
                          const char* where) {
    detail::check_params(p, code_width, where);
    detail::check_channels(x.rows(), x.cols(), p.channels(), where);
  }

  template <class Code, class T, class DX, class DQ>
  static void check_quantize(const Eigen::DenseBase<DX>& x, const quant_params<T>& p,
                             const Eigen::DenseBase<DQ>& codes, const char* where) {
    static_assert(std::is_same<typename DX::Scalar, T>::value, "quantize: x and params must have the same T");
    check_input(x, p, detail::code_bits<Code>(), where);
    detail::check_same_shape(x, codes, where, "x", "codes");
    detail::check_finite(x, where, "x");
  }

  template <class T, class DQ, class DY>
  static void check_dequantize(const Eigen::DenseBase<DQ>& codes, const quant_params<T>& p,
                               const Eigen::DenseBase<DY>& out, const char* where) {
    static_assert(std::is_same<typename DY::Scalar, T>::value, "dequantize: out and params must have the same T");
    check_input(codes, p, detail::code_bits<typename DQ::Scalar>(), where);
    detail::check_same_shape(codes, out, where, "codes", "out");
    detail::check_codes(codes, p.bits, where);
  }

  template <class T, class DX, class DY>
  static void check_fake(const Eigen::DenseBase<DX>& x, const quant_params<T>& p, const Eigen::DenseBase<DY>& out,
                         const char* where) {
    static_assert(std::is_same<typename DX::Scalar, T>::value && std::is_same<typename DY::Scalar, T>::value,
                  "fake_quantize: x, out and params must have the same T");
    check_input(x, p, quant_params<T>::max_bits, where);
    detail::check_same_shape(x, out, where, "x", "out");
    detail::check_finite(x, where, "x");
  }
};

}  // namespace ptq
