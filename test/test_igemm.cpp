// test_igemm.cpp: the u8 x s8 -> s32 GEMM kernels equal the plain-loop reference bit for bit.
#include <doctest/doctest.h>

#include <algorithm>
#include <array>
#include <cstdint>
#include <ptq/igemm.hpp>
#include <cstdlib>
#include <cstring>
#include <random>
#include <string>
#include <vector>
#if defined(__linux__)
#include <sys/mman.h>
#include <unistd.h>
#endif

// Everything of this file in its own namespace: the test binary is a unity build.
namespace ptq_test_igemm {

namespace {

using idx = ptq::index;
namespace ig = ptq::igemm;

struct problem {
  idx M, N, K, lda, ldw, ldc;
  std::vector<std::uint8_t> A;
  std::vector<std::int8_t> W;
};

problem random_problem(idx M, idx N, idx K, idx pad, std::uint32_t seed) {
  problem p{M, N, K, K + pad, K + 2 * pad, N + 3 * pad, {}, {}};
  std::mt19937 rng(seed);
  std::uniform_int_distribution<int> u(0, 255), s(-128, 127);
  p.A.resize(static_cast<std::size_t>(M * p.lda));
  p.W.resize(static_cast<std::size_t>(N * p.ldw));
  for (auto& a : p.A) a = static_cast<std::uint8_t>(u(rng));
  for (auto& w : p.W) w = static_cast<std::int8_t>(s(rng));
  return p;
}

// Runs `kernel` on p; C's padding columns must stay untouched (sentinel). Then again on weights
// packed with their column of ones, asking for the row sums: C the same, and rowsum equal to a
// plain loop's sums of the A rows (the element past the last row untouched).
template <class Kernel>
bool matches_ref(const problem& p, Kernel kernel) {
  const std::int32_t sentinel = 0x5A5A5A5A;
  std::vector<std::int32_t> ref(static_cast<std::size_t>(p.M * p.ldc), sentinel), got = ref;
  ig::gemm_u8s8s32_ref(p.M, p.N, p.K, p.A.data(), p.lda, p.W.data(), p.ldw, ref.data(), p.ldc);
  const ig::packed_weights packed(p.W.data(), p.N, p.K, p.ldw);
  kernel(p.M, p.A.data(), p.lda, packed, got.data(), p.ldc, nullptr);
  if (ref != got) return false;
  std::vector<std::int32_t> sums(static_cast<std::size_t>(p.M + 1), sentinel), sums_ref = sums;
  for (idx i = 0; i < p.M; ++i) {
    std::int32_t s = 0;
    for (idx k = 0; k < p.K; ++k) s += p.A[static_cast<std::size_t>(i * p.lda + k)];
    sums_ref[static_cast<std::size_t>(i)] = s;
  }
  std::fill(got.begin(), got.end(), sentinel);
  const ig::packed_weights with_sums(p.W.data(), p.N, p.K, p.ldw, true);
  kernel(p.M, p.A.data(), p.lda, with_sums, got.data(), p.ldc, sums.data());
  if (ref != got || sums != sums_ref) return false;
  // Weights with the ones column but no row sums asked: C alone.
  std::fill(got.begin(), got.end(), sentinel);
  kernel(p.M, p.A.data(), p.lda, with_sums, got.data(), p.ldc, nullptr);
  return ref == got;
}

void gemm_default(idx M, const std::uint8_t* A, idx lda, const ig::packed_weights& W, std::int32_t* C, idx ldc,
                  std::int32_t* rowsum) {
  ig::gemm_u8s8s32(M, A, lda, W, C, ldc, rowsum);
}

}  // namespace

TEST_CASE("igemm: the reference against an independent double-precision loop") {
  for (auto [M, N, K] : {std::array<idx, 3>{3, 5, 7}, {9, 33, 65}, {4, 17, 577}}) {
    const problem p = random_problem(M, N, K, 3, 7);
    std::vector<std::int32_t> C(static_cast<std::size_t>(M * p.ldc));
    ig::gemm_u8s8s32_ref(M, N, K, p.A.data(), p.lda, p.W.data(), p.ldw, C.data(), p.ldc);
    std::vector<std::int32_t> kernel_C(C.size());
    ig::gemm_u8s8s32(M, p.A.data(), p.lda, ig::packed_weights(p.W.data(), N, K, p.ldw), kernel_C.data(), p.ldc);
    for (idx i = 0; i < M; ++i)
      for (idx j = 0; j < N; ++j) {
        double s = 0;
        for (idx k = 0; k < K; ++k) s += double(p.A[i * p.lda + k]) * double(p.W[j * p.ldw + k]);
        REQUIRE(double(C[i * p.ldc + j]) == s);
        REQUIRE(double(kernel_C[i * p.ldc + j]) == s);
      }
  }
}

TEST_CASE("igemm: kernel_name names the dispatched kernel, the best offered unless PTQ_IGEMM_MAX_ISA caps it") {
  const std::string name = ig::kernel_name();
  const ig::isa best = ig::detail::has_amx()    ? ig::isa::amx_int8
                       : ig::detail::has_vnni() ? ig::isa::avx512_vnni
                       : ig::detail::has_avx2() ? ig::isa::avx2
                                                : ig::isa::portable;
  const char* cap = std::getenv("PTQ_IGEMM_MAX_ISA");
  const std::string c = cap ? cap : "";
  const ig::isa expected = c == "portable"      ? ig::isa::portable
                           : c == "avx2"        ? std::min(best, ig::isa::avx2)
                           : c == "avx512_vnni" ? std::min(best, ig::isa::avx512_vnni)
                                                : best;
  CHECK(ig::dispatched_isa() == expected);
  CHECK(name == (expected == ig::isa::amx_int8      ? "amx_int8"
                 : expected == ig::isa::avx512_vnni ? "avx512_vnni"
                 : expected == ig::isa::avx2        ? "avx2"
                                                    : "portable"));
  MESSAGE("ptq::igemm kernel: " << name << (c.empty() ? "" : " (PTQ_IGEMM_MAX_ISA = " + c + ")"));
}

TEST_CASE("igemm: every kernel equals the reference bit for bit over M, N, K tails and strides") {
  const idx Ms[] = {1, 2, 3, 7, 8, 9, 15, 16, 17, 33, 100};
  const idx Ns[] = {1, 3, 15, 16, 17, 31, 32, 33, 48, 63, 64, 65, 100, 130};
  const idx Ks[] = {1, 2, 3, 4, 5, 7, 8, 63, 64, 65, 127, 256, 577};
  std::uint32_t seed = 1;
  int cases = 0, bad_default = 0, bad_portable = 0, bad_avx2 = 0, bad_vnni = 0, bad_amx = 0;
  for (idx M : Ms)
    for (idx N : Ns)
      for (idx K : Ks) {
        const problem p = random_problem(M, N, K, (seed % 3 == 0) ? 0 : idx(seed % 5), seed);
        ++seed;
        ++cases;
        if (!matches_ref(p, gemm_default)) ++bad_default;
        if (!matches_ref(p, ig::detail::gemm_portable)) ++bad_portable;
#if PTQ_IGEMM_X86
        if (ig::detail::has_avx2() && !matches_ref(p, ig::detail::gemm_avx2)) ++bad_avx2;
        if (ig::detail::has_vnni() && !matches_ref(p, ig::detail::gemm_vnni)) ++bad_vnni;
#endif
#if PTQ_IGEMM_AMX
        if (ig::detail::has_amx() && !matches_ref(p, ig::detail::gemm_amx)) ++bad_amx;
#endif
      }
  CHECK(cases == 11 * 14 * 13);
  CHECK(bad_default == 0);
  CHECK(bad_portable == 0);
  CHECK(bad_avx2 == 0);
  CHECK(bad_vnni == 0);
  CHECK(bad_amx == 0);
}

// The AMX kernel (where the CPU and OS offer it): 32 x 32 blocks of 16 x 16 tiles, K in steps of
// 64 with a copied tail, rows past a multiple of 16 on the VNNI kernel, chunks of 192 rows, and
// tiles stored through a buffer where a block has fewer than 16 columns in a half or the ones
// column. Every M around 16 and 32, K around 64, the ones column in either half of a block.
TEST_CASE("igemm: the AMX kernel equals the reference over its tile, chunk and tail boundaries") {
#if PTQ_IGEMM_AMX
  if (!ig::detail::has_amx()) {
    MESSAGE("AMX-INT8 is not offered on this machine: the AMX kernel is not run here, only its refusal");
    const problem p = random_problem(16, 16, 64, 0, 1);
    std::vector<std::int32_t> C(16 * 16);
    CHECK_THROWS_AS(ig::detail::gemm_amx(16, p.A.data(), 64, ig::packed_weights(p.W.data(), 16, 64, 64), C.data(), 16),
                    ptq::error);
    return;
  }
  int bad = 0, cases = 0;
  std::uint32_t seed = 5000;
  for (idx M : {15, 16, 17, 31, 32, 33, 47, 48, 49, 63, 64, 65, 191, 192, 193, 400})
    for (idx N : {1, 12, 15, 16, 17, 31, 32, 33, 47, 48, 64, 100})
      for (idx K : {1, 4, 60, 63, 64, 65, 128, 191, 200}) {
        const problem p = random_problem(M, N, K, idx(seed % 3), seed);
        ++seed;
        ++cases;
        if (!matches_ref(p, ig::detail::gemm_amx)) ++bad;
      }
  CHECK(cases == 16 * 12 * 9);
  CHECK(bad == 0);
#else
  MESSAGE("not an x86-64 Linux build: no AMX kernel");
  CHECK(!ig::detail::has_amx());
#endif
}

#if defined(__linux__)
// A's last row ends at a page followed by an inaccessible page: a kernel that reads a byte past
// A[M-1][K-1] (a K tail read as a whole group, tile or vector) faults.
TEST_CASE("igemm: no kernel reads past the last A byte (guard page)") {
  const long page = sysconf(_SC_PAGESIZE);
  for (idx K : {1, 3, 5, 63, 65, 129, 200}) {
    const idx M = 37, N = 20, lda = K;
    const std::size_t bytes = static_cast<std::size_t>(M * lda);
    const std::size_t span = (bytes + static_cast<std::size_t>(page) - 1) / static_cast<std::size_t>(page) * static_cast<std::size_t>(page);
    void* mem = mmap(nullptr, span + static_cast<std::size_t>(page), PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
    REQUIRE(mem != MAP_FAILED);
    REQUIRE(mprotect(static_cast<char*>(mem) + span, static_cast<std::size_t>(page), PROT_NONE) == 0);
    auto* A = reinterpret_cast<std::uint8_t*>(static_cast<char*>(mem) + span - bytes);
    const problem p = random_problem(M, N, K, 0, static_cast<std::uint32_t>(K));
    std::memcpy(A, p.A.data(), bytes);
    const ig::packed_weights w(p.W.data(), N, K, K, true);
    std::vector<std::int32_t> ref(static_cast<std::size_t>(M * N)), C(ref.size()), rs(static_cast<std::size_t>(M));
    ig::gemm_u8s8s32_ref(M, N, K, A, lda, p.W.data(), K, ref.data(), N);
    ig::detail::gemm_portable(M, A, lda, w, C.data(), N, rs.data());
    CHECK(C == ref);
#if PTQ_IGEMM_X86
    if (ig::detail::has_avx2()) {
      ig::detail::gemm_avx2(M, A, lda, w, C.data(), N, rs.data());
      CHECK(C == ref);
    }
    if (ig::detail::has_vnni()) {
      ig::detail::gemm_vnni(M, A, lda, w, C.data(), N, rs.data());
      CHECK(C == ref);
    }
#endif
#if PTQ_IGEMM_AMX
    if (ig::detail::has_amx()) {
      ig::detail::gemm_amx(M, A, lda, w, C.data(), N, rs.data());
      CHECK(C == ref);
    }
#endif
    munmap(mem, span + static_cast<std::size_t>(page));
  }
}
#endif

TEST_CASE("igemm: the 16-wide tile (column blocks of <= 16 columns) over every row remainder") {
  // gemm_vnni runs blocks of at most 16 columns (N <= 16, or the last block of N = 32 b + 1..16)
  // in 12-row tiles and 1..11-row remainders; chunks of rows end at multiples of 10. gemm_avx2
  // runs every block as one or two 16-column halves in 4-row tiles and 1..3-row remainders.
  int bad = 0, cases = 0;
  std::uint32_t seed = 1000;
  for (idx M = 1; M <= 45; ++M)
    for (idx N : {1, 5, 12, 16, 44, 48})
      for (idx K : {1, 3, 9, 12, 108, 433}) {
        const problem p = random_problem(M, N, K, idx(seed % 4), seed);
        ++seed;
        ++cases;
        if (!matches_ref(p, gemm_default)) ++bad;
#if PTQ_IGEMM_X86
        if (ig::detail::has_avx2() && !matches_ref(p, ig::detail::gemm_avx2)) ++bad;
#endif
      }
  const problem big = random_problem(1000, 12, 9, 1, 7);  // several chunks of rows
  CHECK(matches_ref(big, gemm_default));
  CHECK(cases == 45 * 6 * 6);
  CHECK(bad == 0);
}

TEST_CASE("igemm: extreme codes up to the overflow limit K = max_k") {
  for (idx K : {idx(4095), idx(65792), ig::max_k}) {
    for (int w : {-128, 127}) {
      problem p{3, 17, K, K + 1, K, 17, {}, {}};
      p.A.assign(static_cast<std::size_t>(p.M * p.lda), 255);
      p.W.assign(static_cast<std::size_t>(p.N * p.ldw), static_cast<std::int8_t>(w));
      CHECK(matches_ref(p, gemm_default));
      CHECK(matches_ref(p, ig::detail::gemm_portable));
#if PTQ_IGEMM_X86
      if (ig::detail::has_avx2()) CHECK(matches_ref(p, ig::detail::gemm_avx2));
#endif
      std::vector<std::int32_t> C(static_cast<std::size_t>(p.M * p.ldc));
      ig::gemm_u8s8s32(p.M, p.A.data(), p.lda, ig::packed_weights(p.W.data(), p.N, K, p.ldw), C.data(), p.ldc);
      CHECK(double(C[0]) == 255.0 * w * double(K));
      CHECK(double(C[p.M * p.ldc - 1]) == 255.0 * w * double(K));
    }
  }
}

TEST_CASE("igemm: mixed extremes (A in {0, 255}, W in {-128, 127}) at a tile-unfriendly shape") {
  problem p = random_problem(13, 37, 1001, 2, 99);
  for (auto& a : p.A) a = (a & 1) ? 255 : 0;
  for (auto& w : p.W) w = (w & 1) ? 127 : -128;
  CHECK(matches_ref(p, gemm_default));
  CHECK(matches_ref(p, ig::detail::gemm_portable));
#if PTQ_IGEMM_X86
  // AVX2's exactness: vpmaddubsw would saturate 255 x 127 + 255 x 127 = 64770 to 32767 in int16.
  if (ig::detail::has_avx2()) CHECK(matches_ref(p, ig::detail::gemm_avx2));
#endif
}

TEST_CASE("igemm: the packed weights' shape, column sums and copies") {
  const problem p = random_problem(1, 45, 10, 2, 5);
  const ig::packed_weights w(p.W.data(), 45, 10, p.ldw);
  CHECK(w.n() == 45);
  CHECK(w.k() == 10);
  CHECK(w.k_groups() == 3);
  CHECK(w.blocks() == 2);
  CHECK(reinterpret_cast<std::uintptr_t>(w.panel(0)) % 64 == 0);
  for (idx j = 0; j < 45; ++j) {
    std::int32_t s = 0;
    for (idx k = 0; k < 10; ++k) s += p.W[j * p.ldw + k];
    CHECK(w.col_sums()[j] == s);
  }
  // The ones column of the row sums: column 45 is lane 13 of block 1; with N = 64 a block of its own.
  const ig::packed_weights ws(p.W.data(), 45, 10, p.ldw, true);
  CHECK(ws.row_sums());
  CHECK(!w.row_sums());
  CHECK(ws.blocks() == 2);
  CHECK(ws.sum_lane(0) == -1);
  CHECK(ws.sum_lane(1) == 13);
  CHECK(ws.block_cols(1) == 13);
  const problem p64 = random_problem(1, 64, 10, 0, 5);
  const ig::packed_weights w64(p64.W.data(), 64, 10, 10, true);
  CHECK(w64.blocks() == 3);
  CHECK(w64.block_cols(2) == 0);
  CHECK(w64.sum_lane(2) == 0);
  // A copy packs the same bytes at its own aligned address.
  const ig::packed_weights copy = w;
  CHECK(reinterpret_cast<std::uintptr_t>(copy.panel(1)) % 64 == 0);
  problem q = random_problem(5, 45, 10, 2, 5);
  std::vector<std::int32_t> a(5 * 45), b(5 * 45);
  ig::gemm_u8s8s32(5, q.A.data(), q.lda, w, a.data(), 45);
  ig::gemm_u8s8s32(5, q.A.data(), q.lda, copy, b.data(), 45);
  CHECK(a == b);
}

TEST_CASE("igemm: M = 0 writes nothing - bad arguments throw ptq::error") {
  const problem p = random_problem(2, 4, 8, 0, 3);
  const ig::packed_weights w(p.W.data(), 4, 8, 8);
  std::int32_t c = 42;
  ig::gemm_u8s8s32(0, p.A.data(), 8, w, &c, 4);
  CHECK(c == 42);
  std::vector<std::int32_t> C(8);
  CHECK_THROWS_AS(ig::packed_weights(p.W.data(), 4, 8, 7), ptq::error);                      // ldw < K
  CHECK_THROWS_AS(ig::packed_weights(p.W.data(), 0, 8, 8), ptq::error);                      // N = 0
  CHECK_THROWS_AS(ig::packed_weights(p.W.data(), 1, ig::max_k + 1, ig::max_k + 1), ptq::error);  // K > max_k
  CHECK_THROWS_AS(ig::packed_weights(nullptr, 4, 8, 8), ptq::error);
  CHECK_THROWS_AS(ig::gemm_u8s8s32(2, p.A.data(), 7, w, C.data(), 4), ptq::error);  // lda < K
  CHECK_THROWS_AS(ig::gemm_u8s8s32(2, p.A.data(), 8, w, C.data(), 3), ptq::error);  // ldc < N
  CHECK_THROWS_AS(ig::gemm_u8s8s32(-1, p.A.data(), 8, w, C.data(), 4), ptq::error);
  CHECK_THROWS_AS(ig::gemm_u8s8s32(2, p.A.data(), 8, ig::packed_weights(), C.data(), 4), ptq::error);
  std::int32_t rs[2];
  CHECK_THROWS_AS(ig::gemm_u8s8s32(2, p.A.data(), 8, w, C.data(), 4, rs), ptq::error);  // no ones column
  CHECK_THROWS_AS(ig::gemm_u8s8s32_ref(1, 1, 8, p.A.data(), 7, p.W.data(), 8, C.data(), 1), ptq::error);
}

}  // namespace ptq_test_igemm
