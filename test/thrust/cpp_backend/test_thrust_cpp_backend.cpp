// test_thrust_cpp_backend.cpp: every ptq::device algorithm builds and agrees with the core on Thrust's sequential CPP backend.
#include <doctest/doctest.h>

#include <thrust/execution_policy.h>

#include <cstdint>
#include <cstring>
#include <random>
#include <vector>

#include "ptq/ptq.hpp"
#include "ptq/thrust.hpp"

static_assert(THRUST_DEVICE_SYSTEM == THRUST_DEVICE_SYSTEM_CPP, "this test is for the CPP backend");

TEST_CASE("thrust cpp backend: quantizers, statistics, ranges and bias correction equal the core") {
  using ptq::device::span;
  const ptq::index outer = 3, C = 5, inner = 37;
  std::mt19937_64 g(707);
  std::normal_distribution<float> d(0.2f, 1.5f);
  std::vector<float> x(static_cast<std::size_t>(outer * C * inner));
  for (auto& v : x) v = d(g);
  const ptq::const_row_map<float> xm(x.data(), outer * C, inner);
  const span<const float> xs(x.data(), x.size());

  ptq::calibration_statistics core(C);
  core.add(xm);
  const ptq::channel_stats cs = core.result();
  const ptq::channel_stats ds = ptq::device::batch_statistics(thrust::device, xs, inner, C);
  CHECK(ds.min == cs.min);
  CHECK(ds.max == cs.max);
  CHECK((ds.mean - cs.mean).cwiseAbs().maxCoeff() <= 1e-12);
  CHECK((ds.b - cs.b).cwiseAbs().maxCoeff() <= 1e-12);
  CHECK((ds.std - cs.std).cwiseAbs().maxCoeff() <= 1e-12);

  Eigen::VectorXi bits(C);
  bits << 0, 8, 4, 2, 3;
  const ptq::channel_ranges r = ptq::device::aciq_ranges(thrust::device, xs, inner, C, ptq::distribution::laplace, bits);
  CHECK((r.hi - ptq::aciq_ranges(ptq::distribution::laplace, cs, bits).hi).cwiseAbs().maxCoeff() <= 1e-10);
  const auto p = ptq::quant_params<float>::per_channel(r, bits, cs.mean);

  std::vector<float> a(x.size()), b(x.size());
  ptq::gemmlowp_quantizer::fake_quantize(xm, p, ptq::row_map<float>(a.data(), outer * C, inner));
  ptq::device::fake_quantize(thrust::device, xs, inner, p, span<float>(b.data(), b.size()));
  CHECK(std::memcmp(a.data(), b.data(), a.size() * sizeof(float)) == 0);
  std::vector<std::uint8_t> qa(x.size()), qb(x.size());
  ptq::gemmlowp_quantizer::quantize<std::uint8_t>(xm, p, ptq::row_map<std::uint8_t>(qa.data(), outer * C, inner));
  ptq::device::quantize<std::uint8_t>(thrust::device, xs, inner, p, span<std::uint8_t>(qb.data(), qb.size()));
  CHECK(qa == qb);
  ptq::device::dequantize(thrust::device, span<const std::uint8_t>(qb.data(), qb.size()), inner, p,
                          span<float>(b.data(), b.size()));
  CHECK(std::memcmp(a.data(), b.data(), a.size() * sizeof(float)) == 0);

  // Bias correction of the fake-quantized tensor seen as C*outer rows of weights.
  ptq::row_matrix<float> wq = ptq::const_row_map<float>(a.data(), outer * C, inner);
  std::vector<float> dq(a);
  const auto cc = ptq::bias_corrector::correct(xm, wq, {true});
  const auto dc = ptq::device::bias_corrector::correct(thrust::device, xs, span<float>(dq.data(), dq.size()), inner, {true});
  CHECK((cc.beta - dc.beta).cwiseAbs().maxCoeff() <= 1e-9);
  CHECK((cc.xi - dc.xi).cwiseAbs().maxCoeff() <= 1e-9);
  const auto cm = ptq::device::minmax_ranges(thrust::device, xs, inner, C);
  CHECK(cm.hi == ptq::minmax_ranges(cs).hi);
}
