// block_reconstruction.hpp: learned rounding of all convs of a residual block against the block's output (BRECQ, QDrop).
//
// The problem (Li, Gong, Tan, Yang, Hu, Zhang, Yu, Wang & Gu, "BRECQ: Pushing the Limit of
// Post-Training Quantization by Block Reconstruction", ICLR 2021; Wei, Gong, Li, Liu & Yu,
// "QDrop: Randomly Dropping Quantization for Extremely Low-bit Post-Training Quantization",
// ICLR 2022; docs/method.md section 9b). AdaRound (adaround.hpp) learns one layer's rounding
// against that layer's output; a block's convs then each fix their own error, blind to what
// the next conv and the shortcut do with it. Here the rounding of every conv of a residual
// block is learned jointly, against the block's output, with the block's activation
// quantizers in the forward pass. Each conv j (square kernel, stride, zero padding, NCHW)
// reads the block input or an earlier conv's output (block_graph):
//
//   z_j = W_soft_j * im2col(X_j) + bias_j               (K_j x pixels, per image)
//   X_j = input_j, or with input_scale[j] = s:
//         X_j[c] = rint(input_j[c] * inv_c),  inv_c = 1 / s_c in T (0 where s_c = 0)   (input channel c)
//   a_j = Q_j(z_j)  or  z_j where dropped / act[j] is nullopt
//   o_j = relu_j ? max(a_j, 0) : a_j                    what other convs, main and shortcut read
//   v   = relu ? max(o_main + r, 0) : o_main + r,  r = the block input (identity), o_shortcut, or 0
//   out = Q_out(v)  or  v where dropped / output_act is nullopt
//
// The integer network (input_scale, output_act). Its convs multiply centred input codes: the
// per-channel scale s of a conv's input grid is folded into the weights, W' = W diag(s), W' is
// quantized on its own (per-output-channel) grid, and the conv reads X' = round(x / s), x on the
// grid, so W' X' = W x. A conv with input_scale[j] = s is that conv: weight[j] and weight_grid[j]
// are W' and its grid, and it reads rint(x * (1 / s)) per input channel (one multiply by the
// inverse computed once in T, rint = std::nearbyint, half to even, as the library's quantizer;
// on grid inputs x = s (q - z) this is q - z exactly, whatever the rounding of the product;
// the padding stays 0). Its gradient is straight-through: d X_j / d input_j = inv_c. Any conv
// may have one, whatever it reads (a dropped element of its input is rounded too: the drop
// skips the source's quantizer, not this conv's reading of codes). output_act is the block
// output's grid in the integer network (after the add and the final ReLU): Q_out is the same
// fake quantization as Q_j (output channel k on channel k % channels()) with the same STE,
// times the final ReLU's mask; QDrop drops its elements like the other activations. Empty
// input_scale and nullopt output_act are the float block, bit for bit.
//
// W_soft_j is adaround.hpp's, per weight of conv j on its grid weight_grid[j] (row k on
// channel k % channels()): u = w * inv_scale clamped to [-z - 1, Q - z + 1], f = floor(u) + z,
// h(V) = clamp(sigmoid(V) (zeta - gamma) + gamma, 0, 1), W_soft = s (clamp(f + h(V), 0, Q) - z),
// V_0 such that h(V_0) = u - floor(u); constant channels keep quantize()'s code and have no V.
// Q_j is the library's fake quantization with act[j] (gemmlowp_quantizer.hpp: inv_scale =
// 1 / scale in T, q = clamp(nearbyint(z * inv_scale) + zp, 0, qmax), (q - zp) scale; output
// channel c on act channel c % channels()), so the forward pass is the quantized network's.
// Its gradient is the straight-through estimator: 1 where lo <= z <= hi (lo = scale (0 - zp),
// hi = scale (qmax - zp), in T, inclusive as torch.clamp), 0 outside; a constant act channel
// has a constant value and gradient 0. ReLU passes the gradient where its input is > 0.
//
// QDrop. With probability qdrop, independently for every element of every quantized
// activation z_j and of the block input (when x_fp is given), the element skips its
// quantizer: a_j = z_j (gradient 1), or the block input takes x_fp (the FP32 network's
// block input) instead of x_q. qdrop = 0 is BRECQ, 0.5 QDrop's default, 1 float
// activations. The draw is a counter-based hash, so it depends neither on threads nor on
// chunking and numpy reproduces it in uint64 arithmetic:
//
//   mix(x)  = splitmix64's finalizer: x += 0x9E3779B97F4A7C15;
//             x = (x ^ (x >> 30)) * 0xBF58476D1CE4E5B9; x = (x ^ (x >> 27)) * 0x94D049BB133111EB;
//             x ^ (x >> 31)                                                (all mod 2^64)
//   key     = mix(mix(mix(mix(seed) + t) + tensor) + n)
//   dropped = (mix(key + e) >> 11) * 2^-53 < qdrop
//
// with seed = params.rounding.seed, t the iteration (0-based), tensor = 0 for the block
// input, j + 1 for conv j and n_conv + 1 for the block output (output_act), n the image's index
// in x_q (0 .. N-1) and e the element's index within that image's NCHW tensor (c * H * W + y * W
// + x; for conv j and the block output, c is the output channel and H x W the output size). qdrop = 1 drops everything and 0 nothing, as the formula says.
//
// The loss at iteration t on the step's B images (adaround_sampler(seed, N, batch) over
// images, rounding.batch >= N: all), with y the FP32 block output:
//
//   L(t) = (1 / (B OH OW)) sum_{images, k, pixels} (out - y)^2      reconstruction
//        + lambda sum_{all convs' active weights} (1 - |2 h(V) - 1|^beta(t))
//
// adaround's convention with the output pixels of the B images as its columns (so a
// single-conv block without activation quantizers is adaround on the im2col columns:
// test_block_reconstruction.cpp checks that), one lambda and adaround's warm-up and beta
// schedule (adaround_regularized, adaround_beta) over all convs, and Adam on every V exactly
// as adaround.hpp. The result is, per conv, the hard rounding code = clamp(f + [V >= 0], 0, Q)
// on its grid and weights = s (code - z); see adaround.hpp for why the threshold.
//
// Learned activation steps (params.act_lr > 0; LSQ, Esser, McKinstry, Bablani, Appuswamy &
// Modha, "Learned Step Size Quantization", ICLR 2020, which BRECQ and QDrop use for their
// activations). The scales of every activation quantizer, act[j] and output_act, per quantizer
// channel c, are learned with the rounding, on the same loss and batches:
//
//   scale_c = scale0_c exp(theta_c),  theta_c = 0 at the start; zero points and bits stay
//   d Q(z) / d scale_c = rint(z inv) - z inv   where lo <= z <= hi (inv, lo, hi of the current scale)
//                      = 0 - zp  below lo,  qmax - zp  above hi                 (LSQ's gradient)
//   dL/dtheta_c = scale_c sum over the elements of the channel (output channels k with
//                 k % channels() = c) of dL/dQ * d Q / d scale_c; 0 where dropped (QDrop), where a
//                 ReLU after Q cuts the element, and on constant channels, which keep their scale
//   theta_c <- Adam(dL/dtheta_c) with learning rate params.act_lr, adaround's betas and eps,
//              after the V update of each iteration (the loss at t uses the scales of t)
//
// Why the logarithm: Adam's step is about lr in the parameter's units whatever the gradient's
// size, and scales range over orders of magnitude between layers; on log scale one rate is a
// relative step for all (LSQ instead scales the gradient by 1 / sqrt(elements * qmax) for
// plain SGD). The quantizers at the end are block_result::act and output_act. Only the float
// block learns them: with input_scale the folded weights W diag(s) and their grid depend on
// the scales (an error). BRECQ's Fisher-weighted output loss is not built: as its code
// computes it, the weights are within 1 % of 1 on the bundled networks (docs/method.md 9b).
//
// Threads and determinism. The step's images are cut into fixed chunks of
// detail::block_chunk_images = 4 (in batch order; the last may be shorter), whatever the
// thread count; params.rounding.threads std::threads (0: hardware_concurrency; at most one
// per chunk) take chunks in turn, each chunk's forward and backward (im2col and Eigen GEMMs; 1x1 stride-1 unpadded
// convs read their input directly: z = W X, dW = dZ X^T, dX = col2im(W^T dZ)) go to its
// thread's buffers, and the chunks' loss and weight gradients are added to the totals in
// chunk order. So a run is the same bit for bit for any thread count; it depends on the
// chunk size (a GEMM's rounding depends on its shape). Under OpenMP Eigen may split each
// GEMM itself: call Eigen::setNbThreads(1) to keep that guarantee.
//
// Precision and memory: GEMMs, elementwise steps and Adam's state in T; loss sums in double.
// x_q, x_fp and y are read where they are, one chunk's images at a time (never copied
// whole). Per thread, for the chunk: the block input, every conv's im2col columns, output,
// derivative mask and output gradient, and the codes of every conv with an input_scale; per
// conv nine K x D arrays as adaround.
//
// Time: params.rounding.seconds is a wall-clock budget checked after every iteration, as
// adaround (stopped_by_time; only complete runs are reproducible).
//
// reconstruct_block_ref is the plain twin: one thread, direct-convolution loops in double,
// the same sampler, drops, schedule and Adam; with T = double the two agree to the rounding of
// the sums. tools/block_reconstruction_ref.py is an independent PyTorch implementation
// (test/io/test_block_reconstruction_torch.cpp runs it on a block of the bundled ResNet-50).
//
// Errors (ptq::error naming function, argument and value; nothing is returned, nothing the
// caller passed is touched): a graph with no convs, a conv with nonpositive sizes or stride,
// a negative pad, a kernel larger than its padded input, a source that is not -1 or an
// earlier conv, in_channels other than its source's channels, convs reading the block input
// with different in_channels or none reading it, main outside the convs, shortcut not -2, -1
// or a conv other than main, a projection whose channels or output size differ from main's,
// an identity shortcut where main's output has other channels or size than the input;
// weight, bias, weight_grid or act vectors of a length other than the number of convs,
// weights not K x (C k k), biases not K long, invalid quant_params or ones whose channels do
// not divide K; input_scale of a size other than 0 or the number of convs, an input_scale[j]
// neither empty nor in_channels long, a scale that is negative, NaN, Inf or whose inverse
// overflows T; output_act invalid or with channels that do not divide K_out; x_q not (N C_in) x (H W), x_fp neither 0 x 0 nor x_q's shape, y not
// (N K_out) x (OH OW), NaN / Inf in weights, biases, x_q, x_fp or y, qdrop outside [0, 1],
// and adaround_params outside their ranges (adaround.hpp; named params.rounding.*);
// params.act_lr negative or not finite, or > 0 with an input_scale set; a loss that overflows
// T while running.
#pragma once

#include <Eigen/Core>
#include <algorithm>
#include <atomic>
#include <chrono>
#include <cmath>
#include <condition_variable>
#include <cstdint>
#include <exception>
#include <functional>
#include <mutex>
#include <optional>
#include <string>
#include <thread>
#include <type_traits>
#include <vector>

#include "adaround.hpp"
#include "config.hpp"
#include "error.hpp"
#include "gemmlowp_quantizer.hpp"
#include "layout.hpp"

