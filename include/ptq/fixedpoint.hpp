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
// branch-free loop over the channels with the per-channel parameters unpacked once per
// call: with __AVX512F__, 16 channels per vector in int32 lanes and gemmlowp's two
// roundings folded into one exact int64 rounding (requantize16 below says why it is
// exact); else, where the CPU has AVX2 (checked at run time, no -march needed), the same
// rounding on 8 int32 lanes (requantize8); else a plain int64 loop the compiler may
// vectorize. requantize_ref is the plain scalar loop over the scalar functions above. They
// are equal bit for bit (test_fixedpoint.cpp runs every path). bench/bench_requantize.cpp:
// AVX-512 1.7-1.8x the former 8-lane int64 path, 16-22x requantize_ref, 0.55-0.71x a memcpy
// of the accumulators; AVX2 1.3-3.1x the int64 loop (bench/README.md).
//
// add_requantize / add_requantize_ref (below): the integer residual add of two uint8
// tensors, TFLite's quantized ADD, built from the same multiply_by_fixed (AVX-512: int64
// lanes; AVX2: int32 lanes through mul8, 5.5-7.4x the portable loop).
#pragma once

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <limits>
#include <vector>

#include <cstring>

#if defined(__AVX512F__)
#include <immintrin.h>
#endif

#include "config.hpp"
#include "detail/cpu.hpp"
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

// multiply_by_fixed in the branch-free int64 form both fast paths use, per channel k:
// s saturated to int32 after the left shift, h = floor((s * M + 2^30) / 2^31) (gemmlowp's
// high mul, for M >= 0), then (h + half - (h < 0 && rs > 0)) >> rs (its rounding divide).
struct fixed_lanes {
  std::vector<std::int64_t> ls, mul, rs, half, negadj;

  explicit fixed_lanes(const std::vector<fixed_multiplier>& m) {
    const auto n = m.size();
    for (auto* v : {&ls, &mul, &rs, &half, &negadj}) v->resize(n);
    for (std::size_t k = 0; k < n; ++k) {
      const int s = m[k].shift;
      ls[k] = s < 0 ? -s : 0;
      rs[k] = s > 0 ? s : 0;
      mul[k] = m[k].multiplier;
      half[k] = s > 0 ? std::int64_t{1} << (s - 1) : 0;
      negadj[k] = s > 0 ? -1 : 0;
    }
  }

  // |s| < 2^32 (so s * 2^31 fits int64).
  std::int64_t apply(std::int64_t s, index k) const {
    constexpr std::int64_t i32min = std::numeric_limits<std::int32_t>::min(), i32max = std::numeric_limits<std::int32_t>::max();
    s *= std::int64_t{1} << ls[k];
    s = s < i32min ? i32min : s > i32max ? i32max : s;
    const std::int64_t h = (s * mul[k] + (std::int64_t{1} << 30)) >> 31;
    return (h + half[k] + ((h >> 63) & negadj[k])) >> rs[k];
  }
};

struct requantize_lanes {
  fixed_lanes mult;
  std::vector<std::int64_t> bias, lo, hi, off;

  explicit requantize_lanes(const requantize_params& p) : mult(p.mult) {
    const auto n = p.bias.size();
    for (auto* v : {&bias, &lo, &hi, &off}) v->resize(n);
    for (std::size_t k = 0; k < n; ++k) {
      bias[k] = p.bias[k];
      lo[k] = std::int64_t{p.lo[k]} - p.offset[k];  // clamp before the offset: no int32 wrap
      hi[k] = std::int64_t{p.hi[k]} - p.offset[k];
      off[k] = p.offset[k];
    }
  }
};

inline void requantize_row_portable(const std::int32_t* acc, const requantize_lanes& L, index channels,
                                    std::uint8_t* out) {
  for (index k = 0; k < channels; ++k) {
    std::int64_t r = L.mult.apply(std::int64_t{acc[k]} + L.bias[k], k);
    r = r < L.lo[k] ? L.lo[k] : r > L.hi[k] ? L.hi[k] : r;
    out[k] = static_cast<std::uint8_t>(r + L.off[k]);
  }
}

// multiply_by_fixed on 16 channels (one per int32 lane), the constants of each lane:
// M (and, for the odd lanes' products, Modd: lane 2j holds lane 2j+1's multiplier), ls
// (a negative shift's left shift), and per even / odd lane the int64 add, adj and shift
// of the single rounding of the AVX-512 path below. Idle lanes: multiplier 0, shift 31 (result 0).
struct alignas(64) fixed16 {
  std::int32_t M[16] = {}, Modd[16] = {}, ls[16] = {};
  std::int64_t adde[8] = {}, addo[8] = {}, adje[8] = {}, adjo[8] = {}, she[8] = {31, 31, 31, 31, 31, 31, 31, 31},
               sho[8] = {31, 31, 31, 31, 31, 31, 31, 31};
  void set(int lane, const fixed_multiplier& m) {
    const int s = m.shift > 0 ? m.shift : 0;
    M[lane] = m.multiplier;
    if (lane % 2 == 1) Modd[lane - 1] = m.multiplier;
    ls[lane] = m.shift < 0 ? -m.shift : 0;
    const std::int64_t add = (std::int64_t{1} << 30) + (s > 0 ? (std::int64_t{1} << (s - 1)) * (std::int64_t{1} << 31) : 0);
    (lane % 2 == 0 ? adde : addo)[lane / 2] = add;
    (lane % 2 == 0 ? adje : adjo)[lane / 2] = s > 0 ? std::int64_t{1} << 31 : 0;
    (lane % 2 == 0 ? she : sho)[lane / 2] = 31 + s;
  }
};

