// int_engine.hpp: the integer ResNet forward on uint8 codes (NHWC), its plain-loop twin, and the input stage.
//
// int_engine runs an int_model (int_model.hpp has the arithmetic) on a batch:
//   input    float NCHW -> uint8 NHWC codes on the input grid (round half away from zero);
//   conv     per tile of output pixels: the im2col rows (NHWC, (r, s, c) order, padding
//            = each channel's zero point; a 1x1 stride-1 conv reads its input in place;
//            one copy per kernel row, its S*C bytes being contiguous) with their row sums,
//            the uint8 x int8 -> int32 GEMM (ptq/igemm.hpp, on weights packed once; where
//            the channel count leaves a lane of the last column block free (K % 16 != 0,
//            the bundled models' 12- and 24-channel convs) the GEMM returns the row sums
//            from a column of ones instead, and im2col only copies),
//            fine = (acc << F) - E rowsum + B (it fits int32: the model checked the worst
//            case), then the fixed-point output stage with the ReLU in its clamp
//            (int_kernels.hpp's conv_stage, equal to ptq::requantize) into the next codes;
//   add      ptq::add_requantize (TFLite's ADD: both inputs onto the block output's grid),
//            as int_kernels.hpp's add_stage_rows (per-channel tables where they are small);
//            where the block's last conv has a fast block-path stage (int_kernels.hpp's
//            can_fuse_add) the add runs inside that conv's output stage instead
//            (conv_add_stage: the identity is computed first, the conv's codes never leave
//            the registers, the block output is written once): no separate pass and no
//            write + read of the conv output (bundled model, W4A4, 1 thread: 3 x 48-channel
//            layer-1 adds 9.5 -> 7.4 ms each with their conv);
//   max-pool 3x3 / 2 / pad 1 on codes;
//   head     per image and channel the sum of codes minus P zero points (int64), the
//            classifier in int64, logits = u / P * (acc - e sum) + b in double.
// Two ways to split a batch over the threads (int_engine::split):
//   layers  every layer's tiles go over all threads, the images through the network together
//           or in chunks of chunk_images (bounds the activation memory), one chunk after the
//           other. For large images and small batches (ResNet-50 224): chunks that keep the
//           largest activation in cache were measured slower there, because every chunk
//           re-reads every layer's packed weights (batch 8, W8A8: 148 ms in chunks of 1 image
//           vs 97 ms whole; bench/README.md).
//   images  each thread runs whole chunks of images through the whole network alone, on its
//           own buffers: no barrier between layers, and a chunk small enough that its
//           activations stay in the core's cache. For many small images this is the faster
//           split (bundled ResNet-50 W4A4, batch 256, 2 threads: 59-62 -> 54-58 ms in paired
//           runs; chunks of 1-3 images were slower, 6-32 equal within noise, so the gain is the
//           barriers and small tiles of the layers split more than the cache).
//   automatic (the default) takes images when there is no hook, at least as many images as
//           threads, and a chunk of at least one image fits cache_budget (4 activations of the
//           largest layer); the chunk is then as many images as fit, at most n / threads.
// Hooks see whole chunks in order, so a forward with a hook always splits by layers.
// Input quantization, the adds, the max-pool and the head split over images or pixels on the
// worker pool as well. Tiles run on the worker pool (threads.hpp): a tile is a range of output pixels (of
// the whole batch) and, when there are few pixels (ResNet-50's last stage at batch 1),
// a group of output channels, so both cores have work.
// int_forward_ref is the same network in plain loops: direct convolution with int64
// sums, requantize_ref / add_requantize_ref; every code equals the engine's.
// Hooks see every conv output and block output (codes, NHWC) for tests and dumps.
#pragma once

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <exception>
#include <functional>
#include <memory>
#include <mutex>
#include <vector>

#include <ptq/fixedpoint.hpp>
#include <ptq/igemm.hpp>

#include "int_kernels.hpp"
#include "int_model.hpp"
#include "threads.hpp"

