// bench_cuda.cu: ptq::gpu (CUB kernels) and ptq::device (Thrust, CUDA backend) beside a device-to-device copy, 64M floats NCHW.
//
// Every benchmark times its iteration with CUDA events (manual time) and counts the
// input tensor's bytes, so its bytes/s over BM_cuda_memcpy_d2d's (same binary, same run)
// is the fraction of a device-to-device copy's bandwidth (the copy counts its n bytes
// too); bench/cuda/cuda_vs_copy.py prints that table from --benchmark_out JSON.
// The argument is the feature map's side: 128 (64 channels of 128x128, the 64M floats of
// the goals), 56, 14 and 7 (ResNet-50's shapes, rows shorter than a tile).
// Per-channel fake quantization: per-channel bits 2..8 (fused kernel), out of place.
// Statistics: one batch of the batch_mean mode = pass 1 + pass 2 kernels.
// Without a GPU the binary prints why and exits 77 (the gpu label's skip code).
// First, before anything else: this file is quantizer.cuh's header check (test/CMakeLists.txt).
#include <ptq/cuda/quantizer.cuh>

#include <benchmark/benchmark.h>

#include <cuda_runtime.h>
#include <thrust/device_vector.h>
#include <thrust/execution_policy.h>

#include <cstdio>
#include <exception>
#include <string>
#include <vector>

#include "../bench_common.hpp"
#include "ptq/cuda/statistics.cuh"
#include "ptq/thrust.hpp"

