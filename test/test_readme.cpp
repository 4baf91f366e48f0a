// test_readme.cpp: the README's example, compiled and run on random data, with its results checked.
#include <doctest/doctest.h>

#include <algorithm>
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
  std::vector<float> xs = random(static_cast<std::size_t>(N * C * H * W)), weights = random(static_cast<std::size_t>(K * C * R * S));
  const std::vector<float> x_before = xs;
  float* x = xs.data();

  // ---- the README's code, verbatim ----
  const auto layout = ptq::channel_layout::of({N, C, H, W}, /*axis=*/1);

  ptq::calibration_statistics calib(C);
  for (const float* batch : calibration_batches) calib.add(ptq::channel_rows(batch, layout));
  const ptq::channel_stats stats = calib.result();

  const ptq::bit_allocation alloc = ptq::bit_allocator::exact(stats.b, {/*target_bits=*/4});
  const ptq::channel_ranges ranges = ptq::aciq_ranges(ptq::distribution::laplace, stats, alloc.bits);
  const auto params = ptq::quant_params<float>::per_channel(ranges, alloc.bits, stats.mean);

  ptq::gemmlowp_quantizer::fake_quantize_in_place(ptq::channel_rows(x, layout), params);

  auto w = ptq::channel_rows(weights.data(), ptq::channel_layout::of({K, C, R, S}, 0));
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

}  // namespace ptq_test_readme