namespace ptq_example {

// kind 0: conv `index`'s output; kind 1: block `index`'s output. codes: pixels x channels (NHWC).
using int_hook = std::function<void(int kind, index idx, const std::uint8_t* codes, index pixels, index channels)>;

namespace detail {

// Codes of NCHW float images [i0, i1) of x on grid g: NHWC, q = clamp(round(x / s) + z, lo, hi).
inline void quantize_input(const float* x, index n, index C, index HW, const int_grid& g, std::uint8_t* out,
                           index i0 = 0, index i1 = -1) {
  if (i1 < 0) i1 = n;
  for (index c = 0; c < C; ++c) {
    const index gc = g.at(c);
    const double s = g.scale[gc], inv = s == 0.0 ? 0.0 : 1.0 / s;
    const double z = g.zero_point[gc], lo = g.lo[gc], hi = g.hi[gc];
    for (index i = i0; i < i1; ++i)
      for (index p = 0; p < HW; ++p) {
        const double q = std::min(hi, std::max(lo, std::round(static_cast<double>(x[(i * C + c) * HW + p]) * inv) + z));
        out[(i * HW + p) * C + c] = static_cast<std::uint8_t>(q);
      }
  }
}

// The classifier on the last tensor (images [i0, i1) of P pixels x F channels, grid g) into logits.
// logits: row-major, m.fc.K per image.
inline void int_head_rows(const int_model& m, const std::uint8_t* x, index P, index i0, index i1, float* logits) {
  const int_grid& g = m.block_out.back();
  const index F = m.fc.C;
  std::vector<std::int64_t> feat(static_cast<std::size_t>(F));
  for (index i = i0; i < i1; ++i) {
    std::fill(feat.begin(), feat.end(), 0);
    for (index p = 0; p < P; ++p) {
      const std::uint8_t* row = x + (i * P + p) * F;
      for (index c = 0; c < F; ++c) feat[static_cast<std::size_t>(c)] += row[c];
    }
    std::int64_t total = 0;
    for (index c = 0; c < F; ++c) {
      feat[static_cast<std::size_t>(c)] -= P * std::int64_t{g.zero_point[g.at(c)]};
      total += feat[static_cast<std::size_t>(c)];
    }
    for (index k = 0; k < m.fc.K; ++k) {
      std::int64_t acc = 0;
      const std::int8_t* w = m.fc.w.data() + k * F;
      for (index c = 0; c < F; ++c) acc += w[c] * feat[static_cast<std::size_t>(c)];
      const double v = m.fc.u[k] / static_cast<double>(P) * (static_cast<double>(acc) - m.fc.e[k] * static_cast<double>(total));
      logits[i * m.fc.K + k] = static_cast<float>(v + m.fc.bias[k]);
    }
  }
}

// The classifier on the last tensor (n images of P pixels x F channels).
inline ptq::row_matrix<float> int_head(const int_model& m, const std::uint8_t* x, index n, index P) {
  ptq::row_matrix<float> logits(n, m.fc.K);
  int_head_rows(m, x, P, 0, n, logits.data());
  return logits;
}

// 3x3 / stride 2 / pad 1 max-pool on NHWC codes.
inline void max_pool_codes(const std::uint8_t* x, index H, index W, index C, std::uint8_t* y, index i0,
                           index i1) {
  const index OH = (H - 1) / 2 + 1, OW = (W - 1) / 2 + 1;
  for (index i = i0; i < i1; ++i)
    for (index oy = 0; oy < OH; ++oy)
      for (index ox = 0; ox < OW; ++ox) {
        std::uint8_t* out = y + ((i * OH + oy) * OW + ox) * C;
        std::fill(out, out + C, std::uint8_t{0});
        for (index iy = std::max<index>(0, 2 * oy - 1); iy < std::min(H, 2 * oy + 2); ++iy)
          for (index ix = std::max<index>(0, 2 * ox - 1); ix < std::min(W, 2 * ox + 2); ++ix) {
            const std::uint8_t* in = x + ((i * H + iy) * W + ix) * C;
            for (index c = 0; c < C; ++c) out[c] = std::max(out[c], in[c]);
          }
      }
}

}  // namespace detail

class int_engine {
 public:
  enum class split { automatic, layers, images };
  // The bytes of activations a chunk of images may take in the images split (4 buffers of the
  // largest layer's codes): within a core's L2 on the machines measured (2 MiB Emerald Rapids,
  // 1 MiB Zen 4), leaving room for the im2col tile and the packed weights.
  static constexpr index cache_budget = index{1} << 20;

