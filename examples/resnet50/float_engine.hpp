// float_engine.hpp: resnet::forward, the FP32 forward with quantization hooks, and its plain-loop twin forward_ref.
//
// Forward: NCHW float activations. Every conv is float_conv.hpp's im2col + GEMM (the
// batch's output columns cut into tasks sized to keep a task's buffers in L2), run on
// threads.hpp's pool of std::thread::hardware_concurrency() threads (the caller included)
// whose idle threads sleep rather than spin, which keeps the speed on a shared machine; no
// OpenMP is needed. forward() is const and may run concurrently; it keeps its buffers for
// the next call (release_workspace() frees them).
//
// Quantization hooks: the conv layers are a public vector (name, geometry, folded
// weights, bias, feeds_relu); the caller may replace weights and biases (same shapes).
// forward() takes an optional conv_hook, called once per conv per forward with the
// layer's index and its output (N*K) x (H*W) (an NCHW row view, channel = row % K) after
// the bias is added and BEFORE the residual add and the ReLU; the hook may modify it in
// place (fake quantization). Hooks are called in increasing layer index, from the
// calling thread. A features_hook sees (and may modify) the pooled features N x F, the
// fc layer's input; a pool_hook the max-pool output (N*C) x (H*W) of the ImageNet stem; a
// block_hook each block's output (N*K) x (H*W) after the add and the ReLU. With no hooks the bias, residual and ReLU are fused into the GEMM
// epilogue.
//
// conv2d_ref and resnet::forward_ref are the plain-loop twins (double accumulation).
#pragma once

#include <Eigen/Core>

#include <algorithm>
#include <cstddef>
#include <initializer_list>
#include <limits>
#include <memory>
#include <mutex>
#include <utility>
#include <vector>

#include <ptq/layout.hpp>

#include "float_conv.hpp"
#include "model.hpp"
#include "threads.hpp"