// requantize's constants for channels 16 b .. 16 b + 15.
struct alignas(64) requantize_block16 {
  fixed16 f;
  std::int32_t bias[16] = {}, lo[16] = {}, hi[16] = {}, off[16] = {};
};

inline std::vector<requantize_block16> requantize_blocks(const requantize_params& p) {
  const index c = p.channels();
  std::vector<requantize_block16> v(static_cast<std::size_t>((c + 15) / 16));
  for (index k = 0; k < c; ++k) {
    requantize_block16& b = v[static_cast<std::size_t>(k / 16)];
    const auto kk = static_cast<std::size_t>(k);
    const int l = static_cast<int>(k % 16);
    b.f.set(l, p.mult[kk]);
    b.bias[l] = p.bias[kk];
    b.off[l] = p.offset[kk];
    b.lo[l] = p.lo[kk] - p.offset[kk];
    b.hi[l] = p.hi[kk] - p.offset[kk];
  }
  return v;
}

#if defined(__AVX512F__)
// The 8-lane int64 form of fixed_lanes::apply (add_requantize's path).
// GCC 12 reports its own _mm512_undefined_* placeholders as maybe-uninitialized (a false positive).
#if defined(__GNUC__) && !defined(__clang__)
#pragma GCC diagnostic push
#pragma GCC diagnostic ignored "-Wmaybe-uninitialized"
#pragma GCC diagnostic ignored "-Wuninitialized"
#endif
inline __m512i load8(const std::vector<std::int64_t>& v, index k, __mmask8 m) {
  return _mm512_maskz_loadu_epi64(m, v.data() + k);
}
// fixed_lanes::apply on channels k..k+7 (lanes of m).
inline __m512i apply_avx512(__m512i s, const fixed_lanes& F, index k, __mmask8 m) {
  s = _mm512_sllv_epi64(s, load8(F.ls, k, m));
  s = _mm512_min_epi64(_mm512_max_epi64(s, _mm512_set1_epi64(std::numeric_limits<std::int32_t>::min())),
                       _mm512_set1_epi64(std::numeric_limits<std::int32_t>::max()));
  // s and the multiplier fit int32: the signed 32x32 -> 64 multiply of the low halves is exact.
  const __m512i ab = _mm512_mul_epi32(s, load8(F.mul, k, m));
  const __m512i h = _mm512_srai_epi64(_mm512_add_epi64(ab, _mm512_set1_epi64(std::int64_t{1} << 30)), 31);
  const __m512i adj = _mm512_and_si512(_mm512_srai_epi64(h, 63), load8(F.negadj, k, m));
  const __m512i r = _mm512_add_epi64(_mm512_add_epi64(h, load8(F.half, k, m)), adj);
  return _mm512_srav_epi64(r, load8(F.rs, k, m));
}
inline __mmask8 tail_mask(index left) {
  return left >= 8 ? __mmask8(0xFF) : static_cast<__mmask8>((1u << left) - 1);
}
#if defined(__GNUC__) && !defined(__clang__)
#pragma GCC diagnostic pop
#endif

// The AVX-512 path: 16 channels per vector in int32 lanes. Per channel, with s >= 0 the right
// shift (rs) and the multiplier M in [0, 2^31):
//   x = acc + bias, saturated (an int32 add whose overflow is detected from the signs);
//   x = x * 2^ls saturated to int32 (ls = -shift for a negative shift, else 0);
//   gemmlowp's two roundings in one: with P = x M (exact in int64),
//     rdbpot(srdhm(x, M), s) = (P + 2^30 + half 2^31 - [P < -2^30] adj) >> (31 + s),
//     half = 2^(s-1), adj = 2^31 for s > 0 (both 0 for s = 0),
//   because srdhm = floor((P + 2^30) / 2^31), h < 0 exactly when P < -2^30, and nested
//   floors of divisions by powers of two compose; |P| < 2^62, so every step is exact;
//   the two 32 x 32 -> 64 products per vector (even and odd lanes) are vpmuldq;
//   out = clamp(y, lo - offset, hi - offset) + offset (no int32 wrap: |offset| <= 2^24).
// Equal bit for bit to requantize_ref (test_fixedpoint.cpp). The example's integer engine
// (examples/resnet50/int_kernels.hpp) builds its fused stages on fixed16, presat16 and mul16.