  // chunk_images: images that go through the network together (0: all of them in the layers
  // split; the largest chunk within cache_budget in the images split). mode: see the top of
  // this file.
  explicit int_engine(const int_model& m, int threads = 0, index chunk_images = 0, split mode = split::automatic)
      : m_(m), threads_(threads), chunk_(chunk_images), mode_(mode) {
    ptq::detail::require(chunk_images >= 0, "ptq_example::int_engine", "chunk_images = ", chunk_images, " < 0");
    for (const int_conv& L : m_.convs) {
      layer_pack p;
      const index groups = std::max<index>(1, L.K / 64);
      for (index g = 0; g < groups; ++g) {
        const index k0 = L.K * g / groups / 32 * 32, k1 = g + 1 == groups ? L.K : L.K * (g + 1) / groups / 32 * 32;
        if (k1 <= k0) continue;
        group gr;
        gr.k0 = k0;
        gr.k1 = k1;
        // One group whose last column block has a spare lane: the GEMM returns the row sums
        // (igemm's ones column) for free, and im2col skips its reductions.
        gr.w = ptq::igemm::packed_weights(L.w.data() + k0 * L.crs(), k1 - k0, L.crs(), L.crs(),
                                          groups == 1 && (k1 - k0) % 16 != 0);
        auto slice = [&](const auto& v) { return std::vector<typename std::decay_t<decltype(v)>::value_type>(v.begin() + k0, v.begin() + k1); };
        gr.rq.bias = slice(L.out.bias);
        gr.rq.mult = slice(L.out.mult);
        gr.rq.offset = slice(L.out.offset);
        gr.rq.lo = slice(L.out.lo);
        gr.rq.hi = slice(L.out.hi);
        ptq::check(gr.rq, "ptq_example::int_engine");
        gr.lanes = detail::stage_lanes(L, k0, k1);
        p.groups.push_back(std::move(gr));
      }
      packs_.push_back(std::move(p));
    }
    for (std::size_t b = 0; b < m_.add.size(); ++b) {
      const ptq::add_params& a = m_.add[b];
      ptq::check(a, "ptq_example::int_engine");
      // The first input is the block's last conv: its output stage clamps channel c's codes to <= hi[c].
      const resnet_block& bl = m_.blocks[b];
      const int_conv& last = m_.convs[static_cast<std::size_t>(bl.last())];
      std::vector<index> codes, id_codes;
      for (const std::uint8_t h : last.out.hi) codes.push_back(index{h} + 1);
      // The second input (the identity) is clamped by its producer: the downsample conv's output
      // stage, else the previous block's add (the first block's input comes through the stem).
      if (bl.downsample >= 0)
        for (const std::uint8_t h : m_.convs[static_cast<std::size_t>(bl.downsample)].out.hi) id_codes.push_back(index{h} + 1);
      else if (b > 0)
        for (const std::uint8_t h : m_.add[b - 1].hi) id_codes.push_back(index{h} + 1);
      adds_.emplace_back(a, codes, id_codes);
      bool fuse = true;
      for (const group& gr : packs_[static_cast<std::size_t>(bl.last())].groups)
        fuse = fuse && detail::can_fuse_add(gr.lanes, adds_.back());
      fuse_.push_back(fuse);
    }
  }

  const int_model& model() const { return m_; }

  // Logits (N x classes) of `input` = (N*C) x (H*W), NCHW float rows, as resnet::forward.
  // The split of the work (images_chunk, the top of this file) does not change any code: every
  // split gives the same logits. A hook sees each chunk's tensors in turn (all images at once
  // when there is one chunk).
  ptq::row_matrix<float> forward(const Eigen::Ref<const ptq::row_matrix<float>>& input, index H, index W,
                                 const int_hook& hook = {}) const {
    std::lock_guard<std::mutex> lock(mutex_);
    const index C0 = m_.input_channels();
    ptq::detail::require(input.rows() >= 1 && input.rows() % C0 == 0 && input.cols() == H * W,
                         "ptq_example::int_engine::forward", "input is ", input.rows(), " x ", input.cols(),
                         ", expected N * ", C0, " x ", H * W);
    const index n = input.rows() / C0;
    const float* in;
    ptq::row_matrix<float> copy;
    if (input.outerStride() == input.cols()) {
      in = input.data();
    } else {
      copy = input;
      in = copy.data();
    }
    const int threads = threads_ > 0 ? threads_ : detail::default_threads();
    ptq::row_matrix<float> logits(n, m_.fc.K);
    const index by_images = hook ? 0 : images_chunk(n, H, W, threads);
    if (by_images > 0) {
      // Each task a chunk of images, run by one thread alone on its own workspace.
      if (static_cast<int>(ws_.size()) < threads) ws_.resize(static_cast<std::size_t>(threads));
      const index tasks = (n + by_images - 1) / by_images;
      std::vector<std::exception_ptr> errors(static_cast<std::size_t>(tasks));
      detail::parallel_for(tasks, threads, [&](index t, int thread) {
        const index i0 = t * by_images, nc = std::min(by_images, n - i0);
        try {
          forward_chunk(ws_[static_cast<std::size_t>(thread)], in + i0 * C0 * H * W, nc, H, W, {},
                        logits.data() + i0 * m_.fc.K, 1);
        } catch (...) {
          errors[static_cast<std::size_t>(t)] = std::current_exception();
        }
      });
      for (const auto& e : errors)
        if (e) std::rethrow_exception(e);
      return logits;
    }
    if (ws_.empty()) ws_.resize(1);
    const index chunk = chunk_ > 0 ? chunk_ : n;
    for (index i0 = 0; i0 < n; i0 += chunk) {
      const index nc = std::min(chunk, n - i0);
      forward_chunk(ws_[0], in + i0 * C0 * H * W, nc, H, W, hook, logits.data() + i0 * m_.fc.K, threads);
    }
    return logits;
  }

