// test_cuda.cu: the CUDA backend (ptq::device on thrust::device, ptq::gpu's CUB kernels) against the core; exits 77 (skipped) without a GPU.
// First, before anything else: this file is statistics.cuh's header check (test/CMakeLists.txt).
#include <ptq/cuda/statistics.cuh>

#define DOCTEST_CONFIG_IMPLEMENT
#include <doctest/doctest.h>

#include <thrust/device_vector.h>
#include <thrust/execution_policy.h>
#include <thrust/fill.h>
#include <thrust/system/cuda/execution_policy.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstdio>
#include <cstring>
#include <limits>
#include <random>
#include <string>
#include <type_traits>
#include <vector>

#include "ptq/calibration.hpp"
#include "ptq/cuda/quantizer.cuh"
#include "ptq/gemmlowp_quantizer.hpp"
#include "ptq/thrust.hpp"
#include "../thrust/device_test_util.hpp"

// Review finding 1: thrust::device and thrust::cuda::par are const globals, so a policy
// taken by Policy& / Policy&& deduces a const type. The policy traits must see through
// const and references, or thrust::device silently takes the host work split on a GPU.
namespace policy_traits {
namespace i = ptq::device::impl;
static_assert(std::is_const<std::remove_reference_t<decltype(thrust::device)>>::value,
              "thrust::device is a const global (the case these asserts guard)");
static_assert(i::is_cuda_policy<decltype(thrust::device)>(), "thrust::device is a CUDA policy");
static_assert(i::is_cuda_policy<const thrust::detail::device_t&>(), "a const reference to it too");
static_assert(i::is_cuda_policy<decltype(thrust::cuda::par)>(), "thrust::cuda::par is a CUDA policy");
static_assert(i::is_cuda_policy<decltype(thrust::cuda::par.on(cudaStream_t{}))>(), "so is par.on(stream)");
static_assert(i::default_split<const thrust::detail::device_t>() == i::split::elements,
              "thrust::device takes the element split (coalesced), not the host tiles");
static_assert(i::default_split<decltype(thrust::device)>() == i::split::elements, "through decltype too");
}  // namespace policy_traits

namespace {

using namespace device_test;
const shape shapes[] = {{1, 1, 1},    {1, 1, 7},    {1, 7, 1},     {3, 31, 11},   {1, 1, 1023},
                        {1, 1023, 1}, {7, 163, 919}, {1, 1, 1048579}, {2, 64, 4099}};

template <class T>
T* raw(thrust::device_vector<T>& d) {
  return thrust::raw_pointer_cast(d.data());
}
template <class T>
const T* raw(const thrust::device_vector<T>& d) {
  return thrust::raw_pointer_cast(d.data());
}

// ptq::gpu::fake_quantize's two calls (size query, then the work); returns the second's error.
template <class T>
cudaError_t gpu_fake(const T* in, T* out, const ptq::device::device_quant_params<T>& p, const shape& s,
                     ptq::gpu::check mode, unsigned long long* d_first = nullptr, cudaStream_t stream = 0) {
  std::size_t bytes = 0;
  REQUIRE(ptq::gpu::fake_quantize<T>(nullptr, bytes, nullptr, nullptr, nullptr, s.rows(), s.inner, s.channels) ==
          cudaSuccess);
  thrust::device_vector<char> temp(bytes);
  const cudaError_t e = ptq::gpu::fake_quantize(raw(temp), bytes, in, out, p.data(), s.rows(), s.inner, s.channels,
                                                d_first, mode, stream);
  const cudaError_t done = cudaStreamSynchronize(stream);  // before temp is freed
  return e != cudaSuccess ? e : done;
}

constexpr ptq::gpu::check all_modes[] = {ptq::gpu::check::before, ptq::gpu::check::fused, ptq::gpu::check::none};

// Busy-waits about `cycles` GPU clock cycles.
__global__ void spin(long long cycles) {
  const long long t0 = clock64();
  while (clock64() - t0 < cycles) {
  }
}

// A cudaStreamNonBlocking stream: it does not synchronize with the legacy default stream,
// so an operation that wrongly launched (or copied) on stream 0 would race with it.
// late_copy() clears dst, then queues dst = src on the stream behind ~10 ms of spinning:
// an operation queued next on the stream sees the data; one on another stream would
// read zeros (and give results that differ from the core's).
struct nonblocking_stream {
  cudaStream_t s{};
  nonblocking_stream() { REQUIRE(cudaStreamCreateWithFlags(&s, cudaStreamNonBlocking) == cudaSuccess); }
  ~nonblocking_stream() {
    cudaStreamSynchronize(s);
    cudaStreamDestroy(s);
  }
  nonblocking_stream(const nonblocking_stream&) = delete;
  nonblocking_stream& operator=(const nonblocking_stream&) = delete;

