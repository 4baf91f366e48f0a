// test_readme_gpu.cpp: the README's GPU example, verbatim, on Thrust's OMP backend (thrust::device is the OMP system here), against the core.
#include <doctest/doctest.h>

#include <thrust/device_vector.h>

#include <algorithm>
#include <random>
#include <vector>

#include "ptq/ptq.hpp"
#include "ptq/thrust.hpp"
#include "device_test_util.hpp"

// Everything of this file in its own namespace: the test binary is a unity build.
namespace ptq_test_readme_gpu {

TEST_CASE("readme: the GPU example compiles, runs on the OMP backend and equals the core") {
  const ptq::index N = 3, C = 5, H = 7, W = 9;
  std::mt19937_64 g(2019);
  const std::vector<float> x = device_test::make_data<float>(g, N * C * H * W);
  thrust::device_vector<float> storage(x.begin(), x.end());
  float* d_x = thrust::raw_pointer_cast(storage.data());

  // ---- the README's code, verbatim ----
  const std::size_t n = N * C * H * W;
  ptq::device::calibration_statistics calib(C);                   // reduced on the device
  calib.add(thrust::device, ptq::device::span<const float>(d_x, n), H * W);
  const ptq::channel_stats stats = calib.result();                // C statistics, on the host

  const ptq::channel_ranges ranges = ptq::aciq_ranges(ptq::distribution::gauss, stats, 4);
  const ptq::device::device_quant_params<float> p(ptq::quant_params<float>::per_channel(ranges, 4));
  ptq::device::fake_quantize_in_place(thrust::device, ptq::device::span<float>(d_x, n), H * W, p);
  // ---- end of the README's code ----

  // The core on the same data: the same statistics (to rounding), ranges from its own
  // statistics, and fake-quantized values equal bit for bit given the device's params.
  const auto layout = ptq::channel_layout::of({N, C, H, W}, 1);
  ptq::calibration_statistics core(C);
  core.add(ptq::channel_rows(x.data(), layout));
  device_test::check_stats(stats, core.result());
  std::vector<float> want = x;
  ptq::gemmlowp_quantizer::fake_quantize_in_place(ptq::channel_rows(want.data(), layout), p.host());
  CHECK(device_test::same_bits(device_test::to_host(storage), want));
  // And 4-bit: at most 16 distinct values per channel.
  const std::vector<float> y = device_test::to_host(storage);
  for (ptq::index c = 0; c < C; ++c) {
    std::vector<float> v;
    for (ptq::index o = 0; o < N; ++o)
      for (ptq::index j = 0; j < H * W; ++j) v.push_back(y[static_cast<std::size_t>((o * C + c) * H * W + j)]);
    std::sort(v.begin(), v.end());
    CHECK(std::unique(v.begin(), v.end()) - v.begin() <= 16);
  }
}

}  // namespace ptq_test_readme_gpu
