// test_bad_numbers.cpp: hostile numbers for the library's stages: NaN / +-Inf, degenerate and empty tensors, bit widths, channel counts.
//
// Every refusal is a ptq::error whose message names the function and the argument (and
// the offending value or position), and leaves what the caller passed unchanged. The
// degenerate but valid inputs (all-zero channels, single elements) give exact answers,
// never a NaN.
#include <doctest/doctest.h>

#include <climits>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <limits>
#include <string>
#include <vector>

#include <ptq/ptq.hpp>

// Everything of this file in its own namespace: the test binary is a unity build.
namespace ptq_test_bad_numbers {

namespace {

template <class T>
using rmat = ptq::row_matrix<T>;
using codes16 = Eigen::Matrix<std::uint16_t, Eigen::Dynamic, Eigen::Dynamic, Eigen::RowMajor>;
using codes8 = Eigen::Matrix<std::uint8_t, Eigen::Dynamic, Eigen::Dynamic, Eigen::RowMajor>;

doctest::Contains has(const std::string& s) { return doctest::Contains(s.c_str()); }

template <class M>
bool same_bits(const M& a, const M& b) {
  return a.rows() == b.rows() && a.cols() == b.cols() &&
         std::memcmp(a.data(), b.data(), static_cast<std::size_t>(a.size()) * sizeof(typename M::Scalar)) == 0;
}

// A fixed pseudo-random tensor of `rows` x `cols` in [-2, 2].
template <class T>
rmat<T> tensor(ptq::index rows, ptq::index cols, unsigned seed = 1) {
  rmat<T> x(rows, cols);
  for (ptq::index i = 0; i < x.size(); ++i) x.data()[i] = static_cast<T>(2.0 * std::sin(1.7 * double(i + seed) + seed));
  return x;
}

template <class T>
ptq::quant_params<T> params4(ptq::index channels) {
  ptq::channel_ranges r;
  r.lo = Eigen::VectorXd::Constant(channels, -2.0);
  r.hi = Eigen::VectorXd::Constant(channels, 2.0);
  return ptq::quant_params<T>::per_channel(r, 4);
}

ptq::channel_stats good_stats(ptq::index n) {
  ptq::channel_stats s;
  s.min = Eigen::VectorXd::Constant(n, -2.0);
  s.max = Eigen::VectorXd::Constant(n, 3.0);
  s.mean = Eigen::VectorXd::Constant(n, 0.5);
  s.b = Eigen::VectorXd::Constant(n, 0.7);
  s.std = Eigen::VectorXd::Constant(n, 0.9);
  s.count = 10;
  return s;
}

const char* shown(double v) { return std::isnan(v) ? "nan" : v > 0 ? "inf" : "-inf"; }

}  // namespace

TEST_CASE_TEMPLATE("bad_input: NaN, +Inf and -Inf in tensors are refused by every entry point, nothing changes", T, float,
                   double) {
  const T specials[] = {std::numeric_limits<T>::quiet_NaN(), std::numeric_limits<T>::infinity(),
                        -std::numeric_limits<T>::infinity()};
  const ptq::index C = 3, rows = 6, cols = 5;
  int cases = 0;
  for (const T bad : specials) {
    for (const ptq::index at : {ptq::index(0), ptq::index(13), rows * cols - 1}) {
      const ptq::index r = at / cols, c = at % cols;
      const std::string pos = "(" + std::to_string(r) + ", " + std::to_string(c) + ") = " + shown(double(bad));
      CAPTURE(pos);
      rmat<T> x = tensor<T>(rows, cols);
      x(r, c) = bad;

      // Calibration, both modes and both passes: refused, the accumulated state unchanged.
      for (const auto mode : {ptq::stats_mode::batch_mean, ptq::stats_mode::exact}) {
        ptq::calibration_statistics s(C, mode);
        s.add(tensor<T>(rows, cols, 2));
        const ptq::channel_stats before = s.moments();
        CHECK_THROWS_WITH_AS(s.add(x), has("ptq::calibration_statistics::add: rows" + pos + " is not finite (channel " +
                                           std::to_string(r % C)),
                             ptq::error);
        CHECK(s.batches() == 1);
        CHECK(s.moments().mean == before.mean);
        CHECK(s.moments().std == before.std);
        if (mode == ptq::stats_mode::exact) {
          s.begin_deviation_pass();
          CHECK_THROWS_WITH_AS(s.add(x), has("rows" + pos + " is not finite"), ptq::error);
          CHECK(s.deviation_count() == 0);
        }
      }
      CHECK_THROWS_WITH_AS(ptq::batch_statistics_ref(x, C), has("ptq::batch_statistics_ref: rows" + pos), ptq::error);

      // Quantizer: every operation refuses, the output keeps its contents.
      const auto p = params4<T>(C);
      rmat<T> out = rmat<T>::Constant(rows, cols, T(5)), keep = out;
      codes16 q = codes16::Constant(rows, cols, 9), qkeep = q;
      CHECK_THROWS_WITH_AS(ptq::gemmlowp_quantizer::fake_quantize(x, p, out),
                           has("ptq::gemmlowp_quantizer::fake_quantize: x" + pos + " is not finite"), ptq::error);
      CHECK_THROWS_WITH_AS(ptq::gemmlowp_quantizer::fake_quantize_ref(x, p, out),
                           has("ptq::gemmlowp_quantizer::fake_quantize_ref: x" + pos), ptq::error);
      CHECK_THROWS_WITH_AS(ptq::gemmlowp_quantizer::quantize<std::uint16_t>(x, p, q),
                           has("ptq::gemmlowp_quantizer::quantize: x" + pos), ptq::error);
      CHECK_THROWS_WITH_AS(ptq::gemmlowp_quantizer::quantize_ref<std::uint16_t>(x, p, q),
                           has("ptq::gemmlowp_quantizer::quantize_ref: x" + pos), ptq::error);
      rmat<T> inplace = x;
      CHECK_THROWS_WITH_AS(ptq::gemmlowp_quantizer::fake_quantize_in_place(inplace, p),
                           has("ptq::gemmlowp_quantizer::fake_quantize_in_place: x" + pos), ptq::error);
      CHECK(same_bits(out, keep));
      CHECK(same_bits(q, qkeep));
      CHECK(same_bits(inplace, x));

      // Bias correction: W or Wq non-finite; Wq unchanged.
      rmat<T> w = tensor<T>(rows, cols, 3), wq = tensor<T>(rows, cols, 4);
      const rmat<T> wq_keep = wq;
      CHECK_THROWS_WITH_AS(ptq::bias_corrector::correct(x, wq), has("ptq::bias_corrector::correct: w" + pos), ptq::error);
      CHECK(same_bits(wq, wq_keep));
      rmat<T> xq = x;
      CHECK_THROWS_WITH_AS(ptq::bias_corrector::correct(w, xq), has("ptq::bias_corrector::correct: wq" + pos), ptq::error);
      CHECK(same_bits(xq, x));
      CHECK_THROWS_WITH_AS(ptq::bias_corrector::compute(w, x), has("ptq::bias_corrector::compute: wq" + pos), ptq::error);
      const ptq::bias_correction corr = ptq::bias_corrector::compute(w, wq);
      CHECK_THROWS_WITH_AS(ptq::bias_corrector::apply(corr, xq), has("ptq::bias_corrector::apply: wq" + pos), ptq::error);
      CHECK(same_bits(xq, x));
      ++cases;
    }
  }
  CHECK(cases == 9);
}

TEST_CASE("bad_input: NaN, +Inf and -Inf in statistics, ranges, means, bins and parameters") {
  const double nan = std::numeric_limits<double>::quiet_NaN(), inf = std::numeric_limits<double>::infinity();
  using ptq::distribution;
  for (const double bad : {nan, inf, -inf}) {
    const std::string v = shown(bad);
    CAPTURE(v);
    for (const char* field : {"min", "mean", "b", "std"}) {
      ptq::channel_stats s = good_stats(3);
      Eigen::VectorXd& f = std::string(field) == "min" ? s.min : std::string(field) == "mean" ? s.mean
                           : std::string(field) == "b" ? s.b : s.std;
      f[1] = bad;
      const distribution d = std::string(field) == "std" ? distribution::gauss : distribution::laplace;
      CHECK_THROWS_WITH_AS(ptq::aciq_ranges(d, s, 4),
                           has(std::string("ptq::aciq_ranges: stats.") + field + "[1] = " + v + " is not finite"),
                           ptq::error);
    }
    ptq::channel_stats s = good_stats(3);
    s.max[2] = bad;
    CHECK_THROWS_WITH_AS(ptq::minmax_ranges(s), has("ptq::minmax_ranges: stats.max[2] = " + v + " is not finite"),
                         ptq::error);
    s = good_stats(2);
    CHECK_THROWS_WITH_AS(ptq::aciq_ranges_bins(distribution::gauss, s, Eigen::Vector2d(16.0, bad)),
                         has("ptq::aciq_ranges_bins: bins[1] = " + v), ptq::error);

    ptq::channel_ranges r;
    r.lo = Eigen::Vector3d(-1, bad, -1);
    r.hi = Eigen::Vector3d(1, 1, 1);
    CHECK_THROWS_WITH_AS(ptq::quant_params<float>::per_channel(r, 4),
                         has("ptq::quant_params::per_channel: ranges.lo[1] = " + v + " is not finite"), ptq::error);
    r.lo = Eigen::Vector3d(-1, -1, -1);
    r.hi = Eigen::Vector3d(1, 1, bad);
    CHECK_THROWS_WITH_AS(ptq::quant_params<double>::per_channel(r, Eigen::Vector3i(4, 4, 4)),
                         has("ranges.hi[2] = " + v + " is not finite"), ptq::error);
    CHECK_THROWS_WITH_AS(ptq::quant_params<float>::per_tensor(bad, 1.0, 8),
                         has("ptq::quant_params::per_tensor: lo = " + v + " is not finite"), ptq::error);
    CHECK_THROWS_WITH_AS(ptq::quant_params<float>::per_tensor(-1.0, bad, 8), has("hi = " + v + " is not finite"),
                         ptq::error);
    r.hi = Eigen::Vector3d(1, 1, 1);
    if (std::isnan(bad))
      CHECK_THROWS_WITH_AS(ptq::quant_params<float>::per_channel(r, Eigen::Vector3i(0, 0, 0), Eigen::Vector3d(0, bad, 0)),
                           has("ptq::quant_params::per_channel: mean[1] = nan"), ptq::error);
    else  // an infinite mean is clamped into the range: the 0-bit channel is the range's end
      CHECK(ptq::quant_params<float>::per_channel(r, Eigen::Vector3i(0, 0, 0), Eigen::Vector3d(0, bad, 0)).scale[1] == 1.0f);

    CHECK_THROWS_WITH_AS(ptq::bit_allocator::exact(Eigen::Vector3d(1, bad, 2)),
                         has("ptq::bit_allocator::exact: ranges[1] = " + v), ptq::error);
    CHECK_THROWS_WITH_AS(ptq::bit_allocator::paper(Eigen::Vector3d(bad, 1, 2)),
                         has("ptq::bit_allocator::paper: ranges[0] = " + v), ptq::error);
    ptq::bit_allocator::params bp;
    bp.target_bits = bad;
    CHECK_THROWS_WITH_AS(ptq::bit_allocator::exact(Eigen::Vector3d(1, 2, 3), bp),
                         has("target_bits = " + v + " is not finite"), ptq::error);
    CHECK_THROWS_WITH_AS(ptq::aciq_mse(distribution::laplace, bad, 16), has("ptq::aciq_mse: alpha_over_scale = " + v),
                         ptq::error);
    CHECK_THROWS_WITH_AS(ptq::aciq_alpha_bins(distribution::gauss, -bad * 0 + bad), has("ptq::aciq_alpha_bins: bins = "),
                         ptq::error);

    ptq::bias_correction c;
    c.mu = c.beta = Eigen::Vector2d(0, 0);
    c.xi = Eigen::Vector2d(1, bad);
    rmat<float> wq = tensor<float>(2, 3), keep = wq;
    CHECK_THROWS_WITH_AS(ptq::bias_corrector::apply(c, wq), has("ptq::bias_corrector::apply: correction.xi[1] = " + v),
                         ptq::error);
    CHECK(same_bits(wq, keep));
    ptq::quant_params<float> p = params4<float>(2);
    p.scale[1] = static_cast<float>(bad);
    rmat<float> out = rmat<float>::Zero(2, 3);
    CHECK_THROWS_WITH_AS(ptq::gemmlowp_quantizer::fake_quantize(wq, p, out),
                         has("ptq::gemmlowp_quantizer::fake_quantize: params.scale[1] = " + v), ptq::error);
  }
  // Values the formulas could turn into NaN: a huge alpha (both terms of the Gauss MSE)
  // and huge weights whose corrected values leave float (found by fuzz_quantizer).
  CHECK(std::isinf(ptq::aciq_mse(distribution::gauss, 1e200, 16)));
  CHECK(ptq::aciq_mse(distribution::gauss, 50.0, 16) == 50.0 * 50.0 / (3.0 * 256.0));
  rmat<float> w(1, 16), wq(1, 16);
  for (int j = 0; j < 16; ++j) w(0, j) = (j % 2 ? 1.0f : -1.0f) * 3e38f, wq(0, j) = j == 0 ? 1.0f : 0.0f;
  const rmat<float> wq_keep = wq;
  CHECK_THROWS_WITH_AS(ptq::bias_corrector::correct(w, wq, {true}),
                       has("ptq::bias_corrector::correct: row 0: the corrected weight"), ptq::error);
  CHECK(same_bits(wq, wq_keep));
}

TEST_CASE_TEMPLATE("bad_input: all-zero channels give exact zeros and constant channels, never NaN", T, float, double) {
  const ptq::index C = 3, outer = 4, inner = 6;
  rmat<T> x = tensor<T>(outer * C, inner);
  for (ptq::index r = 1; r < outer * C; r += C) x.row(r).setZero();  // channel 1
  for (const auto mode : {ptq::stats_mode::batch_mean, ptq::stats_mode::exact}) {
    ptq::calibration_statistics s(C, mode);
    s.add(x);
    if (mode == ptq::stats_mode::exact) {
      s.begin_deviation_pass();
      s.add(x);
    }
    const ptq::channel_stats st = s.result();
    CHECK(st.min[1] == 0.0);
    CHECK(st.max[1] == 0.0);
    CHECK(st.mean[1] == 0.0);
    CHECK(st.b[1] == 0.0);
    CHECK(st.std[1] == 0.0);
    CHECK(st.b[0] > 0.0);
    for (const auto d : {ptq::distribution::laplace, ptq::distribution::gauss})
      for (const auto k : {ptq::range_kind::signed_range, ptq::range_kind::unsigned_range}) {
        const ptq::channel_ranges r = ptq::aciq_ranges(d, st, 4, k);
        CHECK(r.lo[1] == 0.0);
        CHECK(r.hi[1] == 0.0);
        const ptq::bit_allocation ex = ptq::bit_allocator::exact(d == ptq::distribution::laplace ? st.b : st.std);
        CHECK(ex.bits[1] == 0);  // a zero channel gains nothing from bits
        CHECK(ex.bits.sum() == 12);
        const ptq::bit_allocation pa = ptq::bit_allocator::paper(st.b);
        CHECK(pa.bits[1] == 0);
        CHECK(pa.fractional.allFinite());
        CHECK(std::isfinite(pa.modelled_mse));
        const auto p = ptq::quant_params<T>::per_channel(r, ex.bits, st.mean);
        CHECK(p.is_constant(1));
        CHECK(p.scale[1] == T(0));
        rmat<T> y(x.rows(), x.cols());
        ptq::gemmlowp_quantizer::fake_quantize(x, p, y);
        CHECK(y.allFinite());
        for (ptq::index row = 1; row < outer * C; row += C) CHECK((y.row(row).array() == T(0)).all());
        codes8 q(x.rows(), x.cols());
        ptq::gemmlowp_quantizer::quantize<std::uint8_t>(x, p, q);
        for (ptq::index row = 1; row < outer * C; row += C) CHECK((q.row(row).array() == 0).all());
      }
  }
  // Weights: an all-zero output channel in W and Wq: no correction, exactly zero afterwards.
  rmat<T> w = tensor<T>(3, 8), wq = tensor<T>(3, 8, 5);
  w.row(2).setZero();
  wq.row(2).setZero();
  for (const bool variance : {false, true}) {
    rmat<T> c = wq;
    const ptq::bias_correction bc = ptq::bias_corrector::correct(w, c, {variance});
    CHECK(bc.mu[2] == 0.0);
    CHECK(bc.xi[2] == 1.0);
    CHECK(bc.beta[2] == 0.0);
    CHECK((c.row(2).array() == T(0)).all());
    CHECK(c.allFinite());
  }
  // W spread, Wq all zero (a 0-bit channel): xi stays 1, only the mean moves.
  rmat<T> flat = wq;
  flat.row(0).setZero();
  const ptq::bias_correction bc = ptq::bias_corrector::compute(w, flat, {true});
  CHECK(bc.xi[0] == 1.0);
  CHECK(bc.beta[0] == doctest::Approx(w.row(0).template cast<double>().mean()));
  // Every range zero: all channels minimal, MSE 0.
  const ptq::bit_allocation none = ptq::bit_allocator::exact(Eigen::Vector3d::Zero(), {4, 0, 8});
  CHECK(none.bits.sum() == 12);
  CHECK(none.modelled_mse == 0.0);
}

TEST_CASE_TEMPLATE("bad_input: single-element tensors", T, float, double) {
  rmat<T> x(1, 1);
  x(0, 0) = T(-1.25);
  ptq::calibration_statistics s(1, ptq::stats_mode::exact);
  s.add(x);
  s.begin_deviation_pass();
  s.add(x);
  const ptq::channel_stats st = s.result();
  CHECK(st.count == 1);
  CHECK(st.min[0] == -1.25);
  CHECK(st.max[0] == -1.25);
  CHECK(st.mean[0] == -1.25);
  CHECK(st.std[0] == 0.0);  // defined as 0 for one value
  CHECK(st.b[0] == 0.0);
  const ptq::channel_stats ref = ptq::batch_statistics_ref(x, 1);
  CHECK(ref.std[0] == 0.0);
  const ptq::channel_ranges r = ptq::minmax_ranges(st);
  CHECK(r.lo[0] == -1.25);
  CHECK(r.hi[0] == 0.0);
  const auto p = ptq::quant_params<T>::per_channel(r, 1);  // 1 bit: codes {0, 1} = {-1.25, 0}
  rmat<T> y(1, 1);
  ptq::gemmlowp_quantizer::fake_quantize(x, p, y);
  CHECK(y(0, 0) == T(-1.25));
  const auto one = ptq::quant_params<T>::per_tensor(-1.25, -1.25, 8);  // zero-width range: a constant
  ptq::gemmlowp_quantizer::fake_quantize(x, one, y);
  CHECK(y(0, 0) == T(-1.25));
  const ptq::bit_allocation a = ptq::bit_allocator::exact(Eigen::VectorXd::Constant(1, 3.0), {5, 0, 8});
  CHECK(a.bits[0] == 5);
  rmat<T> wq(1, 1);
  wq(0, 0) = T(-1.0);
  const ptq::bias_correction bc = ptq::bias_corrector::correct(x, wq, {true});
  CHECK(bc.xi[0] == 1.0);  // no spread to match
  CHECK(wq(0, 0) == T(-1.25));
}

TEST_CASE("bad_input: 0-element tensors and empty parameter vectors are refused") {
  using namespace ptq;
  for (const auto& shape : {std::pair<ptq::index, ptq::index>{0, 5}, {3, 0}, {0, 0}}) {
    const rmat<float> x(shape.first, shape.second);
    const std::string dims = "(" + std::to_string(shape.first) + " x " + std::to_string(shape.second) + ")";
    CAPTURE(dims);
    calibration_statistics s(1);
    CHECK_THROWS_WITH_AS(s.add(x), has("ptq::calibration_statistics::add: the tensor is empty " + dims), ptq::error);
    CHECK(s.batches() == 0);
    CHECK_THROWS_WITH_AS(batch_statistics_ref(x, 1), has("ptq::batch_statistics_ref: the tensor is empty"), ptq::error);
    rmat<float> y(x.rows(), x.cols());
    CHECK_THROWS_WITH_AS(gemmlowp_quantizer::fake_quantize(x, params4<float>(1), y),
                         has("ptq::gemmlowp_quantizer::fake_quantize: the tensor is empty"), ptq::error);
    codes8 q(x.rows(), x.cols());
    CHECK_THROWS_WITH_AS(gemmlowp_quantizer::quantize<std::uint8_t>(x, params4<float>(1), q),
                         has("ptq::gemmlowp_quantizer::quantize: the tensor is empty"), ptq::error);
    CHECK_THROWS_WITH_AS(gemmlowp_quantizer::dequantize(q, params4<float>(1), y),
                         has("ptq::gemmlowp_quantizer::dequantize: the tensor is empty"), ptq::error);
    rmat<float> wq = x;
    CHECK_THROWS_WITH_AS(bias_corrector::correct(x, wq), has("ptq::bias_corrector::correct: w is empty " + dims),
                         ptq::error);
  }
  calibration_statistics s(2);
  CHECK_THROWS_WITH_AS(s.result(), has("ptq::calibration_statistics::result: batches = 0"), ptq::error);
  CHECK_THROWS_WITH_AS(s.moments(), has("ptq::calibration_statistics::moments: batches = 0"), ptq::error);
  calibration_statistics empty(2);
  s.merge(empty);  // merging nothing into nothing is fine and still nothing
  CHECK(s.batches() == 0);
  calibration_statistics ex(2, stats_mode::exact);
  CHECK_THROWS_WITH_AS(ex.begin_deviation_pass(), has("begin_deviation_pass: count = 0"), ptq::error);

  CHECK_THROWS_WITH_AS(bit_allocator::exact(Eigen::VectorXd()), has("ptq::bit_allocator::exact: ranges.size() = 0"),
                       ptq::error);
  CHECK_THROWS_WITH_AS(bit_allocator::paper(Eigen::VectorXd()), has("ptq::bit_allocator::paper: ranges.size() = 0"),
                       ptq::error);
  CHECK_THROWS_WITH_AS(quant_params<float>::per_channel(channel_ranges{}, 4),
                       has("ptq::quant_params::per_channel: ranges.lo.size() = 0: no channels"), ptq::error);
  quant_params<float> none;
  rmat<float> x = tensor<float>(2, 2), y = x;
  CHECK_THROWS_WITH_AS(gemmlowp_quantizer::fake_quantize(x, none, y),
                       has("ptq::gemmlowp_quantizer::fake_quantize: params.scale.size() = 0: no channels"), ptq::error);
  // Statistics of no channels give ranges of no channels, which the next stage refuses.
  const channel_ranges no_ranges = aciq_ranges(distribution::laplace, channel_stats{}, 4);
  CHECK(no_ranges.channels() == 0);
  CHECK_THROWS_WITH_AS(quant_params<float>::per_channel(no_ranges, 4), has("ranges.lo.size() = 0: no channels"),
                       ptq::error);
  CHECK_THROWS_WITH_AS(channel_layout::of(std::vector<ptq::index>{}, 0), has("ptq::channel_layout::of: the shape is empty"),
                       ptq::error);
  const channel_layout l = channel_layout::of({0, 3, 4}, 1);  // a valid layout of nothing ...
  CHECK(l.size() == 0);
  const std::vector<float> storage(1, 0.0f);
  CHECK_THROWS_WITH_AS(calibration_statistics(3).add(channel_rows(storage.data(), l)),  // ... that nothing accepts
                       has("the tensor is empty (0 x 4)"), ptq::error);
}

TEST_CASE("bad_input: bit widths -1, 0 where not allowed, 17, 1000, INT_MIN and INT_MAX") {
  using namespace ptq;
  channel_ranges r;
  r.lo = Eigen::Vector2d(-1, -2);
  r.hi = Eigen::Vector2d(1, 2);
  const channel_stats st = good_stats(2);
  for (const int b : {-1, 17, 1000, INT_MIN, INT_MAX}) {
    const std::string v = std::to_string(b);
    CAPTURE(v);
    CHECK_THROWS_WITH_AS(quant_params<float>::per_tensor(-1, 1, b),
                         has("ptq::quant_params::per_tensor: bits = " + v + " is outside [1, 16]"), ptq::error);
    CHECK_THROWS_WITH_AS(quant_params<float>::per_channel(r, b),
                         has("ptq::quant_params::per_channel: bits = " + v + " is outside [0, 16]"), ptq::error);
    CHECK_THROWS_WITH_AS(quant_params<double>::per_channel(r, Eigen::Vector2i(4, b)),
                         has("ptq::quant_params::per_channel: bits[1] = " + v + " is outside [0, 16]"), ptq::error);
    CHECK_THROWS_WITH_AS(aciq_alpha(distribution::laplace, b), has("ptq::aciq_alpha: bits = " + v + " is outside [1, 16]"),
                         ptq::error);
    CHECK_THROWS_WITH_AS(aciq_ranges(distribution::gauss, st, b), has("ptq::aciq_ranges: bits = " + v), ptq::error);
    CHECK_THROWS_WITH_AS(aciq_ranges(distribution::gauss, st, Eigen::Vector2i(b, 4)),
                         has("ptq::aciq_ranges: bits[0] = " + v + " is outside [0, 16]"), ptq::error);
    bit_allocator::params bp;
    bp.min_bits = b;
    CHECK_THROWS_WITH_AS(bit_allocator::exact(Eigen::Vector2d(1, 2), bp),
                         has("ptq::bit_allocator::exact: min_bits = " + v + " is outside [0, 16]"), ptq::error);
    bp = {};
    bp.max_bits = b;
    CHECK_THROWS_WITH_AS(bit_allocator::paper(Eigen::Vector2d(1, 2), bp),
                         has("ptq::bit_allocator::paper: max_bits = " + v + " is outside [0, 16]"), ptq::error);
    CHECK_THROWS_WITH_AS(bit_allocator::modelled_mse(Eigen::Vector2d(1, 2), Eigen::Vector2i(b, 3)),
                         has("ptq::bit_allocator::modelled_mse: bits[0] = " + v + " is outside [0, 16]"), ptq::error);
    quant_params<float> p = params4<float>(2);  // tampered after construction
    p.bits[1] = b;
    rmat<float> x = tensor<float>(2, 3), y = rmat<float>::Zero(2, 3), keep = y;
    CHECK_THROWS_WITH_AS(gemmlowp_quantizer::fake_quantize(x, p, y),
                         has("ptq::gemmlowp_quantizer::fake_quantize: params.bits[1] = " + v + " is outside [0, 16]"),
                         ptq::error);
    CHECK(same_bits(y, keep));
  }
  // Unsigned and 64-bit integers are bits too, never wrapped into range.
  CHECK_THROWS_WITH_AS(aciq_alpha(distribution::laplace, 4294967300u), has("bits = 4294967300 is outside [1, 16]"),
                       ptq::error);
  CHECK_THROWS_WITH_AS(aciq_alpha(distribution::laplace, -4294967292LL), has("bits = -4294967292 is outside [1, 16]"),
                       ptq::error);
  // 0 bits: refused where a range must be quantized, accepted per channel (a constant).
  CHECK_THROWS_WITH_AS(quant_params<float>::per_tensor(-1, 1, 0), has("bits = 0 is outside [1, 16]"), ptq::error);
  CHECK_THROWS_WITH_AS(aciq_alpha(distribution::gauss, 0), has("ptq::aciq_alpha: bits = 0"), ptq::error);
  CHECK_THROWS_WITH_AS(aciq_ranges(distribution::laplace, st, 0), has("ptq::aciq_ranges: bits = 0"), ptq::error);
  const quant_params<float> zero = quant_params<float>::per_channel(r, 0);
  CHECK(zero.is_constant(0));
  CHECK(zero.is_constant(1));
  CHECK(aciq_ranges(distribution::laplace, st, Eigen::Vector2i(0, 4)).lo.allFinite());
  // Bits that do not fit the code type.
  const quant_params<float> p9 = quant_params<float>::per_channel(r, 9);
  rmat<float> x = tensor<float>(2, 3);
  codes8 q = codes8::Constant(2, 3, 7), keep = q;
  CHECK_THROWS_WITH_AS(gemmlowp_quantizer::quantize<std::uint8_t>(x, p9, q),
                       has("ptq::gemmlowp_quantizer::quantize: params.bits[0] = 9 does not fit the 8-bit code type"),
                       ptq::error);
  CHECK(same_bits(q, keep));
  // min_bits above max_bits, target outside them, negative re-tuning counts.
  bit_allocator::params bp;
  bp.min_bits = 6, bp.max_bits = 5;
  CHECK_THROWS_WITH_AS(bit_allocator::exact(Eigen::Vector2d(1, 2), bp), has("min_bits = 6 is greater than max_bits = 5"),
                       ptq::error);
  bp = {};
  bp.target_bits = 9;
  CHECK_THROWS_WITH_AS(bit_allocator::exact(Eigen::Vector2d(1, 2), bp),
                       has("target_bits = 9 is outside [min_bits, max_bits] = [0, 8]"), ptq::error);
  bp = {};
  bp.retune_iterations = -1;
  CHECK_THROWS_WITH_AS(bit_allocator::paper(Eigen::Vector2d(1, 2), bp), has("retune_iterations = -1 is negative"),
                       ptq::error);
  // A channel whose range is 2^-1074 times the largest one: a zero channel (found by fuzz_quantizer).
  const bit_allocation tiny = bit_allocator::paper(Eigen::Vector3d(1e300, 5e-324, 1.0));
  CHECK(tiny.bits[1] == 0);
  CHECK(tiny.fractional[1] == 0.0);
  CHECK(tiny.bits.sum() == 12);
}

TEST_CASE("bad_input: channel counts that do not match between statistics, parameters and tensors") {
  using namespace ptq;
  rmat<float> x = tensor<float>(6, 4);  // 6 rows: fits 1, 2, 3, 6 channels, not 4
  calibration_statistics s4(4);
  CHECK_THROWS_WITH_AS(s4.add(x), has("ptq::calibration_statistics::add: rows = 6 is not a multiple of channels = 4"),
                       ptq::error);
  CHECK(s4.batches() == 0);
  CHECK_THROWS_WITH_AS(batch_statistics_ref(x, 4), has("rows = 6 is not a multiple of channels = 4"), ptq::error);
  CHECK_THROWS_WITH_AS(calibration_statistics(0), has("channels = 0 must be at least 1"), ptq::error);
  CHECK_THROWS_WITH_AS(calibration_statistics(-3), has("channels = -3 must be at least 1"), ptq::error);
  calibration_statistics s3(3), s2(2);
  s3.add(x);
  s2.add(x);
  const channel_stats before = s3.result();
  CHECK_THROWS_WITH_AS(s3.merge(s2), has("ptq::calibration_statistics::merge: other.channels = 2 differs from this channels = 3"),
                       ptq::error);
  CHECK(s3.result().mean == before.mean);
  calibration_statistics e3(3, stats_mode::exact);
  e3.add(x);
  CHECK_THROWS_WITH_AS(s3.merge(e3), has("other.mode = exact differs from this mode = batch_mean"), ptq::error);

  // Statistics whose vectors disagree, bits / bins / means of another length.
  channel_stats st = good_stats(3);
  st.b = Eigen::Vector2d(1, 1);
  CHECK_THROWS_WITH_AS(aciq_ranges(distribution::laplace, st, 4),
                       has("ptq::aciq_ranges: stats.b.size() = 2 does not match stats.min.size() = 3"), ptq::error);
  st = good_stats(3);
  st.mean = Eigen::Vector4d(0, 0, 0, 0);
  CHECK_THROWS_WITH_AS(aciq_ranges(distribution::gauss, st, 4), has("stats.mean.size() = 4 does not match"), ptq::error);
  st = good_stats(3);
  CHECK_THROWS_WITH_AS(aciq_ranges(distribution::laplace, st, Eigen::Vector4i(4, 4, 4, 4)),
                       has("ptq::aciq_ranges: bits.size() = 4 does not match the 3 channels of stats"), ptq::error);
  CHECK_THROWS_WITH_AS(aciq_ranges_bins(distribution::laplace, st, Eigen::Vector2d(16, 16)),
                       has("ptq::aciq_ranges_bins: bins.size() = 2 does not match the 3 channels of stats"), ptq::error);
  channel_ranges r;
  r.lo = Eigen::Vector3d(-1, -1, -1);
  r.hi = Eigen::Vector2d(1, 1);
  CHECK_THROWS_WITH_AS(quant_params<float>::per_channel(r, 4),
                       has("ptq::quant_params::per_channel: ranges.hi.size() = 2 does not match ranges.lo.size() = 3"),
                       ptq::error);
  r.hi = Eigen::Vector3d(1, 1, 1);
  CHECK_THROWS_WITH_AS(quant_params<float>::per_channel(r, Eigen::Vector2i(4, 4)),
                       has("bits.size() = 2 does not match the 3 channels of ranges"), ptq::error);
  CHECK_THROWS_WITH_AS(quant_params<float>::per_channel(r, Eigen::Vector3i(4, 4, 4), Eigen::Vector4d::Zero()),
                       has("mean.size() = 4 does not match the 3 channels of ranges"), ptq::error);
  CHECK_THROWS_WITH_AS(bit_allocator::modelled_mse(Eigen::Vector3d(1, 2, 3), Eigen::Vector2i(4, 4)),
                       has("bits.size() = 2 does not match ranges.size() = 3"), ptq::error);

  // Parameters for 4 channels on a tensor of 6 rows; tampered parameter vectors; shapes.
  const quant_params<float> p4 = params4<float>(4);
  rmat<float> y = rmat<float>::Constant(6, 4, 3.0f);
  const rmat<float> keep = y;
  CHECK_THROWS_WITH_AS(gemmlowp_quantizer::fake_quantize(x, p4, y),
                       has("ptq::gemmlowp_quantizer::fake_quantize: rows = 6 is not a multiple of channels = 4"), ptq::error);
  codes16 q = codes16::Zero(6, 4);
  CHECK_THROWS_WITH_AS(gemmlowp_quantizer::dequantize(q, p4, y),
                       has("ptq::gemmlowp_quantizer::dequantize: rows = 6 is not a multiple of channels = 4"), ptq::error);
  quant_params<float> p3 = params4<float>(3);
  p3.zero_point.resize(2);
  CHECK_THROWS_WITH_AS(gemmlowp_quantizer::fake_quantize(x, p3, y),
                       has("params.zero_point.size() = 2 does not match params.scale.size() = 3"), ptq::error);
  p3 = params4<float>(3);
  p3.g = granularity::per_tensor;
  CHECK_THROWS_WITH_AS(gemmlowp_quantizer::fake_quantize(x, p3, y), has("params.g = per_tensor with 3 channels"),
                       ptq::error);
  rmat<float> small(6, 3);
  CHECK_THROWS_WITH_AS(gemmlowp_quantizer::fake_quantize(x, params4<float>(3), small), has("out is 6 x 3"), ptq::error);
  CHECK(same_bits(y, keep));

  // Bias correction: W and Wq of different shapes, a correction for other rows.
  rmat<float> wq = tensor<float>(6, 5);
  CHECK_THROWS_WITH_AS(bias_corrector::correct(x, wq), has("ptq::bias_corrector::correct: wq is 6 x 5 but w is 6 x 4"),
                       ptq::error);
  const bias_correction c3 = bias_corrector::compute(x.topRows(3), x.topRows(3));
  rmat<float> w4 = x;
  CHECK_THROWS_WITH_AS(bias_corrector::apply(c3, w4),
                       has("ptq::bias_corrector::apply: correction.mu.size() = 3 does not match the 6 rows of wq"),
                       ptq::error);
  CHECK(same_bits(w4, x));
}

}  // namespace ptq_test_bad_numbers
