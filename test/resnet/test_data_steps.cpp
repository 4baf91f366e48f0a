// test_data_steps.cpp: the ResNet example's data-driven steps (data_steps.hpp): the calibration sample, clip search's MSE, empirical bias correction (float and integer scheme).
#include <doctest/doctest.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <random>
#include <string>
#include <vector>

#include "resnet50/int_engine.hpp"
#include "resnet50/int_model.hpp"
#include "resnet50/pipeline.hpp"
#include "int_test_util.hpp"
#include "synthetic.hpp"

// Everything of this file in its own namespace: the test binary is a unity build.
namespace ptq_test_data_steps {

namespace {

using matrix = ptq::row_matrix<float>;

struct net_case {
  bool bottleneck;
  std::vector<int> layers;
  ptq::index width, in_channels, classes, stem, h, w;
};

const net_case cases[] = {
    {true, {1, 2, 1}, 8, 1, 10, 3, 13, 11},  // Bottleneck, small-image stem, odd sizes
    {false, {2, 1}, 8, 3, 7, 7, 23, 19},     // BasicBlock, ImageNet stem (max-pool)
};

// A synthetic network and its calibration (with the sample) on 16 random images.
struct fixture {
  ptq_example::resnet net;
  matrix calib;  // the calibration images (cal.images views them)
  ptq_example::calibration cal;
  ptq_example::int_calibration ical;
  net_case nc;
  ptq::index n = 16;

