// int_kernels.hpp: the integer engine's fused inner loops (row sums, conv output stage, residual add) on int32 lanes.
//
// What they compute is defined by the plain forms they must equal bit for bit
// (int_engine.hpp's int_forward_ref; the test compares every code):
//   row sums     sum_j a[j] of a uint8 row;
//   conv stage   fine = (acc << F) - E rowsum + B, then ptq::requantize's output stage
//                out = clamp(offset + rdbpot(srdhm(fine, M), shift), lo, hi);
//   add          ptq::add_requantize (TFLite's ADD).
// Why int32 lanes are exact: the model guarantees that fine fits int32 (int_model.hpp
// checks the worst case), and two's-complement int32 arithmetic is exact modulo 2^32, so
// (acc << F) - E rowsum + B evaluated with E and B reduced modulo 2^32 and every step
// wrapping gives fine itself, whatever the intermediate values. gemmlowp's high mul is
// then 32 x 32 -> 64 (even and odd lanes), its rounding divide a shift plus a compare.
// A multiplier >= 1 (negative shift) takes the plain path; none occurs in practice.
// Without AVX-512 (BW) every routine is the plain loop.
#pragma once

#include <cstdint>
#include <vector>

#include <ptq/fixedpoint.hpp>

#include "int_model.hpp"

#if defined(__AVX512F__) && defined(__AVX512BW__)
#include <immintrin.h>
#define PTQ_INT_KERNELS_AVX512 1
#else
#define PTQ_INT_KERNELS_AVX512 0
#endif

