// quantizers.hpp: the quantizers of one configuration on a ResNet: weight grids, activation quantizers, the forward's hooks.
//
// What pipeline.hpp's quantize() assembles and the data-driven steps (data_steps.hpp,
// reconstruct.hpp) build on: quantized_net (a network with quantized weights and its
// activation quantizers), the per-channel weight grid of a layer (weight_params: min/max,
// bits or allocated bits), the activation quantizer of a conv output (ACIQ or min/max, or
// searched: data_steps.hpp), and activation_hooks(), the forward hooks that fake-quantize.
#pragma once

#include <exception>
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
  double adaround_seconds = 0;               // learned rounding (reconstruct.hpp)
  double adaround_rtn_error = 0, adaround_error = 0;  // held-out reconstruction error, summed over convs
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
// ranges (cfg.clip_w_search: searched, see below), `bits` or allocated bits (channel_bits).
template <class T>
ptq::quant_params<T> weight_params(const ptq::row_matrix<T>& w, int bits, const quant_config& cfg, bool allocate) {
  ptq::calibration_statistics s(w.rows());
  s.add(w);
  const ptq::channel_stats st = s.result();
  const Eigen::VectorXi b = channel_bits(st.std, bits, allocate, cfg.rule);
  // A 0-bit channel: the reference collapses it to its minimum; ptq's exact rule to its mean.
  const Eigen::VectorXd& constant = cfg.rule == bit_rule::paper ? st.min : st.mean;
  ptq::channel_ranges r = ptq::minmax_ranges(st);
  const auto pm = ptq::quant_params<T>::per_channel(r, b, constant);
  if (!cfg.clip_w_search) return pm;
  // Per row, the clip minimizing the row's own quantization MSE (the weights are all the data
  // there is), from ACIQ's Laplace range; a row keeps min/max where that measures no worse
  // (clip_search only promises <= ACIQ's; cs.mse is measured over every value of the row on
  // fake_quantize's grid), and 0-bit rows keep it.
  const ptq::clip_search_result cs = ptq::clip_search(w, st, b, ptq::clip_search_params{});
  ptq::row_matrix<T> qm(w.rows(), w.cols());
  ptq::gemmlowp_quantizer::fake_quantize(w, pm, qm);
  for (index k = 0; k < w.rows(); ++k) {
    const double em =
        (qm.row(k).template cast<double>() - w.row(k).template cast<double>()).squaredNorm() / double(w.cols());
    if (b[k] > 0 && cs.mse[k] < em) r.lo[k] = cs.ranges.lo[k], r.hi[k] = cs.ranges.hi[k];
  }
  return ptq::quant_params<T>::per_channel(r, b, constant);
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

// The scale an activation's bit allocation weighs its channels by: the reference's default
// (-bap gaus) is the std for both priors; the exact rule uses the clipping prior's own scale
// (for search / choose: the search's start).
inline const Eigen::VectorXd& allocation_prior(const ptq::channel_stats& st, const quant_config& cfg) {
  const bool laplace = cfg.clip == clip_mode::laplace || (cfg.searched() && cfg.search_dist == ptq::distribution::laplace);
  return cfg.rule == bit_rule::exact && laplace ? st.b : st.std;
}

// The activation quantizer of one conv output from its statistics and its channels' bits
// (`channel_bits`: allocated or not, pipeline.hpp's activation_bits; `bits` is the layer's
// nominal width) and, for clip search / choose, its calibration sample (data_steps.hpp;
// `clip` receives that layer's search).
inline act_quantizer activation_quantizer(const ptq::channel_stats& st, int bits, const Eigen::VectorXi& channel_bits,
                                          const quant_config& cfg, bool unsigned_range,
                                          const ptq::row_matrix<float>* sample = nullptr, layer_clip* clip = nullptr) {
  const ptq::range_kind kind = unsigned_range ? ptq::range_kind::unsigned_range : ptq::range_kind::signed_range;
  ptq::detail::require(channel_bits.size() == st.mean.size(), "ptq_example::activation_quantizer", channel_bits.size(),
                       " channel widths for ", st.mean.size(), " channels");
  act_quantizer q;
  q.bits = channel_bits;
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

}  // namespace ptq_example
