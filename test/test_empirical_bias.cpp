// test_empirical_bias.cpp: empirical bias correction on a quantized linear layer, against naive loops, batching, errors.
#include <doctest/doctest.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <limits>
#include <numeric>
#include <random>
#include <vector>

#include "ptq/bias_corrector.hpp"
#include "ptq/empirical_bias.hpp"
#include "ptq/gemmlowp_quantizer.hpp"

// Everything of this file in its own namespace: the test binary is a unity build.
namespace ptq_test_empirical_bias {

namespace {

using ptq::empirical_bias;
using idx = ptq::index;
template <class T>
using rmat = ptq::row_matrix<T>;
template <class T>
using vec = ptq::vector<T>;

// A linear layer y = W x + b, K outputs, C inputs, N samples as columns (y is K x N: the row
// view with channels = K, outer = 1). Inputs with per-feature means far from 0 and different
// from each other, so that quantized weights shift every output's mean.
template <class T>
struct layer {
  rmat<T> w, x;
  vec<T> b;
};

template <class T>
layer<T> make_layer(idx K, idx C, idx N, std::uint64_t seed) {
  std::mt19937_64 g(seed);
  std::normal_distribution<double> normal(0.0, 1.0);
  std::uniform_real_distribution<double> mean(0.5, 3.0), spread(0.2, 1.5);
  layer<T> L;
  L.w.resize(K, C);
  L.x.resize(C, N);
  L.b.resize(K);
  for (idx k = 0; k < K; ++k) {
    L.b[k] = static_cast<T>(normal(g));
    for (idx c = 0; c < C; ++c) L.w(k, c) = static_cast<T>(0.3 * normal(g));
  }
  for (idx c = 0; c < C; ++c) {
    const double m = mean(g), s = spread(g);
    for (idx j = 0; j < N; ++j) L.x(c, j) = static_cast<T>(m + s * std::abs(normal(g)));  // ReLU-like inputs
  }
  return L;
}

// Per output channel min/max ranges at `bits`, fake-quantized by the library's quantizer.
template <class T>
rmat<T> quantize_rows(const rmat<T>& w, int bits) {
  ptq::channel_ranges r;
  r.lo = w.rowwise().minCoeff().template cast<double>();
  r.hi = w.rowwise().maxCoeff().template cast<double>();
  const auto p = ptq::quant_params<T>::per_channel(r, bits);
  rmat<T> wq(w.rows(), w.cols());
  ptq::gemmlowp_quantizer::fake_quantize(w, p, wq);
  return wq;
}

// y = W x + b in T (K x N).
template <class T>
rmat<T> forward(const rmat<T>& w, const rmat<T>& x, const vec<T>& b) {
  rmat<T> y = w * x;
  y.colwise() += b;
  return y;
}

// Per channel of a row view: (1/n) Σ (a - b), naive double loop.
template <class T>
std::vector<double> mean_diff(const rmat<T>& a, const rmat<T>& b, idx channels) {
  std::vector<double> s(static_cast<std::size_t>(channels), 0.0);
  for (idx r = 0; r < a.rows(); ++r)
    for (idx j = 0; j < a.cols(); ++j)
      s[static_cast<std::size_t>(r % channels)] += static_cast<double>(a(r, j)) - static_cast<double>(b(r, j));
  const double n = static_cast<double>((a.rows() / channels) * a.cols());
  for (double& v : s) v /= n;
  return s;
}

template <class T>
rmat<T> random_rows(idx rows, idx cols, double scale, std::uint64_t seed) {
  std::mt19937_64 g(seed);
  std::normal_distribution<double> normal(0.0, scale);
  rmat<T> m(rows, cols);
  for (idx i = 0; i < m.size(); ++i) m.data()[i] = static_cast<T>(normal(g) + 0.1 * scale * static_cast<double>(i % 7));
  return m;
}

void check_same_state(const empirical_bias& a, const empirical_bias& b) {
  CHECK(a.channels() == b.channels());
  CHECK(a.count() == b.count());
  CHECK(a.batches() == b.batches());
  CHECK(a.sum() == b.sum());
}

}  // namespace

TEST_CASE_TEMPLATE("empirical_bias: after apply, the quantized layer's mean error per channel is zero", T, float,
                   double) {
  const idx K = 6, C = 24, N = 3000;
  for (int bits : {2, 3, 4})
    for (bool weight_corr : {false, true}) {
      CAPTURE(bits);
      CAPTURE(weight_corr);
      const layer<T> L = make_layer<T>(K, C, N, 40 + static_cast<std::uint64_t>(bits));
      rmat<T> wq = quantize_rows(L.w, bits);
      if (weight_corr) ptq::bias_corrector::correct(L.w, wq);  // the paper's correction first
      const rmat<T> yf = forward(L.w, L.x, L.b);
      const rmat<T> yq = forward(wq, L.x, L.b);
      // Accumulated over 4 batches of 750 samples.
      empirical_bias eb(K);
      for (idx j = 0; j < N; j += 750) {
        const rmat<T> f = yf.middleCols(j, 750), q = yq.middleCols(j, 750);
        eb.add(f, q);
      }
      CHECK(eb.count() == N);
      CHECK(eb.batches() == 4);
      const Eigen::VectorXd mu = eb.bias();
      const std::vector<double> before = mean_diff(yf, yq, K);
      vec<T> bq = L.b;
      eb.apply(bq);
      const rmat<T> yq2 = forward(wq, L.x, bq);
      const std::vector<double> after = mean_diff(yf, yq2, K);
      // What is left: T's rounding of b + mu and of the layer's own sums (a few ulps of |y|).
      const double ymax = std::max(yf.cwiseAbs().maxCoeff(), yq.cwiseAbs().maxCoeff());
      const double tol = 8 * std::numeric_limits<T>::epsilon() * static_cast<double>(ymax);
      double largest_before = 0;
      for (idx k = 0; k < K; ++k) {
        CAPTURE(k);
        CHECK(std::abs(mu[k] - before[static_cast<std::size_t>(k)]) <= 1e-12 * static_cast<double>(ymax));
        CHECK(std::abs(after[static_cast<std::size_t>(k)]) <= tol);
        CHECK(static_cast<double>(bq[k]) == doctest::Approx(static_cast<double>(L.b[k]) + mu[k]).epsilon(
                                                std::numeric_limits<T>::epsilon()));
        largest_before = std::max(largest_before, std::abs(before[static_cast<std::size_t>(k)]));
      }
      // The correction had something to correct (a test that could pass by doing nothing fails here).
      CHECK(largest_before > 1000 * tol);
    }
}

TEST_CASE_TEMPLATE("empirical_bias: equals a naive double loop (NCHW views, odd sizes, any expression)", T, float,
                   double) {
  for (idx C : {idx(1), idx(3), idx(7)})
    for (idx outer : {idx(1), idx(5)})
      for (idx inner : {idx(1), idx(13), idx(130)}) {
        CAPTURE(C);
        CAPTURE(outer);
        CAPTURE(inner);
        const rmat<T> yf = random_rows<T>(outer * C, inner, 2.0, 1), yq = random_rows<T>(outer * C, inner, 2.0, 2);
        empirical_bias eb(C);
        eb.add(yf, yq);
        const std::vector<double> naive = mean_diff(yf, yq, C);
        const Eigen::VectorXd ref = ptq::empirical_bias_ref(yf, yq, C);
        const Eigen::VectorXd mu = eb.bias();
        for (idx c = 0; c < C; ++c) {
          CHECK(std::abs(mu[c] - naive[static_cast<std::size_t>(c)]) <= 1e-14 * 8);
          CHECK(std::abs(ref[c] - naive[static_cast<std::size_t>(c)]) <= 1e-14 * 8);
        }
        // Non-contiguous views (ColMajor, an expression) read through a row buffer: the same sums.
        const Eigen::Matrix<T, Eigen::Dynamic, Eigen::Dynamic> cf = yf, cq = yq;
        empirical_bias e2(C), e3(C);
        e2.add(cf, cq);
        e3.add(yf * T(1), yq.array().matrix());
        CHECK(e2.sum() == eb.sum());
        CHECK(e3.sum() == eb.sum());
      }
}

TEST_CASE("empirical_bias: batching, order and merge give the same bias") {
  const idx C = 4, outer = 60, inner = 49;
  const rmat<float> yf = random_rows<float>(outer * C, inner, 3.0, 5), yq = random_rows<float>(outer * C, inner, 3.0, 6);
  empirical_bias whole(C);
  whole.add(yf, yq);
  const Eigen::VectorXd mu = whole.bias();
  // Batches of 1, 7 and 60 images (C rows each), in shuffled order.
  std::mt19937_64 g(9);
  for (idx per : {idx(1), idx(7), idx(60)}) {
    CAPTURE(per);
    std::vector<idx> starts;
    for (idx o = 0; o < outer; o += per) starts.push_back(o);
    std::shuffle(starts.begin(), starts.end(), g);
    empirical_bias eb(C), left(C), right(C);
    for (std::size_t i = 0; i < starts.size(); ++i) {
      const idx o = starts[i], m = std::min(per, outer - o);
      const rmat<float> f = yf.middleRows(o * C, m * C), q = yq.middleRows(o * C, m * C);
      eb.add(f, q);
      (i % 2 ? left : right).add(f, q);
    }
    left.merge(right);
    CHECK(eb.count() == whole.count());
    CHECK(left.count() == whole.count());
    CHECK(left.batches() == static_cast<idx>(starts.size()));
    for (idx c = 0; c < C; ++c) {
      CHECK(std::abs(eb.bias()[c] - mu[c]) <= 1e-13);
      CHECK(std::abs(left.bias()[c] - mu[c]) <= 1e-13);
    }
  }
}

TEST_CASE("empirical_bias: every bad argument throws a named ptq::error and changes nothing") {
  const idx C = 3;
  const rmat<float> yf = random_rows<float>(2 * C, 10, 1.0, 1), yq = random_rows<float>(2 * C, 10, 1.0, 2);
  CHECK_THROWS_WITH_AS(empirical_bias(0), doctest::Contains("ptq::empirical_bias::empirical_bias: channels = 0"),
                       ptq::error);
  empirical_bias fresh(C);
  vec<float> b = vec<float>::Constant(C, 0.5f);
  const vec<float> b0 = b;
  CHECK_THROWS_WITH_AS(fresh.bias(), doctest::Contains("ptq::empirical_bias::bias: no data"), ptq::error);
  CHECK_THROWS_WITH_AS(fresh.apply(b), doctest::Contains("ptq::empirical_bias::apply: no data"), ptq::error);
  CHECK(b == b0);

  empirical_bias eb(C);
  eb.add(yf, yq);
  const empirical_bias saved = eb;
  auto unchanged = [&] { check_same_state(eb, saved); };
  rmat<float> bad = yf;
  bad(4, 3) = std::numeric_limits<float>::quiet_NaN();
  CHECK_THROWS_WITH_AS(eb.add(bad, yq), doctest::Contains("ptq::empirical_bias::add: y_float(4, 3) = nan is not finite"),
                       ptq::error);
  unchanged();
  bad(4, 3) = -std::numeric_limits<float>::infinity();
  CHECK_THROWS_WITH_AS(eb.add(yf, bad), doctest::Contains("y_quant(4, 3) = -inf is not finite"), ptq::error);
  unchanged();
  CHECK_THROWS_WITH_AS(eb.add(yf, yq.leftCols(9)), doctest::Contains("y_quant is 6 x 9 but y_float is 6 x 10"),
                       ptq::error);
  unchanged();
  CHECK_THROWS_WITH_AS(eb.add(yf.topRows(4), yq.topRows(4)),
                       doctest::Contains("rows = 4 is not a multiple of channels = 3"), ptq::error);
  unchanged();
  CHECK_THROWS_WITH_AS(eb.add(rmat<float>(0, 10), rmat<float>(0, 10)), doctest::Contains("the tensor is empty"),
                       ptq::error);
  unchanged();
  const rmat<double> huge = rmat<double>::Constant(2 * C, 10, 1e307), neg = -huge;
  empirical_bias ed(C);
  CHECK_THROWS_WITH_AS(ed.add(huge, neg), doctest::Contains("overflows double"), ptq::error);
  CHECK(ed.count() == 0);
  CHECK(ed.sum() == Eigen::VectorXd::Zero(C));
  empirical_bias other(C + 1);
  CHECK_THROWS_WITH_AS(eb.merge(other), doctest::Contains("other.channels() = 4 does not match channels() = 3"),
                       ptq::error);
  unchanged();

  // apply: the bias vector keeps its values on every error.
  vec<float> b_short = vec<float>::Constant(C - 1, 1.0f);
  const vec<float> b_short0 = b_short;
  CHECK_THROWS_WITH_AS(eb.apply(b_short), doctest::Contains("bias is 2 x 1, not a vector of the 3 channels"),
                       ptq::error);
  CHECK(b_short == b_short0);
  rmat<float> b_mat = rmat<float>::Constant(C, 2, 1.0f);
  CHECK_THROWS_WITH_AS(eb.apply(b_mat), doctest::Contains("bias is 3 x 2"), ptq::error);
  vec<float> b_nan = b0;
  b_nan[2] = std::numeric_limits<float>::quiet_NaN();
  CHECK_THROWS_WITH_AS(eb.apply(b_nan), doctest::Contains("bias[2] = nan is not finite"), ptq::error);
  CHECK(b_nan[0] == b0[0]);
  CHECK(b_nan[1] == b0[1]);
  // A float bias near FLT_MAX plus a large mu leaves float's range: refused, nothing written.
  const rmat<float> big_f = rmat<float>::Constant(C, 4, 3e38f), zero_f = rmat<float>::Constant(C, 4, -3e38f);
  empirical_bias eo(C);
  eo.add(big_f, zero_f);  // mu = 6e38 in double
  vec<float> b_big = vec<float>::Constant(C, 1.0f);
  b_big[0] = 0.0f;
  const vec<float> b_big0 = b_big;
  CHECK_THROWS_WITH_AS(eo.apply(b_big), doctest::Contains("is outside the range of the bias' type"), ptq::error);
  CHECK(b_big == b_big0);
  // A row vector and a Map are vectors too.
  Eigen::RowVectorXd row = Eigen::RowVectorXd::Zero(C);
  eb.apply(row);
  float raw[3] = {0, 0, 0};
  eb.apply(Eigen::Map<vec<float>>(raw, C));
  for (idx c = 0; c < C; ++c) {
    CHECK(row[c] == eb.bias()[c]);
    CHECK(raw[c] == static_cast<float>(eb.bias()[c]));
  }
  // The twin validates too.
  CHECK_THROWS_WITH_AS(ptq::empirical_bias_ref(yf, yq, 0), doctest::Contains("ptq::empirical_bias_ref: channels = 0"),
                       ptq::error);
  CHECK_THROWS_WITH_AS(ptq::empirical_bias_ref(bad, yq, C),
                       doctest::Contains("ptq::empirical_bias_ref: y_float(4, 3) = -inf is not finite"), ptq::error);
}

}  // namespace ptq_test_empirical_bias