namespace ptq_example::detail {

// Per-channel constants of one conv output stage (channels [k0, k1) of conv L), as int32 lanes.
struct stage_lanes {
  std::vector<std::int32_t> F, E, B, mult, shift, mask, thr, off, lo, hi;  // lo, hi: minus off
  bool fast = true;  // every shift >= 0
  stage_lanes() = default;
  stage_lanes(const int_conv& L, index k0, index k1) {
    for (index k = k0; k < k1; ++k) {
      const auto kk = static_cast<std::size_t>(k);
      const ptq::fixed_multiplier m = L.out.mult[kk];
      fast = fast && m.shift >= 0;
      const int s = m.shift > 0 ? m.shift : 0;
      F.push_back(L.F[kk]);
      E.push_back(static_cast<std::int32_t>(static_cast<std::uint32_t>(L.E[kk])));  // modulo 2^32
      B.push_back(static_cast<std::int32_t>(static_cast<std::uint32_t>(L.B[kk])));
      mult.push_back(m.multiplier);
      shift.push_back(s);
      mask.push_back(static_cast<std::int32_t>((std::int64_t{1} << s) - 1));
      thr.push_back(static_cast<std::int32_t>(((std::int64_t{1} << s) - 1) >> 1));
      off.push_back(L.out.offset[kk]);
      lo.push_back(L.out.lo[kk] - L.out.offset[kk]);  // clamp before the offset: no int32 wrap
      hi.push_back(L.out.hi[kk] - L.out.offset[kk]);
    }
  }
};

// Sum of the n bytes of a row.
inline std::int32_t row_sum(const std::uint8_t* a, index n) {
#if PTQ_INT_KERNELS_AVX512
  __m512i s = _mm512_setzero_si512();
  index j = 0;
  for (; j + 64 <= n; j += 64) s = _mm512_add_epi64(s, _mm512_sad_epu8(_mm512_loadu_si512(a + j), _mm512_setzero_si512()));
  if (j < n) {
    const __mmask64 m = (~std::uint64_t{0}) >> (64 - (n - j));
    s = _mm512_add_epi64(s, _mm512_sad_epu8(_mm512_maskz_loadu_epi8(m, a + j), _mm512_setzero_si512()));
  }
  return static_cast<std::int32_t>(_mm512_reduce_add_epi64(s));
#else
  std::int32_t s = 0;
  for (index j = 0; j < n; ++j) s += a[j];
  return s;
#endif
}

#if PTQ_INT_KERNELS_AVX512
// gemmlowp's SaturatingRoundingDoublingHighMul(x, m) then RoundingDivideByPOT(., shift), 16 lanes
// (m >= 0, and x * m never both INT32_MIN: m < 2^31).
inline __m512i fixed_mul16(__m512i x, __m512i m, __m512i shift, __m512i mask, __m512i thr) {
  const __m512i nudge = _mm512_set1_epi64(std::int64_t{1} << 30);
  const __m512i even = _mm512_srai_epi64(_mm512_add_epi64(_mm512_mul_epi32(x, m), nudge), 31);
  const __m512i odd = _mm512_srai_epi64(
      _mm512_add_epi64(_mm512_mul_epi32(_mm512_srli_epi64(x, 32), _mm512_srli_epi64(m, 32)), nudge), 31);
  const __m512i h = _mm512_mask_blend_epi32(0xAAAA, even, _mm512_slli_epi64(odd, 32));
  const __m512i q = _mm512_srav_epi32(h, shift);
  const __m512i rem = _mm512_and_si512(h, mask);
  const __m512i t = _mm512_mask_add_epi32(thr, _mm512_cmplt_epi32_mask(h, _mm512_setzero_si512()), thr,
                                          _mm512_set1_epi32(1));
  return _mm512_mask_add_epi32(q, _mm512_cmpgt_epi32_mask(rem, t), q, _mm512_set1_epi32(1));
}
#endif

// rows x kn accumulators (leading dimension kn) with their row sums -> codes (leading dimension ld_out).
// The plain path (also every non-fast stage): fine in int64, then ptq::requantize.
inline void conv_stage(const std::int32_t* acc, index rows, index kn, const std::int32_t* rowsum, const stage_lanes& S,
                       const int_conv& L, index k0, const ptq::requantize_params& rq, std::int32_t* scratch,
                       std::uint8_t* out, index ld_out) {
#if PTQ_INT_KERNELS_AVX512
  if (S.fast) {
    // Channel blocks outside, rows inside: the block's constants stay in registers.
    for (index k = 0; k < kn; k += 16) {
      const __mmask16 m = kn - k >= 16 ? __mmask16(0xFFFF) : static_cast<__mmask16>((1u << (kn - k)) - 1u);
      auto ld = [&](const std::vector<std::int32_t>& v) { return _mm512_maskz_loadu_epi32(m, v.data() + k); };
      const __m512i F = ld(S.F), E = ld(S.E), B = ld(S.B), M = ld(S.mult), sh = ld(S.shift), mask = ld(S.mask),
                    thr = ld(S.thr), off = ld(S.off), lo = ld(S.lo), hi = ld(S.hi);
      for (index r = 0; r < rows; ++r) {
        __m512i x = _mm512_sllv_epi32(_mm512_maskz_loadu_epi32(m, acc + r * kn + k), F);
        x = _mm512_add_epi32(_mm512_sub_epi32(x, _mm512_mullo_epi32(E, _mm512_set1_epi32(rowsum[r]))), B);
        x = fixed_mul16(x, M, sh, mask, thr);
        x = _mm512_add_epi32(_mm512_min_epi32(_mm512_max_epi32(x, lo), hi), off);
        _mm512_mask_cvtepi32_storeu_epi8(out + r * ld_out + k, m, x);
      }
    }
    return;
  }
#endif
  (void)S;
  for (index r = 0; r < rows; ++r)
    for (index k = 0; k < kn; ++k) {
      const auto kk = static_cast<std::size_t>(k0 + k);
      const std::int64_t v =
          static_cast<std::int64_t>(acc[r * kn + k]) * (std::int64_t{1} << L.F[kk]) - L.E[kk] * rowsum[r] + L.B[kk];
      scratch[r * kn + k] = static_cast<std::int32_t>(v);
    }
  ptq::requantize(scratch, rows, kn, rq, out, ld_out);
}

// Per-channel constants of one residual add.
struct add_lanes32 {
  std::vector<std::int32_t> za, zb, ma, mb, mo, sa, sb, so, maska, maskb, masko, thra, thrb, thro, off, lo, hi;
  int left_shift = 20;
  bool fast = true;
  add_lanes32() = default;
  explicit add_lanes32(const ptq::add_params& p) : left_shift(p.left_shift) {
    auto put = [](const ptq::fixed_multiplier& f, std::vector<std::int32_t>& m, std::vector<std::int32_t>& s,
                  std::vector<std::int32_t>& mask, std::vector<std::int32_t>& thr) {
      const int sh = f.shift > 0 ? f.shift : 0;
      m.push_back(f.multiplier);
      s.push_back(sh);
      mask.push_back(static_cast<std::int32_t>((std::int64_t{1} << sh) - 1));
      thr.push_back(static_cast<std::int32_t>(((std::int64_t{1} << sh) - 1) >> 1));
    };
    for (std::size_t k = 0; k < p.za.size(); ++k) {
      fast = fast && p.ma[k].shift >= 0 && p.mb[k].shift >= 0 && p.mo[k].shift >= 0;
      za.push_back(p.za[k]);
      zb.push_back(p.zb[k]);
      put(p.ma[k], ma, sa, maska, thra);
      put(p.mb[k], mb, sb, maskb, thrb);
      put(p.mo[k], mo, so, masko, thro);
      off.push_back(p.offset[k]);
      lo.push_back(p.lo[k] - p.offset[k]);
      hi.push_back(p.hi[k] - p.offset[k]);
    }
  }
};

// ptq::add_requantize on rows x channels (leading dimension ld everywhere).
inline void add_stage_rows(const std::uint8_t* a, const std::uint8_t* b, index rows, index ld, const ptq::add_params& p,
                           const add_lanes32& A, std::uint8_t* out) {
#if PTQ_INT_KERNELS_AVX512
  if (A.fast) {
    const index C = static_cast<index>(A.za.size());
    for (index k = 0; k < C; k += 16) {
      const __mmask16 m = C - k >= 16 ? __mmask16(0xFFFF) : static_cast<__mmask16>((1u << (C - k)) - 1u);
      auto ld32 = [&](const std::vector<std::int32_t>& v) { return _mm512_maskz_loadu_epi32(m, v.data() + k); };
      const __m512i za = ld32(A.za), zb = ld32(A.zb), ma = ld32(A.ma), sa = ld32(A.sa), maska = ld32(A.maska),
                    thra = ld32(A.thra), mb = ld32(A.mb), sb = ld32(A.sb), maskb = ld32(A.maskb), thrb = ld32(A.thrb),
                    mo = ld32(A.mo), so = ld32(A.so), masko = ld32(A.masko), thro = ld32(A.thro), off = ld32(A.off),
                    lo = ld32(A.lo), hi = ld32(A.hi);
      const auto ls = static_cast<unsigned>(A.left_shift);
      for (index r = 0; r < rows; ++r) {
        const __m512i va = _mm512_cvtepu8_epi32(_mm_maskz_loadu_epi8(m, a + r * ld + k));
        const __m512i vb = _mm512_cvtepu8_epi32(_mm_maskz_loadu_epi8(m, b + r * ld + k));
        const __m512i xa = _mm512_slli_epi32(_mm512_sub_epi32(va, za), ls);
        const __m512i xb = _mm512_slli_epi32(_mm512_sub_epi32(vb, zb), ls);
        const __m512i sum = _mm512_add_epi32(fixed_mul16(xa, ma, sa, maska, thra), fixed_mul16(xb, mb, sb, maskb, thrb));
        __m512i x = fixed_mul16(sum, mo, so, masko, thro);
        x = _mm512_add_epi32(_mm512_min_epi32(_mm512_max_epi32(x, lo), hi), off);
        _mm512_mask_cvtepi32_storeu_epi8(out + r * ld + k, m, x);
      }
    }
    return;
  }
#endif
  (void)A;
  ptq::add_requantize(a, b, rows, ld, p, out, ld);
}

}  // namespace ptq_example::detail
