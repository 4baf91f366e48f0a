// ptq_demo.cpp: the library end to end on synthetic data: the ACIQ table, 4-bit activations, 4-bit weights.
//
// 1. Prints the optimal clipping values a*/scale for M = 1..8 bits (docs/method.md's table).
// 2. Calibrates per-channel statistics of a Laplace-distributed NCHW activation over
//    4 batches, then fake-quantizes a held-out batch to 4 bits three ways: min/max
//    ranges, ACIQ ranges, ACIQ ranges with per-channel bit allocation (4 bits mean).
// 3. Quantizes conv weights per output channel to 4 bits and repairs the per-channel
//    mean and norm with bias correction, measured on the layer's output.
#include <cmath>
#include <cstdio>
#include <ptq/ptq.hpp>
#include <random>

namespace {

using rows_f = ptq::row_matrix<float>;

// Signal-to-quantization-noise ratio in dB.
double sqnr_db(const rows_f& x, const rows_f& q) {
  return 10.0 * std::log10(x.cast<double>().squaredNorm() / (x - q).cast<double>().squaredNorm());
}

// N x C x H x W activations, channel c ~ Laplace(mean[c], b[c]).
rows_f laplace_batch(std::mt19937_64& rng, ptq::index n, const Eigen::VectorXd& mean, const Eigen::VectorXd& b,
                     ptq::index hw) {
  const ptq::index c_count = mean.size();
  rows_f x(n * c_count, hw);
  std::exponential_distribution<double> e(1.0);
  std::bernoulli_distribution sign(0.5);
  for (ptq::index r = 0; r < x.rows(); ++r)
    for (ptq::index j = 0; j < hw; ++j) {
      const ptq::index c = r % c_count;
      x(r, j) = static_cast<float>(mean[c] + (sign(rng) ? 1 : -1) * b[c] * e(rng));
    }
  return x;
}

void print_aciq_table() {
  using ptq::distribution;
  using ptq::range_kind;
  std::printf("ACIQ optimal clipping a*/scale (Laplace: scale b, Gauss: scale sigma)\n");
  std::printf("  M   Laplace signed  unsigned   Gauss signed  unsigned\n");
  for (int m = 1; m <= 8; ++m)
    std::printf("  %d   %14.6f %9.6f %14.6f %9.6f\n", m, ptq::aciq_alpha(distribution::laplace, m),
                ptq::aciq_alpha(distribution::laplace, m, range_kind::unsigned_range),
                ptq::aciq_alpha(distribution::gauss, m),
                ptq::aciq_alpha(distribution::gauss, m, range_kind::unsigned_range));
}

void activations_demo(std::mt19937_64& rng) {
  const ptq::index N = 16, C = 32, HW = 14 * 14;
  Eigen::VectorXd mean(C), b(C);
  std::lognormal_distribution<double> spread(0.0, 0.75);
  std::normal_distribution<double> centre(0.0, 0.5);
  for (ptq::index c = 0; c < C; ++c) {
    b[c] = spread(rng);
    mean[c] = centre(rng);
  }
  ptq::calibration_statistics calib(C);  // the reference's mode: per-batch statistics, averaged
  for (int batch = 0; batch < 4; ++batch) calib.add(laplace_batch(rng, N, mean, b, HW));
  const ptq::channel_stats stats = calib.result();

  const rows_f x = laplace_batch(rng, N, mean, b, HW);  // held-out batch, (N*C) x (H*W)
  rows_f q(x.rows(), x.cols());
  auto run = [&](const char* name, const ptq::quant_params<float>& p) {
    ptq::gemmlowp_quantizer::fake_quantize(x, p, q);
    std::printf("  %-38s %6.2f dB\n", name, sqnr_db(x, q));
  };
  std::printf("\n4-bit activations: %td x %td x 14 x 14 Laplace, per channel, SQNR on a held-out batch\n", N, C);
  run("min/max ranges", ptq::quant_params<float>::per_channel(ptq::minmax_ranges(stats), 4));
  run("ACIQ (Laplace) ranges", ptq::quant_params<float>::per_channel(
                                   ptq::aciq_ranges(ptq::distribution::laplace, stats, 4), 4));
  ptq::bit_allocator::params budget;
  budget.target_bits = 4;
  const ptq::bit_allocation alloc = ptq::bit_allocator::exact(stats.b, budget);
  run("ACIQ + bit allocation (mean 4 bits)",
      ptq::quant_params<float>::per_channel(ptq::aciq_ranges(ptq::distribution::laplace, stats, alloc.bits),
                                            alloc.bits, stats.mean));
  std::printf("  bits per channel:");
  for (ptq::index c = 0; c < C; ++c) std::printf(" %d", alloc.bits[c]);
  std::printf("  (mean %.2f)\n", alloc.mean_bits);
}

void weights_demo(std::mt19937_64& rng) {
  const ptq::index K = 64, CRS = 32 * 3 * 3, batch = 256;
  rows_f w(K, CRS);  // KCRS conv weights seen as K x (C*R*S), RowMajor
  std::normal_distribution<double> unit(0.0, 1.0);
  std::lognormal_distribution<double> spread(-3.0, 0.5);
  for (ptq::index k = 0; k < K; ++k) {
    const double s = spread(rng), m = 0.3 * s * unit(rng);
    for (ptq::index j = 0; j < CRS; ++j) w(k, j) = static_cast<float>(m + s * unit(rng));
  }
  // Post-ReLU inputs: non-negative, so a shift of a channel's weight mean biases its output.
  rows_f in(CRS, batch);
  for (ptq::index i = 0; i < in.size(); ++i) in.data()[i] = static_cast<float>(std::abs(unit(rng)));

  ptq::calibration_statistics wstats(K);  // weights: channel axis 0, one "batch"
  wstats.add(w);
  const auto p = ptq::quant_params<float>::per_channel(ptq::minmax_ranges(wstats.result()), 4);
  rows_f wq(K, CRS);
  ptq::gemmlowp_quantizer::fake_quantize(w, p, wq);
  const rows_f y = w * in;
  auto report = [&](const char* name, const rows_f& wx) {
    const double mean_err = (w.rowwise().mean() - wx.rowwise().mean()).cwiseAbs().cast<double>().maxCoeff();
    std::printf("  %-30s max |E[W]-E[Wq]| %.2e   output SQNR %6.2f dB\n", name, mean_err, sqnr_db(y, wx * in));
  };
  std::printf("\n4-bit weights: %td x %td conv weights, per output channel min/max\n", K, CRS);
  report("quantized", wq);
  rows_f corrected = wq;
  ptq::bias_corrector::correct(w, corrected);
  report("+ bias correction", corrected);
  corrected = wq;
  ptq::bias_corrector::params with_variance;
  with_variance.variance = true;
  ptq::bias_corrector::correct(w, corrected, with_variance);
  report("+ bias and variance correction", corrected);
}

}  // namespace

int main() {
  try {
    std::mt19937_64 rng(2019);
    print_aciq_table();
    activations_demo(rng);
    weights_demo(rng);
  } catch (const ptq::error& e) {
    std::fprintf(stderr, "ptq_demo: %s\n", e.what());
    return 1;
  }
  return 0;
}
