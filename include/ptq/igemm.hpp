// igemm.hpp: uint8 x int8 -> int32 GEMM for the integer engine (AMX, AVX-512 VNNI and AVX2 kernels, portable fallback).
//
//   C[i][j] = sum_{k < K} A[i][k] * W[j][k]      for i < M, j < N
//
// A holds uint8 activation codes (row-major M x K, one row per output pixel:
// the im2col rows of an NHWC convolution), W holds int8 weight codes (row-major
// N x K, one row per output channel: KCRS conv weights as they are), C is int32
// row-major M x N. Zero points are the caller's business: with activation zero
// point za and symmetric weights, sum (a - za) w = C[i][j] - za * col_sums()[j].
//
// Exactness: every product lies in [-32640, 32385] (255 * -128, 255 * 127) and
// every partial sum of at most K of them in [-32640 K, 32385 K], so with
//   K <= max_k = 65793  (floor((2^31 - 1) / 32640))
// no int32 sum overflows in any order of summation; the kernels add the
// products without saturation (vpdpbusd, not vpdpbusds; no saturating int16 step as in
// vpmaddubsw), hence every kernel equals gemm_u8s8s32_ref bit for bit.
// packed_weights rejects K > max_k.
//
// Why packed: the weights of a layer are fixed, so they are rearranged once
// into the order the micro-kernel streams them: N in blocks of block_n = 32
// columns (zero-padded), and inside a block K in groups of 4 bytes (zero-padded
// tail), [K/4][32 columns][4 bytes] — one 4-byte group per int32 lane, exactly
// what vpdpbusd multiplies against 4 broadcast bytes of an A row. A is read in
// place: rows need only K readable bytes (lda >= K); the K % 4 tail of a row is
// copied into a zeroed word, never read past A[i][K-1].
//
// Row sums in the same pass: a zero-point term of the weights multiplies each A row's sum
// (sum_k (a - za)(w - zw) needs sum_k a), which a separate pass over A costs a reduction per
// row. packed_weights(..., row_sums = true) packs one more column, of ones, after the N
// columns; gemm_u8s8s32(..., rowsum) then writes that column's dot products,
// rowsum[i] = sum_k A[i][k] (exact: at most 255 max_k < 2^31), to rowsum instead of C. Where the
// last column block has a spare lane (N % 16 != 0) the column is free: the tile computes it
// anyway. The tiles store it with a one-lane masked store.
//
// Kernels, chosen once at run time (kernel_name() says which; the environment variable
// PTQ_IGEMM_MAX_ISA caps the choice, see dispatched_isa()):
//  "amx_int8": Intel AMX tiles (TDPBUSD: 16 x 16 int32 += 16 x 64 uint8 . 64 x 16 int8), 32 x 32
//    blocks of four C tiles, on the same packed panels; rows past a multiple of 16 and GEMMs of
//    at most 16 columns go to the VNNI kernel. Used when the CPU has AMX-TILE and AMX-INT8 and
//    the OS grants the tile state (Linux >= 5.16, arch_prctl). On ResNet-50's shapes it runs at
//    1.4-4x the VNNI kernel's speed, on par with oneDNN's AMX matmul (bench/README.md).
//  "avx512_vnni": a 10 x 32 register tile (20 zmm accumulators) of
//    _mm512_dpbusd_epi32, and a 12 x 16 tile for column blocks of at most 16
//    columns (N = 12: half the instructions of the 32-wide tile), compiled with a
//    target attribute so the header needs no -march flag; used when the CPU and
//    the OS support AVX-512 VNNI.
//  "avx2": CPUs with AVX2 but no VNNI (AMD Zen 1-3, Intel before Ice Lake): a 4 x 16 tile of
//    _mm256_madd_epi16 on the even and odd bytes of each 4-byte group, widened to int16 in
//    registers (exact, unlike vpmaddubsw's saturating int16 pair sums; see its section below).
//    On a 2-core AMD EPYC without AVX-512: 45-52 GMAC/s on ResNet-50's shapes, 8-9x the
//    portable loop and 0.7-0.9x oneDNN's AVX2 int8 matmul, which saturates (bench/README.md).
//  "portable": the same packed loop in plain C++ (auto-vectorized if allowed).
// Single-threaded: the caller splits M (output pixels) over its threads; M is
// processed in chunks of at most 192 rows whose A rows stay in L2 while every
// 32-column block of the packed W is swept over them. C is written once, in
// full (no read-modify-write), so callers that requantize should call with M
// small enough that M x N x 4 bytes of C is still in L2 when they read it.
#pragma once

#include <algorithm>
#include <cstdint>
#include <cstdlib>
#include <cstring>
#include <new>
#include <string>
#include <vector>

#include "config.hpp"
#include "detail/cpu.hpp"
#include "error.hpp"

#if (defined(__x86_64__) || defined(__i386__)) && (defined(__GNUC__) || defined(__clang__))
#define PTQ_IGEMM_X86 1
#include <immintrin.h>
#if defined(__x86_64__) && defined(__linux__)
#include <sys/syscall.h>
#include <unistd.h>
#endif
#else
#define PTQ_IGEMM_X86 0
#endif

// Compiled once instead of in every file. By default the kernels are inline, like the rest of
// the library, and every translation unit that calls gemm_u8s8s32 compiles them: 24 AVX-512
// register tiles and the AVX2 and AMX ones (the ResNet example's main.cpp under Clang with
// AddressSanitizer: 176 s, 149 s without them; under GCC -O3 they are 4.5 s of 135 s). A
// program with several such files may define PTQ_IGEMM_EXTERN_KERNELS in all of them and, in
// exactly one, PTQ_IGEMM_KERNELS_SOURCE as well: the ISA kernels (detail::gemm_vnni_unchecked,
// gemm_avx2_unchecked, gemm_amx_unchecked) are then only declared, and that one file defines
// them as ordinary functions. Same code, same results; the project's tests and examples build
// this way (target ptq_igemm_kernels, CMakeLists.txt).
#if defined(PTQ_IGEMM_EXTERN_KERNELS)
#define PTQ_IGEMM_KERNEL_LINKAGE
#else
#define PTQ_IGEMM_KERNEL_LINKAGE inline
#endif
#if defined(PTQ_IGEMM_EXTERN_KERNELS) && !defined(PTQ_IGEMM_KERNELS_SOURCE)
#define PTQ_IGEMM_KERNEL_BODIES 0
#else
#define PTQ_IGEMM_KERNEL_BODIES 1
#endif