namespace ptq {

// One conv of a block: square kernel, NCHW, zero padding, no groups or dilation.
struct block_conv {
  index in_channels = 0, out_channels = 0, kernel = 1, stride = 1, pad = 0;
  int source = -1;    // -1: the block input; j >= 0: conv j's output o_j (j < this conv's index)
  bool relu = false;  // ReLU after this conv's output quantizer (a conv that feeds another conv)
};

// The block: out = relu ? max(o_main + s, 0) : o_main + s; see the top of this file.
struct block_graph {
  std::vector<block_conv> convs;  // in topological order
  int main = -1;                  // the conv whose output is the main branch
  int shortcut = -1;              // -1: identity; -2: none (s = 0); j >= 0: conv j's output (a projection)
  bool relu = true;               // ReLU after the add
};

template <class T>
struct block_problem {
  block_graph graph;
  std::vector<row_matrix<T>> weight;                      // per conv: K x (C k k), KCRS: the float weights
  std::vector<Eigen::Matrix<T, Eigen::Dynamic, 1>> bias;  // per conv: K, added before the output quantizer
  std::vector<quant_params<T>> weight_grid;               // per conv: the weights' grid (channels() divides K)
  std::vector<std::optional<quant_params<T>>> act;        // per conv: its output quantizer; nullopt: float
  // per conv: empty (the conv reads its input as is), or one scale per input channel: the conv
  // reads round(x / s) per input channel c (0 where s[c] == 0), i.e. the centred codes of an input on a
  // grid with those scales; its weights and weight_grid are then in folded units (W' = W diag(s)).
  std::vector<Eigen::Matrix<T, Eigen::Dynamic, 1>> input_scale;  // size 0 (none for every conv) or one per conv (each empty or C_in long)
  // the quantizer of the block output, after the final ReLU (the integer network's block-output grid); nullopt: none.
  std::optional<quant_params<T>> output_act;
};

struct block_params {
  adaround_params rounding;  // as adaround; batch = images per step (>= N: all); row_block unused
  double qdrop = 0.0;        // probability that an activation element skips its quantizer
  // Learned activation steps (see the top of this file): Adam's learning rate on the log of
  // every activation quantizer's scales (act[j] and output_act); 0: the quantizers stay as given.
  double act_lr = 0.0;
};

template <class T>
struct block_result {
  std::vector<Eigen::Matrix<std::uint16_t, Eigen::Dynamic, Eigen::Dynamic, Eigen::RowMajor>> codes;  // per conv, K x CRS
  std::vector<row_matrix<T>> weights;            // per conv: scale (code - zero_point)
  std::vector<double> rec_loss, reg_loss, beta;  // per iteration done: L's two terms at the step's V and batch
  // The activation quantizers at the end: b.act and b.output_act with their learned scales
  // (params.act_lr > 0), or as given.
  std::vector<std::optional<quant_params<T>>> act;
  std::optional<quant_params<T>> output_act;
  index iterations = 0;
  bool stopped_by_time = false;
  double seconds = 0.0;
};

namespace detail {

inline constexpr index block_chunk_images = 4;  // images per chunk of the fast path (the result depends on it)

// The data arguments' type, T deduced from the problem alone (so that matrices bind without a cast).
template <class T>
struct block_nd {
  using type = T;
};
template <class T>
using block_in = Eigen::Ref<const row_matrix<typename block_nd<T>::type>>;

inline std::uint64_t block_mix(std::uint64_t x) {
  x += 0x9E3779B97F4A7C15ull;
  x = (x ^ (x >> 30)) * 0xBF58476D1CE4E5B9ull;
  x = (x ^ (x >> 27)) * 0x94D049BB133111EBull;
  return x ^ (x >> 31);
}
inline std::uint64_t block_drop_key(std::uint64_t seed, index t, index tensor, index image) {
  const auto u = [](index v) { return static_cast<std::uint64_t>(v); };
  return block_mix(block_mix(block_mix(block_mix(seed) + u(t)) + u(tensor)) + u(image));
}
inline bool block_dropped(std::uint64_t key, index element, double qdrop) {
  return static_cast<double>(block_mix(key + static_cast<std::uint64_t>(element)) >> 11) * 0x1.0p-53 < qdrop;
}

inline std::size_t bz(index i) { return static_cast<std::size_t>(i); }

// One conv's validated geometry.
struct block_geom {
  index C = 0, K = 0, k = 1, stride = 1, pad = 0, H = 0, W = 0, OH = 0, OW = 0, D = 0;
  int src = -1;
  bool relu = false, direct = false;  // direct: 1x1, stride 1, no pad (no im2col)
};

struct block_shape {
  std::vector<block_geom> conv;
  index C_in = 0, H = 0, W = 0, N = 0, K_out = 0, OH = 0, OW = 0;
  int main = -1, shortcut = -1;
  bool relu = true;
};

// The graph and the problem's vectors (not the data); returns the geometry with N = 0.
template <class T>
block_shape block_check_problem(const block_problem<T>& b, index height, index width, const char* where,
                                bool weights = true) {
  static_assert(std::is_floating_point<T>::value, "block reconstruction: T must be float or double");
  const block_graph& gr = b.graph;
  const index n = static_cast<index>(gr.convs.size());
  require(n >= 1, where, "b.graph.convs is empty");
  require(height >= 1 && width >= 1, where, "height = ", height, ", width = ", width, ": the image size must be positive");
  block_shape sh;
  sh.H = height;
  sh.W = width;
  sh.conv.resize(bz(n));
  int first_reader = -1;
  for (index j = 0; j < n; ++j) {
    const block_conv& c = gr.convs[bz(j)];
    block_geom& g = sh.conv[bz(j)];
    const std::string name = concat("b.graph.convs[", j, "]");
    require(c.in_channels >= 1, where, name, ".in_channels = ", c.in_channels, " is not positive");
    require(c.out_channels >= 1, where, name, ".out_channels = ", c.out_channels, " is not positive");
    require(c.kernel >= 1, where, name, ".kernel = ", c.kernel, " is not positive");
    require(c.stride >= 1, where, name, ".stride = ", c.stride, " is not positive");
    require(c.pad >= 0, where, name, ".pad = ", c.pad, " is negative");
    require(c.source >= -1 && c.source < j, where, name, ".source = ", c.source,
            " is neither -1 (the block input) nor an earlier conv in [0, ", j, ")");
    g.C = c.in_channels;
    g.K = c.out_channels;
    g.k = c.kernel;
    g.stride = c.stride;
    g.pad = c.pad;
    g.src = c.source;
    g.relu = c.relu;
    g.D = g.C * g.k * g.k;
    g.direct = g.k == 1 && g.stride == 1 && g.pad == 0;
    if (c.source < 0) {
      if (first_reader < 0) {
        first_reader = static_cast<int>(j);
        sh.C_in = c.in_channels;
      }
      require(c.in_channels == sh.C_in, where, name, ".in_channels = ", c.in_channels, " but b.graph.convs[",
              first_reader, "].in_channels = ", sh.C_in, ": both read the block input");
      g.H = height;
      g.W = width;
    } else {
      const block_geom& s = sh.conv[bz(c.source)];
      require(c.in_channels == s.K, where, name, ".in_channels = ", c.in_channels, " does not match conv ", c.source,
              "'s out_channels = ", s.K);
      g.H = s.OH;
      g.W = s.OW;
    }
    require(g.H + 2 * g.pad >= g.k && g.W + 2 * g.pad >= g.k, where, name, ": kernel ", g.k, " with pad ", g.pad,
            " does not fit its ", g.H, " x ", g.W, " input");
    g.OH = (g.H + 2 * g.pad - g.k) / g.stride + 1;
    g.OW = (g.W + 2 * g.pad - g.k) / g.stride + 1;
  }
  require(first_reader >= 0, where, "b.graph: no conv reads the block input (source -1)");
  require(gr.main >= 0 && gr.main < n, where, "b.graph.main = ", gr.main, " is outside [0, ", n, ")");
  require(gr.shortcut >= -2 && gr.shortcut < n && gr.shortcut != gr.main, where, "b.graph.shortcut = ", gr.shortcut,
          " is not -2 (none), -1 (identity) or a conv in [0, ", n, ") other than main = ", gr.main);
  const block_geom& m = sh.conv[bz(gr.main)];
  sh.main = gr.main;
  sh.shortcut = gr.shortcut;
  sh.relu = gr.relu;
  sh.K_out = m.K;
  sh.OH = m.OH;
  sh.OW = m.OW;
  if (gr.shortcut == -1) {
    require(sh.C_in == m.K, where, "b.graph.shortcut = -1 (identity): the block input's ", sh.C_in,
            " channels differ from main conv ", gr.main, "'s out_channels = ", m.K);
    require(m.OH == height && m.OW == width, where, "b.graph.shortcut = -1 (identity): main conv ", gr.main,
            "'s output is ", m.OH, " x ", m.OW, ", the block input ", height, " x ", width,
            " (a stride needs a projection shortcut)");
  } else if (gr.shortcut >= 0) {
    const block_geom& s = sh.conv[bz(gr.shortcut)];
    require(s.K == m.K, where, "b.graph.shortcut = ", gr.shortcut, ": its out_channels = ", s.K,
            " differ from main conv ", gr.main, "'s ", m.K);
    require(s.OH == m.OH && s.OW == m.OW, where, "b.graph.shortcut = ", gr.shortcut, ": its output is ", s.OH, " x ",
            s.OW, ", main conv ", gr.main, "'s ", m.OH, " x ", m.OW);
  }
  const auto count = [&](std::size_t got, const char* what) {
    require(static_cast<index>(got) == n, where, "b.", what, ".size() = ", got, " does not match the ", n,
            " convs of b.graph");
  };
  if (weights) count(b.weight.size(), "weight");
  count(b.bias.size(), "bias");
  if (weights) count(b.weight_grid.size(), "weight_grid");
  count(b.act.size(), "act");
  for (index j = 0; j < n; ++j) {
    const block_geom& g = sh.conv[bz(j)];
    const std::string wn = concat("b.weight[", j, "]"), bn = concat("b.bias[", j, "]");
    if (weights) {
      const row_matrix<T>& w = b.weight[bz(j)];
      require(w.rows() == g.K && w.cols() == g.D, where, wn, " is ", w.rows(), " x ", w.cols(), ", expected ", g.K,
              " x ", g.D, " (out_channels x in_channels * kernel * kernel)");
      check_finite(w, where, wn.c_str());
    }
    require(b.bias[bz(j)].size() == g.K, where, bn, ".size() = ", b.bias[bz(j)].size(), ", expected out_channels = ",
            g.K);
    check_finite(b.bias[bz(j)], where, bn.c_str());
    if (weights) {
      const std::string gw = concat(where, ": b.weight_grid[", j, "]");
      check_params(b.weight_grid[bz(j)], quant_params<T>::max_bits, gw.c_str());
      require(g.K % b.weight_grid[bz(j)].channels() == 0, where, "b.weight_grid[", j, "] has ",
              b.weight_grid[bz(j)].channels(), " channels, which do not divide out_channels = ", g.K);
    }
    if (b.act[bz(j)]) {
      const std::string ga = concat(where, ": b.act[", j, "]");
      check_params(*b.act[bz(j)], quant_params<T>::max_bits, ga.c_str());
      require(g.K % b.act[bz(j)]->channels() == 0, where, "b.act[", j, "] has ", b.act[bz(j)]->channels(),
              " channels, which do not divide out_channels = ", g.K);
    }
  }
  require(b.input_scale.empty() || static_cast<index>(b.input_scale.size()) == n, where, "b.input_scale.size() = ",
          b.input_scale.size(), " is neither 0 nor the ", n, " convs of b.graph");
  for (std::size_t j = 0; j < b.input_scale.size(); ++j) {
    const auto& s = b.input_scale[j];
    if (s.size() == 0) continue;
    require(s.size() == sh.conv[j].C, where, "b.input_scale[", j, "].size() = ", s.size(),
            " is neither 0 nor in_channels = ", sh.conv[j].C);
    for (index c = 0; c < s.size(); ++c)
      require(std::isfinite(s[c]) && s[c] >= T(0) && (s[c] == T(0) || std::isfinite(T(1) / s[c])), where,
              "b.input_scale[", j, "][", c, "] = ", s[c], " is not a finite scale >= 0 with a finite inverse");
  }
  if (b.output_act) {
    const std::string go = concat(where, ": b.output_act");
    check_params(*b.output_act, quant_params<T>::max_bits, go.c_str());
    require(sh.K_out % b.output_act->channels() == 0, where, "b.output_act has ", b.output_act->channels(),
            " channels, which do not divide the block's output channels K_out = ", sh.K_out);
  }
  return sh;
}

// x's shape (N images of C_in x H x W) and values; sets sh.N.
template <class T>
void block_check_input(block_shape& sh, const Eigen::Ref<const row_matrix<T>>& x, const char* where, const char* name) {
  require(x.rows() >= sh.C_in && x.rows() % sh.C_in == 0 && x.cols() == sh.H * sh.W, where, name, " is ", x.rows(),
          " x ", x.cols(), ", expected (N * ", sh.C_in, ") x (", sh.H, " * ", sh.W, ") for N >= 1 images");
  check_finite(x, where, name);
  sh.N = x.rows() / sh.C_in;
}

template <class T>
block_shape block_check(const block_problem<T>& b, const Eigen::Ref<const row_matrix<T>>& x_q,
                        const Eigen::Ref<const row_matrix<T>>& x_fp, index height, index width,
                        const Eigen::Ref<const row_matrix<T>>& y, const block_params& p, const char* where) {
  adaround_check_params(p.rounding, where, "params.rounding.");
  require(p.qdrop >= 0.0 && p.qdrop <= 1.0, where, "params.qdrop = ", p.qdrop, " is outside [0, 1]");
  require(std::isfinite(p.act_lr) && p.act_lr >= 0.0, where, "params.act_lr = ", p.act_lr,
          " is not a finite rate >= 0");
  block_shape sh = block_check_problem(b, height, width, where);
  if (p.act_lr > 0.0)
    for (std::size_t j = 0; j < b.input_scale.size(); ++j)
      require(b.input_scale[j].size() == 0, where, "params.act_lr = ", p.act_lr, " with b.input_scale[", j,
              "] set: learned activation steps need the float block (a folded conv's weights depend on its "
              "input's scales)");
  block_check_input<T>(sh, x_q, where, "x_q");
  require((x_fp.rows() == 0 && x_fp.cols() == 0) || (x_fp.rows() == x_q.rows() && x_fp.cols() == x_q.cols()), where,
          "x_fp is ", x_fp.rows(), " x ", x_fp.cols(), ", expected 0 x 0 (none) or x_q's ", x_q.rows(), " x ",
          x_q.cols());
  check_finite(x_fp, where, "x_fp");
  require(y.rows() == sh.N * sh.K_out && y.cols() == sh.OH * sh.OW, where, "y is ", y.rows(), " x ", y.cols(),
          ", expected (N * K_out) x (OH * OW) = ", sh.N * sh.K_out, " x ", sh.OH * sh.OW);
  check_finite(y, where, "y");
  return sh;
}

// One conv's activation quantizer, per output channel k: inv, zp, qmax, scale, lo, hi in T.
template <class T>
struct block_act {
  bool on = false;
  std::vector<T> inv, zp, qm, s, lo, hi;
  std::vector<char> constant;
};

template <class T>
block_act<T> block_act_of(const std::optional<quant_params<T>>& p, index K) {
  block_act<T> a;
  if (!p) return a;
  a.on = true;
  for (index k = 0; k < K; ++k) {
    const index c = k % p->channels();
    const T zp = static_cast<T>(p->zero_point[c]), qm = static_cast<T>(p->qmax(c)), s = p->scale[c];
    a.inv.push_back(inv_scale_of(*p, c));
    a.zp.push_back(zp);
    a.qm.push_back(qm);
    a.s.push_back(s);
    a.lo.push_back(s * (T(0) - zp));
    a.hi.push_back(s * (qm - zp));
    a.constant.push_back(p->is_constant(c) ? 1 : 0);
  }
  return a;
}

// block_step_factor over a row z of output channel k of quantizer A, into g (0 on a constant channel).
template <class T, class Z>
void block_step_factors(const block_act<T>& A, std::size_t k, const Z& z, Eigen::Array<T, 1, Eigen::Dynamic>& g) {
  using arow = Eigen::Array<T, 1, Eigen::Dynamic>;
  const index n = z.size();
  if (A.constant[k]) {
    g.setZero(n);
    return;
  }
  const T inv = A.inv[k], zp = A.zp[k];
  g = (z < A.lo[k]).select(arow::Constant(n, -zp),
                           (z > A.hi[k]).select(arow::Constant(n, A.qm[k] - zp), (z * inv).rint() - z * inv));
}

// One learned activation quantizer (block_params::act_lr > 0; the top of this file):
// scale_c = scale0_c exp(theta_c), Adam on theta with adaround's betas and eps, and
// dL/dtheta_c = scale_c sum_{k % C = c} dL/dscale_k over the output channels k.
template <class T>
struct block_step {
  std::optional<quant_params<T>> p0, p;  // as given, and with the current scales
  std::vector<double> theta, m, v;       // per quantizer channel
  explicit block_step(const std::optional<quant_params<T>>& given) : p0(given), p(given) {
    if (p) theta.assign(bz(p->channels()), 0.0), m = theta, v = theta;
  }
  // g: dL/dscale per output channel; t: the iteration (Adam's bias correction).
  void update(const std::vector<double>& g, double lr, const adaround_params& a, index t) {
    if (!p) return;
    const index C = p->channels();
    std::vector<double> gc(bz(C), 0.0);
    for (std::size_t k = 0; k < g.size(); ++k) gc[k % bz(C)] += g[k];
    const double n1 = static_cast<double>(t + 1);
    const double step_size = lr / (1.0 - std::pow(a.adam_beta1, n1));
    const double bc2_sqrt = std::sqrt(1.0 - std::pow(a.adam_beta2, n1));
    for (index c = 0; c < C; ++c) {
      if (p0->is_constant(c)) continue;
      const auto cc = bz(c);
      const double d = gc[cc] * static_cast<double>(p->scale[c]);
      m[cc] = a.adam_beta1 * m[cc] + (1.0 - a.adam_beta1) * d;
      v[cc] = a.adam_beta2 * v[cc] + (1.0 - a.adam_beta2) * d * d;
      theta[cc] -= step_size * m[cc] / (std::sqrt(v[cc]) / bc2_sqrt + a.adam_eps);
      p->scale[c] = static_cast<T>(static_cast<double>(p0->scale[c]) * std::exp(theta[cc]));
    }
  }
};

// LSQ's d Q(z) / d scale for one quantizer channel: rint(z inv) - z inv inside [lo, hi], the
// clamp's code minus the zero point outside.
template <class T>
T block_step_factor(T z, T inv, T zp, T qm, T lo, T hi) {
  if (z < lo) return -zp;
  if (z > hi) return qm - zp;
  return std::nearbyint(z * inv) - z * inv;
}

// Per conv: empty, or inv_c = 1 / input_scale[j][c] in T (0 where the scale is 0).
template <class T>
std::vector<std::vector<T>> block_in_inv(const block_problem<T>& b, index n_conv) {
  std::vector<std::vector<T>> inv(bz(n_conv));
  for (std::size_t j = 0; j < b.input_scale.size(); ++j)
    for (index c = 0; c < b.input_scale[j].size(); ++c) {
      const T s = b.input_scale[j][c];
      inv[j].push_back(s == T(0) ? T(0) : T(1) / s);
    }
  return inv;
}

// One conv's rounding state in T (the fast path), K x D: adaround's per-weight arrays.
template <class T>
struct block_round {
  std::vector<adaround_grid<T>> grid;
  row_matrix<T> F, V, M, S, Ws, H, DH, SC;