// fixed16 in registers (loaded once before a loop).
struct fixed16_regs {
  __m512i M, Modd, adde, addo, adje, adjo, she, sho;
  explicit fixed16_regs(const fixed16& f)
      : M(_mm512_load_si512(f.M)), Modd(_mm512_load_si512(f.Modd)), adde(_mm512_load_si512(f.adde)),
        addo(_mm512_load_si512(f.addo)), adje(_mm512_load_si512(f.adje)), adjo(_mm512_load_si512(f.adjo)),
        she(_mm512_load_si512(f.she)), sho(_mm512_load_si512(f.sho)) {}
};

// x * 2^ls saturated to int32, per lane (lanes with ls = 0 pass unchanged): the first step
// of multiply_by_fixed for a negative shift.
inline __m512i presat16(__m512i x, __m512i ls) {
  const __m512i y = _mm512_sllv_epi32(x, ls);
  const __mmask16 over = _mm512_cmpneq_epi32_mask(_mm512_srav_epi32(y, ls), x);
  const __m512i sat = _mm512_mask_blend_epi32(_mm512_cmplt_epi32_mask(x, _mm512_setzero_si512()),
                                              _mm512_set1_epi32(std::numeric_limits<std::int32_t>::max()),
                                              _mm512_set1_epi32(std::numeric_limits<std::int32_t>::min()));
  return _mm512_mask_mov_epi32(y, over, sat);
}

// rdbpot(srdhm(x, M), s) on 16 lanes in one rounding (x already through presat16 where a
// lane's shift is negative). Nonneg: the caller clamps to a lower bound >= 0 before its
// offset; the [P < -2^30] adjustment only moves results y <= 0 (the unadjusted one lies in
// [y, 0]), which then both clamp to that bound, so it is skipped.
template <bool Nonneg = false>
inline __m512i mul16(__m512i x, const fixed16_regs& f) {
  const __m512i pe = _mm512_mul_epi32(x, f.M);
  const __m512i po = _mm512_mul_epi32(_mm512_srli_epi64(x, 32), f.Modd);
  __m512i ye = _mm512_add_epi64(pe, f.adde), yo = _mm512_add_epi64(po, f.addo);
  if constexpr (!Nonneg) {
    const __m512i lim = _mm512_set1_epi64(-(std::int64_t{1} << 30));
    ye = _mm512_mask_sub_epi64(ye, _mm512_cmplt_epi64_mask(pe, lim), ye, f.adje);
    yo = _mm512_mask_sub_epi64(yo, _mm512_cmplt_epi64_mask(po, lim), yo, f.adjo);
  }
  ye = _mm512_srav_epi64(ye, f.she);
  yo = _mm512_srav_epi64(yo, f.sho);
  return _mm512_mask_shuffle_epi32(ye, 0xAAAA, yo, _MM_PERM_CDAB);
}

inline __m512i requantize16(__m512i a, const requantize_block16& b) {
  const __m512i zero = _mm512_setzero_si512();
  const __m512i bias = _mm512_load_si512(b.bias);
  // Saturating add: overflow iff both operands' signs differ from the sum's.
  __m512i x = _mm512_add_epi32(a, bias);
  const __mmask16 ov = _mm512_cmplt_epi32_mask(_mm512_and_si512(_mm512_xor_si512(a, x), _mm512_xor_si512(bias, x)), zero);
  x = _mm512_mask_mov_epi32(x, ov,
                            _mm512_mask_blend_epi32(_mm512_cmplt_epi32_mask(a, zero),
                                                    _mm512_set1_epi32(std::numeric_limits<std::int32_t>::max()),
                                                    _mm512_set1_epi32(std::numeric_limits<std::int32_t>::min())));
  const fixed16_regs f(b.f);
  const __m512i r = mul16(presat16(x, _mm512_load_si512(b.f.ls)), f);
  return _mm512_add_epi32(_mm512_min_epi32(_mm512_max_epi32(r, _mm512_load_si512(b.lo)), _mm512_load_si512(b.hi)),
                          _mm512_load_si512(b.off));
}

inline void requantize_row_avx512(const std::int32_t* acc, const std::vector<requantize_block16>& blocks, index channels,
                                  std::uint8_t* out) {
  for (index k = 0; k < channels; k += 16) {
    const __mmask16 m = channels - k >= 16 ? __mmask16(0xFFFF) : static_cast<__mmask16>((1u << (channels - k)) - 1u);
    const __m512i r = requantize16(_mm512_maskz_loadu_epi32(m, acc + k), blocks[static_cast<std::size_t>(k / 16)]);
    _mm512_mask_cvtepi32_storeu_epi8(out + k, m, r);
  }
}
#endif

