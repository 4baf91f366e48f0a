// int_model.hpp: the integer form of a quantized ResNet (codes, scales, zero points, fixed-point stages) and its float twin.
//
// Every activation tensor of the integer network is uint8 codes on a per-channel grid
// (one channel: per tensor), real = scale[c] * (q - zero_point[c]), q in [lo[c], hi[c]]:
//   input        the image, 8 bits over the calibration images' min/max per channel;
//   conv i out   the configuration's activation quantizer of conv i (pipeline.hpp's
//                quantize(): ACIQ / min/max, per-channel bits, edge layers at 8 bits),
//                with the ReLU in the clamp (lo = zero_point) when conv i feeds one;
//   block out    relu(conv_last + identity), on its own grid: 8 bits (int_options::
//                residual_bits) over [0, ACIQ's Laplace clip at 8 bits of the FP32 block
//                output's statistics, at most its maximum over the calibration set], per
//                channel or per tensor as the activations. The paper's simulation leaves this sum
//                unquantized (it is the sum of two grids); an integer network must store it.
// The stem's max-pool keeps its input's grid (the max of codes is the code of the max).
//
// Constant channels (0 bits, or a zero-width range) get a grid an integer kernel can use:
// the constant c0 is scale |c0| with one code (lo == hi): c0 > 0: zero_point 0, code 1;
// c0 < 0: zero_point 1, code 0; c0 == 0: scale 0, zero_point 0, code 0. Padding with the
// zero point stays the real 0 for them as for every channel.
//
// Convolutions, exactly in integers (docs/method.md section 7). Per-channel activation
// scales run along the next conv's reduction dimension, so they are folded into its
// weights before those are quantized:
//   W'[k, c, r, s] = W[k, c, r, s] * scale_in[c],       y_k = sum_j W'_kj (q_j - z_j) + b_k
// and W' is quantized per output channel as the configuration says (min/max, bits,
// bit allocation, bias and variance correction). At few bits that grid is coarse for W':
// input channels with small scales lose their weights. int_options::fold_bits above the
// weight bits folds the float model's quantized weights instead, W' = Wq[k, c, r, s] *
// scale_in[c], rounded to nearest on a min/max grid of fold_bits per output channel, so
// the integer network computes the simulation's weights up to that rounding. This applies
// to every conv but the first (at its edge bits) when the activations are per channel (a
// conv reading a per-tensor grid, such as the 8-bit stem output, takes it too, since the
// integer model then learns no rounding of its own); per-tensor configurations fold exactly.
// With the corrected weights
// xi_k s_k (qw - zw_k) + beta_k = u_k (qw - e_k), u_k = xi_k s_k, e_k = zw_k - beta_k / u_k,
// and F_k fractional bits (as many as keep the worst case inside int32):
//   acc_k(p)  = sum_j qw_kj q_pj                          (the int8 GEMM: uint8 x int8 -> int32)
//   fine_k(p) = acc_k(p) 2^F_k - E_k rowsum(p) + B_k       (exact, int64, checked to fit int32)
//     E_k = round(e_k 2^F_k),  rowsum(p) = sum_j q_pj (padding included, as the zero point),
//     B_k = E_k Z - 2^F_k sum_j qw_kj z_j + round(b_k 2^F_k / u_k),  Z = sum_j z_j
//   q_out     = clamp(zero_point_out + fixed(fine_k(p) * u_k / (2^F_k scale_out_k)), lo, hi)
// (fixed(): ptq/fixedpoint.hpp, gemmlowp's Q31 multiplier and rounding shift). So the
// weights the network computes with are exactly u_k (qw - E_k / 2^F_k) / scale_in[c] and
// the bias exactly u_k round(b_k 2^F_k / u_k) / 2^F_k: simulation() builds the float
// network with those, and its logits equal the engine's up to float rounding and the
// rounding of the output stage. Weight codes are stored as int8 qw - 2^(bits-1).
// The classifier: features x_c = sum_p (q_pc - z_c) (int32, the average pool's sum),
// W'fc = Wfc diag(scale_c), logits_k = u_k / P * (sum_c qw_kc x_c - e_k sum_c x_c) + b_k
// in int64 and double: no quantizer on the features or the logits.
//
// The data-driven steps (data_steps.hpp): clip search's ranges reach the conv output grids
// through quantize()'s activation quantizers. The empirical bias correction (bias_corr_a) is
// measured on this integer scheme itself (correct_int_biases): on simulation(), which computes
// exactly what the engine does (its grids, the folded weights, the block-output grids), with
// the input, every conv output and every block output fake-quantized as simulate() does, conv
// by conv in one pass (correct_conv_biases): mu_i = E[y_fp32,i] - E[y_sim,i] on the calibration
// images is added to int conv i's float bias (rounded to float, as exported), and its
// fixed-point stage is rebuilt (make_integer_stage: B_k holds round(b_k 2^F_k / u_k)).
//
// Learned rounding (cfg.adaround, int_reconstruct.hpp): after every conv and the classifier
// are built with round-to-nearest codes and before the empirical bias correction, each
// conv's folded weights W' are rounded up or down on their own grid by ptq::adaround, so
// that W' times the centred input codes reconstructs the FP32 conv output; the result is
// ordinary codes (and u, e), which the engine and the exporter use unchanged. With
// int_options::fold_bits above the weight bits the codes are the float model's (folded at
// fold_bits) and no rounding is learned here.
#pragma once

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <limits>
#include <string>
#include <vector>

