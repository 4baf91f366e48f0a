// test_thrust_quantizer.cpp: ptq::device quantize / dequantize / fake quantize on Thrust's OMP backend equal the core bit for bit.
#include <doctest/doctest.h>

#include <thrust/execution_policy.h>

#include <cmath>
#include <cstdint>
#include <cstring>
#include <random>
#include <vector>

#include "ptq/gemmlowp_quantizer.hpp"
#include "ptq/thrust.hpp"
#include "device_test_util.hpp"

// Everything of this file in its own namespace: the test binary is a unity build.
namespace ptq_test_thrust_quantizer {

namespace {

using namespace device_test;
using ptq::device::impl::split;

// The odd sizes (1, 7, 1023, 2^20 + 3 = 7 * 163 * 919), one and many channels.
const shape shapes[] = {{1, 1, 1},   {1, 1, 7},   {1, 7, 1},     {7, 1, 1},      {3, 31, 11},
                        {1, 1, 1023}, {1, 1023, 1}, {7, 163, 919}, {1, 1, 1048579}, {1048579, 1, 1}};

template <split S, class T>
void check_all_ops(const std::vector<T>& x, const shape& s, const ptq::quant_params<T>& p) {
  const core_quantized<T> want(x, s, p);
  // Device results, through the given split.
  const ptq::device::device_quant_params<T> dp(p);
  const span<const T> xs(x.data(), x.size());
  std::vector<T> dfq(x.size(), T(-7));
  ptq::device::impl::fake_quantize<S>(thrust::omp::par, xs, s.inner, dp, span<T>(dfq.data(), dfq.size()), "test");
  CHECK(same_bits(want.fake, dfq));
  std::vector<std::uint8_t> dq8(x.size(), 255);
  ptq::device::impl::quantize<S, std::uint8_t>(thrust::omp::par, xs, s.inner, dp,
                                                span<std::uint8_t>(dq8.data(), dq8.size()));
  CHECK(want.codes == dq8);
  std::vector<T> ddq(x.size(), T(-7));
  ptq::device::impl::dequantize<S>(thrust::omp::par, span<const std::uint8_t>(dq8.data(), dq8.size()), s.inner, dp,
                                   span<T>(ddq.data(), ddq.size()));
  CHECK(same_bits(want.dequantized, ddq));
  // In place, public entry point (default split for the policy).
  std::vector<T> inplace = x;
  ptq::device::fake_quantize_in_place(thrust::omp::par, span<T>(inplace.data(), inplace.size()), s.inner, p);
  CHECK(same_bits(want.fake, inplace));
}

}  // namespace

TEST_CASE_TEMPLATE("thrust quantizer: per channel, bits 0..8, both work splits equal the core bit for bit", T, float,
                   double) {
  std::mt19937_64 g(404);
  for (const shape& s : shapes) {
    CAPTURE(s.outer);
    CAPTURE(s.channels);
    CAPTURE(s.inner);
    const std::vector<T> x = make_data<T>(g, s.size());
    const ptq::channel_ranges r = random_ranges(g, s.channels);
    const Eigen::VectorXi bits = random_bits(g, s.channels);
    Eigen::VectorXd mean(s.channels);
    for (idx c = 0; c < s.channels; ++c) mean[c] = 0.5 * (r.lo[c] + r.hi[c]) + 0.1;
    const auto p = ptq::quant_params<T>::per_channel(r, bits, mean);
    check_all_ops<split::elements>(x, s, p);
    check_all_ops<split::tiles>(x, s, p);
  }
}

TEST_CASE_TEMPLATE("thrust quantizer: per tensor, every width 1..8, equals the core", T, float, double) {
  std::mt19937_64 g(405);
  for (const shape& s : {shape{1, 1, 1}, shape{1, 1, 7}, shape{3, 31, 11}, shape{1, 1, 1048579}}) {
    const std::vector<T> x = make_data<T>(g, s.size());
    for (int b = 1; b <= 8; b += (s.size() > 100000 ? 7 : 1)) {
      CAPTURE(b);
      const auto p = ptq::quant_params<T>::per_tensor(-2.5, 3.25, b);
      check_all_ops<split::elements>(x, s, p);
      check_all_ops<split::tiles>(x, s, p);
    }
  }
}

TEST_CASE_TEMPLATE("thrust quantizer: exact ties round half to even, saturation at both ends", T, float, double) {
  // [-8, 7] at 4 bits: scale 1, zero_point 8, so x = k + 0.5 is an exact tie.
  const auto p = ptq::quant_params<T>::per_tensor(-8.0, 7.0, 4);
  REQUIRE(p.scale[0] == T(1));
  std::vector<T> x;
  for (int k = -12; k <= 12; ++k) x.push_back(static_cast<T>(k) + T(0.5));
  x.push_back(T(1e30)), x.push_back(T(-1e30)), x.push_back(T(0)), x.push_back(T(-0.0));
  std::vector<std::uint8_t> codes(x.size());
  ptq::device::quantize<std::uint8_t>(thrust::omp::par, span<const T>(x.data(), x.size()), 1, p,
                                      span<std::uint8_t>(codes.data(), codes.size()));
  for (std::size_t i = 0; i + 4 < x.size(); ++i) {
    const double t = std::nearbyint(static_cast<double>(x[i])) + 8;  // half to even, independent of ptq
    CHECK(codes[i] == static_cast<int>(std::min(std::max(t, 0.0), 15.0)));
  }
  CHECK(codes[x.size() - 4] == 15);
  CHECK(codes[x.size() - 3] == 0);
  CHECK(codes[x.size() - 2] == 8);
  CHECK(codes[x.size() - 1] == 8);
  const shape s{1, 1, static_cast<idx>(x.size())};
  check_all_ops<split::elements>(x, s, p);
  check_all_ops<split::tiles>(x, s, p);
}

TEST_CASE("thrust quantizer: 16-bit codes and widths 9..16 equal the core") {
  std::mt19937_64 g(406);
  const shape s{3, 31, 11};
  const std::vector<float> x = make_data<float>(g, s.size());
  const auto p = ptq::quant_params<float>::per_channel(random_ranges(g, s.channels), random_bits(g, s.channels, 16));
  std::vector<std::uint16_t> a(x.size()), b(x.size());
  ptq::gemmlowp_quantizer::quantize<std::uint16_t>(rows_of(x, s), p,
                                                  ptq::row_map<std::uint16_t>(a.data(), s.rows(), s.inner));
  ptq::device::quantize<std::uint16_t>(thrust::omp::par, span<const float>(x.data(), x.size()), s.inner, p,
                                       span<std::uint16_t>(b.data(), b.size()));
  CHECK(a == b);
  std::vector<float> fa(x.size()), fb(x.size());
  ptq::gemmlowp_quantizer::dequantize(ptq::const_row_map<std::uint16_t>(a.data(), s.rows(), s.inner), p,
                                      ptq::row_map<float>(fa.data(), s.rows(), s.inner));
  ptq::device::dequantize(thrust::cpp::par, span<std::uint16_t>(b.data(), b.size()), s.inner, p,
                          span<float>(fb.data(), fb.size()));
  CHECK(same_bits(fa, fb));
}

TEST_CASE("thrust quantizer: bad input throws a named ptq::error and leaves the output untouched") {
  const shape s{2, 3, 5};
  std::vector<float> x(static_cast<std::size_t>(s.size()), 0.5f);
  std::mt19937_64 rng1(1), rng2(2);
  const auto p = ptq::quant_params<float>::per_channel(random_ranges(rng1, 3), 4);
  std::vector<float> out(x.size(), 42.0f);
  const span<float> os(out.data(), out.size());
  x[17] = std::nanf("");
  CHECK_THROWS_WITH_AS(ptq::device::fake_quantize(thrust::omp::par, span<const float>(x.data(), x.size()), 5, p, os),
                       doctest::Contains("ptq::device::fake_quantize: x(3, 2) = nan is not finite"), ptq::error);
  x[17] = 0.5f, x[3] = -INFINITY;
  CHECK_THROWS_WITH_AS(ptq::device::fake_quantize_in_place(thrust::omp::par, span<float>(x.data(), x.size()), 5, p),
                       doctest::Contains("x(0, 3) = -inf is not finite"), ptq::error);
  CHECK(x[0] == 0.5f);
  x[3] = 0.5f;
  for (float v : out) CHECK(v == 42.0f);
  CHECK_THROWS_WITH_AS(ptq::device::fake_quantize(thrust::omp::par, span<const float>(x.data(), 28), 4, p, os),
                       doctest::Contains("is not a multiple of channels = 3"), ptq::error);
  CHECK_THROWS_WITH_AS(ptq::device::fake_quantize(thrust::omp::par, span<const float>(x.data(), x.size()), 4, p, os),
                       doctest::Contains("x.size() = 30 is not a multiple of cols = 4"), ptq::error);
  CHECK_THROWS_WITH_AS(
      ptq::device::fake_quantize(thrust::omp::par, span<const float>(x.data(), x.size()), 5, p, os.first(29)),
      doctest::Contains("out.size() = 29 but x.size() = 30"), ptq::error);
  const auto p9 = ptq::quant_params<float>::per_channel(random_ranges(rng2, 3), 9);
  std::vector<std::uint8_t> codes(x.size(), 7);
  CHECK_THROWS_WITH_AS(ptq::device::quantize<std::uint8_t>(thrust::omp::par, span<const float>(x.data(), x.size()), 5,
                                                           p9, span<std::uint8_t>(codes.data(), codes.size())),
                       doctest::Contains("does not fit the 8-bit code type"), ptq::error);
  codes[11] = 16;  // 4 bits: qmax 15
  CHECK_THROWS_WITH_AS(ptq::device::dequantize(thrust::omp::par, span<const std::uint8_t>(codes.data(), codes.size()),
                                               5, p, os),
                       doctest::Contains("codes(2, 1) = 16 is above qmax = 15 of channel 2 (4 bits)"), ptq::error);
  for (float v : out) CHECK(v == 42.0f);
}

}  // namespace ptq_test_thrust_quantizer