  void init(const row_matrix<T>& w, const quant_params<T>& p, const adaround_params& a) {
    const index K = w.rows(), D = w.cols();
    grid = adaround_grids(p, K);
    const T gamma = static_cast<T>(a.gamma), stretch = static_cast<T>(a.zeta - a.gamma);
    F.resize(K, D);
    V.resize(K, D);
    M.setZero(K, D);
    S.setZero(K, D);
    Ws.resize(K, D);
    H.setZero(K, D);
    DH.setZero(K, D);
    SC.setZero(K, D);
    for (index i = 0; i < K; ++i) {
      const auto& g = grid[bz(i)];
      for (index j = 0; j < D; ++j) {
        if (!g.active) {
          F(i, j) = T(0);
          V(i, j) = T(0);
          Ws(i, j) = (static_cast<T>(g.const_code) - g.z) * g.s;
          continue;
        }
        const T u = adaround_u(w(i, j), g), fl = std::floor(u), r = u - fl;
        F(i, j) = fl + g.z;
        V(i, j) = -std::log(stretch / (r - gamma) - T(1));
      }
    }
  }

  // H, DH = dh/dV, SC = d W_soft / d h and W_soft from V.
  void soft(const adaround_params& a) {
    const T gamma = static_cast<T>(a.gamma), stretch = static_cast<T>(a.zeta - a.gamma);
    const index D = V.cols();
    for (index i = 0; i < V.rows(); ++i) {
      const auto& g = grid[bz(i)];
      if (!g.active) continue;
      auto sig = DH.row(i).array();
      sig = (T(1) + (-V.row(i).array()).exp()).inverse();
      const auto P = sig * stretch + gamma;
      H.row(i).array() = P.max(T(0)).min(T(1));
      const auto C = F.row(i).array() + H.row(i).array();
      SC.row(i).array() = (C >= T(0) && C <= g.q).select(Eigen::Array<T, 1, Eigen::Dynamic>::Constant(D, g.s), T(0));
      Ws.row(i).array() = (C.max(T(0)).min(g.q) - g.z) * g.s;
      sig = (P >= T(0) && P <= T(1)).select(sig * (T(1) - sig) * stretch, T(0));
    }
  }