#include <ptq/fixedpoint.hpp>
#include <ptq/integer_layer.hpp>
#include <ptq/ptq.hpp>

#include "calibrate.hpp"
#include "data_steps.hpp"
#include "options.hpp"
#include "pipeline.hpp"
#include "resnet.hpp"

namespace ptq_example {

// One tensor's grid: real = scale[c] * (q - zero_point[c]), q in [lo[c], hi[c]] (uint8).
struct int_grid {
  Eigen::VectorXd scale;
  Eigen::VectorXi zero_point, lo, hi, bits;
  index channels() const { return scale.size(); }
  // Channel of tensor channel c (a per-tensor grid has one).
  index at(index c) const { return channels() == 1 ? 0 : c; }
  // The largest |q - zero_point| of tensor channel c.
  int amax(index c) const {
    const index g = at(c);
    return std::max(hi[g] - zero_point[g], zero_point[g] - lo[g]);
  }
};

// One conv on codes; see the top of this file.
struct int_conv {
  std::string name;
  index K = 0, C = 0, R = 0, S = 0, stride = 1, pad = 0;
  std::vector<std::int8_t> w;           // K x (R*S*C), (r, s, c) order: qw - 2^(bits-1)
  Eigen::VectorXi wbits;                // per output channel, 0..8
  Eigen::VectorXd u, e, bias;           // weight = u (w - e) in stored-code units; the float bias (float values)
  std::vector<std::int64_t> E, B;       // derived (integer_stages): fixed point, F_k fractional bits
  std::vector<int> F;
  ptq::requantize_params out;           // bias 0; the multiplier u / (2^F scale_out); offset, clamp
  index crs() const { return C * R * S; }
  index out_size(index in) const { return (in + 2 * pad - R) / stride + 1; }
};

// The classifier on the pooled sums; see the top of this file.
struct int_fc {
  index K = 0, C = 0;
  std::vector<std::int8_t> w;  // K x C, qw - 128 (8 bits) or qw - 2^(bits-1)
  Eigen::VectorXi wbits;
  Eigen::VectorXd u, e, bias;  // e in stored-code units
};

// The whole integer network.
struct int_model {
  block_type type = block_type::basic;
  bool max_pool = false;
  std::vector<int_conv> convs;       // as resnet::convs()
  std::vector<resnet_block> blocks;  // as resnet::blocks()
  int_grid input;                    // the image's grid (per input channel)
  std::vector<int_grid> act;         // conv i's output grid
  std::vector<int_grid> block_out;   // block b's output grid
  int_fc fc;
  std::vector<ptq::add_params> add; // block b's residual add
  // Learned rounding's cost and held-out reconstruction errors summed over the convs
  // (learn_int_rounding; 0 without it). Build statistics: not exported.
  double adaround_seconds = 0, adaround_rtn_error = 0, adaround_error = 0;

