// device.cu: resnet_device's CUDA implementation: uploads activations, runs ptq::gpu's kernels, downloads results.
// nvcc rejects the core calibration kernels' GCC vector extensions: plain loops here.
#define PTQ_CALIBRATION_SIMD 0
#include "device.hpp"

#include <cuda_runtime.h>

#include <cstdio>

#include "ptq/cuda/quantizer.cuh"
#include "ptq/cuda/statistics.cuh"

namespace resnet_device {
namespace {

void check(cudaError_t e, const char* what) {
  if (e != cudaSuccess) throw ptq::error(std::string("resnet_device: ") + what + ": " + cudaGetErrorString(e));
}

// A device buffer that grows as needed (activations differ in size layer by layer).
struct buffer {
  float* p = nullptr;
  std::size_t n = 0;
  float* get(std::size_t want) {
    if (want > n) {
      cudaFree(p);
      p = nullptr, n = 0;
      check(cudaMalloc(&p, want * sizeof(float)), "cudaMalloc");
      n = want;
    }
    return p;
  }
  ~buffer() { cudaFree(p); }
};

buffer& scratch() {
  thread_local buffer b;
  return b;
}

}  // namespace

bool cuda_device_available(std::string* why) {
  int count = 0;
  const cudaError_t e = cudaGetDeviceCount(&count);
  if (e != cudaSuccess || count == 0) {
    if (why) *why = std::string("no CUDA device: ") + (e != cudaSuccess ? cudaGetErrorString(e) : "cudaGetDeviceCount() = 0");
    return false;
  }
  cudaDeviceProp prop{};
  check(cudaGetDeviceProperties(&prop, 0), "cudaGetDeviceProperties");
  if (why) *why = prop.name;
  return true;
}

struct device_calibrator::state {
  ptq::device::calibration_statistics acc;
  buffer x;
};

device_calibrator::device_calibrator(ptq::index channels, ptq::stats_mode mode)
    : s_(new state{ptq::device::calibration_statistics(channels, mode), {}}) {}
device_calibrator::~device_calibrator() = default;
device_calibrator::device_calibrator(device_calibrator&&) noexcept = default;
device_calibrator& device_calibrator::operator=(device_calibrator&&) noexcept = default;

void device_calibrator::add(const float* x, ptq::index n, ptq::index hw) {
  const ptq::index rows = n * s_->acc.channels();
  const std::size_t size = static_cast<std::size_t>(rows * hw);
  float* d = s_->x.get(size);
  check(cudaMemcpy(d, x, size * sizeof(float), cudaMemcpyHostToDevice), "cudaMemcpy");
  ptq::gpu::add_batch(s_->acc, d, rows, hw);
}
void device_calibrator::begin_deviation_pass() { s_->acc.begin_deviation_pass(); }
ptq::channel_stats device_calibrator::result() const { return s_->acc.result(); }

void fake_quantize_in_place(float* x, ptq::index rows, ptq::index cols, const ptq::quant_params<float>& p) {
  const std::size_t size = static_cast<std::size_t>(rows * cols);
  const ptq::device::device_quant_params<float> dp(p);
  float* d = scratch().get(size);
  check(cudaMemcpy(d, x, size * sizeof(float), cudaMemcpyHostToDevice), "cudaMemcpy");
  ptq::gpu::fake_quantize_checked(d, d, rows, cols, dp);
  check(cudaMemcpy(x, d, size * sizeof(float), cudaMemcpyDeviceToHost), "cudaMemcpy");
}

}  // namespace resnet_device
