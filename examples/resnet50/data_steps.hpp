// data_steps.hpp: the data-driven steps of issue 12 in the ResNet example: clipping searched on a calibration sample, empirical bias correction of conv outputs.
//
// Clip search (quant_config::clip = search | choose; pipeline.hpp's quantize() calls
// searched_ranges for every conv output it clips). calibrate.hpp keeps a bounded sample of
// every conv output (calibration_options::sample_values values per channel: a fixed set of
// pixels per image, every image); ptq::clip_search runs on it from ACIQ's start for the
// statistics the pipeline clips with (calibration::per_channel or per_tensor, in the run's
// protocol), so the start is exactly aciq_ranges(dist, stats, bits, kind) with the exact alpha*
// (the reference's rounded tables, --aciq-alphas reference, differ from it in the third digit;
// the search starts from the exact value either way). Bits first (bit allocation, as for ACIQ),
// then the search with those bits. `choose` is ptq::clip_choice: per layer Laplace, Gauss or
// the searched ranges, whichever measures the lowest MSE on the sample. The searched MSE is
// never above ACIQ's on the sample (clip_search's guarantee); on other images it may be.
//
// Empirical bias correction (quant_config::bias_corr_a; Nagel et al. 2019, ptq/empirical_bias.hpp).
// For conv i in network order, over the correction images (the first `images` calibration
// images, all by default), with every earlier conv already quantized and corrected:
//   mu_i[k] = E[y_fp32,i[k]] - E[y_q,i[k]]      (the conv's output before its activation quantizer)
//   bias_i[k] <- bias_i[k] + mu_i[k]
// E is over every pixel of every image, in double. Since both expectations are over the same
// values, E[y_fp32 - y_q] = E[y_fp32] - E[y_q]: the FP32 means are one FP32 pass (in batches),
// and the quantized network needs no FP32 output beside it. Done literally (correct_conv_biases_ref)
// this is one forward per conv (53 on ResNet-50). correct_conv_biases does the same in ONE forward:
// all correction images go through the quantized network as one batch, and the hook of conv i,
// which sees conv i's output for every image before anything after conv i has run, measures
// mu_i, adds it to that output (what the corrected bias would have given, up to the float
// rounding of bias + mu) and then quantizes it: every later conv sees corrected inputs, as in
// the sequential form. Memory: the forward's 4 activation buffers for the whole batch,
// 4 x (largest activation per image) x images floats (ResNet-50 on 28x28: 37 632 floats per
// image, 512 images: 308 MB); pass fewer images for large inputs.
// The float pipeline corrects the fake-quantized network (its weight quantizers, activation
// quantizers and edge quantizers as evaluate() applies them); int_model.hpp's
// correct_int_biases the integer scheme (its simulation(): its grids, folded weights and
// block-output grids). Composes with the weight corrections (--bias-corr-w / --var-corr-w):
// they are applied to the weights first, mu is the shift they leave.
#pragma once

#include <chrono>
#include <exception>
#include <mutex>
#include <string>
#include <vector>

#include <ptq/clip_search.hpp>
#include <ptq/error.hpp>

#include "calibrate.hpp"
#include "options.hpp"
#include "resnet.hpp"