  // G: dL/dW_soft in, dL/dV out (0 on constant rows); adds the regularizer's sum to reg.
  void gradient(row_matrix<T>& G, const adaround_params& a, index t, double& reg) const {
    const bool reg_on = adaround_regularized(a, t);
    const double beta = adaround_beta(a, t);
    const T tb = static_cast<T>(beta), tb1 = static_cast<T>(beta - 1.0), lam = static_cast<T>(a.lambda);
    const index D = V.cols();
    for (index i = 0; i < V.rows(); ++i) {
      auto gr = G.row(i).array();
      if (!grid[bz(i)].active) {
        gr.setZero();
        continue;
      }
      gr *= SC.row(i).array() * DH.row(i).array();
      if (reg_on) {
        const auto s2 = H.row(i).array() * T(2) - T(1);
        const Eigen::Array<T, 1, Eigen::Dynamic> A = s2.abs();
        const Eigen::Array<T, 1, Eigen::Dynamic> pw =
            tb1 == T(0) ? Eigen::Array<T, 1, Eigen::Dynamic>::Ones(D) : (A.log() * tb1).exp().eval();
        reg += (T(1) - pw * A).template cast<double>().sum();
        gr += (pw * s2.sign()) * (lam * T(-2) * tb) * DH.row(i).array();
      }
    }
  }

  void adam(const row_matrix<T>& G, const adaround_params& a, index t) {
    const T b1 = static_cast<T>(a.adam_beta1), b2 = static_cast<T>(a.adam_beta2), eps = static_cast<T>(a.adam_eps);
    const T c1 = static_cast<T>(1.0 - a.adam_beta1), c2 = static_cast<T>(1.0 - a.adam_beta2);
    const double n = static_cast<double>(t + 1);
    const T step_size = static_cast<T>(a.lr / (1.0 - std::pow(a.adam_beta1, n)));
    const T bc2_sqrt = static_cast<T>(std::sqrt(1.0 - std::pow(a.adam_beta2, n)));
    for (index i = 0; i < V.rows(); ++i) {
      if (!grid[bz(i)].active) continue;
      const auto gr = G.row(i).array();
      auto m = M.row(i).array();
      auto v2 = S.row(i).array();
      m = m * b1 + gr * c1;
      v2 = v2 * b2 + gr * c2 * gr;
      V.row(i).array() -= step_size * m / (v2.sqrt() / bc2_sqrt + eps);
    }
  }
};

// Per-thread buffers of one chunk (activations in channel-major layout: C x (images * pixels)).
template <class T>
struct block_scratch {
  row_matrix<T> X, dcols, dX;
  std::vector<row_matrix<T>> cols, O, Dv, dO, dW, XS;  // XS: a conv's codes rint(input * inv) (input_scale)
  std::vector<row_matrix<T>> GS;                       // learned steps: d o_j / d scale (masked), per conv
  std::vector<std::vector<double>> ds;                 // learned steps: dL/dscale per conv (output channels),
                                                       // then the block output's
  std::vector<char> has;
  Eigen::Array<T, 1, Eigen::Dynamic> q, dm, mk, rm, om, g;  // one row: activation, drop mask, derivative mask, ReLU
                                                            // mask, output drop mask, step factor
  double rec = 0.0;
};

// The output columns [ox0, ox1) whose input column ox * stride + s - pad lies inside [0, W).
inline void block_valid_cols(const block_geom& g, index s, index& ox0, index& ox1) {
  const index a = g.pad - s, e = g.W - 1 + g.pad - s;  // ox * stride >= a, ox * stride <= e
  ox0 = a <= 0 ? 0 : (a + g.stride - 1) / g.stride;
  ox1 = e < 0 ? 0 : e / g.stride + 1;
  ox0 = std::min(ox0, g.OW);
  ox1 = std::max(ox0, std::min(ox1, g.OW));
}

template <class T>
void block_im2col(const row_matrix<T>& in, const block_geom& g, index nb, row_matrix<T>& cols) {
  const index HW = g.H * g.W, OHW = g.OH * g.OW;
  cols.resize(g.D, nb * OHW);
  for (index c = 0; c < g.C; ++c)
    for (index r = 0; r < g.k; ++r)
      for (index s = 0; s < g.k; ++s) {
        T* dst = cols.row((c * g.k + r) * g.k + s).data();
        index ox0 = 0, ox1 = 0;
        block_valid_cols(g, s, ox0, ox1);
        for (index i = 0; i < nb; ++i) {
          const T* src = in.row(c).data() + i * HW;
          for (index oy = 0; oy < g.OH; ++oy) {
            T* d = dst + i * OHW + oy * g.OW;
            const index iy = oy * g.stride + r - g.pad;
            if (iy < 0 || iy >= g.H) {
              std::fill(d, d + g.OW, T(0));
              continue;
            }
            std::fill(d, d + ox0, T(0));
            const T* srow = src + iy * g.W + s - g.pad;
            if (g.stride == 1) {
              std::copy(srow + ox0, srow + ox1, d + ox0);
            } else {
              for (index ox = ox0; ox < ox1; ++ox) d[ox] = srow[ox * g.stride];
            }
            std::fill(d + ox1, d + g.OW, T(0));
          }
        }
      }
}

template <class T>
void block_col2im(const row_matrix<T>& cols, const block_geom& g, index nb, row_matrix<T>& out) {
  const index HW = g.H * g.W, OHW = g.OH * g.OW;
  for (index c = 0; c < g.C; ++c)
    for (index r = 0; r < g.k; ++r)
      for (index s = 0; s < g.k; ++s) {
        const T* src = cols.row((c * g.k + r) * g.k + s).data();
        index ox0 = 0, ox1 = 0;
        block_valid_cols(g, s, ox0, ox1);
        for (index i = 0; i < nb; ++i) {
          T* dst = out.row(c).data() + i * HW;
          for (index oy = 0; oy < g.OH; ++oy) {
            const index iy = oy * g.stride + r - g.pad;
            if (iy < 0 || iy >= g.H) continue;
            const T* d = src + i * OHW + oy * g.OW;
            T* drow = dst + iy * g.W + s - g.pad;
            if (g.stride == 1) {
              for (index ox = ox0; ox < ox1; ++ox) drow[ox] += d[ox];
            } else {
              for (index ox = ox0; ox < ox1; ++ox) drow[ox * g.stride] += d[ox];
            }
          }
        }
      }
}

// What a chunk pass reads.
template <class T>
struct block_ctx {
  const block_shape* sh = nullptr;
  const block_problem<T>* b = nullptr;
  const Eigen::Ref<const row_matrix<T>>* xq = nullptr;
  const Eigen::Ref<const row_matrix<T>>* xfp = nullptr;  // nullptr: no drop of the block input
  const Eigen::Ref<const row_matrix<T>>* y = nullptr;
  std::vector<const row_matrix<T>*> w;  // the weights in use, per conv
  std::vector<block_act<T>> act;
  std::vector<std::vector<T>> in_inv;  // per conv: empty or C: 1 / input_scale (0 where 0)
  block_act<T> out_act;                // output_act, per output channel
  bool learn = false;                  // learned activation steps (block_params::act_lr > 0)
  std::uint64_t seed = 0;
  double qdrop = 0.0;
  index B = 1;  // the step's batch size (the loss's normalization)
};

// dropped() as an integer test: (h >> 11) 2^-53 < qdrop iff (h >> 11) < ceil(qdrop 2^53) (exact).
inline std::uint64_t block_drop_threshold(double qdrop) {
  return static_cast<std::uint64_t>(std::ceil(qdrop * 0x1.0p53));
}

// m[p] = 1 where element e0 + p of the tensor keyed `key` is dropped, else 0 (p < n).
template <class T>
void block_drop_mask(std::uint64_t key, index e0, index n, std::uint64_t threshold, T* m) {
  const std::uint64_t k0 = key + static_cast<std::uint64_t>(e0);
  for (index p = 0; p < n; ++p) m[p] = (block_mix(k0 + static_cast<std::uint64_t>(p)) >> 11) < threshold ? T(1) : T(0);
}

// Forward of nb images img[0..nb) into s (train: with drops and derivative masks).
template <class T>
void block_chunk_forward(const block_ctx<T>& c, block_scratch<T>& s, const index* img, index nb, index t,
                         bool train) {
  using arow = Eigen::Array<T, 1, Eigen::Dynamic>;
  const block_shape& sh = *c.sh;
  const index HW = sh.H * sh.W, n_conv = static_cast<index>(sh.conv.size());
  const std::uint64_t thr = block_drop_threshold(c.qdrop);
  s.cols.resize(bz(n_conv));
  s.O.resize(bz(n_conv));
  s.Dv.resize(bz(n_conv));
  s.XS.resize(bz(n_conv));
  s.GS.resize(bz(n_conv));
  s.X.resize(sh.C_in, nb * HW);
  const bool drop_in = train && c.xfp && c.qdrop > 0.0;
  for (index i = 0; i < nb; ++i) {
    const index n = img[i];
    const std::uint64_t key = drop_in ? block_drop_key(c.seed, t, 0, n) : 0;
    for (index ch = 0; ch < sh.C_in; ++ch) {
      auto dst = s.X.row(ch).segment(i * HW, HW).array();
      const index r = n * sh.C_in + ch;
      if (!drop_in) {
        dst = c.xq->row(r).array();
      } else {
        s.dm.resize(HW);
        block_drop_mask(key, ch * HW, HW, thr, s.dm.data());
        dst = (s.dm != T(0)).select(c.xfp->row(r).array(), c.xq->row(r).array());
      }
    }
  }
  for (index j = 0; j < n_conv; ++j) {
    const block_geom& g = sh.conv[bz(j)];
    const row_matrix<T>* src = g.src < 0 ? &s.X : &s.O[bz(g.src)];
    const std::vector<T>& inv = c.in_inv[bz(j)];
    if (!inv.empty()) {  // the codes rint(input * inv) per input channel
      row_matrix<T>& xs = s.XS[bz(j)];
      xs.resize(g.C, src->cols());
      for (index ch = 0; ch < g.C; ++ch) xs.row(ch).array() = (src->row(ch).array() * inv[bz(ch)]).rint();
      src = &xs;
    }
    const row_matrix<T>& in = *src;
    const index OHW = g.OH * g.OW, M = nb * OHW;
    if (!g.direct) block_im2col(in, g, nb, s.cols[bz(j)]);
    row_matrix<T>& Z = s.O[bz(j)];
    Z.resize(g.K, M);
    Z.noalias() = *c.w[bz(j)] * (g.direct ? in : s.cols[bz(j)]);
    if (train) s.Dv[bz(j)].resize(g.K, M);
    const block_act<T>& A = c.act[bz(j)];
    const bool drop = train && A.on && c.qdrop > 0.0, learn = train && A.on && c.learn;
    if (learn) s.GS[bz(j)].resize(g.K, M);
    s.q.resize(M);
    s.dm.resize(M);
    s.mk.resize(M);
    for (index k = 0; k < g.K; ++k) {
      auto z = Z.row(k).array();
      z += c.b->bias[bz(j)][k];
      // a (in s.q) and its derivative mask (in s.mk): Q(z) with the STE, z where dropped or without quantizer.
      if (A.on) {
        const auto kk = bz(k);
        const T inv = A.inv[kk], zp = A.zp[kk], qm = A.qm[kk], sc = A.s[kk], lo = A.lo[kk], hi = A.hi[kk];
        s.q = (((z * inv).rint() + zp).max(T(0)).min(qm) - zp) * sc;
        if (train) {
          if (A.constant[kk]) s.mk.setZero();
          else s.mk = (z >= lo && z <= hi).select(arow::Ones(M), T(0));
        }
        if (learn) block_step_factors(A, kk, z, s.g);
        if (drop) {
          for (index i = 0; i < nb; ++i)
            block_drop_mask(block_drop_key(c.seed, t, j + 1, img[i]), k * OHW, OHW, thr, s.dm.data() + i * OHW);
          s.q = (s.dm != T(0)).select(z, s.q);
          s.mk = (s.dm != T(0)).select(arow::Ones(M), s.mk);
          if (learn) s.g = (s.dm != T(0)).select(T(0), s.g);
        }
      } else {
        s.q = z;
        if (train) s.mk.setOnes();
      }
      if (g.relu) {
        if (train) s.mk = (s.q > T(0)).select(s.mk, T(0));
        if (learn) s.g = (s.q > T(0)).select(s.g, T(0));
        z = (s.q > T(0)).select(s.q, T(0));
      } else {
        z = s.q;
      }
      if (train) s.Dv[bz(j)].row(k).array() = s.mk;
      if (learn) s.GS[bz(j)].row(k).array() = s.g;
    }
  }
}

// The chunk's block output before the final ReLU: o_main + s, at (k, i * OHW + p).
template <class T>
T block_pre(const block_ctx<T>& c, const block_scratch<T>& s, index k, index m) {
  const block_shape& sh = *c.sh;
  T v = s.O[bz(sh.main)](k, m);
  if (sh.shortcut == -1) v += s.X(k, m);
  else if (sh.shortcut >= 0) v += s.O[bz(sh.shortcut)](k, m);
  return v;
}

// Loss and backward of the chunk after block_chunk_forward(train) at iteration t: s.rec (sum of squares) and s.dW.
template <class T>
void block_chunk_backward(const block_ctx<T>& c, block_scratch<T>& s, const index* img, index nb, index t) {
  using arow = Eigen::Array<T, 1, Eigen::Dynamic>;
  const block_shape& sh = *c.sh;
  const index n_conv = static_cast<index>(sh.conv.size()), OHW = sh.OH * sh.OW, M = nb * OHW;
  s.dO.resize(bz(n_conv));
  s.dW.resize(bz(n_conv));
  s.has.assign(bz(n_conv), 0);
  if (c.learn) {
    s.ds.resize(bz(n_conv + 1));
    for (index j = 0; j < n_conv; ++j) s.ds[bz(j)].assign(bz(sh.conv[bz(j)].K), 0.0);
    s.ds[bz(n_conv)].assign(bz(sh.K_out), 0.0);
  }
  row_matrix<T>& dm = s.dO[bz(sh.main)];
  dm.resize(sh.K_out, M);
  const T scale = static_cast<T>(2.0 / (static_cast<double>(c.B) * static_cast<double>(OHW)));
  double rec = 0.0;
  const block_act<T>& A = c.out_act;
  const bool drop = A.on && c.qdrop > 0.0;
  const std::uint64_t thr = block_drop_threshold(c.qdrop);
  const index out_tensor = static_cast<index>(sh.conv.size()) + 1;
  s.q.resize(OHW);
  s.mk.resize(OHW);
  for (index i = 0; i < nb; ++i)
    for (index k = 0; k < sh.K_out; ++k) {
      auto& pre = s.q;  // o_main + s
      pre = s.O[bz(sh.main)].row(k).segment(i * OHW, OHW).array();
      if (sh.shortcut == -1) pre += s.X.row(k).segment(i * OHW, OHW).array();
      else if (sh.shortcut >= 0) pre += s.O[bz(sh.shortcut)].row(k).segment(i * OHW, OHW).array();
      auto& e = s.mk;  // out - y
      const auto yr = c.y->row(img[i] * sh.K_out + k).array();
      auto d = dm.row(k).segment(i * OHW, OHW).array();
      if (A.on) {  // out = Q_out(v), v = relu?(pre); derivative: ReLU mask times the STE (ReLU mask alone where dropped)
        const auto kk = bz(k);
        if (sh.relu) {
          s.rm = (pre > T(0)).select(arow::Ones(OHW), T(0));
          pre = (pre > T(0)).select(pre, T(0));
        } else {
          s.rm.setOnes(OHW);
        }
        s.dm.resize(OHW);  // the STE's mask
        if (A.constant[kk]) s.dm.setZero();
        else s.dm = (pre >= A.lo[kk] && pre <= A.hi[kk]).select(arow::Ones(OHW), T(0));
        if (c.learn) block_step_factors(A, kk, pre, s.g);  // of v = relu?(pre)
        e = (((pre * A.inv[kk]).rint() + A.zp[kk]).max(T(0)).min(A.qm[kk]) - A.zp[kk]) * A.s[kk];
        s.dm *= s.rm;
        if (drop) {
          s.om.resize(OHW);
          block_drop_mask(block_drop_key(c.seed, t, out_tensor, img[i]), k * OHW, OHW, thr, s.om.data());
          e = (s.om != T(0)).select(pre, e);
          s.dm = (s.om != T(0)).select(s.rm, s.dm);
          if (c.learn) s.g = (s.om != T(0)).select(T(0), s.g);
        }
        e -= yr;
        d = e * scale * s.dm;
        if (c.learn) s.ds[bz(n_conv)][kk] += (e * scale * s.g).template cast<double>().sum();
      } else if (sh.relu) {
        e = (pre > T(0)).select(pre, T(0)) - yr;
        d = (pre > T(0)).select(e * scale, T(0));
      } else {
        e = pre - yr;
        d = e * scale;
      }
      rec += e.template cast<double>().square().sum();
    }
  s.rec = rec;
  s.has[bz(sh.main)] = 1;
  if (sh.shortcut >= 0) {
    s.dO[bz(sh.shortcut)] = dm;
    s.has[bz(sh.shortcut)] = 1;
  }
  for (index j = n_conv - 1; j >= 0; --j) {
    const block_geom& g = sh.conv[bz(j)];
    row_matrix<T>& dW = s.dW[bz(j)];
    if (!s.has[bz(j)]) {
      dW.setZero(g.K, g.D);
      continue;
    }
    row_matrix<T>& dZ = s.dO[bz(j)];
    if (c.learn && c.act[bz(j)].on)  // dL/dscale = sum dL/do_j * d o_j / d scale, per output channel
      for (index k = 0; k < g.K; ++k)
        s.ds[bz(j)][bz(k)] = (dZ.row(k).array() * s.GS[bz(j)].row(k).array()).template cast<double>().sum();
    dZ.array() *= s.Dv[bz(j)].array();
    const std::vector<T>& inv = c.in_inv[bz(j)];
    const row_matrix<T>& in =
        !g.direct ? s.cols[bz(j)] : !inv.empty() ? s.XS[bz(j)] : g.src < 0 ? s.X : s.O[bz(g.src)];
    dW.noalias() = dZ * in.transpose();
    if (g.src < 0) continue;
    row_matrix<T>& dsrc = s.dO[bz(g.src)];
    const row_matrix<T>& Wj = *c.w[bz(j)];
    if (!inv.empty()) {  // d codes / d input = inv per input channel (straight through the rounding)
      row_matrix<T>* dx = &s.dcols;
      s.dcols.noalias() = Wj.transpose() * dZ;
      if (!g.direct) {
        s.dX.setZero(g.C, nb * g.H * g.W);
        block_col2im(s.dcols, g, nb, s.dX);
        dx = &s.dX;
      }
      for (index ch = 0; ch < g.C; ++ch) dx->row(ch) *= inv[bz(ch)];
      if (s.has[bz(g.src)]) dsrc += *dx;
      else dsrc = *dx;
    } else if (g.direct) {
      if (s.has[bz(g.src)]) dsrc.noalias() += Wj.transpose() * dZ;
      else dsrc.noalias() = Wj.transpose() * dZ;
    } else {
      s.dcols.noalias() = Wj.transpose() * dZ;
      if (!s.has[bz(g.src)]) dsrc.setZero(g.C, nb * g.H * g.W);
      block_col2im(s.dcols, g, nb, dsrc);
    }
    s.has[bz(g.src)] = 1;
  }
}

// Runs f(task, thread) for task in [0, n) on a fixed set of threads (the caller is thread 0).
class block_pool {
 public:
  explicit block_pool(int threads) {
    for (int i = 1; i < threads; ++i) {
      try {
        workers_.emplace_back([this, i] { loop(i); });
      } catch (...) {
        break;  // fewer threads: the same result
      }
    }
  }
  ~block_pool() {
    {
      std::lock_guard<std::mutex> lock(m_);
      quit_ = true;
      ++gen_;
    }
    cv_.notify_all();
    for (auto& th : workers_) th.join();
  }
  block_pool(const block_pool&) = delete;
  block_pool& operator=(const block_pool&) = delete;

