// main.cpp: a consumer of the installed ptq package: find_package(ptq) + ptq::ptq, nothing else.
#include <cmath>
#include <cstdio>
#include <ptq/ptq.hpp>

int main() {
  // The paper's 4-bit Laplace clip, and one fake-quantized row through the installed headers.
  const double alpha = ptq::aciq<ptq::laplace, 4>::alpha();
  ptq::row_matrix<float> x(1, 4), q(1, 4);
  x << -1.0f, 0.0f, 0.26f, 1.0f;
  ptq::gemmlowp_quantizer::fake_quantize(x, ptq::quant_params<float>::per_tensor(-1.0, 1.0, 8), q);
  std::printf("aciq<laplace, 4>::alpha() = %.6f, fq(0.26) = %.6f\n", alpha, q(0, 2));
  const bool ok = std::abs(alpha - 5.028640) < 1e-6 && q(0, 1) == 0.0f && std::abs(q(0, 2) - 0.26f) <= 1.0f / 255;
  return ok ? 0 : 1;
}