  fixture(const net_case& c, ptq::index sample_values) : nc(c) {
    std::mt19937_64 rng(11);
    std::normal_distribution<float> g(0.0f, 1.0f);
    net = ptq_example::resnet::from_state_dict(
        ptq_test::synthetic_state_dict(c.bottleneck, c.layers, c.width, c.in_channels, c.classes, c.stem, 5));
    calib = matrix::NullaryExpr(n * c.in_channels, c.h * c.w, [&] { return g(rng); });
    const ptq_example::image_set cs{calib.data(), n, c.in_channels, c.h, c.w};
    ptq_example::calibration_options co;
    co.per_tensor = true;
    co.sample_values = sample_values;
    co.forward_batch = 5;  // several batches: the sample's image ptq::index runs across them
    cal = ptq_example::calibrate(net, cs, co);
    ical = ptq_example::calibrate_int(net, cs, 8);
  }
};

// Every conv output (before its quantizer) of `net` on x, with `quantize` applied after the copy is taken.
std::vector<matrix> conv_outputs(const ptq_example::resnet& net, const matrix& x, ptq::index h, ptq::index w,
                                 const ptq_example::conv_hook& quantize = {}, const ptq_example::pool_hook& pool = {},
                                 const ptq_example::block_hook& block = {}) {
  std::vector<matrix> out(net.convs().size());
  net.forward(
      x, h, w,
      [&](ptq::index layer, ptq::row_map<float> y) {
        out[static_cast<std::size_t>(layer)] = y;
        if (quantize) quantize(layer, y);
      },
      {}, pool, block);
  return out;
}

// Plain double loop: per channel (row % K) mean of a - b.
Eigen::VectorXd mean_error(const matrix& a, const matrix& b, ptq::index K) {
  Eigen::VectorXd s = Eigen::VectorXd::Zero(K);
  for (ptq::index r = 0; r < a.rows(); ++r)
    for (ptq::index j = 0; j < a.cols(); ++j)
      s[r % K] += static_cast<double>(a(r, j)) - static_cast<double>(b(r, j));
  return s / static_cast<double>((a.rows() / K) * a.cols());
}

// Plain double loop: per channel spread (std) of a, the error's scale.
Eigen::VectorXd channel_std(const matrix& a, ptq::index K) {
  Eigen::VectorXd s = Eigen::VectorXd::Zero(K), s2 = Eigen::VectorXd::Zero(K);
  const double n = static_cast<double>((a.rows() / K) * a.cols());
  for (ptq::index r = 0; r < a.rows(); ++r)
    for (ptq::index j = 0; j < a.cols(); ++j) s[r % K] += a(r, j), s2[r % K] += static_cast<double>(a(r, j)) * a(r, j);
  return ((s2 / n).array() - (s / n).array().square()).max(0.0).sqrt().matrix();
}

// The largest |mean error| / (channel std + 1e-3) over every conv of `ref` vs `got`.
double worst_relative_error(const std::vector<matrix>& ref, const std::vector<matrix>& got,
                            const std::vector<ptq_example::conv_layer>& convs) {
  double worst = 0;
  for (std::size_t i = 0; i < convs.size(); ++i) {
    const ptq::index K = convs[i].K;
    const Eigen::VectorXd e = mean_error(ref[i], got[i], K), s = channel_std(ref[i], K);
    for (ptq::index k = 0; k < K; ++k) worst = std::max(worst, std::abs(e[k]) / (s[k] + 1e-3));
  }
  return worst;
}

ptq_example::quant_config data_config(int w, int a, bool per_tensor, bool search, bool bias_a) {
  ptq_example::quant_config c = ptq_example::with_data_steps(ptq_example::paper_full(w, a, per_tensor), search, bias_a);
  c.name = "test";
  return c;
}

}  // namespace

TEST_CASE("data steps: the calibration sample holds each conv output at the documented pixels of every image") {
  for (const net_case& nc : cases) {
    for (ptq::index values : {ptq::index{48}, ptq::index{5}, ptq::index{1} << 20}) {
      CAPTURE(nc.h);
      CAPTURE(values);
      const fixture f(nc, values);
      // The conv outputs in the calibration's batches of 5 images (the same float arithmetic).
      std::vector<matrix> y(f.net.convs().size());
      for (ptq::index first = 0; first < f.n; first += 5) {
        const ptq::index m = std::min<ptq::index>(5, f.n - first), C = nc.in_channels;
        const std::vector<matrix> part = conv_outputs(f.net, f.calib.middleRows(first * C, m * C), nc.h, nc.w);
        for (std::size_t i = 0; i < y.size(); ++i) {
          y[i].conservativeResize(y[i].rows() + part[i].rows(), part[i].cols());
          y[i].bottomRows(part[i].rows()) = part[i];
        }
      }
      REQUIRE(f.cal.sample.size() == f.net.convs().size());
      for (std::size_t i = 0; i < y.size(); ++i) {
        const ptq::index K = f.net.convs()[i].K, P = y[i].cols();
        // m = clamp(V / N, 1, P) pixels per image, stride P / m, offset image % stride.
        const ptq::index m = std::min(P, std::max<ptq::index>(1, values / f.n)), s = P / m;
        const matrix& S = f.cal.sample[i];
        REQUIRE(S.rows() == f.n * K);
        REQUIRE(S.cols() == m);
        if (values >= f.n * P) CHECK(m == P);  // all values kept
        int bad = 0;
        for (ptq::index img = 0; img < f.n; ++img)
          for (ptq::index c = 0; c < K; ++c)
            for (ptq::index j = 0; j < m; ++j) bad += S(img * K + c, j) != y[i](img * K + c, img % s + j * s);
        CHECK(bad == 0);
      }
    }
  }
}

TEST_CASE("data steps: searched clipping ranges measure an activation MSE <= ACIQ's on the calibration sample, every layer") {
  int strictly_lower = 0, layers = 0;
  for (const net_case& nc : cases) {
    const fixture f(nc, 64);
    for (const bool per_tensor : {false, true})
      for (const bool choose : {false, true})
        for (const int bits : {2, 4}) {
          CAPTURE(nc.h);
          CAPTURE(per_tensor);
          CAPTURE(choose);
          CAPTURE(bits);
          ptq_example::quant_config cfg = data_config(bits, bits, per_tensor, true, false);
          if (choose) cfg.clip = ptq_example::clip_mode::choose;
          const ptq_example::quantized_net q = ptq_example::quantize(f.net, f.cal, cfg);
          for (std::size_t i = 1; i < q.act.size(); ++i) {  // conv 0: 8-bit min/max edge quantizer
            CAPTURE(i);
            const auto& L = f.net.convs()[i];
            const ptq::channel_stats& st = per_tensor ? f.cal.per_tensor[i] : f.cal.per_channel[i];
            const auto kind = L.feeds_relu ? ptq::range_kind::unsigned_range : ptq::range_kind::signed_range;
            // ACIQ (Laplace, exact alpha) for the same per-channel bits, as the pipeline builds a quantizer.
            const Eigen::VectorXi& b = q.act[i].bits;
            ptq::channel_ranges r = ptq::aciq_ranges(ptq::distribution::laplace, st, b, kind);
            r.hi = r.hi.cwiseMax(r.lo);
            const auto aciq = ptq::quant_params<float>::per_channel(r, b, r.lo);
            const matrix& S = f.cal.sample[i];
            matrix fs(S.rows(), S.cols()), fa(S.rows(), S.cols());
            ptq::gemmlowp_quantizer::fake_quantize_ref(S, q.act[i].p, fs);
            ptq::gemmlowp_quantizer::fake_quantize_ref(S, aciq, fa);
            double es = 0, ea = 0;  // plain double loops, ReLU'd target for unsigned ranges
            for (ptq::index row = 0; row < S.rows(); ++row)
              for (ptq::index j = 0; j < S.cols(); ++j) {
                const double t = L.feeds_relu ? std::max(0.0, double(S(row, j))) : double(S(row, j));
                es += (fs(row, j) - t) * (fs(row, j) - t);
                ea += (fa(row, j) - t) * (fa(row, j) - t);
              }
            CHECK(es <= ea * (1 + 1e-12));
            strictly_lower += es < ea * (1 - 1e-6);
            ++layers;
          }
        }
  }
  MESSAGE("searched below ACIQ in ", strictly_lower, " of ", layers, " layer configurations");
  CHECK(strictly_lower > layers / 2);  // the search does something
}

TEST_CASE("data steps: --clip-w search's weight ranges measure a row MSE <= min/max's and near a brute-force scan's best") {
  // Rows: Gaussian, Laplace with outliers, constant, two values; at 2, 3, 4 and 8 bits, also with
  // allocated bits (0-bit rows included) under both bit rules.
  std::mt19937 gen(7);
  std::normal_distribution<double> gauss(0.01, 0.05);
  std::exponential_distribution<double> expo(30.0);
  const ptq::index K = 12, D = 3 * 3 * 64;
  ptq::row_matrix<double> w(K, D);
  for (ptq::index k = 0; k < K; ++k)
    for (ptq::index j = 0; j < D; ++j) {
      const double lap = expo(gen) * (gen() % 2 ? 1 : -1) * (1 + 0.3 * double(k));
      w(k, j) = k % 4 == 0 ? gauss(gen) : k % 4 == 1 ? lap : k % 4 == 2 ? 0.25 : (j % 2 ? -0.5 : 1.5);
    }
  w(1, 3) = 2.0, w(5, 7) = -3.0, w(9, 0) = 4.0;  // outliers
  int lower = 0, rows = 0;
  for (const int bits : {2, 3, 4, 8})
    for (const bool allocate : {false, true})
      for (const auto rule : {ptq_example::bit_rule::paper, ptq_example::bit_rule::exact}) {
        CAPTURE(bits);
        CAPTURE(allocate);
        ptq_example::quant_config cfg;
        cfg.wbits = bits;
        cfg.rule = rule;
        const auto pm = ptq_example::detail::weight_params(w, bits, cfg, allocate);
        cfg.clip_w_search = true;
        const auto ps = ptq_example::detail::weight_params(w, bits, cfg, allocate);
        REQUIRE(ps.bits == pm.bits);  // the search changes ranges, not bits
        // Plain double loops: the row's MSE on grid (scale, zero point, qmax) of quant_params.
        auto mse = [&](ptq::index k, double scale, double zp, double qmax) {
          double e = 0;
          const double inv = 1.0 / scale;  // gemmlowp_quantizer's order: x * (1 / scale), half to even
          for (ptq::index j = 0; j < D; ++j) {
            const double q = std::clamp(std::nearbyint(w(k, j) * inv) + zp, 0.0, qmax);
            e += ((q - zp) * scale - w(k, j)) * ((q - zp) * scale - w(k, j));
          }
          return e / double(D);
        };
        for (ptq::index k = 0; k < K; ++k) {
          CAPTURE(k);
          const int b = ps.bits[k];
          const double es = mse(k, ps.scale[k], ps.zero_point[k], ps.qmax(k));
          if (b == 0 || pm.is_constant(k)) {  // 0-bit and constant rows keep min/max's grid
            CHECK(ps.scale[k] == pm.scale[k]);
            CHECK(ps.zero_point[k] == pm.zero_point[k]);
            continue;
          }
          const double em = mse(k, pm.scale[k], pm.zero_point[k], pm.qmax(k));
          CHECK(es <= em * (1 + 1e-9));
          // Brute force: 4000 clips a of the range rule lo = max(min, mean - a), hi = lo + 2a,
          // zero point and scale as per_channel builds them (0 inside the range, rounded zero point).
          const double mn = w.row(k).minCoeff(), mx = w.row(k).maxCoeff(), mean = w.row(k).mean();
          const double qmax = double((1 << b) - 1);
          double best = em;
          for (int i = 1; i <= 4000; ++i) {
            const double a = (mx - mn) * double(i) / 4000.0;
            double lo = std::max(mn, mean - a), hi = lo + 2 * a;
            lo = std::min(lo, 0.0), hi = std::max(hi, 0.0);
            const double scale = (hi - lo) / qmax;
            const double zp = std::clamp(std::nearbyint(-lo / scale), 0.0, qmax);
            best = std::min(best, mse(k, scale, zp, qmax));
          }
          // A row of few distinct values can sit exactly on some grid (best = 0): absolute slack.
          // At 8 bits 576 values put ~2 in a code: MSE(a) is jagged and the scan's 4000 clips
          // find lucky minima the search's ~77 do not (clip_search.hpp: 5e-4 on 2000 values).
          const double ms = w.row(k).squaredNorm() / double(D);
          CHECK(es <= best * (b < 8 ? 1 + 1e-3 : 1.05) + 1e-8 * ms);
          lower += es < em * 0.99;
          ++rows;
        }
      }
  MESSAGE("searched weight ranges below min/max's MSE by > 1% in ", lower, " of ", rows, " rows");
  CHECK(lower > rows / 2);
}

TEST_CASE("data steps: bias corr A zeroes the mean error per channel of every conv output on the calibration images") {
  for (const net_case& nc : cases)
    for (const bool per_tensor : {false, true})
      for (const bool search : {false, true}) {
        CAPTURE(nc.h);
        CAPTURE(per_tensor);
        CAPTURE(search);
        const fixture f(nc, 64);
        const std::vector<matrix> ref = conv_outputs(f.net, f.calib, nc.h, nc.w);
        auto measured = [&](const ptq_example::quantized_net& q) {
          ptq_example::conv_hook on_conv;
          ptq_example::features_hook on_features;
          ptq_example::pool_hook on_pool;
          ptq_example::activation_hooks(q, 1, on_conv, on_features, on_pool);
          return worst_relative_error(ref, conv_outputs(q.net, f.calib, nc.h, nc.w, on_conv, on_pool), f.net.convs());
        };
        const ptq_example::quantized_net before = ptq_example::quantize(f.net, f.cal, data_config(4, 4, per_tensor, search, false));
        const ptq_example::quantized_net after = ptq_example::quantize(f.net, f.cal, data_config(4, 4, per_tensor, search, true));
        const double e0 = measured(before), e1 = measured(after);
        MESSAGE("worst |E[y_fp32 - y_q]| / std: ", e0, " before, ", e1, " after");
        CHECK(e0 > 1e-2);  // there was something to correct
        CHECK(e1 < 2e-5);
        // Only the conv biases moved, by the returned mu.
        REQUIRE(after.bias_corr_a.size() == f.net.convs().size());
        for (std::size_t i = 0; i < f.net.convs().size(); ++i) {
          CHECK(after.net.convs()[i].weight == before.net.convs()[i].weight);
          const Eigen::VectorXd d = after.net.convs()[i].bias.cast<double>() - before.net.convs()[i].bias.cast<double>();
          CHECK((d - after.bias_corr_a[i]).cwiseAbs().maxCoeff() <= 1e-5 * (1 + before.net.convs()[i].bias.cwiseAbs().maxCoeff()));
        }
      }
}

TEST_CASE("data steps: the one-pass correction equals the sequential plain twin (one forward per conv)") {
  for (const net_case& nc : cases) {
    CAPTURE(nc.h);
    const fixture f(nc, 64);
    const ptq_example::quantized_net q = ptq_example::quantize(f.net, f.cal, data_config(4, 4, false, false, false));
    const std::vector<Eigen::VectorXd> target = ptq_example::conv_output_means(f.net, f.calib, f.n, nc.h, nc.w, 3);
    ptq_example::pass_hooks h;
    ptq_example::features_hook on_features;
    ptq_example::activation_hooks(q, 1, h.quantize, on_features, h.pool);
    ptq_example::resnet a = q.net, b = q.net;
    const auto mu = ptq_example::correct_conv_biases(a, target, f.calib, nc.h, nc.w, h);
    const auto mu_ref = ptq_example::correct_conv_biases_ref(b, target, f.calib, nc.h, nc.w, h);
    REQUIRE(mu.size() == mu_ref.size());
    double worst = 0, largest = 0;
    for (std::size_t i = 0; i < mu.size(); ++i) {
      worst = std::max(worst, (mu[i] - mu_ref[i]).cwiseAbs().maxCoeff());
      largest = std::max(largest, mu_ref[i].cwiseAbs().maxCoeff());
    }
    MESSAGE("largest |mu| ", largest, ", largest one-pass - sequential difference ", worst);
    CHECK(largest > 1e-3);
    CHECK(worst <= 1e-4 * largest);
  }
}

TEST_CASE("data steps: the integer engine with clip search and bias corr A equals its plain-loop twin code for code, and its scheme's mean error is zeroed") {
  for (const net_case& nc : cases)
    for (const bool per_tensor : {false, true}) {
      CAPTURE(nc.h);
      CAPTURE(per_tensor);
      const fixture f(nc, 64);
      const ptq_example::quant_config cfg = data_config(4, 4, per_tensor, true, true);
      const ptq_example::int_model m = ptq_example::build_int_model(f.net, f.cal, f.ical, cfg);
      // The grids are quantize()'s searched activation quantizers.
      const ptq_example::quantized_net q = ptq_example::quantize(f.net, f.cal, data_config(4, 4, per_tensor, true, false));
      for (std::size_t i = 1; i < m.act.size(); ++i) {
        const ptq_example::int_grid g = ptq_example::detail::grid_of(q.act[i].p, f.net.convs()[i].K, f.net.convs()[i].feeds_relu);
        CHECK(g.scale == m.act[i].scale);
        CHECK(g.zero_point == m.act[i].zero_point);
      }
      // Code for code against the plain-loop twin.
      std::mt19937_64 rng(5);
      std::normal_distribution<float> gauss(0.0f, 1.0f);
      const matrix x = matrix::NullaryExpr(3 * nc.in_channels, nc.h * nc.w, [&] { return gauss(rng); });
      std::vector<std::vector<std::uint8_t>> ref_codes, got_codes;
      auto capture = [](std::vector<std::vector<std::uint8_t>>& v) {
        return [&v](int kind, ptq::index idx, const std::uint8_t* codes, ptq::index pixels, ptq::index channels) {
          if (kind != 0) return;
          if (static_cast<ptq::index>(v.size()) <= idx) v.resize(static_cast<std::size_t>(idx + 1));
          v[static_cast<std::size_t>(idx)].assign(codes, codes + pixels * channels);
        };
      };
      const matrix lr = ptq_example::int_forward_ref(m, x, nc.h, nc.w, capture(ref_codes));
      const ptq_example::int_engine e(m, 2);
      const matrix le = e.forward(x, nc.h, nc.w, capture(got_codes));
      CHECK(got_codes == ref_codes);
      CHECK((le - lr).cwiseAbs().maxCoeff() == 0.0f);
      const ptq_example::resnet sim = ptq_example::simulation(f.net, m);
      const matrix ls = ptq_example::simulate(sim, m, x, nc.h, nc.w);
      CHECK((ls - lr).cwiseAbs().maxCoeff() / std::max(1e-6, double(lr.cwiseAbs().maxCoeff())) <= 5e-3);
      // The integer scheme's conv outputs (its simulation, on its grids) have the FP32 means on
      // the calibration images; without the correction they do not.
      const std::vector<matrix> ref = conv_outputs(f.net, f.calib, nc.h, nc.w);
      auto scheme_error = [&](const ptq_example::int_model& mm) {
        const ptq_example::resnet s = ptq_example::simulation(f.net, mm);
        matrix xq = f.calib;
        ptq_example::fake_quantize_grid(ptq::row_map<float>(xq.data(), xq.rows(), xq.cols()), mm.input, nc.in_channels);
        const auto got = conv_outputs(
            s, xq, nc.h, nc.w,
            [&](ptq::index l, ptq::row_map<float> y) {
              ptq_example::fake_quantize_grid(y, mm.act[static_cast<std::size_t>(l)], mm.convs[static_cast<std::size_t>(l)].K);
            },
            {},
            [&](ptq::index b, ptq::row_map<float> y) {
              ptq_example::fake_quantize_grid(y, mm.block_out[static_cast<std::size_t>(b)], mm.add[static_cast<std::size_t>(b)].channels());
            });
        return worst_relative_error(ref, got, f.net.convs());
      };
      ptq_example::quant_config plain = cfg;
      plain.bias_corr_a = false;
      const double e0 = scheme_error(ptq_example::build_int_model(f.net, f.cal, f.ical, plain)), e1 = scheme_error(m);
      MESSAGE("integer scheme: worst |E[y_fp32 - y_sim]| / std: ", e0, " before, ", e1, " after");
      CHECK(e0 > 1e-2);
      CHECK(e1 < 2e-5);
    }
}

TEST_CASE("data steps: missing data and bad arguments throw ptq::error and change nothing") {
  const fixture f(cases[0], 64);
  ptq_example::calibration no_sample = f.cal;
  no_sample.sample.clear();
  CHECK_THROWS_WITH_AS(ptq_example::quantize(f.net, no_sample, data_config(4, 4, false, true, false)),
                       doctest::Contains("--clip search needs the calibration sample"), ptq::error);
  ptq_example::calibration no_images = f.cal;
  no_images.images = {};
  CHECK_THROWS_WITH_AS(ptq_example::quantize(f.net, no_images, data_config(4, 4, false, false, true)),
                       doctest::Contains("--bias-corr-a"), ptq::error);
  CHECK_THROWS_AS(ptq_example::build_int_model(f.net, no_images, f.ical, data_config(4, 4, false, false, true)), ptq::error);
  // A target of the wrong shape: the network's biases stay as they were.
  ptq_example::resnet net = f.net;
  std::vector<Eigen::VectorXd> target = ptq_example::conv_output_means(f.net, f.calib, f.n, f.nc.h, f.nc.w);
  target[2].resize(1);
  CHECK_THROWS_WITH_AS(ptq_example::correct_conv_biases(net, target, f.calib, f.nc.h, f.nc.w, {}),
                       doctest::Contains("target[2]"), ptq::error);
  target.pop_back();
  CHECK_THROWS_WITH_AS(ptq_example::correct_conv_biases_ref(net, target, f.calib, f.nc.h, f.nc.w, {}),
                       doctest::Contains("conv means"), ptq::error);
  for (std::size_t i = 0; i < net.convs().size(); ++i) CHECK(net.convs()[i].bias == f.net.convs()[i].bias);
  ptq_example::calibration_options co;
  co.sample_values = -1;
  const ptq_example::image_set cs{f.calib.data(), f.n, f.nc.in_channels, f.nc.h, f.nc.w};
  CHECK_THROWS_WITH_AS(ptq_example::calibrate(f.net, cs, co), doctest::Contains("sample_values = -1"), ptq::error);
}

}  // namespace ptq_test_data_steps