  int threads() const { return static_cast<int>(workers_.size()) + 1; }

  // f must not throw.
  void run(index n, const std::function<void(index, int)>& f) {
    {
      std::lock_guard<std::mutex> lock(m_);
      job_ = &f;
      n_ = n;
      next_ = 0;
      active_ = threads();
      ++gen_;
    }
    cv_.notify_all();
    work(0);
    std::unique_lock<std::mutex> lock(m_);
    done_cv_.wait(lock, [&] { return active_ == 0; });
  }

 private:
  void work(int id) {
    for (;;) {
      const index task = next_.fetch_add(1);
      if (task >= n_) break;
      (*job_)(task, id);
    }
    std::lock_guard<std::mutex> lock(m_);
    if (--active_ == 0) done_cv_.notify_all();
  }
  void loop(int id) {
    std::uint64_t seen = 0;
    for (;;) {
      {
        std::unique_lock<std::mutex> lock(m_);
        cv_.wait(lock, [&] { return gen_ != seen; });
        seen = gen_;
        if (quit_) return;
      }
      work(id);
    }
  }

  std::vector<std::thread> workers_;
  std::mutex m_;
  std::condition_variable cv_, done_cv_;
  const std::function<void(index, int)>* job_ = nullptr;
  index n_ = 0;
  std::atomic<index> next_{0};
  int active_ = 0;
  std::uint64_t gen_ = 0;
  bool quit_ = false;
};

// The fast path's state: rounding per conv, the pool, per-thread scratch and the totals.
template <class T>
struct block_fast_engine {
  block_ctx<T> ctx;
  std::vector<block_round<T>> R;
  std::vector<row_matrix<T>> total;  // dL/dW_soft per conv
  std::vector<block_scratch<T>> scratch;
  std::optional<block_pool> pool;
  std::vector<block_step<T>> steps;           // learned steps: per conv, then the block output
  std::vector<std::vector<double>> ds_total;  // their dL/dscale per output channel

