// test_reconstruct.cpp: learned rounding of a ResNet (reconstruct.hpp): inputs seen by each conv, codes on the grid, error reduced.
#include <doctest/doctest.h>

#include <random>

#include "int_test_util.hpp"
#include "resnet50/calibrate.hpp"
#include "resnet50/pipeline.hpp"
#include "resnet50/reconstruct.hpp"
#include "resnet50/resnet.hpp"
#include "synthetic.hpp"

namespace {

using matrix = ptq::row_matrix<float>;
using idx = ptq::index;

struct net_case {
  bool bottleneck;
  std::vector<int> layers;
  idx width, in_channels, classes, stem, h, w;
};

const net_case cases[] = {
    {true, {1, 2, 1}, 8, 1, 10, 3, 13, 11},  // Bottleneck, small-image stem, odd sizes, downsample blocks
    {false, {2, 1}, 8, 3, 7, 7, 23, 19},     // BasicBlock, ImageNet stem (max-pool)
};

ptq_example::resnet make_net(const net_case& nc) {
  return ptq_example::resnet::from_state_dict(
      ptq_test::synthetic_state_dict(nc.bottleneck, nc.layers, nc.width, nc.in_channels, nc.classes, nc.stem, 5));
}

}  // namespace

TEST_CASE("learn_rounding: each conv's captured input, through its weights, gives the conv's output at the sampled pixels") {
  // With float activations the quantized network's conv inputs are the FP32 network's, so
  // W X + b at the sampled positions must equal what the forward computes there: this checks
  // which tensor feeds each conv (stem, block input, ReLU of conv1/conv2, downsample), the
  // captured sizes and the im2col order against the forward's own convolution.
  std::mt19937_64 rng(11);
  std::normal_distribution<float> g(0.0f, 1.0f);
  for (const net_case& nc : cases) {
    const ptq_example::resnet net = make_net(nc);
    const idx n = 3;
    const matrix x = matrix::NullaryExpr(n * nc.in_channels, nc.h * nc.w, [&] { return g(rng); });
    const Eigen::Map<const matrix> xm(x.data(), x.rows(), x.cols());
    const ptq_example::image_set xs{x.data(), n, nc.in_channels, nc.h, nc.w};
    const ptq_example::quantized_net q = ptq_example::quantize(net, ptq_example::calibrate(net, xs, {}), ptq_example::quant_config{});
    REQUIRE(q.act.empty());  // FP32: float weights and activations
    std::vector<matrix> outputs(net.convs().size());
    net.forward(x, nc.h, nc.w, [&](idx li, ptq::row_map<float> y) { outputs[static_cast<std::size_t>(li)] = y; });
    for (idx li = 0; li < static_cast<idx>(net.convs().size()); ++li) {
      CAPTURE(li);
      const auto& L = net.convs()[static_cast<std::size_t>(li)];
      const matrix& y = outputs[static_cast<std::size_t>(li)];
      const auto in = ptq_example::detail::capture_input(q, li, xm, nc.h, nc.w);
      REQUIRE(in.x.rows() == n * L.C);
      REQUIRE(L.out_size(in.H) * L.out_size(in.W) == y.cols());
      const std::vector<idx> pos = ptq_example::detail::sample_positions(n, y.cols(), 50, 7);
      const Eigen::MatrixXf X = ptq_example::detail::im2col_at(L, in.x.data(), in.H, in.W, pos);
      const Eigen::MatrixXf Y = ptq_example::detail::outputs_at(ptq::row_map<float>(const_cast<float*>(y.data()), y.rows(), y.cols()), L, pos);
      const Eigen::MatrixXd got = L.weight.cast<double>() * X.cast<double>();
      const double scale = std::max(1.0, Y.cast<double>().cwiseAbs().maxCoeff());
      CHECK((got - Y.cast<double>()).cwiseAbs().maxCoeff() / scale < 1e-4);
    }
  }
}

