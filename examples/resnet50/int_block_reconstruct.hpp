// int_block_reconstruct.hpp: block reconstruction (ptq::reconstruct_block: BRECQ / QDrop) of the integer ResNet's folded weights, on the integer scheme itself.
//
// The float path's block reconstruction (block_reconstruct.hpp) learns codes on W's grids;
// the integer model multiplies centred input codes by its own folded weights,
//   y_k = sum_j W'_kj (q_j - z_j) + b_k,   W' = W diag(s_in),
// quantized on their own grids, so those codes do not carry over (int_reconstruct.hpp says
// the same of per-conv AdaRound). learn_int_block_rounding(m, fp32, calib, cfg, o) learns the
// rounding of W' unit by unit (the units of block_reconstruct.hpp: the stem conv, then every
// residual block) on the integer scheme's float twin (simulation(fp32, m): the input, every
// conv output and every block output fake-quantized on m's grids):
//   problem = the unit's convs with W' (float) on detail::weight_params(W') (quantize_folded's
//             grid), the FP32 biases, input_scale = each conv's input grid scales (the conv
//             reads round(x / s_in): the centred codes the engine multiplies), act = m's
//             grid of each conv output, output_act = m's block-output grid (blocks only);
//   x_q     = the unit's input in the twin (every earlier unit already rounded here),
//   x_fp    = the FP32 network's unit input, y = its unit output,
// on the first o.images calibration images (the next o.held_out measure the report's error).
// The learned codes become integer weights as learn_int_rounding installs them
// (detail::learned_int_conv: with the weight bias / variance correction when the
// configuration asks), the conv's fixed-point stages are rebuilt and the twin's conv with
// them, so the next unit sees this one rounded. The residual adds' stages depend on grids
// only and stay. build_int_model runs this before the empirical bias correction.
#pragma once

#include <algorithm>
#include <chrono>
#include <cstdint>
#include <cstdio>
#include <optional>
#include <vector>

#include <ptq/block_reconstruction.hpp>
#include <ptq/ptq.hpp>

#include "block_reconstruct.hpp"
#include "int_model.hpp"
#include "int_reconstruct.hpp"

