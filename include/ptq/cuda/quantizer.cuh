// quantizer.cuh: fused per-channel fake quantization on CUDA (CUB conventions), per-channel bit widths.
//
// The same per-element arithmetic as the core and ptq::device (the PTQ_HOST_DEVICE
// ptq::detail::quantize_value / dequantize_value), with per-channel coefficients
// computed on the host by the core (ptq::device::make_coefs / device_quant_params):
//
//   out = (clamp(nearbyint(x * inv) + zp, 0, qmax) - zp) * scale     round half to even
//
// qmax = 2^bits - 1 per channel, so one launch handles any mix of widths 0..16.
// Row view as everywhere in ptq: rows x cols, row r of channel r % channels (NCHW:
// rows = N*C, cols = H*W).
//
// Entry point (CUB's conventions): a first call with d_temp_storage == nullptr sets
// temp_storage_bytes and does nothing else; the second does the work, asynchronously
// on `stream`, and returns the launch's cudaError_t (cudaErrorInvalidValue for bad
// shapes). Non-finite inputs (NaN, Inf), mode by mode:
//   check::before  (default) a validating reduction first, then the quantize kernel,
//                  which writes nothing if a non-finite value was found: d_out is left
//                  untouched, as the core guarantees. Reads the input twice: 3n bytes
//                  moved against a copy's 2n, so at most about 2/3 of copy bandwidth.
//   check::fused   one pass: quantize and watch for non-finite values in the same read;
//                  d_out is written in any case (a non-finite x gives NaN or a clamped
//                  code's value). For speed when the data are known to be finite, with
//                  the error still reported.
//   check::none    one pass, no check.
// Either check writes the smallest index of a non-finite element (or ~0ull if none) to
// *d_first_nonfinite when that is not nullptr. fake_quantize_checked() below is a
// synchronous host wrapper that throws ptq::error like the core.
#pragma once

#if !defined(__CUDACC__)
#error "ptq/cuda/*.cuh are CUDA headers: compile them with nvcc (on the host use ptq/thrust.hpp)"
#endif

#include <cuda_runtime.h>

#include <cstddef>
#include <cstdint>

#include "../thrust/common.hpp"