TEST_CASE("learn_rounding: codes on the weight grid, one step at most from round-to-nearest, held-out error reduced, deterministic") {
  std::mt19937_64 rng(5);
  std::normal_distribution<float> g(0.0f, 1.0f);
  for (const net_case& nc : cases) {
    const ptq_example::resnet net = make_net(nc);
    const idx calib_n = 24;
    const matrix calib = matrix::NullaryExpr(calib_n * nc.in_channels, nc.h * nc.w, [&] { return g(rng); });
    const ptq_example::image_set cs{calib.data(), calib_n, nc.in_channels, nc.h, nc.w};
    ptq_example::calibration_options co;
    co.per_tensor = true;
    const ptq_example::calibration cal = ptq_example::calibrate(net, cs, co);
    for (const auto& cfg0 : {ptq_test::int_config(4, 4, false, false), ptq_test::int_config(3, 4, true, true)}) {
      ptq_example::quant_config cfg = cfg0;
      cfg.bias_corr_w = cfg.var_corr_w = false;  // weights stay on the grid
      CAPTURE(cfg.wbits);
      ptq_example::rounding_options o;
      o.images = calib_n;
      o.columns = 600;
      o.held_out = 300;
      o.layer.iterations = 400;
      o.layer.batch = 128;
      o.layer.threads = 2;
      ptq_example::quantized_net q = ptq_example::quantize(net, cal, cfg);
      const ptq_example::rounding_report rep = ptq_example::learn_rounding(q, net, cs, cfg, o);
      REQUIRE(rep.layer.size() == net.convs().size());
      double rtn = 0, learned = 0;
      for (std::size_t l = 0; l < net.convs().size(); ++l) {
        CAPTURE(l);
        const auto& F = net.convs()[l];
        const bool first = l == 0;
        const auto p = ptq_example::detail::weight_params(F.weight, first ? 8 : cfg.wbits, cfg, cfg.bit_alloc_w && !first);
        const matrix& w = q.net.convs()[l].weight;
        matrix again(w.rows(), w.cols()), nearest(w.rows(), w.cols());
        ptq::gemmlowp_quantizer::fake_quantize(w, p, again);
        ptq::gemmlowp_quantizer::fake_quantize(F.weight, p, nearest);
        CHECK(again == w);  // on the grid
        for (idx k = 0; k < w.rows(); ++k) {
          const double step = p.scale[k];
          CHECK((w.row(k).cast<double>() - nearest.row(k).cast<double>()).cwiseAbs().maxCoeff() <= step * 1.0001);
        }
        rtn += rep.rtn_error[l];
        learned += rep.learned_error[l];
      }
      CHECK(learned < rtn);
      // Same seed: the same weights (once per net: the run is the test's cost under the sanitizers).
      if (cfg.per_tensor_a) continue;
      ptq_example::quantized_net q2 = ptq_example::quantize(net, cal, cfg);
      ptq_example::learn_rounding(q2, net, cs, cfg, o);
      for (std::size_t l = 0; l < net.convs().size(); ++l) CHECK(q2.net.convs()[l].weight == q.net.convs()[l].weight);
    }
  }
}

TEST_CASE("learn_rounding: bad options are a ptq::error") {
  const ptq_example::resnet net = make_net(cases[0]);
  const matrix calib = matrix::Zero(4 * 1, 13 * 11);
  const ptq_example::image_set cs{calib.data(), 4, 1, 13, 11};
  const ptq_example::calibration cal = ptq_example::calibrate(net, cs, {});
  const ptq_example::quant_config cfg = ptq_test::int_config(4, 4, false, false);
  ptq_example::quantized_net q = ptq_example::quantize(net, cal, cfg);
  ptq_example::rounding_options o;
  o.columns = 0;
  CHECK_THROWS_AS(ptq_example::learn_rounding(q, net, cs, cfg, o), ptq::error);
  ptq_example::quant_config fp;
  CHECK_THROWS_AS(ptq_example::learn_rounding(q, net, cs, fp, {}), ptq::error);
}
