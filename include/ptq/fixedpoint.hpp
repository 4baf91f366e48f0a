// fixedpoint.hpp: gemmlowp's fixed-point requantization of int32 accumulators to uint8 (output stages).
//
// An integer conv accumulates int32 products of uint8 codes; turning the accumulator
// into the next layer's uint8 code means multiplying it by a real factor m > 0
// (input scale * weight scale / output scale). gemmlowp and TFLite do that in
// integers only: m is stored as a Q31 mantissa and a power of two,
//
//   m ~= multiplier * 2^-31 * 2^-shift,   multiplier in [2^30, 2^31) (Q31 in [0.5, 1)),
//
// shift >= 0 a right shift (m < 1), shift < 0 a left shift (m >= 1), shift in [-31, 31].
// quantize_multiplier(m) finds them with frexp: m = q * 2^e, q in [0.5, 1),
// multiplier = round(q * 2^31) with round half away from zero (std::round, as
// TFLite's QuantizeMultiplier), renormalized to (2^30, e + 1) when the rounding
// reaches 2^31, and shift = -e. m == 0 gives multiplier 0, shift 0; so does an m so
// small that shift would exceed 31 (m < 2^-32: then |x * m| < 1/2 for every int32 x,
// and 0 is the exact result rounded). m < 0, NaN, inf, and m whose rounded form needs a
// left shift beyond 31 (m >= 2^31 - 1/2) are ptq::error.
//
// x * m in integers, multiply_by_fixed(x, {multiplier, shift}), with TFLite's order
// (MultiplyByQuantizedMultiplier):
//
//   shift >= 0:  rounding_divide_by_pot(saturating_rounding_doubling_high_mul(x, multiplier), shift)
//   shift <  0:  saturating_rounding_doubling_high_mul(x * 2^-shift saturated to int32, multiplier)
//
// Two roundings, exactly gemmlowp's (fixedpoint.h), not one:
//   saturating_rounding_doubling_high_mul(a, b) = round(a * b / 2^31) with ties toward
//     +infinity (gemmlowp adds 2^30, or 1 - 2^30 for a negative product, and divides
//     truncating toward zero: +0.5 -> 1 but -0.5 -> 0), i.e. floor((a * b + 2^30) / 2^31);
//     the one overflow, INT32_MIN * INT32_MIN, saturates to INT32_MAX (ARM's VQRDMULH).
//   rounding_divide_by_pot(x, e) = round(x / 2^e), ties away from zero, e in [0, 31].
// For shift < 0 the result saturates as soon as x * 2^-shift leaves int32 (TFLite's
// order; m >= 1 is rare in a conv's output stage, and then |x| < 2^31 / 2^-shift is the
// usable range). Otherwise the result can differ by one from x * m rounded once; it is what gemmlowp and
// TFLite compute, bit for bit, which is why we keep it (a model checked against
// their kernels gives the same codes).
//
// An output stage per output channel k (a plain struct, as gemmlowp's output pipeline):
//
//   out = clamp(offset[k] + multiply_by_fixed(acc + bias[k], mult[k]), lo[k], hi[k])
//
// acc + bias saturates to int32 (an accumulator that overflows int32 is already wrong;
// saturating keeps the map monotone); the offset add and the clamp are exact (no int32
// wrap: offset is bounded, see check). ReLU is lo = the output zero point; a channel
// that is one constant c is lo == hi == c. The fast requantize runs, per row, one
// branch-free loop over the channels in int64 lanes (AVX-512 intrinsics when
// __AVX512F__, else a plain loop the compiler may vectorize) with the per-channel
// parameters unpacked once per call; requantize_ref is the plain scalar loop over the
// scalar functions above. They are equal bit for bit (test_fixedpoint.cpp).
#pragma once

#include <cmath>
#include <cstdint>
#include <limits>
#include <vector>

#if defined(__AVX512F__)
#include <immintrin.h>
#endif

#include "config.hpp"
#include "error.hpp"