  block_fast_engine(const block_shape& sh, const block_problem<T>& b, const Eigen::Ref<const row_matrix<T>>& xq,
                    const Eigen::Ref<const row_matrix<T>>& xfp, const Eigen::Ref<const row_matrix<T>>& y,
                    const block_params& p) {
    const index n_conv = static_cast<index>(sh.conv.size());
    ctx.sh = &sh;
    ctx.b = &b;
    ctx.xq = &xq;
    ctx.xfp = xfp.size() > 0 ? &xfp : nullptr;
    ctx.y = &y;
    ctx.seed = p.rounding.seed;
    ctx.qdrop = p.qdrop;
    R.resize(bz(n_conv));
    total.resize(bz(n_conv));
    for (index j = 0; j < n_conv; ++j) {
      R[bz(j)].init(b.weight[bz(j)], b.weight_grid[bz(j)], p.rounding);
      ctx.w.push_back(&R[bz(j)].Ws);
      ctx.act.push_back(block_act_of(b.act[bz(j)], sh.conv[bz(j)].K));
    }
    ctx.in_inv = block_in_inv(b, n_conv);
    ctx.out_act = block_act_of(b.output_act, sh.K_out);
    ctx.learn = p.act_lr > 0.0;
    for (index j = 0; j < n_conv; ++j) {
      steps.emplace_back(b.act[bz(j)]);
      ds_total.emplace_back(bz(sh.conv[bz(j)].K), 0.0);
    }
    steps.emplace_back(b.output_act);
    ds_total.emplace_back(bz(sh.K_out), 0.0);
    const index B = std::min(p.rounding.batch, sh.N), chunks = (B + block_chunk_images - 1) / block_chunk_images;
    const int hw = static_cast<int>(std::thread::hardware_concurrency());
    const int wanted = p.rounding.threads > 0 ? p.rounding.threads : std::max(hw, 1);
    pool.emplace(static_cast<int>(std::min<index>(wanted, chunks)));
    scratch.resize(bz(pool->threads()));
  }

  // rec (the mean) and total = dL_rec/dW_soft at the current W_soft on images idx, iteration t.
  double evaluate(const std::vector<index>& idx, index t) {
    const block_shape& sh = *ctx.sh;
    const index B = static_cast<index>(idx.size());
    const index chunks = (B + block_chunk_images - 1) / block_chunk_images;
    ctx.B = B;
    for (std::size_t j = 0; j < total.size(); ++j) total[j].setZero(sh.conv[j].K, sh.conv[j].D);
    for (auto& d : ds_total) std::fill(d.begin(), d.end(), 0.0);
    double rec = 0.0;
    std::mutex m;
    std::condition_variable cv;
    index next_add = 0;
    std::exception_ptr err;
    const std::function<void(index, int)> f = [&](index ch, int id) {
      block_scratch<T>& s = scratch[bz(id)];
      const index i0 = ch * block_chunk_images, nb = std::min(block_chunk_images, B - i0);
      bool ok = true;
      try {
        block_chunk_forward(ctx, s, idx.data() + i0, nb, t, true);
        block_chunk_backward(ctx, s, idx.data() + i0, nb, t);
      } catch (...) {
        ok = false;
        std::lock_guard<std::mutex> lock(m);
        if (!err) err = std::current_exception();
      }
      std::unique_lock<std::mutex> lock(m);
      cv.wait(lock, [&] { return next_add == ch; });
      if (ok && !err) {
        for (std::size_t j = 0; j < total.size(); ++j) total[j] += s.dW[j];
        if (ctx.learn)
          for (std::size_t j = 0; j < ds_total.size(); ++j)
            for (std::size_t k = 0; k < ds_total[j].size(); ++k) ds_total[j][k] += s.ds[j][k];
        rec += s.rec;
      }
      ++next_add;
      cv.notify_all();
    };
    pool->run(chunks, f);
    if (err) std::rethrow_exception(err);
    return rec / (static_cast<double>(B) * static_cast<double>(sh.OH * sh.OW));
  }

  // Adam on the learned steps after evaluate() at iteration t; the quantizers then use them.
  void update_steps(const block_params& p, index t) {
    const block_shape& sh = *ctx.sh;
    for (std::size_t j = 0; j < steps.size(); ++j) steps[j].update(ds_total[j], p.act_lr, p.rounding, t);
    for (std::size_t j = 0; j < sh.conv.size(); ++j) ctx.act[j] = block_act_of(steps[j].p, sh.conv[j].K);
    ctx.out_act = block_act_of(steps.back().p, sh.K_out);
  }
};

// The plain twin's state, in double: per conv adaround_plain's arrays.
template <class T>
struct block_plain_engine {
  struct conv_state {
    std::vector<adaround_grid<T>> grid;
    std::vector<double> F, V, M, S, Ws, H, DH, SC, G;
    std::vector<double> inv, zp, qm, sc, lo, hi;  // act, per output channel
    std::vector<char> constant;
    bool act = false;
    std::vector<double> in_inv;  // empty or C: 1 / input_scale in T (0 where 0)
  };
  const block_shape* sh = nullptr;
  const block_problem<T>* b = nullptr;
  const Eigen::Ref<const row_matrix<T>>* xq = nullptr;
  const Eigen::Ref<const row_matrix<T>>* xfp = nullptr;
  const Eigen::Ref<const row_matrix<T>>* y = nullptr;
  block_params p;
  std::vector<conv_state> cs;
  block_act<T> out_act;  // output_act per output channel (in T; read as double)
  std::vector<block_step<T>> steps;     // learned steps (p.act_lr > 0): per conv, then the block output
  std::vector<std::vector<double>> ds;  // their dL/dscale per output channel

  void set_act(std::size_t j, const std::optional<quant_params<T>>& q) {
    conv_state& c = cs[j];
    const block_act<T> A = block_act_of(q, sh->conv[j].K);
    c.act = A.on;
    c.inv.clear(), c.zp.clear(), c.qm.clear(), c.sc.clear(), c.lo.clear(), c.hi.clear();
    for (std::size_t k = 0; k < A.inv.size(); ++k) {
      c.inv.push_back(static_cast<double>(A.inv[k]));
      c.zp.push_back(static_cast<double>(A.zp[k]));
      c.qm.push_back(static_cast<double>(A.qm[k]));
      c.sc.push_back(static_cast<double>(A.s[k]));
      c.lo.push_back(static_cast<double>(A.lo[k]));
      c.hi.push_back(static_cast<double>(A.hi[k]));
    }
    c.constant = A.constant;
  }

  // Adam on the learned steps after evaluate() at iteration t.
  void update_steps(index t) {
    for (std::size_t j = 0; j < steps.size(); ++j) steps[j].update(ds[j], p.act_lr, p.rounding, t);
    for (std::size_t j = 0; j < cs.size(); ++j) set_act(j, steps[j].p);
    out_act = block_act_of(steps.back().p, sh->K_out);
  }

  block_plain_engine(const block_shape& shape, const block_problem<T>& prob, const Eigen::Ref<const row_matrix<T>>& x_q,
                     const Eigen::Ref<const row_matrix<T>>& x_fp, const Eigen::Ref<const row_matrix<T>>& y_,
                     const block_params& params)
      : sh(&shape), b(&prob), xq(&x_q), xfp(x_fp.size() > 0 ? &x_fp : nullptr), y(&y_), p(params) {
    const adaround_params& a = p.rounding;
    cs.resize(sh->conv.size());
    for (std::size_t j = 0; j < cs.size(); ++j) {
      const block_geom& g = sh->conv[j];
      conv_state& c = cs[j];
      c.grid = adaround_grids(b->weight_grid[j], g.K);
      const std::size_t n = bz(g.K * g.D);
      c.F.assign(n, 0.0);
      c.V.assign(n, 0.0);
      c.M.assign(n, 0.0);
      c.S.assign(n, 0.0);
      c.Ws.assign(n, 0.0);
      c.H.assign(n, 0.0);
      c.DH.assign(n, 0.0);
      c.SC.assign(n, 0.0);
      c.G.assign(n, 0.0);
      for (index k = 0; k < g.K; ++k) {
        const auto& gr = c.grid[bz(k)];
        for (index d = 0; d < g.D; ++d) {
          const std::size_t at = bz(k * g.D + d);
          if (!gr.active) {
            c.Ws[at] = (static_cast<double>(gr.const_code) - static_cast<double>(gr.z)) * static_cast<double>(gr.s);
            continue;
          }
          const double u = static_cast<double>(adaround_u(b->weight[j](k, d), gr)), fl = std::floor(u), r = u - fl;
          c.F[at] = fl + static_cast<double>(gr.z);
          c.V[at] = -std::log((a.zeta - a.gamma) / (r - a.gamma) - 1.0);
        }
      }
      set_act(j, b->act[j]);
      steps.emplace_back(b->act[j]);
      ds.emplace_back(bz(g.K), 0.0);
    }
    steps.emplace_back(b->output_act);
    ds.emplace_back(bz(sh->K_out), 0.0);
    const auto inv = block_in_inv(*b, static_cast<index>(cs.size()));
    for (std::size_t j = 0; j < cs.size(); ++j)
      for (const T v : inv[j]) cs[j].in_inv.push_back(static_cast<double>(v));
    out_act = block_act_of(b->output_act, sh->K_out);
  }

  void soft() {
    const double zeta = p.rounding.zeta, gamma = p.rounding.gamma;
    for (std::size_t j = 0; j < cs.size(); ++j) {
      conv_state& c = cs[j];
      const index D = sh->conv[j].D;
      for (index k = 0; k < sh->conv[j].K; ++k) {
        const auto& g = c.grid[bz(k)];
        if (!g.active) continue;
        const double s = static_cast<double>(g.s), z = static_cast<double>(g.z), q = static_cast<double>(g.q);
        for (index d = 0; d < D; ++d) {
          const std::size_t at = bz(k * D + d);
          const double sig = 1.0 / (1.0 + std::exp(-c.V[at])), P = sig * (zeta - gamma) + gamma;
          const double h = std::min(std::max(P, 0.0), 1.0), cc = c.F[at] + h;
          c.H[at] = h;
          c.DH[at] = P >= 0.0 && P <= 1.0 ? sig * (1.0 - sig) * (zeta - gamma) : 0.0;
          c.SC[at] = cc >= 0.0 && cc <= q ? s : 0.0;
          c.Ws[at] = (std::min(std::max(cc, 0.0), q) - z) * s;
        }
      }
    }
  }