#if PTQ_X86_DISPATCH
// ---- AVX2 paths (where the build has no AVX-512 and the CPU has AVX2: run-time dispatch) ----
// mul16's single exact rounding on 8 int32 lanes, channels 8 h .. 8 h + 7 of a fixed16 block
// (each of its arrays splits into two 32-byte halves). AVX2 has no 64-bit arithmetic shift:
// y >> n is ((y ^ m) >>> n) ^ m with m = (y < 0 ? ~0 : 0), i.e. floor(y / 2^n) =
// -floor((-y - 1) / 2^n) - 1 for negative y, the arithmetic shift exactly.
struct fixed8_regs {
  __m256i M, Modd, adde, addo, adje, adjo, she, sho;
};
PTQ_AVX2_TARGET inline __m256i load8_avx2(const void* p) { return _mm256_load_si256(static_cast<const __m256i*>(p)); }
PTQ_AVX2_TARGET inline fixed8_regs load_fixed8(const fixed16& f, int h) {
  return {load8_avx2(f.M + 8 * h),    load8_avx2(f.Modd + 8 * h), load8_avx2(f.adde + 4 * h), load8_avx2(f.addo + 4 * h),
          load8_avx2(f.adje + 4 * h), load8_avx2(f.adjo + 4 * h), load8_avx2(f.she + 4 * h),  load8_avx2(f.sho + 4 * h)};
}
PTQ_AVX2_TARGET inline __m256i srai64v_avx2(__m256i y, __m256i n) {
  const __m256i m = _mm256_cmpgt_epi64(_mm256_setzero_si256(), y);
  return _mm256_xor_si256(_mm256_srlv_epi64(_mm256_xor_si256(y, m), n), m);
}
// presat16 on 8 lanes: x * 2^ls saturated to int32.
PTQ_AVX2_TARGET inline __m256i presat8(__m256i x, __m256i ls) {
  const __m256i y = _mm256_sllv_epi32(x, ls);
  const __m256i exact = _mm256_cmpeq_epi32(_mm256_srav_epi32(y, ls), x);
  const __m256i sat = _mm256_blendv_epi8(_mm256_set1_epi32(std::numeric_limits<std::int32_t>::max()),
                                         _mm256_set1_epi32(std::numeric_limits<std::int32_t>::min()),
                                         _mm256_cmpgt_epi32(_mm256_setzero_si256(), x));
  return _mm256_blendv_epi8(sat, y, exact);
}
// mul16 on 8 lanes (x through presat8 where a lane's shift is negative).
PTQ_AVX2_TARGET inline __m256i mul8(__m256i x, const fixed8_regs& f) {
  const __m256i pe = _mm256_mul_epi32(x, f.M);
  const __m256i po = _mm256_mul_epi32(_mm256_srli_epi64(x, 32), f.Modd);
  const __m256i lim = _mm256_set1_epi64x(-(std::int64_t{1} << 30));
  __m256i ye = _mm256_sub_epi64(_mm256_add_epi64(pe, f.adde), _mm256_and_si256(_mm256_cmpgt_epi64(lim, pe), f.adje));
  __m256i yo = _mm256_sub_epi64(_mm256_add_epi64(po, f.addo), _mm256_and_si256(_mm256_cmpgt_epi64(lim, po), f.adjo));
  ye = srai64v_avx2(ye, f.she);
  yo = srai64v_avx2(yo, f.sho);
  return _mm256_blend_epi32(ye, _mm256_slli_epi64(yo, 32), 0xAA);
}
// n <= 8 int32 from p (a copy through a buffer for n < 8: nothing past p[n - 1] is read).
PTQ_AVX2_TARGET inline __m256i load_i32x8(const std::int32_t* p, index n) {
  if (n >= 8) return _mm256_loadu_si256(reinterpret_cast<const __m256i*>(p));
  alignas(32) std::int32_t buf[8] = {};
  std::memcpy(buf, p, static_cast<std::size_t>(n) * sizeof(std::int32_t));
  return _mm256_load_si256(reinterpret_cast<const __m256i*>(buf));
}
// n <= 8 uint8 from p, zero-extended to int32 lanes.
PTQ_AVX2_TARGET inline __m256i load_u8x8(const std::uint8_t* p, index n) {
  std::int64_t v = 0;
  std::memcpy(&v, p, static_cast<std::size_t>(std::min<index>(n, 8)));
  return _mm256_cvtepu8_epi32(_mm_cvtsi64_si128(v));
}
// The low bytes of 8 int32 lanes (each in [0, 255]) to out[0 .. n).
PTQ_AVX2_TARGET inline void store_u8x8(std::uint8_t* out, __m256i v, index n) {
  const __m256i pick = _mm256_setr_epi8(0, 4, 8, 12, -1, -1, -1, -1, -1, -1, -1, -1, -1, -1, -1, -1, 0, 4, 8, 12, -1, -1,
                                        -1, -1, -1, -1, -1, -1, -1, -1, -1, -1);
  const __m256i t = _mm256_shuffle_epi8(v, pick);
  const std::int64_t b = _mm_cvtsi128_si64(_mm_unpacklo_epi32(_mm256_castsi256_si128(t), _mm256_extracti128_si256(t, 1)));
  std::memcpy(out, &b, static_cast<std::size_t>(std::min<index>(n, 8)));
}