namespace ptq::igemm {

// The largest K for which no int32 sum can overflow (see above).
inline constexpr index max_k = 65793;
// Width of a packed column block and of the VNNI tile.
inline constexpr index block_n = 32;

class packed_weights {
 public:
  packed_weights() = default;
  // Packs W (N x K int8, row-major, row stride ldw >= K). N, K >= 1, K <= max_k. row_sums:
  // a column of ones after the N columns (see the top of this file).
  packed_weights(const std::int8_t* W, index N, index K, index ldw, bool row_sums = false)
      : n_(N), k_(K), row_sums_(row_sums) {
    const char* where = "ptq::igemm::packed_weights";
    detail::require(W != nullptr, where, "W is null");
    detail::require(N >= 1, where, "N = ", N, " must be >= 1");
    detail::require(K >= 1 && K <= max_k, where, "K = ", K, " is outside [1, ", max_k,
                    "] (int32 sums of u8*s8 products could overflow beyond)");
    detail::require(ldw >= K, where, "ldw = ", ldw, " must be >= K = ", K);
    k4_ = (K + 3) / 4;
    rows_ = (k4_ + 15) / 16 * 16;
    blocks_ = (N + (row_sums ? 1 : 0) + block_n - 1) / block_n;
    buf_.assign(static_cast<std::size_t>(blocks_ * rows_ * block_n * 4), 0);
    std::int8_t* p = data();
    for (index b = 0; b < blocks_; ++b) {
      std::int8_t* panel = p + b * rows_ * block_n * 4;
      for (index jj = 0; jj < block_n; ++jj) {
        const index j = b * block_n + jj;
        if (j > N || (j == N && !row_sums)) break;
        for (index k = 0; k < K; ++k) panel[(k / 4) * block_n * 4 + jj * 4 + (k % 4)] = j < N ? W[j * ldw + k] : 1;
      }
    }
    sums_.assign(static_cast<std::size_t>(N), 0);
    for (index j = 0; j < N; ++j) {
      std::int32_t s = 0;
      for (index k = 0; k < K; ++k) s += W[j * ldw + k];
      sums_[static_cast<std::size_t>(j)] = s;
    }
  }
  index n() const { return n_; }
  index k() const { return k_; }
  index k_groups() const { return k4_; }   // ceil(K / 4)
  index panel_rows() const { return rows_; }  // k_groups() rounded up to 16 (zero rows after the K groups)
  index blocks() const { return blocks_; }  // ceil((N + row_sums()) / block_n)
  // Whether column N holds ones (gemm_u8s8s32 can return row sums).
  bool row_sums() const { return row_sums_; }
  // Columns of block b that are columns of W (the ones column excluded), and the lane of the
  // ones column in block b (-1: not in it).
  index block_cols(index b) const { return std::max<index>(0, std::min<index>(block_n, n_ - b * block_n)); }
  index sum_lane(index b) const {
    const index l = n_ - b * block_n;
    return row_sums_ && l >= 0 && l < block_n ? l : -1;
  }
  // Block b: panel_rows() * block_n * 4 bytes, 64-byte aligned, [k/4][column][k%4].
  const std::int8_t* panel(index b) const { return data() + b * rows_ * block_n * 4; }
  // sum_k W[j][k] for j < N: the term the caller scales by the activation zero point.
  const std::int32_t* col_sums() const { return sums_.data(); }

 private:
  // 64-byte aligned storage (copies allocate aligned too): every panel row is one cache line.
  template <class T>
  struct aligned64 {
    using value_type = T;
    aligned64() = default;
    template <class U>
    aligned64(const aligned64<U>&) {}
    T* allocate(std::size_t n) { return static_cast<T*>(::operator new(n * sizeof(T), std::align_val_t(64))); }
    void deallocate(T* p, std::size_t) { ::operator delete(p, std::align_val_t(64)); }
    template <class U>
    bool operator==(const aligned64<U>&) const { return true; }
    template <class U>
    bool operator!=(const aligned64<U>&) const { return false; }
  };
  std::int8_t* data() { return buf_.data(); }
  const std::int8_t* data() const { return buf_.data(); }

