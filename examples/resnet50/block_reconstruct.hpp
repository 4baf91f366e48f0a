// block_reconstruct.hpp: learned rounding of a quantized ResNet block by block (BRECQ, optionally QDrop) on calibration images.
//
// learn_block_rounding(q, fp32, calib, cfg, o) replaces the round-to-nearest conv weights that
// pipeline.hpp's quantize() gave q with those of ptq::reconstruct_block
// (include/ptq/block_reconstruction.hpp), unit by unit in network order: the stem conv (with its
// ReLU) as a unit of one conv, then every residual block (conv1, conv2, [conv3], [downsample],
// the add and the ReLU). Each unit's rounding minimizes the error of the UNIT's output, not
// of each conv's, with the configuration's activation quantizers inside it:
//   x_q = the unit's input in the quantized network q (every earlier unit already rounded here),
//   x_fp = the FP32 network's input of the unit (QDrop mixes the two element by element),
//   y   = the FP32 network's output of the unit (after the add and the ReLU),
// on the first o.images calibration images; the next o.held_out images measure the unit's
// output error with round-to-nearest and with the learned rounding (the report). Every conv
// keeps the grid quantize() uses (detail::weight_params), so the codes stay ordinary codes.
// Then, when the configuration asks for it, the weight bias / variance correction of each
// conv (as learn_rounding does). The classifier keeps quantize()'s weights.
// Cost per unit: three forwards over o.images + o.held_out images to capture x_q, x_fp and y,
// then the optimization (a forward and a backward of the unit on o.block.batch images per
// iteration). o.seconds: a time budget of the whole pass, shared out as learn_rounding does.
#pragma once

#include <algorithm>
#include <chrono>
#include <cstdint>
#include <cstdio>
#include <limits>
#include <optional>
#include <string>
#include <vector>

#include <ptq/block_reconstruction.hpp>
#include <ptq/ptq.hpp>

#include "reconstruct.hpp"

namespace ptq_example {

struct block_rounding_options {
  index images = 64;         // calibration images the units are fitted on (the first ones of the set)
  index held_out = 16;       // the next ones, on which the report measures the unit's output error
  std::uint64_t seed = 0;    // of the optimizer's batches and QDrop's draws (+ unit index)
  ptq::block_params block = default_block();
  bool progress = false;     // one line per unit on stderr
  double seconds = std::numeric_limits<double>::infinity();  // wall-clock budget of the whole pass