namespace ptq_example {

namespace detail {

// The quantizer whose fake quantization (then the conv's ReLU, where its output feeds one)
// gives what fake_quantize_grid(g) gives: the grid's scale, zero point and bits; a constant
// channel (0 bits or scale 0: grid_of's value s (lo - z)) as quant_params' constant
// channel of that value (scale |v|, zero point -1 for v > 0, qmax + 1 for v < 0).
inline ptq::quant_params<float> grid_params(const int_grid& g) {
  const index n = g.channels();
  ptq::quant_params<float> p;
  p.g = n == 1 ? ptq::granularity::per_tensor : ptq::granularity::per_channel;
  p.scale.resize(n);
  p.zero_point.resize(n);
  p.bits = g.bits;
  for (index c = 0; c < n; ++c) {
    if (g.bits[c] > 0 && g.scale[c] > 0.0) {
      p.scale[c] = static_cast<float>(g.scale[c]);
      p.zero_point[c] = g.zero_point[c];
      continue;
    }
    const double v = g.scale[c] * (g.lo[c] - g.zero_point[c]);
    p.scale[c] = static_cast<float>(std::abs(v));
    p.zero_point[c] = v > 0.0 ? -1 : v < 0.0 ? ptq::quant_params<float>::qmax_of(g.bits[c]) + 1 : 0;
  }
  return p;
}

// Per input channel c < C: the grid's scale (the conv reads round(x / s)).
inline Eigen::VectorXf grid_scales(const int_grid& g, index C) {
  Eigen::VectorXf s(C);
  for (index c = 0; c < C; ++c) s[c] = static_cast<float>(g.scale[g.at(c)]);
  return s;
}

}  // namespace detail

// See the top of this file. m: build_int_model's model with round-to-nearest codes (its conv
// codes, u, e and stages replaced here); calib: the calibration images (the first
// o.images + o.held_out are used); cfg: the configuration m was built with.
inline rounding_report learn_int_block_rounding(int_model& m, const resnet& fp32, const image_set& calib,
                                                const quant_config& cfg, const block_rounding_options& o) {
  constexpr const char* where = "ptq_example::learn_int_block_rounding";
  ptq::detail::require(o.images >= 1 && o.held_out >= 0, where, "images = ", o.images, ", held_out = ", o.held_out,
                       ": expected >= 1 and >= 0");
  ptq::detail::require(o.seconds > 0, where, "seconds = ", o.seconds, ": expected a positive budget");
  detail::check_int_learning(m, fp32, calib, cfg, where);
  const auto& convs = fp32.convs();
  const auto t_start = std::chrono::steady_clock::now();
  const detail::one_eigen_thread one_thread;  // see detail::one_eigen_thread
  const index n_fit = std::min(o.images, calib.count), n_test = std::min(o.held_out, calib.count - n_fit);
  const index n = n_fit + n_test, H = calib.H, W = calib.W;
  const Eigen::Map<const ptq::row_matrix<float>> x(calib.data, n * calib.C, H * W);
  // The integer scheme's float twin: its input, conv outputs and block outputs on m's grids.
  const ptq::row_matrix<float> xq = int_input(m, x);
  const Eigen::Map<const ptq::row_matrix<float>> xqm(xq.data(), xq.rows(), xq.cols());
  resnet sim = simulation(fp32, m);
  const conv_hook on_conv = int_conv_hook(m);
  const block_hook on_block = int_block_hook(m);
  const int edge_bits_w = cfg.quantize_first_last ? cfg.wbits : quant_config::edge_bits(cfg.wbits);
  rounding_report rep;
  const std::vector<detail::network_unit> units = detail::network_units(fp32);
  for (std::size_t ui = 0; ui < units.size(); ++ui) {
    const detail::network_unit& u = units[ui];
    const auto t0 = std::chrono::steady_clock::now();
    ptq::block_problem<float> bp;
    bp.graph = u.graph;
    std::vector<ptq::row_matrix<double>> wf;
    std::vector<ptq::quant_params<double>> pd;
    for (index g : u.convs) {
      const auto gi = static_cast<std::size_t>(g);
      const conv_layer& F = convs[gi];
      const int_grid& in = m.input_grid(g);
      ptq::detail::require(m.convs[gi].K == F.K && m.convs[gi].crs() == F.weight.cols(), where, F.name,
                           ": the integer conv is ", m.convs[gi].K, " x ", m.convs[gi].crs(), ", the network's ", F.K,
                           " x ", F.weight.cols());
      wf.push_back(detail::folded_weights(F, in));
      const bool first = g == 0;
      pd.push_back(detail::weight_params(wf.back(), first ? edge_bits_w : cfg.wbits, cfg, cfg.bit_alloc_w && !first));
      bp.weight.push_back(wf.back().cast<float>());
      bp.bias.push_back(F.bias);
      bp.weight_grid.push_back(detail::float_params(pd.back()));
      bp.input_scale.push_back(detail::grid_scales(in, F.C));
      bp.act.emplace_back(detail::grid_params(m.act[gi]));
    }
    if (u.block >= 0) bp.output_act = detail::grid_params(m.block_out[static_cast<std::size_t>(u.block)]);
    // Inputs (the twin and the FP32 network) and the FP32 target.
    const index first_conv = u.convs.front();
    const detail::captured_input cq = detail::capture_input(sim, first_conv, xqm, H, W, on_conv, {}, on_block);
    const detail::captured_input cf = detail::capture_input(fp32, first_conv, x, H, W, {});
    const detail::captured_input yf = detail::capture_output(fp32, u, x, H, W);
    const index cin = cq.x.rows() / n, kout = yf.x.rows() / n;
    ptq::block_params p = o.block;
    p.rounding.seed = o.seed + static_cast<std::uint64_t>(ui);
    p.rounding.seconds = std::min(p.rounding.seconds, detail::budget_share(o.seconds, t_start, units.size() - ui));
    const ptq::block_result<float> r = ptq::reconstruct_block(bp, cq.x.topRows(n_fit * cin), cf.x.topRows(n_fit * cin),
                                                              cq.H, cq.W, yf.x.topRows(n_fit * kout), p);
    detail::report_unit(rep, u, bp, r, cq, yf, n, n_test);
    // The learned codes into m and into the twin.
    for (std::size_t j = 0; j < u.convs.size(); ++j) {
      const auto gi = static_cast<std::size_t>(u.convs[j]);
      const int_grid& in = m.input_grid(u.convs[j]);
      int_conv q = detail::learned_int_conv(m.convs[gi], convs[gi], wf[j], pd[j], bp.weight_grid[j], r.codes[j], cfg,
                                            where);
      detail::integer_stages(q, in, m.act[gi]);
      m.convs[gi] = std::move(q);
      detail::simulation_conv(sim.convs()[gi], m.convs[gi], in);
    }
    rep.seconds.push_back(std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count());
    if (o.progress)
      std::fprintf(stderr, "  int brecq %-12s %zu convs, output error %.4g -> %.4g (held out), %.1f%% codes changed, %ld it, %.1f s\n",
                   u.name.c_str(), u.convs.size(), rep.rtn_error.back(), rep.learned_error.back(), 100.0 * rep.changed.back(),
                   rep.iterations.back(), rep.seconds.back());
  }
  rep.total_seconds = std::chrono::duration<double>(std::chrono::steady_clock::now() - t_start).count();
  return rep;
}

}  // namespace ptq_example