  index n_ = 0, k_ = 0, k4_ = 0, rows_ = 0, blocks_ = 0;
  bool row_sums_ = false;
  std::vector<std::int8_t, aligned64<std::int8_t>> buf_;
  std::vector<std::int32_t> sums_;
};

// Plain loops, int32 accumulation: the reference every kernel equals bit for bit (K <= max_k).
inline void gemm_u8s8s32_ref(index M, index N, index K, const std::uint8_t* A, index lda, const std::int8_t* W,
                             index ldw, std::int32_t* C, index ldc) {
  const char* where = "ptq::igemm::gemm_u8s8s32_ref";
  detail::require(M >= 0 && N >= 0 && K >= 0 && K <= max_k, where, "M = ", M, ", N = ", N, ", K = ", K,
                  " (need M, N >= 0, 0 <= K <= ", max_k, ")");
  detail::require(lda >= K && ldw >= K && ldc >= N, where, "lda = ", lda, ", ldw = ", ldw, ", ldc = ", ldc,
                  " (need lda, ldw >= K, ldc >= N)");
  for (index i = 0; i < M; ++i)
    for (index j = 0; j < N; ++j) {
      std::int32_t s = 0;
      for (index k = 0; k < K; ++k) s += std::int32_t(A[i * lda + k]) * std::int32_t(W[j * ldw + k]);
      C[i * ldc + j] = s;
    }
}

namespace detail {

inline void check_args(const char* where, index M, index lda, const packed_weights& W, index ldc,
                       const std::int32_t* rowsum = nullptr) {
  ptq::detail::require(W.n() >= 1, where, "the packed weights are empty");
  ptq::detail::require(rowsum == nullptr || W.row_sums(), where,
                       "row sums asked of weights packed without their column of ones (packed_weights(..., true))");
  ptq::detail::require(M >= 0, where, "M = ", M, " must be >= 0");
  ptq::detail::require(lda >= W.k() && ldc >= W.n(), where, "lda = ", lda, ", ldc = ", ldc, " (need lda >= K = ",
                       W.k(), ", ldc >= N = ", W.n(), ")");
}

// 4 bytes of an A row starting at column 4g, zero beyond K (never read past A[K-1]).
inline std::uint32_t a_group(const std::uint8_t* row, index g, index K) {
  std::uint32_t v = 0;
  const index k = 4 * g;
  std::memcpy(&v, row + k, static_cast<std::size_t>(std::min<index>(4, K - k)));
  return v;
}

// Rows per chunk: the chunk's A rows (at most 512 KiB) stay in L2 while every
// column block sweeps over them, and at most 192 rows, so that the chunk's C
// rows (192 x N x 4 bytes) are still cached when the next column block adds
// its columns (with K = 64 and N = 256 unbounded chunks ran at 2/3 the speed).
inline index chunk_rows(index K, index mr) {
  index rows = std::min<index>(192, std::max<index>(mr, (512 * 1024) / std::max<index>(K, 1)));
  return (rows + mr - 1) / mr * mr;
}

// The portable kernel: same packed order, plain C++.
inline void gemm_portable(index M, const std::uint8_t* A, index lda, const packed_weights& W, std::int32_t* C,
                          index ldc, std::int32_t* rowsum = nullptr) {
  check_args("ptq::igemm::detail::gemm_portable", M, lda, W, ldc, rowsum);
  const index K = W.k(), k4 = W.k_groups();
  const index kfull = K / 4;
  for (index i = 0; i < M; ++i) {
    const std::uint8_t* a = A + i * lda;
    for (index b = 0; b < W.blocks(); ++b) {
      const std::int8_t* p = W.panel(b);
      std::int32_t acc[block_n] = {};
      for (index g = 0; g < k4; ++g) {
        std::uint8_t a4[4] = {0, 0, 0, 0};
        if (g < kfull)
          std::memcpy(a4, a + 4 * g, 4);
        else
          std::memcpy(a4, a + 4 * g, static_cast<std::size_t>(K - 4 * g));
        const std::int8_t* q = p + g * block_n * 4;
        for (index j = 0; j < block_n; ++j)
          acc[j] += std::int32_t(a4[0]) * q[4 * j] + std::int32_t(a4[1]) * q[4 * j + 1] +
                    std::int32_t(a4[2]) * q[4 * j + 2] + std::int32_t(a4[3]) * q[4 * j + 3];
      }
      const index n = W.block_cols(b);
      for (index j = 0; j < n; ++j) C[i * ldc + b * block_n + j] = acc[j];
      if (rowsum && W.sum_lane(b) >= 0) rowsum[i] = acc[W.sum_lane(b)];
    }
  }
}

#if PTQ_IGEMM_X86
// The tile loops must be unrolled so that the accumulators live in registers.
// GCC 12 at -O3 (CMake's Release) shuffles and spills the 20 accumulators and
// runs the tile at 0.5-0.7x its -O2 speed, hence optimize("O2") on the kernel.
#if defined(__clang__)
#define PTQ_IGEMM_VNNI_TARGET __attribute__((target("avx512f,avx512bw,avx512vl,avx512vnni")))
#define PTQ_IGEMM_UNROLL _Pragma("unroll")
#else
#define PTQ_IGEMM_VNNI_TARGET __attribute__((target("avx512f,avx512bw,avx512vl,avx512vnni"), optimize("O2")))
#define PTQ_IGEMM_UNROLL _Pragma("GCC unroll 32")
#endif

PTQ_IGEMM_VNNI_TARGET PTQ_IGEMM_KERNEL_LINKAGE void gemm_vnni_unchecked(index M, const std::uint8_t* A, index lda,
                                                                       const packed_weights& W, std::int32_t* C,
                                                                       index ldc, std::int32_t* rowsum);

#if PTQ_IGEMM_KERNEL_BODIES
// Lane `lane` of v to *dst: a one-lane masked store based `lane` elements before dst (masked-off
// lanes are neither read nor written, so the base may lie outside the array).
PTQ_IGEMM_VNNI_TARGET inline void store_lane(std::int32_t* dst, __m512i v, index lane) {
  const auto base = reinterpret_cast<std::uintptr_t>(dst) - static_cast<std::uintptr_t>(lane) * sizeof(std::int32_t);
  _mm512_mask_storeu_epi32(reinterpret_cast<void*>(base), static_cast<__mmask16>(1u << lane), v);
}

inline constexpr int vnni_mr = 10;  // rows of the register tile: 10 x 2 accumulators + 2 B + 1 A of 32 zmm

// One MR x 32 tile: C[0..MR)[0..ncols) = A rows x panel, full K; lane sl (>= 0) of the tile
// to rs[0..MR) instead (the ones column: row sums).
template <int MR>
PTQ_IGEMM_VNNI_TARGET inline void vnni_tile(const std::uint8_t* A, index lda, index K, const std::int8_t* panel,
                                            std::int32_t* C, index ldc, index ncols, index sl, std::int32_t* rs) {
  __m512i acc0[MR], acc1[MR];
  PTQ_IGEMM_UNROLL
  for (int r = 0; r < MR; ++r) {
    acc0[r] = _mm512_setzero_si512();
    acc1[r] = _mm512_setzero_si512();
  }
  const index kfull = K / 4;
  const std::int8_t* p = panel;
  for (index g = 0; g < kfull; ++g, p += 128) {
    const __m512i b0 = _mm512_load_si512(p);
    const __m512i b1 = _mm512_load_si512(p + 64);
    PTQ_IGEMM_UNROLL
    for (int r = 0; r < MR; ++r) {
      std::int32_t v;
      std::memcpy(&v, A + r * lda + 4 * g, 4);
      const __m512i a = _mm512_set1_epi32(v);
      acc0[r] = _mm512_dpbusd_epi32(acc0[r], a, b0);
      acc1[r] = _mm512_dpbusd_epi32(acc1[r], a, b1);
    }
  }
  if (K % 4) {
    const __m512i b0 = _mm512_load_si512(p);
    const __m512i b1 = _mm512_load_si512(p + 64);
    PTQ_IGEMM_UNROLL
    for (int r = 0; r < MR; ++r) {
      const __m512i a = _mm512_set1_epi32(static_cast<std::int32_t>(a_group(A + r * lda, kfull, K)));
      acc0[r] = _mm512_dpbusd_epi32(acc0[r], a, b0);
      acc1[r] = _mm512_dpbusd_epi32(acc1[r], a, b1);
    }
  }
  if (ncols == 32) {
    PTQ_IGEMM_UNROLL
    for (int r = 0; r < MR; ++r) {
      _mm512_storeu_si512(C + r * ldc, acc0[r]);
      _mm512_storeu_si512(C + r * ldc + 16, acc1[r]);
    }
  } else {
    const __mmask16 m0 = static_cast<__mmask16>(ncols >= 16 ? 0xFFFF : (1u << ncols) - 1);
    const __mmask16 m1 = static_cast<__mmask16>(ncols <= 16 ? 0 : (1u << (ncols - 16)) - 1);
    PTQ_IGEMM_UNROLL
    for (int r = 0; r < MR; ++r) {
      _mm512_mask_storeu_epi32(C + r * ldc, m0, acc0[r]);
      _mm512_mask_storeu_epi32(C + r * ldc + 16, m1, acc1[r]);
    }
  }
  if (sl >= 0) {
    PTQ_IGEMM_UNROLL
    for (int r = 0; r < MR; ++r) store_lane(rs + r, sl < 16 ? acc0[r] : acc1[r], sl % 16);
  }
}

template <int MR>
PTQ_IGEMM_VNNI_TARGET inline void vnni_rows(index rows, const std::uint8_t* A, index lda, index K,
                                            const std::int8_t* panel, std::int32_t* C, index ldc, index ncols,
                                            index sl, std::int32_t* rs) {
  if constexpr (MR > 0) {
    if (rows == MR) return vnni_tile<MR>(A, lda, K, panel, C, ldc, ncols, sl, rs);
    return vnni_rows<MR - 1>(rows, A, lda, K, panel, C, ldc, ncols, sl, rs);
  }
}

inline constexpr int vnni16_mr = 12;  // rows of the 16-wide tile (20 ran slower: GCC reloads the row offsets from the stack)

// One MR x 16 tile for a block of at most 16 columns (they sit in the first 64 bytes of each
// 128-byte panel row): C[0..MR)[0..ncols) = A rows x panel, full K. Half the vpdpbusd of
// the 32-wide tile on such blocks (a 12-channel layer used 12 of its 32 lanes).
template <int MR>
PTQ_IGEMM_VNNI_TARGET inline void vnni_tile16(const std::uint8_t* A, index lda, index K, const std::int8_t* panel,
                                              std::int32_t* C, index ldc, index ncols, index sl, std::int32_t* rs) {
  __m512i acc[MR];
  PTQ_IGEMM_UNROLL
  for (int r = 0; r < MR; ++r) acc[r] = _mm512_setzero_si512();
  const index kfull = K / 4;
  const std::int8_t* p = panel;
  for (index g = 0; g < kfull; ++g, p += 128) {
    const __m512i b0 = _mm512_load_si512(p);
    PTQ_IGEMM_UNROLL
    for (int r = 0; r < MR; ++r) {
      std::int32_t v;
      std::memcpy(&v, A + r * lda + 4 * g, 4);
      acc[r] = _mm512_dpbusd_epi32(acc[r], _mm512_set1_epi32(v), b0);
    }
  }
  if (K % 4) {
    const __m512i b0 = _mm512_load_si512(p);
    PTQ_IGEMM_UNROLL
    for (int r = 0; r < MR; ++r)
      acc[r] = _mm512_dpbusd_epi32(acc[r], _mm512_set1_epi32(static_cast<std::int32_t>(a_group(A + r * lda, kfull, K))), b0);
  }
  if (ncols == 16) {
    PTQ_IGEMM_UNROLL
    for (int r = 0; r < MR; ++r) _mm512_storeu_si512(C + r * ldc, acc[r]);
  } else {
    const __mmask16 m = static_cast<__mmask16>((1u << ncols) - 1);
    PTQ_IGEMM_UNROLL
    for (int r = 0; r < MR; ++r) _mm512_mask_storeu_epi32(C + r * ldc, m, acc[r]);
  }
  if (sl >= 0) {
    PTQ_IGEMM_UNROLL
    for (int r = 0; r < MR; ++r) store_lane(rs + r, acc[r], sl);
  }
}

template <int MR>
PTQ_IGEMM_VNNI_TARGET inline void vnni16_rows(index rows, const std::uint8_t* A, index lda, index K,
                                              const std::int8_t* panel, std::int32_t* C, index ldc, index ncols,
                                              index sl, std::int32_t* rs) {
  if constexpr (MR > 0) {
    if (rows == MR) return vnni_tile16<MR>(A, lda, K, panel, C, ldc, ncols, sl, rs);
    return vnni16_rows<MR - 1>(rows, A, lda, K, panel, C, ldc, ncols, sl, rs);
  }
}

PTQ_IGEMM_VNNI_TARGET PTQ_IGEMM_KERNEL_LINKAGE void gemm_vnni_unchecked(index M, const std::uint8_t* A, index lda,
                                                                       const packed_weights& W, std::int32_t* C,
                                                                       index ldc, std::int32_t* rowsum) {
  const index K = W.k(), total = W.n() + (W.row_sums() ? 1 : 0);
  const index mc = chunk_rows(K, vnni_mr);
  for (index i0 = 0; i0 < M; i0 += mc) {
    const index m = std::min(mc, M - i0);
    for (index b = 0; b < W.blocks(); ++b) {
      const std::int8_t* panel = W.panel(b);
      const index ncols = W.block_cols(b), sl = rowsum ? W.sum_lane(b) : -1;
      std::int32_t* Cb = C + b * block_n;
      const auto rs = [&](index i) { return sl >= 0 ? rowsum + i : nullptr; };
      index i = i0;
      if (std::min<index>(block_n, total - b * block_n) <= 16) {
        for (; i + vnni16_mr <= i0 + m; i += vnni16_mr)
          vnni_tile16<vnni16_mr>(A + i * lda, lda, K, panel, Cb + i * ldc, ldc, ncols, sl, rs(i));
        if (i < i0 + m)
          vnni16_rows<vnni16_mr - 1>(i0 + m - i, A + i * lda, lda, K, panel, Cb + i * ldc, ldc, ncols, sl, rs(i));
        continue;
      }
      for (; i + vnni_mr <= i0 + m; i += vnni_mr)
        vnni_tile<vnni_mr>(A + i * lda, lda, K, panel, Cb + i * ldc, ldc, ncols, sl, rs(i));
      if (i < i0 + m)
        vnni_rows<vnni_mr - 1>(i0 + m - i, A + i * lda, lda, K, panel, Cb + i * ldc, ldc, ncols, sl, rs(i));
    }
  }
}
#endif  // PTQ_IGEMM_KERNEL_BODIES

inline void gemm_vnni(index M, const std::uint8_t* A, index lda, const packed_weights& W, std::int32_t* C,
                      index ldc, std::int32_t* rowsum = nullptr) {
  check_args("ptq::igemm::detail::gemm_vnni", M, lda, W, ldc, rowsum);
  gemm_vnni_unchecked(M, A, lda, W, C, ldc, rowsum);
}

inline bool has_vnni() {
  static const bool ok = [] {
    __builtin_cpu_init();
    return __builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx512bw") &&
           __builtin_cpu_supports("avx512vl") && __builtin_cpu_supports("avx512vnni");
  }();
  return ok;
}

inline bool has_avx2() { return ptq::detail::cpu_has_avx2(); }

// ---- AVX2 without VNNI: exact u8 x s8 products through vpmaddwd on 16-bit halves ----
// vpmaddubsw would add two u8 x s8 products in saturating int16 (2 x 255 x 127 > 32767), so
// the kernel splits each 4-byte group into its even bytes (k0, k2) and odd bytes (k1, k3) as
// int16, activations zero-extended and weights sign-extended from the shared panel in
// registers, and vpmaddwd adds a0 w0 + a2 w2 and a1 w1 + a3 w3 in int32 (each at most
// 2 x 32640 in magnitude): exact, like vpdpbusd. An MR x 16 tile (2 MR ymm accumulators of
// 8 columns) runs over one half of a 32-column panel (bytes 0-63 or 64-127 of a panel row).
#define PTQ_IGEMM_AVX2_TARGET PTQ_AVX2_TARGET

PTQ_IGEMM_AVX2_TARGET PTQ_IGEMM_KERNEL_LINKAGE void gemm_avx2_unchecked(index M, const std::uint8_t* A, index lda,
                                                                       const packed_weights& W, std::int32_t* C,
                                                                       index ldc, std::int32_t* rowsum);

#if PTQ_IGEMM_KERNEL_BODIES
// Rows of the tile: 2 x 4 accumulators + 4 B + 3 A + 1 mask of 16 ymm (3 rows ran at 0.65-1.0x the
// speed of 4 on ResNet-50's shapes, 5 at 0.55-0.7x: GCC spills; bench/README.md).
inline constexpr int avx2_mr = 4;

// One MR x 16 tile on half a panel: C[0..MR)[0..ncols) = A rows x half, full K (ncols <= 16);
// lane sl (>= 0) of the tile to rs[0..MR) instead.
template <int MR>
PTQ_IGEMM_AVX2_TARGET inline void avx2_tile(const std::uint8_t* A, index lda, index K, const std::int8_t* half,
                                            std::int32_t* C, index ldc, index ncols, index sl, std::int32_t* rs) {
  __m256i acc0[MR], acc1[MR];
  PTQ_IGEMM_UNROLL
  for (int r = 0; r < MR; ++r) {
    acc0[r] = _mm256_setzero_si256();
    acc1[r] = _mm256_setzero_si256();
  }
  const __m256i low = _mm256_set1_epi16(0x00FF);
  // One 4-byte group: the 16 columns at p, row r's bytes from A_GROUP(r). (A macro, not a
  // helper taking the accumulators by reference: GCC then kept them on the stack.)
#define PTQ_IGEMM_AVX2_STEP(A_GROUP)                                                                                  \
  {                                                                                                                  \
    const __m256i w0 = _mm256_load_si256(reinterpret_cast<const __m256i*>(p));                                       \
    const __m256i w1 = _mm256_load_si256(reinterpret_cast<const __m256i*>(p + 32));                                  \
    const __m256i w0e = _mm256_srai_epi16(_mm256_slli_epi16(w0, 8), 8), w0o = _mm256_srai_epi16(w0, 8);             \
    const __m256i w1e = _mm256_srai_epi16(_mm256_slli_epi16(w1, 8), 8), w1o = _mm256_srai_epi16(w1, 8);             \
    PTQ_IGEMM_UNROLL                                                                                                 \
    for (int r = 0; r < MR; ++r) {                                                                                   \
      const __m256i a = _mm256_set1_epi32(A_GROUP(r));                                                               \
      const __m256i ae = _mm256_and_si256(a, low), ao = _mm256_srli_epi16(a, 8);                                     \
      acc0[r] = _mm256_add_epi32(acc0[r], _mm256_add_epi32(_mm256_madd_epi16(ae, w0e), _mm256_madd_epi16(ao, w0o))); \
      acc1[r] = _mm256_add_epi32(acc1[r], _mm256_add_epi32(_mm256_madd_epi16(ae, w1e), _mm256_madd_epi16(ao, w1o))); \
    }                                                                                                                \
  }
  const index kfull = K / 4;
  const std::int8_t* p = half;
  for (index g = 0; g < kfull; ++g, p += 128) {
    const auto group = [&](int r) {
      std::int32_t v;
      std::memcpy(&v, A + r * lda + 4 * g, 4);
      return v;
    };
    PTQ_IGEMM_AVX2_STEP(group)
  }
  if (K % 4) {
    const auto group = [&](int r) { return static_cast<std::int32_t>(a_group(A + r * lda, kfull, K)); };
    PTQ_IGEMM_AVX2_STEP(group)
  }
#undef PTQ_IGEMM_AVX2_STEP
  if (ncols == 16 && sl < 0) {
    PTQ_IGEMM_UNROLL
    for (int r = 0; r < MR; ++r) {
      _mm256_storeu_si256(reinterpret_cast<__m256i*>(C + r * ldc), acc0[r]);
      _mm256_storeu_si256(reinterpret_cast<__m256i*>(C + r * ldc + 8), acc1[r]);
    }
    return;
  }
  alignas(32) std::int32_t buf[16];
  PTQ_IGEMM_UNROLL
  for (int r = 0; r < MR; ++r) {
    _mm256_store_si256(reinterpret_cast<__m256i*>(buf), acc0[r]);
    _mm256_store_si256(reinterpret_cast<__m256i*>(buf + 8), acc1[r]);
    std::memcpy(C + r * ldc, buf, static_cast<std::size_t>(ncols) * sizeof(std::int32_t));
    if (sl >= 0) rs[r] = buf[sl];
  }
}

template <int MR>
PTQ_IGEMM_AVX2_TARGET inline void avx2_rows(index rows, const std::uint8_t* A, index lda, index K,
                                            const std::int8_t* half, std::int32_t* C, index ldc, index ncols,
                                            index sl, std::int32_t* rs) {
  if constexpr (MR > 0) {
    if (rows == MR) return avx2_tile<MR>(A, lda, K, half, C, ldc, ncols, sl, rs);
    return avx2_rows<MR - 1>(rows, A, lda, K, half, C, ldc, ncols, sl, rs);
  }
}

PTQ_IGEMM_AVX2_TARGET PTQ_IGEMM_KERNEL_LINKAGE void gemm_avx2_unchecked(index M, const std::uint8_t* A, index lda,
                                                                       const packed_weights& W, std::int32_t* C,
                                                                       index ldc, std::int32_t* rowsum) {
  const index K = W.k(), total = W.n() + (W.row_sums() ? 1 : 0);
  const index mc = chunk_rows(K, avx2_mr);
  for (index i0 = 0; i0 < M; i0 += mc) {
    const index m = std::min(mc, M - i0);
    for (index b = 0; b < W.blocks(); ++b) {
      const index sl = rowsum ? W.sum_lane(b) : -1;
      for (index h = 0; h < 2 && 16 * h < total - b * block_n; ++h) {
        const std::int8_t* half = W.panel(b) + 64 * h;
        const index ncols = std::clamp<index>(W.block_cols(b) - 16 * h, 0, 16);
        const index lane = sl >= 0 && sl / 16 == h ? sl % 16 : -1;
        std::int32_t* Cb = C + b * block_n + 16 * h;
        const auto rs = [&](index i) { return lane >= 0 ? rowsum + i : nullptr; };
        index i = i0;
        for (; i + avx2_mr <= i0 + m; i += avx2_mr)
          avx2_tile<avx2_mr>(A + i * lda, lda, K, half, Cb + i * ldc, ldc, ncols, lane, rs(i));
        if (i < i0 + m)
          avx2_rows<avx2_mr - 1>(i0 + m - i, A + i * lda, lda, K, half, Cb + i * ldc, ldc, ncols, lane, rs(i));
      }
    }
  }
}
#endif  // PTQ_IGEMM_KERNEL_BODIES

inline void gemm_avx2(index M, const std::uint8_t* A, index lda, const packed_weights& W, std::int32_t* C,
                      index ldc, std::int32_t* rowsum = nullptr) {
  check_args("ptq::igemm::detail::gemm_avx2", M, lda, W, ldc, rowsum);
  ptq::detail::require(has_avx2(), "ptq::igemm::detail::gemm_avx2", "this CPU does not offer AVX2");
  gemm_avx2_unchecked(M, A, lda, W, C, ldc, rowsum);
}

// ---- AMX (Intel Advanced Matrix Extensions, TDPBUSD) ----
// The tiles are eight 16 x 64-byte registers: C (int32, 16 x 16) += A (uint8, 16 rows x 64 K
// bytes) x B (int8, 16 rows of [16 columns][4 K bytes]). That B row is exactly 16 columns of one
// packed panel row, so a B tile is 16 panel rows read at a stride of 128 bytes (the block's
// columns 0-15 at offset 0, 16-31 at offset 64): the packing is shared with the VNNI kernel.
// The tile computes 16 x 16 x 64 products and adds them exactly in int32, like vpdpbusd.
// Here: a 32 x 32 block (2 A tiles, 2 B tiles, 4 C tiles, the 8 registers). K in steps of 64;
// the K % 64 tail comes from a zero-padded copy of the A rows' tails and the panel's zero rows
// (packed_weights pads them to a multiple of 16), so no byte past A[i][K-1] is read; K < 64 and
// a multiple of 4 needs no copy: its A tiles are configured K bytes wide. Rows past
// the last multiple of 16 go to the VNNI kernel. Tiles are written straight to C where their 16
// columns are all C's, else through a 16 x 16 buffer (partial blocks, the row-sum lane).
// The OS must allow the 8 KiB tile state (Linux: arch_prctl(ARCH_REQ_XCOMP_PERM), asked once).
// The instructions are written as inline assembly (GNU assembler >= 2.34) with memory clobbers:
// GCC 12's _tile_loadd does not tell the compiler that it reads memory.
#if defined(__x86_64__) && defined(__linux__)
#define PTQ_IGEMM_AMX 1
#define PTQ_TILE_LOAD(t, base, stride)                                                          \
  __asm__ volatile("{tileloadd\t(%0,%1,1), %%tmm" #t "|tileloadd\t%%tmm" #t ", [%0+%1*1]}" ::"r"( \
                       static_cast<const void*>(base)),                                           \
                   "r"(static_cast<long>(stride))                                                 \
                   : "memory")
#define PTQ_TILE_STORE(t, base, stride)                                                          \
  __asm__ volatile("{tilestored\t%%tmm" #t ", (%0,%1,1)|tilestored\t[%0+%1*1], %%tmm" #t "}" ::"r"( \
                       static_cast<void*>(base)),                                                  \
                   "r"(static_cast<long>(stride))                                                  \
                   : "memory")