// requantize16 on 8 lanes: channels 8 h .. 8 h + 7 of block b.
PTQ_AVX2_TARGET inline __m256i requantize8(__m256i a, const requantize_block16& b, int h) {
  const __m256i bias = load8_avx2(b.bias + 8 * h);
  __m256i x = _mm256_add_epi32(a, bias);
  // Saturating add: overflow iff both operands' signs differ from the sum's.
  const __m256i ov = _mm256_srai_epi32(_mm256_and_si256(_mm256_xor_si256(a, x), _mm256_xor_si256(bias, x)), 31);
  const __m256i sat = _mm256_blendv_epi8(_mm256_set1_epi32(std::numeric_limits<std::int32_t>::max()),
                                         _mm256_set1_epi32(std::numeric_limits<std::int32_t>::min()),
                                         _mm256_srai_epi32(a, 31));
  x = _mm256_blendv_epi8(x, sat, ov);
  const __m256i r = mul8(presat8(x, load8_avx2(b.f.ls + 8 * h)), load_fixed8(b.f, h));
  return _mm256_add_epi32(
      _mm256_min_epi32(_mm256_max_epi32(r, load8_avx2(b.lo + 8 * h)), load8_avx2(b.hi + 8 * h)),
      load8_avx2(b.off + 8 * h));
}

// ptq::requantize on AVX2 (the caller checked the arguments and the CPU).
PTQ_AVX2_TARGET inline void requantize_avx2_unchecked(const std::int32_t* acc, index rows, index ld_acc,
                                                      const requantize_params& p, std::uint8_t* out, index ld_out) {
  const std::vector<requantize_block16> blocks = requantize_blocks(p);
  const index c = p.channels();
  for (index r = 0; r < rows; ++r)
    for (index k = 0; k < c; k += 8) {
      const __m256i v = requantize8(load_i32x8(acc + r * ld_acc + k, c - k), blocks[static_cast<std::size_t>(k / 16)],
                                    static_cast<int>((k / 8) % 2));
      store_u8x8(out + r * ld_out + k, v, c - k);
    }
}
#endif
}  // namespace detail

inline void requantize(const std::int32_t* acc, index rows, index ld_acc, const requantize_params& p,
                       std::uint8_t* out, index ld_out) {
  detail::check_requantize_call(acc, rows, ld_acc, p, out, ld_out, "ptq::requantize");
  const index c = p.channels();
  if (rows == 0 || c == 0) return;
#if defined(__AVX512F__)
  const std::vector<detail::requantize_block16> blocks = detail::requantize_blocks(p);
  for (index r = 0; r < rows; ++r) detail::requantize_row_avx512(acc + r * ld_acc, blocks, c, out + r * ld_out);
#else
#if PTQ_X86_DISPATCH
  if (detail::cpu_has_avx2()) return detail::requantize_avx2_unchecked(acc, rows, ld_acc, p, out, ld_out);
#endif
  const detail::requantize_lanes lanes(p);
  for (index r = 0; r < rows; ++r) detail::requantize_row_portable(acc + r * ld_acc, lanes, c, out + r * ld_out);
#endif
}

namespace detail {
// requantize's AVX2 path called directly (for tests and benchmarks; ptq::requantize takes it
// by itself where the build has no AVX-512 and the CPU has AVX2). A ptq::error without AVX2.
inline void requantize_avx2(const std::int32_t* acc, index rows, index ld_acc, const requantize_params& p,
                            std::uint8_t* out, index ld_out) {
  check_requantize_call(acc, rows, ld_acc, p, out, ld_out, "ptq::detail::requantize_avx2");
  require(cpu_has_avx2(), "ptq::detail::requantize_avx2", "this CPU does not offer AVX2");
#if PTQ_X86_DISPATCH
  if (rows > 0 && p.channels() > 0) requantize_avx2_unchecked(acc, rows, ld_acc, p, out, ld_out);
#endif
}
}  // namespace detail

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

