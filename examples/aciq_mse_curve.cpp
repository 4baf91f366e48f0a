// aciq_mse_curve.cpp: prints ptq::aciq_mse against the clipping value as CSV (the paper's Figure 1, analytic curves).
//
// Usage: aciq_mse_curve [points]   (default 241 points per curve)
//
// For Laplace(0, 1) over alpha in (0, 12] and Gauss(0, 1) over alpha in (0, 6], at
// M = 2, 3, 4 bits (bins = 2^M, signed range [-alpha, alpha]), one line per grid
// point: dist,bits,alpha,mse_analytic,alpha_opt, where mse_analytic is
// ptq::aciq_mse (clipping noise + quantization noise, unit scale) and alpha_opt is
// ptq::aciq_alpha_bins, the minimizer of that curve. tools/plot_aciq_mse.py reads it.
#include <cstdio>
#include <cstdlib>
#include <ptq/aciq.hpp>

int main(int argc, char** argv) {
  long points = 241;
  if (argc > 1) {
    char* end = nullptr;
    points = std::strtol(argv[1], &end, 10);
    if (argc > 2 || end == argv[1] || *end != '\0' || points < 2 || points > 1000000) {
      std::fprintf(stderr, "usage: aciq_mse_curve [points in 2..1000000]\n");
      return 2;
    }
  }
  struct curve {
    ptq::distribution dist;
    const char* name;
    double alpha_max;
  };
  const curve curves[] = {{ptq::distribution::laplace, "laplace", 12.0}, {ptq::distribution::gauss, "gauss", 6.0}};
  std::printf("dist,bits,alpha,mse_analytic,alpha_opt\n");
  for (const curve& c : curves)
    for (int bits = 2; bits <= 4; ++bits) {
      const double bins = static_cast<double>(1 << bits);
      const double alpha_opt = ptq::aciq_alpha_bins(c.dist, bins);
      for (long i = 1; i <= points; ++i) {
        const double alpha = c.alpha_max * static_cast<double>(i) / static_cast<double>(points);
        std::printf("%s,%d,%.9g,%.9g,%.9g\n", c.name, bits, alpha, ptq::aciq_mse(c.dist, alpha, bins), alpha_opt);
      }
    }
  return 0;
}