#define PTQ_TILE_ZERO(t) __asm__ volatile("tilezero\t%%tmm" #t ::)
#define PTQ_TILE_DPBUSD(c, a, b) \
  __asm__ volatile("{tdpbusd\t%%tmm" #b ", %%tmm" #a ", %%tmm" #c "|tdpbusd\t%%tmm" #c ", %%tmm" #a ", %%tmm" #b "}" ::)

struct alignas(64) amx_palette {
  std::uint8_t palette_id = 1, start_row = 0, reserved[14] = {};
  std::uint16_t colsb[16] = {64, 64, 64, 64, 64, 64, 64, 64};
  std::uint8_t rows[16] = {16, 16, 16, 16, 16, 16, 16, 16};
};

// CPUID (AMX-TILE, AMX-INT8) and the OS's permission; has_amx() also requires VNNI (the row tails).
inline bool amx_supported() {
  unsigned a = 0, b = 0, c = 0, d = 0;
  __asm__ volatile("cpuid" : "=a"(a), "=b"(b), "=c"(c), "=d"(d) : "a"(0), "c"(0));
  if (a < 7) return false;
  __asm__ volatile("cpuid" : "=a"(a), "=b"(b), "=c"(c), "=d"(d) : "a"(7), "c"(0));
  if (!((d >> 24) & 1u) || !((d >> 25) & 1u)) return false;
  constexpr long arch_req_xcomp_perm = 0x1023, xfeature_xtiledata = 18;
  return syscall(SYS_arch_prctl, arch_req_xcomp_perm, xfeature_xtiledata) == 0;
}

PTQ_IGEMM_KERNEL_LINKAGE void gemm_amx_unchecked(index M, const std::uint8_t* A, index lda, const packed_weights& W,
                                                std::int32_t* C, index ldc, std::int32_t* rowsum);

#if PTQ_IGEMM_KERNEL_BODIES
// A C tile stored in buf (16 x 16) to C (its first `valid` columns) and its lane `lane` (>= 0) to rs.
inline void amx_store_tile_slow(const std::int32_t* buf, std::int32_t* C, index ldc, index valid, index lane,
                                std::int32_t* rs) {
  for (index r = 0; r < 16; ++r) {
    std::memcpy(C + r * ldc, buf + r * 16, static_cast<std::size_t>(valid) * sizeof(std::int32_t));
    if (lane >= 0) rs[r] = buf[r * 16 + lane];
  }
}

// One (16 MA) x (16 NB) block of C over the whole K: kb steps of 64 bytes from A (stride lda),
// then, if tail, one step from tail (16 MA rows at stride ldt). ncols: the block's columns of C,
// sl: the row-sum lane (-1: none asked).
template <int MA, int NB>
inline void amx_block(const std::uint8_t* A, index lda, index kb, const std::uint8_t* tail, index ldt,
                      const std::int8_t* panel, std::int32_t* C, index ldc, index ncols, index sl, std::int32_t* rs) {
  PTQ_TILE_ZERO(0);
  if constexpr (NB == 2) PTQ_TILE_ZERO(1);
  if constexpr (MA == 2) PTQ_TILE_ZERO(2);
  if constexpr (MA == 2 && NB == 2) PTQ_TILE_ZERO(3);
  const std::int8_t* p = panel;
  const auto step = [&](const std::uint8_t* a, index stride) {
    PTQ_TILE_LOAD(4, a, stride);
    PTQ_TILE_LOAD(6, p, 128);
    PTQ_TILE_DPBUSD(0, 4, 6);
    if constexpr (NB == 2) {
      PTQ_TILE_LOAD(7, p + 64, 128);
      PTQ_TILE_DPBUSD(1, 4, 7);
    }
    if constexpr (MA == 2) {
      PTQ_TILE_LOAD(5, a + 16 * stride, stride);
      PTQ_TILE_DPBUSD(2, 5, 6);
      if constexpr (NB == 2) PTQ_TILE_DPBUSD(3, 5, 7);
    }
    p += 16 * 128;
  };
  for (index k = 0; k < kb; ++k) step(A + 64 * k, lda);
  if (tail) step(tail, ldt);
  alignas(64) std::int32_t buf[256];
  const auto out = [&](auto store, int r, int c) {
    const index valid = std::clamp<index>(ncols - 16 * c, 0, 16), lane = sl >= 0 && sl / 16 == c ? sl % 16 : -1;
    std::int32_t* dst = C + 16 * r * ldc + 16 * c;
    if (valid == 16 && lane < 0) return store(dst, ldc * 4);
    if (valid == 0 && lane < 0) return;
    store(buf, 64);
    amx_store_tile_slow(buf, dst, ldc, valid, lane, rs ? rs + 16 * r : nullptr);
  };
  out([](void* d, index s) { PTQ_TILE_STORE(0, d, s); }, 0, 0);
  if constexpr (NB == 2) out([](void* d, index s) { PTQ_TILE_STORE(1, d, s); }, 0, 1);
  if constexpr (MA == 2) out([](void* d, index s) { PTQ_TILE_STORE(2, d, s); }, 1, 0);
  if constexpr (MA == 2 && NB == 2) out([](void* d, index s) { PTQ_TILE_STORE(3, d, s); }, 1, 1);
}

PTQ_IGEMM_KERNEL_LINKAGE void gemm_amx_unchecked(index M, const std::uint8_t* A, index lda, const packed_weights& W,
                                                std::int32_t* C, index ldc, std::int32_t* rowsum) {
  const index K = W.k(), kb = K / 64, kt = K % 64, total = W.n() + (W.row_sums() ? 1 : 0);
  // At most 16 columns (with the ones column): VNNI's 16-wide tile is faster (M = 288 rows, K =
  // 12, 48, 108: 0.38, 0.75, 0.77 of its time on AMX, which would use half its C tiles).
  const index Ma = total <= 16 ? 0 : M / 16 * 16;
  // K < 64 and a multiple of 4: A tiles of K bytes and B tiles of K / 4 rows, loaded in place.
  const bool narrow = kb == 0 && kt % 4 == 0;
  if (Ma > 0) {
    amx_palette palette;
    if (narrow)
      for (int t = 4; t < 8; ++t) {
        if (t < 6) palette.colsb[t] = static_cast<std::uint16_t>(kt);
        else palette.rows[t] = static_cast<std::uint8_t>(kt / 4);
      }
    __asm__ volatile("ldtilecfg\t%0" ::"m"(palette));
    constexpr index mc_max = 192;
    const index mc = std::min<index>(mc_max, chunk_rows(K, 32));
    alignas(64) std::uint8_t tail[mc_max * 64];
    for (index i0 = 0; i0 < Ma; i0 += mc) {
      const index m = std::min(mc, Ma - i0);
      if (kt && !narrow) {
        std::memset(tail, 0, static_cast<std::size_t>(m * 64));
        for (index r = 0; r < m; ++r)
          std::memcpy(tail + r * 64, A + (i0 + r) * lda + 64 * kb, static_cast<std::size_t>(kt));
      }
      for (index b = 0; b < W.blocks(); ++b) {
        const std::int8_t* panel = W.panel(b);
        const index ncols = W.block_cols(b), sl = rowsum ? W.sum_lane(b) : -1;
        const bool wide = std::min<index>(block_n, total - b * block_n) > 16;
        for (index i = 0; i < m; i += 32) {
          const std::uint8_t* a = A + (i0 + i) * lda;
          const std::uint8_t* t = narrow ? a : kt ? tail + i * 64 : nullptr;
          const index ldt = narrow ? lda : 64;
          std::int32_t* c = C + (i0 + i) * ldc + b * block_n;
          std::int32_t* rs = rowsum ? rowsum + i0 + i : nullptr;
          if (m - i >= 32) {
            if (wide)
              amx_block<2, 2>(a, lda, kb, t, ldt, panel, c, ldc, ncols, sl, rs);
            else
              amx_block<2, 1>(a, lda, kb, t, ldt, panel, c, ldc, ncols, sl, rs);
          } else if (wide) {
            amx_block<1, 2>(a, lda, kb, t, ldt, panel, c, ldc, ncols, sl, rs);
          } else {
            amx_block<1, 1>(a, lda, kb, t, ldt, panel, c, ldc, ncols, sl, rs);
          }
        }
      }
    }
    __asm__ volatile("tilerelease" ::);
  }
  if (Ma < M) gemm_vnni_unchecked(M - Ma, A + Ma * lda, lda, W, C + Ma * ldc, ldc, rowsum ? rowsum + Ma : nullptr);
}
#endif  // PTQ_IGEMM_KERNEL_BODIES
#else
#define PTQ_IGEMM_AMX 0
inline bool amx_supported() { return false; }
#endif

inline bool has_amx() {
  static const bool ok = has_vnni() && amx_supported();
  return ok;
}

#if PTQ_IGEMM_AMX
inline void gemm_amx(index M, const std::uint8_t* A, index lda, const packed_weights& W, std::int32_t* C, index ldc,
                     std::int32_t* rowsum = nullptr) {
  check_args("ptq::igemm::detail::gemm_amx", M, lda, W, ldc, rowsum);
  ptq::detail::require(has_amx(), "ptq::igemm::detail::gemm_amx", "this CPU or OS does not offer AMX-INT8");
  gemm_amx_unchecked(M, A, lda, W, C, ldc, rowsum);
}
#endif
#else
#define PTQ_IGEMM_AMX 0
inline bool has_avx2() { return false; }
inline bool has_vnni() { return false; }
inline bool has_amx() { return false; }
#endif

}  // namespace detail