  // Images per task in the images split for a batch of n images of H x W on `threads` threads,
  // or 0 for the layers split (see the top of this file).
  index images_chunk(index n, index H, index W, int threads) const {
    if (mode_ == split::layers || threads <= 1 || n < 2) return 0;
    const index per_image = 4 * largest_activation(1, H, W);
    if (mode_ == split::automatic && (n < threads || per_image > cache_budget)) return 0;
    if (chunk_ > 0) return chunk_;
    const index fit = std::max<index>(1, cache_budget / per_image);
    return std::max<index>(1, std::min(fit, n / threads));
  }

 private:
  struct workspace;
  // Images [0, n) of NCHW floats `in` into logits rows out[0 .. n * classes), on ws's buffers
  // with `threads` threads splitting each layer.
  void forward_chunk(workspace& ws, const float* in, index n, index H, index W, const int_hook& hook, float* out,
                     int threads) const {
    const index C0 = m_.input_channels();
    if (static_cast<int>(ws.scratches.size()) < threads) ws.scratches.resize(static_cast<std::size_t>(threads));
    struct tensor {
      int slot;
      index H, W, C;
    };
    const index largest = largest_activation(n, H, W);
    for (auto& b : ws.buf)
      if (static_cast<index>(b.size()) < largest) b.resize(static_cast<std::size_t>(largest));
    auto ptr = [&](const tensor& t) { return ws.buf[t.slot].data(); };
    auto free_slot = [&](std::initializer_list<int> busy) {
      for (int s = 0; s < 4; ++s)
        if (std::find(busy.begin(), busy.end(), s) == busy.end()) return s;
      return -1;
    };
    tensor x{0, H, W, C0};
    {
      std::uint8_t* q = ptr(x);
      const index pieces = std::min<index>(n, 4 * threads);
      detail::parallel_for(pieces, threads, [&](index t, int) {
        detail::quantize_input(in, n, C0, H * W, m_.input, q, n * t / pieces, n * (t + 1) / pieces);
      });
    }
    auto conv = [&](index li, const tensor& t, int slot) {
      const int_conv& L = m_.convs[static_cast<std::size_t>(li)];
      tensor y{slot, L.out_size(t.H), L.out_size(t.W), L.K};
      run_conv(ws, li, ptr(t), n, t.H, t.W, ptr(y), threads);
      if (hook) hook(0, li, ptr(y), n * y.H * y.W, y.C);
      return y;
    };
    x = conv(0, x, 1);
    if (m_.max_pool) {
      tensor p{free_slot({x.slot}), (x.H - 1) / 2 + 1, (x.W - 1) / 2 + 1, x.C};
      const std::uint8_t* src = ptr(x);
      std::uint8_t* dst = ptr(p);
      detail::parallel_for(n, threads, [&](index i, int) { detail::max_pool_codes(src, x.H, x.W, x.C, dst, i, i + 1); });
      x = p;
    }
    for (std::size_t b = 0; b < m_.blocks.size(); ++b) {
      const resnet_block& bl = m_.blocks[b];
      tensor mid = conv(bl.conv1, x, free_slot({x.slot}));
      if (bl.conv3 >= 0) mid = conv(bl.conv2, mid, free_slot({x.slot, mid.slot}));
      const index li = bl.last();
      const int_conv& L = m_.convs[static_cast<std::size_t>(li)];
      const ptq::add_params& ap = m_.add[b];
      const detail::add_lanes32& al = adds_[b];
      if (fuse_[b]) {
        // The add inside the last conv's output stage: the identity first, then the conv
        // writes the block output (and its own codes only for the hook).
        const tensor id = bl.downsample >= 0 ? conv(bl.downsample, x, free_slot({x.slot, mid.slot})) : x;
        const tensor o{free_slot({mid.slot, id.slot}), L.out_size(mid.H), L.out_size(mid.W), L.K};
        std::uint8_t* codes = hook ? ptr(tensor{free_slot({mid.slot, id.slot, o.slot}), 0, 0, 0}) : nullptr;
        run_conv(ws, li, ptr(mid), n, mid.H, mid.W, ptr(o), threads, &al, ptr(id), codes);
        const index pixels = n * o.H * o.W;
        if (hook) hook(0, li, codes, pixels, o.C);
        if (hook) hook(1, static_cast<index>(b), ptr(o), pixels, o.C);
        x = o;
        continue;
      }
      const tensor y = conv(li, mid, free_slot({x.slot, mid.slot}));
      tensor id = x;
      if (bl.downsample >= 0) id = conv(bl.downsample, x, free_slot({x.slot, y.slot}));
      const tensor o{free_slot({y.slot, id.slot}), y.H, y.W, y.C};
      const index pixels = n * y.H * y.W, pieces = std::min<index>(pixels, 4 * threads);
      const std::uint8_t *pa = ptr(y), *pb = ptr(id);
      std::uint8_t* po = ptr(o);
      detail::parallel_for(pieces, threads, [&](index t, int) {
        const index r0 = pixels * t / pieces, r1 = pixels * (t + 1) / pieces;
        detail::add_stage_rows(pa + r0 * y.C, pb + r0 * y.C, r1 - r0, y.C, ap, al, po + r0 * y.C);
      });
      if (hook) hook(1, static_cast<index>(b), po, pixels, y.C);
      x = o;
    }
    const std::uint8_t* last = ptr(x);
    const index pieces = std::min<index>(n, 4 * threads);
    detail::parallel_for(pieces, threads, [&](index t, int) {
      detail::int_head_rows(m_, last, x.H * x.W, n * t / pieces, n * (t + 1) / pieces, out);
    });
  }

