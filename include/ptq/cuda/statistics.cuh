// statistics.cuh: per-channel calibration sums of NCHW data on CUDA with CUB block reductions (two passes).
//
// Pass 1, channel_moments:     per channel  Σ x (double), min, max
// Pass 2, channel_deviations:  per channel  Σ |x - centre_c|, Σ (x - centre_c)^2 (double), min, max
//
// The calibration statistics of the core (mean = clamp(Σx / n, min, max), b, std,
// batch_mean and exact modes) follow from these on the host: add_batch() below feeds
// them to a ptq::device::calibration_statistics, whose host math is the core's.
//
// Work split: channel c's n_c = outer * cols values (rows c, c + C, ... of the
// rows x cols view) are cut into `slices` contiguous ranges; block (c, slice) reads its
// range (coalesced: consecutive threads read consecutive columns; see for_slice), each
// thread summing in double, then cub::BlockReduce combines the block and writes one
// partial; a second kernel sums each channel's partials in slice order (deterministic:
// the same result on every run on a given device; the slice count follows the device).
//
// Entry points follow CUB: the first call with d_temp_storage == nullptr sets
// temp_storage_bytes (it depends on the shape, the current device's SM count and the
// kernel's occupancy there); the
// second runs asynchronously on `stream` and returns the launch's cudaError_t
// (cudaErrorInvalidValue for bad shapes). Outputs are device arrays of `channels`
// doubles. Non-finite data make the sums non-finite; add_batch() then locates the
// first one and throws ptq::error like the core.
#pragma once

#if !defined(__CUDACC__)
#error "ptq/cuda/*.cuh are CUDA headers: compile them with nvcc (on the host use ptq/thrust.hpp)"
#endif

#include <cub/block/block_reduce.cuh>
#include <cuda_runtime.h>

#include <cstddef>
#include <vector>

#include "../thrust/statistics.hpp"
#include "quantizer.cuh"

