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
//  - beyond the paper (data_steps.hpp): clip = search | choose takes each clipped conv
//    output's ranges from ptq::clip_search / clip_choice on the calibration sample (bits first:
//    the same bit allocation, then the search with those bits), and bias_corr_a folds the
//    empirical bias correction of every conv output into the biases, after everything else.
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

#include "calibrate.hpp"
#include "data_steps.hpp"
#include "device.hpp"
#include "options.hpp"
#include "resnet.hpp"

namespace ptq_example {

// One activation quantizer and the nominal range and bits it was made from (before the
// quantizer extends the range to contain 0; what --dump writes).
struct act_quantizer {
  ptq::quant_params<float> p;
  ptq::channel_ranges range;
  Eigen::VectorXi bits;
  bool active = false;
};

// A network with quantized weights and the activation quantizers of one configuration.
struct quantized_net {
  resnet net;
  std::vector<act_quantizer> act;      // one per conv (empty: float activations)
  act_quantizer pool, features, logits;  // max-pool output, fc input, fc output (when active)
  // The data-driven steps' cost (0 when not run): clip search over every layer, and the
  // empirical bias correction (its FP32 means and its pass); clip_mse / aciq_mse: the sample's
  // MSE of the chosen ranges and of ACIQ's, summed over the searched layers.
  double search_seconds = 0, bias_corr_a_seconds = 0, clip_mse = 0, aciq_mse = 0;
  std::vector<Eigen::VectorXd> bias_corr_a;  // mu per conv (bias_corr_a)
};

namespace detail {

// Per-channel bit widths: `bits` everywhere, or allocated by `scale` with the same mean
// within [0, 8] (options.hpp: bit_rule says which rule and for which widths).
inline Eigen::VectorXi channel_bits(const Eigen::VectorXd& scale, int bits, bool allocate, bit_rule rule) {
  const bool applies = rule == bit_rule::paper ? bits <= 4 : bits < 8;
  if (!allocate || !applies) return Eigen::VectorXi::Constant(scale.size(), bits);
  ptq::bit_allocator::params p;
  p.target_bits = bits;
  p.min_bits = 0;
  p.max_bits = 8;
  if (rule == bit_rule::exact) return ptq::bit_allocator::exact(scale, p).bits;
  p.rounding = ptq::bit_rounding::round;
  p.retune = ptq::bit_retune::reference;
  return ptq::bit_allocator::paper(scale, p).bits;
}

// The per-output-channel quantizer of a layer's weights (rows = output channels): min/max
// ranges, `bits` or allocated bits (channel_bits).
template <class T>
ptq::quant_params<T> weight_params(const ptq::row_matrix<T>& w, int bits, const quant_config& cfg, bool allocate) {
  ptq::calibration_statistics s(w.rows());
  s.add(w);
  const ptq::channel_stats st = s.result();
  const Eigen::VectorXi b = channel_bits(st.std, bits, allocate, cfg.rule);
  // A 0-bit channel: the reference collapses it to its minimum; ptq's exact rule to its mean.
  return ptq::quant_params<T>::per_channel(ptq::minmax_ranges(st), b, cfg.rule == bit_rule::paper ? st.min : st.mean);
}

// Weights of one layer (rows = output channels), fake-quantized in place.
inline void quantize_weights(ptq::row_matrix<float>& w, int bits, const quant_config& cfg, bool allocate) {
  const auto p = weight_params(w, bits, cfg, allocate);
  ptq::row_matrix<float> wq(w.rows(), w.cols());
  ptq::gemmlowp_quantizer::fake_quantize(w, p, wq);
  if (cfg.bias_corr_w || cfg.var_corr_w) {
    ptq::bias_corrector::params bp;
    bp.variance = cfg.var_corr_w;
    ptq::bias_corrector::correct(w, wq, bp);
  }
  w.swap(wq);
}

// The reference implementation's ACIQ factors a/b (Laplace) and a/sigma (Gauss), rounded to
// two decimals (int_quantizer.py), for M = 0..8 bits; -1 where it has none.
inline double reference_alpha(ptq::distribution d, ptq::range_kind r, int bits) {
  static constexpr double laplace[2][9] = {{1.05, 1.86, 2.83, 3.89, 5.03, 6.2, 7.41, 8.64, 9.89},
                                           {1.86, 2.83, 3.89, 5.02, 6.2, 7.41, 8.64, 9.89, 11.16}};
  static constexpr double gauss[2][9] = {{-1, 1.24, 1.71, 2.15, 2.55, 2.93, 3.28, 3.61, 3.92},
                                         {-1, 1.71, 2.15, 2.55, 2.93, 3.28, 3.61, 3.92, 4.2}};
  if (bits < 0 || bits > 8) return -1;
  const int u = r == ptq::range_kind::unsigned_range ? 1 : 0;
  return d == ptq::distribution::laplace ? laplace[u][bits] : gauss[u][bits];
}

// The clipping ranges of one layer for per-channel bits b (layer bits `bits`).
inline ptq::channel_ranges clip_ranges(const ptq::channel_stats& st, int bits, const Eigen::VectorXi& b,
                                       const quant_config& cfg, ptq::range_kind kind) {
  if (cfg.clip == clip_mode::none) {  // [min, max] (0 for unsigned), as the reference's min/max quantizer
    ptq::channel_ranges r;
    r.lo = kind == ptq::range_kind::unsigned_range ? Eigen::VectorXd::Zero(st.max.size()) : st.min;
    r.hi = st.max;  // below lo for a channel dead before its ReLU (max < 0): see activation_quantizer
    return r;
  }
  const ptq::distribution d = cfg.clip == clip_mode::laplace ? ptq::distribution::laplace : ptq::distribution::gauss;
  if (cfg.alphas == alpha_mode::exact) return ptq::aciq_ranges(d, st, b, kind);
  // Reference tables: Laplace by each channel's bits, Gauss by the layer's nominal bits (as
  // int_quantizer.py's get_alpha_gaus); widths the tables lack use the exact optimum.
  Eigen::VectorXd alpha(b.size());
  for (index c = 0; c < b.size(); ++c) {
    const int m = d == ptq::distribution::gauss ? bits : b[c];
    const double a = reference_alpha(d, kind, m);
    alpha[c] = a > 0 ? a : ptq::aciq_alpha_bins(d, std::ldexp(1.0, std::max(m, 0)), kind);
  }
  return ptq::aciq_ranges_alpha(d, st, alpha, kind);
}

// The activation quantizer of one conv output from its statistics (and, for clip search /
// choose, its calibration sample: data_steps.hpp; `clip` receives that layer's search).
inline act_quantizer activation_quantizer(const ptq::channel_stats& st, int bits, const quant_config& cfg,
                                          bool unsigned_range, bool allocate,
                                          const ptq::row_matrix<float>* sample = nullptr, layer_clip* clip = nullptr) {
  const ptq::range_kind kind = unsigned_range ? ptq::range_kind::unsigned_range : ptq::range_kind::signed_range;
  // Allocation prior: the reference's default (-bap gaus) is the std for both priors; the
  // exact rule uses the clipping prior's own scale (for search / choose: the search's start).
  const bool laplace = cfg.clip == clip_mode::laplace || (cfg.searched() && cfg.search_dist == ptq::distribution::laplace);
  const Eigen::VectorXd& prior = cfg.rule == bit_rule::exact && laplace ? st.b : st.std;
  act_quantizer q;
  q.bits = channel_bits(prior, bits, allocate, cfg.rule);
  if (cfg.searched()) {
    ptq::detail::require(sample != nullptr && sample->size() > 0, "ptq_example::quantize", "--clip ",
                         clip_name(cfg.clip), " needs the calibration sample (calibration_options::sample_values > 0)");
    layer_clip lc = searched_ranges(*sample, st, q.bits, kind, cfg.per_tensor_a, cfg.search_dist,
                                    cfg.clip == clip_mode::choose);
    q.range = lc.ranges;
    if (clip) *clip = std::move(lc);
  } else {
    q.range = clip_ranges(st, bits, q.bits, cfg, kind);
  }
  // The quantizer's range: a channel dead before its ReLU (unsigned, max < 0) is [0, 0], the
  // constant 0, as the reference's quantizer makes it (its 1e-8 scale floor maps it to ~0).
  ptq::channel_ranges r = q.range;
  r.hi = r.hi.cwiseMax(r.lo);
  // A 0-bit channel: the reference's quantizer outputs the range's offset; ptq's exact rule the mean.
  q.p = ptq::quant_params<float>::per_channel(r, q.bits, cfg.rule == bit_rule::paper ? r.lo : st.mean);
  q.active = true;
  return q;
}

// A per-tensor min/max quantizer over [lo, hi] (the edge quantizers).
inline act_quantizer minmax_quantizer(double lo, double hi, int bits) {
  act_quantizer q;
  q.range.lo = Eigen::VectorXd::Constant(1, lo);
  q.range.hi = Eigen::VectorXd::Constant(1, hi);
  q.bits = Eigen::VectorXi::Constant(1, bits);
  q.p = ptq::quant_params<float>::per_tensor(lo, hi, bits);
  q.active = true;
  return q;
}

}  // namespace detail

// fake_quantize_in_place over the rows of y on the conv worker threads, split at whole
// groups of p.channels() rows (row r is channel r % channels, so each piece starts at
// channel 0). The hooks run between conv jobs, when the workers are idle.
inline void fake_quantize_parallel(ptq::row_map<float> y, const ptq::quant_params<float>& p, int threads) {
  const index group = p.channels(), groups = y.rows() / group;
  const index pieces = std::min<index>(groups, 4 * std::max(1, threads));
  if (pieces <= 1 || y.rows() % group != 0) {
    ptq::gemmlowp_quantizer::fake_quantize_in_place(y, p);  // (its own checks report a bad shape)
    return;
  }
  std::exception_ptr failure;
  std::mutex m;
  detail::worker_pool::instance().run(pieces, threads, [&](index t, int) {
    const index g0 = groups * t / pieces, g1 = groups * (t + 1) / pieces;
    try {
      ptq::gemmlowp_quantizer::fake_quantize_in_place(y.middleRows(g0 * group, (g1 - g0) * group), p);
    } catch (...) {
      std::lock_guard<std::mutex> lock(m);
      if (!failure) failure = std::current_exception();
    }
  });
  if (failure) std::rethrow_exception(failure);
}

struct accuracy {
  double top1 = 0, top5 = 0;
  index images = 0;
  double seconds = 0;
};

// The forward hooks that fake-quantize q's activations (none for float activations).
// cuda: the conv outputs are fake-quantized on the GPU (device.hpp), the rest on the CPU.
inline void activation_hooks(const quantized_net& q, int threads, conv_hook& on_conv, features_hook& on_features,
                             pool_hook& on_pool, bool cuda = false) {
  if (threads <= 0) threads = detail::default_threads();
  if (!q.act.empty() && cuda)
    on_conv = [&q](index layer, ptq::row_map<float> y) {
      resnet_device::fake_quantize_in_place(y.data(), y.rows(), y.cols(), q.act[static_cast<std::size_t>(layer)].p);
    };
  else if (!q.act.empty())
    on_conv = [&q, threads](index layer, ptq::row_map<float> y) {
      fake_quantize_parallel(y, q.act[static_cast<std::size_t>(layer)].p, threads);
    };
  if (q.features.active)
    on_features = [&q](ptq::row_map<float> f) { ptq::gemmlowp_quantizer::fake_quantize_in_place(f, q.features.p); };
  if (q.pool.active)
    on_pool = [&q, threads](ptq::row_map<float> y) { fake_quantize_parallel(y, q.pool.p, threads); };
}

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
      q.act[i] = detail::activation_quantizer(st, first ? edge_bits_a : cfg.abits, cfg, convs[i].feeds_relu,
                                              cfg.bit_alloc_a && !first && !cfg.per_tensor_a, sample, &clips[i]);
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
  if (!cfg.activations_quantized()) {
    if (cfg.bias_corr_a) detail::empirical_bias_correction(q, fp32, cal, cfg);
    return q;
  }
  if (q.net.imagenet_stem()) q.pool = detail::minmax_quantizer(cal.pool.min[0], cal.pool.max[0], edge_bits_a);
  if (cfg.edge == edge_mode::aciq || cfg.quantize_first_last)  // post-ReLU pooled features: non-negative
    q.features = detail::minmax_quantizer(0.0, std::max(cal.features.max[0], 0.0), edge_bits_a);
  else
    q.logits = detail::minmax_quantizer(cal.logits_min, cal.logits_max, edge_bits_a);
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