  struct group {
    index k0 = 0, k1 = 0;
    ptq::igemm::packed_weights w;
    ptq::requantize_params rq;
    detail::stage_lanes lanes;
  };
  struct layer_pack {
    std::vector<group> groups;
  };
  struct scratch {
    std::vector<std::uint8_t> a;
    std::vector<std::int32_t> rowsum, acc, fine;
  };
  // The activation buffers of one forward_chunk and its threads' scratch.
  struct workspace {
    std::vector<std::uint8_t> buf[4];
    std::vector<scratch> scratches;  // one per thread
  };

  index largest_activation(index n, index H, index W) const {
    index best = n * H * W * m_.input_channels();
    index h = H, w = W;
    auto visit = [&](const int_conv& L, index& hh, index& ww) {
      hh = L.out_size(hh);
      ww = L.out_size(ww);
      best = std::max(best, n * hh * ww * L.K);
    };
    visit(m_.convs.front(), h, w);
    if (m_.max_pool) h = (h - 1) / 2 + 1, w = (w - 1) / 2 + 1;
    for (const resnet_block& b : m_.blocks) {
      index h1 = h, w1 = w;
      visit(m_.convs[static_cast<std::size_t>(b.conv1)], h1, w1);
      visit(m_.convs[static_cast<std::size_t>(b.conv2)], h1, w1);
      if (b.conv3 >= 0) visit(m_.convs[static_cast<std::size_t>(b.conv3)], h1, w1);
      if (b.downsample >= 0) {
        index h2 = h, w2 = w;
        visit(m_.convs[static_cast<std::size_t>(b.downsample)], h2, w2);
      }
      h = h1, w = w1;
    }
    return best;
  }

