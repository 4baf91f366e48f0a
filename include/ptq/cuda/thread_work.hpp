// thread_work.hpp: what one thread of ptq::gpu's kernels computes, as plain host/device C++ (no CUDA runtime, no CUB).
//
// The kernels of quantizer.cuh and statistics.cuh are thin shells around these
// functions: they pass blockIdx / threadIdx / gridDim in and do the block-level part
// (the atomicMin of a flag, cub::BlockReduce). Being PTQ_HOST_DEVICE, the same
// functions also compile with g++, so the tests run every (block, thread) of a launch
// on the CPU against the core (test/thrust/test_cuda_threads.cpp): the kernels' index
// math and arithmetic are checked without a GPU.
#pragma once

#include <cmath>
#include <cstdint>

#include "../thrust/common.hpp"

#if defined(__CUDA_ARCH__)
#define PTQ_UNROLL _Pragma("unroll")
#else
#define PTQ_UNROLL
#endif

namespace ptq {
namespace gpu {

using ptq::device::affine_coef;

constexpr unsigned long long no_nonfinite = ~0ull;

namespace kernels {

constexpr int block = 256;
constexpr int per_thread = 8;  // elements per thread and tile
constexpr int tile = block * per_thread;

template <class T>
PTQ_HOST_DEVICE inline bool not_finite(T v) {
  return !(v * T(0) == T(0));
}

template <class T>
PTQ_HOST_DEVICE inline T fake_one(T v, const affine_coef<T>& c) {
  return ptq::detail::dequantize_value(ptq::detail::quantize_value(v, c.inv, c.zp, c.qmax), c.zp, c.scale);
}

// ---- fake quantization ------------------------------------------------------------
// The work is cut into chunks of at most `tile` consecutive elements; thread t of a
// block takes a chunk's elements t, t + block, ... (coalesced), and issues all of its
// loads before its first store (per_thread loads in flight), unguarded on full chunks.

// Long rows (cols >= tile / 2): chunk k is a tile of row k / per_row, columns
// [(k % per_row) * tile, +tile): one channel per chunk, its coefficients in registers.
template <class T>
struct row_tiles {
  static constexpr bool per_element = false;
  const affine_coef<T>* coef;
  index cols, channels, per_row;
  struct chunk {
    index base, left;
    affine_coef<T> c;
  };
  PTQ_HOST_DEVICE chunk at(index k) const {
    const index r = k / per_row, j0 = (k - r * per_row) * tile;
    return {r * cols + j0, cols - j0, coef[r % channels]};
  }
  PTQ_HOST_DEVICE affine_coef<T> coef_of(const chunk& w, index) const { return w.c; }
};

// Short rows: chunk k is elements [k * tile, +tile) of the flat tensor, across rows;
// each element's channel (i / cols) % channels by multiply and shift (divmod.hpp), not
// by a 64-bit division per element.
template <class T>
struct flat_chunks {
  static constexpr bool per_element = true;
  const affine_coef<T>* coef;
  device::channel_of channel;
  index n;
  struct chunk {
    index base, left;
  };
  PTQ_HOST_DEVICE chunk at(index k) const { return {k * tile, n - k * tile}; }
  PTQ_HOST_DEVICE affine_coef<T> coef_of(const chunk&, index i) const { return coef[channel(i)]; }
};

// Thread t of block b, in a grid of g blocks over `count` chunks: y = fake-quantized x
// on its elements. Record (Mode 2): returns the smallest index of a non-finite input it
// read, else no_nonfinite. x and y may be the same array (each element is read once, by
// the thread that then writes it).
template <bool Record, class T, class Chunks>
PTQ_HOST_DEVICE unsigned long long fake_quantize_thread(unsigned b, unsigned t, unsigned g, const T* x, T* y,
                                                        const Chunks& chunks, index count) {
  unsigned long long first = no_nonfinite;
  for (index k = b; k < count; k += g) {
    const typename Chunks::chunk w = chunks.at(k);
    T v[per_thread];
    affine_coef<T> cf[Chunks::per_element ? per_thread : 1];  // loaded with the values, not behind a store
    const bool full = w.left >= tile;
    PTQ_UNROLL
    for (int u = 0; u < per_thread; ++u)
      if (full || u * block + t < w.left) {
        const index i = w.base + u * block + t;
        v[u] = x[i];
        if constexpr (Chunks::per_element) cf[u] = chunks.coef_of(w, i);
      }
    PTQ_UNROLL
    for (int u = 0; u < per_thread; ++u) {
      const index i = w.base + u * block + t;
      if (full || u * block + t < w.left) {
        if (Record && not_finite(v[u]) && static_cast<unsigned long long>(i) < first)
          first = static_cast<unsigned long long>(i);
        if constexpr (Chunks::per_element)
          y[i] = fake_one(v[u], cf[u]);
        else
          y[i] = fake_one(v[u], chunks.coef_of(w, i));
      }
    }
  }
  return first;
}

// ---- per-channel statistics ---------------------------------------------------------

struct moments_partial {
  double s1, s2, lo, hi;
};
struct combine_partials {
  PTQ_HOST_DEVICE moments_partial operator()(const moments_partial& a, const moments_partial& b) const {
    return {a.s1 + b.s1, a.s2 + b.s2, a.lo < b.lo ? a.lo : b.lo, a.hi > b.hi ? a.hi : b.hi};
  }
};
PTQ_HOST_DEVICE inline moments_partial empty_partial() {  // combine_partials' identity
  return {0.0, 0.0, HUGE_VAL, -HUGE_VAL};
}

// Channel c's values k in [0, per_channel): value k at row (k / cols) * channels + c,
// column k % cols. The slice s is [s * slice_len, min((s + 1) * slice_len, per_channel)).
struct slice_view {
  index cols, channels, per_channel, slice_len;
  device::fast_divmod by_cols;  // cols, when narrow
  bool flat;    // short rows (cols < tile / 2): the slice is read as one range
  bool narrow;  // per_channel < 2^32: k / cols by multiply and shift
  PTQ_HOST_DEVICE index row_of(index k) const {
    return narrow ? static_cast<index>(by_cols.div(static_cast<std::uint32_t>(k))) : k / cols;
  }
};

// Thread t's partial of block (c, s): with `flat`, thread t reads the slice's values
// t, t + block, ... (every thread has work however short a row is: 7x7 maps); else row
// segment by row segment, threads along the columns, no division. Deviation: s1 = Σ
// |x - centre|, s2 = Σ (x - centre)^2 (one rounding per step, fma); else s1 = Σ x. All
// threads start min and max from the slice's first value, so a thread without values
// returns a valid partial. The slice must not be empty.
template <bool Deviation, class T>
PTQ_HOST_DEVICE moments_partial channel_partial_thread(unsigned t, index c, index s, const T* x,
                                                       const slice_view& v, double centre) {
  const index k0 = s * v.slice_len, k1 = k0 + v.slice_len < v.per_channel ? k0 + v.slice_len : v.per_channel;
  double a = 0, q = 0;
  const index o0 = v.row_of(k0);
  T lo = x[(o0 * v.channels + c) * v.cols + (k0 - o0 * v.cols)], hi = lo;
  const auto take = [&](const T e) {
    lo = e < lo ? e : lo;
    hi = e > hi ? e : hi;
    if constexpr (Deviation) {
      const double d = static_cast<double>(e) - centre;
#if defined(__CUDA_ARCH__)
      a += fabs(d);
      q = __fma_rn(d, d, q);
#else
      a += std::fabs(d);
      q = std::fma(d, d, q);
#endif
    } else {
      a += static_cast<double>(e);
    }
  };
  if (v.flat) {
    for (index k = k0 + t; k < k1; k += block) {
      const index o = v.row_of(k);
      take(x[(o * v.channels + c) * v.cols + (k - o * v.cols)]);
    }
  } else {
    for (index o = k0 / v.cols; o * v.cols < k1; ++o) {
      const index j0 = o * v.cols > k0 ? 0 : k0 - o * v.cols;
      const index j1 = (o + 1) * v.cols < k1 ? v.cols : k1 - o * v.cols;
      const T* row = x + (o * v.channels + c) * v.cols;
      for (index j = j0 + t; j < j1; j += block) take(row[j]);
    }
  }
  return {a, q, static_cast<double>(lo), static_cast<double>(hi)};
}

}  // namespace kernels
}  // namespace gpu
}  // namespace ptq