  static ptq::block_params default_block() {
    ptq::block_params p;
    p.rounding.iterations = 2000;
    p.rounding.batch = 16;  // images per step
    return p;
  }
  // The defaults with a configuration's --adaround-images, --adaround-iters, --adaround-seconds
  // and --qdrop.
  static block_rounding_options of(const quant_config& cfg) {
    block_rounding_options o;
    o.images = cfg.adaround_images;
    o.block.rounding.iterations = cfg.adaround_iters;
    o.block.qdrop = cfg.qdrop;
    o.block.act_lr = cfg.act_lr;
    if (cfg.adaround_seconds > 0) o.seconds = cfg.adaround_seconds;
    return o;
  }
};

namespace detail {

// One unit of the network: the global indices of its convs in block_graph order, and its graph.
struct network_unit {
  std::string name;
  index block = -1;            // -1: the stem
  std::vector<index> convs;    // global conv indices, local order
  ptq::block_graph graph;
};

inline std::vector<network_unit> network_units(const resnet& net) {
  const auto& convs = net.convs();
  auto spec = [&](index g, int source, bool relu) {
    const conv_layer& L = convs[static_cast<std::size_t>(g)];
    ptq::block_conv c;
    c.in_channels = L.C;
    c.out_channels = L.K;
    c.kernel = L.R;
    c.stride = L.stride;
    c.pad = L.pad;
    c.source = source;
    c.relu = relu;
    return c;
  };
  std::vector<network_unit> units;
  network_unit stem;
  stem.name = convs.front().name;
  stem.convs = {0};
  stem.graph.convs = {spec(0, -1, false)};
  stem.graph.main = 0;
  stem.graph.shortcut = -2;
  stem.graph.relu = true;
  units.push_back(stem);
  for (std::size_t b = 0; b < net.blocks().size(); ++b) {
    const resnet_block& bl = net.blocks()[b];
    network_unit u;
    u.name = bl.name;
    u.block = static_cast<index>(b);
    const bool bottleneck = bl.conv3 >= 0;
    u.convs = {bl.conv1, bl.conv2};
    u.graph.convs = {spec(bl.conv1, -1, true), spec(bl.conv2, 0, bottleneck)};
    if (bottleneck) {
      u.convs.push_back(bl.conv3);
      u.graph.convs.push_back(spec(bl.conv3, 1, false));
    }
    u.graph.main = static_cast<int>(u.convs.size()) - 1;
    u.graph.shortcut = -1;
    if (bl.downsample >= 0) {
      u.graph.shortcut = static_cast<int>(u.convs.size());
      u.convs.push_back(bl.downsample);
      u.graph.convs.push_back(spec(bl.downsample, -1, false));
    }
    u.graph.relu = true;
    units.push_back(u);
  }
  return units;
}

// The unit's output in net's forward (with its hooks): the stem's conv output after its
// ReLU (before a max-pool), or block b's output after the add and the ReLU.
inline captured_input capture_output(const resnet& net, const network_unit& u,
                                     const Eigen::Map<const ptq::row_matrix<float>>& x, index H, index W,
                                     const conv_hook& on_conv = {}) {
  captured_input out;
  index h = H, w = W;
  const conv_layer& L0 = net.convs().front();
  const index h0 = L0.out_size(H), w0 = (W + 2 * L0.pad - L0.S) / L0.stride + 1;
  const conv_hook hook = [&](index layer, ptq::row_map<float> y) {
    if (on_conv) on_conv(layer, y);
    if (u.block < 0 && layer == 0) {
      out.x = y.cwiseMax(0.0f);
      out.H = h0;
      out.W = w0;
    }
  };
  const block_hook blk = [&](index b, ptq::row_map<float> y) {
    if (b != u.block) return;
    out.x = y;
    // The block's output size: its last main conv's (every conv of a block keeps or halves it).
    h = h0, w = w0;
    if (net.imagenet_stem()) h = (h - 1) / 2 + 1, w = (w - 1) / 2 + 1;
    for (index k = 0; k <= b; ++k) {
      const resnet_block& bl = net.blocks()[static_cast<std::size_t>(k)];
      for (index c : {bl.conv1, bl.conv2, bl.conv3}) {
        if (c < 0) continue;
        const conv_layer& L = net.convs()[static_cast<std::size_t>(c)];
        h = L.out_size(h);
        w = (w + 2 * L.pad - L.S) / L.stride + 1;
      }
    }
    out.H = h;
    out.W = w;
  };
  net.forward(x, H, W, hook, {}, {}, blk);
  ptq::detail::require(out.x.size() > 0, "ptq_example::capture_output", "unit ", u.name, "'s output was not seen");
  return out;
}

// Unit u of net as a ptq::reconstruct_block problem: net's weights and biases (the starting
// point), the grids quantize() puts them on (detail::weight_params), q's activation quantizers.
inline ptq::block_problem<float> unit_problem(const resnet& net, const network_unit& u, const quantized_net& q,
                                             const quant_config& cfg) {
  const int edge_bits_w = cfg.quantize_first_last ? cfg.wbits : quant_config::edge_bits(cfg.wbits);
  ptq::block_problem<float> bp;
  bp.graph = u.graph;
  for (index g : u.convs) {
    const conv_layer& F = net.convs()[static_cast<std::size_t>(g)];
    const bool first = g == 0;
    bp.weight.push_back(F.weight);
    bp.bias.push_back(F.bias);
    bp.weight_grid.push_back(weight_params(F.weight, first ? edge_bits_w : cfg.wbits, cfg, cfg.bit_alloc_w && !first));
    if (q.act.empty())
      bp.act.emplace_back(std::nullopt);
    else
      bp.act.emplace_back(q.act[static_cast<std::size_t>(g)].p);
  }
  return bp;
}

// Mean over images and pixels of the squared channel-sum error (ptq::reconstruct_block's loss).
inline double unit_error(const ptq::row_matrix<float>& out, const ptq::row_matrix<float>& y, index images) {
  const index pixels = y.cols();
  return (out.cast<double>() - y.cast<double>()).squaredNorm() / static_cast<double>(images * pixels);
}

// One unit's line of the report: the held-out output error (the last n_test images of the
// captured input x and target y) with round-to-nearest and with the learned weights r (and its
// learned activation steps), and
// the share of weights the learned rounding moved.
inline void report_unit(rounding_report& rep, const network_unit& u, const ptq::block_problem<float>& bp,
                        const ptq::block_result<float>& r, const captured_input& x, const captured_input& y,
                        index n, index n_test) {
  std::vector<ptq::row_matrix<float>> rtn(bp.weight.size());
  double changed = 0, total = 0;
  for (std::size_t j = 0; j < rtn.size(); ++j) {
    rtn[j].resize(bp.weight[j].rows(), bp.weight[j].cols());
    ptq::gemmlowp_quantizer::fake_quantize(bp.weight[j], bp.weight_grid[j], rtn[j]);
    changed += static_cast<double>((r.weights[j].array() != rtn[j].array()).count());
    total += static_cast<double>(rtn[j].size());
  }
  double e_rtn = 0, e_learned = 0;
  if (n_test > 0) {
    const index cin = x.x.rows() / n, kout = y.x.rows() / n;
    const ptq::row_matrix<float> xt = x.x.bottomRows(n_test * cin), yt = y.x.bottomRows(n_test * kout);
    e_rtn = unit_error(ptq::block_forward(bp, rtn, xt, x.H, x.W), yt, n_test);
    ptq::block_problem<float> learned = bp;  // with the learned activation steps, when there are
    learned.act = r.act;
    learned.output_act = r.output_act;
    e_learned = unit_error(ptq::block_forward(learned, r.weights, xt, x.H, x.W), yt, n_test);
  }
  rep.layer.push_back(u.name);
  rep.rtn_error.push_back(e_rtn);
  rep.learned_error.push_back(e_learned);
  rep.changed.push_back(total > 0 ? changed / total : 0.0);
  rep.iterations.push_back(static_cast<long>(r.iterations));
}

}  // namespace detail

// See the top of this file. q: quantize(fp32, cal, cfg)'s network (weights replaced here);
// calib: the calibration images (the first o.images + o.held_out are used).
inline rounding_report learn_block_rounding(quantized_net& q, const resnet& fp32, const image_set& calib,
                                            const quant_config& cfg, const block_rounding_options& o) {
  constexpr const char* where = "ptq_example::learn_block_rounding";
  ptq::detail::require(cfg.weights_quantized(), where, "configuration '", cfg.name, "' has float weights");
  ptq::detail::require(o.images >= 1 && o.held_out >= 0, where, "images = ", o.images, ", held_out = ", o.held_out,
                       ": expected >= 1 and >= 0");
  ptq::detail::require(o.seconds > 0, where, "seconds = ", o.seconds, ": expected a positive budget");
  ptq::detail::require(calib.count >= 1, where, "no calibration images");
  const auto t_start = std::chrono::steady_clock::now();
  const detail::one_eigen_thread one_thread;  // see detail::one_eigen_thread
  const index n_fit = std::min(o.images, calib.count);
  const index n_test = std::min(o.held_out, calib.count - n_fit);
  const index n = n_fit + n_test;
  const Eigen::Map<const ptq::row_matrix<float>> x(calib.data, n * calib.C, calib.H * calib.W);
  conv_hook q_conv;
  features_hook q_features;
  pool_hook q_pool;
  activation_hooks(q, 0, q_conv, q_features, q_pool);
  rounding_report rep;
  const std::vector<detail::network_unit> units = detail::network_units(fp32);
  for (std::size_t ui = 0; ui < units.size(); ++ui) {
    const detail::network_unit& u = units[ui];
    const auto t0 = std::chrono::steady_clock::now();
    const ptq::block_problem<float> bp = detail::unit_problem(fp32, u, q, cfg);
    // Inputs (quantized and FP32 networks) and the FP32 target.
    const index first_conv = u.convs.front();
    const detail::captured_input xq = detail::capture_input(q.net, first_conv, x, calib.H, calib.W, q_conv, q_pool, {},
                                                            q_features);
    const detail::captured_input xf = detail::capture_input(fp32, first_conv, x, calib.H, calib.W, {});
    const detail::captured_input yf = detail::capture_output(fp32, u, x, calib.H, calib.W);
    const index cin = xq.x.rows() / n, kout = yf.x.rows() / n;
    const Eigen::Ref<const ptq::row_matrix<float>> xq_fit = xq.x.topRows(n_fit * cin);
    const Eigen::Ref<const ptq::row_matrix<float>> xf_fit = xf.x.topRows(n_fit * cin);
    const Eigen::Ref<const ptq::row_matrix<float>> y_fit = yf.x.topRows(n_fit * kout);
    ptq::block_params p = o.block;
    p.rounding.seed = o.seed + static_cast<std::uint64_t>(ui);
    p.rounding.seconds = std::min(p.rounding.seconds, detail::budget_share(o.seconds, t_start, units.size() - ui));
    const ptq::block_result<float> r = ptq::reconstruct_block(bp, xq_fit, xf_fit, xq.H, xq.W, y_fit, p);
    detail::report_unit(rep, u, bp, r, xq, yf, n, n_test);
    // The learned weights (with the weight bias / variance correction when asked) into q.
    for (std::size_t j = 0; j < u.convs.size(); ++j) {
      ptq::row_matrix<float> w = r.weights[j];
      if (cfg.bias_corr_w || cfg.var_corr_w) {
        ptq::bias_corrector::params bc;
        bc.variance = cfg.var_corr_w;
        ptq::bias_corrector::correct(bp.weight[j], w, bc);
      }
      q.net.convs()[static_cast<std::size_t>(u.convs[j])].weight = w;
      // Learned activation steps (o.block.act_lr > 0): the unit's quantizers take them, so the
      // next units' inputs and the evaluation see them; the range (what --dump writes) becomes
      // the learned grid's [lo, hi].
      act_quantizer& aq = q.act[static_cast<std::size_t>(u.convs[j])];
      if (o.block.act_lr > 0.0 && r.act[j]) {
        aq.p = *r.act[j];
        if (aq.range.lo.size() != aq.p.channels() || aq.range.hi.size() != aq.p.channels()) continue;
        for (index c = 0; c < aq.p.channels(); ++c) {
          if (aq.p.is_constant(c)) continue;
          aq.range.lo[c] = static_cast<double>(aq.p.scale[c]) * (0.0 - aq.p.zero_point[c]);
          aq.range.hi[c] = static_cast<double>(aq.p.scale[c]) * (aq.p.qmax(c) - aq.p.zero_point[c]);
        }
      }
    }
    rep.seconds.push_back(std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count());
    if (o.progress)
      std::fprintf(stderr, "  brecq %-12s %zu convs, output error %.4g -> %.4g (held out), %.1f%% codes changed, %ld it, %.1f s\n",
                   u.name.c_str(), u.convs.size(), rep.rtn_error.back(), rep.learned_error.back(), 100.0 * rep.changed.back(),
                   rep.iterations.back(), rep.seconds.back());
  }
  rep.total_seconds = std::chrono::duration<double>(std::chrono::steady_clock::now() - t_start).count();
  return rep;
}

}  // namespace ptq_example