// Residual add of two uint8 tensors, TFLite's quantized ADD scheme, per channel k:
//
//   out = clamp(offset + multiply_by_fixed(multiply_by_fixed((a - za) * 2^left_shift, ma)
//                                          + multiply_by_fixed((b - zb) * 2^left_shift, mb), mo), lo, hi)
//
// Real values sa (a - za) + sb (b - zb) on the output grid so (zo): with t = 2 max(sa, sb),
// ma = sa / t and mb = sb / t (both <= 1/2) bring the two inputs to one common scale
// t / 2^left_shift, exactly enough that neither overflows, and mo = t / (so 2^left_shift)
// takes the sum to the output grid. left_shift = 20 keeps 20 extra bits of each input
// through the first rounding, so the result is within one code of the real value rounded
// (test_fixedpoint.cpp checks that against double precision). make_add_params computes
// these as TFLite does (lo, hi: 0, 255; a ReLU after the add is lo = zo). Limits that
// keep every step inside int32: left_shift in [0, 20], za, zb in [-256, 511] (so
// |a - za| < 2^9 and the shifted values < 2^29), ma and mb < 1 (shift >= 0), |offset| <= 2^24.
struct add_params {
  int left_shift = 20;
  std::vector<std::int32_t> za, zb, offset;
  std::vector<fixed_multiplier> ma, mb, mo;
  std::vector<std::uint8_t> lo, hi;

  index channels() const { return static_cast<index>(za.size()); }
};

inline void check(const add_params& p, const char* where) {
  const auto n = p.za.size();
  detail::require(p.left_shift >= 0 && p.left_shift <= 20, where, "left_shift = ", p.left_shift, " is outside [0, 20]");
  detail::require(p.zb.size() == n && p.offset.size() == n && p.ma.size() == n && p.mb.size() == n &&
                      p.mo.size() == n && p.lo.size() == n && p.hi.size() == n,
                  where, "add_params of different lengths: za ", n, ", zb ", p.zb.size(), ", offset ", p.offset.size(),
                  ", ma ", p.ma.size(), ", mb ", p.mb.size(), ", mo ", p.mo.size(), ", lo ", p.lo.size(), ", hi ",
                  p.hi.size());
  for (std::size_t k = 0; k < n; ++k) {
    const auto ki = static_cast<index>(k);
    detail::require(p.za[k] >= -256 && p.za[k] <= 511, where, "za[", k, "] = ", p.za[k], " is outside [-256, 511]");
    detail::require(p.zb[k] >= -256 && p.zb[k] <= 511, where, "zb[", k, "] = ", p.zb[k], " is outside [-256, 511]");
    detail::check_multiplier(p.ma[k], where, "ma", ki);
    detail::check_multiplier(p.mb[k], where, "mb", ki);
    detail::check_multiplier(p.mo[k], where, "mo", ki);
    detail::require(p.ma[k].shift >= 0, where, "ma[", k, "].shift = ", p.ma[k].shift, " is negative (ma must be < 1)");
    detail::require(p.mb[k].shift >= 0, where, "mb[", k, "].shift = ", p.mb[k].shift, " is negative (mb must be < 1)");
    detail::require(p.offset[k] >= -requantize_max_offset && p.offset[k] <= requantize_max_offset, where, "offset[",
                    k, "] = ", p.offset[k], " is outside [-2^24, 2^24]");
    detail::require(p.lo[k] <= p.hi[k], where, "channel ", k, ": lo = ", int{p.lo[k]}, " > hi = ", int{p.hi[k]});
  }
}

// TFLite's parameters from per-channel scales (> 0, finite) and zero points; lo = 0, hi = 255.
inline add_params make_add_params(const std::vector<double>& sa, const std::vector<std::int32_t>& za,
                                  const std::vector<double>& sb, const std::vector<std::int32_t>& zb,
                                  const std::vector<double>& so, const std::vector<std::int32_t>& zo,
                                  int left_shift = 20) {
  constexpr const char* where = "ptq::make_add_params";
  const auto n = sa.size();
  detail::require(za.size() == n && sb.size() == n && zb.size() == n && so.size() == n && zo.size() == n, where,
                  "vectors of different lengths: sa ", n, ", za ", za.size(), ", sb ", sb.size(), ", zb ", zb.size(),
                  ", so ", so.size(), ", zo ", zo.size());
  detail::require(left_shift >= 0 && left_shift <= 20, where, "left_shift = ", left_shift, " is outside [0, 20]");
  add_params p;
  p.left_shift = left_shift;
  p.za = za, p.zb = zb, p.offset = zo;
  p.lo.assign(n, 0);
  p.hi.assign(n, 255);
  for (std::size_t k = 0; k < n; ++k) {
    for (const auto* v : {&sa, &sb, &so})
      detail::require(std::isfinite((*v)[k]) && (*v)[k] > 0, where, v == &sa ? "sa[" : v == &sb ? "sb[" : "so[", k,
                      "] = ", (*v)[k], " is not a finite positive scale");
    const double t = 2 * std::max(sa[k], sb[k]);
    p.ma.push_back(quantize_multiplier(sa[k] / t));
    p.mb.push_back(quantize_multiplier(sb[k] / t));
    p.mo.push_back(quantize_multiplier(t / (so[k] * std::ldexp(1.0, left_shift))));
  }
  check(p, where);
  return p;
}

