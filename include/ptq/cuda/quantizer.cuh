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
#include "thread_work.hpp"

namespace ptq {
namespace gpu {

enum class check { before, fused, none };

namespace kernels {

// Smallest index of a non-finite element into *flag (atomicMin).
template <class T>
__global__ void __launch_bounds__(block) find_nonfinite(const T* __restrict__ x, std::size_t n,
                                                        unsigned long long* flag) {
  unsigned long long first = no_nonfinite;
  for (std::size_t i = blockIdx.x * std::size_t(block) + threadIdx.x; i < n; i += std::size_t(gridDim.x) * block)
    if (not_finite(x[i]) && i < first) first = i;
  if (first != no_nonfinite) atomicMin(flag, first);
}

// Fake quantization over `count` chunks (thread_work.hpp: row_tiles or flat_chunks).
// Mode 0: no check; 1: skip everything if *flag says some input is not finite
// (check::before); 2: record the smallest non-finite input index into *flag
// (check::fused). In place (x == y) is allowed.
template <int Mode, class T, class Chunks>
__global__ void __launch_bounds__(block)
    fake_quantize_chunks(const T* x, T* y, Chunks chunks, index count, unsigned long long* flag) {
  if (Mode == 1 && *flag != no_nonfinite) return;
  const unsigned long long first = fake_quantize_thread<Mode == 2>(blockIdx.x, threadIdx.x, gridDim.x, x, y, chunks, count);
  if (Mode == 2 && first != no_nonfinite) atomicMin(flag, first);
}

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
