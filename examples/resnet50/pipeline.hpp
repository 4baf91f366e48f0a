// pipeline.hpp: the paper's post-training pipeline on a ResNet: quantize per configuration, evaluate.
//
// docs/method.md section 5 (the reference's inference_sim.py), with BatchNorm already
// folded and the calibration statistics collected by calibrate.hpp:
//  - quantize(): for one quant_config, a copy of the network whose weights are
//    fake-quantized per output channel over min/max (bit allocation by per-channel std
//    and bias / variance correction optional), and the activation quantizers: every conv
//    output per channel (or per tensor), unsigned range when it feeds a ReLU, clipped by
//    ACIQ (Laplace: b, Gauss: std) or min/max, with optional bit allocation (options.hpp:
//    bit_rule, alpha_mode). Edge layers: the first conv (weights and output) and the
//    classifier (weights and its 8-bit quantizer) use max(bits, 8) unless
//    quantize_first_last is set; their activations follow edge_mode.
//  - beyond the paper: bit_alloc_a_add allocates a projection block's last conv and
//    downsample outputs together (activation_bits below; docs/method.md 5c).
//  - beyond the paper (data_steps.hpp): clip = search | choose takes each clipped conv
//    output's ranges from ptq::clip_search / clip_choice on the calibration sample (bits first:
//    the same bit allocation, then the search with those bits), and bias_corr_a folds the
//    empirical bias correction of every conv output into the biases, after everything else.
//  - adaround (reconstruct.hpp): the conv weights rounded by ptq::adaround layer by layer,
//    after the activation quantizers are set and before the empirical bias correction; with
//    brecq (block_reconstruct.hpp) by ptq::reconstruct_block unit by unit (BRECQ / QDrop).
//  - evaluate(): top-1 / top-5 of the quantized network, activations fake-quantized in
//    place by the forward's hooks, the logits by the classifier's quantizer.
#pragma once

#include <chrono>
#include <cstdint>
#include <cstdio>
#include <exception>
#include <functional>
#include <mutex>
#include <string>
#include <vector>

#include <ptq/ptq.hpp>

#include "block_reconstruct.hpp"
#include "calibrate.hpp"
#include "data_steps.hpp"
#include "device.hpp"
#include "options.hpp"
#include "quantizers.hpp"
#include "reconstruct.hpp"
#include "resnet.hpp"

