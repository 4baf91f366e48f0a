// layer_demo.cpp: beyond the paper on one layer: searched input clip, learned rounding, empirical bias correction.
//
// A linear layer y = W x + b (a conv after im2col: K = 32 output channels, D = 16 x 3 x 3
// inputs) on synthetic ReLU inputs with correlated features, 1024 calibration samples and
// 1024 held-out ones. W4A4, per-tensor input grid, per-channel weight grids:
// 1. the input's clip: ACIQ's Laplace closed form against ptq::clip_search (measured MSE);
// 2. the weights: round to nearest against ptq::adaround (learned up/down rounding), by the
//    layer's output error on held-out samples;
// 3. ptq::empirical_bias: the mean output error per channel before and after the correction.
// The library calls are README's "Beyond the paper on one layer" (test_readme.cpp runs them).
#include <cmath>
#include <cstdio>
#include <ptq/ptq.hpp>
#include <random>

namespace {

using rows_f = ptq::row_matrix<float>;

// D x N inputs relu(M z + c): z ~ N(0, I_r), so the D features are correlated (as a conv's
// neighbouring pixels and channels are), a fixed mixing M and offset c for both sets.
rows_f relu_inputs(std::mt19937_64& rng, const Eigen::MatrixXd& mix, const Eigen::VectorXd& offset, ptq::index n) {
  std::normal_distribution<double> g(0.0, 1.0);
  Eigen::MatrixXd z(mix.cols(), n);
  for (ptq::index i = 0; i < z.size(); ++i) z.data()[i] = g(rng);
  const Eigen::MatrixXd pre = (mix * z).colwise() + offset;
  return pre.cwiseMax(0.0).cast<float>();
}

// Mean over samples of the squared output error, per output value: ||A - B||^2 / (K N).
double output_mse(const rows_f& a, const rows_f& b) {
  return (a - b).cast<double>().squaredNorm() / static_cast<double>(a.size());
}

// max over channels of |E[y_float - y_quant]| (rows = channels, columns = samples).
double max_mean_error(const rows_f& y_float, const rows_f& y_quant) {
  return (y_float - y_quant).cast<double>().rowwise().mean().cwiseAbs().maxCoeff();
}

}  // namespace

int main() {
  const ptq::index K = 32, D = 16 * 3 * 3, N = 1024, latent = 24;
  std::mt19937_64 rng(2019);
  std::normal_distribution<double> g(0.0, 1.0);
  Eigen::MatrixXd mix(D, latent);
  for (ptq::index i = 0; i < mix.size(); ++i) mix.data()[i] = g(rng) / std::sqrt(static_cast<double>(latent));
  Eigen::VectorXd offset(D);
  for (ptq::index i = 0; i < D; ++i) offset[i] = 0.3 * g(rng);
  rows_f W(K, D);
  for (ptq::index i = 0; i < W.size(); ++i) W.data()[i] = static_cast<float>(g(rng) / std::sqrt(static_cast<double>(D)));
  Eigen::VectorXf b(K);
  for (ptq::index k = 0; k < K; ++k) b[k] = static_cast<float>(0.1 * g(rng));
  const rows_f X = relu_inputs(rng, mix, offset, N);       // calibration inputs
  const rows_f X_test = relu_inputs(rng, mix, offset, N);  // held-out inputs

  // ---- README, "Beyond the paper on one layer" ----
  // 1. The input's 4-bit clip, per tensor, searched on the data from ACIQ's closed form.
  ptq::clip_search_params cp;
  cp.g = ptq::granularity::per_tensor;
  cp.range = ptq::range_kind::unsigned_range;  // X is a ReLU output
  const ptq::clip_search_result clip = ptq::clip_search(X, /*channels=*/1, Eigen::VectorXi::Constant(1, 4), cp);
  const ptq::quant_params<float> xp = clip.params<float>();
  rows_f Xq(D, N);
  ptq::gemmlowp_quantizer::fake_quantize(X, xp, Xq);

  // 2. 4-bit weights per output channel, each rounded up or down so that the layer's
  //    output on the quantized inputs reconstructs the float one (AdaRound).
  ptq::calibration_statistics wstats(K);
  wstats.add(W);
  const auto wp = ptq::quant_params<float>::per_channel(ptq::minmax_ranges(wstats.result()), 4);
  const rows_f Y = W * X;  // the float outputs (the bias adds to both sides)
  ptq::adaround_params ap;
  ap.iterations = 2000;
  const ptq::adaround_result<float> r = ptq::adaround(W, wp, Xq, Y, ap);  // r.codes, r.weights

  // 3. Empirical bias correction: each output channel's mean error, folded into the bias.
  const rows_f Yq = r.weights * Xq;
  ptq::empirical_bias eb(K);
  eb.add(Y, Yq);
  Eigen::VectorXf b_q = b;
  eb.apply(b_q);
  // ---- end ----

  std::printf("input clip, 4 bits per tensor (%lld x %lld calibration values)\n", static_cast<long long>(D),
              static_cast<long long>(N));
  std::printf("  ACIQ (Laplace)   clip %.4f   measured MSE %.3e\n", clip.aciq_clip[0], clip.aciq_mse[0]);
  std::printf("  searched         clip %.4f   measured MSE %.3e\n", clip.clip[0], clip.mse[0]);

  rows_f Wn(K, D);
  ptq::gemmlowp_quantizer::fake_quantize(W, wp, Wn);
  rows_f Xq_test(D, N);
  ptq::gemmlowp_quantizer::fake_quantize(X_test, xp, Xq_test);
  const rows_f Y_test = W * X_test;
  const rows_f Yn_test = Wn * Xq_test, Ya_test = r.weights * Xq_test;
  ptq::index changed = 0;
  for (ptq::index i = 0; i < Wn.size(); ++i) changed += Wn.data()[i] != r.weights.data()[i];
  std::printf("4-bit weights, output MSE on %lld held-out samples (float outputs' mean square %.3e)\n",
              static_cast<long long>(N), Y_test.cast<double>().squaredNorm() / static_cast<double>(Y_test.size()));
  std::printf("  round to nearest %.3e\n", output_mse(Y_test, Yn_test));
  std::printf("  AdaRound         %.3e   (%lld of %lld weights rounded the other way, %lld steps, %.2f s)\n",
              output_mse(Y_test, Ya_test), static_cast<long long>(changed), static_cast<long long>(Wn.size()),
              static_cast<long long>(r.iterations), r.seconds);

  const Eigen::VectorXf shift = b_q - b;
  const rows_f Yc = Yq.colwise() + shift, Yc_test = Ya_test.colwise() + shift;
  std::printf("mean output error per channel, max over channels\n");
  std::printf("  calibration: before %.3e, after bias correction %.3e\n", max_mean_error(Y, Yq),
              max_mean_error(Y, Yc));
  std::printf("  held-out:    before %.3e, after bias correction %.3e\n", max_mean_error(Y_test, Ya_test),
              max_mean_error(Y_test, Yc_test));
  return 0;
}
