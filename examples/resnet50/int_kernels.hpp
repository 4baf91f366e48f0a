// int_kernels.hpp: the integer engine's fused inner loops (row sums, conv output stage, residual add) on int32 lanes.
//
// What they compute is defined by the plain forms they must equal bit for bit
// (int_engine.hpp's int_forward_ref; the test compares every code):
//   row sums     sum_j a[j] of a uint8 row;
//   conv stage   fine = (acc << F) - E rowsum + B, then ptq::requantize's output stage
//                out = clamp(offset + rdbpot(srdhm(fine, M), shift), lo, hi);
//   add          ptq::add_requantize (TFLite's ADD); conv_add_stage runs it on a conv stage's
//                codes in registers (the same conv_stage16 and add16 as the separate passes).
// Why int32 lanes are exact: the model guarantees that fine fits int32 (int_model.hpp
// checks the worst case), and two's-complement int32 arithmetic is exact modulo 2^32, so
// (acc << F) - E rowsum + B evaluated with E and B reduced modulo 2^32 and every step
// wrapping gives fine itself, whatever the intermediate values. gemmlowp's high mul and
// its rounding divide are then one 32 x 32 -> 64 product (even and odd lanes) and one
// rounding shift in int64 (ptq/fixedpoint.hpp's AVX-512 path, whose primitives these are, says why that is exact).
// A multiplier >= 1 (negative shift) takes the plain path; none occurs in practice.
// Layers whose channel count is not a multiple of 16 run the stage on rows packed back to
// back (a period of lcm(K, 16) lanes), so no lane idles. The residual add looks its two
// inner multiplies up in per-channel tables of the 256 codes (gathers).
// Without AVX-512 (BW) every routine is the plain loop, except, where the CPU has AVX2, the conv
// stage (conv_stage_avx2: 8 lanes, fixedpoint.hpp's AVX2 primitives); the residual add then is
// ptq::add_requantize, which takes its AVX2 path.
#pragma once

#include <algorithm>
#include <cstdint>
#include <cstring>
#include <type_traits>
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

// The constants of one 16-lane vector: lane l computes channel ch[l] (idle lanes: zeros).
// int32 lanes: F, E, B, off, lo, hi (minus off), ridx (the lane's row within a flat period);
// the output multiplier's lanes in fx (ptq::detail::fixed16: multiplier, left shift, and the
// int64 constants of its single rounding; fixedpoint.hpp says why that rounding is exact).
struct alignas(64) vec_consts {
  std::int32_t F[16] = {}, E[16] = {}, B[16] = {}, off[16] = {}, lo[16] = {}, hi[16] = {}, ridx[16] = {};
  ptq::detail::fixed16 fx;
  // Every lane's clamp keeps codes >= the offset (lo >= 0: a ReLU's clamp), so ptq::detail::mul16
  // may skip its negative-product adjustment (mul16<true>; exact, see there).
  bool nonneg_lo = false;
  void set_nonneg() {
    nonneg_lo = true;
    for (int l = 0; l < 16; ++l) nonneg_lo = nonneg_lo && lo[l] >= 0;
  }
};

