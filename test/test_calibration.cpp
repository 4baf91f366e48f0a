// test_calibration.cpp: calibration_statistics against naive double two-pass references, merging, errors.
#include <doctest/doctest.h>

#include <Eigen/Core>
#include <algorithm>
#include <cmath>
#include <limits>
#include <numeric>
#include <random>
#include <string>
#include <vector>

#include "ptq/calibration.hpp"
#include "stats_checks.hpp"
#include "ptq/layout.hpp"

// Everything of this file in its own namespace: the test binary is a unity build.
namespace ptq_test_calibration {

namespace {

using ptq::calibration_statistics;
using ptq::index;
using ptq::stats_mode;
using ptq::stats_pass;

// Random batch of `rows` x `cols` (row r in channel r % channels), channel c with
// its own offset and spread so that channels differ.
template <class T>
ptq::row_matrix<T> random_batch(index rows, index cols, index channels, std::uint64_t seed) {
  std::mt19937_64 rng(seed);
  std::normal_distribution<double> normal(0.0, 1.0);
  std::exponential_distribution<double> expo(1.0);
  ptq::row_matrix<T> m(rows, cols);
  for (index r = 0; r < rows; ++r) {
    const index c = r % channels;
    const double offset = 0.37 * static_cast<double>(c) - 3.0, scale = 0.5 + static_cast<double>(c % 5);
    for (index j = 0; j < cols; ++j) {
      const double v = c % 2 ? expo(rng) * scale + offset : normal(rng) * scale + offset;
      m(r, j) = static_cast<T>(v);
    }
  }
  return m;
}

// The test's own reference: naive two-pass statistics of a list of values.
struct naive {
  double min, max, mean, b, std;
};
naive two_pass(const std::vector<double>& v) {
  naive s{v[0], v[0], 0, 0, 0};
  double sum = 0;
  for (double x : v) s.min = std::min(s.min, x), s.max = std::max(s.max, x), sum += x;
  s.mean = sum / static_cast<double>(v.size());
  double ab = 0, sq = 0;
  for (double x : v) ab += std::abs(x - s.mean), sq += (x - s.mean) * (x - s.mean);
  s.b = ab / static_cast<double>(v.size());
  s.std = v.size() > 1 ? std::sqrt(sq / static_cast<double>(v.size() - 1)) : 0.0;
  return s;
}

template <class T>
std::vector<std::vector<double>> channel_values(const std::vector<ptq::row_matrix<T>>& batches, index channels) {
  std::vector<std::vector<double>> v(static_cast<std::size_t>(channels));
  for (const auto& m : batches)
    for (index r = 0; r < m.rows(); ++r)
      for (index j = 0; j < m.cols(); ++j) v[static_cast<std::size_t>(r % channels)].push_back(m(r, j));
  return v;
}

// exact: statistics of everything; batch_mean: per-batch statistics averaged.
template <class T>
std::vector<naive> reference(const std::vector<ptq::row_matrix<T>>& batches, index channels, stats_mode mode) {
  std::vector<naive> out;
  if (mode == stats_mode::exact) {
    for (const auto& v : channel_values(batches, channels)) out.push_back(two_pass(v));
    return out;
  }
  out.assign(static_cast<std::size_t>(channels), naive{0, 0, 0, 0, 0});
  for (const auto& m : batches) {
    const auto v = channel_values(std::vector<ptq::row_matrix<T>>{m}, channels);
    for (std::size_t c = 0; c < v.size(); ++c) {
      const naive s = two_pass(v[c]);
      out[c].min += s.min, out[c].max += s.max, out[c].mean += s.mean, out[c].b += s.b, out[c].std += s.std;
    }
  }
  const double k = static_cast<double>(batches.size());
  for (auto& s : out) s.min /= k, s.max /= k, s.mean /= k, s.b /= k, s.std /= k;
  return out;
}

bool close(double a, double b, double tol, double scale) {
  return std::abs(a - b) <= tol * std::max({std::abs(a), std::abs(b), scale});
}

// skip: a channel checked otherwise (its naive reference is itself inexact).
void check_against(const ptq::channel_stats& s, const std::vector<naive>& ref, double tol, bool with_b = true,
                   std::size_t skip = std::size_t(-1)) {
  REQUIRE(s.channels() == static_cast<index>(ref.size()));
  for (std::size_t c = 0; c < ref.size(); ++c) {
    if (c == skip) continue;
    const auto i = static_cast<index>(c);
    const double scale = std::max({ref[c].std, 1e-30});
    INFO("channel " << c);
    CHECK(close(s.min[i], ref[c].min, tol, scale));
    CHECK(close(s.max[i], ref[c].max, tol, scale));
    CHECK(close(s.mean[i], ref[c].mean, tol, scale));
    CHECK(close(s.std[i], ref[c].std, tol, scale));
    if (with_b) CHECK(close(s.b[i], ref[c].b, tol, scale));
  }
}

void check_same(const ptq::channel_stats& a, const ptq::channel_stats& b, double tol) {
  REQUIRE(a.channels() == b.channels());
  CHECK(a.count == b.count);
  for (index c = 0; c < a.channels(); ++c) {
    const double scale = std::max(std::abs(b.std[c]), 1e-30);
    INFO("channel " << c);
    CHECK(close(a.min[c], b.min[c], tol, scale));
    CHECK(close(a.max[c], b.max[c], tol, scale));
    CHECK(close(a.mean[c], b.mean[c], tol, scale));
    CHECK(close(a.std[c], b.std[c], tol, scale));
    if (a.b.size() && b.b.size()) CHECK(close(a.b[c], b.b[c], tol, scale));
  }
}


// One accumulator over all batches; exact mode runs both passes.
template <class T>
ptq::channel_stats run(const std::vector<ptq::row_matrix<T>>& batches, index channels, stats_mode mode) {
  calibration_statistics acc(channels, mode);
  for (const auto& m : batches) acc.add(m);
  CHECK(acc.batches() == static_cast<index>(batches.size()));
  if (mode == stats_mode::exact) {
    acc.begin_deviation_pass();
    for (auto it = batches.rbegin(); it != batches.rend(); ++it) acc.add(*it);  // any order
  }
  return acc.result();
}

template <class T>
double tolerance() {
  return std::is_same<T, float>::value ? 1e-6 : 1e-9;
}

template <class T>
void check_shapes() {
  const stats_mode modes[] = {stats_mode::batch_mean, stats_mode::exact};
  std::uint64_t seed = 7;
  for (stats_mode mode : modes)
    for (index C : {1, 3, 64})
      for (index hw : {1, 7, 49})
        for (index N : {1, 3})
          for (std::size_t nb : {1u, 4u}) {
            std::vector<ptq::row_matrix<T>> batches;
            for (std::size_t k = 0; k < nb; ++k) {
              // NCHW activations through the library's own layout helpers: (N*C) x (H*W).
              const auto layout = ptq::channel_layout::of({N, C, 1, hw}, 1);
              REQUIRE(layout.channels == C);
              batches.push_back(random_batch<T>(layout.rows(), layout.inner, C, ++seed));
            }
            INFO("mode " << int(mode) << " C " << C << " hw " << hw << " N " << N << " batches " << nb);
            const auto s = run(batches, C, mode);
            CHECK(s.count == static_cast<index>(nb) * N * hw);
            check_against(s, reference(batches, C, mode), tolerance<T>());
          }
  // weights, axis 0: K x (C*R*S), channels = K (outer = 1).
  for (stats_mode mode : modes)
    for (index K : {1, 3, 64})
      for (index crs : {1, 7, 27, 3 * 3 * 64}) {
        const auto layout = ptq::channel_layout::of({K, crs, 1, 1}, 0);
        REQUIRE(layout.channels == K);
        REQUIRE(layout.outer == 1);
        std::vector<ptq::row_matrix<T>> batches{random_batch<T>(layout.rows(), layout.inner, K, ++seed)};
        INFO("weights mode " << int(mode) << " K " << K << " crs " << crs);
        const auto s = run(batches, K, mode);
        check_against(s, reference(batches, K, mode), tolerance<T>());
        // the plain twin on the same batch
        check_against(ptq::batch_statistics_ref(batches[0], K), reference(batches, K, stats_mode::exact),
                      tolerance<T>());
      }
}

TEST_CASE("calibration: both modes equal a naive two-pass reference (float and double, odd shapes)") {
  SUBCASE("float") { check_shapes<float>(); }
  SUBCASE("double") { check_shapes<double>(); }
}

TEST_CASE("calibration: traversal orders (channel groups, large rows, memory order) and the _ref twin") {
  struct shape {
    index n, c, hw;
  };
  // 64 x 1089: channel groups of 3 (last group partial); 2 x 3 x 100000: a channel larger than
  // the cache budget; 20000 x 8 x 1: tiny rows, read in memory order; 5 x 17 x 300.
  const shape shapes[] = {{40, 64, 1089}, {2, 3, 100000}, {20000, 8, 1}, {5, 17, 300}};
  std::uint64_t seed = 1000;
  for (const auto& sh : shapes)
    for (stats_mode mode : {stats_mode::batch_mean, stats_mode::exact}) {
      INFO("N " << sh.n << " C " << sh.c << " HW " << sh.hw << " mode " << int(mode));
      std::vector<ptq::row_matrix<float>> batches{random_batch<float>(sh.n * sh.c, sh.hw, sh.c, ++seed),
                                                  random_batch<float>(sh.n * sh.c, sh.hw, sh.c, ++seed)};
      const auto s = run(batches, sh.c, mode);
      check_against(s, reference(batches, sh.c, mode), 1e-6);
      if (mode == stats_mode::batch_mean) {
        calibration_statistics one(sh.c);
        one.add(batches[0]);
        check_same(one.result(), ptq::batch_statistics_ref(batches[0], sh.c), 1e-10);
      }
    }
}

TEST_CASE("calibration: non-contiguous inputs (ColMajor, expressions, maps) equal the RowMajor result") {
  const index C = 5, N = 4, hw = 33;
  const auto m = random_batch<float>(N * C, hw, C, 99);
  const Eigen::MatrixXf col = m;  // ColMajor copy: rows are strided
  for (stats_mode mode : {stats_mode::batch_mean, stats_mode::exact}) {
    const auto expected = run(std::vector<ptq::row_matrix<float>>{m}, C, mode);
    auto via = [&](const auto& x) {
      calibration_statistics acc(C, mode);
      acc.add(x);
      if (mode == stats_mode::exact) acc.begin_deviation_pass(), acc.add(x);
      return acc.result();
    };
    check_identical_stats(via(col), expected);
    check_identical_stats(via(m.array() * 1.0f), expected);
    check_identical_stats(via(ptq::channel_rows(m.data(), ptq::channel_layout::of({N, C, 3, 11}, 1))), expected);
    // a column vector: one value per row (H*W = 1), either storage order
    const Eigen::VectorXf v = m.col(0);
    const auto ev = run(std::vector<ptq::row_matrix<float>>{ptq::row_matrix<float>(v)}, C, mode);
    check_identical_stats(via(v), ev);
  }
}

TEST_CASE("calibration: merging halves and many parts in any order equals one accumulator") {
  const index C = 6, N = 3, hw = 20;
  std::vector<ptq::row_matrix<double>> batches;
  for (int k = 0; k < 9; ++k) batches.push_back(random_batch<double>(N * C, hw + k, C, 500 + k));

  SUBCASE("batch_mean") {
    const auto whole = run(batches, C, stats_mode::batch_mean);
    check_against(whole, reference(batches, C, stats_mode::batch_mean), 1e-9);
    calibration_statistics a(C), b(C);
    for (std::size_t k = 0; k < batches.size(); ++k) (k < 4 ? a : b).add(batches[k]);
    a.merge(b);
    CHECK(a.batches() == 9);
    check_same(a.result(), whole, 1e-12);
    std::mt19937_64 rng(3);
    for (int trial = 0; trial < 5; ++trial) {
      std::vector<calibration_statistics> parts(4, calibration_statistics(C));
      for (std::size_t k = 0; k < batches.size(); ++k) parts[rng() % 4].add(batches[k]);
      std::shuffle(parts.begin(), parts.end(), rng);
      calibration_statistics all(C);
      for (const auto& p : parts) all.merge(p);  // empty parts included
      check_same(all.result(), whole, 1e-12);
    }
  }

  SUBCASE("exact, both passes") {
    const auto whole = run(batches, C, stats_mode::exact);
    check_against(whole, reference(batches, C, stats_mode::exact), 1e-9);
    std::mt19937_64 rng(4);
    for (int trial = 0; trial < 5; ++trial) {
      // pass 1 on 3 workers, merged in a random order
      std::vector<calibration_statistics> parts(3, calibration_statistics(C, stats_mode::exact));
      std::vector<int> owner(batches.size());
      for (std::size_t k = 0; k < batches.size(); ++k) parts[owner[k] = int(rng() % 3)].add(batches[k]);
      std::vector<int> order{0, 1, 2};
      std::shuffle(order.begin(), order.end(), rng);
      calibration_statistics global(C, stats_mode::exact);
      for (int i : order) global.merge(parts[static_cast<std::size_t>(i)]);
      check_same(global.moments(), whole, 1e-12);
      CHECK(global.moments().b.size() == 0);
      // pass 2: freeze once, copy to workers, each adds a (different) share, merge in another order
      global.begin_deviation_pass();
      std::vector<calibration_statistics> dev(4, global);
      for (std::size_t k = 0; k < batches.size(); ++k) dev[rng() % 4].add(batches[k]);
      std::shuffle(dev.begin(), dev.end(), rng);
      calibration_statistics merged = dev[0];
      for (std::size_t i = 1; i < dev.size(); ++i) merged.merge(dev[i]);
      check_same(merged.result(), whole, 1e-12);
    }
  }

  SUBCASE("halves of one tensor (exact) equal the tensor") {
    const auto m = random_batch<float>(8 * C, 50, C, 77);
    const auto whole = run(std::vector<ptq::row_matrix<float>>{m}, C, stats_mode::exact);
    calibration_statistics a(C, stats_mode::exact), b(C, stats_mode::exact);
    a.add(m.topRows(3 * C));
    b.add(m.bottomRows(5 * C));
    a.merge(b);
    a.begin_deviation_pass();
    calibration_statistics a2 = a;
    a.add(m.topRows(3 * C));
    a2.add(m.bottomRows(5 * C));
    a.merge(a2);
    check_same(a.result(), whole, 1e-12);
  }
}

TEST_CASE("calibration: constant channels and a single value per channel") {
  for (stats_mode mode : {stats_mode::batch_mean, stats_mode::exact}) {
    INFO("mode " << int(mode));
    {  // a constant channel among random ones (double 0.1: n copies do not sum exactly)
      const index C = 3, N = 5, hw = 37;
      std::vector<ptq::row_matrix<double>> batches;
      for (int k = 0; k < 3; ++k) {
        auto m = random_batch<double>(N * C, hw, C, 40 + k);
        for (index r = 1; r < N * C; r += C) m.row(r).setConstant(0.1);
        batches.push_back(m);
      }
      const auto s = run(batches, C, mode);
      CHECK(s.min[1] == 0.1);
      CHECK(s.max[1] == 0.1);
      CHECK(s.mean[1] == 0.1);
      CHECK(s.b[1] == 0.0);
      CHECK(s.std[1] == 0.0);
      // the naive reference's mean of 555 copies of 0.1 is off by an ulp or two: not for channel 1
      check_against(s, reference(batches, C, mode), 1e-9, true, 1);
    }
    {  // float constant, lane (vector) path
      const ptq::row_matrix<float> m = ptq::row_matrix<float>::Constant(4, 1000, -2.7f);
      const auto s = run(std::vector<ptq::row_matrix<float>>{m, m}, 2, mode);
      for (index c = 0; c < 2; ++c) {
        CHECK(s.min[c] == double(-2.7f));
        CHECK(s.max[c] == double(-2.7f));
        CHECK(s.mean[c] == double(-2.7f));
        CHECK(s.b[c] == 0.0);
        CHECK(s.std[c] == 0.0);
      }
    }
    {  // one value per channel: std = 0 (defined so), b = 0
      ptq::row_matrix<float> m(3, 1);
      m << 1.5f, -2.0f, 1e-3f;
      const auto s = run(std::vector<ptq::row_matrix<float>>{m}, 3, mode);
      CHECK(s.count == 1);
      for (index c = 0; c < 3; ++c) {
        CHECK(s.min[c] == double(m(c, 0)));
        CHECK(s.max[c] == double(m(c, 0)));
        CHECK(s.mean[c] == double(m(c, 0)));
        CHECK(s.b[c] == 0.0);
        CHECK(s.std[c] == 0.0);
      }
    }
  }
}

TEST_CASE("calibration: batch_mean averages per-batch min and max (as the reference does)") {
  ptq::row_matrix<float> a(1, 4), b(1, 2);
  a << 0, 1, 2, 3;  // min 0, max 3, mean 1.5, b 1, std sqrt(5/3)
  b << 10, 14;      // min 10, max 14, mean 12, b 2, std sqrt(8)
  calibration_statistics acc(1);
  acc.add(a);
  acc.add(b);
  const auto s = acc.result();
  CHECK(s.min[0] == doctest::Approx(5.0));
  CHECK(s.max[0] == doctest::Approx(8.5));
  CHECK(s.mean[0] == doctest::Approx(6.75));
  CHECK(s.b[0] == doctest::Approx(1.5));
  CHECK(s.std[0] == doctest::Approx((std::sqrt(5.0 / 3.0) + std::sqrt(8.0)) / 2));
  CHECK(s.count == 6);
  // exact mode on the same data: mean 30/6 = 5, b = mean |x - 5|, min 0, max 14
  calibration_statistics ex(1, stats_mode::exact);
  ex.add(a), ex.add(b);
  ex.begin_deviation_pass();
  ex.add(b), ex.add(a);
  const auto e = ex.result();
  const double mu = 30.0 / 6.0;
  double ab = 0, sq = 0;
  for (double x : {0.0, 1.0, 2.0, 3.0, 10.0, 14.0}) ab += std::abs(x - mu), sq += (x - mu) * (x - mu);
  CHECK(e.min[0] == 0.0);
  CHECK(e.max[0] == 14.0);
  CHECK(e.mean[0] == doctest::Approx(mu));
  CHECK(e.b[0] == doctest::Approx(ab / 6));
  CHECK(e.std[0] == doctest::Approx(std::sqrt(sq / 5)));
}

TEST_CASE("calibration: errors name the argument and leave the accumulator unchanged") {
  const index C = 3;
  const auto good = random_batch<float>(2 * C, 10, C, 5);

  SUBCASE("constructor") {
    CHECK_THROWS_WITH_AS(calibration_statistics(0), doctest::Contains("channels = 0 must be at least 1"),
                         ptq::error);
    CHECK_THROWS_WITH_AS(calibration_statistics(-2, stats_mode::exact),
                         doctest::Contains("calibration_statistics: channels = -2"), ptq::error);
  }

  SUBCASE("add and merge, every mode and pass") {
  for (stats_mode mode : {stats_mode::batch_mean, stats_mode::exact})
    for (bool second_pass : {false, true}) {
      if (second_pass && mode == stats_mode::batch_mean) continue;
      INFO("mode " << int(mode) << " pass 2 " << second_pass);
      calibration_statistics acc(C, mode);
      acc.add(good);
      acc.add(good.topRows(C));
      if (second_pass) acc.begin_deviation_pass(), acc.add(good.topRows(C));
      const calibration_statistics before = acc;
      auto unchanged = [&] {
        CHECK(acc.batches() == before.batches());
        CHECK(acc.count() == before.count());
        CHECK(acc.deviation_count() == before.deviation_count());
        CHECK(acc.pass() == before.pass());
        check_identical_stats(acc.moments(), before.moments());
        if (second_pass) {  // finish both identically
          calibration_statistics x = acc, y = before;
          x.add(good), y.add(good);
          check_identical_stats(x.result(), y.result());
        } else if (mode == stats_mode::batch_mean) {
          check_identical_stats(acc.result(), before.result());
        }
      };
      CHECK_THROWS_WITH_AS(acc.add(ptq::row_matrix<float>(0, 10)),
                           doctest::Contains("ptq::calibration_statistics::add: the tensor is empty (0 x 10)"),
                           ptq::error);
      CHECK_THROWS_WITH_AS(acc.add(ptq::row_matrix<float>(6, 0)), doctest::Contains("the tensor is empty"),
                           ptq::error);
      CHECK_THROWS_WITH_AS(acc.add(good.topRows(5)),
                           doctest::Contains("rows = 5 is not a multiple of channels = 3"), ptq::error);
      for (float bad : {std::numeric_limits<float>::quiet_NaN(), std::numeric_limits<float>::infinity(),
                        -std::numeric_limits<float>::infinity()}) {
        auto m = good;
        m(4, 7) = bad;  // row 4 = channel 1, outer index 1
        const std::string v = std::isnan(bad) ? "nan" : bad > 0 ? "inf" : "-inf";
        const std::string msg = "rows(4, 7) = " + v + " is not finite (channel 1, outer index 1";
        CHECK_THROWS_WITH_AS(acc.add(m),
                             doctest::Contains(msg.c_str()),
                             ptq::error);
        unchanged();
        // both +inf and -inf in one channel: the sum is nan, the first bad value is named
        m(1, 0) = -bad;
        if (!std::isnan(bad))
          CHECK_THROWS_WITH_AS(acc.add(m), doctest::Contains("rows(1, 0) = "), ptq::error);
      }
      // through a non-contiguous input too
      {
        Eigen::MatrixXf col = good;
        col(2, 3) = std::numeric_limits<float>::quiet_NaN();
        CHECK_THROWS_WITH_AS(acc.add(col),
                             doctest::Contains("rows(2, 3) = nan is not finite (channel 2, outer index 0"), ptq::error);
      }
      unchanged();
      // merge mismatches
      calibration_statistics other_c(C + 1, mode), other_m(C, mode == stats_mode::exact ? stats_mode::batch_mean
                                                                                       : stats_mode::exact);
      CHECK_THROWS_WITH_AS(acc.merge(other_c), doctest::Contains("other.channels = 4 differs from this channels = 3"),
                           ptq::error);
      CHECK_THROWS_WITH_AS(acc.merge(other_m), doctest::Contains("other.mode = "), ptq::error);
      unchanged();
    }
  }

  SUBCASE("double values whose statistics overflow") {
    ptq::row_matrix<double> m(1, 4);
    m << 1e308, 1.5e308, 1e308, 0;
    calibration_statistics acc(1);
    CHECK_THROWS_WITH_AS(acc.add(m), doctest::Contains("channel 0 overflows double"), ptq::error);
    CHECK(acc.batches() == 0);
    ptq::row_matrix<double> w(1, 2);
    w << 1e300, -1e300;  // sum fine, squares overflow
    CHECK_THROWS_WITH_AS(acc.add(w), doctest::Contains("sum of squared deviations of channel 0 overflows"),
                         ptq::error);
    CHECK(acc.batches() == 0);
  }

  SUBCASE("no data") {
    for (stats_mode mode : {stats_mode::batch_mean, stats_mode::exact}) {
      calibration_statistics acc(C, mode);
      CHECK_THROWS_WITH_AS(acc.result(), doctest::Contains("ptq::calibration_statistics::result: batches = 0"),
                           ptq::error);
      CHECK_THROWS_WITH_AS(acc.moments(), doctest::Contains("moments: batches = 0"), ptq::error);
    }
    calibration_statistics ex(C, stats_mode::exact);
    CHECK_THROWS_WITH_AS(ex.begin_deviation_pass(), doctest::Contains("count = 0"), ptq::error);
  }

  SUBCASE("exact mode protocol misuse") {
    calibration_statistics acc(C, stats_mode::exact);
    acc.add(good);
    CHECK_THROWS_WITH_AS(acc.result(), doctest::Contains("call begin_deviation_pass()"), ptq::error);
    CHECK_NOTHROW(acc.moments());
    calibration_statistics bm(C);
    bm.add(good);
    CHECK_THROWS_WITH_AS(bm.begin_deviation_pass(), doctest::Contains("mode = batch_mean has no deviation pass"),
                         ptq::error);
    calibration_statistics p1 = acc;
    acc.begin_deviation_pass();
    CHECK_THROWS_WITH_AS(acc.begin_deviation_pass(), doctest::Contains("already called"), ptq::error);
    CHECK_THROWS_WITH_AS(acc.merge(p1), doctest::Contains("other.pass = moments differs from this pass = deviation"),
                         ptq::error);
    CHECK_THROWS_WITH_AS(p1.merge(acc), doctest::Contains("other.pass = deviation"), ptq::error);
    // deviation pass incomplete
    acc.add(good.topRows(C));
    CHECK_THROWS_WITH_AS(acc.result(), doctest::Contains("the deviation pass has seen 10 values per channel, "
                                                         "the moments pass 20"),
                         ptq::error);
    // more than pass 1
    CHECK_THROWS_WITH_AS(acc.add(good), doctest::Contains("would bring the deviation pass to 30 values"),
                         ptq::error);
    CHECK(acc.deviation_count() == 10);
    // other data of the same size
    acc.add(random_batch<float>(C, 10, C, 12345));
    CHECK_THROWS_WITH_AS(acc.result(), doctest::Contains("saw other data in the deviation pass"), ptq::error);
    // merging deviation passes begun from different moments
    calibration_statistics q(C, stats_mode::exact);
    q.add(good.topRows(C));
    q.begin_deviation_pass();
    calibration_statistics r(C, stats_mode::exact);
    r.add(good);
    r.begin_deviation_pass();
    CHECK_THROWS_WITH_AS(r.merge(q), doctest::Contains("different pass-1 moments"), ptq::error);
    // two halves that together exceed pass 1
    calibration_statistics r2 = r;
    r.add(good);
    r2.add(good);
    CHECK_THROWS_WITH_AS(r.merge(r2), doctest::Contains("more than the 20 of the moments pass"), ptq::error);
    CHECK_NOTHROW(r.result());
  }
}


// Naive double loops: the batch_sums of one batch (rows r of channel r % C).
template <class T>
ptq::batch_sums naive_sums(const ptq::row_matrix<T>& m, index C) {
  ptq::batch_sums s;
  const auto n = static_cast<std::size_t>(C);
  s.count = (m.rows() / C) * m.cols();
  s.lo.assign(n, 0), s.hi.assign(n, 0), s.mean.assign(n, 0), s.m2.assign(n, 0), s.abs.assign(n, 0);
  for (index c = 0; c < C; ++c) {
    const auto u = static_cast<std::size_t>(c);
    double lo = m(c, 0), hi = lo, sum = 0;
    for (index r = c; r < m.rows(); r += C)
      for (index j = 0; j < m.cols(); ++j) lo = std::min(lo, double(m(r, j))), hi = std::max(hi, double(m(r, j))), sum += m(r, j);
    const double mean = std::min(std::max(sum / static_cast<double>(s.count), lo), hi);
    double q = 0, a = 0;
    for (index r = c; r < m.rows(); r += C)
      for (index j = 0; j < m.cols(); ++j) q += (m(r, j) - mean) * (m(r, j) - mean), a += std::abs(m(r, j) - mean);
    s.lo[u] = lo, s.hi[u] = hi, s.mean[u] = mean, s.m2[u] = q, s.abs[u] = a;
  }
  return s;
}

// Naive double loops: the deviation_sums of one batch about centre.
template <class T>
ptq::deviation_sums naive_deviations(const ptq::row_matrix<T>& m, index C, const Eigen::VectorXd& centre) {
  const ptq::batch_sums b = naive_sums(m, C);
  ptq::deviation_sums s;
  s.count = b.count, s.lo = b.lo, s.hi = b.hi, s.abs.assign(static_cast<std::size_t>(C), 0);
  for (index r = 0; r < m.rows(); ++r)
    for (index j = 0; j < m.cols(); ++j) s.abs[static_cast<std::size_t>(r % C)] += std::abs(m(r, j) - centre[r % C]);
  return s;
}

// min, max exact; mean, b, std within tol relative (mean relative to max(|mean|, std)).
void check_sums_result(const ptq::channel_stats& a, const ptq::channel_stats& want, double tol) {
  REQUIRE(a.channels() == want.channels());
  CHECK(a.count == want.count);
  CHECK(a.min == want.min);
  CHECK(a.max == want.max);
  for (index c = 0; c < a.channels(); ++c) {
    INFO("channel " << c);
    CHECK(close(a.mean[c], want.mean[c], tol, want.std[c]));
    CHECK(close(a.std[c], want.std[c], tol, 0));
    if (want.b.size()) CHECK(close(a.b[c], want.b[c], tol, 0));
  }
}

template <class T>
void check_add_sums_equals_add() {
  const index C = 5;
  std::vector<ptq::row_matrix<T>> batches;
  std::uint64_t seed = 900;
  for (index outer : {1, 3, 2}) batches.push_back(random_batch<T>(outer * C, 37, C, ++seed));
  batches.push_back(random_batch<T>(C, 1, C, ++seed));  // one value per channel: std = 0 in batch_mean
  for (stats_mode mode : {stats_mode::batch_mean, stats_mode::exact}) {
    INFO("mode " << int(mode));
    calibration_statistics by_add(C, mode), by_sums(C, mode);
    for (const auto& m : batches) {
      by_add.add(m);
      ptq::batch_sums s = naive_sums(m, C);
      if (mode == stats_mode::exact && m.rows() == C) s.abs.clear();  // exact mode ignores abs
      by_sums.add_sums(s);
    }
    CHECK(by_sums.batches() == by_add.batches());
    CHECK(by_sums.count() == by_add.count());
    if (mode == stats_mode::batch_mean) {
      check_sums_result(by_sums.result(), by_add.result(), 1e-12);
      continue;
    }
    check_sums_result(by_sums.moments(), by_add.moments(), 1e-12);
    by_add.begin_deviation_pass(), by_sums.begin_deviation_pass();
    for (auto it = batches.rbegin(); it != batches.rend(); ++it) {
      by_add.add(*it);
      by_sums.add_deviation_sums(naive_deviations(*it, C, by_sums.mean()));
    }
    CHECK(by_sums.deviation_count() == by_add.deviation_count());
    check_sums_result(by_sums.result(), by_add.result(), 1e-12);
    // and the same accumulator may mix both entries
    calibration_statistics mixed(C, mode);
    for (std::size_t k = 0; k < batches.size(); ++k)
      k % 2 ? mixed.add(batches[k]) : mixed.add_sums(naive_sums(batches[k], C));
    mixed.begin_deviation_pass();
    for (std::size_t k = 0; k < batches.size(); ++k)
      k % 2 ? mixed.add_deviation_sums(naive_deviations(batches[k], C, mixed.mean())) : mixed.add(batches[k]);
    check_sums_result(mixed.result(), by_add.result(), 1e-12);
  }
}

TEST_CASE("calibration: add_sums / add_deviation_sums of naive sums equal add() (both modes, exact 2 passes)") {
  check_add_sums_equals_add<float>();
  check_add_sums_equals_add<double>();
}

TEST_CASE("calibration: add_sums and add_deviation_sums validate first and change nothing on error") {
  const index C = 3;
  const auto good = random_batch<double>(2 * C, 10, C, 77);
  const double nan = std::numeric_limits<double>::quiet_NaN();
  for (stats_mode mode : {stats_mode::batch_mean, stats_mode::exact}) {
    INFO("mode " << int(mode));
    calibration_statistics acc(C, mode);
    acc.add(good);
    const calibration_statistics before = acc;
    auto unchanged = [&] {
      CHECK(acc.batches() == before.batches());
      CHECK(acc.count() == before.count());
      CHECK(acc.pass() == before.pass());
      check_identical_stats(acc.moments(), before.moments());
      if (mode == stats_mode::batch_mean) check_identical_stats(acc.result(), before.result());
    };
    const ptq::batch_sums ok = naive_sums(good, C);
    auto bad = [&](auto&& edit, const char* msg) {
      ptq::batch_sums s = ok;
      edit(s);
      CHECK_THROWS_WITH_AS(acc.add_sums(s), doctest::Contains(msg), ptq::error);
      unchanged();
    };
    bad([](ptq::batch_sums& s) { s.lo.pop_back(); },
        "ptq::calibration_statistics::add_sums: sums.lo.size() = 2 does not match channels = 3");
    bad([](ptq::batch_sums& s) { s.m2.push_back(0); }, "add_sums: sums.m2.size() = 4 does not match channels = 3");
    bad([](ptq::batch_sums& s) { s.count = 0; }, "add_sums: sums.count = 0 must be positive");
    bad([&](ptq::batch_sums& s) { s.mean[1] = nan; }, "add_sums: sums.mean[1] = nan is not in [sums.lo, sums.hi]");
    bad([&](ptq::batch_sums& s) { s.lo[2] = nan; }, "add_sums: sums.lo[2] = nan is not finite");
    bad([](ptq::batch_sums& s) { s.hi[0] = std::numeric_limits<double>::infinity(); },
        "add_sums: sums.hi[0] = inf is not finite");
    bad([](ptq::batch_sums& s) { s.lo[0] = s.hi[0] + 1; }, "add_sums: sums.lo[0] = ");
    bad([](ptq::batch_sums& s) { s.lo[0] = s.hi[0] + 1; }, "is above sums.hi[0]");
    bad([](ptq::batch_sums& s) { s.mean[2] = s.hi[2] + 0.5; }, "add_sums: sums.mean[2] = ");
    bad([](ptq::batch_sums& s) { s.m2[1] = -1; }, "add_sums: sums.m2[1] = -1 is not a finite value >= 0");
    bad([&](ptq::batch_sums& s) { s.m2[1] = nan; }, "add_sums: sums.m2[1] = nan");
    if (mode == stats_mode::batch_mean) {
      bad([&](ptq::batch_sums& s) { s.abs[0] = nan; }, "add_sums: sums.abs[0] = nan is not a finite value >= 0");
      bad([](ptq::batch_sums& s) { s.abs.clear(); }, "add_sums: sums.abs.size() = 0 does not match channels = 3");
      CHECK_THROWS_WITH_AS(acc.add_deviation_sums(naive_deviations(good, C, acc.mean())),
                           doctest::Contains("ptq::calibration_statistics::add_deviation_sums: mode = batch_mean"),
                           ptq::error);
      unchanged();
      continue;
    }
    // exact mode, pass 2 before begin_deviation_pass(), then its own checks
    const ptq::deviation_sums dev = naive_deviations(good, C, acc.mean());
    CHECK_THROWS_WITH_AS(acc.add_deviation_sums(dev),
                         doctest::Contains("ptq::calibration_statistics::add_deviation_sums: pass = moments: call "
                                           "begin_deviation_pass() first"),
                         ptq::error);
    unchanged();
    acc.begin_deviation_pass();
    const calibration_statistics frozen = acc;
    CHECK_THROWS_WITH_AS(acc.add_sums(ok), doctest::Contains("add_sums: pass = deviation"), ptq::error);
    auto bad_dev = [&](auto&& edit, const char* msg) {
      ptq::deviation_sums s = dev;
      edit(s);
      CHECK_THROWS_WITH_AS(acc.add_deviation_sums(s), doctest::Contains(msg), ptq::error);
      CHECK(acc.deviation_count() == frozen.deviation_count());
      CHECK(acc.deviation_batches() == frozen.deviation_batches());
    };
    bad_dev([](ptq::deviation_sums& s) { s.abs.pop_back(); },
            "ptq::calibration_statistics::add_deviation_sums: sums.abs.size() = 2 does not match channels = 3");
    bad_dev([](ptq::deviation_sums& s) { s.count = 0; }, "add_deviation_sums: sums.count = 0 must be positive");
    bad_dev([](ptq::deviation_sums& s) { s.count = 21; },
            "add_deviation_sums: sums.count = 21 would bring the deviation pass to 21 values per channel, more than "
            "the 20 of the moments pass");
    bad_dev([&](ptq::deviation_sums& s) { s.abs[1] = nan; }, "add_deviation_sums: sums.abs[1] = nan");
    bad_dev([](ptq::deviation_sums& s) { s.abs[1] = -0.5; }, "add_deviation_sums: sums.abs[1] = -0.5");
    bad_dev([](ptq::deviation_sums& s) { s.lo[2] = s.hi[2] + 1; }, "is above sums.hi[2]");
    bad_dev([&](ptq::deviation_sums& s) { s.hi[2] = nan; }, "add_deviation_sums: sums.hi[2] = nan is not finite");
    // a valid half, then more than pass 1 in total
    ptq::deviation_sums half = naive_deviations(ptq::row_matrix<double>(good.topRows(C)), C, acc.mean());
    acc.add_deviation_sums(half);
    CHECK_THROWS_WITH_AS(acc.add_deviation_sums(dev), doctest::Contains("would bring the deviation pass to 30"),
                         ptq::error);
    CHECK(acc.deviation_count() == 10);
    // finishing from the failed state equals finishing from a copy taken before the failures
    calibration_statistics ref = frozen;
    ref.add_deviation_sums(half);
    const ptq::deviation_sums rest = naive_deviations(ptq::row_matrix<double>(good.bottomRows(C)), C, acc.mean());
    acc.add_deviation_sums(rest), ref.add_deviation_sums(rest);
    check_identical_stats(acc.result(), ref.result());
    check_sums_result(acc.result(), ptq::batch_statistics_ref(good, C), 1e-12);
  }
}

}  // namespace

}  // namespace ptq_test_calibration