  // rec (the mean) and every G = dL_rec/dW_soft on images idx at iteration t; direct loops.
  double evaluate(const std::vector<index>& idx, index t) {
    const block_shape& S = *sh;
    const index n_conv = static_cast<index>(S.conv.size()), HW = S.H * S.W, OHW = S.OH * S.OW;
    const double B = static_cast<double>(idx.size()), qdrop = p.qdrop;
    const std::uint64_t seed = p.rounding.seed;
    const bool learn = p.act_lr > 0.0;
    for (auto& c : cs) std::fill(c.G.begin(), c.G.end(), 0.0);
    for (auto& d : ds) std::fill(d.begin(), d.end(), 0.0);
    // gs: d o_j / d scale (block_step_factor, 0 where dropped, constant or cut by the ReLU)
    std::vector<std::vector<double>> o(bz(n_conv)), dv(bz(n_conv)), dO(bz(n_conv)), xs(bz(n_conv)), gs(bz(n_conv));
    std::vector<double> x(bz(S.C_in * HW));
    double rec = 0.0;
    for (const index n : idx) {
      const std::uint64_t key0 = block_drop_key(seed, t, 0, n);
      for (index ch = 0; ch < S.C_in; ++ch)
        for (index q = 0; q < HW; ++q) {
          const bool drop = xfp && block_dropped(key0, ch * HW + q, qdrop);
          x[bz(ch * HW + q)] = static_cast<double>(drop ? (*xfp)(n * S.C_in + ch, q) : (*xq)(n * S.C_in + ch, q));
        }
      for (index j = 0; j < n_conv; ++j) {
        const block_geom& g = S.conv[bz(j)];
        const conv_state& c = cs[bz(j)];
        const std::vector<double>& src = g.src < 0 ? x : o[bz(g.src)];
        if (!c.in_inv.empty()) {  // the codes rint(input * inv)
          xs[bz(j)].resize(src.size());
          for (index ci = 0; ci < g.C; ++ci)
            for (index q = 0; q < g.H * g.W; ++q) {
              const std::size_t at = bz(ci * g.H * g.W + q);
              xs[bz(j)][at] = std::nearbyint(src[at] * c.in_inv[bz(ci)]);
            }
        }
        const std::vector<double>& in = c.in_inv.empty() ? src : xs[bz(j)];
        const index gOHW = g.OH * g.OW;
        o[bz(j)].assign(bz(g.K * gOHW), 0.0);
        dv[bz(j)].assign(bz(g.K * gOHW), 0.0);
        gs[bz(j)].assign(bz(g.K * gOHW), 0.0);
        const std::uint64_t key = block_drop_key(seed, t, j + 1, n);
        for (index k = 0; k < g.K; ++k)
          for (index oy = 0; oy < g.OH; ++oy)
            for (index ox = 0; ox < g.OW; ++ox) {
              double v = static_cast<double>(b->bias[bz(j)][k]);
              for (index ci = 0; ci < g.C; ++ci)
                for (index r = 0; r < g.k; ++r)
                  for (index s = 0; s < g.k; ++s) {
                    const index iy = oy * g.stride + r - g.pad, ix = ox * g.stride + s - g.pad;
                    if (iy < 0 || iy >= g.H || ix < 0 || ix >= g.W) continue;
                    v += c.Ws[bz(k * g.D + (ci * g.k + r) * g.k + s)] * in[bz((ci * g.H + iy) * g.W + ix)];
                  }
              const index e = k * gOHW + oy * g.OW + ox;
              double a = v, d = 1.0, f = 0.0;
              if (c.act && !block_dropped(key, e, qdrop)) {
                const auto kk = bz(k);
                a = dequantize_value(quantize_value(v, c.inv[kk], c.zp[kk], c.qm[kk]), c.zp[kk], c.sc[kk]);
                d = !c.constant[kk] && v >= c.lo[kk] && v <= c.hi[kk] ? 1.0 : 0.0;
                if (learn && !c.constant[kk]) f = block_step_factor(v, c.inv[kk], c.zp[kk], c.qm[kk], c.lo[kk], c.hi[kk]);
              }
              if (g.relu && !(a > 0.0)) {
                a = 0.0;
                d = 0.0;
                f = 0.0;
              }
              o[bz(j)][bz(e)] = a;
              dv[bz(j)][bz(e)] = d;
              gs[bz(j)][bz(e)] = f;
            }
      }
      for (index j = 0; j < n_conv; ++j) dO[bz(j)].assign(o[bz(j)].size(), 0.0);
      const std::uint64_t key_out = block_drop_key(seed, t, n_conv + 1, n);
      for (index k = 0; k < S.K_out; ++k)
        for (index q = 0; q < OHW; ++q) {
          const std::size_t e = bz(k * OHW + q);
          double pre = o[bz(S.main)][e];
          if (S.shortcut == -1) pre += x[e];
          if (S.shortcut >= 0) pre += o[bz(S.shortcut)][e];
          bool pass = !S.relu || pre > 0.0;
          double v = pass ? pre : 0.0, f = 0.0;
          if (out_act.on && !block_dropped(key_out, e, qdrop)) {
            const auto kk = bz(k);
            const double inv = static_cast<double>(out_act.inv[kk]), zp = static_cast<double>(out_act.zp[kk]);
            const double qm = static_cast<double>(out_act.qm[kk]), sc = static_cast<double>(out_act.s[kk]);
            const double lo = static_cast<double>(out_act.lo[kk]), hi = static_cast<double>(out_act.hi[kk]);
            pass = pass && !out_act.constant[kk] && v >= lo && v <= hi;
            if (learn && !out_act.constant[kk]) f = block_step_factor(v, inv, zp, qm, lo, hi);
            v = dequantize_value(quantize_value(v, inv, zp, qm), zp, sc);
          }
          const double err = v - static_cast<double>((*y)(n * S.K_out + k, q));
          rec += err * err;
          if (learn) ds.back()[bz(k)] += 2.0 * err / (B * static_cast<double>(OHW)) * f;
          const double g = pass ? 2.0 * err / (B * static_cast<double>(OHW)) : 0.0;
          dO[bz(S.main)][e] += g;
          if (S.shortcut >= 0) dO[bz(S.shortcut)][e] += g;
        }
      for (index j = n_conv - 1; j >= 0; --j) {
        const block_geom& g = S.conv[bz(j)];
        conv_state& c = cs[bz(j)];
        const std::vector<double>& in = c.in_inv.empty() ? (g.src < 0 ? x : o[bz(g.src)]) : xs[bz(j)];
        std::vector<double>* din = g.src < 0 ? nullptr : &dO[bz(g.src)];
        for (index k = 0; k < g.K; ++k)
          for (index oy = 0; oy < g.OH; ++oy)
            for (index ox = 0; ox < g.OW; ++ox) {
              const std::size_t e = bz(k * g.OH * g.OW + oy * g.OW + ox);
              if (learn) ds[bz(j)][bz(k)] += dO[bz(j)][e] * gs[bz(j)][e];
              const double dz = dO[bz(j)][e] * dv[bz(j)][e];
              if (dz == 0.0) continue;
              for (index ci = 0; ci < g.C; ++ci)
                for (index r = 0; r < g.k; ++r)
                  for (index s = 0; s < g.k; ++s) {
                    const index iy = oy * g.stride + r - g.pad, ix = ox * g.stride + s - g.pad;
                    if (iy < 0 || iy >= g.H || ix < 0 || ix >= g.W) continue;
                    const std::size_t wi = bz(k * g.D + (ci * g.k + r) * g.k + s), ii = bz((ci * g.H + iy) * g.W + ix);
                    c.G[wi] += dz * in[ii];
                    if (din) (*din)[ii] += dz * c.Ws[wi] * (c.in_inv.empty() ? 1.0 : c.in_inv[bz(ci)]);
                  }
            }
      }
    }
    return rec / (B * static_cast<double>(OHW));
  }

  // G: dL_rec/dW_soft in, dL/dV out; adds the regularizer's sum to reg.
  void gradient(index t, double& reg) {
    const adaround_params& a = p.rounding;
    const bool reg_on = adaround_regularized(a, t);
    const double beta = adaround_beta(a, t);
    for (std::size_t j = 0; j < cs.size(); ++j) {
      conv_state& c = cs[j];
      const index D = sh->conv[j].D;
      for (index k = 0; k < sh->conv[j].K; ++k) {
        const bool active = c.grid[bz(k)].active;
        for (index d = 0; d < D; ++d) {
          const std::size_t at = bz(k * D + d);
          if (!active) {
            c.G[at] = 0.0;
            continue;
          }
          double g = c.G[at] * c.SC[at] * c.DH[at];
          if (reg_on) {
            const double s2 = 2.0 * c.H[at] - 1.0, A = std::abs(s2);
            reg += 1.0 - std::pow(A, beta);
            const double sign = s2 > 0.0 ? 1.0 : s2 < 0.0 ? -1.0 : 0.0;
            g += -2.0 * a.lambda * beta * std::pow(A, beta - 1.0) * sign * c.DH[at];
          }
          c.G[at] = g;
        }
      }
    }
  }

