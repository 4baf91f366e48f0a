// test_adaround.cpp: learned rounding against its plain twin, round-to-nearest, closed forms and itself across threads.
#include <doctest/doctest.h>

#include <ptq/adaround.hpp>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <limits>
#include <random>
#include <set>
#include <string>
#include <vector>

// Everything of this file in its own namespace: the test binary is a unity build.
namespace ptq_test_adaround {

namespace {

template <class T>
using mat = ptq::row_matrix<T>;
using ix = ptq::index;

// A layer whose inputs have a strong low-rank structure: x = A z + noise (rank r), w Gaussian.
template <class T>
struct layer {
  mat<T> w, x, x_test;
  ptq::quant_params<T> p;
};

template <class T>
layer<T> make_layer(ix K, ix D, ix N, ix rank, double noise, std::uint64_t seed, bool odd_rows = true) {
  std::mt19937_64 rng(seed);
  std::normal_distribution<double> g(0.0, 1.0);
  layer<T> L;
  L.w = mat<T>::NullaryExpr(K, D, [&] { return static_cast<T>(0.1 * g(rng)); });
  const mat<double> A = mat<double>::NullaryExpr(D, rank, [&] { return g(rng); });
  const auto inputs = [&](ix n) {
    const mat<double> z = mat<double>::NullaryExpr(rank, n, [&] { return g(rng); });
    const mat<double> e = mat<double>::NullaryExpr(D, n, [&] { return noise * g(rng); });
    return mat<T>((A * z + e).template cast<T>());
  };
  L.x = inputs(N);
  L.x_test = inputs(N);
  ptq::channel_ranges r;
  r.lo = L.w.template cast<double>().rowwise().minCoeff();
  r.hi = L.w.template cast<double>().rowwise().maxCoeff();
  Eigen::VectorXi bits = Eigen::VectorXi::Constant(K, 4);
  if (odd_rows && K > 6) {
    bits[1] = 3;
    bits[2] = 0;                  // 0 bits: a constant channel
    L.w.row(5).setConstant(T(0.03));  // zero-width range: a constant channel
    r.lo[5] = r.hi[5] = static_cast<double>(T(0.03));
    bits[6] = 8;
  }
  L.p = ptq::quant_params<T>::per_channel(r, bits);
  return L;
}

template <class T>
ptq::adaround_params small_params(ix iterations, ix batch) {
  ptq::adaround_params a;
  a.iterations = iterations;
  a.batch = batch;
  a.seed = 7;
  a.threads = 2;
  return a;
}

double rel(double a, double b) { return std::abs(a - b) / std::max({std::abs(a), std::abs(b), 1e-300}); }

template <class T>
double max_rel(const std::vector<double>& a, const std::vector<double>& b) {
  REQUIRE(a.size() == b.size());
  double m = 0.0;
  for (std::size_t i = 0; i < a.size(); ++i) m = std::max(m, rel(a[i], b[i]));
  return m;
}

// ||(wq - w) x||_F^2 in double over the rows p does not map to a constant.
template <class T>
double output_error(const mat<T>& wq, const mat<T>& w, const mat<T>& x, const ptq::quant_params<T>& p) {
  const mat<double> e = (wq.template cast<double>() - w.template cast<double>()) * x.template cast<double>();
  double sum = 0.0;
  for (ix k = 0; k < e.rows(); ++k)
    if (!p.is_constant(k % p.channels())) sum += e.row(k).squaredNorm();
  return sum;
}

}  // namespace

TEST_CASE("adaround: the fast path follows its plain twin (double) - losses, beta, codes, weights") {
  const layer<double> L = make_layer<double>(20, 37, 300, 3, 0.05, 1);
  for (const bool give_y : {false, true}) {
    for (const ix row_block : {16, 5}) {
      CAPTURE(give_y);
      CAPTURE(row_block);
      auto a = small_params<double>(300, 64);
      a.row_block = row_block;
      const mat<double> y = L.w * L.x + mat<double>::Constant(20, 300, 0.01);  // targets other than W X
      const auto fast = give_y ? ptq::adaround(L.w, L.p, L.x, y, a) : ptq::adaround(L.w, L.p, L.x, a);
      const auto ref = give_y ? ptq::adaround_ref(L.w, L.p, L.x, y, a) : ptq::adaround_ref(L.w, L.p, L.x, a);
      REQUIRE(fast.iterations == 300);
      REQUIRE(ref.iterations == 300);
      MESSAGE("fast vs twin, largest relative difference: reconstruction " << max_rel<double>(fast.rec_loss, ref.rec_loss)
              << ", regularizer " << max_rel<double>(fast.reg_loss, ref.reg_loss));
      CHECK(fast.beta == ref.beta);
      CHECK(max_rel<double>(fast.rec_loss, ref.rec_loss) < 1e-9);
      CHECK(max_rel<double>(fast.reg_loss, ref.reg_loss) < 1e-9);
      CHECK(fast.codes == ref.codes);
      CHECK(fast.weights == ref.weights);
      CHECK((fast.v - ref.v).cwiseAbs().maxCoeff() < 1e-9);
      CHECK((fast.h - ref.h).cwiseAbs().maxCoeff() < 1e-9);
      // The run did something: the regularizer is on after the warm-up, and codes moved off nearest.
      CHECK(ref.reg_loss[58] == 0.0);  // count 59 < 0.2 * 300
      CHECK(ref.reg_loss[59] > 0.0);
    }
  }
}

TEST_CASE("adaround: float fast path against the double twin") {
  const layer<float> L = make_layer<float>(20, 37, 300, 3, 0.05, 2);
  const auto a = small_params<float>(300, 64);
  const auto fast = ptq::adaround(L.w, L.p, L.x, a);
  const auto ref = ptq::adaround_ref(L.w, L.p, L.x, a);
  // Losses along the run: float GEMMs and Adam state, the twin in double.
  for (std::size_t t = 0; t < fast.rec_loss.size(); ++t) {
    CAPTURE(t);
    CHECK(std::abs(fast.rec_loss[t] - ref.rec_loss[t]) <= 1e-3 * ref.rec_loss[t] + 1e-7);
    CHECK(std::abs(fast.reg_loss[t] - ref.reg_loss[t]) <= 1e-3 * ref.reg_loss[t] + 1e-7);
  }
  const double same = static_cast<double>((fast.codes.array() == ref.codes.array()).count()) / static_cast<double>(fast.codes.size());
  CHECK(same >= 0.995);
}

TEST_CASE("adaround: deterministic for a seed - bit for bit across 1, 2 and 3 threads") {
  const layer<float> L = make_layer<float>(40, 50, 500, 4, 0.05, 3);
  auto a = small_params<float>(200, 128);
  a.row_block = 8;  // 5 blocks
  std::vector<ptq::adaround_result<float>> runs;
  for (const int threads : {1, 2, 3, 2}) {
    a.threads = threads;
    runs.push_back(ptq::adaround(L.w, L.p, L.x, a));
  }
  for (std::size_t i = 1; i < runs.size(); ++i) {
    CAPTURE(i);
    CHECK(runs[i].rec_loss == runs[0].rec_loss);
    CHECK(runs[i].reg_loss == runs[0].reg_loss);
    CHECK(runs[i].codes == runs[0].codes);
    CHECK(runs[i].v == runs[0].v);
  }
  // x in other storage: column-major, and the transpose of a row-major N x D matrix (one
  // sample per row): the same gathered batches, the same result.
  a.threads = 2;
  const Eigen::MatrixXf x_col = L.x;
  const mat<float> x_samples = L.x.transpose();
  const auto col = ptq::adaround(L.w, L.p, x_col, a);
  const auto tr = ptq::adaround(L.w, L.p, x_samples.transpose(), a);
  CHECK(col.rec_loss == runs[0].rec_loss);
  CHECK(col.codes == runs[0].codes);
  CHECK(tr.rec_loss == runs[0].rec_loss);
  CHECK(tr.codes == runs[0].codes);
  a.seed = 8;  // another batch sequence: another run
  const auto other = ptq::adaround(L.w, L.p, L.x, a);
  CHECK(other.rec_loss != runs[0].rec_loss);
  // Full batch (batch >= N): every column every step, no randomness at all.
  a.iterations = 50;
  a.batch = 500;
  const auto full1 = ptq::adaround(L.w, L.p, L.x, a);
  a.seed = 9;
  a.batch = 100000;
  const auto full2 = ptq::adaround(L.w, L.p, L.x, a);
  CHECK(full1.rec_loss == full2.rec_loss);
  CHECK(full1.codes == full2.codes);
}

TEST_CASE("adaround: learned codes beat round-to-nearest on held-out columns of low-rank inputs") {
  const ix K = 12, D = 48, N = 1024;
  const layer<float> L = make_layer<float>(K, D, N, 4, 0.02, 4);
  auto a = small_params<float>(10000, 64);  // the paper's 10 000 iterations
  const auto r = ptq::adaround(L.w, L.p, L.x, a);
  REQUIRE(r.iterations == 10000);
  mat<float> rtn(K, D);
  ptq::gemmlowp_quantizer::fake_quantize(L.w, L.p, rtn);
  const double e_rtn = output_error(rtn, L.w, L.x_test, L.p), e_ada = output_error(r.weights, L.w, L.x_test, L.p);
  MESSAGE("held-out ||(Wq - W) X||^2: round-to-nearest " << e_rtn << ", AdaRound " << e_ada << " (" << r.seconds
                                                          << " s)");
  CHECK(e_ada < 0.25 * e_rtn);

  // Codes: within [floor, floor + 1] of w / s and inside the grid; weights on the grid;
  // quantize() maps the weights back to the codes (integer paths run them unchanged).
  Eigen::Matrix<std::uint16_t, Eigen::Dynamic, Eigen::Dynamic, Eigen::RowMajor> back(K, D);
  ptq::gemmlowp_quantizer::quantize<std::uint16_t>(r.weights, L.p, back);
  CHECK(back == r.codes);
  mat<float> deq(K, D);
  ptq::gemmlowp_quantizer::dequantize(r.codes, L.p, deq);
  CHECK(deq == r.weights);
  // The regularizer drives h to 0 or 1 (on the side of the hard code); without it few get there.
  a.lambda = 0.0;
  a.iterations = 2000;
  const auto free = ptq::adaround(L.w, L.p, L.x, a);
  ix up = 0, active = 0, binary = 0, binary_free = 0;
  for (ix k = 0; k < K; ++k) {
    const int z = L.p.zero_point[k], q = L.p.qmax(k);
    const bool constant = L.p.is_constant(k);
    for (ix j = 0; j < D; ++j) {
      const int c = r.codes(k, j);
      CHECK(c <= q);
      if (constant) {
        CHECK(c == std::clamp(z, 0, q));
        CHECK(r.weights(k, j) == rtn(k, j));
        continue;
      }
      ++active;
      const int f = static_cast<int>(std::floor(L.w(k, j) * (1.0f / L.p.scale[k]))) + z;
      CHECK(c >= std::clamp(f, 0, q));
      CHECK(c <= std::clamp(f + 1, 0, q));
      up += c == f + 1;
      const float h = r.h(k, j);
      binary += h == 0.0f || h == 1.0f;
      binary_free += free.h(k, j) == 0.0f || free.h(k, j) == 1.0f;
      if (f >= 0 && f + 1 <= q) CHECK((h >= 0.5f) == (c == f + 1));
    }
  }
  MESSAGE(binary << " of " << active << " h exactly 0 or 1 after " << r.iterations << " iterations (" << binary_free
                 << " without the regularizer); " << up << " rounded up");
  CHECK(static_cast<double>(binary) >= 0.99 * static_cast<double>(active));
  CHECK(static_cast<double>(binary_free) < 0.2 * static_cast<double>(active));
  CHECK(up > active / 5);
  CHECK(up < active * 4 / 5);
}

TEST_CASE("adaround: the schedule - warm-up without regularizer, then beta linear from 20 to 2") {
  ptq::adaround_params a;
  a.iterations = 100;
  for (ix t = 0; t < 19; ++t) CHECK_FALSE(ptq::adaround_regularized(a, t));  // count t + 1 < 20
  for (ix t = 19; t < 100; ++t) CHECK(ptq::adaround_regularized(a, t));
  CHECK(ptq::adaround_beta(a, 0) == 20.0);
  CHECK(ptq::adaround_beta(a, 19) == 20.0);
  CHECK(ptq::adaround_beta(a, 59) == doctest::Approx(11.0));  // 2 + 18 (1 - 40 / 80)
  CHECK(ptq::adaround_beta(a, 99) == 2.0);
  const layer<double> L = make_layer<double>(6, 10, 40, 2, 0.1, 5, false);
  const auto r = ptq::adaround(L.w, L.p, L.x, a);
  REQUIRE(r.beta.size() == 100);
  for (ix t = 0; t < 100; ++t) {
    CAPTURE(t);
    CHECK(r.beta[static_cast<std::size_t>(t)] == ptq::adaround_beta(a, t));
    CHECK((r.reg_loss[static_cast<std::size_t>(t)] > 0.0) == (t >= 19));
    // lambda sum (1 - |2h - 1|^beta) is at most lambda per weight
    CHECK(r.reg_loss[static_cast<std::size_t>(t)] <= 0.01 * 60);
  }
}

TEST_CASE("adaround: zero iterations give round-to-nearest - the first loss is that of W clipped to its grid") {
  const layer<double> L = make_layer<double>(12, 30, 50, 3, 0.1, 6);
  ptq::adaround_params a;
  a.iterations = 0;
  for (const bool ref : {false, true}) {
    const auto r = ref ? ptq::adaround_ref(L.w, L.p, L.x, a) : ptq::adaround(L.w, L.p, L.x, a);
    CHECK(r.iterations == 0);
    CHECK(r.rec_loss.empty());
    Eigen::Matrix<std::uint16_t, Eigen::Dynamic, Eigen::Dynamic, Eigen::RowMajor> q(12, 30);
    ptq::gemmlowp_quantizer::quantize<std::uint16_t>(L.w, L.p, q);
    CHECK(r.codes == q);  // no exact ties in Gaussian data
  }
  // One step: W_soft starts at W clipped to its grid [-z s, (Q - z) s] (a min/max grid whose
  // zero point was rounded leaves an end weight up to half a step outside), so the first
  // loss is that of the clipped weights: ||(clip(W) - W) X||^2 / N.
  a.iterations = 1;
  const layer<double> M = make_layer<double>(12, 30, 50, 3, 0.1, 6, false);
  mat<double> clipped = M.w;
  for (ix k = 0; k < 12; ++k) {
    const double s = M.p.scale[k], z = M.p.zero_point[k], q = M.p.qmax(k);
    clipped.row(k) = clipped.row(k).cwiseMax(-z * s).cwiseMin((q - z) * s);
  }
  const double start = ((clipped - M.w) * M.x).squaredNorm() / 50.0;
  CHECK(start > 0.0);  // this layer has clipped end weights
  for (const bool ref : {false, true}) {
    const auto r = ref ? ptq::adaround_ref(M.w, M.p, M.x, a) : ptq::adaround(M.w, M.p, M.x, a);
    CHECK(r.rec_loss[0] == doctest::Approx(start).epsilon(1e-9));
  }
}

TEST_CASE("adaround: a time budget stops the run after an iteration and says so") {
  const layer<float> L = make_layer<float>(8, 16, 64, 2, 0.1, 7);
  auto a = small_params<float>(100000, 32);
  a.seconds = 1e-9;
  for (const bool ref : {false, true}) {
    const auto r = ref ? ptq::adaround_ref(L.w, L.p, L.x, a) : ptq::adaround(L.w, L.p, L.x, a);
    CHECK(r.iterations == 1);
    CHECK(r.stopped_by_time);
    CHECK(r.rec_loss.size() == 1);
    CHECK(r.codes.rows() == 8);
  }
}

TEST_CASE("adaround_sampler: distinct sorted indices, uniform, portable, full batch") {
  // Reimplementation of the documented draw from std::mt19937_64 (specified bit for bit).
  std::mt19937_64 g(123);
  std::vector<ix> perm(10);
  for (ix i = 0; i < 10; ++i) perm[static_cast<std::size_t>(i)] = i;
  for (ix i = 0; i < 3; ++i) {
    const std::uint64_t n = static_cast<std::uint64_t>(10 - i), lim = (0 - n) % n;
    std::uint64_t x;
    do x = g();
    while (x < lim);
    std::swap(perm[static_cast<std::size_t>(i)], perm[static_cast<std::size_t>(i + static_cast<ix>(x % n))]);
  }
  std::vector<ix> first(perm.begin(), perm.begin() + 3);
  std::sort(first.begin(), first.end());
  ptq::adaround_sampler s(123, 10, 3);
  CHECK(s.next() == first);

  std::vector<int> count(10, 0);
  const int draws = 30000;
  for (int d = 0; d < draws; ++d) {
    const auto& b = s.next();
    REQUIRE(b.size() == 3);
    CHECK(std::is_sorted(b.begin(), b.end()));
    CHECK(std::set<ix>(b.begin(), b.end()).size() == 3);
    for (const ix i : b) {
      REQUIRE(i >= 0);
      REQUIRE(i < 10);
      ++count[static_cast<std::size_t>(i)];
    }
  }
  // Each column in 3 of 10 draws: 9000 +- 79 (binomial sd); 5 sd.
  for (const int c : count) CHECK(std::abs(c - 9000) < 400);
  ptq::adaround_sampler full(1, 5, 9);
  CHECK(full.batch() == 5);
  CHECK(full.next() == std::vector<ix>{0, 1, 2, 3, 4});
  CHECK(full.next() == std::vector<ix>{0, 1, 2, 3, 4});
  CHECK_THROWS_AS(ptq::adaround_sampler(1, 0, 3), ptq::error);
  CHECK_THROWS_AS(ptq::adaround_sampler(1, 4, 0), ptq::error);
}

// The output's activation: per row lo_k = the row's -b_k (a ReLU after a bias b_k) and hi_k the
// 80th percentile of its outputs + lo_k shift (a quantizer's clip), some rows linear.
template <class T>
void clamp_rows(ptq::adaround_params& a, const mat<T>& w, const mat<T>& x) {
  const mat<double> o = w.template cast<double>() * x.template cast<double>();
  const ix K = o.rows();
  a.output_lo.resize(K);
  a.output_hi.resize(K);
  for (ix k = 0; k < K; ++k) {
    std::vector<double> v(o.row(k).data(), o.row(k).data() + o.cols());
    std::sort(v.begin(), v.end());
    const double lo = v[v.size() * 3 / 10], hi = v[v.size() * 8 / 10];  // 30 % below, 20 % above
    a.output_lo[k] = k % 4 == 3 ? -std::numeric_limits<double>::infinity() : lo;
    a.output_hi[k] = k % 4 == 2 ? std::numeric_limits<double>::infinity() : hi;
  }
}

// sum over rows and columns of (clamp(wq x) - clamp(y))^2, naive, in double.
template <class T>
double clamped_error(const mat<T>& wq, const mat<T>& x, const mat<double>& y, const ptq::adaround_params& a,
                     const ptq::quant_params<T>& p) {
  const mat<double> o = wq.template cast<double>() * x.template cast<double>();
  double sum = 0.0;
  for (ix k = 0; k < o.rows(); ++k) {
    if (p.is_constant(k % p.channels())) continue;
    for (ix n = 0; n < o.cols(); ++n) {
      const double lo = a.output_lo[k], hi = a.output_hi[k];
      const double e = std::clamp(o(k, n), lo, hi) - std::clamp(y(k, n), lo, hi);
      sum += e * e;
    }
  }
  return sum;
}

TEST_CASE("adaround: a clamped output (ReLU, a quantizer's clip) - the first loss, the twin, and what it reduces") {
  const ix K = 12, D = 40, N = 512;
  const layer<double> L = make_layer<double>(K, D, N, 4, 0.05, 11, false);
  auto a = small_params<double>(400, N);  // full batch: rec_loss[t] is the loss over all columns
  clamp_rows(a, L.w, L.x);
  // The first loss is that of W_soft = W (inside its grid: min/max) under the clamp, naive in
  // double; it is not the linear loss, which is 0 at W.
  const mat<double> y = L.w * L.x;
  const mat<double> y_shift = y + mat<double>::Constant(K, N, 0.05);  // targets other than W X
  mat<double> clipped = L.w;  // W_soft starts at W clipped to its grid (the zero-iteration test)
  for (ix k = 0; k < K; ++k) {
    const double s = L.p.scale[k], z = L.p.zero_point[k], q = L.p.qmax(k);
    clipped.row(k) = clipped.row(k).cwiseMax(-z * s).cwiseMin((q - z) * s);
  }
  const double first = clamped_error<double>(clipped, L.x, y_shift, a, L.p) / static_cast<double>(N);
  CHECK(first > 0.0);
  auto one = a;
  one.iterations = 1;
  for (const bool ref : {false, true}) {
    const auto r = ref ? ptq::adaround_ref(L.w, L.p, L.x, y_shift, one) : ptq::adaround(L.w, L.p, L.x, y_shift, one);
    CHECK(r.rec_loss[0] == doctest::Approx(first).epsilon(1e-12));
  }
  // The fast path follows the twin (double), on several blocks and on batches.
  for (const ix batch : {N, ix(64)}) {
    CAPTURE(batch);
    auto b = a;
    b.batch = batch;
    b.row_block = 5;
    const auto fast = ptq::adaround(L.w, L.p, L.x, y_shift, b);
    const auto twin = ptq::adaround_ref(L.w, L.p, L.x, y_shift, b);
    MESSAGE("clamped output, fast vs twin: reconstruction " << max_rel<double>(fast.rec_loss, twin.rec_loss));
    CHECK(max_rel<double>(fast.rec_loss, twin.rec_loss) < 1e-9);
    CHECK(max_rel<double>(fast.reg_loss, twin.reg_loss) < 1e-9);
    CHECK(fast.codes == twin.codes);
    // The clamp matters: the unclamped run learns other codes.
    auto lin = b;
    lin.output_lo.resize(0);
    lin.output_hi.resize(0);
    CHECK(ptq::adaround(L.w, L.p, L.x, y_shift, lin).codes != fast.codes);
  }
  // An interval (-inf, inf) on every row is the linear loss.
  auto inf = a;
  inf.output_lo.setConstant(K, -std::numeric_limits<double>::infinity());
  inf.output_hi.setConstant(K, std::numeric_limits<double>::infinity());
  auto lin = a;
  lin.output_lo.resize(0);
  lin.output_hi.resize(0);
  const auto ri = ptq::adaround(L.w, L.p, L.x, inf), rl = ptq::adaround(L.w, L.p, L.x, lin);
  CHECK(max_rel<double>(ri.rec_loss, rl.rec_loss) < 1e-12);
  CHECK(ri.codes == rl.codes);
}

TEST_CASE("adaround: the clamped objective reduces the clamped error on held-out columns") {
  const ix K = 12, D = 48, N = 1024;
  const layer<float> L = make_layer<float>(K, D, N, 4, 0.02, 12);
  auto a = small_params<float>(4000, 64);
  clamp_rows(a, L.w, L.x);
  const mat<double> y_test = (L.w * L.x_test).template cast<double>();
  mat<float> rtn(K, D);
  ptq::gemmlowp_quantizer::fake_quantize(L.w, L.p, rtn);
  const auto clamped = ptq::adaround(L.w, L.p, L.x, a);
  auto b = a;
  b.output_lo.resize(0);
  b.output_hi.resize(0);
  const auto linear = ptq::adaround(L.w, L.p, L.x, b);
  const double e_rtn = clamped_error<float>(rtn, L.x_test, y_test, a, L.p);
  const double e_lin = clamped_error<float>(linear.weights, L.x_test, y_test, a, L.p);
  const double e_clamp = clamped_error<float>(clamped.weights, L.x_test, y_test, a, L.p);
  MESSAGE("held-out clamped error: round-to-nearest " << e_rtn << ", linear objective " << e_lin
                                                      << ", clamped objective " << e_clamp);
  CHECK(e_clamp < 0.5 * e_rtn);
  CHECK(e_clamp < e_lin);
}

TEST_CASE("adaround: bad input throws ptq::error naming the argument") {
  const layer<float> L = make_layer<float>(8, 12, 30, 2, 0.1, 8);
  const auto throws = [&](const mat<float>& w, const ptq::quant_params<float>& p, const mat<float>& x,
                          const ptq::adaround_params& a, const std::string& what) {
    CAPTURE(what);
    CHECK_THROWS_WITH_AS(ptq::adaround(w, p, x, a), doctest::Contains(what.c_str()), ptq::error);
    CHECK_THROWS_WITH_AS(ptq::adaround_ref(w, p, x, a), doctest::Contains(what.c_str()), ptq::error);
  };
  const ptq::adaround_params ok = small_params<float>(5, 8);
  auto a = ok;
  a.iterations = -1;
  throws(L.w, L.p, L.x, a, "params.iterations = -1");
  a = ok, a.batch = 0;
  throws(L.w, L.p, L.x, a, "params.batch = 0");
  a = ok, a.lambda = -1;
  throws(L.w, L.p, L.x, a, "params.lambda = -1");
  a = ok, a.beta_end = 0.5;
  throws(L.w, L.p, L.x, a, "params.beta_end = 0.5");
  a = ok, a.beta_start = std::nan("");
  throws(L.w, L.p, L.x, a, "params.beta_start = nan");
  a = ok, a.warmup = 1.0;
  throws(L.w, L.p, L.x, a, "params.warmup = 1");
  a = ok, a.gamma = 0.0;
  throws(L.w, L.p, L.x, a, "params.gamma = 0");
  a = ok, a.zeta = 1.0;
  throws(L.w, L.p, L.x, a, "params.zeta = 1");
  a = ok, a.lr = 0.0;
  throws(L.w, L.p, L.x, a, "params.lr = 0");
  a = ok, a.adam_beta1 = 1.0;
  throws(L.w, L.p, L.x, a, "params.adam_beta1 = 1");
  a = ok, a.adam_beta2 = -0.5;
  throws(L.w, L.p, L.x, a, "params.adam_beta2 = -0.5");
  a = ok, a.adam_eps = 0.0;
  throws(L.w, L.p, L.x, a, "params.adam_eps = 0");
  a = ok, a.threads = -2;
  throws(L.w, L.p, L.x, a, "params.threads = -2");
  a = ok, a.row_block = 0;
  throws(L.w, L.p, L.x, a, "params.row_block = 0");
  a = ok, a.seconds = 0.0;
  throws(L.w, L.p, L.x, a, "params.seconds = 0");
  a = ok, a.seconds = std::nan("");
  throws(L.w, L.p, L.x, a, "params.seconds = nan");

  a = ok, a.output_lo.setZero(8);
  throws(L.w, L.p, L.x, a, "params.output_lo and output_hi have 8 and 0 values: expected none or 8 each");
  a.output_hi.setZero(7);
  throws(L.w, L.p, L.x, a, "params.output_lo and output_hi have 8 and 7 values");
  a.output_hi.setOnes(8);
  a.output_lo[5] = 2.0;
  throws(L.w, L.p, L.x, a, "params.output_lo[5] = 2 and output_hi[5] = 1 are not an interval");
  a.output_lo[5] = std::nan("");
  throws(L.w, L.p, L.x, a, "params.output_lo[5] = nan");
  throws(L.w, L.p, mat<float>(L.x.topRows(11)), ok, "x is 11 x 30: expected 12 rows");
  throws(L.w, L.p, mat<float>(12, 0), ok, "x is 12 x 0");
  throws(mat<float>(0, 12), L.p, L.x, ok, "w is empty");
  throws(mat<float>(L.w.topRows(7)), L.p, L.x, ok, "rows = 7 is not a multiple of channels = 8");
  mat<float> bad = L.w;
  bad(3, 4) = std::numeric_limits<float>::infinity();
  throws(bad, L.p, L.x, ok, "w(3, 4) = inf is not finite");
  bad = L.x;
  bad(2, 9) = std::nanf("");
  throws(L.w, L.p, bad, ok, "x(2, 9) = nan is not finite");
  auto p = L.p;
  p.scale[3] = -1.0f;
  throws(L.w, p, L.x, ok, "params.scale[3] = -1");
  p = L.p;
  p.bits[2] = 17;
  throws(L.w, p, L.x, ok, "params.bits[2] = 17");

  const mat<float> y = L.w * L.x;
  CHECK_THROWS_WITH_AS(ptq::adaround(L.w, L.p, L.x, mat<float>(y.leftCols(29)), ok),
                       doctest::Contains("y is 8 x 29, expected 8 x 30"), ptq::error);
  mat<float> ybad = y;
  ybad(1, 1) = -std::numeric_limits<float>::infinity();
  CHECK_THROWS_WITH_AS(ptq::adaround_ref(L.w, L.p, L.x, ybad, ok), doctest::Contains("y(1, 1) = -inf is not finite"),
                       ptq::error);
  // Data so large that the gradient overflows float: an error, not NaN codes (the twin, in
  // double, runs it).
  const mat<float> huge = L.x * 1e36f;
  for (const ix row_block : {48, 3}) {  // one block; three blocks on two threads
    a = ok, a.row_block = row_block;
    CHECK_THROWS_WITH_AS(ptq::adaround(L.w, L.p, huge, a), doctest::Contains("the loss overflowed at iteration 1"),
                         ptq::error);
  }
  CHECK(ptq::adaround_ref(L.w, L.p, huge, ok).iterations == 5);
}

}  // namespace ptq_test_adaround
