// test_readme.cpp: the README's examples (the paper's steps; beyond the paper on one layer), compiled and run on random data, with their results checked.
#include <doctest/doctest.h>

#include <algorithm>
#include <cmath>
#include <ptq/ptq.hpp>
#include <random>
#include <vector>

// Everything of this file in its own namespace: the test binary is a unity build.
namespace ptq_test_readme {

TEST_CASE("readme: the example compiles and does what the README says") {
  const ptq::index N = 2, C = 8, H = 5, W = 7, K = 6, R = 3, S = 3;
  std::mt19937_64 rng(7);
  std::normal_distribution<float> unit(0.0f, 1.0f);
  auto random = [&](std::size_t n) {
    std::vector<float> v(n);
    for (auto& x : v) x = unit(rng);
    return v;
  };
  std::vector<std::vector<float>> storage;
  for (int i = 0; i < 3; ++i) storage.push_back(random(static_cast<std::size_t>(N * C * H * W)));
  std::vector<const float*> calibration_batches;
  for (const auto& b : storage) calibration_batches.push_back(b.data());
  std::vector<float> xs = random(static_cast<std::size_t>(N * C * H * W)),
                     weight_storage = random(static_cast<std::size_t>(K * C * R * S));
  const std::vector<float> x_before = xs;
  float* x = xs.data();
  const float* weights = weight_storage.data();

  // ---- the README's code, verbatim ----
  const auto layout = ptq::channel_layout::of({N, C, H, W}, /*axis=*/1);

  ptq::calibration_statistics calib(C);
  for (const float* batch : calibration_batches) calib.add(ptq::channel_rows(batch, layout));
  const ptq::channel_stats stats = calib.result();

  const ptq::bit_allocation alloc = ptq::bit_allocator::exact(stats.b, {/*target_bits=*/4});
  const ptq::channel_ranges ranges = ptq::aciq_ranges(ptq::distribution::laplace, stats, alloc.bits);
  const auto params = ptq::quant_params<float>::per_channel(ranges, alloc.bits, stats.mean);

  ptq::gemmlowp_quantizer::fake_quantize_in_place(ptq::channel_rows(x, layout), params);

  auto w = ptq::channel_rows(weights, ptq::channel_layout::of({K, C, R, S}, 0));
  ptq::calibration_statistics wstats(K);
  wstats.add(w);
  const auto wp = ptq::quant_params<float>::per_channel(ptq::minmax_ranges(wstats.result()), 4);
  ptq::row_matrix<float> wq(w.rows(), w.cols());
  ptq::gemmlowp_quantizer::fake_quantize(w, wp, wq);
  const ptq::bias_correction fix = ptq::bias_corrector::correct(w, wq, {/*variance=*/true});
  // ---- end ----

  CHECK(alloc.bits.sum() == 4 * C);
  CHECK(fix.channels() == K);
  // x was quantized in place, channel by channel with its own grid: at most 2^bits levels each.
  for (ptq::index c = 0; c < C; ++c) {
    std::vector<float> levels;
    for (ptq::index n = 0; n < N; ++n)
      for (ptq::index j = 0; j < H * W; ++j) levels.push_back(x[((n * C + c) * H * W) + j]);
    std::sort(levels.begin(), levels.end());
    const auto distinct = std::unique(levels.begin(), levels.end()) - levels.begin();
    CHECK(distinct <= (ptq::index{1} << alloc.bits[c]));
  }
  CHECK(xs != x_before);
  // Corrected weights keep every channel's mean.
  for (ptq::index k = 0; k < K; ++k)
    CHECK(wq.row(k).cast<double>().mean() == doctest::Approx(w.row(k).cast<double>().mean()).epsilon(1e-5));
}

TEST_CASE("readme: beyond the paper on one layer - searched clip, learned rounding, empirical bias correction") {
  // A layer y = W x + b on correlated ReLU inputs (as examples/layer_demo.cpp, smaller).
  const ptq::index K = 8, D = 4 * 3 * 3, N = 512, latent = 8;
  std::mt19937_64 rng(11);
  std::normal_distribution<double> g(0.0, 1.0);
  Eigen::MatrixXd mix(D, latent);
  for (ptq::index i = 0; i < mix.size(); ++i) mix.data()[i] = g(rng) / std::sqrt(static_cast<double>(latent));
  auto inputs = [&] {
    Eigen::MatrixXd z(latent, N);
    for (ptq::index i = 0; i < z.size(); ++i) z.data()[i] = g(rng);
    return ptq::row_matrix<float>((mix * z).array().max(0.0).cast<float>());
  };
  ptq::row_matrix<float> W(K, D);
  for (ptq::index i = 0; i < W.size(); ++i) W.data()[i] = static_cast<float>(g(rng) / std::sqrt(static_cast<double>(D)));
  Eigen::VectorXf b(K);
  for (ptq::index k = 0; k < K; ++k) b[k] = static_cast<float>(0.1 * g(rng));
  const ptq::row_matrix<float> X = inputs(), X_test = inputs(), W_before = W, X_before = X;
  const Eigen::VectorXf b_before = b;
  using rows_f = ptq::row_matrix<float>;

  // ---- the README's code, verbatim ----
  ptq::clip_search_params cp;
  cp.g = ptq::granularity::per_tensor;
  cp.range = ptq::range_kind::unsigned_range;  // X is a ReLU output
  const ptq::clip_search_result clip = ptq::clip_search(X, /*channels=*/1, Eigen::VectorXi::Constant(1, 4), cp);
  const ptq::quant_params<float> xp = clip.params<float>();
  rows_f Xq(D, N);
  ptq::gemmlowp_quantizer::fake_quantize(X, xp, Xq);

  ptq::calibration_statistics wstats(K);
  wstats.add(W);
  const auto wp = ptq::quant_params<float>::per_channel(ptq::minmax_ranges(wstats.result()), 4);
  const rows_f Y = W * X;  // the float outputs (the bias adds to both sides)
  ptq::adaround_params ap;
  ap.iterations = 2000;
  const ptq::adaround_result<float> r = ptq::adaround(W, wp, Xq, Y, ap);  // r.codes, r.weights

  const rows_f Yq = r.weights * Xq;
  ptq::empirical_bias eb(K);
  eb.add(Y, Yq);
  Eigen::VectorXf b_q = b;
  eb.apply(b_q);
  // ---- end ----

  // Nothing the caller gave is changed.
  CHECK(W == W_before);
  CHECK(X == X_before);
  CHECK(b == b_before);
  // 1. The searched clip measures no worse than ACIQ's on the data, and Xq has at most 16 levels.
  CHECK(clip.mse[0] <= clip.aciq_mse[0]);
  std::vector<float> levels(Xq.data(), Xq.data() + Xq.size());
  std::sort(levels.begin(), levels.end());
  CHECK(std::unique(levels.begin(), levels.end()) - levels.begin() <= 16);
  // 2. Every learned weight is within one grid step of round-to-nearest (floor or ceil of the
  //    weight on its grid), some differ, and the held-out output error is below round-to-nearest's.
  rows_f Wn(K, D), Xq_test(D, N);
  ptq::gemmlowp_quantizer::fake_quantize(W, wp, Wn);
  ptq::gemmlowp_quantizer::fake_quantize(X_test, xp, Xq_test);
  ptq::index changed = 0;
  for (ptq::index k = 0; k < K; ++k)
    for (ptq::index j = 0; j < D; ++j) {
      const double step = wp.scale[k];
      CHECK(std::abs(static_cast<double>(r.weights(k, j)) - W(k, j)) <= step * (1 + 1e-5));
      changed += r.weights(k, j) != Wn(k, j);
    }
  CHECK(changed > 0);
  const rows_f Y_test = W * X_test;
  const double mse_nearest = (Y_test - Wn * Xq_test).cast<double>().squaredNorm();
  const double mse_learned = (Y_test - r.weights * Xq_test).cast<double>().squaredNorm();
  CHECK(mse_learned < mse_nearest);
  // 3. After the correction the mean output error of every channel on the calibration data is
  //    zero, against a double-precision recomputation.
  for (ptq::index k = 0; k < K; ++k) {
    double before = 0.0, after = 0.0;
    for (ptq::index n = 0; n < N; ++n) {
      double yf = b[k], yq = b_q[k];
      for (ptq::index j = 0; j < D; ++j) {
        yf += static_cast<double>(W(k, j)) * X(j, n);
        yq += static_cast<double>(r.weights(k, j)) * Xq(j, n);
      }
      before += yf - (yq - (b_q[k] - b[k]));
      after += yf - yq;
    }
    CHECK(std::abs(after / N) <= 1e-5 * (1.0 + std::abs(before / N)));
  }
}

}  // namespace ptq_test_readme