  void adam(index t) {
    const adaround_params& a = p.rounding;
    const double n1 = static_cast<double>(t + 1);
    const double step_size = a.lr / (1.0 - std::pow(a.adam_beta1, n1));
    const double bc2_sqrt = std::sqrt(1.0 - std::pow(a.adam_beta2, n1));
    for (std::size_t j = 0; j < cs.size(); ++j) {
      conv_state& c = cs[j];
      const index D = sh->conv[j].D;
      for (index k = 0; k < sh->conv[j].K; ++k) {
        if (!c.grid[bz(k)].active) continue;
        for (index d = 0; d < D; ++d) {
          const std::size_t at = bz(k * D + d);
          const double g = c.G[at];
          c.M[at] = a.adam_beta1 * c.M[at] + (1.0 - a.adam_beta1) * g;
          c.S[at] = a.adam_beta2 * c.S[at] + (1.0 - a.adam_beta2) * g * g;
          c.V[at] -= step_size * c.M[at] / (std::sqrt(c.S[at]) / bc2_sqrt + a.adam_eps);
        }
      }
    }
  }
};

// The hard codes and weights from V (either engine), per conv.
template <class T, class GetV, class GetF>
void block_finish(const block_shape& sh, const block_problem<T>& b, GetV v_of, GetF f_of, block_result<T>& out,
                  const char* where) {
  for (std::size_t j = 0; j < sh.conv.size(); ++j) {
    const block_geom& g = sh.conv[j];
    const std::vector<adaround_grid<T>> grid = adaround_grids(b.weight_grid[j], g.K);
    out.codes.emplace_back(g.K, g.D);
    out.weights.emplace_back(g.K, g.D);
    for (index k = 0; k < g.K; ++k) {
      const auto& gr = grid[bz(k)];
      for (index d = 0; d < g.D; ++d) {
        const double v = v_of(j, k, d);
        require(std::isfinite(v), where, "V of conv ", j, " (", k, ", ", d, ") = ", v, " is not finite after ",
                out.iterations, " iterations");
        const T c = gr.active ? std::min(std::max(static_cast<T>(f_of(j, k, d)) + (v >= 0.0 ? T(1) : T(0)), T(0)), gr.q)
                              : static_cast<T>(gr.const_code);
        out.codes.back()(k, d) = static_cast<std::uint16_t>(c);
        out.weights.back()(k, d) = (c - gr.z) * gr.s;
      }
    }
  }
}

template <class T>
block_result<T> block_run_fast(const block_shape& sh, const block_problem<T>& b,
                               const Eigen::Ref<const row_matrix<T>>& x_q, const Eigen::Ref<const row_matrix<T>>& x_fp,
                               const Eigen::Ref<const row_matrix<T>>& y, const block_params& p, const char* where) {
  using clock = std::chrono::steady_clock;
  const auto start = clock::now();
  const adaround_params& a = p.rounding;
  block_fast_engine<T> eng(sh, b, x_q, x_fp, y, p);
  adaround_sampler sampler(a.seed, sh.N, a.batch);
  block_result<T> out;
  for (index t = 0; t < a.iterations; ++t) {
    for (auto& r : eng.R) r.soft(a);
    const double rec = eng.evaluate(sampler.next(), t);
    double reg = 0.0;
    for (std::size_t j = 0; j < eng.R.size(); ++j) {
      eng.R[j].gradient(eng.total[j], a, t, reg);
      eng.R[j].adam(eng.total[j], a, t);
    }
    if (eng.ctx.learn) eng.update_steps(p, t);
    reg = adaround_regularized(a, t) ? a.lambda * reg : 0.0;
    adaround_check_loss(rec, reg, t, where);
    out.rec_loss.push_back(rec);
    out.reg_loss.push_back(reg);
    out.beta.push_back(adaround_beta(a, t));
    out.iterations = t + 1;
    if (t + 1 < a.iterations && std::chrono::duration<double>(clock::now() - start).count() >= a.seconds) {
      out.stopped_by_time = true;
      break;
    }
  }
  block_finish<T>(
      sh, b, [&](std::size_t j, index k, index d) { return static_cast<double>(eng.R[j].V(k, d)); },
      [&](std::size_t j, index k, index d) { return static_cast<double>(eng.R[j].F(k, d)); }, out, where);
  for (std::size_t j = 0; j < sh.conv.size(); ++j) out.act.push_back(eng.steps[j].p);
  out.output_act = eng.steps.back().p;
  out.seconds = std::chrono::duration<double>(clock::now() - start).count();
  return out;
}

template <class T>
block_result<T> block_run_plain(const block_shape& sh, const block_problem<T>& b,
                                const Eigen::Ref<const row_matrix<T>>& x_q, const Eigen::Ref<const row_matrix<T>>& x_fp,
                                const Eigen::Ref<const row_matrix<T>>& y, const block_params& p, const char* where) {
  using clock = std::chrono::steady_clock;
  const auto start = clock::now();
  const adaround_params& a = p.rounding;
  block_plain_engine<T> eng(sh, b, x_q, x_fp, y, p);
  adaround_sampler sampler(a.seed, sh.N, a.batch);
  block_result<T> out;
  for (index t = 0; t < a.iterations; ++t) {
    eng.soft();
    const double rec = eng.evaluate(sampler.next(), t);
    double reg = 0.0;
    eng.gradient(t, reg);
    eng.adam(t);
    if (p.act_lr > 0.0) eng.update_steps(t);
    reg = adaround_regularized(a, t) ? a.lambda * reg : 0.0;
    adaround_check_loss(rec, reg, t, where);
    out.rec_loss.push_back(rec);
    out.reg_loss.push_back(reg);
    out.beta.push_back(adaround_beta(a, t));
    out.iterations = t + 1;
    if (t + 1 < a.iterations && std::chrono::duration<double>(clock::now() - start).count() >= a.seconds) {
      out.stopped_by_time = true;
      break;
    }
  }
  block_finish<T>(
      sh, b, [&](std::size_t j, index k, index d) { return eng.cs[j].V[bz(k * sh.conv[j].D + d)]; },
      [&](std::size_t j, index k, index d) { return eng.cs[j].F[bz(k * sh.conv[j].D + d)]; }, out, where);
  for (std::size_t j = 0; j < sh.conv.size(); ++j) out.act.push_back(eng.steps[j].p);
  out.output_act = eng.steps.back().p;
  out.seconds = std::chrono::duration<double>(clock::now() - start).count();
  return out;
}

// For tests: the loss L(t) = rec + reg and dL/dV (per conv, K x D; 0 on constant rows) at the
// given V (per conv, K x D) on the images idx, by the fast path (plain = false) or the twin.
template <class T>
struct block_loss_gradient {
  double rec = 0.0, reg = 0.0;
  std::vector<row_matrix<T>> grad;
  std::vector<std::vector<double>> step_grad;  // params.act_lr > 0: dL/dscale per output channel, per conv then the output
};

template <class T>
block_loss_gradient<T> block_loss_and_gradient(const block_problem<T>& b, const block_in<T>& x_q,
                                               const block_in<T>& x_fp, index height, index width,
                                               const block_in<T>& y, const block_params& p,
                                               const std::vector<row_matrix<T>>& V, const std::vector<index>& idx,
                                               index t, bool plain) {
  static constexpr const char* where = "ptq::detail::block_loss_and_gradient";
  const block_shape sh = block_check(b, x_q, x_fp, height, width, y, p, where);
  require(V.size() == sh.conv.size(), where, "V.size() = ", V.size(), " is not the number of convs");
  for (std::size_t j = 0; j < V.size(); ++j)
    require(V[j].rows() == sh.conv[j].K && V[j].cols() == sh.conv[j].D, where, "V[", j, "] has the wrong shape");
  for (const index n : idx) require(n >= 0 && n < sh.N, where, "image ", n, " is outside [0, N)");
  block_loss_gradient<T> out;
  const adaround_params& a = p.rounding;
  if (!plain) {
    block_fast_engine<T> eng(sh, b, x_q, x_fp, y, p);
    for (std::size_t j = 0; j < V.size(); ++j) {
      for (index k = 0; k < V[j].rows(); ++k)
        if (eng.R[j].grid[bz(k)].active) eng.R[j].V.row(k) = V[j].row(k);
      eng.R[j].soft(a);
    }
    out.rec = eng.evaluate(idx, t);
    for (std::size_t j = 0; j < V.size(); ++j) {
      eng.R[j].gradient(eng.total[j], a, t, out.reg);
      out.grad.push_back(eng.total[j]);
    }
    if (p.act_lr > 0.0) out.step_grad = eng.ds_total;
  } else {
    block_plain_engine<T> eng(sh, b, x_q, x_fp, y, p);
    for (std::size_t j = 0; j < V.size(); ++j)
      for (index k = 0; k < V[j].rows(); ++k)
        if (eng.cs[j].grid[bz(k)].active)
          for (index d = 0; d < V[j].cols(); ++d) eng.cs[j].V[bz(k * V[j].cols() + d)] = static_cast<double>(V[j](k, d));
    eng.soft();
    out.rec = eng.evaluate(idx, t);
    if (p.act_lr > 0.0) out.step_grad = eng.ds;
    eng.gradient(t, out.reg);
    for (std::size_t j = 0; j < V.size(); ++j)
      out.grad.push_back(
          Eigen::Map<const row_matrix<double>>(eng.cs[j].G.data(), V[j].rows(), V[j].cols()).template cast<T>());
  }
  out.reg = adaround_regularized(a, t) ? a.lambda * out.reg : 0.0;
  return out;
}

}  // namespace detail

// Learns the rounding of every conv of the block; see the top of this file.
// x_q: the block's input in the quantized network, N images, (N C_in) x (H W) row-major (NCHW).
// x_fp: the FP32 network's block input, same shape, or 0 x 0: the block input is never dropped.
// y: the FP32 network's block output, (N K_out) x (OH OW): the target.
template <class T>
block_result<T> reconstruct_block(const block_problem<T>& b, const detail::block_in<T>& x_q,
                                  const detail::block_in<T>& x_fp, index height, index width,
                                  const detail::block_in<T>& y, const block_params& p = {}) {
  static constexpr const char* where = "ptq::reconstruct_block";
  const detail::block_shape sh = detail::block_check(b, x_q, x_fp, height, width, y, p, where);
  return detail::block_run_fast(sh, b, x_q, x_fp, y, p, where);
}

// The plain twin: one thread, direct-convolution loops in double.
template <class T>
block_result<T> reconstruct_block_ref(const block_problem<T>& b, const detail::block_in<T>& x_q,
                                      const detail::block_in<T>& x_fp, index height, index width,
                                      const detail::block_in<T>& y, const block_params& p = {}) {
  static constexpr const char* where = "ptq::reconstruct_block_ref";
  const detail::block_shape sh = detail::block_check(b, x_q, x_fp, height, width, y, p, where);
  return detail::block_run_plain(sh, b, x_q, x_fp, y, p, where);
}

// The block's output for the given weights (one per conv, K x C k k: block_result::weights, the
// float ones, ...), activations quantized by b.act and the output by b.output_act (no drop), convs
// with an input_scale reading codes: (N K_out) x (OH OW). Reads b.graph, b.bias, b.act,
// b.input_scale and b.output_act (b.weight and b.weight_grid are not used and may be empty). One thread, the
// fast path's forward (im2col + GEMM) in chunks of images.
template <class T>
row_matrix<T> block_forward(const block_problem<T>& b, const std::vector<row_matrix<T>>& weights,
                            const detail::block_in<T>& x, index height, index width) {
  static constexpr const char* where = "ptq::block_forward";
  detail::block_shape sh = detail::block_check_problem(b, height, width, where, false);
  detail::require(weights.size() == sh.conv.size(), where, "weights.size() = ", weights.size(), " does not match the ",
                  sh.conv.size(), " convs of b.graph");
  for (std::size_t j = 0; j < weights.size(); ++j) {
    const std::string name = detail::concat("weights[", j, "]");
    detail::require(weights[j].rows() == sh.conv[j].K && weights[j].cols() == sh.conv[j].D, where, name, " is ",
                    weights[j].rows(), " x ", weights[j].cols(), ", expected ", sh.conv[j].K, " x ", sh.conv[j].D);
    detail::check_finite(weights[j], where, name.c_str());
  }
  detail::block_check_input<T>(sh, x, where, "x");
  detail::block_ctx<T> ctx;
  ctx.sh = &sh;
  ctx.b = &b;
  ctx.xq = &x;
  for (std::size_t j = 0; j < weights.size(); ++j) {
    ctx.w.push_back(&weights[j]);
    ctx.act.push_back(detail::block_act_of(b.act[j], sh.conv[j].K));
  }
  ctx.in_inv = detail::block_in_inv(b, static_cast<index>(sh.conv.size()));
  ctx.out_act = detail::block_act_of(b.output_act, sh.K_out);
  const detail::block_act<T>& A = ctx.out_act;
  const index OHW = sh.OH * sh.OW;
  row_matrix<T> out(sh.N * sh.K_out, OHW);
  detail::block_scratch<T> s;
  std::vector<index> img;
  for (index i0 = 0; i0 < sh.N; i0 += detail::block_chunk_images) {
    const index nb = std::min(detail::block_chunk_images, sh.N - i0);
    img.clear();
    for (index i = 0; i < nb; ++i) img.push_back(i0 + i);
    detail::block_chunk_forward(ctx, s, img.data(), nb, 0, false);
    for (index i = 0; i < nb; ++i)
      for (index k = 0; k < sh.K_out; ++k)
        for (index q = 0; q < OHW; ++q) {
          const T pre = detail::block_pre(ctx, s, k, i * OHW + q);
          const T v = sh.relu ? std::max(pre, T(0)) : pre;
          const auto kk = detail::bz(k);
          out((i0 + i) * sh.K_out + k, q) =
              A.on ? detail::dequantize_value(detail::quantize_value(v, A.inv[kk], A.zp[kk], A.qm[kk]), A.zp[kk], A.s[kk])
                   : v;
        }
  }
  return out;
}

}  // namespace ptq