// Per-channel constants of one conv output stage (channels [k0, k1) of conv L).
struct stage_lanes {
  bool fast = true;  // every shift >= 0 and bias 0
  index kn = 0;
  std::vector<vec_consts> blocks;  // channel blocks of 16: channels 16 v + l
  std::vector<vec_consts> flat;    // a flat period of nv vectors over rows of kn channels (kn % 16 != 0)
  index period_rows = 0;           // rows per flat period
  stage_lanes() = default;
  stage_lanes(const int_conv& L, index k0, index k1) : kn(k1 - k0) {
    for (index k = k0; k < k1; ++k) {
      const auto kk = static_cast<std::size_t>(k);
      fast = fast && L.out.mult[kk].shift >= 0 && L.out.bias[kk] == 0;
    }
    auto lane = [&](vec_consts& v, int l, index k, int row) {
      const auto kk = static_cast<std::size_t>(k0 + k);
      v.F[l] = L.F[kk];
      v.E[l] = static_cast<std::int32_t>(static_cast<std::uint32_t>(L.E[kk]));  // modulo 2^32
      v.B[l] = static_cast<std::int32_t>(static_cast<std::uint32_t>(L.B[kk]));
      v.fx.set(l, L.out.mult[kk]);
      v.off[l] = L.out.offset[kk];
      v.lo[l] = L.out.lo[kk] - L.out.offset[kk];  // clamp before the offset: no int32 wrap
      v.hi[l] = L.out.hi[kk] - L.out.offset[kk];
      v.ridx[l] = row;
    };
    for (index k = 0; k < kn; k += 16) {
      vec_consts v;
      for (int l = 0; l < 16 && k + l < kn; ++l) lane(v, l, k + l, 0);
      v.set_nonneg();
      blocks.push_back(v);
    }
    if (kn % 16 != 0 && kn <= 64) {
      index g = 16;
      while (kn % g != 0) g /= 2;
      const index nv = kn / g;  // lcm(kn, 16) / 16
      period_rows = 16 / g;
      for (index v = 0; v < nv; ++v) {
        vec_consts c;
        for (int l = 0; l < 16; ++l) lane(c, l, (16 * v + l) % kn, static_cast<int>((16 * v + l) / kn));
        c.set_nonneg();
        flat.push_back(c);
      }
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

// Copies n bytes from src to dst (a masked copy where n is not a multiple of 64) and, with
// Sums, adds their sum to sum's int64 lanes.
#if PTQ_INT_KERNELS_AVX512
template <bool Sums>
inline __m512i copy_row(std::uint8_t* dst, const std::uint8_t* src, index n, __m512i sum) {
  index j = 0;
  for (; j + 64 <= n; j += 64) {
    const __m512i v = _mm512_loadu_si512(src + j);
    _mm512_storeu_si512(dst + j, v);
    if constexpr (Sums) sum = _mm512_add_epi64(sum, _mm512_sad_epu8(v, _mm512_setzero_si512()));
  }
  if (j < n) {
    const __mmask64 m = (~std::uint64_t{0}) >> (64 - (n - j));
    const __m512i v = _mm512_maskz_loadu_epi8(m, src + j);
    _mm512_mask_storeu_epi8(dst + j, m, v);
    if constexpr (Sums) sum = _mm512_add_epi64(sum, _mm512_sad_epu8(v, _mm512_setzero_si512()));
  }
  return sum;
}
#endif

// Im2col rows [g0, g0 + rows) of conv L over n NHWC images of H x W ((r, s, c) order; outside
// the image each channel's zero point: zrow is S copies of the C zero points) and, with Sums,
// their row sums (without: the GEMM returns them, igemm's ones column).
// The S C bytes of one kernel row are contiguous in NHWC (the S pixels of one input row), so
// interior kernel rows are one copy.
template <bool Sums>
inline void im2col_rows_impl(const int_conv& L, const std::uint8_t* x, index H, index W, index OH, index OW, index g0,
                             index rows, const std::uint8_t* zrow, std::uint8_t* a, std::int32_t* rowsum) {
  const index C = L.C, SC = L.S * C, Kd = L.crs(), P = OH * OW;
  index img = g0 / P, oy = (g0 % P) / OW, ox = g0 % OW;
#if PTQ_INT_KERNELS_AVX512
  // The last output column whose window lies inside the image horizontally.
  const index ox_in = W + L.pad >= L.S ? (W + L.pad - L.S) / L.stride : -1;
#endif
  index r = 0;
  // On by k output pixels (k <= OW - ox: within the output row).
  const auto advance = [&](index k) {
    r += k;
    ox += k;
    if (ox == OW) {
      ox = 0;
      if (++oy == OH) oy = 0, ++img;
    }
  };
  while (r < rows) {
    std::uint8_t* row = a + r * Kd;
    const index ix0 = ox * L.stride - L.pad;
    const bool inside = ix0 >= 0 && ix0 + L.S <= W;
#if PTQ_INT_KERNELS_AVX512
    const index iy0 = oy * L.stride - L.pad;
    if (inside && iy0 >= 0 && iy0 + L.R <= H) {
      // A run of windows inside the image in this output row: R copies of SC bytes each, from
      // R input rows advancing by stride C bytes per pixel (one mask for SC <= 64).
      const index len = std::min(rows - r, std::min(ox_in, OW - 1) - ox + 1);
      const std::uint8_t* src = x + ((img * H + iy0) * W + ix0) * C;
      const index step = L.stride * C, ystep = W * C;
      if (!Sums && SC <= 64) {
        const __mmask64 m = (~std::uint64_t{0}) >> (64 - SC);
        for (index t = 0; t < len; ++t, src += step, row += Kd)
          for (index ky = 0; ky < L.R; ++ky)
            _mm512_mask_storeu_epi8(row + ky * SC, m, _mm512_maskz_loadu_epi8(m, src + ky * ystep));
      } else {
        for (index t = 0; t < len; ++t, src += step, row += Kd) {
          __m512i sum = _mm512_setzero_si512();
          for (index ky = 0; ky < L.R; ++ky) sum = copy_row<Sums>(row + ky * SC, src + ky * ystep, SC, sum);
          if constexpr (Sums) rowsum[r + t] = static_cast<std::int32_t>(_mm512_reduce_add_epi64(sum));
        }
      }
      advance(len);
      continue;
    }
#endif
#if PTQ_INT_KERNELS_AVX512
    __m512i sum = _mm512_setzero_si512();
    auto copy = [&](std::uint8_t* dst, const std::uint8_t* src, index n) { sum = copy_row<Sums>(dst, src, n, sum); };
#else
    std::int32_t sum = 0;
    auto copy = [&](std::uint8_t* dst, const std::uint8_t* src, index n) {
      std::memcpy(dst, src, static_cast<std::size_t>(n));
      if constexpr (Sums)
        for (index j = 0; j < n; ++j) sum += src[j];
    };
#endif
    for (index ky = 0; ky < L.R; ++ky) {
      const index iy = oy * L.stride - L.pad + ky;
      std::uint8_t* dst = row + ky * SC;
      if (iy < 0 || iy >= H) {
        copy(dst, zrow, SC);
        continue;
      }
      const std::uint8_t* src = x + (img * H + iy) * W * C;
      if (inside) {
        copy(dst, src + ix0 * C, SC);
        continue;
      }
      for (index kx = 0; kx < L.S; ++kx) {
        const index ix = ix0 + kx;
        copy(dst + kx * C, ix < 0 || ix >= W ? zrow : src + ix * C, C);
      }
    }
    if constexpr (Sums) {
#if PTQ_INT_KERNELS_AVX512
      rowsum[r] = static_cast<std::int32_t>(_mm512_reduce_add_epi64(sum));
#else
      rowsum[r] = sum;
#endif
    }
    advance(1);
  }
}

// im2col_rows_impl with the row sums into rowsum, or without them when rowsum is null.
inline void im2col_rows(const int_conv& L, const std::uint8_t* x, index H, index W, index OH, index OW, index g0,
                        index rows, const std::uint8_t* zrow, std::uint8_t* a, std::int32_t* rowsum) {
  if (rowsum)
    im2col_rows_impl<true>(L, x, H, W, OH, OW, g0, rows, zrow, a, rowsum);
  else
    im2col_rows_impl<false>(L, x, H, W, OH, OW, g0, rows, zrow, a, nullptr);
}

#if PTQ_INT_KERNELS_AVX512
// One vector of the conv stage: fine = (acc << F) - E rowsum + B, then the output stage.
template <bool Nonneg = false>
inline __m512i conv_stage16(__m512i acc, __m512i rowsum, __m512i F, __m512i E, __m512i B, const ptq::detail::fixed16_regs& f,
                            __m512i lo, __m512i hi, __m512i off) {
  __m512i x = _mm512_sllv_epi32(acc, F);
  x = _mm512_add_epi32(_mm512_sub_epi32(x, _mm512_mullo_epi32(E, rowsum)), B);
  x = ptq::detail::mul16<Nonneg>(x, f);
  return _mm512_add_epi32(_mm512_min_epi32(_mm512_max_epi32(x, lo), hi), off);
}
#endif

#if !PTQ_INT_KERNELS_AVX512 && PTQ_X86_DISPATCH
// conv_stage's block path on 8 lanes where the build has no AVX-512 and the CPU has AVX2
// (run-time dispatch): fine = (acc << F) - E rowsum + B in int32 lanes (exact, see the top),
// then ptq::detail::mul8 (fixedpoint.hpp's single rounding), clamp and offset. Fast stages only
// (shifts >= 0, bias 0). Channels k .. k + 7: half (k / 8) % 2 of block k / 16.
PTQ_AVX2_TARGET inline void conv_stage_avx2(const std::int32_t* acc, index rows, index kn, const std::int32_t* rowsum,
                                            const stage_lanes& S, std::uint8_t* out, index ld_out) {
  namespace pd = ptq::detail;
  for (index k = 0; k < kn; k += 8) {
    const vec_consts& c = S.blocks[static_cast<std::size_t>(k / 16)];
    const int h = static_cast<int>((k / 8) % 2);
    const index n = std::min<index>(8, kn - k);
    const pd::fixed8_regs f = pd::load_fixed8(c.fx, h);
    const __m256i F = pd::load8_avx2(c.F + 8 * h), E = pd::load8_avx2(c.E + 8 * h), B = pd::load8_avx2(c.B + 8 * h),
                  off = pd::load8_avx2(c.off + 8 * h), lo = pd::load8_avx2(c.lo + 8 * h),
                  hi = pd::load8_avx2(c.hi + 8 * h);
    for (index r = 0; r < rows; ++r) {
      __m256i x = _mm256_sllv_epi32(pd::load_i32x8(acc + r * kn + k, n), F);
      x = _mm256_add_epi32(_mm256_sub_epi32(x, _mm256_mullo_epi32(E, _mm256_set1_epi32(rowsum[r]))), B);
      x = _mm256_add_epi32(_mm256_min_epi32(_mm256_max_epi32(pd::mul8(x, f), lo), hi), off);
      pd::store_u8x8(out + r * ld_out + k, x, n);
    }
  }
}
#endif

// rows x kn accumulators (leading dimension kn) with their row sums -> codes (leading dimension ld_out).
// The plain path (also every non-fast stage): fine in int64, then ptq::requantize.
inline void conv_stage(const std::int32_t* acc, index rows, index kn, const std::int32_t* rowsum, const stage_lanes& S,
                       const int_conv& L, index k0, const ptq::requantize_params& rq, std::int32_t* scratch,
                       std::uint8_t* out, index ld_out) {
#if PTQ_INT_KERNELS_AVX512
  if (S.fast && ld_out == kn && !S.flat.empty()) {
    // Rows packed back to back: a period of nv vectors covers period_rows whole rows. Vector
    // position v outside, periods inside: v's constants stay in registers.
    const index total = rows * kn, nv = static_cast<index>(S.flat.size()), pr = S.period_rows;
    for (index v = 0; v < nv; ++v) {
      const vec_consts& c = S.flat[static_cast<std::size_t>(v)];
      const ptq::detail::fixed16_regs f(c.fx);
      const __m512i F = _mm512_load_si512(c.F), E = _mm512_load_si512(c.E), B = _mm512_load_si512(c.B),
                    off = _mm512_load_si512(c.off), lo = _mm512_load_si512(c.lo), hi = _mm512_load_si512(c.hi),
                    ridx = _mm512_load_si512(c.ridx);
      const auto sweep = [&](auto nonneg) {
        for (index e = 16 * v, r0 = 0; e < total; e += 16 * nv, r0 += pr) {
          const index rl = std::min(pr, rows - r0);
          const __m512i rs = _mm512_maskz_loadu_epi32(static_cast<__mmask16>((1u << rl) - 1u), rowsum + r0);
          const __mmask16 m = total - e >= 16 ? __mmask16(0xFFFF) : static_cast<__mmask16>((1u << (total - e)) - 1u);
          const __m512i x = conv_stage16<decltype(nonneg)::value>(_mm512_maskz_loadu_epi32(m, acc + e),
                                                                  _mm512_permutexvar_epi32(ridx, rs), F, E, B, f, lo,
                                                                  hi, off);
          _mm512_mask_cvtepi32_storeu_epi8(out + e, m, x);
        }
      };
      if (c.nonneg_lo)
        sweep(std::true_type{});
      else
        sweep(std::false_type{});
    }
    return;
  }
  if (S.fast) {
    // Channel blocks outside, rows inside: the block's constants stay in registers.
    for (index k = 0; k < kn; k += 16) {
      const __mmask16 m = kn - k >= 16 ? __mmask16(0xFFFF) : static_cast<__mmask16>((1u << (kn - k)) - 1u);
      const vec_consts& c = S.blocks[static_cast<std::size_t>(k / 16)];
      const ptq::detail::fixed16_regs f(c.fx);
      const __m512i F = _mm512_load_si512(c.F), E = _mm512_load_si512(c.E), B = _mm512_load_si512(c.B),
                    off = _mm512_load_si512(c.off), lo = _mm512_load_si512(c.lo), hi = _mm512_load_si512(c.hi);
      const auto sweep = [&](auto nonneg) {
        for (index r = 0; r < rows; ++r) {
          const __m512i x = conv_stage16<decltype(nonneg)::value>(
              _mm512_maskz_loadu_epi32(m, acc + r * kn + k), _mm512_set1_epi32(rowsum[r]), F, E, B, f, lo, hi, off);
          _mm512_mask_cvtepi32_storeu_epi8(out + r * ld_out + k, m, x);
        }
      };
      if (c.nonneg_lo)
        sweep(std::true_type{});
      else
        sweep(std::false_type{});
    }
    return;
  }
#endif
#if !PTQ_INT_KERNELS_AVX512 && PTQ_X86_DISPATCH
  if (S.fast && ptq::detail::cpu_has_avx2()) return conv_stage_avx2(acc, rows, kn, rowsum, S, out, ld_out);
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

// Per-channel constants of one residual add. The two inner terms multiply_by_fixed((a - za)
// 2^left_shift, ma) depend on one code each: tables of 256 int32 per channel (computed by
// ptq::multiply_by_fixed itself), so only the outer multiply remains per element.
struct add_lanes32 {
  std::vector<std::int32_t> ta, tb;  // [channel][code]
  std::vector<vec_consts> blocks;    // channel blocks of 16: mo, off, lo, hi (minus off)
  std::vector<vec_consts> blocks_a, blocks_b;  // without tables: ma, za (in off); mb, zb
  int ls = 20;
  bool tables = true;  // few channels (the tables stay in L2): look the inner terms up; else compute them
  bool fast = true;                  // ma, mb shifts >= 0 (ma, mb < 1 always: add_params checks)
  bool left = false;                 // some mo has a negative shift (mo >= 1: a block-output
                                     // channel whose grid is much finer than its inputs')
  // When the first input's codes are few (a 4-bit conv output: a < na[c], its output stage's
  // clamp), the whole add as a table of codes per channel: out = t2[start[c] + (a << lb[c]) + b]
  // (na[c] x 2^lb[c] bytes per channel, + 4 for the dword gathers; 2^lb[c] >= the second
  // input's code count nb[c], 256 when unknown), filled by ptq::add_requantize_ref. With 4-bit
  // codes on both sides a channel's table is 256 bytes instead of 4 KiB.
  // Only while the table stays within 256 KiB: its gathers then hit L2; larger ones (1 MiB for
  // 256 channels of 4-bit codes) missed and lost to the arithmetic by ~20% (one thread, min of
  // 15 runs over 9.6 M codes: 48 channels 5.1-5.9 ms table vs 6.3-6.4 computed; 192: 8.9-9.7 vs
  // 8.2-8.4; 256: 10.3-10.8 vs 8.7-8.9).
  std::vector<std::uint8_t> t2;
  std::vector<vec_consts> starts;  // ridx: start[c], F: lb[c], per channel block
  add_lanes32() = default;
  // a_codes (b_codes): every code of the first (second) input's channel c is < a_codes[c]
  // (b_codes[c]); empty: unknown.
  explicit add_lanes32(const ptq::add_params& p, const std::vector<index>& a_codes = {},
                       const std::vector<index>& b_codes = {}) {
    const index C = p.channels();
    tables = C <= 96;
    ta.resize(static_cast<std::size_t>(tables ? C * 256 : 0));
    tb.resize(ta.size());
    const std::int32_t scale = std::int32_t{1} << p.left_shift;
    for (index k = 0; k < C; ++k) {
      const auto kk = static_cast<std::size_t>(k);
      fast = fast && p.ma[kk].shift >= 0 && p.mb[kk].shift >= 0;
      left = left || p.mo[kk].shift < 0;
      for (std::int32_t v = 0; v < 256 && tables; ++v) {
        ta[kk * 256 + static_cast<std::size_t>(v)] = ptq::multiply_by_fixed((v - p.za[kk]) * scale, p.ma[kk]);
        tb[kk * 256 + static_cast<std::size_t>(v)] = ptq::multiply_by_fixed((v - p.zb[kk]) * scale, p.mb[kk]);
      }
    }
    for (index k = 0; k < C; k += 16) {
      vec_consts v;
      for (int l = 0; l < 16 && k + l < C; ++l) {
        const auto kk = static_cast<std::size_t>(k + l);
        v.fx.set(l, p.mo[kk]);
        v.off[l] = p.offset[kk];
        v.lo[l] = p.lo[kk] - p.offset[kk];
        v.hi[l] = p.hi[kk] - p.offset[kk];
        v.ridx[l] = static_cast<std::int32_t>((k + l) * 256);  // the lane's table
      }
      v.set_nonneg();
      blocks.push_back(v);
      vec_consts va, vb;
      for (int l = 0; l < 16 && k + l < C; ++l) {
        const auto kk = static_cast<std::size_t>(k + l);
        va.fx.set(l, p.ma[kk]);
        vb.fx.set(l, p.mb[kk]);
        va.off[l] = p.za[kk];
        vb.off[l] = p.zb[kk];
      }
      blocks_a.push_back(va);
      blocks_b.push_back(vb);
    }
    ls = p.left_shift;
    const bool known_b = static_cast<index>(b_codes.size()) == C;
    const auto lb = [&](index k) {
      int l = 0;
      while (known_b && (index{1} << l) < std::min<index>(b_codes[static_cast<std::size_t>(k)], 256)) ++l;
      return known_b ? l : 8;
    };
    index total = 0;
    for (index k = 0; k < static_cast<index>(a_codes.size()); ++k)
      total += std::max<index>(1, std::min<index>(a_codes[static_cast<std::size_t>(k)], 256)) << lb(k);
    if (static_cast<index>(a_codes.size()) == C && total <= (index{1} << 18)) {
      t2.assign(static_cast<std::size_t>(total + 4), 0);
      std::vector<std::uint8_t> av(256), bv(256);
      for (index v = 0; v < 256; ++v) bv[static_cast<std::size_t>(v)] = static_cast<std::uint8_t>(v);
      index start = 0;
      for (index k = 0; k < C; ++k) {
        // One channel of p: ptq::add_requantize_ref itself fills the table.
        ptq::add_params q;
        q.left_shift = p.left_shift;
        const auto kk = static_cast<std::size_t>(k);
        q.za = {p.za[kk]}, q.zb = {p.zb[kk]}, q.offset = {p.offset[kk]};
        q.ma = {p.ma[kk]}, q.mb = {p.mb[kk]}, q.mo = {p.mo[kk]};
        q.lo = {p.lo[kk]}, q.hi = {p.hi[kk]};
        if (k % 16 == 0) starts.push_back(vec_consts{});
        starts.back().ridx[k % 16] = static_cast<std::int32_t>(start);
        starts.back().F[k % 16] = lb(k);
        const index na = std::max<index>(1, std::min<index>(a_codes[kk], 256)), nb = index{1} << lb(k);
        for (index a = 0; a < na; ++a) {
          std::fill(av.begin(), av.end(), static_cast<std::uint8_t>(a));
          ptq::add_requantize_ref(av.data(), bv.data(), nb, 1, q, t2.data() + start + a * nb, 1);
        }
        start += na * nb;
      }
    }
  }
};

#if PTQ_INT_KERNELS_AVX512
// The registers of one channel block (channels k .. k + 15) of a fast add (add_lanes32::fast),
// loaded once before a loop over rows (the code stores may alias the tables).
struct add_regs {
  const std::uint8_t* t2;
  const std::int32_t *ta, *tb;
  bool tables, left, nonneg;
  unsigned ls;
  __mmask16 m;
  ptq::detail::fixed16_regs f, fa, fb;
  __m512i base, tsh, off, lo, hi, lsh, za, zb;
  add_regs(const add_lanes32& A, index k, __mmask16 mask)
      : t2(A.t2.empty() ? nullptr : A.t2.data()), ta(A.ta.data()), tb(A.tb.data()), tables(A.tables), left(A.left),
        nonneg(A.blocks[static_cast<std::size_t>(k / 16)].nonneg_lo), ls(static_cast<unsigned>(A.ls)), m(mask), f(A.blocks[static_cast<std::size_t>(k / 16)].fx),
        fa(A.blocks_a[static_cast<std::size_t>(k / 16)].fx), fb(A.blocks_b[static_cast<std::size_t>(k / 16)].fx),
        base(_mm512_load_si512(t2 ? A.starts[static_cast<std::size_t>(k / 16)].ridx
                                  : A.blocks[static_cast<std::size_t>(k / 16)].ridx)),
        tsh(t2 ? _mm512_load_si512(A.starts[static_cast<std::size_t>(k / 16)].F) : _mm512_setzero_si512()),
        off(_mm512_load_si512(A.blocks[static_cast<std::size_t>(k / 16)].off)),
        lo(_mm512_load_si512(A.blocks[static_cast<std::size_t>(k / 16)].lo)),
        hi(_mm512_load_si512(A.blocks[static_cast<std::size_t>(k / 16)].hi)),
        lsh(_mm512_load_si512(A.blocks[static_cast<std::size_t>(k / 16)].fx.ls)),
        za(_mm512_load_si512(A.blocks_a[static_cast<std::size_t>(k / 16)].off)),
        zb(_mm512_load_si512(A.blocks_b[static_cast<std::size_t>(k / 16)].off)) {}
};

// The add on 16 lanes of one channel block: va, vb the two inputs' codes (int32 lanes); the
// output codes in the low bytes of the lanes (masked-off lanes: unspecified).
inline __m512i add16(const add_regs& R, __m512i va, __m512i vb) {
  if (R.t2) {
    const __m512i idx = _mm512_add_epi32(_mm512_add_epi32(R.base, _mm512_sllv_epi32(va, R.tsh)), vb);
    return _mm512_mask_i32gather_epi32(_mm512_setzero_si512(), R.m, idx, R.t2, 1);
  }
  __m512i sum;
  if (R.tables)
    sum = _mm512_add_epi32(_mm512_mask_i32gather_epi32(_mm512_setzero_si512(), R.m, _mm512_add_epi32(R.base, va), R.ta, 4),
                           _mm512_mask_i32gather_epi32(_mm512_setzero_si512(), R.m, _mm512_add_epi32(R.base, vb), R.tb, 4));
  else
    sum = _mm512_add_epi32(ptq::detail::mul16(_mm512_slli_epi32(_mm512_sub_epi32(va, R.za), R.ls), R.fa),
                           ptq::detail::mul16(_mm512_slli_epi32(_mm512_sub_epi32(vb, R.zb), R.ls), R.fb));
  const __m512i y = R.left ? ptq::detail::presat16(sum, R.lsh) : sum;
  const __m512i x = R.nonneg ? ptq::detail::mul16<true>(y, R.f) : ptq::detail::mul16(y, R.f);
  return _mm512_add_epi32(_mm512_min_epi32(_mm512_max_epi32(x, R.lo), R.hi), R.off);
}
#endif

// Whether conv_add_stage can run a conv stage S with the residual add A fused in: AVX-512, both
// fast, whole channel blocks of 16 (conv_stage's block path).
inline bool can_fuse_add(const stage_lanes& S, const add_lanes32& A) {
  return PTQ_INT_KERNELS_AVX512 && S.fast && A.fast && S.kn % 16 == 0;
}

// conv_stage's block path followed by the residual add, without the conv's codes leaving the
// registers: out = add_requantize(conv codes, id) for rows x kn (channels k0 .. k0 + kn of the
// add; id, out, and conv_out, when not null, which also receives the conv's codes, all with
// leading dimension ld). Equal code for code to conv_stage then add_stage_rows (the same
// conv_stage16 and add16). Requires can_fuse_add(S, A).
inline void conv_add_stage(const std::int32_t* acc, index rows, index kn, const std::int32_t* rowsum,
                           const stage_lanes& S, const add_lanes32& A, index k0, const std::uint8_t* id,
                           std::uint8_t* out, std::uint8_t* conv_out, index ld) {
  ptq::detail::require(can_fuse_add(S, A), "ptq_example::detail::conv_add_stage", "not a fusable stage");
#if PTQ_INT_KERNELS_AVX512
  for (index k = 0; k < kn; k += 16) {
    const vec_consts& c = S.blocks[static_cast<std::size_t>(k / 16)];
    const ptq::detail::fixed16_regs f(c.fx);
    const __m512i F = _mm512_load_si512(c.F), E = _mm512_load_si512(c.E), B = _mm512_load_si512(c.B),
                  off = _mm512_load_si512(c.off), lo = _mm512_load_si512(c.lo), hi = _mm512_load_si512(c.hi);
    const add_regs R(A, k0 + k, __mmask16(0xFFFF));
    for (index r = 0; r < rows; ++r) {
      const __m512i x = conv_stage16(_mm512_loadu_si512(acc + r * kn + k), _mm512_set1_epi32(rowsum[r]), F, E, B, f,
                                     lo, hi, off);
      if (conv_out) _mm512_mask_cvtepi32_storeu_epi8(conv_out + r * ld + k, __mmask16(0xFFFF), x);
      const __m512i vb = _mm512_cvtepu8_epi32(_mm_loadu_si128(reinterpret_cast<const __m128i*>(id + r * ld + k)));
      _mm512_mask_cvtepi32_storeu_epi8(out + r * ld + k, __mmask16(0xFFFF), add16(R, x, vb));
    }
  }
#else
  (void)acc, (void)rows, (void)kn, (void)rowsum, (void)k0, (void)id, (void)out, (void)conv_out, (void)ld;
#endif
}

// ptq::add_requantize on rows x channels (leading dimension ld everywhere).
inline void add_stage_rows(const std::uint8_t* a, const std::uint8_t* b, index rows, index ld, const ptq::add_params& p,
                           const add_lanes32& A, std::uint8_t* out) {
#if PTQ_INT_KERNELS_AVX512
  if (A.fast) {
    const index C = p.channels();
    // Chunks of rows that stay in L1 while the channel blocks sweep them.
    const index chunk = std::max<index>(4, 8192 / std::max<index>(ld, 1));
    for (index r0 = 0; r0 < rows; r0 += chunk) {
      const index r1 = std::min(rows, r0 + chunk);
      for (index k = 0; k < C; k += 16) {
        const __mmask16 m = C - k >= 16 ? __mmask16(0xFFFF) : static_cast<__mmask16>((1u << (C - k)) - 1u);
        const add_regs R(A, k, m);
        for (index r = r0; r < r1; ++r) {
          const __m512i va = _mm512_cvtepu8_epi32(_mm_maskz_loadu_epi8(m, a + r * ld + k));
          const __m512i vb = _mm512_cvtepu8_epi32(_mm_maskz_loadu_epi8(m, b + r * ld + k));
          _mm512_mask_cvtepi32_storeu_epi8(out + r * ld + k, m, add16(R, va, vb));
        }
      }
    }
    return;
  }
#endif
  (void)A;
  ptq::add_requantize(a, b, rows, ld, p, out, ld);
}

}  // namespace ptq_example::detail
