// test_bias_corrector.cpp: bias and variance correction against naive double loops, heavy tails, errors.
#include <doctest/doctest.h>

#include <cmath>
#include <cstdint>
#include <limits>
#include <random>
#include <vector>

#include "ptq/bias_corrector.hpp"
#include "ptq/gemmlowp_quantizer.hpp"

// Everything of this file in its own namespace: the test binary is a unity build.
namespace ptq_test_bias_corrector {

namespace {

using ptq::bias_correction;
using ptq::bias_corrector;
using idx = ptq::index;
template <class T>
using rmat = ptq::row_matrix<T>;

enum class law { normal, laplace, student_t };

template <class T>
rmat<T> make_weights(law l, idx K, idx N, std::uint64_t seed) {
  std::mt19937_64 g(seed);
  std::normal_distribution<double> normal(0.0, 1.0);
  std::exponential_distribution<double> expo(1.0);
  std::student_t_distribution<double> student(3.0);
  std::uniform_real_distribution<double> shift(-0.2, 0.2), spread(0.02, 0.3);
  rmat<T> w(K, N);
  for (idx k = 0; k < K; ++k) {
    const double m = shift(g), s = spread(g);  // every channel its own mean and scale
    for (idx j = 0; j < N; ++j) {
      double v = 0;
      if (l == law::normal) v = normal(g);
      if (l == law::laplace) v = expo(g) - expo(g);
      if (l == law::student_t) v = student(g);
      w(k, j) = static_cast<T>(m + s * v);
    }
  }
  return w;
}

// Per output channel min/max ranges, `bits` bits, fake-quantized with gemmlowp_quantizer.
template <class T>
rmat<T> quantize_weights(const rmat<T>& w, const Eigen::VectorXi& bits) {
  ptq::channel_ranges r;
  r.lo = w.rowwise().minCoeff().template cast<double>();
  r.hi = w.rowwise().maxCoeff().template cast<double>();
  const auto p = ptq::quant_params<T>::per_channel(r, bits);
  rmat<T> wq(w.rows(), w.cols());
  ptq::gemmlowp_quantizer::fake_quantize(w, p, wq);
  return wq;
}

struct row_moments {
  double mean, norm, rms;  // E[x], ||x - E x||, sqrt(E[x^2])
};
template <class D>
row_moments moments(const Eigen::DenseBase<D>& x, idx r) {
  const idx n = x.cols();
  double s = 0, s2 = 0;
  for (idx j = 0; j < n; ++j) s += static_cast<double>(x.derived().coeff(r, j));
  const double m = s / static_cast<double>(n);
  double sq = 0;
  for (idx j = 0; j < n; ++j) {
    const double d = static_cast<double>(x.derived().coeff(r, j)) - m;
    sq += d * d;
    s2 += static_cast<double>(x.derived().coeff(r, j)) * static_cast<double>(x.derived().coeff(r, j));
  }
  return {m, std::sqrt(sq), std::sqrt(s2 / static_cast<double>(n))};
}

double rel(double a, double b) { return std::abs(a - b) / std::max(std::abs(b), 1e-300); }

}  // namespace

TEST_CASE_TEMPLATE("bias_corrector: mu, xi, beta equal a naive double loop", T, float, double) {
  for (law l : {law::normal, law::laplace, law::student_t}) {
    const rmat<T> w = make_weights<T>(l, 12, 75, 21);
    const rmat<T> wq = quantize_weights(w, Eigen::VectorXi::Constant(12, 4));
    for (bool variance : {false, true}) {
      const bias_correction c = bias_corrector::compute(w, wq, {variance});
      REQUIRE(c.channels() == 12);
      for (idx k = 0; k < 12; ++k) {
        const row_moments mw = moments(w, k), mq = moments(wq, k);
        const double xi = variance ? mw.norm / mq.norm : 1.0;
        CAPTURE(k);
        CHECK(std::abs(c.mu[k] - (mw.mean - mq.mean)) <= 1e-12 * mw.rms);
        CHECK(rel(c.xi[k], xi) <= 1e-12);
        CHECK(std::abs(c.beta[k] - (mw.mean - xi * mq.mean)) <= 1e-12 * mw.rms);
      }
    }
  }
}

TEST_CASE_TEMPLATE("bias_corrector: restores every channel's mean (and norm) at 4 bits, heavy tails too", T, float,
                   double) {
  std::uint64_t seed = 30;
  for (law l : {law::normal, law::laplace, law::student_t}) {
    for (idx N : {9 * 16, 50}) {  // conv K x (C*3*3) and linear [K, C]
      const idx K = 16;
      const rmat<T> w = make_weights<T>(l, K, N, ++seed);
      const rmat<T> wq = quantize_weights(w, Eigen::VectorXi::Constant(K, 4));
      // Quantization did bias the channels (else this test could not fail).
      double worst_mean = 0, worst_norm = 0;
      for (idx k = 0; k < K; ++k) {
        const row_moments mw = moments(w, k), mq = moments(wq, k);
        worst_mean = std::max(worst_mean, std::abs(mq.mean - mw.mean) / mw.rms);
        worst_norm = std::max(worst_norm, rel(mq.norm, mw.norm));
      }
      CHECK(worst_mean > 1e-4);
      CHECK(worst_norm > 1e-4);
      for (bool variance : {false, true}) {
        rmat<T> corrected = wq;
        const bias_correction c = bias_corrector::correct(w, corrected, {variance});
        for (idx k = 0; k < K; ++k) {
          const row_moments mw = moments(w, k), mq = moments(wq, k), mc = moments(corrected, k);
          CAPTURE(static_cast<int>(l));
          CAPTURE(N);
          CAPTURE(variance);
          CAPTURE(k);
          CHECK(std::abs(mc.mean - mw.mean) <= 1e-6 * mw.rms);
          if (variance) {
            CHECK(rel(mc.norm, mw.norm) <= 1e-5);
          } else {
            CHECK(c.xi[k] == 1.0);
            CHECK(rel(mc.norm, mq.norm) <= 1e-5);  // spread untouched
          }
        }
      }
    }
  }
}

TEST_CASE_TEMPLATE("bias_corrector: the fold form equals the applied correction and the reference order", T, float,
                   double) {
  const rmat<T> w = make_weights<T>(law::laplace, 10, 36, 41);
  const rmat<T> wq = quantize_weights(w, Eigen::VectorXi::Constant(10, 4));
  const T eps = std::numeric_limits<T>::epsilon();
  for (bool variance : {false, true}) {
    const bias_correction c = bias_corrector::compute(w, wq, {variance});
    rmat<T> applied = wq;
    bias_corrector::apply(c, applied);
    rmat<T> corrected = wq;
    const bias_correction c2 = bias_corrector::correct(w, corrected, {variance});
    CHECK(applied == corrected);
    CHECK(c2.mu == c.mu);
    CHECK(c2.xi == c.xi);
    CHECK(c2.beta == c.beta);
    for (idx k = 0; k < w.rows(); ++k) {
      const row_moments mw = moments(w, k), mq = moments(wq, k);
      // The reference's two steps, literally, in double.
      std::vector<double> step(static_cast<std::size_t>(w.cols()));
      double s = 0;
      for (idx j = 0; j < w.cols(); ++j) {
        step[static_cast<std::size_t>(j)] = (static_cast<double>(wq(k, j)) - mq.mean) * c.xi[k] + mq.mean;
        s += step[static_cast<std::size_t>(j)];
      }
      const double m1 = s / static_cast<double>(w.cols());
      for (idx j = 0; j < w.cols(); ++j) {
        const double fold = c.xi[k] * static_cast<double>(wq(k, j)) + c.beta[k];
        const double ref = step[static_cast<std::size_t>(j)] - m1 + mw.mean;
        const double got = static_cast<double>(applied(k, j));
        CAPTURE(k);
        CAPTURE(j);
        CHECK(std::abs(got - fold) <= 2 * eps * std::abs(fold) + 1e-300);
        CHECK(std::abs(ref - fold) <= 1e-13 * mw.rms);
      }
    }
  }
}

TEST_CASE("bias_corrector: zero-spread channels keep xi = 1 - maps and ColMajor views agree") {
  rmat<float> w = make_weights<float>(law::normal, 6, 20, 51);
  Eigen::VectorXi bits = Eigen::VectorXi::Constant(6, 4);
  bits[2] = 0;  // a constant channel
  const rmat<float> wq = quantize_weights(w, bits);
  REQUIRE((wq.row(2).array() == wq(2, 0)).all());
  rmat<float> corrected = wq;
  const bias_correction c = bias_corrector::correct(w, corrected, {true});
  CHECK(c.xi[2] == 1.0);
  CHECK(std::abs(moments(corrected, 2).mean - moments(w, 2).mean) <= 1e-6 * moments(w, 2).rms);
  CHECK(c.xi[0] != 1.0);

  // KCRS weights as the caller holds them: a flat buffer, a row map, and a ColMajor copy.
  std::vector<float> buf(wq.data(), wq.data() + wq.size());
  const ptq::channel_layout lay = ptq::channel_layout::of({6, 5, 2, 2}, 0);
  bias_corrector::correct(w, ptq::channel_rows(buf.data(), lay), {true});
  CHECK(Eigen::Map<const rmat<float>>(buf.data(), 6, 20) == corrected);
  Eigen::MatrixXf cm = wq;
  bias_corrector::correct(Eigen::MatrixXf(w), cm, {true});
  CHECK(cm == Eigen::MatrixXf(corrected));
  // Linear weights [K, C] in double.
  const rmat<double> wd = make_weights<double>(law::student_t, 4, 33, 52);
  const rmat<double> wqd = quantize_weights(wd, Eigen::VectorXi::Constant(4, 3));
  const bias_correction cd = bias_corrector::compute(wd, wqd, {});
  CHECK((cd.xi.array() == 1.0).all());
}

TEST_CASE("bias_corrector: a constant quantized row keeps xi = 1 although its mean rounds in double") {
  // Double weights: the mean of n copies of v, summed in double, is not always v exactly;
  // the spread about it is rounding noise (~1e-17), and dividing by it gave xi ~ 1e15.
  int noisy = 0;
  for (const double v : {0.1, -0.3, 1.7, 3.14159, 1e-3})
    for (const int n : {3, 7, 1001, 4099}) {
      rmat<double> w(2, n), wq(2, n);
      std::mt19937_64 rng(static_cast<std::uint64_t>(n));
      std::normal_distribution<double> N(v, 0.05);
      for (int j = 0; j < n; ++j) w(0, j) = w(1, j) = N(rng);
      wq.row(0).setConstant(v);
      wq.row(1) = w.row(1);
      const double mean = wq.row(0).sum() / n;  // as the corrector sums
      noisy += mean != v;
      const bias_correction c = bias_corrector::compute(w, wq, {true});
      CAPTURE(v);
      CAPTURE(n);
      CHECK(c.xi[0] == 1.0);
      CHECK(c.xi[1] == doctest::Approx(1.0).epsilon(1e-12));  // wq == w: nothing to restore
      CHECK(c.beta[0] == doctest::Approx(w.row(0).mean() - mean).epsilon(1e-12));
    }
  CHECK(noisy > 0);  // the case that used to fail does occur here
}

TEST_CASE("bias_corrector: errors name the argument and leave the weights untouched") {
  const rmat<float> w = make_weights<float>(law::normal, 4, 9, 61);
  const rmat<float> wq0 = quantize_weights(w, Eigen::VectorXi::Constant(4, 4));
  rmat<float> wq = wq0;
  CHECK_THROWS_WITH_AS(bias_corrector::correct(w, rmat<float>(wq.topRows(3))),
                       doctest::Contains("ptq::bias_corrector::correct: wq is 3 x 9 but w is 4 x 9"), ptq::error);
  CHECK_THROWS_WITH_AS(bias_corrector::compute(w, wq.leftCols(8)), doctest::Contains("ptq::bias_corrector::compute: wq is 4 x 8 but w is 4 x 9"),
                       ptq::error);
  CHECK_THROWS_WITH_AS(bias_corrector::compute(rmat<float>(0, 9), rmat<float>(0, 9)), doctest::Contains("w is empty (0 x 9)"),
                       ptq::error);
  rmat<float> wn = w;
  wn(2, 7) = std::nanf("");
  CHECK_THROWS_WITH_AS(bias_corrector::correct(wn, wq, {true}), doctest::Contains("w(2, 7) = nan is not finite"), ptq::error);
  CHECK(wq == wq0);
  rmat<float> wqi = wq;
  wqi(3, 8) = -HUGE_VALF;
  const rmat<float> wqi0 = wqi;
  CHECK_THROWS_WITH_AS(bias_corrector::correct(w, wqi), doctest::Contains("wq(3, 8) = -inf is not finite"), ptq::error);
  CHECK(wqi.topRows(3) == wqi0.topRows(3));
  CHECK_THROWS_WITH_AS(bias_corrector::apply(bias_corrector::compute(w, wq), wqi), doctest::Contains("ptq::bias_corrector::apply: wq(3, 8) = -inf"),
                       ptq::error);
  CHECK(wqi.topRows(3) == wqi0.topRows(3));

  bias_correction c = bias_corrector::compute(w, wq, {true});
  bias_correction bad = c;
  bad.xi.resize(3);
  CHECK_THROWS_WITH_AS(bias_corrector::apply(bad, wq), doctest::Contains("correction.xi.size() = 3 does not match the 4 rows of wq"),
                       ptq::error);
  bad = c;
  bad.beta.resize(5);
  CHECK_THROWS_WITH_AS(bias_corrector::apply(bad, wq), doctest::Contains("correction.beta.size() = 5"), ptq::error);
  bad = c;
  bad.mu.resize(0);
  CHECK_THROWS_WITH_AS(bias_corrector::apply(bad, wq), doctest::Contains("correction.mu.size() = 0"), ptq::error);
  bad = c;
  bad.xi[1] = std::nan("");
  CHECK_THROWS_WITH_AS(bias_corrector::apply(bad, wq), doctest::Contains("correction.xi[1] = nan is not finite"), ptq::error);
  bad = c;
  bad.beta[3] = HUGE_VAL;
  CHECK_THROWS_WITH_AS(bias_corrector::apply(bad, wq), doctest::Contains("correction.beta[3] = inf is not finite"), ptq::error);
  CHECK(wq == wq0);
}

}  // namespace ptq_test_bias_corrector
