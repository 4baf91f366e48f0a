// int_reconstruct.hpp: learned rounding (ptq::adaround) of the integer ResNet's folded conv weights, on the integer scheme itself.
//
// The integer model (int_model.hpp) folds the per-channel scale of each conv's input grid
// into the conv's weights and quantizes those itself:
//   W'[k, j] = W[k, j] s_in[c(j)],   y_k = sum_j W'_kj (q_j - z_j) + b_k,
// so the float pipeline's learned codes (reconstruct.hpp, on W's grid) do not carry over.
// learn_int_rounding(m, fp32, calib, cfg, o) learns the rounding of W' on the grid that
// build_int_model quantizes it on, and so works for per-channel and per-tensor activations
// alike. After build_int_model has built m with round-to-nearest codes, for each conv i in
// network order:
//   X'_i = conv i's input in m's float twin (simulation(fp32, m) with the input, every conv
//          output and every block output fake-quantized on m's grids, as simulate() does;
//          every earlier conv already rounded here), at o's sampled output pixels, as
//          im2col columns (rows j = (c, r, s)), divided by s_in[c(j)] and rounded: the
//          centred input codes q - z the engine multiplies (0 where s_in is 0, and in the
//          padding);
//   Y_i  = the FP32 network's conv i output minus its bias at the same pixels (the samples
//          and targets of reconstruct.hpp: detail::sample_targets, same seeds and split);
//   p    = detail::weight_params(W' in double, bits, cfg, allocation): quantize_folded's
//          grid (per output channel min/max; the first conv at the edge bits, bit
//          allocation on the other convs when cfg.bit_alloc_w);
//   codes = ptq::adaround(W' (float), p (float), X'_i, Y_i): min over the rounding of
//          ||W'_soft X' - Y||^2 (+ the annealed regularizer). W' X' = W X, so the problem
//          is the float pipeline's with the folded weights.
// The learned weights s_k (code - z_k) (in double on p; constant channels keep their value)
// become integer weights exactly as quantize_folded makes them: ptq::to_integer_weights
// with, when cfg.bias_corr_w / var_corr_w, the bias (and variance) correction of W' against
// them folded into u and e. The re-quantized codes must be adaround's (checked). Then the
// conv's fixed-point stages are rebuilt (detail::integer_stages), and the twin's conv i with
// them (detail::simulation_conv), so that conv i + 1 sees the rounded conv i. The classifier
// keeps its codes. build_int_model runs this before the empirical bias correction
// (correct_int_biases), which then measures the learned codes, as pipeline.hpp's quantize()
// orders the float steps.
// The report: per conv the held-out reconstruction error ||W_e X' - Y||^2 / columns with
// W_e the weights the engine computes with, u_k (qw_kj - E_k / 2^F_k) (bias-corrected when
// the configuration corrects), for round-to-nearest (m's codes on entry) and the learned
// codes; the share of codes changed; seconds. Cost per conv: one forward of the twin over
// o.images images, plus the optimization, as reconstruct.hpp.
#pragma once

#include <algorithm>
#include <chrono>
#include <cmath>
#include <cstdint>
#include <cstdio>
#include <vector>

#include <ptq/adaround.hpp>
#include <ptq/integer_layer.hpp>
#include <ptq/ptq.hpp>

#include "int_model.hpp"
#include "reconstruct.hpp"