namespace {

constexpr std::int64_t n64m = std::int64_t(1) << 26;

// 64M floats, seen as N x C x H x W. The default is bench_common's 64 channels of
// 128x128; reshaped(side) views the same memory as ResNet-50's activation shapes
// (C = 256 of 56x56, 1024 of 14x14, 2048 of 7x7), N rounded down, so short rows (the
// kernels' element-wise and flat paths) are measured too.
struct gpu_tensor {
  ptq_bench::nchw shape = ptq_bench::shape_of(n64m);
  thrust::device_vector<float> in, out;
  gpu_tensor() {
    const std::vector<float> h = ptq_bench::random_tensor(static_cast<std::size_t>(n64m));
    in.assign(h.begin(), h.end());
    out.resize(h.size());
  }
  ptq::index rows() const { return shape.n * shape.c; }
  ptq::index cols() const { return shape.h * shape.w; }
  std::int64_t size() const { return shape.n * shape.c * shape.h * shape.w; }
  const float* d_in() const { return thrust::raw_pointer_cast(in.data()); }
  float* d_out() { return thrust::raw_pointer_cast(out.data()); }
};
gpu_tensor& tensor(std::int64_t side = 128) {
  static gpu_tensor t;
  const std::int64_t c = side == 128 ? 64 : side == 56 ? 256 : side == 14 ? 1024 : 2048;
  t.shape = {n64m / (c * side * side), c, side, side};
  return t;
}
void map_sides(benchmark::internal::Benchmark* b) {
  for (std::int64_t side : {128, 56, 14, 7}) b->Arg(side);
}

ptq::quant_params<float> params(ptq::index channels) {
  ptq::channel_ranges r;
  r.lo.resize(channels), r.hi.resize(channels);
  Eigen::VectorXi bits(channels);
  for (ptq::index c = 0; c < channels; ++c) r.lo[c] = -5.0 - 0.01 * c, r.hi[c] = 6.0 + 0.02 * c, bits[c] = 2 + c % 7;
  return ptq::quant_params<float>::per_channel(r, bits);
}

// A failed CUDA call skips the benchmark with CUDA's message (a launch that failed
// would otherwise be timed as a very fast one). Returns true on error.
bool failed(benchmark::State& state, cudaError_t e, const char* what) {
  if (e == cudaSuccess) return false;
  state.SkipWithError((std::string(what) + ": " + cudaGetErrorString(e)).c_str());
  return true;
}

// Runs f() (which returns the cudaError_t of what it launched; the Thrust and host
// wrappers throw instead), then checks cudaGetLastError(): true on any failure, the
// benchmark then skipped.
template <class F>
bool run_failed(benchmark::State& state, F& f) {
  cudaError_t e;
  try {
    e = f();
  } catch (const std::exception& x) {
    state.SkipWithError(x.what());
    return true;
  }
  return failed(state, e, "ptq call") || failed(state, cudaGetLastError(), "cudaGetLastError");
}

// Times f() with CUDA events on stream 0; counts `bytes` per iteration. Stops at the
// first error (SkipWithError, see failed()).
template <class F>
void timed(benchmark::State& state, F&& f, std::int64_t bytes = n64m * std::int64_t(sizeof(float))) {
  cudaEvent_t a, b;
  if (failed(state, cudaEventCreate(&a), "cudaEventCreate")) return;
  if (failed(state, cudaEventCreate(&b), "cudaEventCreate")) {
    cudaEventDestroy(a);
    return;
  }
  // Warm-up; after an error SkipWithError makes the loop run no iteration.
  bool bad = run_failed(state, f) || failed(state, cudaDeviceSynchronize(), "warm-up");
  for (auto _ : state) {
    float ms = 0;
    bad = failed(state, cudaEventRecord(a), "cudaEventRecord") || run_failed(state, f) ||
          failed(state, cudaEventRecord(b), "cudaEventRecord") ||
          failed(state, cudaEventSynchronize(b), "cudaEventSynchronize") ||
          failed(state, cudaEventElapsedTime(&ms, a, b), "cudaEventElapsedTime") ||
          failed(state, cudaGetLastError(), "after the iteration");
    if (bad) break;
    state.SetIterationTime(ms / 1e3);
  }
  cudaEventDestroy(a), cudaEventDestroy(b);
  if (!bad) state.SetBytesProcessed(state.iterations() * bytes);
}

void BM_cuda_memcpy_d2d(benchmark::State& state) {
  gpu_tensor& t = tensor();
  timed(state, [&] { return cudaMemcpyAsync(t.d_out(), t.d_in(), n64m * sizeof(float), cudaMemcpyDeviceToDevice); });
}

void fake(benchmark::State& state, ptq::gpu::check mode) {
  gpu_tensor& t = tensor(state.range(0));
  state.SetLabel(std::to_string(t.shape.c) + " x " + std::to_string(t.cols()));
  const ptq::device::device_quant_params<float> p(params(t.shape.c));
  std::size_t bytes = 0;
  if (failed(state,
             ptq::gpu::fake_quantize<float>(nullptr, bytes, nullptr, nullptr, nullptr, t.rows(), t.cols(), t.shape.c),
             "temp storage query"))
    return;
  thrust::device_vector<char> temp(bytes);
  timed(state, [&] {
    return ptq::gpu::fake_quantize(thrust::raw_pointer_cast(temp.data()), bytes, t.d_in(), t.d_out(), p.data(),
                                   t.rows(), t.cols(), t.shape.c, nullptr, mode);
  }, t.size() * std::int64_t(sizeof(float)));
}
void BM_cuda_fake_quantize_per_channel_fused(benchmark::State& s) { fake(s, ptq::gpu::check::fused); }
void BM_cuda_fake_quantize_per_channel_check_before(benchmark::State& s) { fake(s, ptq::gpu::check::before); }
void BM_cuda_fake_quantize_per_channel_unchecked(benchmark::State& s) { fake(s, ptq::gpu::check::none); }

void BM_thrust_cuda_fake_quantize_per_channel(benchmark::State& state) {
  gpu_tensor& t = tensor(state.range(0));
  state.SetLabel(std::to_string(t.shape.c) + " x " + std::to_string(t.cols()));
  const ptq::device::device_quant_params<float> p(params(t.shape.c));
  const auto n = static_cast<std::size_t>(t.size());
  timed(state, [&] {
    ptq::device::fake_quantize(thrust::device, ptq::device::span<const float>(t.d_in(), n), t.cols(), p,
                               ptq::device::span<float>(t.d_out(), n));
    return cudaSuccess;  // Thrust and ptq errors are exceptions
  }, t.size() * std::int64_t(sizeof(float)));
}

// The two CUB passes of one batch (pass 2 about a fixed centre, 0: the host step between
// them, forming the batch mean from C scalars, is left out).
void BM_cuda_statistics_two_passes(benchmark::State& state) {
  gpu_tensor& t = tensor(state.range(0));
  state.SetLabel(std::to_string(t.shape.c) + " x " + std::to_string(t.cols()));
  const ptq::index C = t.shape.c;
  std::size_t b1 = 0, b2 = 0;
  if (failed(state,
             ptq::gpu::channel_moments<float>(nullptr, b1, nullptr, t.rows(), t.cols(), C, nullptr, nullptr, nullptr),
             "temp storage query") ||
      failed(state, ptq::gpu::channel_deviations<float>(nullptr, b2, nullptr, t.rows(), t.cols(), C, nullptr, nullptr,
                                                        nullptr, nullptr, nullptr),
             "temp storage query"))
    return;
  thrust::device_vector<char> temp(std::max(b1, b2));
  // Pass 1: sum, min, max; pass 2: abs, sq, min, max; then the centre (zeros).
  thrust::device_vector<double> out(8 * C, 0.0);
  double* o = thrust::raw_pointer_cast(out.data());
  void* tp = thrust::raw_pointer_cast(temp.data());
  timed(state, [&] {
    const cudaError_t e = ptq::gpu::channel_moments(tp, b1, t.d_in(), t.rows(), t.cols(), C, o, o + C, o + 2 * C);
    if (e != cudaSuccess) return e;
    return ptq::gpu::channel_deviations(tp, b2, t.d_in(), t.rows(), t.cols(), C, o + 7 * C, o + 3 * C, o + 4 * C,
                                        o + 5 * C, o + 6 * C);
  }, t.size() * std::int64_t(sizeof(float)));
}
void BM_cuda_statistics_pass1(benchmark::State& state) {
  gpu_tensor& t = tensor(state.range(0));
  state.SetLabel(std::to_string(t.shape.c) + " x " + std::to_string(t.cols()));
  const ptq::index C = t.shape.c;
  std::size_t b1 = 0;
  if (failed(state,
             ptq::gpu::channel_moments<float>(nullptr, b1, nullptr, t.rows(), t.cols(), C, nullptr, nullptr, nullptr),
             "temp storage query"))
    return;
  thrust::device_vector<char> temp(b1);
  thrust::device_vector<double> out(3 * C);
  double* o = thrust::raw_pointer_cast(out.data());
  timed(state, [&] {
    return ptq::gpu::channel_moments(thrust::raw_pointer_cast(temp.data()), b1, t.d_in(), t.rows(), t.cols(), C, o,
                                     o + C, o + 2 * C);
  }, t.size() * std::int64_t(sizeof(float)));
}
// Whole add() of one batch through the host wrappers (includes the host step and copies).
void BM_cuda_statistics_add_batch(benchmark::State& state) {
  gpu_tensor& t = tensor();
  ptq::device::calibration_statistics acc(t.shape.c);
  timed(state, [&] {
    ptq::gpu::add_batch(acc, t.d_in(), t.rows(), t.cols());
    return cudaSuccess;  // throws ptq::error (with CUDA's message) on failure
  });
}
void BM_thrust_cuda_statistics_add_batch(benchmark::State& state) {
  gpu_tensor& t = tensor();
  ptq::device::calibration_statistics acc(t.shape.c);
  timed(state, [&] {
    acc.add(thrust::device, ptq::device::span<const float>(t.d_in(), n64m), t.cols());
    return cudaSuccess;  // Thrust and ptq errors are exceptions
  });
}

}  // namespace

