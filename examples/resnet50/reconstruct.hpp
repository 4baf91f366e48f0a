// reconstruct.hpp: learned rounding (ptq::adaround) of a quantized ResNet's conv weights, layer by layer on calibration images.
//
// learn_rounding(q, fp32, calib, cfg, o) replaces the round-to-nearest weights that
// pipeline.hpp's quantize() gave q with AdaRound's (include/ptq/adaround.hpp), in network
// order, each conv on the grid quantize() uses (detail::weight_params: per output channel,
// min/max, the configuration's bits and bit allocation), so the codes stay ordinary codes:
//   X_i  = conv i's input in the quantized network q (activations fake-quantized by q's
//          quantizers, every earlier conv already rounded by this function), at sampled
//          output pixels, as im2col columns (D = C R S rows, KCRS order, zero padding);
//   Y_i  = the FP32 network's conv i output minus its bias at the same pixels;
//   W_i  = ptq::adaround(fp32 weights, grid, X_i, Y_i): min over the rounding of
//          ||W_soft X - Y||^2 (+ the annealed regularizer), so each layer corrects the error
//          its quantized input brings (the asymmetric reconstruction of AdaRound section 5 and BRECQ);
//          with o.relu_output, through the ReLU of the convs that feed one:
//          ||relu(W_soft X + b) - relu(Y + b)||^2 (AdaRound's eq. 25 with its activation function).
// Then, when the configuration asks for it, the weight bias / variance correction on the
// learned weights (as quantize_weights does on rounded ones). The classifier keeps quantize()'s
// weights (8 bits by default). Columns: o.columns output pixels per layer drawn without
// replacement from the first o.images calibration images (std::mt19937_64 seeded by o.seed +
// layer: the same for every run), split into fitting columns and held-out columns
// (o.held_out of them) on which the report measures the reconstruction error of round-to-
// nearest and of the learned rounding. Cost per layer: one forward of q over o.images
// images to reach conv i's input, plus the optimization (4 K D batch flops per iteration).
// Time budget: o.seconds (finite) bounds the whole pass; before each conv the time left is
// spread evenly over the convs left (detail::budget_share), and a conv that reaches its share
// stops its iterations there (ptq::adaround_params::seconds; at least one iteration each).
// A conv that finishes early leaves its time to the next ones. With a budget that stops any
// conv, the result depends on the machine's speed; the report lists the iterations done.
// int_reconstruct.hpp does the same on the integer scheme's folded weights (int_model.hpp)
// with the same samples, targets and capture (detail::sample_targets, capture_input).
#pragma once

#include <algorithm>
#include <chrono>
#include <cmath>
#include <cstdint>
#include <cstdio>
#include <limits>
#include <numeric>
#include <random>
#include <string>
#include <vector>

#include <ptq/adaround.hpp>
#include <ptq/ptq.hpp>

#include "calibrate.hpp"
#include "options.hpp"
#include "quantizers.hpp"
#include "resnet.hpp"

namespace ptq_example {

struct rounding_options {
  index images = 64;         // calibration images the layers see (the first ones of the set)
  index columns = 4096;      // output pixels sampled per layer for the fit
  index held_out = 1024;     // further pixels per layer on which the report measures the error
  std::uint64_t seed = 0;    // of the pixel samples (and, + layer, of AdaRound's batches)
  ptq::adaround_params layer = default_layer();  // per-layer optimizer settings
  bool progress = false;     // one line per layer on stderr
  double seconds = std::numeric_limits<double>::infinity();  // wall-clock budget of the whole pass
  // Reconstruct through the ReLU of the convs that feed one (the stem, each block's conv1 and,
  // in a bottleneck, conv2): errors where both outputs are negative cost nothing
  // (adaround_params::output_lo = -bias). The others (the last conv of a block, the shortcut)
  // feed the residual add and stay linear. The default, as resnet_ptq's (quant_config::adaround_relu).
  bool relu_output = true;

