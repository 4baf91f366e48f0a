// device.hpp: the ResNet example's --device cuda path: calibration statistics and activation fake quantization on a GPU.
//
// The convolutions stay on the CPU: each call uploads one NCHW float activation, runs
// ptq's CUB kernels (include/ptq/cuda: the two statistics passes, or the fused per-channel
// fake quantization with the core's arithmetic) and, for fake quantization, downloads
// the result. Results equal the CPU path's (codes and fake-quantized floats bit for bit,
// statistics to rounding). Built into the library resnet_device when CMake finds nvcc
// (PTQ_ENABLE_CUDA): it then defines PTQ_RESNET_CUDA=1. Without CUDA the same
// interface compiles to stubs: cuda_device_available() says why, the rest throws.
#pragma once

#include <memory>
#include <string>

#include "ptq/calibration.hpp"
#include "ptq/gemmlowp_quantizer.hpp"
#include "ptq/types.hpp"

namespace resnet_device {

// True when this build has CUDA and a GPU is present; otherwise false and *why (if not
// null) says which of the two is missing ("built without CUDA ...", "no CUDA device: ...").
// On success *why names the GPU.
bool cuda_device_available(std::string* why);

// Per-channel statistics of NCHW activations (channels = C), reduced on the GPU; the same
// statistics, modes and protocol as ptq::calibration_statistics.
class device_calibrator {
 public:
  explicit device_calibrator(ptq::index channels, ptq::stats_mode mode = ptq::stats_mode::batch_mean);
  ~device_calibrator();
  device_calibrator(device_calibrator&&) noexcept;
  device_calibrator& operator=(device_calibrator&&) noexcept;

  // One batch: x is a host NCHW tensor of n * channels * hw floats (hw = H*W).
  void add(const float* x, ptq::index n, ptq::index hw);
  void begin_deviation_pass();  // exact mode, as the core
  ptq::channel_stats result() const;

 private:
  struct state;
  std::unique_ptr<state> s_;
};

// x (host, rows x cols row view, row r of channel r % p.channels()) <- fake_quantize(x, p)
// on the GPU. Throws ptq::error like the core (x untouched on non-finite input).
void fake_quantize_in_place(float* x, ptq::index rows, ptq::index cols, const ptq::quant_params<float>& p);

#if !defined(PTQ_RESNET_CUDA)
// Stubs: this build has no CUDA (resnet_device is an empty interface library).
inline bool cuda_device_available(std::string* why) {
  if (why) *why = "built without CUDA (no nvcc found at configure time, or PTQ_ENABLE_CUDA=OFF)";
  return false;
}
struct device_calibrator::state {};
inline device_calibrator::device_calibrator(ptq::index, ptq::stats_mode) {
  throw ptq::error("resnet_device: this build has no CUDA (--device cuda needs nvcc at configure time)");
}
inline device_calibrator::~device_calibrator() = default;
inline device_calibrator::device_calibrator(device_calibrator&&) noexcept = default;
inline device_calibrator& device_calibrator::operator=(device_calibrator&&) noexcept = default;
inline void device_calibrator::add(const float*, ptq::index, ptq::index) {}
inline void device_calibrator::begin_deviation_pass() {}
inline ptq::channel_stats device_calibrator::result() const { return {}; }
inline void fake_quantize_in_place(float*, ptq::index, ptq::index, const ptq::quant_params<float>&) {
  throw ptq::error("resnet_device: this build has no CUDA (--device cuda needs nvcc at configure time)");
}
#endif

}  // namespace resnet_device