  template <class T>
  void late_copy(thrust::device_vector<T>& dst, const thrust::device_vector<T>& src) {
    REQUIRE(dst.size() == src.size());
    const std::size_t bytes = src.size() * sizeof(T);
    REQUIRE(cudaMemsetAsync(raw(dst), 0, bytes, s) == cudaSuccess);
    sync();
    spin<<<1, 1, 0, s>>>(20'000'000);
    REQUIRE(cudaMemcpyAsync(raw(dst), raw(src), bytes, cudaMemcpyDeviceToDevice, s) == cudaSuccess);
  }
  void sync() { REQUIRE(cudaStreamSynchronize(s) == cudaSuccess); }
};

// A finite tensor with NaN / +Inf planted at (r, c), and the same tensor made finite.
struct bad_value {
  idx r, c;
  bool nan;  // else +Inf
};
struct planted {
  std::vector<float> x, clean;
  idx first;  // the smallest flat index of a non-finite value
  bool first_nan;
};
planted plant(std::mt19937_64& g, const shape& s, const std::vector<bad_value>& bad) {
  planted t;
  t.clean = make_data<float>(g, s.size());
  t.x = t.clean;
  t.first = s.size();
  for (const bad_value& b : bad) {
    const idx i = b.r * s.inner + b.c;
    t.x[static_cast<std::size_t>(i)] = b.nan ? std::numeric_limits<float>::quiet_NaN()
                                             : std::numeric_limits<float>::infinity();
    if (i < t.first) t.first = i, t.first_nan = b.nan;
  }
  return t;
}

std::string str(idx v) { return std::to_string(v); }

}  // namespace

