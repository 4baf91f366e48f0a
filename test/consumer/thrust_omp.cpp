// thrust_omp.cpp: a consumer of the installed package's ptq::thrust_omp: the Thrust layer on the OpenMP backend.
#include <thrust/execution_policy.h>

#include <cstdio>
#include <vector>

#include <ptq/ptq.hpp>
#include <ptq/thrust.hpp>

int main() {
  // 2 channels x 5 values, per-channel 4-bit fake quantization on thrust::omp::par, equal to the core's.
  std::vector<float> x = {-1.0f, -0.3f, 0.0f, 0.26f, 1.0f, 0.1f, 0.2f, 0.35f, 1.7f, 2.0f}, out(x.size()), ref(x.size());
  ptq::channel_ranges r;
  r.lo = Eigen::Vector2d(-1.0, 0.0);
  r.hi = Eigen::Vector2d(1.0, 2.0);
  const auto p = ptq::quant_params<float>::per_channel(r, 4);
  ptq::device::fake_quantize(thrust::omp::par, ptq::device::span<const float>(x.data(), x.size()), 5, p,
                             ptq::device::span<float>(out.data(), out.size()));
  const Eigen::Map<const ptq::row_matrix<float>> xm(x.data(), 2, 5);
  Eigen::Map<ptq::row_matrix<float>> rm(ref.data(), 2, 5);
  ptq::gemmlowp_quantizer::fake_quantize(xm, p, rm);
  std::printf("thrust_omp: fq(0.26) = %.6f, core %.6f\n", out[3], ref[3]);
  return out == ref ? 0 : 1;
}