  // Conv li over n NHWC images of H x W into y; with add (the block's residual add, fusable:
  // fuse_), y = add(conv output, id) instead, and the conv output itself into codes if not null.
  void run_conv(workspace& ws, index li, const std::uint8_t* x, index n, index H, index W, std::uint8_t* y, int threads,
                const detail::add_lanes32* add = nullptr, const std::uint8_t* id = nullptr,
                std::uint8_t* codes = nullptr) const {
    const int_conv& L = m_.convs[static_cast<std::size_t>(li)];
    const layer_pack& pk = packs_[static_cast<std::size_t>(li)];
    const int_grid& gin = m_.input_grid(li);
    const index OH = L.out_size(H), OW = L.out_size(W), M = n * OH * OW, Kd = L.crs();
    const bool direct = L.R == 1 && L.S == 1 && L.stride == 1 && L.pad == 0;
    const bool gemm_sums = pk.groups.size() == 1 && pk.groups.front().w.row_sums();
    // Rows per tile: the A tile within ~192 KiB, a multiple of 48 (the VNNI kernel's 12 rows, AMX's 16).
    index mt = std::max<index>(48, std::min<index>(288, (192 << 10) / std::max<index>(Kd, 1)) / 48 * 48);
    index tiles = (M + mt - 1) / mt;
    index groups = static_cast<index>(pk.groups.size());
    // Few tiles: use channel groups (each recomputes its tile's im2col), else one group per task.
    const bool split_k = tiles < 2 * threads && groups > 1;
    if (!split_k) groups = 1;
    const index tasks = tiles * groups;
    std::vector<std::uint8_t> zrow(static_cast<std::size_t>(L.S * L.C));  // S copies of the zero points
    for (index c = 0; c < L.S * L.C; ++c)
      zrow[static_cast<std::size_t>(c)] = static_cast<std::uint8_t>(gin.zero_point[gin.at(c % L.C)]);
    detail::parallel_for(tasks, threads, [&](index task, int thread) {
      scratch& s = ws.scratches[static_cast<std::size_t>(thread)];
      const index t = task / groups, gsel = task % groups;
      const index g0 = t * mt, rows = std::min(mt, M - g0);
      const std::uint8_t* A;
      index lda;
      if (s.rowsum.size() < static_cast<std::size_t>(mt)) s.rowsum.resize(static_cast<std::size_t>(mt));
      if (direct) {
        A = x + g0 * L.C;
        lda = L.C;
        if (!gemm_sums)
          for (index r = 0; r < rows; ++r) s.rowsum[static_cast<std::size_t>(r)] = detail::row_sum(A + r * lda, Kd);
      } else {
        if (s.a.size() < static_cast<std::size_t>(mt * Kd)) s.a.resize(static_cast<std::size_t>(mt * Kd));
        detail::im2col_rows(L, x, H, W, OH, OW, g0, rows, zrow.data(), s.a.data(), gemm_sums ? nullptr : s.rowsum.data());
        A = s.a.data();
        lda = Kd;
      }
      const index gfirst = split_k ? gsel : 0, glast = split_k ? gsel + 1 : static_cast<index>(pk.groups.size());
      for (index gi = gfirst; gi < glast; ++gi) {
        const group& gr = pk.groups[static_cast<std::size_t>(gi)];
        const index kn = gr.k1 - gr.k0;
        if (s.acc.size() < static_cast<std::size_t>(mt * kn)) s.acc.resize(static_cast<std::size_t>(mt * kn));
        if (s.fine.size() < static_cast<std::size_t>(mt * kn)) s.fine.resize(static_cast<std::size_t>(mt * kn));
        ptq::igemm::gemm_u8s8s32(rows, A, lda, gr.w, s.acc.data(), kn, gemm_sums ? s.rowsum.data() : nullptr);
        const index o = g0 * L.K + gr.k0;
        if (add)
          detail::conv_add_stage(s.acc.data(), rows, kn, s.rowsum.data(), gr.lanes, *add, gr.k0, id + o, y + o,
                                 codes ? codes + o : nullptr, L.K);
        else
          detail::conv_stage(s.acc.data(), rows, kn, s.rowsum.data(), gr.lanes, L, gr.k0, gr.rq, s.fine.data(), y + o,
                             L.K);
      }
    });
  }

