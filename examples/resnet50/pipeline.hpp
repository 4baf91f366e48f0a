// pipeline.hpp: the paper's post-training pipeline on a ResNet: calibrate once, then quantize per configuration.
//
// METHOD.md section 5 (the reference's inference_sim.py), with BatchNorm already folded:
//  - calibrate(): run the FP32 network over the calibration images and accumulate, for
//    every conv output, per-channel (and per-tensor) statistics in the reference's
//    batch_mean mode, plus per-tensor statistics of the pooled features (fc input).
//  - quantize(): for one quant_config, a copy of the network whose weights are
//    fake-quantized per output channel over min/max (bit allocation by per-channel std
//    and bias / variance correction optional), and the activation quantizers: every conv
//    output per channel (or per tensor), unsigned range when it feeds a ReLU, clipped by
//    ACIQ (Laplace: b, Gauss: std) or min/max, with optional bit allocation.
//    As in the reference, the first conv (weights and output) and the classifier
//    (weights and its input, the pooled features) stay at 8 bits unless
//    quantize_first_last is set.
//  - evaluate(): top-1 / top-5 of the quantized network, activations fake-quantized in
//    place by the forward's hooks.
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

#include "device.hpp"
#include "options.hpp"
#include "resnet.hpp"

namespace ptq_example {

// A float NCHW batch set in memory: count images of C x H x W.
struct image_set {
  const float* data = nullptr;
  index count = 0, C = 0, H = 0, W = 0;
  const float* image(index i) const { return data + i * C * H * W; }
};

// Progress on stderr: "label [#####.....] 512/10000".
class progress_bar {
 public:
  progress_bar(std::string label, index total, bool enabled) : label_(std::move(label)), total_(total), on_(enabled) {
    draw(0);
  }
  void draw(index done) {
    if (!on_) return;
    const int width = 30, filled = total_ > 0 ? static_cast<int>(width * done / total_) : width;
    std::fprintf(stderr, "\r  %-40s [%s%s] %td/%td", label_.c_str(), std::string(filled, '#').c_str(),
                 std::string(width - filled, '.').c_str(), done, total_);
    std::fflush(stderr);
  }
  void finish() {
    if (on_) std::fprintf(stderr, "\r%*s\r", 100, "");
  }