namespace ptq {

struct fixed_multiplier {
  std::int32_t multiplier = 0;
  int shift = 0;
};

inline fixed_multiplier quantize_multiplier(double m) {
  constexpr const char* where = "ptq::quantize_multiplier";
  detail::require(std::isfinite(m), where, "m = ", m, " is not finite");
  detail::require(m >= 0, where, "m = ", m, " is negative");
  if (m == 0) return {};
  int e = 0;
  const double q = std::frexp(m, &e);  // m = q * 2^e, q in [0.5, 1)
  auto q_fixed = static_cast<std::int64_t>(std::round(q * 2147483648.0));
  if (q_fixed == (std::int64_t{1} << 31)) {  // q rounded up to 1.0
    q_fixed /= 2;
    ++e;
  }
  if (e < -31) return {};  // m < 2^-32: |x * m| < 1/2 for every int32 x
  detail::require(e <= 31, where, "m = ", m, " needs a left shift of ", e, " bits (at most 31: m < 2^31 - 1/2)");
  return {static_cast<std::int32_t>(q_fixed), -e};
}

inline std::int32_t saturating_rounding_doubling_high_mul(std::int32_t a, std::int32_t b) {
  if (a == b && a == std::numeric_limits<std::int32_t>::min()) return std::numeric_limits<std::int32_t>::max();
  const std::int64_t ab = std::int64_t{a} * std::int64_t{b};
  const std::int64_t nudge = ab >= 0 ? (std::int64_t{1} << 30) : 1 - (std::int64_t{1} << 30);
  return static_cast<std::int32_t>((ab + nudge) / (std::int64_t{1} << 31));
}

inline std::int32_t rounding_divide_by_pot(std::int32_t x, int exponent) {
  detail::require(exponent >= 0 && exponent <= 31, "ptq::rounding_divide_by_pot", "exponent = ", exponent,
                  " is outside [0, 31]");
  const std::int32_t mask = static_cast<std::int32_t>((std::int64_t{1} << exponent) - 1);
  const std::int32_t remainder = x & mask;
  const std::int32_t threshold = (mask >> 1) + (x < 0 ? 1 : 0);
  return (x >> exponent) + (remainder > threshold ? 1 : 0);
}

namespace detail {
inline std::int32_t saturate_int32(std::int64_t v) {
  constexpr std::int64_t lo = std::numeric_limits<std::int32_t>::min(), hi = std::numeric_limits<std::int32_t>::max();
  return static_cast<std::int32_t>(v < lo ? lo : v > hi ? hi : v);
}
inline void check_multiplier(const fixed_multiplier& m, const char* where, const char* name, index k) {
  require(m.shift >= -31 && m.shift <= 31, where, name, "[", k, "].shift = ", m.shift, " is outside [-31, 31]");
  require(m.multiplier == 0 || m.multiplier >= (std::int32_t{1} << 30), where, name, "[", k,
          "].multiplier = ", m.multiplier, " is neither 0 nor in [2^30, 2^31) (use ptq::quantize_multiplier)");
}
}  // namespace detail

inline std::int32_t multiply_by_fixed(std::int32_t x, fixed_multiplier m) {
  detail::require(m.shift >= -31 && m.shift <= 31, "ptq::multiply_by_fixed", "shift = ", m.shift,
                  " is outside [-31, 31]");
  if (m.shift >= 0) return rounding_divide_by_pot(saturating_rounding_doubling_high_mul(x, m.multiplier), m.shift);
  const std::int32_t shifted = detail::saturate_int32(std::int64_t{x} * (std::int64_t{1} << -m.shift));
  return saturating_rounding_doubling_high_mul(shifted, m.multiplier);
}

// Offsets are bounded so that offset + anything clamped to [0, 255] stays exact in int32.
constexpr std::int32_t requantize_max_offset = 1 << 24;

struct requantize_params {
  std::vector<std::int32_t> bias;  // added to the accumulator first (saturating)
  std::vector<fixed_multiplier> mult;
  std::vector<std::int32_t> offset;  // the output zero point, |offset| <= 2^24
  std::vector<std::uint8_t> lo, hi;  // clamp, lo <= hi