namespace ptq_example {

// One layer's searched clipping (searched_ranges).
struct layer_clip {
  ptq::channel_ranges ranges;
  std::string method;            // "searched", "aciq_laplace", "aciq_gauss"
  double mse = 0, aciq_mse = 0;  // on the sample, mean over channels: the chosen ranges', ACIQ's (start)
  index evaluations = 0;         // clips measured
};

// The clipping ranges of one conv output from its calibration sample (rows: images x K
// channels, row r is channel r % K) and the statistics the pipeline clips with (K channels,
// or one for per_tensor), for per-channel `bits` (one entry per tensor); see the top.
inline layer_clip searched_ranges(const ptq::row_matrix<float>& sample, const ptq::channel_stats& stats,
                                  const Eigen::VectorXi& bits, ptq::range_kind kind, bool per_tensor,
                                  ptq::distribution start, bool choose) {
  ptq::clip_search_params p;
  p.dist = start;
  p.range = kind;
  p.g = per_tensor ? ptq::granularity::per_tensor : ptq::granularity::per_channel;
  layer_clip out;
  if (choose) {
    const ptq::clip_choice_result r = ptq::clip_choice(sample, stats, bits, p);
    out.ranges = r.ranges;
    out.method = ptq::to_string(r.method);
    out.mse = r.mse.mean();
    out.aciq_mse = start == ptq::distribution::laplace ? r.mse_laplace : r.mse_gauss;
    out.evaluations = r.search.evaluations;
    return out;
  }
  const ptq::clip_search_result r = ptq::clip_search(sample, stats, bits, p);
  out.ranges = r.ranges;
  out.method = "searched";
  out.mse = r.mse.mean();
  out.aciq_mse = r.aciq_mse.mean();
  out.evaluations = r.evaluations;
  return out;
}

// The hooks a correction pass quantizes with (empty: that tensor stays float).
struct pass_hooks {
  conv_hook quantize;  // quantizes conv i's output in place (after the correction is added)
  pool_hook pool;
  block_hook block;
};

namespace detail {

// Per-channel mean of y ((N*K) x P, row r channel r % K), in double.
inline Eigen::VectorXd channel_means(const ptq::row_map<float>& y, index K) {
  Eigen::VectorXd s = Eigen::VectorXd::Zero(K);
  for (index r = 0; r < y.rows(); ++r) s[r % K] += y.row(r).cast<double>().sum();
  return s / static_cast<double>((y.rows() / K) * y.cols());
}

// y[r, :] += mu[r % K] (in float).
inline void add_channel_shift(ptq::row_map<float> y, const Eigen::VectorXd& mu) {
  const index K = mu.size();
  for (index r = 0; r < y.rows(); ++r) y.row(r).array() += static_cast<float>(mu[r % K]);
}

inline void check_pass(const resnet& net, const std::vector<Eigen::VectorXd>& target, const char* where) {
  ptq::detail::require(target.size() == net.convs().size(), where, "target has ", target.size(),
                       " conv means, the network has ", net.convs().size(), " convs");
  for (std::size_t i = 0; i < target.size(); ++i) {
    ptq::detail::require(target[i].size() == net.convs()[i].K, where, "target[", i, "] has ", target[i].size(),
                         " channels, conv ", net.convs()[i].name, " has ", net.convs()[i].K);
    ptq::detail::require(target[i].allFinite(), where, "target[", i, "] is not finite");
  }
}

}  // namespace detail

// Per-channel mean of every conv output of `net` (before any quantizer: the conv_hook's
// view) over the images x ((N*C) x (H*W)), in double, `batch` images per forward.
inline std::vector<Eigen::VectorXd> conv_output_means(const resnet& net, const Eigen::Ref<const ptq::row_matrix<float>>& x,
                                                      index n, index H, index W, index batch = 64) {
  const auto& convs = net.convs();
  std::vector<Eigen::VectorXd> sum(convs.size());
  for (std::size_t i = 0; i < convs.size(); ++i) sum[i] = Eigen::VectorXd::Zero(convs[i].K);
  std::vector<index> count(convs.size(), 0);
  const index C = x.rows() / std::max<index>(n, 1);
  for (index first = 0; first < n; first += batch) {
    const index m = std::min(batch, n - first);
    net.forward(x.middleRows(first * C, m * C), H, W, [&](index layer, ptq::row_map<float> y) {
      const auto l = static_cast<std::size_t>(layer);
      const index K = convs[l].K;
      for (index r = 0; r < y.rows(); ++r) sum[l][r % K] += y.row(r).cast<double>().sum();
      count[l] += m * y.cols();
    });
  }
  for (std::size_t i = 0; i < convs.size(); ++i) sum[i] /= static_cast<double>(std::max<index>(count[i], 1));
  return sum;
}

// The empirical bias correction in one forward (see the top): x (n images) through `net` as
// one batch; conv i's hook measures mu_i = target[i] - E[y_i], adds it to y_i and to conv i's
// bias, then runs hooks.quantize. Returns mu per conv. `net` is used as given (its weights
// quantized already); its workspace grows to the whole batch (pass a copy to keep it small).
inline std::vector<Eigen::VectorXd> correct_conv_biases(resnet& net, const std::vector<Eigen::VectorXd>& target,
                                                        const Eigen::Ref<const ptq::row_matrix<float>>& x, index H,
                                                        index W, const pass_hooks& hooks) {
  constexpr const char* where = "ptq_example::correct_conv_biases";
  detail::check_pass(net, target, where);
  std::vector<Eigen::VectorXd> mu(target.size());
  std::vector<ptq::vector<float>> bias;
  for (const auto& L : net.convs()) bias.push_back(L.bias);
  net.forward(
      x, H, W,
      [&](index layer, ptq::row_map<float> y) {
        const auto l = static_cast<std::size_t>(layer);
        const index K = target[l].size();
        mu[l] = target[l] - detail::channel_means(y, K);
        detail::add_channel_shift(y, mu[l]);
        if (hooks.quantize) hooks.quantize(layer, y);
      },
      {}, hooks.pool, hooks.block);
  // The biases change after the pass (forward reads them while it runs).
  for (std::size_t i = 0; i < mu.size(); ++i)
    for (index k = 0; k < mu[i].size(); ++k)
      net.convs()[i].bias[k] = static_cast<float>(static_cast<double>(bias[i][k]) + mu[i][k]);
  return mu;
}

// The plain twin: one forward per conv, in network order; forward i measures conv i's output
// mean with the biases of convs 0..i-1 already corrected and folds mu_i into conv i's bias.
inline std::vector<Eigen::VectorXd> correct_conv_biases_ref(resnet& net, const std::vector<Eigen::VectorXd>& target,
                                                            const Eigen::Ref<const ptq::row_matrix<float>>& x, index H,
                                                            index W, const pass_hooks& hooks) {
  constexpr const char* where = "ptq_example::correct_conv_biases_ref";
  detail::check_pass(net, target, where);
  std::vector<Eigen::VectorXd> mu(target.size());
  for (std::size_t i = 0; i < target.size(); ++i) {
    net.forward(
        x, H, W,
        [&](index layer, ptq::row_map<float> y) {
          if (static_cast<std::size_t>(layer) == i) mu[i] = target[i] - detail::channel_means(y, target[i].size());
          if (hooks.quantize) hooks.quantize(layer, y);
        },
        {}, hooks.pool, hooks.block);
    auto& b = net.convs()[i].bias;
    for (index k = 0; k < b.size(); ++k) b[k] = static_cast<float>(static_cast<double>(b[k]) + mu[i][k]);
  }
  return mu;
}

// The correction images of a calibration: its first `images` (0: all).
inline image_set correction_images(const calibration& cal, index images, const char* where) {
  ptq::detail::require(cal.images.data != nullptr && cal.images.count > 0, where,
                       "the empirical bias correction (--bias-corr-a) needs the calibration images: this "
                       "calibration has none");
  ptq::detail::require(images >= 0, where, "images = ", images, " is negative");
  image_set s = cal.images;
  if (images > 0) s.count = std::min(images, s.count);
  return s;
}

// Runs f on every task in [0, count) on the worker pool; the first exception is rethrown.
template <class F>
void parallel_tasks(index count, const F& f) {
  std::exception_ptr failure;
  std::mutex m;
  detail::parallel_for(count, detail::default_threads(), [&](index t, int) {
    try {
      f(t);
    } catch (...) {
      std::lock_guard<std::mutex> lock(m);
      if (!failure) failure = std::current_exception();
    }
  });
  if (failure) std::rethrow_exception(failure);
}

}  // namespace ptq_example