// The instruction sets of the kernels, from the plainest.
enum class isa { portable, avx2, avx512_vnni, amx_int8 };

// The kernel gemm_u8s8s32 runs: the best this CPU and OS offer, capped by the environment
// variable PTQ_IGEMM_MAX_ISA (portable, avx2, avx512_vnni or amx_int8; read once, like oneDNN's
// ONEDNN_MAX_CPU_ISA) so that one binary can time its kernels against each other. Another value
// is a ptq::error.
inline isa dispatched_isa() {
  static const isa chosen = [] {
    isa best = detail::has_amx()    ? isa::amx_int8
               : detail::has_vnni() ? isa::avx512_vnni
               : detail::has_avx2() ? isa::avx2
                                    : isa::portable;
    if (const char* cap = std::getenv("PTQ_IGEMM_MAX_ISA"); cap && *cap) {
      const std::string c(cap);
      const isa limit = c == "portable" ? isa::portable
                        : c == "avx2" ? isa::avx2
                        : c == "avx512_vnni" ? isa::avx512_vnni
                        : c == "amx_int8" ? isa::amx_int8
                                          : throw error("ptq::igemm: PTQ_IGEMM_MAX_ISA = '" + c +
                                                        "' is none of portable, avx2, avx512_vnni, amx_int8");
      best = std::min(best, limit);
    }
    return best;
  }();
  return chosen;
}