  static ptq::adaround_params default_layer() {
    ptq::adaround_params p;
    p.iterations = 2000;
    p.batch = 256;
    return p;
  }
  // The defaults with a configuration's --adaround-images, --adaround-iters and --adaround-seconds.
  static rounding_options of(const quant_config& cfg) {
    rounding_options o;
    o.images = cfg.adaround_images;
    o.layer.iterations = cfg.adaround_iters;
    if (cfg.adaround_seconds > 0) o.seconds = cfg.adaround_seconds;
    o.relu_output = cfg.adaround_relu;
    return o;
  }
};

// Per conv: the reconstruction error ||W X - Y||^2 / columns on the held-out pixels with
// round-to-nearest (rtn) and the learned rounding, the share of codes that differ from
// round-to-nearest, the optimizer's iterations done and the seconds the layer took.
struct rounding_report {
  std::vector<std::string> layer;
  std::vector<double> rtn_error, learned_error, changed, seconds;
  std::vector<long> iterations;
  double total_seconds = 0;
  double rtn_total() const { return std::accumulate(rtn_error.begin(), rtn_error.end(), 0.0); }
  double learned_total() const { return std::accumulate(learned_error.begin(), learned_error.end(), 0.0); }
};

namespace detail {

// The time budget of the next layer (or unit) of a pass with budget `total` seconds that
// started at `start`, `left` layers to go including this one: what is left, spread evenly;
// at least 1 ns (the optimizer then does its one iteration). Infinite without a budget.
inline double budget_share(double total, std::chrono::steady_clock::time_point start, std::size_t left) {
  if (!std::isfinite(total)) return std::numeric_limits<double>::infinity();
  const double used = std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
  return std::max(1e-9, (total - used) / static_cast<double>(std::max<std::size_t>(left, 1)));
}

// The ReLU after conv F, in the units of the targets (F's output minus its bias): each row's
// output clamped to [-b_k, inf) in the reconstruction (rounding_options::relu_output).
inline void relu_output(const conv_layer& F, ptq::adaround_params& ap) {
  if (!F.feeds_relu) return;
  ap.output_lo.resize(F.K);
  ap.output_hi.setConstant(F.K, std::numeric_limits<double>::infinity());
  for (index k = 0; k < F.K; ++k) ap.output_lo[k] = -static_cast<double>(F.bias[k]);
}

// Distinct (image, pixel) positions: n of them drawn from images x pixels without replacement.
inline std::vector<index> sample_positions(index images, index pixels, index n, std::uint64_t seed) {
  const index total = images * pixels;
  std::vector<index> all(static_cast<std::size_t>(total));
  for (index i = 0; i < total; ++i) all[static_cast<std::size_t>(i)] = i;
  std::mt19937_64 g(seed);
  n = std::min(n, total);
  for (index i = 0; i < n; ++i) {  // partial Fisher-Yates; the modulo bias is below total / 2^64
    const index j = i + static_cast<index>(g() % static_cast<std::uint64_t>(total - i));
    std::swap(all[static_cast<std::size_t>(i)], all[static_cast<std::size_t>(j)]);
  }
  all.resize(static_cast<std::size_t>(n));
  return all;
}

// im2col columns of conv L at output positions pos (image * OH * OW + pixel) of the NCHW
// tensor x ((n*C) x (H*W)): column j = patch of position j, rows (c, r, s), 0 outside the image.
inline Eigen::MatrixXf im2col_at(const conv_layer& L, const float* x, index H, index W, const std::vector<index>& pos) {
  const index OH = L.out_size(H), OW = (W + 2 * L.pad - L.S) / L.stride + 1;
  Eigen::MatrixXf cols(L.C * L.R * L.S, static_cast<index>(pos.size()));
  for (std::size_t j = 0; j < pos.size(); ++j) {
    const index img = pos[j] / (OH * OW), p = pos[j] % (OH * OW), oy = p / OW, ox = p % OW;
    for (index c = 0; c < L.C; ++c)
      for (index r = 0; r < L.R; ++r)
        for (index s = 0; s < L.S; ++s) {
          const index iy = oy * L.stride - L.pad + r, ix = ox * L.stride - L.pad + s;
          const bool in = iy >= 0 && iy < H && ix >= 0 && ix < W;
          cols((c * L.R + r) * L.S + s, static_cast<index>(j)) = in ? x[((img * L.C + c) * H + iy) * W + ix] : 0.0f;
        }
  }
  return cols;
}

// Output values of a conv (NCHW (n*K) x P) at positions pos, minus the bias: K x pos.size().
inline Eigen::MatrixXf outputs_at(ptq::row_map<float> y, const conv_layer& L, const std::vector<index>& pos) {
  const index P = y.cols();
  Eigen::MatrixXf out(L.K, static_cast<index>(pos.size()));
  for (std::size_t j = 0; j < pos.size(); ++j) {
    const index img = pos[j] / P, p = pos[j] % P;
    for (index k = 0; k < L.K; ++k) out(k, static_cast<index>(j)) = y(img * L.K + k, p) - L.bias[k];
  }
  return out;
}

// Where conv i reads its input in the forward: the image (stem), a block's input, or the
// ReLU of an earlier conv of the same block.
struct input_source {
  enum kind_t { image, block_input, conv_relu } kind = image;
  index block = -1;  // block_input: the block
  index conv = -1;   // conv_relu: the conv
};

inline input_source source_of(const resnet& net, index i) {
  input_source s;
  if (i == 0) return s;
  const auto& blocks = net.blocks();
  for (std::size_t b = 0; b < blocks.size(); ++b) {
    const resnet_block& bl = blocks[b];
    if (i == bl.conv1 || i == bl.downsample) {
      s.kind = input_source::block_input;
      s.block = static_cast<index>(b);
      return s;
    }
    if (i == bl.conv2) {
      s.kind = input_source::conv_relu;
      s.conv = bl.conv1;
      return s;
    }
    if (i == bl.conv3) {
      s.kind = input_source::conv_relu;
      s.conv = bl.conv2;
      return s;
    }
  }
  ptq::detail::fail("ptq_example::source_of", "conv ", i, " belongs to no block");
}

// A conv's input captured in a forward: NCHW (n*C) x (H*W) with its height and width.
struct captured_input {
  ptq::row_matrix<float> x;
  index H = 0, W = 0;
};

// Conv i's input in net's forward with the hooks that quantize its activations (on_conv on
// every conv output, on_pool on the stem's max-pool, on_block on every block output; each
// may be empty), on images x: NCHW (n*C) x (H*W) with its height and width. Conv 0 reads x
// itself (quantize it first when the scheme quantizes the input).
inline captured_input capture_input(const resnet& net, index i, const Eigen::Map<const ptq::row_matrix<float>>& x,
                                    index H, index W, const conv_hook& on_conv, const pool_hook& on_pool = {},
                                    const block_hook& on_block = {}, const features_hook& on_features = {}) {
  const input_source src = source_of(net, i);
  captured_input out;
  if (src.kind == input_source::image) {
    out.x = x;
    out.H = H;
    out.W = W;
    return out;
  }
  auto keep = [&](ptq::row_map<float> y, bool relu) {
    out.x = y;
    if (relu) out.x = out.x.cwiseMax(0.0f);
  };
  auto set_hw = [&](index h, index w) {
    out.H = h;
    out.W = w;
  };
  // Output sizes: follow the geometry from the input size.
  std::vector<index> oh(net.convs().size()), ow(net.convs().size());
  {
    index h = H, w = W;
    auto step = [&](index li, index& hh, index& ww) {
      const conv_layer& L = net.convs()[static_cast<std::size_t>(li)];
      hh = L.out_size(hh);
      ww = (ww + 2 * L.pad - L.S) / L.stride + 1;
      oh[static_cast<std::size_t>(li)] = hh;
      ow[static_cast<std::size_t>(li)] = ww;
    };
    step(0, h, w);
    if (net.imagenet_stem()) h = (h - 1) / 2 + 1, w = (w - 1) / 2 + 1;
    for (const resnet_block& b : net.blocks()) {
      index h1 = h, w1 = w;
      step(b.conv1, h1, w1);
      step(b.conv2, h1, w1);
      if (b.conv3 >= 0) step(b.conv3, h1, w1);
      if (b.downsample >= 0) {
        index h2 = h, w2 = w;
        step(b.downsample, h2, w2);
      }
      h = h1, w = w1;
    }
  }
  const conv_hook hook = [&](index layer, ptq::row_map<float> y) {
    if (on_conv) on_conv(layer, y);
    const auto l = static_cast<std::size_t>(layer);
    if (src.kind == input_source::conv_relu && layer == src.conv) {
      keep(y, true);
      set_hw(oh[l], ow[l]);
    }
    if (src.kind == input_source::block_input && src.block == 0 && layer == 0 && !net.imagenet_stem()) {
      keep(y, true);
      set_hw(oh[l], ow[l]);
    }
  };
  const pool_hook pool = [&](ptq::row_map<float> y) {
    if (on_pool) on_pool(y);
    if (src.kind == input_source::block_input && src.block == 0) {
      keep(y, false);
      set_hw((oh[0] - 1) / 2 + 1, (ow[0] - 1) / 2 + 1);
    }
  };
  const block_hook blk = [&](index b, ptq::row_map<float> y) {
    if (on_block) on_block(b, y);
    if (src.kind == input_source::block_input && b == src.block - 1) {
      keep(y, false);
      const resnet_block& bl = net.blocks()[static_cast<std::size_t>(b)];
      const auto last = static_cast<std::size_t>(bl.last());
      set_hw(oh[last], ow[last]);
    }
  };
  net.forward(x, H, W, hook, on_features, pool, blk);
  ptq::detail::require(out.x.size() > 0, "ptq_example::capture_input", "conv ", i, "'s input was not seen");
  return out;
}

// Conv i's input in q's forward (activations fake-quantized by q's quantizers).
inline captured_input capture_input(const quantized_net& q, index i, const Eigen::Map<const ptq::row_matrix<float>>& x,
                                    index H, index W) {
  conv_hook on_conv;
  features_hook on_features;
  pool_hook on_pool;
  activation_hooks(q, 0, on_conv, on_features, on_pool);
  return capture_input(q.net, i, x, H, W, on_conv, on_pool, {}, on_features);
}

// Eigen::setNbThreads(1) while alive. Eigen under OpenMP (this example links it) would split
// every small GEMM of the optimizer over an OpenMP team of its own, per iteration: one
// thread per GEMM, adaround's threads split the rows (and the result does not depend on the
// thread count).
struct one_eigen_thread {
  int saved = Eigen::nbThreads();
  one_eigen_thread() { Eigen::setNbThreads(1); }
  ~one_eigen_thread() { Eigen::setNbThreads(saved); }
  one_eigen_thread(const one_eigen_thread&) = delete;
  one_eigen_thread& operator=(const one_eigen_thread&) = delete;
};

// Every conv's sampled output positions (fit and held out) and the FP32 targets there (the
// conv output minus its bias), from one FP32 forward over the n images x; see the top of
// this file.
struct rounding_samples {
  std::vector<std::vector<index>> fit, test;
  std::vector<Eigen::MatrixXf> y_fit, y_test;
};

inline rounding_samples sample_targets(const resnet& fp32, const Eigen::Map<const ptq::row_matrix<float>>& x, index n,
                                       index H, index W, const rounding_options& o) {
  const auto& convs = fp32.convs();
  const auto L = convs.size();
  rounding_samples s;
  s.fit.resize(L);
  s.test.resize(L);
  s.y_fit.resize(L);
  s.y_test.resize(L);
  fp32.forward(x, H, W, [&](index li, ptq::row_map<float> y) {
    const auto l = static_cast<std::size_t>(li);
    std::vector<index> pos = sample_positions(n, y.cols(), o.columns + o.held_out, o.seed + static_cast<std::uint64_t>(li));
    const index nfit = std::max<index>(1, static_cast<index>(pos.size()) * o.columns / (o.columns + o.held_out));
    s.fit[l].assign(pos.begin(), pos.begin() + nfit);
    s.test[l].assign(pos.begin() + nfit, pos.end());
    s.y_fit[l] = outputs_at(y, convs[l], s.fit[l]);
    s.y_test[l] = outputs_at(y, convs[l], s.test[l]);
  });
  return s;
}

}  // namespace detail

// See the top of this file. q: quantize(fp32, cal, cfg)'s network (weights replaced here);
// calib: the calibration images (the first o.images are used).
inline rounding_report learn_rounding(quantized_net& q, const resnet& fp32, const image_set& calib,
                                      const quant_config& cfg, const rounding_options& o) {
  constexpr const char* where = "ptq_example::learn_rounding";
  ptq::detail::require(cfg.weights_quantized(), where, "configuration '", cfg.name, "' has float weights");
  ptq::detail::require(o.images >= 1 && o.columns >= 1 && o.held_out >= 0, where, "images = ", o.images,
                       ", columns = ", o.columns, ", held_out = ", o.held_out, ": expected >= 1, >= 1, >= 0");
  ptq::detail::require(o.seconds > 0, where, "seconds = ", o.seconds, ": expected a positive budget");
  ptq::detail::require(calib.count >= 1, where, "no calibration images");
  const auto t_start = std::chrono::steady_clock::now();
  const detail::one_eigen_thread one_thread;  // see detail::one_eigen_thread
  const index n = std::min(o.images, calib.count);
  const Eigen::Map<const ptq::row_matrix<float>> x(calib.data, n * calib.C, calib.H * calib.W);
  const auto& convs = fp32.convs();
  const index L = static_cast<index>(convs.size());
  // Positions and FP32 targets of every conv: one forward.
  const detail::rounding_samples smp = detail::sample_targets(fp32, x, n, calib.H, calib.W, o);
  const auto& fit = smp.fit;
  const auto& test = smp.test;
  const auto& y_fit = smp.y_fit;
  const auto& y_test = smp.y_test;
  const bool edge8 = !cfg.quantize_first_last;
  const int edge_bits_w = edge8 ? quant_config::edge_bits(cfg.wbits) : cfg.wbits;
  rounding_report rep;
  for (index li = 0; li < L; ++li) {
    const auto l = static_cast<std::size_t>(li);
    const auto t0 = std::chrono::steady_clock::now();
    const conv_layer& F = convs[l];
    const bool first = li == 0;
    const detail::captured_input in = detail::capture_input(q, li, x, calib.H, calib.W);
    const Eigen::MatrixXf X = detail::im2col_at(F, in.x.data(), in.H, in.W, fit[l]);
    const Eigen::MatrixXf Xt = detail::im2col_at(F, in.x.data(), in.H, in.W, test[l]);
    const ptq::quant_params<float> p = detail::weight_params(F.weight, first ? edge_bits_w : cfg.wbits, cfg,
                                                             cfg.bit_alloc_w && !first);
    ptq::row_matrix<float> rtn(F.weight.rows(), F.weight.cols());
    ptq::gemmlowp_quantizer::fake_quantize(F.weight, p, rtn);
    ptq::adaround_params ap = o.layer;
    ap.seed = o.seed + static_cast<std::uint64_t>(li);
    ap.seconds = std::min(ap.seconds, detail::budget_share(o.seconds, t_start, convs.size() - l));
    if (o.relu_output) detail::relu_output(F, ap);
    const ptq::adaround_result<float> r = ptq::adaround(F.weight, p, X, y_fit[l], ap);
    rep.iterations.push_back(static_cast<long>(r.iterations));
    ptq::row_matrix<float> w = r.weights;
    if (cfg.bias_corr_w || cfg.var_corr_w) {
      ptq::bias_corrector::params bp;
      bp.variance = cfg.var_corr_w;
      ptq::bias_corrector::correct(F.weight, w, bp);
    }
    auto err = [&](const ptq::row_matrix<float>& wq) {
      if (Xt.cols() == 0) return 0.0;
      return ((wq.cast<double>() * Xt.cast<double>() - y_test[l].cast<double>()).squaredNorm()) /
             static_cast<double>(Xt.cols());
    };
    rep.layer.push_back(F.name);
    rep.rtn_error.push_back(err(rtn));
    rep.learned_error.push_back(err(r.weights));
    rep.changed.push_back(static_cast<double>((r.weights.array() != rtn.array()).count()) /
                          static_cast<double>(rtn.size()));
    q.net.convs()[l].weight = w;
    rep.seconds.push_back(std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count());
    if (o.progress)
      std::fprintf(stderr, "  adaround %-24s %4td x %-5td error %.4g -> %.4g (held out), %.1f%% codes changed, %ld it, %.1f s\n",
                   F.name.c_str(), F.K, F.weight.cols(), rep.rtn_error.back(), rep.learned_error.back(),
                   100.0 * rep.changed.back(), rep.iterations.back(), rep.seconds.back());
  }
  rep.total_seconds = std::chrono::duration<double>(std::chrono::steady_clock::now() - t_start).count();
  return rep;
}

}  // namespace ptq_example