namespace detail {
inline void check_add_call(const void* a, const void* b, index rows, index ld, const add_params& p, const void* out,
                           index ld_out, const char* where) {
  check(p, where);
  const index c = p.channels();
  require(rows >= 0, where, "rows = ", rows, " is negative");
  require(ld >= c, where, "ld = ", ld, " is less than the ", c, " channels");
  require(ld_out >= c, where, "ld_out = ", ld_out, " is less than the ", c, " channels");
  if (rows > 0 && c > 0) {
    require(a != nullptr && b != nullptr, where, "an input is null");
    require(out != nullptr, where, "out is null");
  }
}

struct add_lanes {
  fixed_lanes ma, mb, mo;
  std::vector<std::int64_t> za, zb, lo, hi, off;
  std::int64_t scale;

  explicit add_lanes(const add_params& p) : ma(p.ma), mb(p.mb), mo(p.mo), scale(std::int64_t{1} << p.left_shift) {
    const auto n = p.za.size();
    for (auto* v : {&za, &zb, &lo, &hi, &off}) v->resize(n);
    for (std::size_t k = 0; k < n; ++k) {
      za[k] = p.za[k];
      zb[k] = p.zb[k];
      lo[k] = std::int64_t{p.lo[k]} - p.offset[k];
      hi[k] = std::int64_t{p.hi[k]} - p.offset[k];
      off[k] = p.offset[k];
    }
  }
};

inline void add_row_portable(const std::uint8_t* a, const std::uint8_t* b, const add_lanes& L, index channels,
                             std::uint8_t* out) {
  for (index k = 0; k < channels; ++k) {
    const std::int64_t sum = L.ma.apply((a[k] - L.za[k]) * L.scale, k) + L.mb.apply((b[k] - L.zb[k]) * L.scale, k);
    std::int64_t r = L.mo.apply(sum, k);
    r = r < L.lo[k] ? L.lo[k] : r > L.hi[k] ? L.hi[k] : r;
    out[k] = static_cast<std::uint8_t>(r + L.off[k]);
  }
}

#if defined(__AVX512F__)
#if defined(__GNUC__) && !defined(__clang__)
#pragma GCC diagnostic push
#pragma GCC diagnostic ignored "-Wmaybe-uninitialized"
#pragma GCC diagnostic ignored "-Wuninitialized"
#endif
inline void add_row_avx512(const std::uint8_t* a, const std::uint8_t* b, const add_lanes& L, index channels,
                           std::uint8_t* out) {
  const __m512i scale = _mm512_set1_epi64(L.scale);
  for (index k = 0; k < channels; k += 8) {
    const __mmask8 m = tail_mask(channels - k);
    const __m512i va = _mm512_cvtepu8_epi64(_mm_maskz_loadu_epi8(m, a + k));
    const __m512i vb = _mm512_cvtepu8_epi64(_mm_maskz_loadu_epi8(m, b + k));
    // (a - za) * 2^left_shift < 2^29 in magnitude: the low-half multiply is exact.
    const __m512i xa = _mm512_mul_epi32(_mm512_sub_epi64(va, load8(L.za, k, m)), scale);
    const __m512i xb = _mm512_mul_epi32(_mm512_sub_epi64(vb, load8(L.zb, k, m)), scale);
    const __m512i sum = _mm512_add_epi64(apply_avx512(xa, L.ma, k, m), apply_avx512(xb, L.mb, k, m));
    __m512i r = apply_avx512(sum, L.mo, k, m);
    r = _mm512_min_epi64(_mm512_max_epi64(r, load8(L.lo, k, m)), load8(L.hi, k, m));
    _mm512_mask_cvtepi64_storeu_epi8(out + k, m, _mm512_add_epi64(r, load8(L.off, k, m)));
  }
}
#if defined(__GNUC__) && !defined(__clang__)
#pragma GCC diagnostic pop
#endif
#endif

#if PTQ_X86_DISPATCH
// add_requantize's constants for channels 16 b .. 16 b + 15 (idle lanes: multipliers 0).
struct alignas(64) add_block16 {
  fixed16 fa, fb, fo;
  std::int32_t za[16] = {}, zb[16] = {}, lo[16] = {}, hi[16] = {}, off[16] = {};
};
inline std::vector<add_block16> add_blocks(const add_params& p) {
  const index c = p.channels();
  std::vector<add_block16> v(static_cast<std::size_t>((c + 15) / 16));
  for (index k = 0; k < c; ++k) {
    add_block16& b = v[static_cast<std::size_t>(k / 16)];
    const auto kk = static_cast<std::size_t>(k);
    const int l = static_cast<int>(k % 16);
    b.fa.set(l, p.ma[kk]);
    b.fb.set(l, p.mb[kk]);
    b.fo.set(l, p.mo[kk]);
    b.za[l] = p.za[kk], b.zb[l] = p.zb[kk], b.off[l] = p.offset[kk];
    b.lo[l] = p.lo[kk] - p.offset[kk];
    b.hi[l] = p.hi[kk] - p.offset[kk];
  }
  return v;
}
// The add on 8 lanes in int32, the form of the reference (add_requantize_ref): (a - za) 2^ls
// (< 2^29 in magnitude) times ma and mb (shifts >= 0: mul8 alone), the sum (< 2^30) through
// presat8 for a negative shift of mo, then mul8, clamp and offset.
PTQ_AVX2_TARGET inline __m256i add8(__m256i va, __m256i vb, const add_block16& b, int h, __m128i ls) {
  const __m256i xa = _mm256_sll_epi32(_mm256_sub_epi32(va, load8_avx2(b.za + 8 * h)), ls);
  const __m256i xb = _mm256_sll_epi32(_mm256_sub_epi32(vb, load8_avx2(b.zb + 8 * h)), ls);
  const __m256i sum = _mm256_add_epi32(mul8(xa, load_fixed8(b.fa, h)), mul8(xb, load_fixed8(b.fb, h)));
  const __m256i r = mul8(presat8(sum, load8_avx2(b.fo.ls + 8 * h)), load_fixed8(b.fo, h));
  return _mm256_add_epi32(
      _mm256_min_epi32(_mm256_max_epi32(r, load8_avx2(b.lo + 8 * h)), load8_avx2(b.hi + 8 * h)),
      load8_avx2(b.off + 8 * h));
}
PTQ_AVX2_TARGET inline void add_avx2_unchecked(const std::uint8_t* a, const std::uint8_t* b, index rows, index ld,
                                               const add_params& p, std::uint8_t* out, index ld_out) {
  const std::vector<add_block16> blocks = add_blocks(p);
  const index c = p.channels();
  const __m128i ls = _mm_cvtsi32_si128(p.left_shift);
  for (index r = 0; r < rows; ++r)
    for (index k = 0; k < c; k += 8) {
      const __m256i v = add8(load_u8x8(a + r * ld + k, c - k), load_u8x8(b + r * ld + k, c - k),
                             blocks[static_cast<std::size_t>(k / 16)], static_cast<int>((k / 8) % 2), ls);
      store_u8x8(out + r * ld_out + k, v, c - k);
    }
}
#endif
}  // namespace detail

