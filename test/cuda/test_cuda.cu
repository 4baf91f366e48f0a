// test_cuda.cu: the CUDA backend (ptq::device on thrust::device, ptq::gpu's CUB kernels) against the core; exits 77 (skipped) without a GPU.
#define DOCTEST_CONFIG_IMPLEMENT
#include <doctest/doctest.h>

// Before any ptq header: nvcc rejects the core calibration kernels' GCC vector extensions.
#define PTQ_CALIBRATION_SIMD 0

#include <thrust/device_vector.h>
#include <thrust/execution_policy.h>

#include <cmath>
#include <cstdint>
#include <cstdio>
#include <cstring>
#include <random>
#include <vector>

#include "ptq/calibration.hpp"
#include "ptq/cuda/quantizer.cuh"
#include "ptq/cuda/statistics.cuh"
#include "ptq/gemmlowp_quantizer.hpp"
#include "ptq/thrust.hpp"
#include "../thrust/device_test_util.hpp"

namespace {

using namespace device_test;
const shape shapes[] = {{1, 1, 1},    {1, 1, 7},    {1, 7, 1},     {3, 31, 11},   {1, 1, 1023},
                        {1, 1023, 1}, {7, 163, 919}, {1, 1, 1048579}, {2, 64, 4099}};

template <class T>
std::vector<T> to_host(const thrust::device_vector<T>& d) {
  std::vector<T> h(d.size());
  thrust::copy(d.begin(), d.end(), h.begin());
  return h;
}
template <class T>
span<T> sp(thrust::device_vector<T>& d) {
  return span<T>(thrust::raw_pointer_cast(d.data()), d.size());
}

}  // namespace

TEST_CASE_TEMPLATE("cuda quantizer: thrust::device and the fused CUB kernel equal the core bit for bit", T, float,
                   double) {
  std::mt19937_64 g(601);
  for (const shape& s : shapes) {
    CAPTURE(s.channels);
    CAPTURE(s.inner);
    const std::vector<T> x = make_data<T>(g, s.size());
    const auto p = ptq::quant_params<T>::per_channel(random_ranges(g, s.channels), random_bits(g, s.channels));
    std::vector<T> want(x.size());
    std::vector<std::uint8_t> codes(x.size());
    const ptq::const_row_map<T> xm(x.data(), s.rows(), s.inner);
    ptq::gemmlowp_quantizer::fake_quantize(xm, p, ptq::row_map<T>(want.data(), s.rows(), s.inner));
    ptq::gemmlowp_quantizer::quantize<std::uint8_t>(xm, p, ptq::row_map<std::uint8_t>(codes.data(), s.rows(), s.inner));

    thrust::device_vector<T> dx(x.begin(), x.end()), dy(x.size());
    const ptq::device::device_quant_params<T> dp(p);
    ptq::device::fake_quantize(thrust::device, sp(dx), s.inner, dp, sp(dy));
    CHECK(same_bits(want, to_host(dy)));
    thrust::device_vector<std::uint8_t> dq(x.size());
    ptq::device::quantize<std::uint8_t>(thrust::device, sp(dx), s.inner, dp, sp(dq));
    CHECK(codes == to_host(dq));

    for (auto mode : {ptq::gpu::check::before, ptq::gpu::check::fused, ptq::gpu::check::none}) {
      thrust::device_vector<T> dz(x.size());
      thrust::device_vector<unsigned long long> first(1);
      std::size_t bytes = 0;
      REQUIRE(ptq::gpu::fake_quantize<T>(nullptr, bytes, nullptr, nullptr, nullptr, s.rows(), s.inner, s.channels) ==
              cudaSuccess);
      thrust::device_vector<char> temp(bytes);
      REQUIRE(ptq::gpu::fake_quantize(thrust::raw_pointer_cast(temp.data()), bytes, thrust::raw_pointer_cast(dx.data()),
                                      thrust::raw_pointer_cast(dz.data()), dp.data(), s.rows(), s.inner, s.channels,
                                      thrust::raw_pointer_cast(first.data()), mode) == cudaSuccess);
      CHECK(same_bits(want, to_host(dz)));
      if (mode != ptq::gpu::check::none) CHECK(first[0] == ptq::gpu::no_nonfinite);
    }
  }
}