  index input_channels() const { return convs.front().C; }
  index classes() const { return fc.K; }
  // The grid conv i reads.
  const int_grid& input_grid(index i) const;
};

struct int_options {
  int residual_bits = 8;  // the block outputs' grid
  // The bits of the folded weights with per-channel activations (0: the weight bits). Above
  // the configuration's weight bits, every conv but the first computes the float model's
  // quantized weights (its grid, bit allocation, corrections and learned rounding) folded
  // with their input scales and rounded to nearest per output channel on a min/max grid of
  // fold_bits: the integer network then computes the simulation's low-bit weights up to a
  // rounding of fold_bits, at the cost of storing fold_bits per weight. See the top of this file.
  int fold_bits = 0;
};

namespace detail {

// The integer grid of quantizer p for a tensor of `channels` channels; relu: clamp at 0.
inline int_grid grid_of(const ptq::quant_params<float>& p, index channels, bool relu) {
  const index n = p.channels();
  int_grid g;
  g.scale.resize(n);
  g.zero_point.resize(n);
  g.lo.resize(n);
  g.hi.resize(n);
  g.bits = p.bits;
  for (index c = 0; c < n; ++c) {
    const int qmax = p.qmax(c);
    ptq::detail::require(p.bits[c] <= 8, "ptq_example::int_model", "an activation quantizer has ", p.bits[c],
                         " bits: the integer engine stores codes as uint8 (at most 8 bits)");
    if (!p.is_constant(c)) {
      g.scale[c] = p.scale[c];
      g.zero_point[c] = p.zero_point[c];
      g.lo[c] = relu ? p.zero_point[c] : 0;
      g.hi[c] = qmax;
      continue;
    }
    // The constant the quantizer outputs: scale * (clamp(zp, 0, qmax) - zp).
    const int q = std::min(std::max(p.zero_point[c], 0), qmax);
    double c0 = static_cast<double>(p.scale[c]) * (q - p.zero_point[c]);
    if (relu) c0 = std::max(c0, 0.0);
    g.scale[c] = std::abs(c0);
    g.zero_point[c] = c0 < 0 ? 1 : 0;
    g.lo[c] = g.hi[c] = c0 > 0 ? 1 : 0;
  }
  (void)channels;
  return g;
}

// 8-bit grid over [lo, hi] per channel (extended to contain 0).
inline int_grid grid_minmax(const Eigen::VectorXd& lo, const Eigen::VectorXd& hi, int bits, bool relu) {
  ptq::channel_ranges r;
  r.lo = relu ? Eigen::VectorXd(lo.cwiseMax(0.0)) : lo;
  r.hi = hi.cwiseMax(r.lo);
  return grid_of(ptq::quant_params<float>::per_channel(r, bits), lo.size(), relu);
}

// Per output channel quantization of W' (K x CRS, double) as pipeline.hpp's quantize_weights
// does it (bits, allocation, the 0-bit value, bias and variance correction), in integer form
// (ptq::to_integer_weights: the correction folded into u and e).
inline ptq::integer_weights quantize_folded(const ptq::row_matrix<double>& w, int bits, const quant_config& cfg,
                                            bool allocate) {
  const auto p = weight_params(w, bits, cfg, allocate);
  if (!(cfg.bias_corr_w || cfg.var_corr_w)) return ptq::to_integer_weights(w, p);
  ptq::row_matrix<double> wq(w.rows(), w.cols());
  ptq::gemmlowp_quantizer::fake_quantize(w, p, wq);
  ptq::bias_corrector::params bp;
  bp.variance = cfg.var_corr_w;
  const ptq::bias_correction bc = ptq::bias_corrector::compute(w, wq, bp);  // the mean always, as quantize_weights
  return ptq::to_integer_weights(w, p, &bc);
}

inline int code_offset(int bits) { return bits > 0 ? 1 << (bits - 1) : 0; }

}  // namespace detail

inline const int_grid& int_model::input_grid(index i) const {
  if (i == 0) return input;
  for (std::size_t b = 0; b < blocks.size(); ++b) {
    const resnet_block& bl = blocks[b];
    const int_grid& in = b == 0 ? act[0] : block_out[b - 1];
    if (i == bl.conv1 || i == bl.downsample) return in;
    if (i == bl.conv2) return act[static_cast<std::size_t>(bl.conv1)];
    if (i == bl.conv3) return act[static_cast<std::size_t>(bl.conv2)];
  }
  ptq::detail::fail("ptq_example::int_model::input_grid", "no conv ", i);
}


// What the integer network needs beyond calibrate.hpp's statistics: the images' range per
// channel (global) and every block output's statistics (per channel and per tensor, in
// the calibration's protocol: per image, averaged), from the FP32 network.
struct int_calibration {
  Eigen::VectorXd input_min, input_max;
  std::vector<ptq::channel_stats> block_pc, block_pt;
  std::vector<Eigen::VectorXd> block_max;  // global maximum per channel
};

inline int_calibration calibrate_int(const resnet& net, const image_set& set, index batch) {
  int_calibration c;
  c.input_min = Eigen::VectorXd::Constant(set.C, std::numeric_limits<double>::infinity());
  c.input_max = -c.input_min;
  const index plane = set.H * set.W;
  for (index i = 0; i < set.count; ++i)
    for (index ch = 0; ch < set.C; ++ch) {
      const Eigen::Map<const Eigen::ArrayXf> v(set.image(i) + ch * plane, plane);
      c.input_min[ch] = std::min(c.input_min[ch], static_cast<double>(v.minCoeff()));
      c.input_max[ch] = std::max(c.input_max[ch], static_cast<double>(v.maxCoeff()));
    }
  std::vector<ptq::calibration_statistics> pc, pt;
  for (const resnet_block& b : net.blocks()) {
    const index K = net.convs()[static_cast<std::size_t>(b.last())].K;
    pc.emplace_back(K, ptq::stats_mode::batch_mean);
    pt.emplace_back(1, ptq::stats_mode::batch_mean);
    c.block_max.push_back(Eigen::VectorXd::Constant(K, -std::numeric_limits<double>::infinity()));
  }
  for (index first = 0; first < set.count; first += batch) {
    const index n = std::min(batch, set.count - first);
    const Eigen::Map<const ptq::row_matrix<float>> x(set.image(first), n * set.C, plane);
    net.forward(x, set.H, set.W, {}, {}, {}, [&](index b, ptq::row_map<float> y) {
      const auto l = static_cast<std::size_t>(b);
      const index rows = y.rows() / n;
      Eigen::VectorXd& mx = c.block_max[l];
      for (index r = 0; r < y.rows(); ++r) mx[r % rows] = std::max(mx[r % rows], static_cast<double>(y.row(r).maxCoeff()));
      for (index i = 0; i < n; ++i) {
        pc[l].add(y.middleRows(i * rows, rows));
        pt[l].add(y.middleRows(i * rows, rows));
      }
    });
  }
  for (std::size_t l = 0; l < pc.size(); ++l) {
    c.block_pc.push_back(pc[l].result());
    c.block_pt.push_back(pt[l].result());
  }
  return c;
}

namespace detail {

// TFLite's quantized ADD on grids a and b into out, per channel (K channels; grids may be per tensor).
inline ptq::add_params add_stage(const int_grid& a, const int_grid& b, const int_grid& out, index K) {
  ptq::add_params p;
  p.left_shift = 20;
  for (index c = 0; c < K; ++c) {
    const double sa = a.scale[a.at(c)], sb = b.scale[b.at(c)], so = out.scale[out.at(c)];
    const double twice = 2.0 * std::max(sa, sb);
    const bool dead = twice == 0.0 || so == 0.0 || out.lo[out.at(c)] == out.hi[out.at(c)];
    p.za.push_back(a.zero_point[a.at(c)]);
    p.zb.push_back(b.zero_point[b.at(c)]);
    p.offset.push_back(out.zero_point[out.at(c)]);
    p.ma.push_back(ptq::quantize_multiplier(dead ? 0.0 : sa / twice));
    p.mb.push_back(ptq::quantize_multiplier(dead ? 0.0 : sb / twice));
    p.mo.push_back(ptq::quantize_multiplier(dead ? 0.0 : twice / (std::ldexp(1.0, p.left_shift) * so)));
    p.lo.push_back(static_cast<std::uint8_t>(out.lo[out.at(c)]));
    p.hi.push_back(static_cast<std::uint8_t>(out.hi[out.at(c)]));
  }
  return p;
}

// The fixed-point stages of conv q (codes, wbits, u, e, bias set) between grids in and out:
// E, B, F and the output stage (see the top of this file). Deterministic in its inputs, so
// an exported model rebuilds exactly these integers.
inline void integer_stages(int_conv& q, const int_grid& in, const int_grid& out) {
  const index crs = q.crs();
  ptq::integer_weights w;
  w.codes = Eigen::Map<const Eigen::Matrix<std::int8_t, Eigen::Dynamic, Eigen::Dynamic, Eigen::RowMajor>>(q.w.data(), q.K, crs);
  w.bits = q.wbits;
  w.u = q.u;
  w.e = q.e;
  std::vector<int> z(static_cast<std::size_t>(crs)), amax(z.size());
  for (index j = 0; j < crs; ++j) {  // (r, s, c) order: channel j % C
    z[static_cast<std::size_t>(j)] = in.zero_point[in.at(j % q.C)];
    amax[static_cast<std::size_t>(j)] = in.amax(j % q.C);
  }
  std::vector<ptq::integer_grid> og(static_cast<std::size_t>(q.K));
  for (index k = 0; k < q.K; ++k) {
    const index g = out.at(k);
    og[static_cast<std::size_t>(k)] = {out.scale[g], out.zero_point[g], out.lo[g], out.hi[g]};
  }
  try {
    ptq::integer_stage st = ptq::make_integer_stage(w, z, amax, q.bias, og);
    q.E = std::move(st.E);
    q.B = std::move(st.B);
    q.F = std::move(st.F);
    q.out = std::move(st.out);
  } catch (const ptq::error& e) {
    throw ptq::error("ptq_example::int_model: " + q.name + ": " + e.what());
  }
}

// W' = W diag(s_in) of conv L on its input grid `in`, in double (K x CRS, im2col's (c, r, s) columns).
inline ptq::row_matrix<double> folded_weights(const conv_layer& L, const int_grid& in) {
  const index RS = L.R * L.S, crs = L.C * RS;
  ptq::row_matrix<double> w(L.K, crs);
  for (index k = 0; k < L.K; ++k)
    for (index j = 0; j < crs; ++j) w(k, j) = static_cast<double>(L.weight(k, j)) * in.scale[in.at(j / RS)];
  return w;
}

// Int conv of L's shape and bias with integer weights wc (of folded weights), between grids in
// and out. u, e and the bias are rounded to float (what an exported model stores).
inline int_conv integer_conv_of(const conv_layer& L, const ptq::integer_weights& wc, const int_grid& in,
                                const int_grid& out) {
  int_conv q;
  q.name = L.name;
  q.K = L.K, q.C = L.C, q.R = L.R, q.S = L.S, q.stride = L.stride, q.pad = L.pad;
  const index RS = L.R * L.S, crs = L.C * RS;
  q.wbits = wc.bits;
  q.u = wc.u.cast<float>().cast<double>();
  q.e = wc.e.cast<float>().cast<double>();
  q.bias = L.bias.cast<double>();
  q.w.resize(static_cast<std::size_t>(L.K * crs));
  for (index k = 0; k < L.K; ++k)
    for (index c = 0; c < L.C; ++c)
      for (index rs = 0; rs < RS; ++rs) q.w[static_cast<std::size_t>(k * crs + rs * L.C + c)] = wc.codes(k, c * RS + rs);
  integer_stages(q, in, out);
  return q;
}

// conv L (float, folded) on input grid `in` into output grid `out`; see the top of this file.
inline int_conv integer_conv(const conv_layer& L, const int_grid& in, const int_grid& out, int bits,
                             const quant_config& cfg, bool allocate) {
  return integer_conv_of(L, quantize_folded(folded_weights(L, in), bits, cfg, allocate), in, out);
}

// int_options::fold_bits: Lq (the float model's quantized conv) folded with `in` and rounded
// to nearest on a min/max grid (extended to 0) per row, of `bits` bits, or fewer (down to
// min_bits) for a row whose worst case |bias| / u + (2^b - 1) sum_j amax_j (make_integer_stage's
// accumulator bound without fractional bits) would pass 2^30: a row of tiny weights under a
// large bias; half of int32 leaves room for the empirical bias correction.
// L: the FP32 conv (shape, bias).
inline int_conv integer_conv_wide(const conv_layer& L, const conv_layer& Lq, const int_grid& in, const int_grid& out,
                                  int bits, int min_bits) {
  ptq::detail::require(Lq.K == L.K && Lq.C == L.C && Lq.R == L.R && Lq.S == L.S, "ptq_example::build_int_model",
                       "float_net's conv ", Lq.name, " is ", Lq.K, "x", Lq.C, "x", Lq.R, "x", Lq.S, ", the network's ",
                       L.name, " ", L.K, "x", L.C, "x", L.R, "x", L.S);
  const ptq::row_matrix<double> w = folded_weights(Lq, in);
  const index RS = Lq.R * Lq.S;
  double amax = 0;  // sum over the reduction of the largest |q - z|
  for (index j = 0; j < w.cols(); ++j) amax += in.amax(j / RS);
  ptq::channel_ranges r;
  r.lo = w.rowwise().minCoeff().cwiseMin(0.0);
  r.hi = w.rowwise().maxCoeff().cwiseMax(0.0);
  Eigen::VectorXi b(w.rows());
  for (index k = 0; k < w.rows(); ++k) {
    const double range = r.hi[k] - r.lo[k], bias = std::abs(static_cast<double>(L.bias[k]));
    b[k] = bits;
    while (b[k] > min_bits && range > 0 &&
           bias * ((1 << b[k]) - 1) / range + ((1 << b[k]) - 1) * amax + 1 >= 0x1p30)
      --b[k];
  }
  return integer_conv_of(L, ptq::to_integer_weights(w, ptq::quant_params<double>::per_channel(r, b)), in, out);
}

}  // namespace detail

inline std::vector<Eigen::VectorXd> correct_int_biases(int_model& m, const resnet& fp32, const image_set& images);
inline rounding_report learn_int_rounding(int_model& m, const resnet& fp32, const image_set& calib,
                                          const quant_config& cfg, const rounding_options& o);
inline rounding_report learn_int_block_rounding(int_model& m, const resnet& fp32, const image_set& calib,
                                                const quant_config& cfg, const block_rounding_options& o);

// The integer network of configuration cfg (weights and activations at <= 8 bits).
// float_net, when given, is quantize(fp32, cal, cfg)'s network; the model takes from it what
// depends on the float path's data-driven steps, and without it runs quantize() here:
//  - learned activation steps (cfg.act_lr > 0, --lsq): its activation quantizers. The
//    integer model's own block reconstruction then keeps those grids (its folded weights
//    depend on them);
//  - o.fold_bits above the weight bits with per-channel activations: its quantized weights
//    (with its learned rounding), folded at fold_bits; the integer model then learns no
//    rounding of its own.
// quantize()'s time here is not in adaround_seconds.
inline int_model build_int_model(const resnet& fp32, const calibration& cal, const int_calibration& ical,
                                 const quant_config& cfg, const int_options& o = {},
                                 const quantized_net* float_net = nullptr) {
  constexpr const char* where = "ptq_example::build_int_model";
  ptq::detail::require(cfg.wbits <= 8 && cfg.abits <= 8, where, "configuration '", cfg.name, "' has W", cfg.wbits,
                       "A", cfg.abits, ": the integer engine runs weights and activations of at most 8 bits");
  ptq::detail::require(o.residual_bits >= 1 && o.residual_bits <= 8, where, "residual_bits = ", o.residual_bits,
                       ", expected 1..8");
  ptq::detail::require(o.fold_bits >= 0 && o.fold_bits <= 8, where, "fold_bits = ", o.fold_bits,
                       ", expected 0 (the weight bits) or 1..8");
  quant_config qc = cfg;
  qc.bias_corr_a = false;  // measured below on the integer scheme itself
  const bool steps = cfg.brecq && cfg.act_lr > 0.0;
  const bool wide = o.fold_bits > cfg.wbits && !cfg.per_tensor_a;  // the float model's weights, folded wide
  const bool from_float = steps || wide;
  // Otherwise the rounding is learned below on the folded weights (the float path's codes do
  // not carry over), and quantize() gives the activation quantizers alone.
  qc.adaround = from_float && cfg.adaround && !float_net;
  ptq::detail::require(!float_net || float_net->act.size() == fp32.convs().size(), where, "float_net has ",
                       float_net ? float_net->act.size() : 0, " activation quantizers for ", fp32.convs().size(),
                       " convs");
  ptq::detail::require(!float_net || float_net->net.convs().size() == fp32.convs().size(), where, "float_net has ",
                       float_net ? float_net->net.convs().size() : 0, " convs, the network ", fp32.convs().size());
  const quantized_net qn = from_float && float_net ? quantized_net{} : quantize(fp32, cal, qc);
  const quantized_net& qf = from_float && float_net ? *float_net : qn;  // activation quantizers (and weights)
  int_model m;
  m.type = fp32.type();
  m.max_pool = fp32.imagenet_stem();
  m.blocks = fp32.blocks();
  const auto& convs = fp32.convs();
  m.input = detail::grid_minmax(ical.input_min, ical.input_max, 8, false);
  for (std::size_t i = 0; i < convs.size(); ++i) m.act.push_back(detail::grid_of(qf.act[i].p, convs[i].K, convs[i].feeds_relu));
  for (std::size_t b = 0; b < m.blocks.size(); ++b) {
    // ACIQ (Laplace) at 8 bits on the block output's statistics, capped at its global maximum.
    // Chosen on held-out training images (README, "Integer engine") over the global maximum
    // (steps too coarse: -8 points at W4A4 naive) and the per-image average of the maxima
    // (clips: -0.3 at W8A8, -1 to -3 with the paper's method).
    const ptq::channel_stats& st = cfg.per_tensor_a ? ical.block_pt[b] : ical.block_pc[b];
    const Eigen::VectorXd global = cfg.per_tensor_a ? Eigen::VectorXd::Constant(1, ical.block_max[b].maxCoeff())
                                                    : ical.block_max[b];
    const Eigen::VectorXd hi = ptq::aciq_ranges(ptq::distribution::laplace, st, Eigen::VectorXi::Constant(st.max.size(), o.residual_bits),
                                                ptq::range_kind::unsigned_range)
                                   .hi.cwiseMin(global);
    m.block_out.push_back(detail::grid_minmax(Eigen::VectorXd::Zero(hi.size()), hi, o.residual_bits, true));
  }
  const bool edge8 = !cfg.quantize_first_last;
  const int edge_bits_w = edge8 ? quant_config::edge_bits(cfg.wbits) : cfg.wbits;
  for (std::size_t i = 0; i < convs.size(); ++i) {
    const bool first = i == 0;
    const int_grid& in = m.input_grid(static_cast<index>(i));
    if (wide && !first)
      m.convs.push_back(detail::integer_conv_wide(convs[i], qf.net.convs()[i], in, m.act[i], o.fold_bits, cfg.wbits));
    else
      m.convs.push_back(detail::integer_conv(convs[i], in, m.act[i], first ? edge_bits_w : cfg.wbits, cfg,
                                             cfg.bit_alloc_w && !first));
  }
  for (std::size_t b = 0; b < m.blocks.size(); ++b) {
    const resnet_block& bl = m.blocks[b];
    const index last = bl.last();
    const int_grid& id = bl.downsample >= 0 ? m.act[static_cast<std::size_t>(bl.downsample)]
                                            : m.input_grid(bl.conv1);
    m.add.push_back(detail::add_stage(m.act[static_cast<std::size_t>(last)], id, m.block_out[b],
                                      convs[static_cast<std::size_t>(last)].K));
  }
  // Classifier on the last block's grid.
  const linear_layer& fc = fp32.fc();
  const int_grid& g = m.block_out.back();
  ptq::row_matrix<double> w(fc.weight.rows(), fc.weight.cols());
  for (index k = 0; k < w.rows(); ++k)
    for (index c = 0; c < w.cols(); ++c) w(k, c) = static_cast<double>(fc.weight(k, c)) * g.scale[g.at(c)];
  const ptq::integer_weights wc = detail::quantize_folded(w, edge_bits_w, cfg, false);
  m.fc.K = w.rows();
  m.fc.C = w.cols();
  m.fc.wbits = wc.bits;
  m.fc.u = wc.u.cast<float>().cast<double>();
  m.fc.e = wc.e.cast<float>().cast<double>();
  m.fc.bias = fc.bias.cast<double>();
  m.fc.w.assign(wc.codes.data(), wc.codes.data() + wc.codes.size());
  // Learned rounding of the folded conv weights, before the bias correction (which then
  // measures the learned codes), as pipeline.hpp's quantize() orders the float steps.
  if (cfg.adaround && !wide) {
    ptq::detail::require(cal.images.data != nullptr && cal.images.count > 0, where,
                         "configuration '", cfg.name, "': --adaround needs the calibration images: this calibration keeps none");
    block_rounding_options bo = block_rounding_options::of(cfg);
    bo.block.act_lr = 0.0;  // the grids stay (see above)
    const rounding_report r = cfg.brecq ? learn_int_block_rounding(m, fp32, cal.images, cfg, bo)
                                        : learn_int_rounding(m, fp32, cal.images, cfg, rounding_options::of(cfg));
    m.adaround_seconds = r.total_seconds;
    m.adaround_rtn_error = r.rtn_total();
    m.adaround_error = r.learned_total();
  }
  if (cfg.bias_corr_a)
    correct_int_biases(m, fp32, correction_images(cal, cfg.bias_corr_a_images, where));
  return m;
}

namespace detail {

// Conv L of the simulation (below): int conv q's weights and bias on its input grid `in`.
inline void simulation_conv(conv_layer& L, const int_conv& q, const int_grid& in) {
  const index RS = q.R * q.S;
  for (index k = 0; k < q.K; ++k) {
    const auto kk = static_cast<std::size_t>(k);
    const double ef = std::ldexp(static_cast<double>(q.E[kk]), -q.F[kk]);
    for (index c = 0; c < q.C; ++c) {
      const double s = in.scale[in.at(c)];
      for (index rs = 0; rs < RS; ++rs) {
        const double ws = q.w[static_cast<std::size_t>(k * q.crs() + rs * q.C + c)];
        L.weight(k, c * RS + rs) = s == 0.0 ? 0.0f : static_cast<float>(q.u[k] * (ws - ef) / s);
      }
    }
    // B = E Z - 2^F qz + round(b 2^F / u): the bias term is what remains.
    std::int64_t qz = 0, Z = 0;
    for (index c = 0; c < q.C; ++c)
      for (index rs = 0; rs < RS; ++rs) {
        const std::int64_t z = in.zero_point[in.at(c)];
        qz += q.w[static_cast<std::size_t>(k * q.crs() + rs * q.C + c)] * z;
        Z += z;
      }
    const std::int64_t bf = q.B[kk] - q.E[kk] * Z + qz * (std::int64_t{1} << q.F[kk]);
    L.bias[k] = static_cast<float>(q.u[k] * std::ldexp(static_cast<double>(bf), -q.F[kk]));
  }
}

}  // namespace detail

// The float network that computes what the integer one does (see the top of this file):
// weights u_k (qw - E_k / 2^F_k) / scale_in[c] (0 where scale_in is 0), biases
// u_k round(b_k 2^F_k / u_k) / 2^F_k; sim_hooks() fake-quantizes on the same grids.
inline resnet simulation(const resnet& fp32, const int_model& m) {
  resnet net = fp32;
  for (std::size_t i = 0; i < m.convs.size(); ++i)
    detail::simulation_conv(net.convs()[i], m.convs[i], m.input_grid(static_cast<index>(i)));
  const int_grid& g = m.block_out.back();
  linear_layer& fc = net.fc();
  for (index k = 0; k < m.fc.K; ++k)
    for (index c = 0; c < m.fc.C; ++c) {
      const double s = g.scale[g.at(c)];
      const double ws = m.fc.w[static_cast<std::size_t>(k * m.fc.C + c)];
      fc.weight(k, c) = s == 0.0 ? 0.0f : static_cast<float>(m.fc.u[k] * (ws - m.fc.e[k]) / s);
    }
  return net;
}

// Fake quantization on grid g of rows whose channel is row % channels (NCHW row views):
// round half away from zero, as the integer output stages.
inline void fake_quantize_grid(ptq::row_map<float> y, const int_grid& g, index channels) {
  for (index r = 0; r < y.rows(); ++r) {
    const index c = g.at(r % channels);
    const double s = g.scale[c], inv = s == 0.0 ? 0.0 : 1.0 / s;
    const int z = g.zero_point[c], lo = g.lo[c], hi = g.hi[c];
    for (index j = 0; j < y.cols(); ++j) {
      const double q = std::min<double>(hi, std::max<double>(lo, std::round(y(r, j) * inv) + z));
      y(r, j) = static_cast<float>(s * (q - z));
    }
  }
}


// The hooks of the integer scheme's float twin: every conv output and every block output
// fake-quantized on m's grids, as the engine quantizes them (m must outlive them).
inline conv_hook int_conv_hook(const int_model& m) {
  return [&m](index layer, ptq::row_map<float> y) {
    const auto li = static_cast<std::size_t>(layer);
    fake_quantize_grid(y, m.act[li], m.convs[li].K);
  };
}
inline block_hook int_block_hook(const int_model& m) {
  return [&m](index b, ptq::row_map<float> y) {
    const auto bi = static_cast<std::size_t>(b);
    fake_quantize_grid(y, m.block_out[bi], m.add[bi].channels());
  };
}

// NCHW float images (rows = image x channel) on m's input grid, as the engine's input stage.
inline ptq::row_matrix<float> int_input(const int_model& m, const Eigen::Ref<const ptq::row_matrix<float>>& input) {
  ptq::row_matrix<float> x = input;
  fake_quantize_grid(ptq::row_map<float>(x.data(), x.rows(), x.cols()), m.input, m.input_channels());
  return x;
}

// Logits of the simulation network `sim` (simulation(fp32, m)) with m's grids: the input,
// every conv output and every block output fake-quantized as the engine quantizes them.
inline ptq::row_matrix<float> simulate(const resnet& sim, const int_model& m,
                                       const Eigen::Ref<const ptq::row_matrix<float>>& input, index H, index W) {
  return sim.forward(int_input(m, input), H, W, int_conv_hook(m), {}, {}, int_block_hook(m));
}

// The empirical bias correction of the integer scheme m on `images` (see the top of this
// file); returns mu per conv.
inline std::vector<Eigen::VectorXd> correct_int_biases(int_model& m, const resnet& fp32, const image_set& images) {
  const Eigen::Map<const ptq::row_matrix<float>> x(images.data, images.count * images.C, images.H * images.W);
  const std::vector<Eigen::VectorXd> target = conv_output_means(fp32, x, images.count, images.H, images.W);
  resnet sim = simulation(fp32, m);
  const ptq::row_matrix<float> xq = int_input(m, x);
  pass_hooks h;
  h.quantize = int_conv_hook(m);
  h.block = int_block_hook(m);
  const std::vector<Eigen::VectorXd> mu = correct_conv_biases(sim, target, xq, images.H, images.W, h);
  for (std::size_t i = 0; i < m.convs.size(); ++i) {
    int_conv& q = m.convs[i];
    q.bias = (q.bias + mu[i]).cast<float>().cast<double>();
    detail::integer_stages(q, m.input_grid(static_cast<index>(i)), m.act[i]);
  }
  return mu;
}

}  // namespace ptq_example

#include "int_reconstruct.hpp"        // learn_int_rounding (it includes this file)
#include "int_block_reconstruct.hpp"  // learn_int_block_rounding (it includes this file)