  const int_model& m_;
  int threads_;
  index chunk_;
  std::vector<layer_pack> packs_;
  std::vector<detail::add_lanes32> adds_;
  std::vector<bool> fuse_;  // block b's add runs in its last conv's output stage (conv_add_stage)
  mutable std::mutex mutex_;
  split mode_;
  mutable std::vector<workspace> ws_;  // [0]: the layers split; [thread]: the images split
};

// The plain-loop twin: direct convolution on codes, int64 sums, the _ref output stages.
inline ptq::row_matrix<float> int_forward_ref(const int_model& m, const Eigen::Ref<const ptq::row_matrix<float>>& input,
                                              index H, index W, const int_hook& hook = {}) {
  const index C0 = m.input_channels(), n = input.rows() / C0;
  struct tensor {
    std::vector<std::uint8_t> v;
    index H, W, C;
  };
  tensor x{std::vector<std::uint8_t>(static_cast<std::size_t>(n * H * W * C0)), H, W, C0};
  const ptq::row_matrix<float> in = input;
  detail::quantize_input(in.data(), n, C0, H * W, m.input, x.v.data());
  auto conv = [&](index li, const tensor& t) {
    const int_conv& L = m.convs[static_cast<std::size_t>(li)];
    const int_grid& gin = m.input_grid(li);
    tensor y{{}, L.out_size(t.H), L.out_size(t.W), L.K};
    const index M = n * y.H * y.W;
    y.v.resize(static_cast<std::size_t>(M * L.K));
    std::vector<std::int32_t> fine(static_cast<std::size_t>(L.K));
    for (index g = 0; g < M; ++g) {
      const index img = g / (y.H * y.W), p = g % (y.H * y.W), oy = p / y.W, ox = p % y.W;
      for (index k = 0; k < L.K; ++k) {
        std::int64_t acc = 0, rowsum = 0;
        for (index ky = 0; ky < L.R; ++ky)
          for (index kx = 0; kx < L.S; ++kx)
            for (index c = 0; c < L.C; ++c) {
              const index iy = oy * L.stride - L.pad + ky, ix = ox * L.stride - L.pad + kx;
              const std::int64_t q = (iy < 0 || iy >= t.H || ix < 0 || ix >= t.W)
                                         ? gin.zero_point[gin.at(c)]
                                         : t.v[static_cast<std::size_t>(((img * t.H + iy) * t.W + ix) * L.C + c)];
              acc += q * L.w[static_cast<std::size_t>(k * L.crs() + (ky * L.S + kx) * L.C + c)];
              rowsum += q;
            }
        const auto kk = static_cast<std::size_t>(k);
        const std::int64_t v = acc * (std::int64_t{1} << L.F[kk]) - L.E[kk] * rowsum + L.B[kk];
        ptq::detail::require(v >= INT32_MIN && v <= INT32_MAX, "ptq_example::int_forward_ref", L.name, " channel ", k,
                             ": fine accumulator ", v, " outside int32");
        fine[kk] = static_cast<std::int32_t>(v);
      }
      ptq::requantize_ref(fine.data(), 1, L.K, L.out, y.v.data() + g * L.K, L.K);
    }
    if (hook) hook(0, li, y.v.data(), M, L.K);
    return y;
  };
  x = conv(0, x);
  if (m.max_pool) {
    tensor p{std::vector<std::uint8_t>(static_cast<std::size_t>(n * ((x.H - 1) / 2 + 1) * ((x.W - 1) / 2 + 1) * x.C)),
             (x.H - 1) / 2 + 1, (x.W - 1) / 2 + 1, x.C};
    detail::max_pool_codes(x.v.data(), x.H, x.W, x.C, p.v.data(), 0, n);
    x = std::move(p);
  }
  for (std::size_t b = 0; b < m.blocks.size(); ++b) {
    const resnet_block& bl = m.blocks[b];
    tensor t = conv(bl.conv1, x);
    if (bl.conv3 >= 0) t = conv(bl.conv2, t);
    tensor y = conv(bl.last(), t);
    const tensor id = bl.downsample >= 0 ? conv(bl.downsample, x) : x;
    tensor o{std::vector<std::uint8_t>(y.v.size()), y.H, y.W, y.C};
    const index pixels = n * y.H * y.W;
    ptq::add_requantize_ref(y.v.data(), id.v.data(), pixels, y.C, m.add[b], o.v.data(), y.C);
    if (hook) hook(1, static_cast<index>(b), o.v.data(), pixels, y.C);
    x = std::move(o);
  }
  return detail::int_head(m, x.v.data(), n, x.H * x.W);
}

}  // namespace ptq_example