namespace ptq_example {

struct accuracy {
  double top1 = 0, top5 = 0;
  index images = 0;
  double seconds = 0;
};

namespace detail {

// The empirical bias correction of q (data_steps.hpp) on the first cfg.bias_corr_a_images
// calibration images: the FP32 means of fp32's conv outputs, then one pass of q's network
// with q's activation quantizers (on a copy: the pass's buffers hold the whole batch).
inline void empirical_bias_correction(quantized_net& q, const resnet& fp32, const calibration& cal,
                                      const quant_config& cfg) {
  const auto t0 = std::chrono::steady_clock::now();
  const image_set s = correction_images(cal, cfg.bias_corr_a_images, "ptq_example::quantize");
  const Eigen::Map<const ptq::row_matrix<float>> x(s.data, s.count * s.C, s.H * s.W);
  const std::vector<Eigen::VectorXd> target = conv_output_means(fp32, x, s.count, s.H, s.W);
  pass_hooks h;
  conv_hook on_conv;
  features_hook on_features;
  activation_hooks(q, 0, on_conv, on_features, h.pool);
  h.quantize = on_conv;
  resnet work = q.net;
  q.bias_corr_a = correct_conv_biases(work, target, x, s.H, s.W, h);
  for (std::size_t i = 0; i < work.convs().size(); ++i) q.net.convs()[i].bias = work.convs()[i].bias;
  q.bias_corr_a_seconds = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
}

// Per conv, the bit width of each channel of its output's activation quantizer: the
// configuration's bits (the first conv: edge_bits), or with cfg.bit_alloc_a (per channel, not
// the first conv) allocated from each channel's allocation_prior under the layer's budget of
// cfg.abits per channel on average. With cfg.bit_alloc_a_add the two conv outputs a projection
// block adds (its last conv and its downsample: K channels each) are allocated together, 2 K
// channels under a budget of 2 K cfg.abits: their quantization noise adds up in the sum the
// next block reads, so the paper's objective (the allocated tensor's modelled MSE) is that
// sum's; each conv output then averages cfg.abits bits only together with its partner.
inline std::vector<Eigen::VectorXi> activation_bits(const resnet& net, const calibration& cal, const quant_config& cfg,
                                                    int edge_bits) {
  const auto& convs = net.convs();
  const bool allocate = cfg.bit_alloc_a && !cfg.per_tensor_a;
  std::vector<Eigen::VectorXi> bits(convs.size());
  for (std::size_t i = 0; i < convs.size(); ++i) {
    const ptq::channel_stats& st = cfg.per_tensor_a ? cal.per_tensor[i] : cal.per_channel[i];
    const bool first = i == 0;
    bits[i] = channel_bits(allocation_prior(st, cfg), first ? edge_bits : cfg.abits, allocate && !first, cfg.rule);
  }
  if (!allocate || !cfg.bit_alloc_a_add) return bits;
  for (const resnet_block& b : net.blocks()) {
    if (b.downsample < 0) continue;
    const auto last = static_cast<std::size_t>(b.last());
    const auto ds = static_cast<std::size_t>(b.downsample);
    const Eigen::VectorXd& p1 = allocation_prior(cal.per_channel[last], cfg);
    const Eigen::VectorXd& p2 = allocation_prior(cal.per_channel[ds], cfg);
    Eigen::VectorXd joint(p1.size() + p2.size());
    joint << p1, p2;
    const Eigen::VectorXi jb = channel_bits(joint, cfg.abits, true, cfg.rule);
    bits[last] = jb.head(p1.size());
    bits[ds] = jb.tail(p2.size());
  }
  return bits;
}

}  // namespace detail

// The network of configuration cfg: quantized weights, activation quantizers, and the
// data-driven steps it asks for (see the top of this file).
inline quantized_net quantize(const resnet& fp32, const calibration& cal, const quant_config& cfg) {
  quantized_net q;
  q.net = fp32;
  auto& convs = q.net.convs();
  const bool edge8 = !cfg.quantize_first_last;
  const int edge_bits_w = edge8 ? quant_config::edge_bits(cfg.wbits) : cfg.wbits;
  const int edge_bits_a = edge8 ? quant_config::edge_bits(cfg.abits) : cfg.abits;
  if (cfg.weights_quantized()) {
    for (std::size_t i = 0; i < convs.size(); ++i) {
      const bool first = i == 0;
      detail::quantize_weights(convs[i].weight, first ? edge_bits_w : cfg.wbits, cfg, cfg.bit_alloc_w && !first);
    }
    detail::quantize_weights(q.net.fc().weight, edge_bits_w, cfg, false);
  }
  if (cfg.activations_quantized()) {
    const auto t0 = std::chrono::steady_clock::now();
    q.act.resize(convs.size());
    const std::vector<Eigen::VectorXi> bits = detail::activation_bits(q.net, cal, cfg, edge_bits_a);
    std::vector<layer_clip> clips(convs.size());
    // One layer's quantizer; clip search runs the layers on the worker threads (single-threaded each).
    auto layer = [&](index li) {
      const auto i = static_cast<std::size_t>(li);
      const bool first = i == 0;
      if (first && edge8 && cfg.edge == edge_mode::minmax) {  // per tensor, 8 bits, no clipping
        const double lo = convs[0].feeds_relu ? 0.0 : cal.stem.min[0];
        q.act[i] = detail::minmax_quantizer(lo, std::max(lo, cal.stem.max[0]), edge_bits_a);
        return;
      }
      const ptq::channel_stats& st = cfg.per_tensor_a ? cal.per_tensor[i] : cal.per_channel[i];
      const ptq::row_matrix<float>* sample = i < cal.sample.size() ? &cal.sample[i] : nullptr;
      q.act[i] = detail::activation_quantizer(st, first ? edge_bits_a : cfg.abits, bits[i], cfg, convs[i].feeds_relu,
                                              sample, &clips[i]);
    };
    if (cfg.searched())
      parallel_tasks(static_cast<index>(convs.size()), layer);
    else
      for (std::size_t i = 0; i < convs.size(); ++i) layer(static_cast<index>(i));
    if (cfg.searched()) {
      q.search_seconds = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
      for (const layer_clip& c : clips) q.clip_mse += c.mse, q.aciq_mse += c.aciq_mse;
    }
  }
  if (cfg.activations_quantized()) {
    if (q.net.imagenet_stem()) q.pool = detail::minmax_quantizer(cal.pool.min[0], cal.pool.max[0], edge_bits_a);
    if (cfg.edge == edge_mode::aciq || cfg.quantize_first_last)  // post-ReLU pooled features: non-negative
      q.features = detail::minmax_quantizer(0.0, std::max(cal.features.max[0], 0.0), edge_bits_a);
    else
      q.logits = detail::minmax_quantizer(cal.logits_min, cal.logits_max, edge_bits_a);
  }
  // Learned rounding replaces the conv weights rounded above, with every activation
  // quantizer in place (each conv sees its input as the quantized network computes it).
  if (cfg.adaround) {
    ptq::detail::require(cal.images.count > 0, "ptq_example::quantize", "--adaround needs the calibration images: ",
                         "this calibration keeps none");
    const rounding_report r = cfg.brecq
                                  ? learn_block_rounding(q, fp32, cal.images, cfg, block_rounding_options::of(cfg))
                                  : learn_rounding(q, fp32, cal.images, cfg, rounding_options::of(cfg));
    q.adaround_seconds = r.total_seconds;
    q.adaround_rtn_error = r.rtn_total();
    q.adaround_error = r.learned_total();
  }
  if (cfg.bias_corr_a) detail::empirical_bias_correction(q, fp32, cal, cfg);
  return q;
}

// A network's logits for a batch of n images (n*C rows of H*W, NCHW).
using batch_forward = std::function<ptq::row_matrix<float>(const Eigen::Map<const ptq::row_matrix<float>>& x, index n)>;

// Top-1 / top-5 of `forward` over `set` with labels; logits_out (if not null) receives every image's logits.
inline accuracy evaluate_forward(const batch_forward& forward, index classes, const image_set& set,
                                 const std::vector<std::int64_t>& labels, index batch, const std::string& label,
                                 bool progress, ptq::row_matrix<float>* logits_out = nullptr) {
  const auto t0 = std::chrono::steady_clock::now();
  index hit1 = 0, hit5 = 0;
  if (logits_out) logits_out->resize(set.count, classes);
  progress_bar bar(label, set.count, progress);
  for (index first = 0; first < set.count; first += batch) {
    const index n = std::min(batch, set.count - first);
    const Eigen::Map<const ptq::row_matrix<float>> x(set.image(first), n * set.C, set.H * set.W);
    const ptq::row_matrix<float> logits = forward(x, n);
    if (logits_out) logits_out->middleRows(first, n) = logits;
    for (index i = 0; i < n; ++i) {
      const std::int64_t y = labels[static_cast<std::size_t>(first + i)];
      const float target = logits(i, y);
      index above = 0;  // classes ranked strictly above the label (ties count for the label)
      for (index k = 0; k < logits.cols(); ++k) above += logits(i, k) > target;
      hit1 += above == 0;
      hit5 += above < 5;
    }
    bar.draw(first + n);
  }
  bar.finish();
  accuracy a;
  a.images = set.count;
  a.top1 = 100.0 * static_cast<double>(hit1) / static_cast<double>(set.count);
  a.top5 = 100.0 * static_cast<double>(hit5) / static_cast<double>(set.count);
  a.seconds = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
  return a;
}

// Top-1 / top-5 of the quantized network q (the float simulation) over `set`.
inline accuracy evaluate(const quantized_net& q, const image_set& set, const std::vector<std::int64_t>& labels,
                         index batch, const std::string& label, bool progress, int threads = 0, bool cuda = false,
                         ptq::row_matrix<float>* logits_out = nullptr) {
  conv_hook on_conv;
  features_hook on_features;
  pool_hook on_pool;
  activation_hooks(q, threads, on_conv, on_features, on_pool, cuda);
  return evaluate_forward(
      [&](const Eigen::Map<const ptq::row_matrix<float>>& x, index) {
        ptq::row_matrix<float> logits = q.net.forward(x, set.H, set.W, on_conv, on_features, on_pool);
        if (q.logits.active) ptq::gemmlowp_quantizer::fake_quantize_in_place(logits, q.logits.p);
        return logits;
      },
      q.net.classes(), set, labels, batch, label, progress, logits_out);
}

}  // namespace ptq_example