// The name of dispatched_isa()'s kernel: "amx_int8", "avx512_vnni", "avx2" or "portable".
inline const char* kernel_name() {
  switch (dispatched_isa()) {
    case isa::amx_int8: return "amx_int8";
    case isa::avx512_vnni: return "avx512_vnni";
    case isa::avx2: return "avx2";
    default: return "portable";
  }
}

// C = A x W^T (see the top of this file). M >= 0, lda >= K, ldc >= N; A needs K readable bytes per row.
// rowsum (not null: W packed with row_sums): rowsum[i] = sum_k A[i][k] for i < M.
inline void gemm_u8s8s32(index M, const std::uint8_t* A, index lda, const packed_weights& W, std::int32_t* C,
                         index ldc, std::int32_t* rowsum = nullptr) {
  const isa k = dispatched_isa();
#if PTQ_IGEMM_AMX
  if (k == isa::amx_int8) return detail::gemm_amx(M, A, lda, W, C, ldc, rowsum);
#endif
#if PTQ_IGEMM_X86
  if (k >= isa::avx512_vnni) return detail::gemm_vnni(M, A, lda, W, C, ldc, rowsum);
  if (k == isa::avx2) return detail::gemm_avx2(M, A, lda, W, C, ldc, rowsum);
#endif
  (void)k;
  detail::gemm_portable(M, A, lda, W, C, ldc, rowsum);
}

}  // namespace ptq::igemm