TEST_CASE("cuda quantizer: non-finite input is refused, the output untouched (before) or flagged (fused)") {
  std::vector<float> x(6 * 50, 0.25f);
  x[123] = NAN;
  const auto p = ptq::quant_params<float>::per_tensor(-1, 1, 4);
  thrust::device_vector<float> dx(x.begin(), x.end()), dy(x.size(), 42.0f);
  const ptq::device::device_quant_params<float> dp(p);
  CHECK_THROWS_WITH_AS(ptq::gpu::fake_quantize_checked(thrust::raw_pointer_cast(dx.data()),
                                                       thrust::raw_pointer_cast(dy.data()), 6, 50, dp),
                       doctest::Contains("x(2, 23) = nan is not finite"), ptq::error);
  CHECK_THROWS_WITH_AS(ptq::device::fake_quantize(thrust::device, sp(dx), 50, dp, sp(dy)),
                       doctest::Contains("ptq::device::fake_quantize: x(2, 23) = nan is not finite"), ptq::error);
  for (float v : to_host(dy)) CHECK(v == 42.0f);
  std::size_t bytes = 256;
  thrust::device_vector<char> temp(bytes);
  thrust::device_vector<unsigned long long> first(1);
  REQUIRE(ptq::gpu::fake_quantize(thrust::raw_pointer_cast(temp.data()), bytes, thrust::raw_pointer_cast(dx.data()),
                                  thrust::raw_pointer_cast(dy.data()), dp.data(), 6, 50, 1,
                                  thrust::raw_pointer_cast(first.data()), ptq::gpu::check::fused) == cudaSuccess);
  CHECK(first[0] == 123ull);
  CHECK(ptq::gpu::fake_quantize(thrust::raw_pointer_cast(temp.data()), bytes, thrust::raw_pointer_cast(dx.data()),
                                thrust::raw_pointer_cast(dy.data()), dp.data(), 7, 50, 2) == cudaErrorInvalidValue);
}

TEST_CASE_TEMPLATE("cuda statistics: thrust::device and the CUB kernels equal the core (1e-9 relative)", T, float,
                   double) {
  std::mt19937_64 g(602);
  for (const shape& s : shapes) {
    CAPTURE(s.channels);
    CAPTURE(s.inner);
    const std::vector<T> a = make_data<T>(g, s.size()), b = make_data<T>(g, s.size());
    for (auto mode : {ptq::stats_mode::batch_mean, ptq::stats_mode::exact}) {
      ptq::calibration_statistics core(s.channels, mode);
      ptq::device::calibration_statistics viaThrust(s.channels, mode), viaCub(s.channels, mode);
      thrust::device_vector<T> da(a.begin(), a.end()), db(b.begin(), b.end());
      for (int pass = 0; pass < (mode == ptq::stats_mode::exact ? 2 : 1); ++pass) {
        if (pass == 1) {
          core.begin_deviation_pass();
          viaThrust.begin_deviation_pass();
          viaCub.begin_deviation_pass();
        }
        core.add(ptq::const_row_map<T>(a.data(), s.rows(), s.inner));
        core.add(ptq::const_row_map<T>(b.data(), s.rows(), s.inner));
        viaThrust.add(thrust::device, sp(da), s.inner);
        viaThrust.add(thrust::device, sp(db), s.inner);
        ptq::gpu::add_batch(viaCub, thrust::raw_pointer_cast(da.data()), s.rows(), s.inner);
        ptq::gpu::add_batch(viaCub, thrust::raw_pointer_cast(db.data()), s.rows(), s.inner);
      }
      const ptq::channel_stats want = core.result();
      const ptq::channel_stats results[2] = {viaThrust.result(), viaCub.result()};
      for (const ptq::channel_stats& got : results) check_stats(got, want);
    }
  }
}

int main(int argc, char** argv) {
  int devices = 0;
  const cudaError_t e = cudaGetDeviceCount(&devices);
  if (e != cudaSuccess || devices == 0) {
    std::printf("SKIPPED: no CUDA device (%s): the gpu tests need a GPU\n",
                e != cudaSuccess ? cudaGetErrorString(e) : "cudaGetDeviceCount() = 0");
    return 77;  // ctest SKIP_RETURN_CODE
  }
  cudaDeviceProp prop{};
  cudaGetDeviceProperties(&prop, 0);
  std::printf("GPU: %s (sm_%d%d)\n", prop.name, prop.major, prop.minor);
  doctest::Context ctx(argc, argv);
  return ctx.run();
}