namespace ptq {
namespace gpu {

using ptq::device::affine_coef;

enum class check { before, fused, none };

constexpr unsigned long long no_nonfinite = ~0ull;

namespace kernels {

constexpr int block = 256;
constexpr int per_thread = 8;  // elements per thread and tile
constexpr int tile = block * per_thread;

template <class T>
__device__ __forceinline__ bool not_finite(T v) {
  return !(v * T(0) == T(0));
}

// Smallest index of a non-finite element into *flag (atomicMin).
template <class T>
__global__ void __launch_bounds__(block) find_nonfinite(const T* __restrict__ x, std::size_t n,
                                                        unsigned long long* flag) {
  unsigned long long first = no_nonfinite;
  for (std::size_t i = blockIdx.x * std::size_t(block) + threadIdx.x; i < n; i += std::size_t(gridDim.x) * block)
    if (not_finite(x[i]) && i < first) first = i;
  if (first != no_nonfinite) atomicMin(flag, first);
}

template <class T>
__device__ __forceinline__ T fake_one(T v, const affine_coef<T>& c) {
  return ptq::detail::dequantize_value(ptq::detail::quantize_value(v, c.inv, c.zp, c.qmax), c.zp, c.scale);
}

// The work is cut into chunks of at most `tile` consecutive elements; thread t of a
// block takes a chunk's elements t, t + block, ... (coalesced), and issues all of its
// loads before its first store (per_thread loads in flight), unguarded on full chunks.
// Mode 0: no check; 1: skip everything if *flag says some input is not finite
// (check::before); 2: record non-finite inputs into *flag (check::fused).
// x and y may be the same array (in place): each element is read once, by the thread
// that then writes it, so neither pointer is __restrict__.
template <int Mode, class T, class Chunks>
__global__ void __launch_bounds__(block)
    fake_quantize_chunks(const T* x, T* y, Chunks chunks, index count, unsigned long long* flag) {
  if (Mode == 1 && *flag != no_nonfinite) return;
  unsigned long long first = no_nonfinite;
  for (index k = blockIdx.x; k < count; k += gridDim.x) {
    const typename Chunks::chunk w = chunks.at(k);
    T v[per_thread];
    affine_coef<T> cf[Chunks::per_element ? per_thread : 1];  // per-element coefficients are loaded
                                                              // with the values, not behind a store
    const bool full = w.left >= tile;
#pragma unroll
    for (int u = 0; u < per_thread; ++u)
      if (full || u * block + threadIdx.x < w.left) {
        const index i = w.base + u * block + threadIdx.x;
        v[u] = x[i];
        if constexpr (Chunks::per_element) cf[u] = chunks.coef_of(w, i);
      }
#pragma unroll
    for (int u = 0; u < per_thread; ++u) {
      const index i = w.base + u * block + threadIdx.x;
      if (full || u * block + threadIdx.x < w.left) {
        if (Mode == 2 && not_finite(v[u]) && static_cast<unsigned long long>(i) < first)
          first = static_cast<unsigned long long>(i);
        if constexpr (Chunks::per_element)
          y[i] = fake_one(v[u], cf[u]);
        else
          y[i] = fake_one(v[u], chunks.coef_of(w, i));
      }
    }
  }
  if (Mode == 2 && first != no_nonfinite) atomicMin(flag, first);
}

// Long rows (cols >= tile / 2): chunk k is a tile of row k / per_row, columns
// [(k % per_row) * tile, +tile): one channel per chunk, its coefficients in registers.
template <class T>
struct row_tiles {
  static constexpr bool per_element = false;
  const affine_coef<T>* __restrict__ coef;
  index cols, channels, per_row;
  struct chunk {
    index base, left;
    affine_coef<T> c;
  };
  __device__ __forceinline__ chunk at(index k) const {
    const index r = k / per_row, j0 = (k - r * per_row) * tile;
    return {r * cols + j0, cols - j0, coef[r % channels]};
  }
  __device__ __forceinline__ affine_coef<T> coef_of(const chunk& w, index) const { return w.c; }
};

// Short rows: chunk k is elements [k * tile, +tile) of the flat tensor, across rows;
// each element's channel (i / cols) % channels by multiply and shift (divmod.hpp), not
// by a 64-bit division per element.
template <class T>
struct flat_chunks {
  static constexpr bool per_element = true;
  const affine_coef<T>* __restrict__ coef;
  device::channel_of channel;
  index n;
  struct chunk {
    index base, left;
  };
  __device__ __forceinline__ chunk at(index k) const { return {k * tile, n - k * tile}; }
  __device__ __forceinline__ affine_coef<T> coef_of(const chunk&, index i) const { return coef[channel(i)]; }
};

inline int grid_for(std::size_t work_items, int per_item = 1) {
  int dev = 0, sms = 108;
  if (cudaGetDevice(&dev) == cudaSuccess) cudaDeviceGetAttribute(&sms, cudaDevAttrMultiProcessorCount, dev);
  const std::size_t cap = static_cast<std::size_t>(sms) * 16;
  const std::size_t want = (work_items + per_item - 1) / per_item;
  return static_cast<int>(want < cap ? (want > 0 ? want : 1) : cap);
}

template <int Mode, class T>
void launch_fake(const T* x, T* y, const affine_coef<T>* coef, index rows, index cols, index channels,
                 unsigned long long* flag, cudaStream_t stream) {
  const index n = rows * cols;
  if (cols >= tile / 2) {
    const index per_row = (cols + tile - 1) / tile, count = rows * per_row;
    fake_quantize_chunks<Mode><<<grid_for(static_cast<std::size_t>(count)), block, 0, stream>>>(
        x, y, row_tiles<T>{coef, cols, channels, per_row}, count, flag);
  } else {
    const index count = (n + tile - 1) / tile;
    fake_quantize_chunks<Mode><<<grid_for(static_cast<std::size_t>(count)), block, 0, stream>>>(
        x, y, flat_chunks<T>{coef, device::channel_of(static_cast<std::size_t>(n), cols, channels), n}, count, flag);
  }
}

}  // namespace kernels

// Fused per-channel fake quantization (see the top). d_in and d_out: rows * cols
// elements (d_out == d_in is allowed, in place); d_coefs: `channels` coefficients.
template <class T>
cudaError_t fake_quantize(void* d_temp_storage, std::size_t& temp_storage_bytes, const T* d_in, T* d_out,
                          const affine_coef<T>* d_coefs, index rows, index cols, index channels,
                          unsigned long long* d_first_nonfinite = nullptr, check mode = check::before,
                          cudaStream_t stream = 0) {
  if (d_temp_storage == nullptr) {
    temp_storage_bytes = 256;  // one flag, padded to CUB's alignment
    return cudaSuccess;
  }
  if (temp_storage_bytes < sizeof(unsigned long long) || rows < 1 || cols < 1 || channels < 1 ||
      rows % channels != 0 || d_in == nullptr || d_out == nullptr || d_coefs == nullptr)
    return cudaErrorInvalidValue;
  auto* flag = static_cast<unsigned long long*>(d_temp_storage);
  cudaError_t e = cudaMemsetAsync(flag, 0xFF, sizeof(unsigned long long), stream);
  if (e != cudaSuccess) return e;
  const std::size_t n = static_cast<std::size_t>(rows) * static_cast<std::size_t>(cols);
  if (mode == check::before) {
    kernels::find_nonfinite<<<kernels::grid_for(n, kernels::block * 4), kernels::block, 0, stream>>>(d_in, n, flag);
    kernels::launch_fake<1>(d_in, d_out, d_coefs, rows, cols, channels, flag, stream);
  } else if (mode == check::fused) {
    kernels::launch_fake<2>(d_in, d_out, d_coefs, rows, cols, channels, flag, stream);
  } else {
    kernels::launch_fake<0>(d_in, d_out, d_coefs, rows, cols, channels, flag, stream);
  }
  e = cudaPeekAtLastError();
  if (e != cudaSuccess) return e;
  if (d_first_nonfinite != nullptr)
    e = cudaMemcpyAsync(d_first_nonfinite, flag, sizeof(unsigned long long), cudaMemcpyDeviceToDevice, stream);
  return e;
}

namespace detail {
inline void throw_if(cudaError_t e, const char* where, const char* what) {
  if (e != cudaSuccess) ptq::detail::fail(where, what, " failed: ", cudaGetErrorString(e));
}
}  // namespace detail

// Synchronous host wrapper with the core's semantics: validates p (the core's checks),
// uploads its coefficients, runs check::before and throws ptq::error naming the first
// non-finite element ("x(r, c) = nan is not finite"), d_out untouched; CUDA failures
// throw ptq::error with CUDA's message.
template <class T>
void fake_quantize_checked(const T* d_in, T* d_out, index rows, index cols, const device::device_quant_params<T>& p,
                           cudaStream_t stream = 0) {
  static constexpr const char* where = "ptq::gpu::fake_quantize_checked";
  ptq::detail::require(rows >= 1 && cols >= 1, where, "the tensor is empty (", rows, " x ", cols, ")");
  ptq::detail::check_channels(rows, cols, p.channels(), where);
  std::size_t bytes = 0;
  fake_quantize<T>(nullptr, bytes, d_in, d_out, p.data(), rows, cols, p.channels(), nullptr, check::before, stream);
  void* temp = nullptr;
  detail::throw_if(cudaMallocAsync(&temp, bytes + sizeof(unsigned long long), stream), where, "cudaMallocAsync");
  auto* first = reinterpret_cast<unsigned long long*>(static_cast<char*>(temp) + bytes);
  cudaError_t e = fake_quantize<T>(temp, bytes, d_in, d_out, p.data(), rows, cols, p.channels(), first,
                                   check::before, stream);
  unsigned long long h = no_nonfinite;
  if (e == cudaSuccess) e = cudaMemcpyAsync(&h, first, sizeof h, cudaMemcpyDeviceToHost, stream);
  if (e == cudaSuccess) e = cudaStreamSynchronize(stream);
  cudaFreeAsync(temp, stream);
  detail::throw_if(e, where, "fake_quantize");
  if (h != no_nonfinite) {
    T v{};
    detail::throw_if(cudaMemcpy(&v, d_in + h, sizeof v, cudaMemcpyDeviceToHost), where, "cudaMemcpy");
    const index i = static_cast<index>(h);
    ptq::detail::fail(where, "x(", i / cols, ", ", i % cols, ") = ", v, " is not finite");
  }
}

}  // namespace gpu
}  // namespace ptq