BENCHMARK(BM_cuda_memcpy_d2d)->UseManualTime()->Unit(benchmark::kMillisecond);
BENCHMARK(BM_cuda_fake_quantize_per_channel_fused)->Apply(map_sides)->UseManualTime()->Unit(benchmark::kMillisecond);
BENCHMARK(BM_cuda_fake_quantize_per_channel_check_before)->Apply(map_sides)->UseManualTime()->Unit(benchmark::kMillisecond);
BENCHMARK(BM_cuda_fake_quantize_per_channel_unchecked)->Apply(map_sides)->UseManualTime()->Unit(benchmark::kMillisecond);
BENCHMARK(BM_thrust_cuda_fake_quantize_per_channel)->Apply(map_sides)->UseManualTime()->Unit(benchmark::kMillisecond);
BENCHMARK(BM_cuda_statistics_pass1)->Apply(map_sides)->UseManualTime()->Unit(benchmark::kMillisecond);
BENCHMARK(BM_cuda_statistics_two_passes)->Apply(map_sides)->UseManualTime()->Unit(benchmark::kMillisecond);
BENCHMARK(BM_cuda_statistics_add_batch)->UseManualTime()->Unit(benchmark::kMillisecond);
BENCHMARK(BM_thrust_cuda_statistics_add_batch)->UseManualTime()->Unit(benchmark::kMillisecond);

int main(int argc, char** argv) {
  int devices = 0;
  const cudaError_t e = cudaGetDeviceCount(&devices);
  if (e != cudaSuccess || devices == 0) {
    std::printf("SKIPPED: no CUDA device (%s)\n", e != cudaSuccess ? cudaGetErrorString(e) : "none");
    return 77;
  }
  cudaDeviceProp prop{};
  cudaGetDeviceProperties(&prop, 0);
  benchmark::AddCustomContext("gpu", prop.name);
  benchmark::Initialize(&argc, argv);
  benchmark::RunSpecifiedBenchmarks();
  benchmark::Shutdown();
  return 0;
}