 private:
  std::string label_;
  index total_;
  bool on_;
};

// Per-layer calibration statistics of the FP32 network.
struct calibration {
  std::vector<ptq::channel_stats> per_channel;  // one per conv: channels = K
  std::vector<ptq::channel_stats> per_tensor;   // one per conv: channels = 1 (if asked for)
  ptq::channel_stats features;                  // pooled features, per tensor
  index images = 0;
};

// per_tensor: also per-tensor statistics of every conv output (for --per-tensor-a).
// cuda: the per-channel statistics are reduced on the GPU (device.hpp); the convs, the
// per-tensor and the features statistics stay on the CPU.
inline calibration calibrate(const resnet& net, const image_set& set, index batch, bool progress, bool per_tensor,
                             bool cuda = false) {
  const auto& convs = net.convs();
  std::vector<ptq::calibration_statistics> pc, pt;
  std::vector<resnet_device::device_calibrator> dc;
  for (const auto& L : convs) {
    if (cuda)
      dc.emplace_back(L.K);
    else
      pc.emplace_back(L.K);
    if (per_tensor) pt.emplace_back(1);
  }
  ptq::calibration_statistics feat(1);
  progress_bar bar("calibrating", set.count, progress);
  for (index first = 0; first < set.count; first += batch) {
    const index n = std::min(batch, set.count - first);
    const Eigen::Map<const ptq::row_matrix<float>> x(set.image(first), n * set.C, set.H * set.W);
    net.forward(
        x, set.H, set.W,
        [&](index layer, ptq::row_map<float> y) {
          const auto l = static_cast<std::size_t>(layer);
          if (cuda)
            dc[l].add(y.data(), y.rows() / convs[l].K, y.cols());
          else
            pc[l].add(y);
          if (per_tensor) pt[static_cast<std::size_t>(layer)].add(y);
        },
        [&](ptq::row_map<float> f) { feat.add(f); });
    bar.draw(first + n);
  }
  bar.finish();
  calibration c;
  for (std::size_t i = 0; i < convs.size(); ++i) {
    c.per_channel.push_back(cuda ? dc[i].result() : pc[i].result());
    if (per_tensor) c.per_tensor.push_back(pt[i].result());
  }
  c.features = feat.result();
  c.images = set.count;
  return c;
}

// A network with quantized weights and the activation quantizers of one configuration.
struct quantized_net {
  resnet net;
  std::vector<ptq::quant_params<float>> act;  // one per conv (empty vector: float activations)
  ptq::quant_params<float> features;          // fc input (used when has_features)
  bool has_act = false, has_features = false;
};

namespace detail {

// Per-channel bit widths: `bits` everywhere, or the exact integer allocation by `scale`
// with the same mean, within [0, 8] (the reference's clamp).
inline Eigen::VectorXi channel_bits(const Eigen::VectorXd& scale, int bits, bool allocate) {
  if (!allocate || bits >= 8) return Eigen::VectorXi::Constant(scale.size(), bits);
  ptq::bit_allocator::params p;
  p.target_bits = bits;
  p.min_bits = 0;
  p.max_bits = 8;
  return ptq::bit_allocator::exact(scale, p).bits;
}

// Weights of one layer (rows = output channels), fake-quantized in place.
inline void quantize_weights(ptq::row_matrix<float>& w, int bits, const quant_config& cfg, bool allocate) {
  ptq::calibration_statistics s(w.rows());
  s.add(w);
  const ptq::channel_stats st = s.result();
  const Eigen::VectorXi b = channel_bits(st.std, bits, allocate);
  const auto p = ptq::quant_params<float>::per_channel(ptq::minmax_ranges(st), b, st.mean);
  ptq::row_matrix<float> wq(w.rows(), w.cols());
  ptq::gemmlowp_quantizer::fake_quantize(w, p, wq);
  if (cfg.bias_corr_w || cfg.var_corr_w) {
    ptq::bias_corrector::params bp;
    bp.variance = cfg.var_corr_w;
    ptq::bias_corrector::correct(w, wq, bp);
  }
  w.swap(wq);
}

// The activation quantizer of one conv output from its statistics.
inline ptq::quant_params<float> activation_params(const ptq::channel_stats& st, int bits, const quant_config& cfg,
                                                  bool unsigned_range, bool allocate) {
  const ptq::range_kind kind = unsigned_range ? ptq::range_kind::unsigned_range : ptq::range_kind::signed_range;
  const Eigen::VectorXd& scale = cfg.clip == clip_mode::laplace ? st.b : st.std;
  const Eigen::VectorXi b = channel_bits(scale, bits, allocate);
  ptq::channel_ranges r;
  if (cfg.clip == clip_mode::none)
    r = ptq::minmax_ranges(st, kind);
  else
    r = ptq::aciq_ranges(cfg.clip == clip_mode::laplace ? ptq::distribution::laplace : ptq::distribution::gauss, st,
                         b, kind);
  return ptq::quant_params<float>::per_channel(r, b, st.mean);
}

}  // namespace detail

inline quantized_net quantize(const resnet& fp32, const calibration& cal, const quant_config& cfg) {
  quantized_net q{fp32, {}, {}, false, false};
  auto& convs = q.net.convs();
  const int edge_bits_w = cfg.quantize_first_last ? cfg.wbits : std::min(cfg.wbits, 8);
  const int edge_bits_a = cfg.quantize_first_last ? cfg.abits : std::min(cfg.abits, 8);
  if (cfg.weights_quantized()) {
    for (std::size_t i = 0; i < convs.size(); ++i) {
      const bool first = i == 0;
      detail::quantize_weights(convs[i].weight, first ? edge_bits_w : cfg.wbits, cfg, cfg.bit_alloc_w && !first);
    }
    detail::quantize_weights(q.net.fc().weight, edge_bits_w, cfg, false);
  }
  if (cfg.activations_quantized()) {
    q.has_act = q.has_features = true;
    for (std::size_t i = 0; i < convs.size(); ++i) {
      const bool first = i == 0;
      const ptq::channel_stats& st = cfg.per_tensor_a ? cal.per_tensor[i] : cal.per_channel[i];
      q.act.push_back(detail::activation_params(st, first ? edge_bits_a : cfg.abits, cfg, convs[i].feeds_relu,
                                                cfg.bit_alloc_a && !first && !cfg.per_tensor_a));
    }
    // Pooled post-ReLU features: non-negative, per tensor, min/max.
    q.features = ptq::quant_params<float>::per_channel(
        ptq::minmax_ranges(cal.features, ptq::range_kind::unsigned_range), edge_bits_a);
  }
  return q;
}

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

// Top-1 / top-5 over `set` with labels, activations fake-quantized by q's hooks.
// The forward hooks that fake-quantize q's activations (none for float activations).
// cuda: the conv outputs are fake-quantized on the GPU (device.hpp), the features on the CPU.
inline void activation_hooks(const quantized_net& q, int threads, conv_hook& on_conv, features_hook& on_features,
                             bool cuda = false) {
  if (threads <= 0) threads = detail::default_threads();
  if (q.has_act && cuda)
    on_conv = [&q](index layer, ptq::row_map<float> y) {
      resnet_device::fake_quantize_in_place(y.data(), y.rows(), y.cols(), q.act[static_cast<std::size_t>(layer)]);
    };
  else if (q.has_act)
    on_conv = [&q, threads](index layer, ptq::row_map<float> y) {
      fake_quantize_parallel(y, q.act[static_cast<std::size_t>(layer)], threads);
    };
  if (q.has_features)
    on_features = [&q](ptq::row_map<float> f) { ptq::gemmlowp_quantizer::fake_quantize_in_place(f, q.features); };
}

inline accuracy evaluate(const quantized_net& q, const image_set& set, const std::vector<std::int64_t>& labels,
                         index batch, const std::string& label, bool progress, int threads = 0, bool cuda = false) {
  const auto t0 = std::chrono::steady_clock::now();
  index hit1 = 0, hit5 = 0;
  conv_hook on_conv;
  features_hook on_features;
  activation_hooks(q, threads, on_conv, on_features, cuda);
  progress_bar bar(label, set.count, progress);
  for (index first = 0; first < set.count; first += batch) {
    const index n = std::min(batch, set.count - first);
    const Eigen::Map<const ptq::row_matrix<float>> x(set.image(first), n * set.C, set.H * set.W);
    const ptq::row_matrix<float> logits = q.net.forward(x, set.H, set.W, on_conv, on_features);
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

}  // namespace ptq_example