// a, b: rows x channels uint8 with leading dimension ld (NHWC, pixels in rows); out: ld_out.
inline void add_requantize(const std::uint8_t* a, const std::uint8_t* b, index rows, index ld, const add_params& p,
                           std::uint8_t* out, index ld_out) {
  detail::check_add_call(a, b, rows, ld, p, out, ld_out, "ptq::add_requantize");
  const index c = p.channels();
  if (rows == 0 || c == 0) return;
#if !defined(__AVX512F__) && PTQ_X86_DISPATCH
  if (detail::cpu_has_avx2()) return detail::add_avx2_unchecked(a, b, rows, ld, p, out, ld_out);
#endif
  const detail::add_lanes lanes(p);
  for (index r = 0; r < rows; ++r) {
#if defined(__AVX512F__)
    detail::add_row_avx512(a + r * ld, b + r * ld, lanes, c, out + r * ld_out);
#else
    detail::add_row_portable(a + r * ld, b + r * ld, lanes, c, out + r * ld_out);
#endif
  }
}

namespace detail {
// add_requantize's AVX2 path called directly (tests, benchmarks); a ptq::error without AVX2.
inline void add_requantize_avx2(const std::uint8_t* a, const std::uint8_t* b, index rows, index ld,
                                const add_params& p, std::uint8_t* out, index ld_out) {
  check_add_call(a, b, rows, ld, p, out, ld_out, "ptq::detail::add_requantize_avx2");
  require(cpu_has_avx2(), "ptq::detail::add_requantize_avx2", "this CPU does not offer AVX2");
#if PTQ_X86_DISPATCH
  if (rows > 0 && p.channels() > 0) add_avx2_unchecked(a, b, rows, ld, p, out, ld_out);
#endif
}
}  // namespace detail

inline void add_requantize_ref(const std::uint8_t* a, const std::uint8_t* b, index rows, index ld, const add_params& p,
                               std::uint8_t* out, index ld_out) {
  detail::check_add_call(a, b, rows, ld, p, out, ld_out, "ptq::add_requantize_ref");
  const std::int32_t scale = std::int32_t{1} << p.left_shift;
  for (index r = 0; r < rows; ++r)
    for (index k = 0; k < p.channels(); ++k) {
      const std::int32_t xa = (a[r * ld + k] - p.za[k]) * scale, xb = (b[r * ld + k] - p.zb[k]) * scale;
      const std::int32_t sum = multiply_by_fixed(xa, p.ma[k]) + multiply_by_fixed(xb, p.mb[k]);
      const std::int64_t v = std::int64_t{p.offset[k]} + multiply_by_fixed(sum, p.mo[k]);
      out[r * ld_out + k] = static_cast<std::uint8_t>(v < p.lo[k] ? p.lo[k] : v > p.hi[k] ? p.hi[k] : v);
    }
}

}  // namespace ptq