  index channels() const { return static_cast<index>(bias.size()); }
};

// Sizes equal, lo <= hi, multipliers as quantize_multiplier makes them, |offset| <= 2^24.
inline void check(const requantize_params& p, const char* where) {
  const auto n = p.bias.size();
  detail::require(p.mult.size() == n && p.offset.size() == n && p.lo.size() == n && p.hi.size() == n, where,
                  "requantize_params of different lengths: bias ", n, ", mult ", p.mult.size(), ", offset ",
                  p.offset.size(), ", lo ", p.lo.size(), ", hi ", p.hi.size());
  for (std::size_t k = 0; k < n; ++k) {
    const auto ki = static_cast<index>(k);
    detail::check_multiplier(p.mult[k], where, "mult", ki);
    detail::require(p.offset[k] >= -requantize_max_offset && p.offset[k] <= requantize_max_offset, where, "offset[",
                    k, "] = ", p.offset[k], " is outside [-2^24, 2^24]");
    detail::require(p.lo[k] <= p.hi[k], where, "channel ", k, ": lo = ", int{p.lo[k]}, " > hi = ", int{p.hi[k]});
  }
}

namespace detail {
inline void check_requantize_call(const void* acc, index rows, index ld_acc, const requantize_params& p,
                                  const void* out, index ld_out, const char* where) {
  check(p, where);
  const index c = p.channels();
  require(rows >= 0, where, "rows = ", rows, " is negative");
  require(ld_acc >= c, where, "ld_acc = ", ld_acc, " is less than the ", c, " channels");
  require(ld_out >= c, where, "ld_out = ", ld_out, " is less than the ", c, " channels");
  if (rows > 0 && c > 0) {
    require(acc != nullptr, where, "acc is null");
    require(out != nullptr, where, "out is null");
  }
}

// One output stage in the branch-free int64 form both fast paths use (equal to the
// scalar functions: floor((s * M + 2^30) / 2^31) is gemmlowp's high mul for M >= 0,
// and (h + half - (h < 0 && rs > 0)) >> rs its rounding divide).
struct requantize_lanes {
  std::vector<std::int64_t> bias, ls, mul, rs, half, negadj, lo, hi, off;