namespace ptq_example {

namespace detail {

// The folded weights the engine computes with, K x CRS in im2col's (c, r, s) order:
// u_k (qw_kj - E_k / 2^F_k), real output per centred input code (int_conv stores codes in
// (r, s, c) order).
inline Eigen::MatrixXd engine_weights(const int_conv& q) {
  const index RS = q.R * q.S, crs = q.crs();
  Eigen::MatrixXd w(q.K, crs);
  for (index k = 0; k < q.K; ++k) {
    const auto kk = static_cast<std::size_t>(k);
    const double ef = std::ldexp(static_cast<double>(q.E[kk]), -q.F[kk]);
    for (index c = 0; c < q.C; ++c)
      for (index rs = 0; rs < RS; ++rs)
        w(k, c * RS + rs) = q.u[k] * (q.w[static_cast<std::size_t>(k * crs + rs * q.C + c)] - ef);
  }
  return w;
}

// im2col columns X (rows (c, r, s), values on grid `in`) as centred codes:
// round(X / scale[c]), 0 where the scale is 0.
inline Eigen::MatrixXf centred_codes(const Eigen::MatrixXf& X, const int_grid& in, index RS) {
  Eigen::MatrixXf out(X.rows(), X.cols());
  for (index j = 0; j < X.rows(); ++j) {
    const double s = in.scale[in.at(j / RS)];
    for (index n = 0; n < X.cols(); ++n)
      out(j, n) = s == 0.0 ? 0.0f : static_cast<float>(std::round(static_cast<double>(X(j, n)) / s));
  }
  return out;
}

// Conv F's integer form with learned codes (K x CRS in im2col's (c, r, s) order, on p's grid:
// W' = wf's folded weights in double, pf the same grid in float): the codes become integer
// weights as quantize_folded makes them (ptq::to_integer_weights, with the bias / variance
// correction of wf against them when cfg asks), into a copy of `base` (its stages are stale:
// run integer_stages next). The re-quantized codes must be the learned ones (checked).
template <class Codes>
int_conv learned_int_conv(const int_conv& base, const conv_layer& F, const ptq::row_matrix<double>& wf,
                          const ptq::quant_params<double>& p, const ptq::quant_params<float>& pf, const Codes& codes,
                          const quant_config& cfg, const char* where) {
  const index RS = F.R * F.S, D = F.C * RS;
  // The learned weights on p's grid, in double (constant channels: their value).
  ptq::row_matrix<double> wq(F.K, D);
  ptq::gemmlowp_quantizer::fake_quantize(wf, p, wq);
  for (index k = 0; k < F.K; ++k) {
    ptq::detail::require(p.is_constant(k) == pf.is_constant(k), where, F.name, " channel ", k,
                         ": the weight grid's scale ", p.scale[k], " is not one in float");
    if (!p.is_constant(k))
      for (index j = 0; j < D; ++j) wq(k, j) = p.scale[k] * (static_cast<double>(codes(k, j)) - p.zero_point[k]);
  }
  ptq::integer_weights iw;
  if (cfg.bias_corr_w || cfg.var_corr_w) {
    ptq::bias_corrector::params bp;
    bp.variance = cfg.var_corr_w;
    const ptq::bias_correction bc = ptq::bias_corrector::compute(wf, wq, bp);
    iw = ptq::to_integer_weights(wq, p, &bc);
  } else {
    iw = ptq::to_integer_weights(wq, p);
  }
  int_conv q = base;
  q.wbits = iw.bits;
  q.u = iw.u.cast<float>().cast<double>();
  q.e = iw.e.cast<float>().cast<double>();
  for (index k = 0; k < F.K; ++k)
    for (index c = 0; c < F.C; ++c)
      for (index rs = 0; rs < RS; ++rs) {
        const std::int8_t code = iw.codes(k, c * RS + rs);
        const int stored = code + code_offset(iw.bits[k]), learned = static_cast<int>(codes(k, c * RS + rs));
        ptq::detail::require(stored == learned, where, F.name, " channel ", k, " weight ", c * RS + rs, ": code ",
                             learned, " re-quantizes to ", stored);
        q.w[static_cast<std::size_t>(k * D + rs * F.C + c)] = code;
      }
  return q;
}

// What learning the integer model's rounding needs: weights of 1 to 8 bits, calibration
// images with the network's channels, and m built from fp32 (its convs, grids and blocks).
inline void check_int_learning(const int_model& m, const resnet& fp32, const image_set& calib, const quant_config& cfg,
                               const char* where) {
  ptq::detail::require(cfg.weights_quantized() && cfg.wbits <= 8, where, "configuration '", cfg.name, "' has W",
                       cfg.wbits, ": the integer model's weights have 1 to 8 bits");
  ptq::detail::require(calib.data != nullptr && calib.count >= 1, where, "no calibration images");
  const auto& convs = fp32.convs();
  ptq::detail::require(!m.convs.empty() && m.convs.size() == convs.size() && m.act.size() == convs.size() &&
                           m.add.size() == m.blocks.size() && m.block_out.size() == m.blocks.size() &&
                           m.blocks.size() == fp32.blocks().size(),
                       where, "the integer model (", m.convs.size(), " convs, ", m.add.size(),
                       " blocks) is not built from this network (", convs.size(), " convs, ", fp32.blocks().size(),
                       " blocks)");
  ptq::detail::require(calib.C == m.input_channels(), where, "the calibration images have ", calib.C,
                       " channels, the network reads ", m.input_channels());
}

// quant_params<float> of a double grid (the weight grid adaround and reconstruct_block learn on).
inline ptq::quant_params<float> float_params(const ptq::quant_params<double>& p) {
  ptq::quant_params<float> pf;
  pf.scale = p.scale.cast<float>();
  pf.zero_point = p.zero_point;
  pf.bits = p.bits;
  pf.g = p.g;
  return pf;
}

}  // namespace detail

// See the top of this file. m: build_int_model's model with round-to-nearest codes (its
// conv codes, u, e and stages replaced here); calib: the calibration images (the first
// o.images are used); cfg: the configuration m was built with.
inline rounding_report learn_int_rounding(int_model& m, const resnet& fp32, const image_set& calib,
                                          const quant_config& cfg, const rounding_options& o) {
  constexpr const char* where = "ptq_example::learn_int_rounding";
  ptq::detail::require(o.images >= 1 && o.columns >= 1 && o.held_out >= 0, where, "images = ", o.images,
                       ", columns = ", o.columns, ", held_out = ", o.held_out, ": expected >= 1, >= 1, >= 0");
  ptq::detail::require(o.seconds > 0, where, "seconds = ", o.seconds, ": expected a positive budget");
  detail::check_int_learning(m, fp32, calib, cfg, where);
  const auto& convs = fp32.convs();
  const auto t_start = std::chrono::steady_clock::now();
  const detail::one_eigen_thread one_thread;  // see detail::one_eigen_thread
  const index n = std::min(o.images, calib.count), H = calib.H, W = calib.W;
  const Eigen::Map<const ptq::row_matrix<float>> x(calib.data, n * calib.C, H * W);
  const detail::rounding_samples smp = detail::sample_targets(fp32, x, n, H, W, o);
  // The integer scheme's float twin: its input, conv outputs and block outputs on m's grids.
  const ptq::row_matrix<float> xq = int_input(m, x);
  const Eigen::Map<const ptq::row_matrix<float>> xqm(xq.data(), xq.rows(), xq.cols());
  resnet sim = simulation(fp32, m);
  const conv_hook on_conv = int_conv_hook(m);
  const block_hook on_block = int_block_hook(m);
  const bool edge8 = !cfg.quantize_first_last;
  const int edge_bits_w = edge8 ? quant_config::edge_bits(cfg.wbits) : cfg.wbits;
  rounding_report rep;
  for (std::size_t l = 0; l < convs.size(); ++l) {
    const auto li = static_cast<index>(l);
    const auto t0 = std::chrono::steady_clock::now();
    const conv_layer& F = convs[l];
    const int_grid& in = m.input_grid(li);
    const index RS = F.R * F.S, D = F.C * RS;
    ptq::detail::require(m.convs[l].K == F.K && m.convs[l].crs() == D, where, F.name, ": the integer conv is ",
                         m.convs[l].K, " x ", m.convs[l].crs(), ", the network's ", F.K, " x ", D);
    const detail::captured_input cap = detail::capture_input(sim, li, xqm, H, W, on_conv, {}, on_block);
    const Eigen::MatrixXf X = detail::centred_codes(detail::im2col_at(F, cap.x.data(), cap.H, cap.W, smp.fit[l]), in, RS);
    const Eigen::MatrixXf Xt = detail::centred_codes(detail::im2col_at(F, cap.x.data(), cap.H, cap.W, smp.test[l]), in, RS);
    // W' = W diag(s_in) on quantize_folded's grid.
    const ptq::row_matrix<double> wf = detail::folded_weights(F, in);
    const bool first = l == 0;
    const ptq::quant_params<double> p = detail::weight_params(wf, first ? edge_bits_w : cfg.wbits, cfg,
                                                              cfg.bit_alloc_w && !first);
    const ptq::quant_params<float> pf = detail::float_params(p);
    ptq::adaround_params ap = o.layer;
    ap.seed = o.seed + static_cast<std::uint64_t>(l);
    ap.seconds = std::min(ap.seconds, detail::budget_share(o.seconds, t_start, convs.size() - l));
    if (o.relu_output) detail::relu_output(F, ap);  // W' X' = W X: the FP32 bias in the same units
    const ptq::row_matrix<float> wff = wf.cast<float>();
    const ptq::adaround_result<float> r = ptq::adaround(wff, pf, X, smp.y_fit[l], ap);
    rep.iterations.push_back(static_cast<long>(r.iterations));
    int_conv q = detail::learned_int_conv(m.convs[l], F, wf, p, pf, r.codes, cfg, where);
    detail::integer_stages(q, in, m.act[l]);
    auto err = [&](const int_conv& c) {
      if (Xt.cols() == 0) return 0.0;
      return (detail::engine_weights(c) * Xt.cast<double>() - smp.y_test[l].cast<double>()).squaredNorm() /
             static_cast<double>(Xt.cols());
    };
    index changed = 0;
    for (std::size_t t = 0; t < q.w.size(); ++t) changed += q.w[t] != m.convs[l].w[t];
    rep.layer.push_back(F.name);
    rep.rtn_error.push_back(err(m.convs[l]));
    rep.learned_error.push_back(err(q));
    rep.changed.push_back(static_cast<double>(changed) / static_cast<double>(q.w.size()));
    m.convs[l] = std::move(q);
    detail::simulation_conv(sim.convs()[l], m.convs[l], in);
    rep.seconds.push_back(std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count());
    if (o.progress)
      std::fprintf(stderr, "  int adaround %-24s %4td x %-5td error %.4g -> %.4g (held out), %.1f%% codes changed, %ld it, %.1f s\n",
                   F.name.c_str(), F.K, D, rep.rtn_error.back(), rep.learned_error.back(), 100.0 * rep.changed.back(),
                   rep.iterations.back(), rep.seconds.back());
  }
  rep.total_seconds = std::chrono::duration<double>(std::chrono::steady_clock::now() - t_start).count();
  return rep;
}

}  // namespace ptq_example
