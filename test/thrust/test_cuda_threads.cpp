// test_cuda_threads.cpp: ptq::gpu's kernels, every (block, thread) of a launch run on the CPU (thread_work.hpp), against the core and a naive loop.
//
// No GPU here: this runs the kernels' own per-thread code (index math, chunking, slices,
// arithmetic) sequentially with g++; what the CPU cannot check is the CUDA runtime
// side (launches, atomics, cub::BlockReduce), which test/cuda/test_cuda.cu covers on a GPU.
#include <doctest/doctest.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <limits>
#include <random>
#include <vector>

#include "ptq/cuda/thread_work.hpp"
#include "../sanitizers.hpp"
#include "device_test_util.hpp"

// Everything of this file in its own namespace: the test binary is a unity build.
namespace ptq_test_cuda_threads {

namespace {

using namespace device_test;
namespace k = ptq::gpu::kernels;
using ptq::device::affine_coef;

// Odd sizes, rows around the short/long boundary (tile / 2 = 1024) and around a tile
// (2048), many short rows, one long row.
const shape shapes[] = {{1, 1, 1},    {1, 1, 7},    {1, 7, 1},    {3, 31, 11},   {1, 1, 1023},   {1, 1, 1024},
                        {1, 3, 2047}, {2, 3, 2048}, {1, 2, 2049}, {16, 64, 49},  {7, 163, 919},  {2, 64, 4099},
                        {1, 1, 300007}, {300007, 1, 1}};

// Room past the end of x and y, filled with a sentinel that must stay (no read or write
// beyond the tensor: a write would show here, a read of it would make a wrong value).
constexpr std::size_t pad = 2 * k::tile;

// Every (block, thread) of a grid of g blocks, blocks in reverse order (a GPU runs them
// in any order; reversed, a chunk that overran into the next row would overwrite it
// after it was written); returns the smallest recorded index.
template <bool Record, class T, class Chunks>
unsigned long long launch(unsigned g, const T* x, T* y, const Chunks& chunks, ptq::index count) {
  unsigned long long first = ptq::gpu::no_nonfinite;
  for (unsigned b = g; b-- > 0;)
    for (unsigned t = 0; t < static_cast<unsigned>(k::block); ++t) {
      const unsigned long long f = k::fake_quantize_thread<Record>(b, t, g, x, y, chunks, count);
      first = f < first ? f : first;
    }
  return first;
}

template <class T>
void run_both_chunkings(const std::vector<T>& x, const shape& s, const std::vector<affine_coef<T>>& coef,
                        unsigned g, std::vector<T>& y_rows, std::vector<T>& y_flat, unsigned long long* first) {
  const ptq::index n = s.size(), per_row = (s.inner + k::tile - 1) / k::tile;
  std::vector<T> xp = x, yp(x.size() + pad, T(-7));
  xp.resize(x.size() + pad, std::numeric_limits<T>::quiet_NaN());
  first[0] = launch<true>(g, xp.data(), yp.data(), k::row_tiles<T>{coef.data(), s.inner, s.channels, per_row},
                          s.rows() * per_row);
  CHECK(std::count(yp.begin() + static_cast<std::ptrdiff_t>(x.size()), yp.end(), T(-7)) == static_cast<std::ptrdiff_t>(pad));
  y_rows.assign(yp.begin(), yp.begin() + static_cast<std::ptrdiff_t>(x.size()));
  yp.assign(yp.size(), T(-7));
  first[1] = launch<true>(g, xp.data(), yp.data(),
                          k::flat_chunks<T>{coef.data(), ptq::device::channel_of(static_cast<std::size_t>(n), s.inner, s.channels), n},
                          (n + k::tile - 1) / k::tile);
  CHECK(std::count(yp.begin() + static_cast<std::ptrdiff_t>(x.size()), yp.end(), T(-7)) == static_cast<std::ptrdiff_t>(pad));
  y_flat.assign(yp.begin(), yp.begin() + static_cast<std::ptrdiff_t>(x.size()));
}

}  // namespace

TEST_CASE_TEMPLATE("CUDA fake-quantize kernel run thread by thread on the CPU equals the core bit for bit", T, float,
                   double) {
  std::mt19937_64 gen(71);
  for (const shape& s : shapes) {
    CAPTURE(s.outer);
    CAPTURE(s.channels);
    CAPTURE(s.inner);
    std::vector<T> x = make_data<T>(gen, s.size());
    const auto p = ptq::quant_params<T>::per_channel(random_ranges(gen, s.channels), random_bits(gen, s.channels, 16));
    const std::vector<affine_coef<T>> coef = ptq::device::make_coefs(p);
    std::vector<T> want(x.size());
    ptq::gemmlowp_quantizer::fake_quantize(rows_of(x, s), p, ptq::row_map<T>(want.data(), s.rows(), s.inner));

    // Grid-stride loops of many, a few and one chunk per block. Under the sanitizers only a
    // few (every element is still read and written through the same index math; the ci
    // preset runs all three).
    const std::vector<unsigned> grids =
        ptq_test::sanitized ? std::vector<unsigned>{3u} : std::vector<unsigned>{1u, 3u, 64u};
    for (unsigned g : grids) {
      CAPTURE(g);
      std::vector<T> y_rows(x.size(), T(42)), y_flat(x.size(), T(42));
      unsigned long long first[2];
      run_both_chunkings(x, s, coef, g, y_rows, y_flat, first);
      CHECK(same_bits(y_rows, want));
      CHECK(same_bits(y_flat, want));
      CHECK(first[0] == ptq::gpu::no_nonfinite);
      CHECK(first[1] == ptq::gpu::no_nonfinite);
    }
    // In place, as the ResNet example calls it.
    std::vector<T> z = x;
    const ptq::index n = s.size();
    launch<false>(5, z.data(), z.data(),
                  k::flat_chunks<T>{coef.data(), ptq::device::channel_of(static_cast<std::size_t>(n), s.inner, s.channels), n},
                  (n + k::tile - 1) / k::tile);
    CHECK(same_bits(z, want));

    // Non-finite values: the smallest index is recorded; every other element is still
    // the core's value of its own input (elements are independent).
    if (x.size() >= 3) {
      const std::size_t a = x.size() / 3, b = x.size() - 1;
      std::vector<T> bad = x;
      bad[b] = std::numeric_limits<T>::quiet_NaN();
      bad[a] = std::numeric_limits<T>::infinity();
      std::vector<T> y_rows(x.size()), y_flat(x.size());
      unsigned long long first[2];
      run_both_chunkings(bad, s, coef, 7, y_rows, y_flat, first);
      CHECK(first[0] == a);
      CHECK(first[1] == a);
      for (std::size_t i : {a, b}) y_rows[i] = y_flat[i] = want[i];
      CHECK(same_bits(y_rows, want));
      CHECK(same_bits(y_flat, want));
    }
  }
}

namespace {

// Channel c's partial as the kernels form it: blocks (c, s) for s in order, each the
// combination of its 256 threads' partials (cub::BlockReduce's role; any order).
template <bool Deviation, class T>
k::moments_partial channel_by_threads(const std::vector<T>& x, const k::slice_view& v, ptq::index slices,
                                      ptq::index c, double centre) {
  k::moments_partial r = k::empty_partial();
  for (ptq::index s = 0; s < slices; ++s) {
    if (s * v.slice_len >= v.per_channel) continue;  // empty slice: the identity
    k::moments_partial blk = k::empty_partial();
    for (unsigned t = 0; t < static_cast<unsigned>(k::block); ++t)
      blk = k::combine_partials{}(blk, k::channel_partial_thread<Deviation>(t, c, s, x.data(), v, centre));
    r = k::combine_partials{}(r, blk);
  }
  return r;
}

}  // namespace

TEST_CASE_TEMPLATE("CUDA statistics kernel run thread by thread on the CPU equals a naive double loop", T, float,
                   double) {
  std::mt19937_64 gen(72);
  for (const shape& s : shapes) {
    CAPTURE(s.outer);
    CAPTURE(s.channels);
    CAPTURE(s.inner);
    const std::vector<T> x = make_data<T>(gen, s.size());
    const ptq::index per_channel = s.outer * s.inner;
    // Under the sanitizers one slice and several uneven ones (the ci preset runs all four).
    const std::vector<ptq::index> slice_counts =
        ptq_test::sanitized ? std::vector<ptq::index>{1, 5} : std::vector<ptq::index>{1, 2, 5, 17};
    for (ptq::index slices : slice_counts)
      for (bool flat : {true, false})
        for (bool narrow : {true, false}) {
          CAPTURE(slices);
          CAPTURE(flat);
          CAPTURE(narrow);
          const k::slice_view v{s.inner, s.channels, per_channel, (per_channel + slices - 1) / slices,
                                ptq::device::fast_divmod(narrow ? static_cast<std::uint32_t>(s.inner) : 1u), flat,
                                narrow};
          for (ptq::index c = 0; c < s.channels; ++c) {
            double sum = 0, lo = HUGE_VAL, hi = -HUGE_VAL;
            for (ptq::index o = 0; o < s.outer; ++o)
              for (ptq::index j = 0; j < s.inner; ++j) {
                const double e = static_cast<double>(x[static_cast<std::size_t>((o * s.channels + c) * s.inner + j)]);
                sum += e, lo = std::min(lo, e), hi = std::max(hi, e);
              }
            const double m = sum / static_cast<double>(per_channel) + 0.125;  // any centre
            double ab = 0, sq = 0;
            for (ptq::index o = 0; o < s.outer; ++o)
              for (ptq::index j = 0; j < s.inner; ++j) {
                const double d = static_cast<double>(x[static_cast<std::size_t>((o * s.channels + c) * s.inner + j)]) - m;
                ab += std::abs(d), sq += d * d;
              }
            const k::moments_partial p1 = channel_by_threads<false>(x, v, slices, c, 0.0);
            const k::moments_partial p2 = channel_by_threads<true>(x, v, slices, c, m);
            CHECK(p1.s1 == doctest::Approx(sum).epsilon(1e-9).scale(1.0));
            CHECK(p1.lo == lo);
            CHECK(p1.hi == hi);
            CHECK(p2.s1 == doctest::Approx(ab).epsilon(1e-9));
            CHECK(p2.s2 == doctest::Approx(sq).epsilon(1e-9));
            CHECK(p2.lo == lo);
            CHECK(p2.hi == hi);
          }
        }
  }
}

}  // namespace ptq_test_cuda_threads