  explicit requantize_lanes(const requantize_params& p) {
    const auto n = p.bias.size();
    for (auto* v : {&bias, &ls, &mul, &rs, &half, &negadj, &lo, &hi, &off}) v->resize(n);
    for (std::size_t k = 0; k < n; ++k) {
      const int s = p.mult[k].shift;
      bias[k] = p.bias[k];
      ls[k] = s < 0 ? -s : 0;
      rs[k] = s > 0 ? s : 0;
      mul[k] = p.mult[k].multiplier;
      half[k] = s > 0 ? std::int64_t{1} << (s - 1) : 0;
      negadj[k] = s > 0 ? -1 : 0;
      lo[k] = std::int64_t{p.lo[k]} - p.offset[k];
      hi[k] = std::int64_t{p.hi[k]} - p.offset[k];
      off[k] = p.offset[k];
    }
  }
};

inline void requantize_row_portable(const std::int32_t* acc, const requantize_lanes& L, index c0, index c1,
                                    std::uint8_t* out) {
  constexpr std::int64_t i32min = std::numeric_limits<std::int32_t>::min(), i32max = std::numeric_limits<std::int32_t>::max();
  for (index k = c0; k < c1; ++k) {
    std::int64_t s = (std::int64_t{acc[k]} + L.bias[k]) * (std::int64_t{1} << L.ls[k]);  // |s| < 2^63
    s = s < i32min ? i32min : s > i32max ? i32max : s;
    const std::int64_t h = (s * L.mul[k] + (std::int64_t{1} << 30)) >> 31;
    std::int64_t r = (h + L.half[k] + ((h >> 63) & L.negadj[k])) >> L.rs[k];
    r = r < L.lo[k] ? L.lo[k] : r > L.hi[k] ? L.hi[k] : r;
    out[k] = static_cast<std::uint8_t>(r + L.off[k]);
  }
}

#if defined(__AVX512F__)
// GCC 12 reports its own _mm512_undefined_* placeholders as maybe-uninitialized (a false positive).
#if defined(__GNUC__) && !defined(__clang__)
#pragma GCC diagnostic push
#pragma GCC diagnostic ignored "-Wmaybe-uninitialized"
#pragma GCC diagnostic ignored "-Wuninitialized"
#endif
inline void requantize_row_avx512(const std::int32_t* acc, const requantize_lanes& L, index channels,
                                  std::uint8_t* out) {
  const __m512i i32min = _mm512_set1_epi64(std::numeric_limits<std::int32_t>::min());
  const __m512i i32max = _mm512_set1_epi64(std::numeric_limits<std::int32_t>::max());
  const __m512i nudge = _mm512_set1_epi64(std::int64_t{1} << 30);
  for (index k = 0; k < channels; k += 8) {
    const index left = channels - k;
    const __mmask8 m = left >= 8 ? __mmask8(0xFF) : static_cast<__mmask8>((1u << left) - 1);
    const __m512i a = _mm512_cvtepi32_epi64(_mm256_maskz_loadu_epi32(m, acc + k));
    __m512i s = _mm512_add_epi64(a, _mm512_maskz_loadu_epi64(m, L.bias.data() + k));
    s = _mm512_sllv_epi64(s, _mm512_maskz_loadu_epi64(m, L.ls.data() + k));
    s = _mm512_min_epi64(_mm512_max_epi64(s, i32min), i32max);
    // s and the multiplier fit int32, so the signed 32x32 -> 64 multiply of the low halves is exact.
    const __m512i ab = _mm512_mul_epi32(s, _mm512_maskz_loadu_epi64(m, L.mul.data() + k));
    const __m512i h = _mm512_srai_epi64(_mm512_add_epi64(ab, nudge), 31);
    const __m512i adj = _mm512_and_si512(_mm512_srai_epi64(h, 63), _mm512_maskz_loadu_epi64(m, L.negadj.data() + k));
    __m512i r = _mm512_add_epi64(_mm512_add_epi64(h, _mm512_maskz_loadu_epi64(m, L.half.data() + k)), adj);
    r = _mm512_srav_epi64(r, _mm512_maskz_loadu_epi64(m, L.rs.data() + k));
    r = _mm512_max_epi64(r, _mm512_maskz_loadu_epi64(m, L.lo.data() + k));
    r = _mm512_min_epi64(r, _mm512_maskz_loadu_epi64(m, L.hi.data() + k));
    r = _mm512_add_epi64(r, _mm512_maskz_loadu_epi64(m, L.off.data() + k));
    _mm512_mask_cvtepi64_storeu_epi8(out + k, m, r);
  }
}
#if defined(__GNUC__) && !defined(__clang__)
#pragma GCC diagnostic pop
#endif
#endif
}  // namespace detail

inline void requantize(const std::int32_t* acc, index rows, index ld_acc, const requantize_params& p,
                       std::uint8_t* out, index ld_out) {
  detail::check_requantize_call(acc, rows, ld_acc, p, out, ld_out, "ptq::requantize");
  const index c = p.channels();
  if (rows == 0 || c == 0) return;
  const detail::requantize_lanes lanes(p);
  for (index r = 0; r < rows; ++r) {
#if defined(__AVX512F__)
    detail::requantize_row_avx512(acc + r * ld_acc, lanes, c, out + r * ld_out);
#else
    detail::requantize_row_portable(acc + r * ld_acc, lanes, 0, c, out + r * ld_out);
#endif
  }
}

inline void requantize_ref(const std::int32_t* acc, index rows, index ld_acc, const requantize_params& p,
                           std::uint8_t* out, index ld_out) {
  detail::check_requantize_call(acc, rows, ld_acc, p, out, ld_out, "ptq::requantize_ref");
  for (index r = 0; r < rows; ++r)
    for (index k = 0; k < p.channels(); ++k) {
      const std::int32_t s = detail::saturate_int32(std::int64_t{acc[r * ld_acc + k]} + p.bias[k]);
      const std::int64_t v = std::int64_t{p.offset[k]} + multiply_by_fixed(s, p.mult[k]);
      out[r * ld_out + k] = static_cast<std::uint8_t>(v < p.lo[k] ? p.lo[k] : v > p.hi[k] ? p.hi[k] : v);
    }
}

}  // namespace ptq