namespace ptq_example {

// Logits (N x classes) of the batch `input` = (N*C) x (H*W), NCHW rows (C = input_channels()).
// on_conv(layer, output) is called for every conv (see the top of this file), on_features
// on the pooled features N x F before fc, on_pool on the max-pool output (ImageNet stem).
// All may modify what they are given.
inline ptq::row_matrix<float> resnet::forward(const Eigen::Ref<const ptq::row_matrix<float>>& input, index height,
                                              index width, const conv_hook& on_conv, const features_hook& on_features,
                                              const pool_hook& on_pool, const block_hook& on_block) const {
  constexpr const char* where = "ptq_example::resnet::forward";
  const index n = check_input(input, height, width, where);
  const int threads = threads_ > 0 ? threads_ : detail::default_threads();

  std::unique_lock<std::mutex> lock(cache_mutex_, std::try_to_lock);
  std::unique_ptr<workspace> own;
  workspace* ws = lock.owns_lock() ? &cache_ : (own = std::make_unique<workspace>()).get();
  const index largest = largest_activation(n, height, width);
  for (auto& buf : ws->buf)
    if (static_cast<index>(buf.size()) < largest) buf.resize(static_cast<std::size_t>(largest));

  // Tensor t lives in ws->buf[t.slot]; slots are recycled.
  struct tensor {
    int slot;
    index C, H, W;
  };
  auto ptr = [&](const tensor& t) { return ws->buf[t.slot].data(); };
  auto free_slot = [&](std::initializer_list<int> busy) {
    for (int s = 0; s < 4; ++s)
      if (std::find(busy.begin(), busy.end(), s) == busy.end()) return s;
    return -1;
  };
  // y = max(y + residual, 0) (or max(y, 0)) over the whole tensor, in 4 chunks per thread.
  auto relu_pass = [&](const tensor& t, const float* residual) {
    const index size = n * t.C * t.H * t.W, chunks = 4 * index{threads};
    const index step = (size + chunks - 1) / chunks;
    float* y = ptr(t);
    detail::parallel_for(chunks, threads, [&](index c, int) {
      const index a = std::min(size, c * step), b = std::min(size, a + step);
      Eigen::Map<Eigen::ArrayXf> v(y + a, b - a);
      if (residual)
        v = (v + Eigen::Map<const Eigen::ArrayXf>(residual + a, b - a)).max(0.0f);
      else
        v = v.max(0.0f);
    });
  };
  // Runs conv `li` on x (at xs) into slot `slot`; residual (or nullptr) and relu as the epilogue.
  auto run_conv_at = [&](index li, const tensor& x, const float* xs, int slot, bool relu, const float* residual) {
    const conv_layer& L = convs_[static_cast<std::size_t>(li)];
    tensor y{slot, L.K, L.out_size(x.H), (x.W + 2 * L.pad - L.S) / L.stride + 1};
    epilogue e = epilogue::bias;
    if (!on_conv && relu) e = residual ? epilogue::bias_add_relu : epilogue::bias_relu;
    detail::conv2d_unchecked(L, xs, n, x.H, x.W, ptr(y), e, residual, threads, ws->scratch);
    if (on_conv) {
      on_conv(li, ptq::row_map<float>(ptr(y), n * y.C, y.H * y.W));
      if (relu) relu_pass(y, residual);
    }
    return y;
  };
  auto run_conv = [&](index li, const tensor& x, int slot, bool relu, const float* residual) {
    return run_conv_at(li, x, ptr(x), slot, relu, residual);
  };

  // Stem: reads the caller's input in place when its rows are contiguous, else a copy in slot 0.
  tensor x{0, input_channels(), height, width};
  const float* in0 = input.data();
  if (input.outerStride() != input.cols()) {
    ptq::row_map<float>(ptr(x), input.rows(), input.cols()) = input;
    in0 = ptr(x);
  }
  x = run_conv_at(0, x, in0, 1, true, nullptr);
  if (max_pool_) {
    x = max_pool(x, 0, n, ws, threads);
    if (on_pool) on_pool(ptq::row_map<float>(ptr(x), n * x.C, x.H * x.W));
  }

  const bool bottleneck = type_ == block_type::bottleneck;
  for (const resnet_block& b : blocks_) {
    const int in = x.slot;
    tensor mid = run_conv(b.conv1, x, free_slot({in}), true, nullptr);
    if (bottleneck) mid = run_conv(b.conv2, mid, free_slot({in, mid.slot}), true, nullptr);
    const index last = bottleneck ? b.conv3 : b.conv2;
    tensor id = x;
    if (on_conv) {
      // Hooks in layer order: the last conv (bias only), the downsample, then add + ReLU.
      const tensor y = run_conv(last, mid, free_slot({in, mid.slot}), false, nullptr);
      if (b.downsample >= 0) id = run_conv(b.downsample, x, free_slot({in, y.slot}), false, nullptr);
      relu_pass(y, ptr(id));
      x = y;
    } else {
      if (b.downsample >= 0) id = run_conv(b.downsample, x, free_slot({in, mid.slot}), false, nullptr);
      x = run_conv(last, mid, free_slot({in, mid.slot, id.slot}), true, ptr(id));
    }
    if (on_block) on_block(&b - blocks_.data(), ptq::row_map<float>(ptr(x), n * x.C, x.H * x.W));
  }

  // Global average pool into N x F, the features hook, fc.
  const index F = x.C, P = x.H * x.W;
  ptq::row_matrix<float> feat(n, F);
  const float* xs = ptr(x);
  detail::parallel_for(n, threads, [&](index i, int) {
    for (index c = 0; c < F; ++c) {
      const float* p = xs + (i * F + c) * P;
      double s = 0.0;
      for (index j = 0; j < P; ++j) s += p[j];
      feat(i, c) = static_cast<float>(s / static_cast<double>(P));
    }
  });
  if (on_features) on_features(ptq::row_map<float>(feat.data(), n, F));
  ptq::row_matrix<float> logits = feat * fc_.weight.transpose();
  logits.rowwise() += fc_.bias.transpose();
  return logits;
}

// The plain-loop twin of forward: conv2d_ref, direct max-pool, sums in double. Same hooks.
inline ptq::row_matrix<float> resnet::forward_ref(const Eigen::Ref<const ptq::row_matrix<float>>& input, index height,
                                                  index width, const conv_hook& on_conv,
                                                  const features_hook& on_features, const pool_hook& on_pool,
                                                  const block_hook& on_block) const {
  const index n = check_input(input, height, width, "ptq_example::resnet::forward_ref");
  struct tensor {
    std::vector<float> v;
    index C, H, W;
  };
  auto conv = [&](index li, const tensor& x) {
    const conv_layer& L = convs_[static_cast<std::size_t>(li)];
    tensor y{{}, L.K, L.out_size(x.H), (x.W + 2 * L.pad - L.S) / L.stride + 1};
    y.v.resize(static_cast<std::size_t>(n * y.C * y.H * y.W));
    conv2d_ref(L, x.v.data(), n, x.H, x.W, y.v.data(), epilogue::bias);
    if (on_conv) on_conv(li, ptq::row_map<float>(y.v.data(), n * y.C, y.H * y.W));
    return y;
  };
  auto finish = [&](tensor& y, const tensor* residual) {
    for (std::size_t i = 0; i < y.v.size(); ++i) y.v[i] = std::max(y.v[i] + (residual ? residual->v[i] : 0.0f), 0.0f);
  };
  tensor x{std::vector<float>(input.data(), input.data() + input.size()), input_channels(), height, width};
  x = conv(0, x);
  finish(x, nullptr);
  if (max_pool_) {
    tensor p{{}, x.C, (x.H - 1) / 2 + 1, (x.W - 1) / 2 + 1};
    p.v.assign(static_cast<std::size_t>(n * p.C * p.H * p.W), 0.0f);
    for (index i = 0; i < n * x.C; ++i)
      for (index oy = 0; oy < p.H; ++oy)
        for (index ox = 0; ox < p.W; ++ox) {
          float m = -std::numeric_limits<float>::infinity();
          for (index iy = 2 * oy - 1; iy <= 2 * oy + 1; ++iy)
            for (index ix = 2 * ox - 1; ix <= 2 * ox + 1; ++ix)
              if (iy >= 0 && iy < x.H && ix >= 0 && ix < x.W) m = std::max(m, x.v[(i * x.H + iy) * x.W + ix]);
          p.v[(i * p.H + oy) * p.W + ox] = m;
        }
    x = std::move(p);
    if (on_pool) on_pool(ptq::row_map<float>(x.v.data(), n * x.C, x.H * x.W));
  }
  for (const resnet_block& b : blocks_) {
    tensor t = conv(b.conv1, x);
    finish(t, nullptr);
    if (type_ == block_type::bottleneck) {
      t = conv(b.conv2, t);
      finish(t, nullptr);
    }
    tensor y = conv(type_ == block_type::basic ? b.conv2 : b.conv3, t);
    if (b.downsample >= 0) {
      const tensor id = conv(b.downsample, x);
      finish(y, &id);
    } else {
      finish(y, &x);
    }
    x = std::move(y);
    if (on_block) on_block(&b - blocks_.data(), ptq::row_map<float>(x.v.data(), n * x.C, x.H * x.W));
  }
  const index F = x.C, P = x.H * x.W;
  ptq::row_matrix<float> feat(n, F);
  for (index i = 0; i < n; ++i)
    for (index c = 0; c < F; ++c) {
      double s = 0.0;
      for (index j = 0; j < P; ++j) s += x.v[static_cast<std::size_t>((i * F + c) * P + j)];
      feat(i, c) = static_cast<float>(s / static_cast<double>(P));
    }
  if (on_features) on_features(ptq::row_map<float>(feat.data(), n, F));
  ptq::row_matrix<float> logits(n, classes());
  for (index i = 0; i < n; ++i)
    for (index k = 0; k < classes(); ++k) {
      double s = fc_.bias[k];
      for (index c = 0; c < F; ++c) s += double(fc_.weight(k, c)) * double(feat(i, c));
      logits(i, k) = static_cast<float>(s);
    }
  return logits;
}

// Largest activation (floats) over the network for a batch of n images of height x width.
inline index resnet::largest_activation(index n, index H, index W) const {
  index best = n * input_channels() * H * W;
  index h = H, w = W;
  auto visit = [&](const conv_layer& L, index& hh, index& ww) {
    hh = L.out_size(hh);
    ww = (ww + 2 * L.pad - L.S) / L.stride + 1;
    best = std::max(best, n * L.K * hh * ww);
  };
  visit(convs_.front(), h, w);
  if (max_pool_) {
    h = (h - 1) / 2 + 1;
    w = (w - 1) / 2 + 1;
  }
  for (const resnet_block& b : blocks_) {
    index h1 = h, w1 = w;
    visit(convs_[b.conv1], h1, w1);
    visit(convs_[b.conv2], h1, w1);
    if (b.conv3 >= 0) visit(convs_[b.conv3], h1, w1);
    if (b.downsample >= 0) {
      index h2 = h, w2 = w;
      visit(convs_[b.downsample], h2, w2);
    }
    h = h1;
    w = w1;
  }
  return best;
}

// 3x3 / stride 2 / pad 1 max-pool (padding never wins) of x into slot `slot`.
template <class Tensor>
Tensor resnet::max_pool(const Tensor& x, int slot, index n, workspace* ws, int threads) {
  Tensor y{slot, x.C, (x.H - 1) / 2 + 1, (x.W - 1) / 2 + 1};
  const float* in = ws->buf[x.slot].data();
  float* out = ws->buf[slot].data();
  detail::parallel_for(n * x.C, threads, [&](index plane, int) {
    const float* p = in + plane * x.H * x.W;
    float* q = out + plane * y.H * y.W;
    for (index oy = 0; oy < y.H; ++oy) {
      const index y0 = std::max<index>(0, 2 * oy - 1), y1 = std::min(x.H, 2 * oy + 2);
      for (index ox = 0; ox < y.W; ++ox) {
        const index x0 = std::max<index>(0, 2 * ox - 1), x1 = std::min(x.W, 2 * ox + 2);
        float m = -std::numeric_limits<float>::infinity();
        for (index iy = y0; iy < y1; ++iy)
          for (index ix = x0; ix < x1; ++ix) m = std::max(m, p[iy * x.W + ix]);
        q[oy * y.W + ox] = m;
      }
    }
  });
  return y;
}

}  // namespace ptq_example