namespace ptq {
namespace gpu {
namespace kernels {

// Block (c, s) sums slice s of channel c (thread_work.hpp: channel_partial_thread,
// then cub::BlockReduce) into out[c * slices + s].
template <bool Deviation, class T>
__global__ void __launch_bounds__(block)
    channel_partials(const T* __restrict__ x, slice_view v, const double* __restrict__ centre,
                     moments_partial* __restrict__ out) {
  const index c = blockIdx.x, s = blockIdx.y, slices = gridDim.y;
  using reduce = cub::BlockReduce<moments_partial, block>;
  __shared__ typename reduce::TempStorage temp;
  if (s * v.slice_len >= v.per_channel) {  // an empty slice
    if (threadIdx.x == 0) out[c * slices + s] = empty_partial();
    return;
  }
  const moments_partial mine = channel_partial_thread<Deviation>(threadIdx.x, c, s, x, v, Deviation ? centre[c] : 0.0);
  const moments_partial all = reduce(temp).Reduce(mine, combine_partials{});
  if (threadIdx.x == 0) out[c * slices + s] = all;
}

// One thread per channel: its slices' partials in order.
__global__ void finish_channels(const moments_partial* __restrict__ partials, index channels, index slices,
                                double* s1, double* s2, double* lo, double* hi) {
  const index c = blockIdx.x * static_cast<index>(blockDim.x) + threadIdx.x;
  if (c >= channels) return;
  moments_partial r = partials[c * slices];
  for (index k = 1; k < slices; ++k) r = combine_partials{}(r, partials[c * slices + k]);
  s1[c] = r.s1;
  if (s2) s2[c] = r.s2;
  lo[c] = r.lo;
  hi[c] = r.hi;
}

// Slices per channel: as many blocks as the GPU holds at once (occupancy of the kernel
// at hand), rounded DOWN to whole slices per channel so that no block is left for a
// nearly empty second wave; at least one slice, each at least a tile long. At most
// 65535 (gridDim.y).
template <bool Deviation, class T>
index slices_for(index per_channel, index channels) {
  int dev = 0, sms = 108, per_sm = 8;
  if (cudaGetDevice(&dev) == cudaSuccess) cudaDeviceGetAttribute(&sms, cudaDevAttrMultiProcessorCount, dev);
  if (cudaOccupancyMaxActiveBlocksPerMultiprocessor(&per_sm, channel_partials<Deviation, T>, block, 0) != cudaSuccess ||
      per_sm < 1)
    per_sm = 1;
  const index resident = static_cast<index>(sms) * per_sm;
  index n = resident / channels;
  const index most = (per_channel + tile - 1) / tile;
  n = n < most ? n : most;
  n = n < 65535 ? n : 65535;
  return n > 0 ? n : 1;
}

template <bool Deviation, class T>
cudaError_t run(void* d_temp_storage, std::size_t& temp_storage_bytes, const T* d_in, index rows, index cols,
                index channels, const double* d_centre, double* d_s1, double* d_s2, double* d_min, double* d_max,
                cudaStream_t stream) {
  if (rows < 1 || cols < 1 || channels < 1 || rows % channels != 0 || channels > 0x7fffffff)
    return cudaErrorInvalidValue;
  const index per_channel = rows / channels * cols;
  const index slices = slices_for<Deviation, T>(per_channel, channels);
  const std::size_t need = static_cast<std::size_t>(slices * channels) * sizeof(moments_partial);
  if (d_temp_storage == nullptr) {
    temp_storage_bytes = need;
    return cudaSuccess;
  }
  if (temp_storage_bytes < need || d_in == nullptr || d_s1 == nullptr || d_min == nullptr || d_max == nullptr ||
      (Deviation && (d_centre == nullptr || d_s2 == nullptr)))
    return cudaErrorInvalidValue;
  auto* partials = static_cast<moments_partial*>(d_temp_storage);
  const index slice_len = (per_channel + slices - 1) / slices;
  const bool narrow = per_channel <= 0xffffffffll;
  const slice_view v{cols, channels, per_channel, slice_len,
                     device::fast_divmod(narrow ? static_cast<std::uint32_t>(cols) : 1u), cols < tile / 2, narrow};
  channel_partials<Deviation><<<dim3(static_cast<unsigned>(channels), static_cast<unsigned>(slices)), block, 0, stream>>>(
      d_in, v, d_centre, partials);
  finish_channels<<<static_cast<unsigned>((channels + 127) / 128), 128, 0, stream>>>(partials, channels, slices, d_s1,
                                                                                    d_s2, d_min, d_max);
  return cudaPeekAtLastError();
}

}  // namespace kernels

// Pass 1 over the rows x cols view: d_sum, d_min, d_max (channels doubles each).
template <class T>
cudaError_t channel_moments(void* d_temp_storage, std::size_t& temp_storage_bytes, const T* d_in, index rows,
                            index cols, index channels, double* d_sum, double* d_min, double* d_max,
                            cudaStream_t stream = 0) {
  return kernels::run<false>(d_temp_storage, temp_storage_bytes, d_in, rows, cols, channels, nullptr, d_sum, nullptr,
                             d_min, d_max, stream);
}

// Pass 2 about d_centre (channels doubles): d_abs = Σ |x - centre|, d_sq = Σ (x - centre)^2, d_min, d_max.
template <class T>
cudaError_t channel_deviations(void* d_temp_storage, std::size_t& temp_storage_bytes, const T* d_in, index rows,
                               index cols, index channels, const double* d_centre, double* d_abs, double* d_sq,
                               double* d_min, double* d_max, cudaStream_t stream = 0) {
  return kernels::run<true>(d_temp_storage, temp_storage_bytes, d_in, rows, cols, channels, d_centre, d_abs, d_sq,
                            d_min, d_max, stream);
}

namespace detail {

// Device scratch for the host wrappers: temp storage and 5 * channels doubles.
// Stream-ordered (cudaMallocAsync's pool): no device-wide synchronisation per batch.
struct sums_scratch {
  cudaStream_t stream;
  void* temp = nullptr;
  std::size_t temp_bytes = 0;
  double* out = nullptr;
  explicit sums_scratch(cudaStream_t s) : stream(s) {}
  ~sums_scratch() {
    if (temp) cudaFreeAsync(temp, stream);
    if (out) cudaFreeAsync(out, stream);
  }
};

// squares: whether Σ (x - centre)^2 is used (the batch_mean mode's pass 2); the exact
// mode's pass 2 uses only Σ |x - centre|, min and max, and reports s2 = 0 like the core.
template <bool Deviation, class T>
device::channel_sums sums(const T* d_in, index rows, index cols, index channels, const std::vector<double>* centre,
                          bool squares, cudaStream_t stream, const char* where) {
  const auto C = static_cast<std::size_t>(channels);
  sums_scratch s(stream);
  throw_if(kernels::run<Deviation>(nullptr, s.temp_bytes, d_in, rows, cols, channels, nullptr, nullptr, nullptr,
                                   nullptr, nullptr, stream),
           where, "temp storage query");
  throw_if(cudaMallocAsync(&s.temp, s.temp_bytes, stream), where, "cudaMallocAsync");
  throw_if(cudaMallocAsync(reinterpret_cast<void**>(&s.out), 5 * C * sizeof(double), stream), where, "cudaMallocAsync");
  double* d_centre = s.out + 4 * C;
  if (Deviation)
    throw_if(cudaMemcpyAsync(d_centre, centre->data(), C * sizeof(double), cudaMemcpyHostToDevice, stream), where,
             "cudaMemcpyAsync");
  throw_if(kernels::run<Deviation>(s.temp, s.temp_bytes, d_in, rows, cols, channels, d_centre, s.out, s.out + C,
                                   s.out + 2 * C, s.out + 3 * C, stream),
           where, "reduction");
  std::vector<double> h(4 * C);
  throw_if(cudaMemcpyAsync(h.data(), s.out, 4 * C * sizeof(double), cudaMemcpyDeviceToHost, stream), where,
           "cudaMemcpyAsync");
  throw_if(cudaStreamSynchronize(stream), where, "cudaStreamSynchronize");
  device::channel_sums r;
  r.count = rows / channels * cols;
  r.s1.assign(h.begin(), h.begin() + C);
  r.s2.assign(h.begin() + C, h.begin() + 2 * C);
  r.lo.assign(h.begin() + 2 * C, h.begin() + 3 * C);
  r.hi.assign(h.begin() + 3 * C, h.end());
  if (!Deviation || !squares) std::fill(r.s2.begin(), r.s2.end(), 0.0);
  auto policy = thrust::cuda::par.on(stream);
  for (std::size_t c = 0; c < C; ++c)
    if (!std::isfinite(r.s1[c]) || !std::isfinite(r.s2[c]))
      device::impl::fail_not_finite(policy,
                                    device::span<const T>(d_in, static_cast<std::size_t>(rows * cols)), cols, channels,
                                    static_cast<index>(c), where,
                                    !Deviation ? "sum" : squares ? "sum of squared deviations" : "sum of absolute deviations");
  return r;
}

}  // namespace detail

// One batch into acc with the CUB kernels (synchronous): pass 1, the batch mean on the
// host, pass 2; or, once acc is in the exact mode's deviation pass, pass 2 about its
// frozen mean. Throws ptq::error like the core (non-finite data named), acc unchanged.
template <class T>
void add_batch(device::calibration_statistics& acc, const T* d_in, index rows, index cols, cudaStream_t stream = 0) {
  static constexpr const char* where = "ptq::gpu::add_batch";
  ptq::detail::require(rows >= 1 && cols >= 1, where, "the tensor is empty (", rows, " x ", cols, ")");
  ptq::detail::check_channels(rows, cols, acc.channels(), where);
  const index C = acc.channels();
  if (acc.pass() == stats_pass::deviation) {
    const std::vector<double> centre(acc.mean().data(), acc.mean().data() + C);
    acc.add_deviation_sums(detail::sums<true>(d_in, rows, cols, C, &centre, false, stream, where));
    return;
  }
  const device::channel_sums m = detail::sums<false>(d_in, rows, cols, C, nullptr, false, stream, where);
  const std::vector<double> centre = device::calibration_statistics::batch_mean(m);
  acc.add_batch_sums(m, detail::sums<true>(d_in, rows, cols, C, &centre, true, stream, where));
}

}  // namespace gpu
}  // namespace ptq