TEST_CASE_TEMPLATE("cuda quantizer: thrust::device and the fused CUB kernel equal the core bit for bit", T, float,
                   double) {
  std::mt19937_64 g(601);
  for (const shape& s : shapes) {
    CAPTURE(s.channels);
    CAPTURE(s.inner);
    const std::vector<T> x = make_data<T>(g, s.size());
    const auto p = ptq::quant_params<T>::per_channel(random_ranges(g, s.channels), random_bits(g, s.channels));
    const core_quantized<T> want(x, s, p);

    thrust::device_vector<T> dx(x.begin(), x.end()), dy(x.size());
    const ptq::device::device_quant_params<T> dp(p);
    ptq::device::fake_quantize(thrust::device, sp(dx), s.inner, dp, sp(dy));
    CHECK(same_bits(want.fake, to_host(dy)));
    thrust::device_vector<std::uint8_t> dq(x.size());
    ptq::device::quantize<std::uint8_t>(thrust::device, sp(dx), s.inner, dp, sp(dq));
    CHECK(want.codes == to_host(dq));

    for (auto mode : all_modes) {
      thrust::device_vector<T> dz(x.size());
      thrust::device_vector<unsigned long long> first(1);
      REQUIRE(gpu_fake(raw(dx), raw(dz), dp, s, mode, raw(first)) == cudaSuccess);
      CHECK(same_bits(want.fake, to_host(dz)));
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
  CHECK_THROWS_WITH_AS(ptq::gpu::fake_quantize_checked(raw(dx), raw(dy), 6, 50, dp),
                       doctest::Contains("x(2, 23) = nan is not finite"), ptq::error);
  CHECK_THROWS_WITH_AS(ptq::device::fake_quantize(thrust::device, sp(dx), 50, dp, sp(dy)),
                       doctest::Contains("ptq::device::fake_quantize: x(2, 23) = nan is not finite"), ptq::error);
  for (float v : to_host(dy)) CHECK(v == 42.0f);
  std::size_t bytes = 256;
  thrust::device_vector<char> temp(bytes);
  thrust::device_vector<unsigned long long> first(1);
  REQUIRE(ptq::gpu::fake_quantize(raw(temp), bytes, raw(dx), raw(dy), dp.data(), 6, 50, 1, raw(first),
                                  ptq::gpu::check::fused) == cudaSuccess);
  CHECK(first[0] == 123ull);
  CHECK(ptq::gpu::fake_quantize(raw(temp), bytes, raw(dx), raw(dy), dp.data(), 7, 50, 2) == cudaErrorInvalidValue);
}

// Review finding 4: NaN / +Inf in several blocks of a large tensor, on both kernels.
// Each scenario runs twice: with all its values, then without the smallest one, so that
// the reported index moves to another value (and another block).
TEST_CASE("cuda non-finite input in many blocks: the smallest index named, nothing written, accumulators unchanged") {
  struct scenario {
    shape s;
    std::vector<bad_value> bad;
  };
  const scenario scenarios[] = {
      // Row tiles (cols >= 1024): 3 tiles of 2048 per row, one block each; values in
      // tiles 112 (two: different threads of one block), 113 (the short last tile of a
      // row), 270 and 381.
      {{2, 64, 4099}, {{90, 7, true}, {37, 3500, true}, {127, 0, false}, {37, 3000, false}, {37, 4098, true}}},
      // Flat chunks (short rows, 7x7 maps): 25 chunks of 2048 values, one block each;
      // values in chunks 1, 7, 16 and 24 (the short last one). check::before's search runs
      // 49 blocks striding 12544 values: (300, 0) = 14700 is block 8's second stride, the
      // first one, (65, 48) = 3233, block 12's first.
      {{16, 64, 49}, {{700, 3, false}, {65, 48, true}, {1023, 48, false}, {300, 0, true}}},
  };
  std::mt19937_64 g(607);
  for (const scenario& sc : scenarios) {
    const shape& s = sc.s;
    std::vector<bad_value> bad = sc.bad;
    for (int round = 0; round < 2; ++round) {
      CAPTURE(s.inner);
      CAPTURE(round);
      const planted t = plant(g, s, bad);
      const idx r = t.first / s.inner, c = t.first % s.inner;
      const std::string pos = "(" + str(r) + ", " + str(c) + ") = " + (t.first_nan ? "nan" : "inf") + " is not finite";
      const auto p = ptq::quant_params<float>::per_channel(random_ranges(g, s.channels), random_bits(g, s.channels));
      const ptq::device::device_quant_params<float> dp(p);
      const core_quantized<float> want(t.clean, s, p);
      const std::vector<float> sentinel(t.x.size(), 42.0f);
      thrust::device_vector<float> dx(t.x.begin(), t.x.end()), dy(sentinel.begin(), sentinel.end());
      thrust::device_vector<unsigned long long> first(1);

      // check::before: the index, and nothing written.
      REQUIRE(gpu_fake(raw(dx), raw(dy), dp, s, ptq::gpu::check::before, raw(first)) == cudaSuccess);
      CHECK(first[0] == static_cast<unsigned long long>(t.first));
      CHECK(same_bits(sentinel, to_host(dy)));
      // check::fused: the index, and every finite element quantized as the core does.
      first[0] = 0;
      REQUIRE(gpu_fake(raw(dx), raw(dy), dp, s, ptq::gpu::check::fused, raw(first)) == cudaSuccess);
      CHECK(first[0] == static_cast<unsigned long long>(t.first));
      std::vector<float> got = to_host(dy);
      for (const bad_value& b : bad) {
        const auto i = static_cast<std::size_t>(b.r * s.inner + b.c);
        got[i] = want.fake[i];  // what a non-finite input gives is not specified
      }
      CHECK(same_bits(want.fake, got));

      // The throwing wrappers name the first one and write nothing.
      thrust::copy(sentinel.begin(), sentinel.end(), dy.begin());
      CHECK_THROWS_WITH_AS(ptq::gpu::fake_quantize_checked(raw(dx), raw(dy), s.rows(), s.inner, dp),
                           doctest::Contains(("ptq::gpu::fake_quantize_checked: x" + pos).c_str()), ptq::error);
      CHECK_THROWS_WITH_AS(ptq::device::fake_quantize(thrust::device, sp(dx), s.inner, dp, sp(dy)),
                           doctest::Contains(("ptq::device::fake_quantize: x" + pos).c_str()), ptq::error);
      CHECK(same_bits(sentinel, to_host(dy)));

      // Statistics: refused, named, each accumulator as it was; then a good batch is
      // accumulated as the core accumulates it. Exact mode: refused in the deviation pass.
      const std::string rows_pos = "rows" + pos + " (channel " + str(r % s.channels) + ", outer index " +
                                   str(r / s.channels) + ", column " + str(c) + ")";
      const thrust::device_vector<float> dclean(t.clean.begin(), t.clean.end());
      for (auto mode : {ptq::stats_mode::batch_mean, ptq::stats_mode::exact}) {
        CAPTURE(static_cast<int>(mode));
        ptq::calibration_statistics core(s.channels, mode);
        ptq::device::calibration_statistics viaCub(s.channels, mode), viaThrust(s.channels, mode);
        core.add(rows_of(t.clean, s));
        ptq::gpu::add_batch(viaCub, raw(dclean), s.rows(), s.inner);
        viaThrust.add(thrust::device, csp(dclean), s.inner);
        if (mode == ptq::stats_mode::exact) {
          core.begin_deviation_pass(), viaCub.begin_deviation_pass(), viaThrust.begin_deviation_pass();
        }
        for (ptq::device::calibration_statistics* acc : {&viaCub, &viaThrust}) {
          const ptq::channel_stats m = acc->moments();
          const idx batches = acc->batches(), deviation_count = acc->deviation_count();
          if (acc == &viaCub)
            CHECK_THROWS_WITH_AS(ptq::gpu::add_batch(*acc, raw(dx), s.rows(), s.inner),
                                 doctest::Contains(("ptq::gpu::add_batch: " + rows_pos).c_str()), ptq::error);
          else
            CHECK_THROWS_WITH_AS(acc->add(thrust::device, csp(dx), s.inner),
                                 doctest::Contains(("ptq::device::calibration_statistics::add: " + rows_pos).c_str()),
                                 ptq::error);
          check_identical_stats(acc->moments(), m);
          CHECK(acc->batches() == batches);
          CHECK(acc->deviation_count() == deviation_count);
        }
        core.add(rows_of(t.clean, s));
        ptq::gpu::add_batch(viaCub, raw(dclean), s.rows(), s.inner);
        viaThrust.add(thrust::device, csp(dclean), s.inner);
        check_stats(viaCub.result(), core.result());
        check_stats(viaThrust.result(), core.result());
      }

      // Next round without the smallest.
      const auto is_first = [&](const bad_value& b) { return b.r * s.inner + b.c == t.first; };
      bad.erase(std::find_if(bad.begin(), bad.end(), is_first));
    }
  }
}

// Review finding 5: d_out == d_in (the ResNet example quantizes activations in place).
TEST_CASE_TEMPLATE("cuda quantizer: in place (d_out == d_in), CUB kernel and fake_quantize_in_place, equal the core", T,
                   float, double) {
  std::mt19937_64 g(603);
  for (const shape& s : {shape{3, 31, 11}, shape{16, 64, 49}, shape{7, 163, 919}, shape{2, 64, 4099},
                         shape{1, 1, 1048579}}) {
    CAPTURE(s.channels);
    CAPTURE(s.inner);
    const std::vector<T> x = make_data<T>(g, s.size());
    const auto p = ptq::quant_params<T>::per_channel(random_ranges(g, s.channels), random_bits(g, s.channels, 16));
    const core_quantized<T, std::uint16_t> want(x, s, p);
    const ptq::device::device_quant_params<T> dp(p);
    for (auto mode : all_modes) {
      thrust::device_vector<T> dz(x.begin(), x.end());
      thrust::device_vector<unsigned long long> first(1);
      REQUIRE(gpu_fake(raw(dz), raw(dz), dp, s, mode, raw(first)) == cudaSuccess);
      CHECK(same_bits(want.fake, to_host(dz)));
      if (mode != ptq::gpu::check::none) CHECK(first[0] == ptq::gpu::no_nonfinite);
    }
    thrust::device_vector<T> a(x.begin(), x.end()), b(x.begin(), x.end());
    ptq::device::fake_quantize_in_place(thrust::device, sp(a), s.inner, dp);
    CHECK(same_bits(want.fake, to_host(a)));
    ptq::device::fake_quantize_in_place(thrust::device, sp(b), s.inner, p);
    CHECK(same_bits(want.fake, to_host(b)));
  }
}

// Review finding 5: a stream that does not synchronize with the default stream; every
// input arrives late on it (nonblocking_stream::late_copy), so work queued anywhere
// else would read zeros.
TEST_CASE("cuda stream: ptq::gpu on a non-blocking stream and ptq::device on thrust::cuda::par.on(s) equal the core") {
  std::mt19937_64 g(604);
  nonblocking_stream st;
  for (const shape& s : {shape{16, 64, 49}, shape{2, 64, 4099}}) {
    CAPTURE(s.inner);
    const std::vector<float> x = make_data<float>(g, s.size());
    const auto p = ptq::quant_params<float>::per_channel(random_ranges(g, s.channels), random_bits(g, s.channels));
    const core_quantized<float> want(x, s, p);
    const ptq::device::device_quant_params<float> dp(p);
    const thrust::device_vector<float> stage(x.begin(), x.end());
    const thrust::device_vector<std::uint8_t> stage_codes(want.codes.begin(), want.codes.end());
    const auto n = x.size();
    thrust::device_vector<float> dx(n), dy(n);
    thrust::device_vector<std::uint8_t> codes(n);
    const auto reset = [&] { thrust::fill(dy.begin(), dy.end(), -7.0f); };

    // ptq::gpu::fake_quantize on s, out of place and in place, every mode (temp storage
    // allocated first: an allocation might synchronize the device and hide a race).
    std::size_t bytes = 0;
    REQUIRE(ptq::gpu::fake_quantize<float>(nullptr, bytes, nullptr, nullptr, nullptr, s.rows(), s.inner,
                                           s.channels) == cudaSuccess);
    thrust::device_vector<char> temp(bytes);
    thrust::device_vector<unsigned long long> first(1);
    for (auto mode : all_modes) {
      CAPTURE(static_cast<int>(mode));
      for (bool in_place : {false, true}) {
        CAPTURE(in_place);
        float* out = in_place ? raw(dx) : raw(dy);
        reset();
        first[0] = 0;
        st.late_copy(dx, stage);
        REQUIRE(ptq::gpu::fake_quantize(raw(temp), bytes, raw(dx), out, dp.data(), s.rows(), s.inner, s.channels,
                                        raw(first), mode, st.s) == cudaSuccess);
        st.sync();
        CHECK(same_bits(want.fake, to_host(in_place ? dx : dy)));
        if (mode != ptq::gpu::check::none) CHECK(first[0] == ptq::gpu::no_nonfinite);
      }
    }
    reset();
    CHECK_NOTHROW(ptq::gpu::fake_quantize_checked(raw(stage), raw(dy), s.rows(), s.inner, dp, st.s));
    CHECK(same_bits(want.fake, to_host(dy)));

    // ptq::device on thrust::cuda::par.on(s), as an lvalue and as a temporary.
    auto on_s = thrust::cuda::par.on(st.s);
    reset();
    st.late_copy(dx, stage);
    ptq::device::fake_quantize(on_s, csp(dx), s.inner, dp, sp(dy));
    st.sync();
    CHECK(same_bits(want.fake, to_host(dy)));
    st.late_copy(dx, stage);
    ptq::device::fake_quantize_in_place(thrust::cuda::par.on(st.s), sp(dx), s.inner, dp);
    st.sync();
    CHECK(same_bits(want.fake, to_host(dx)));
    thrust::fill(codes.begin(), codes.end(), std::uint8_t(255));
    st.late_copy(dx, stage);
    ptq::device::quantize<std::uint8_t>(on_s, csp(dx), s.inner, dp, sp(codes));
    st.sync();
    CHECK(want.codes == to_host(codes));
    reset();
    st.late_copy(codes, stage_codes);
    ptq::device::dequantize(on_s, csp(codes), s.inner, dp, sp(dy));
    st.sync();
    CHECK(same_bits(want.dequantized, to_host(dy)));

    // Statistics: ptq::gpu::add_batch(..., s) and calibration_statistics::add(par.on(s)).
    ptq::calibration_statistics core(s.channels);
    core.add(rows_of(x, s));
    ptq::device::calibration_statistics viaCub(s.channels), viaThrust(s.channels);
    st.late_copy(dx, stage);
    ptq::gpu::add_batch(viaCub, raw(dx), s.rows(), s.inner, st.s);
    st.late_copy(dx, stage);
    viaThrust.add(on_s, csp(dx), s.inner);
    st.sync();
    check_stats(viaCub.result(), core.result());
    check_stats(viaThrust.result(), core.result());
  }
}

// Review finding 5: dequantize and 16-bit codes had no CUDA test.
TEST_CASE_TEMPLATE("cuda quantizer: dequantize (8, 16-bit codes), quantize<uint16_t> on thrust::device equal the core",
                   T, float, double) {
  std::mt19937_64 g(605);
  for (const shape& s : shapes) {
    CAPTURE(s.channels);
    CAPTURE(s.inner);
    const std::vector<T> x = make_data<T>(g, s.size());
    const ptq::channel_ranges r = random_ranges(g, s.channels);
    thrust::device_vector<T> dx(x.begin(), x.end()), out(x.size());

    const auto p8 = ptq::quant_params<T>::per_channel(r, random_bits(g, s.channels, 8));
    const core_quantized<T> want8(x, s, p8);
    const thrust::device_vector<std::uint8_t> c8(want8.codes.begin(), want8.codes.end());
    thrust::fill(out.begin(), out.end(), T(-7));
    ptq::device::dequantize(thrust::device, csp(c8), s.inner, ptq::device::device_quant_params<T>(p8), sp(out));
    CHECK(same_bits(want8.dequantized, to_host(out)));

    const auto p16 = ptq::quant_params<T>::per_channel(r, random_bits(g, s.channels, 16));
    const core_quantized<T, std::uint16_t> want16(x, s, p16);
    thrust::device_vector<std::uint16_t> c16(x.size(), std::uint16_t(0xABCD));
    ptq::device::quantize<std::uint16_t>(thrust::device, csp(dx), s.inner, p16, sp(c16));
    CHECK(want16.codes == to_host(c16));
    thrust::fill(out.begin(), out.end(), T(-7));
    ptq::device::dequantize(thrust::device, sp(c16), s.inner, p16, sp(out));
    CHECK(same_bits(want16.dequantized, to_host(out)));
  }
}

TEST_CASE("cuda quantizer: dequantize refuses a code above its channel's qmax, naming the first, out untouched") {
  std::mt19937_64 g(608);
  const shape s{2, 64, 4099};
  const std::vector<float> x = make_data<float>(g, s.size());
  const auto p = ptq::quant_params<float>::per_channel(random_ranges(g, s.channels), random_bits(g, s.channels, 16));
  REQUIRE(p.bits[1] == 0);  // random_bits: channel 1 has 0 bits, qmax 0
  const core_quantized<float, std::uint16_t> want(x, s, p);
  std::vector<std::uint16_t> codes = want.codes;
  codes[static_cast<std::size_t>(65 * s.inner + 10)] = 1;  // row 65: channel 1
  codes[static_cast<std::size_t>(1 * s.inner + 4000)] = 1;
  const thrust::device_vector<std::uint16_t> dc(codes.begin(), codes.end());
  const std::vector<float> sentinel(x.size(), 42.0f);
  thrust::device_vector<float> out(sentinel.begin(), sentinel.end());
  CHECK_THROWS_WITH_AS(
      ptq::device::dequantize(thrust::device, csp(dc), s.inner, p, sp(out)),
      doctest::Contains("ptq::device::dequantize: codes(1, 4000) = 1 is above qmax = 0 of channel 1 (0 bits)"),
      ptq::error);
  CHECK(same_bits(sentinel, to_host(out)));
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
        ptq::gpu::add_batch(viaCub, raw(da), s.rows(), s.inner);
        ptq::gpu::add_batch(viaCub, raw(db), s.rows(), s.inner);
      }
      const ptq::channel_stats want = core.result();
      const ptq::channel_stats results[2] = {viaThrust.result(), viaCub.result()};
      for (const ptq::channel_stats& got : results) check_stats(got, want);
    }
  }
}

// Review finding 5: ACIQ / minmax ranges and the bias corrector had no CUDA test. The
// checks and tolerances are the OMP tests' (device_test_util.hpp).
TEST_CASE("cuda aciq and minmax ranges on thrust::device equal the core's") {
  std::mt19937_64 g(609);
  for (const shape& s : {shape{7, 163, 919}, shape{2, 64, 4099}, shape{16, 64, 49}, shape{1, 1, 1048579}}) {
    CAPTURE(s.channels);
    CAPTURE(s.inner);
    check_ranges_like_core(thrust::device, channel_data<float>(g, s), s);
  }
}

TEST_CASE_TEMPLATE("cuda bias_corrector on thrust::device: compute, correct and apply equal the core's", T, float,
                   double) {
  std::mt19937_64 g(606);
  for (const shape& s : bias_corrector_shapes) {
    CAPTURE(s.channels);
    CAPTURE(s.inner);
    check_bias_corrector_like_core<T>(thrust::device, g, s);
  }
}

TEST_CASE("cuda bias_corrector: corrections that leave float are refused as the core refuses them, wq untouched") {
  check_overflowing_correction_refused(thrust::device);
  check_apply_range_edges_like_core(thrust::device);
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
