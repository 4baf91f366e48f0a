// resnet.hpp: a torchvision ResNet built from its .npz state_dict, BatchNorm folded, FP32 forward with quantization hooks.
//
// Architecture (torchvision v1.5), read from the keys and shapes alone:
//   stem    conv1 + bn1 + ReLU. A 7x7 conv1 is torchvision's ImageNet stem: stride 2,
//           pad 3, then max-pool 3x3 / stride 2 / pad 1. A 3x3 conv1 is the small-image
//           stem (CIFAR, MNIST): stride 1, pad 1, no max-pool.
//   stages  layer1..layerL (as many as the keys have; torchvision has 4), block j of
//           stage i is layer{i}.{j}. Blocks are Bottleneck when layer1.0.conv3.weight
//           exists, else BasicBlock. The first block of stages 2..L has stride 2, all
//           others stride 1.
//             BasicBlock:  y = ReLU(bn2(conv2_3x3(ReLU(bn1(conv1_3x3/s(x))))) + id(x))
//             Bottleneck:  y = ReLU(bn3(conv3_1x1(ReLU(bn2(conv2_3x3/s(ReLU(bn1(conv1_1x1(x)))))))) + id(x))
//           (the stride sits on the Bottleneck's 3x3: v1.5), id = downsample.0 (1x1 conv,
//           stride s) + downsample.1 (BatchNorm) when the keys have it, else x.
//   head    global average pool, fc (classes x features).
//   Widths, depth and input channels come from the weight shapes, so ResNet-18/34/50/
//   101/152, wide and narrow variants all load; every channel count is checked against
//   its neighbours.
//
// BatchNorm folding (eval mode, eps = 1e-5 as torchvision): with s_k = gamma_k / sqrt(var_k + eps),
//   w'[k, ...] = s_k * w[k, ...],   bias_k = beta_k - s_k * mean_k,
// computed in double and rounded once to float. Every conv then has a bias and no BN.
//
// Layers: convs() lists every conv in state_dict order (conv1; then per block conv1,
// conv2, [conv3], [downsample.0]), named by their state_dict prefix.
//
// Forward: NCHW float activations. A conv is im2col + GEMM: the output columns of the
// batch (g = image * OH*OW + pixel) are cut into tasks (whole images when images are
// small, else pieces of one image) sized to keep a task's buffers in L2; each task
// gathers its columns [C*R*S x cols] into a per-thread buffer (a 1x1 stride-1 conv over
// one image reads the input in place) and multiplies the weights [K x C*R*S] (KCRS,
// row-major) by it with Eigen's single-threaded GEMM kernel; the epilogue adds the bias
// (and the residual) and applies the ReLU while scattering into NCHW. Tasks run on a
// pool of std::thread::hardware_concurrency() threads (the caller included) whose idle
// threads sleep rather than spin, which keeps the speed on a shared machine; no OpenMP
// is needed. forward() is const and may run concurrently; it keeps its buffers for the
// next call (release_workspace() frees them).
//
// Quantization hooks: the conv layers are a public vector (name, geometry, folded
// weights, bias, feeds_relu); the caller may replace weights and biases (same shapes).
// forward() takes an optional conv_hook, called once per conv per forward with the
// layer's index and its output (N*K) x (H*W) (an NCHW row view, channel = row % K) after
// the bias is added and BEFORE the residual add and the ReLU; the hook may modify it in
// place (fake quantization). Hooks are called in increasing layer index, from the
// calling thread. A features_hook sees (and may modify) the pooled features N x F, the
// fc layer's input; a pool_hook the max-pool output (N*C) x (H*W) of the ImageNet stem. With no hooks the bias, residual and ReLU are fused into the GEMM
// epilogue.
//
// conv2d_ref and resnet::forward_ref are the plain-loop twins (double accumulation).
#pragma once

#include <Eigen/Core>

#include <algorithm>
#include <atomic>
#include <cctype>
#include <chrono>
#include <condition_variable>
#include <cstdint>
#include <cmath>
#include <cstring>
#include <functional>
#include <limits>
#include <map>
#include <memory>
#include <mutex>
#include <set>
#include <string>
#include <thread>
#include <vector>

#include <ptq/config.hpp>
#include <ptq/error.hpp>
#include <ptq/io/npz.hpp>
#include <ptq/layout.hpp>

namespace ptq_example {

using ptq::index;

// One conv with its BatchNorm folded in.
struct conv_layer {
  std::string name;                // state_dict prefix: "conv1", "layer1.0.conv2", "layer2.0.downsample.0"
  index K = 0, C = 0, R = 0, S = 0;  // output channels, input channels, kernel height, width
  index stride = 1, pad = 0;
  ptq::row_matrix<float> weight;   // K x (C*R*S), KCRS order, BN folded
  ptq::vector<float> bias;         // K
  bool feeds_relu = false;         // output goes straight into a ReLU (stem, block conv1/conv2)

  index out_size(index in) const { return (in + 2 * pad - R) / stride + 1; }  // R == S
};

// The classifier: logits = features * weight^T + bias.
struct linear_layer {
  std::string name = "fc";
  ptq::row_matrix<float> weight;  // classes x features
  ptq::vector<float> bias;        // classes
};

enum class block_type { basic, bottleneck };

// Indices into resnet::convs(); conv3 is -1 for a BasicBlock, downsample -1 for identity.
struct resnet_block {
  std::string name;  // "layer2.0"
  index conv1 = -1, conv2 = -1, conv3 = -1, downsample = -1;
};

// What the conv epilogue does to acc = W * cols: y = acc + bias, then optionally + residual, ReLU.
enum class epilogue { bias, bias_relu, bias_add_relu };

using conv_hook = std::function<void(index layer, ptq::row_map<float> output)>;  // (N*K) x (H*W)
using features_hook = std::function<void(ptq::row_map<float> features)>;         // N x F
using pool_hook = std::function<void(ptq::row_map<float> output)>;               // (N*C) x (H*W)

namespace detail {

// Worker threads for the conv tasks. Between jobs a worker polls for the next one for a
// short while (yielding the CPU each time), then sleeps on a condition variable: the
// next layer's job usually comes within microseconds, and on a shared machine idle
// threads neither spin for long (as OpenMP's default policy does) nor steal the CPU from
// the threads doing the work. One job at a time; a second caller runs its job alone.
class worker_pool {
 public:
  static worker_pool& instance() {
    static worker_pool pool(static_cast<int>(std::max(1u, std::thread::hardware_concurrency())) - 1);
    return pool;
  }
  int threads() const { return static_cast<int>(workers_.size()) + 1; }

  // f(task, thread) for task in [0, count), thread in [0, threads); f must not throw.
  template <class F>
  void run(index count, int threads, const F& f) {
    threads = static_cast<int>(std::min<index>({index{threads}, index{this->threads()}, count}));
    std::unique_lock<std::mutex> busy(busy_, std::defer_lock);
    if (threads <= 1 || !busy.try_lock()) {
      for (index i = 0; i < count; ++i) f(i, 0);
      return;
    }
    {
      std::lock_guard<std::mutex> lock(m_);
      call_ = [](const void* ctx, index i, int t) { (*static_cast<const F*>(ctx))(i, t); };
      ctx_ = &f;
      count_ = count;
      next_.store(0);
      wanted_ = threads;
      running_.store(static_cast<int>(workers_.size()));  // every worker acknowledges every job
      job_.store(job_.load() + 1, std::memory_order_release);
    }
    wake_.notify_all();
    for (index i; (i = next_.fetch_add(1)) < count;) f(i, 0);
    if (!poll([&] { return running_.load(std::memory_order_acquire) == 0; })) {
      std::unique_lock<std::mutex> lock(m_);
      done_.wait(lock, [&] { return running_.load(std::memory_order_acquire) == 0; });
    }
  }

  ~worker_pool() {
    {
      std::lock_guard<std::mutex> lock(m_);
      stop_.store(true);
    }
    wake_.notify_all();
    for (auto& t : workers_) t.join();
  }

 private:
  explicit worker_pool(int workers) {
    for (int id = 1; id <= workers; ++id) workers_.emplace_back([this, id] { loop(id); });
  }

  // Polls `ready` for up to 200 microseconds, yielding between tries.
  template <class Ready>
  static bool poll(const Ready& ready) {
    const auto until = std::chrono::steady_clock::now() + std::chrono::microseconds(200);
    while (!ready()) {
      if (std::chrono::steady_clock::now() > until) return false;
      std::this_thread::yield();
    }
    return true;
  }

  void loop(int id) {
    std::uint64_t seen = 0;
    for (;;) {
      auto posted = [&] { return stop_.load() || job_.load(std::memory_order_acquire) != seen; };
      if (!poll(posted)) {
        std::unique_lock<std::mutex> lock(m_);
        wake_.wait(lock, posted);
      }
      if (stop_.load()) return;
      seen = job_.load(std::memory_order_acquire);
      if (id < wanted_)
        for (index i; (i = next_.fetch_add(1)) < count_;) call_(ctx_, i, id);
      if (running_.fetch_sub(1, std::memory_order_acq_rel) == 1) {
        std::lock_guard<std::mutex> lock(m_);
        done_.notify_one();
      }
    }
  }

  std::vector<std::thread> workers_;
  std::mutex busy_, m_;
  std::condition_variable wake_, done_;
  void (*call_)(const void*, index, int) = nullptr;  // the job, set before job_ is bumped
  const void* ctx_ = nullptr;
  index count_ = 0;
  int wanted_ = 0;
  std::atomic<index> next_{0};
  std::atomic<int> running_{0};
  std::atomic<std::uint64_t> job_{0};
  std::atomic<bool> stop_{false};
};

inline int default_threads() { return worker_pool::instance().threads(); }

// f(task, thread) for task in [0, count) on up to `threads` threads, thread in [0, threads).
// f must not throw.
template <class F>
void parallel_for(index count, int threads, const F& f) {
  if (count > 0) worker_pool::instance().run(count, threads, f);
}

// Per-thread scratch, grown on demand, reused across layers and forwards.
struct conv_scratch {
  std::vector<std::vector<float>> cols, acc;
  void reserve(int threads, std::size_t cols_floats, std::size_t acc_floats) {
    if (cols.size() < static_cast<std::size_t>(threads)) {
      cols.resize(threads);
      acc.resize(threads);
    }
    for (int t = 0; t < threads; ++t) {
      if (cols[t].size() < cols_floats) cols[t].resize(cols_floats);
      if (acc[t].size() < acc_floats) acc[t].resize(acc_floats);
    }
  }
};

// C (M x N) = A (M x D) * B (D x N), all row-major with leading dimensions lda, ldb, ldc,
// on the calling thread only. Eigen's own product would start its OpenMP team for large
// products even where the caller already splits the work over threads (outside a parallel
// region), which costs a lot on a busy machine; so Eigen 3.4's sequential GEMM kernel
// (what its product runs on one thread) is called directly.
inline void gemm(index M, index N, index D, const float* A, index lda, const float* B, index ldb, float* C,
                 index ldc) {
#if EIGEN_VERSION_AT_LEAST(3, 4, 0) && !EIGEN_VERSION_AT_LEAST(3, 4, 90)
  for (index i = 0; i < M; ++i) std::fill(C + i * ldc, C + i * ldc + N, 0.0f);
  Eigen::internal::gemm_blocking_space<Eigen::RowMajor, float, float, Eigen::Dynamic, Eigen::Dynamic, Eigen::Dynamic>
      blocking(M, N, D, 1, true);
  Eigen::internal::general_matrix_matrix_product<index, float, Eigen::RowMajor, false, float, Eigen::RowMajor, false,
                                                 Eigen::RowMajor, 1>::run(M, N, D, A, lda, B, ldb, C, 1, ldc, 1.0f,
                                                                          blocking, nullptr);
#else
  using smap = Eigen::Map<ptq::row_matrix<float>, 0, Eigen::OuterStride<>>;
  using csmap = Eigen::Map<const ptq::row_matrix<float>, 0, Eigen::OuterStride<>>;
  smap(C, M, N, Eigen::OuterStride<>(ldc)).noalias() =
      csmap(A, M, D, Eigen::OuterStride<>(lda)) * csmap(B, D, N, Eigen::OuterStride<>(ldb));
#endif
}

// Output columns of a conv over a batch, g = image * P + pixel, cut into tasks [g0, g1):
// whole images when an image is small, else equal pieces of one image.
struct conv_plan {
  index P = 0, cols = 0, tasks = 0;
  bool whole_images = true;
  index per_task = 0;  // images per task (whole_images) or pieces per image

  index begin(index t) const {
    if (whole_images) return t * per_task * P;
    const index img = t / per_task, piece = t % per_task;
    return img * P + piece * cols;
  }
  index end(index t, index n) const {
    if (whole_images) return std::min(n, (t + 1) * per_task) * P;
    const index img = t / per_task, piece = t % per_task;
    return img * P + std::min(P, (piece + 1) * cols);
  }
};

inline conv_plan plan_conv(index n, index P, index crs, index K, int threads) {
  // Tasks of about G / (4 threads) columns (dynamic scheduling evens out the threads),
  // capped so that a task's gathered columns (crs x cols, <= 512 KB) and GEMM output
  // (K x cols, <= 256 KB) stay in L2, but never below 128 columns (GEMM efficiency), and
  // tasks of at least 64 columns (tiny tasks cost more in overhead than they save).
  const index G = n * P;
  const index cap = std::min(std::max<index>(128, (index{1} << 17) / crs), std::max<index>(128, (index{1} << 16) / K));
  const index target = std::min(std::max<index>(64, (G + 4 * index{threads} - 1) / (4 * index{threads})), cap);
  conv_plan p;
  p.P = P;
  if (target >= P) {
    p.whole_images = true;
    p.per_task = std::max<index>(1, target / P);
    p.tasks = (n + p.per_task - 1) / p.per_task;
    p.cols = p.per_task * P;
  } else {
    p.whole_images = false;
    p.per_task = (P + target - 1) / target;  // pieces per image
    p.cols = (P + p.per_task - 1) / p.per_task;
    p.tasks = n * p.per_task;
  }
  return p;
}

// cols[(c*R + r)*S + s][g - g0] = x[img, c, oy*stride - pad + r, ox*stride - pad + s] (0 outside)
// for g = img * OH*OW + oy * OW + ox in [g0, g1).
inline void im2col(const conv_layer& L, const float* x, index H, index W, index OH, index OW, index g0, index g1,
                   float* cols) {
  const index P = OH * OW, HW = H * W, ncols = g1 - g0;
  // "Same" convs (stride 1, output size = input size): row (c, r, s) of one image is the
  // plane shifted by (r - pad) * W + (s - pad), then the rows and columns that fell off
  // the border are zeroed. Others: row by row.
  const bool same = L.stride == 1 && OH == H && OW == W;
  for (index g = g0; g < g1;) {
    const index img = g / P, p0 = g % P, p1 = std::min(P, p0 + (g1 - g));
    const index oy0 = p0 / OW, oy1 = (p1 - 1) / OW + 1;
    const float* xi = x + img * L.C * HW;
    for (index c = 0; c < L.C; ++c) {
      const float* src = xi + c * HW;
      for (index r = 0; r < L.R; ++r) {
        for (index s = 0; s < L.S; ++s) {
          float* dst = cols + ((c * L.R + r) * L.S + s) * ncols + (g - g0) - p0;  // dst[p], p in [p0, p1)
          const index dy = r - L.pad, dx = s - L.pad;
          if (same) {
            const index shift = dy * W + dx;
            const index lo = std::clamp(-shift, p0, p1), hi = std::clamp(HW - shift, lo, p1);
            std::fill(dst + p0, dst + lo, 0.0f);
            std::copy(src + lo + shift, src + hi + shift, dst + lo);
            std::fill(dst + hi, dst + p1, 0.0f);
            if (dy != 0) {  // output rows whose input row iy = oy + dy is outside [0, H)
              const index ya = dy < 0 ? 0 : H - dy, yb = dy < 0 ? -dy : H;
              for (index oy = std::max(ya, oy0); oy < std::min(yb, oy1); ++oy)
                std::fill(dst + std::max(p0, oy * OW), dst + std::min(p1, (oy + 1) * OW), 0.0f);
            }
            if (dx != 0) {  // output columns whose input column ix = ox + dx is outside [0, W)
              const index xa = dx < 0 ? 0 : W - dx, xb = dx < 0 ? -dx : W;
              for (index oy = oy0; oy < oy1; ++oy)
                for (index p = std::max(p0, oy * OW + xa); p < std::min(p1, oy * OW + xb); ++p) dst[p] = 0.0f;
            }
            continue;
          }
          for (index oy = oy0; oy < oy1; ++oy) {
            const index a = std::max(p0, oy * OW) - oy * OW, b = std::min(p1, (oy + 1) * OW) - oy * OW;
            float* d = dst + oy * OW;
            const index iy = oy * L.stride + dy;
            if (iy < 0 || iy >= H) {
              std::fill(d + a, d + b, 0.0f);
              continue;
            }
            const float* row = src + iy * W;
            // ix = ox * stride + dx is inside [0, W) for ox in [lo, hi)
            const index lo = std::clamp(dx < 0 ? (-dx + L.stride - 1) / L.stride : index{0}, a, b);
            const index hi = std::clamp(W - 1 - dx < 0 ? index{0} : (W - 1 - dx) / L.stride + 1, lo, b);
            std::fill(d + a, d + lo, 0.0f);
            if (L.stride == 1) {
              std::copy(row + lo + dx, row + hi + dx, d + lo);
            } else {
              for (index ox = lo; ox < hi; ++ox) d[ox] = row[ox * L.stride + dx];
            }
            std::fill(d + hi, d + b, 0.0f);
          }
        }
      }
    }
    g += p1 - p0;
  }
}

// y[img, k, p] = epilogue(acc[k][g - g0] + bias[k]) for g in [g0, g1)
inline void scatter(const float* acc, index K, index ncols, const float* bias, index P, index g0, index g1, epilogue e,
                    const float* residual, float* y) {
  using arr = Eigen::Map<Eigen::ArrayXf>;
  using carr = Eigen::Map<const Eigen::ArrayXf>;
  for (index g = g0; g < g1;) {
    const index img = g / P, p = g % P, count = std::min(P - p, g1 - g);
    for (index k = 0; k < K; ++k) {
      const index at = (img * K + k) * P + p;
      carr a(acc + k * ncols + (g - g0), count);
      arr out(y + at, count);
      const float b = bias[k];
      switch (e) {
        case epilogue::bias: out = a + b; break;
        case epilogue::bias_relu: out = (a + b).max(0.0f); break;
        case epilogue::bias_add_relu: out = (a + b + carr(residual + at, count)).max(0.0f); break;
      }
    }
    g += count;
  }
}

inline void check_conv_layer(const conv_layer& L, const char* where) {
  ptq::detail::require(L.K >= 1 && L.C >= 1 && L.R >= 1 && L.S >= 1 && L.stride >= 1 && L.pad >= 0, where, "layer ",
                       L.name, ": geometry K = ", L.K, ", C = ", L.C, ", R = ", L.R, ", S = ", L.S,
                       ", stride = ", L.stride, ", pad = ", L.pad, " is invalid");
  ptq::detail::require(L.weight.rows() == L.K && L.weight.cols() == L.C * L.R * L.S, where, "layer ", L.name,
                       ": weight is ", L.weight.rows(), " x ", L.weight.cols(), ", expected ", L.K, " x ",
                       L.C * L.R * L.S);
  ptq::detail::require(L.bias.size() == L.K, where, "layer ", L.name, ": bias has ", L.bias.size(),
                       " elements, expected ", L.K);
}

// The conv over n images (n x C x H x W) into y (n x K x OH x OW); no argument checks.
inline void conv2d_unchecked(const conv_layer& L, const float* x, index n, index H, index W, float* y, epilogue e,
                             const float* residual, int threads, conv_scratch& scratch) {
  const index OH = L.out_size(H), OW = (W + 2 * L.pad - L.S) / L.stride + 1, P = OH * OW;
  const index crs = L.C * L.R * L.S;
  const bool pointwise = L.R == 1 && L.S == 1 && L.stride == 1 && L.pad == 0;
  const conv_plan plan = plan_conv(n, P, crs, L.K, threads);
  const bool in_place = pointwise && (!plan.whole_images || plan.per_task == 1);
  scratch.reserve(threads, in_place ? 0 : static_cast<std::size_t>(crs * plan.cols),
                  static_cast<std::size_t>(L.K * plan.cols));
  parallel_for(plan.tasks, threads, [&](index t, int tid) {
    const index g0 = plan.begin(t), g1 = plan.end(t, n), ncols = g1 - g0;
    float* acc = scratch.acc[tid].data();
    if (in_place) {
      const index img = g0 / P, p0 = g0 % P;
      gemm(L.K, ncols, crs, L.weight.data(), crs, x + img * L.C * P + p0, P, acc, ncols);
    } else {
      float* cols = scratch.cols[tid].data();
      im2col(L, x, H, W, OH, OW, g0, g1, cols);
      gemm(L.K, ncols, crs, L.weight.data(), crs, cols, ncols, acc, ncols);
    }
    scatter(acc, L.K, ncols, L.bias.data(), P, g0, g1, e, residual, y);
  });
}

inline std::string shape_text(const std::vector<index>& s) {
  std::string t = "[";
  for (std::size_t i = 0; i < s.size(); ++i) t += (i ? ", " : "") + std::to_string(s[i]);
  return t + "]";
}

}  // namespace detail

// y (n x K x OH x OW, NCHW) = epilogue(conv(x) + bias [+ residual]) for x n x C x H x W (NCHW),
// OH = (H + 2 pad - R) / stride + 1 (likewise OW). residual has y's shape (bias_add_relu only).
// threads = 0: all (OpenMP's max threads, or the hardware's).
inline void conv2d(const conv_layer& L, const float* x, index n, index H, index W, float* y,
                   epilogue e = epilogue::bias, const float* residual = nullptr, int threads = 0) {
  constexpr const char* where = "ptq_example::conv2d";
  detail::check_conv_layer(L, where);
  ptq::detail::require(n >= 1 && H >= 1 && W >= 1, where, "input n x H x W = ", n, " x ", H, " x ", W,
                       " is empty");
  ptq::detail::require(H + 2 * L.pad >= L.R && W + 2 * L.pad >= L.S, where, "input H x W = ", H, " x ", W,
                       " is smaller than the padded kernel of ", L.name);
  ptq::detail::require(x != nullptr && y != nullptr, where, "x or y is null");
  ptq::detail::require(e != epilogue::bias_add_relu || residual != nullptr, where,
                       "residual is null for epilogue bias_add_relu");
  detail::conv_scratch scratch;
  detail::conv2d_unchecked(L, x, n, H, W, y, e, residual, threads > 0 ? threads : detail::default_threads(),
                           scratch);
}

// The plain-loop twin of conv2d: direct convolution, double accumulation.
inline void conv2d_ref(const conv_layer& L, const float* x, index n, index H, index W, float* y,
                       epilogue e = epilogue::bias, const float* residual = nullptr) {
  const index OH = L.out_size(H), OW = (W + 2 * L.pad - L.S) / L.stride + 1;
  for (index i = 0; i < n; ++i)
    for (index k = 0; k < L.K; ++k)
      for (index oy = 0; oy < OH; ++oy)
        for (index ox = 0; ox < OW; ++ox) {
          double acc = 0.0;
          for (index c = 0; c < L.C; ++c)
            for (index r = 0; r < L.R; ++r)
              for (index s = 0; s < L.S; ++s) {
                const index iy = oy * L.stride - L.pad + r, ix = ox * L.stride - L.pad + s;
                if (iy < 0 || iy >= H || ix < 0 || ix >= W) continue;
                acc += double(L.weight(k, (c * L.R + r) * L.S + s)) * double(x[((i * L.C + c) * H + iy) * W + ix]);
              }
          const index at = ((i * L.K + k) * OH + oy) * OW + ox;
          float v = static_cast<float>(acc) + L.bias[k];
          if (e == epilogue::bias_add_relu) v += residual[at];
          if (e != epilogue::bias) v = std::max(v, 0.0f);
          y[at] = v;
        }
}

// A torchvision ResNet, BatchNorm folded; see the top of this file.
class resnet {
 public:
  // From a state_dict (key -> array, float32 or float64; "*.num_batches_tracked" ignored).
  // A missing key, a wrong rank or shape (the message has the expected one), a channel
  // count that does not match its neighbour, a non-float dtype, a non-finite value,
  // var + eps <= 0, or an unused key inside the network's modules (conv1., bn1., fc.,
  // layer<i>.: it would change the network if it meant anything) is a ptq::error naming
  // the key. An unused key outside them (metadata, an optimizer's state) is not fatal:
  // it is listed in warnings().
  static resnet from_state_dict(const std::map<std::string, ptq::io::array>& sd, double eps = 1e-5) {
    builder b{sd, eps, {}};
    return b.build();
  }
  // The same from an .npz file; every error names the file as well.
  static resnet load(const std::string& npz_path, double eps = 1e-5) {
    std::map<std::string, ptq::io::array> sd = ptq::io::read_npz(npz_path);
    try {
      return from_state_dict(sd, eps);
    } catch (const ptq::error& e) {
      throw ptq::error("ptq_example::resnet::load: " + npz_path + ": " + e.what());
    }
  }
  // Keys of the state_dict that were ignored, one message each.
  const std::vector<std::string>& warnings() const { return warnings_; }

  std::vector<conv_layer>& convs() { return convs_; }
  const std::vector<conv_layer>& convs() const { return convs_; }
  linear_layer& fc() { return fc_; }
  const linear_layer& fc() const { return fc_; }
  const std::vector<resnet_block>& blocks() const { return blocks_; }
  block_type type() const { return type_; }
  bool imagenet_stem() const { return max_pool_; }  // 7x7/2 conv + max-pool; else 3x3/1, no pool
  index input_channels() const { return convs_.front().C; }
  index features() const { return fc_.weight.cols(); }
  index classes() const { return fc_.weight.rows(); }
  index layer_index(const std::string& name) const {
    for (std::size_t i = 0; i < convs_.size(); ++i)
      if (convs_[i].name == name) return static_cast<index>(i);
    return -1;
  }

  // Threads used by forward (0: all; default).
  void set_threads(int threads) { threads_ = std::max(0, threads); }

  // forward keeps its activation buffers (4 x the largest activation of the last batch
  // shape) and GEMM scratch for the next call; this frees them.
  void release_workspace() {
    std::lock_guard<std::mutex> lock(cache_mutex_);
    cache_ = workspace();
  }

  // Logits (N x classes) of the batch `input` = (N*C) x (H*W), NCHW rows (C = input_channels()).
  // on_conv(layer, output) is called for every conv (see the top of this file), on_features
  // on the pooled features N x F before fc, on_pool on the max-pool output (ImageNet stem).
  // All may modify what they are given.
  ptq::row_matrix<float> forward(const Eigen::Ref<const ptq::row_matrix<float>>& input, index height, index width,
                                 const conv_hook& on_conv = {}, const features_hook& on_features = {},
                                 const pool_hook& on_pool = {}) const {
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
  ptq::row_matrix<float> forward_ref(const Eigen::Ref<const ptq::row_matrix<float>>& input, index height,
                                     index width, const conv_hook& on_conv = {},
                                     const features_hook& on_features = {}, const pool_hook& on_pool = {}) const {
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

 private:
  struct workspace {
    std::vector<float> buf[4];
    detail::conv_scratch scratch;
  };

  std::vector<conv_layer> convs_;
  linear_layer fc_;
  std::vector<resnet_block> blocks_;
  block_type type_ = block_type::basic;
  bool max_pool_ = false;
  int threads_ = 0;
  std::vector<std::string> warnings_;
  mutable std::mutex cache_mutex_;
  mutable workspace cache_;

 public:
  resnet() = default;
  resnet(const resnet& o)
      : convs_(o.convs_), fc_(o.fc_), blocks_(o.blocks_), type_(o.type_), max_pool_(o.max_pool_), threads_(o.threads_),
        warnings_(o.warnings_) {}
  resnet(resnet&& o) noexcept
      : convs_(std::move(o.convs_)), fc_(std::move(o.fc_)), blocks_(std::move(o.blocks_)), type_(o.type_),
        max_pool_(o.max_pool_), threads_(o.threads_), warnings_(std::move(o.warnings_)) {}
  resnet& operator=(resnet o) noexcept {
    convs_ = std::move(o.convs_);
    fc_ = std::move(o.fc_);
    blocks_ = std::move(o.blocks_);
    type_ = o.type_;
    max_pool_ = o.max_pool_;
    threads_ = o.threads_;
    warnings_ = std::move(o.warnings_);
    return *this;
  }

 private:
  // Validates the layers (the caller may have replaced weights) and the input; returns N.
  index check_input(const Eigen::Ref<const ptq::row_matrix<float>>& input, index height, index width,
                    const char* where) const {
    ptq::detail::require(!convs_.empty(), where, "the network is empty (default-constructed)");
    for (const conv_layer& L : convs_) detail::check_conv_layer(L, where);
    ptq::detail::require(fc_.weight.rows() >= 1 && fc_.weight.cols() == convs_.back().K, where, "fc.weight is ",
                         fc_.weight.rows(), " x ", fc_.weight.cols(), ", expected classes x ", convs_.back().K);
    ptq::detail::require(fc_.bias.size() == fc_.weight.rows(), where, "fc.bias has ", fc_.bias.size(),
                         " elements, expected ", fc_.weight.rows());
    ptq::detail::require(height >= 1 && width >= 1, where, "height x width = ", height, " x ", width,
                         " is empty");
    ptq::detail::require(input.cols() == height * width, where, "input has ", input.cols(),
                         " columns, expected height * width = ", height * width);
    ptq::detail::require(input.rows() >= 1 && input.rows() % input_channels() == 0, where, "input has ",
                         input.rows(), " rows, expected N * ", input_channels(), " (N >= 1)");
    ptq::detail::require(input.allFinite(), where, "input has a non-finite value");
    return input.rows() / input_channels();
  }

  // Largest activation (floats) over the network for a batch of n images of height x width.
  index largest_activation(index n, index H, index W) const {
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
  static Tensor max_pool(const Tensor& x, int slot, index n, workspace* ws, int threads) {
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

  // Builds a resnet from a state_dict, checking every key and shape.
  struct builder {
    const std::map<std::string, ptq::io::array>& sd;
    double eps;
    std::set<std::string> used;

    static constexpr const char* where = "ptq_example::resnet::from_state_dict";

    bool has(const std::string& key) const { return sd.count(key) != 0; }

    std::vector<double> values(const std::string& key, const std::vector<index>& shape) {
      const auto it = sd.find(key);
      if (it == sd.end()) ptq::detail::fail(where, "key '", key, "' is missing");
      const ptq::io::array& a = it->second;
      ptq::detail::require(a.type() == ptq::io::dtype::float32 || a.type() == ptq::io::dtype::float64, where,
                           "key '", key, "' has dtype ", ptq::io::dtype_name(a.type()),
                           ", expected float32 or float64");
      ptq::detail::require(a.shape() == shape, where, "key '", key, "' has shape ", detail::shape_text(a.shape()),
                           ", expected ", detail::shape_text(shape));
      std::vector<double> v = a.to<double>();
      for (std::size_t i = 0; i < v.size(); ++i)
        ptq::detail::require(std::isfinite(v[i]), where, "key '", key, "' element ", i, " = ", v[i],
                             " is not finite");
      used.insert(key);
      return v;
    }

    const std::vector<index>& shape_of(const std::string& key, std::size_t rank) {
      const auto it = sd.find(key);
      if (it == sd.end()) ptq::detail::fail(where, "key '", key, "' is missing");
      const auto& s = it->second.shape();
      ptq::detail::require(s.size() == rank, where, "key '", key, "' has shape ", detail::shape_text(s),
                           ", expected rank ", rank);
      for (index d : s)
        ptq::detail::require(d >= 1, where, "key '", key, "' has shape ", detail::shape_text(s),
                             " with an empty dimension");
      return s;
    }

    // conv `name` + BatchNorm `bn`, folded; C and kernel as expected (kernel 0: 3 or 7).
    conv_layer conv(const std::string& name, const std::string& bn, index C, const std::string& c_from,
                    index kernel, index stride, bool feeds_relu, index K = -1, const std::string& k_from = "") {
      const std::string wkey = name + ".weight";
      const std::vector<index> s = shape_of(wkey, 4);
      ptq::detail::require(K < 0 || s[0] == K, where, "key '", wkey, "' has shape ", detail::shape_text(s), ": ", s[0],
                           " output channels, expected ", K, " (the output channels of ", k_from, ")");
      ptq::detail::require(s[1] == C, where, "key '", wkey, "' has shape ", detail::shape_text(s), ": ", s[1],
                           " input channels, expected ", C, " (the output channels of ", c_from, ")");
      ptq::detail::require(s[2] == s[3] && s[2] == kernel, where, "key '", wkey, "' has shape ",
                           detail::shape_text(s), ": kernel ", s[2], "x", s[3], ", expected ", kernel, "x", kernel);
      conv_layer L;
      L.name = name;
      L.K = s[0];
      L.C = s[1];
      L.R = s[2];
      L.S = s[3];
      L.stride = stride;
      L.pad = (kernel - 1) / 2;
      L.feeds_relu = feeds_relu;
      const std::vector<double> w = values(wkey, s);
      const std::vector<double> gamma = values(bn + ".weight", {L.K});
      const std::vector<double> beta = values(bn + ".bias", {L.K});
      const std::vector<double> mean = values(bn + ".running_mean", {L.K});
      const std::vector<double> var = values(bn + ".running_var", {L.K});
      const index crs = L.C * L.R * L.S;
      L.weight.resize(L.K, crs);
      L.bias.resize(L.K);
      for (index k = 0; k < L.K; ++k) {
        ptq::detail::require(var[k] + eps > 0.0, where, "key '", bn, ".running_var' element ", k, " = ", var[k],
                             ": var + eps = ", var[k] + eps, " is not positive");
        const double scale = gamma[k] / std::sqrt(var[k] + eps);
        for (index j = 0; j < crs; ++j) L.weight(k, j) = static_cast<float>(w[k * crs + j] * scale);
        L.bias[k] = static_cast<float>(beta[k] - scale * mean[k]);
      }
      return L;
    }

    resnet build() {
      resnet net;
      // Stem.
      const std::vector<index>& s0 = shape_of("conv1.weight", 4);
      const index k0 = s0[2];
      ptq::detail::require(k0 == 7 || k0 == 3, where, "key 'conv1.weight' has shape ", detail::shape_text(s0),
                           ": kernel ", s0[2], "x", s0[3], ", expected 7x7 (ImageNet stem) or 3x3 (small-image stem)");
      net.max_pool_ = k0 == 7;
      net.convs_.push_back(conv("conv1", "bn1", s0[1], "the input", k0, k0 == 7 ? 2 : 1, true));
      index cur = net.convs_.back().K;
      std::string cur_from = "conv1";

      ptq::detail::require(has("layer1.0.conv1.weight"), where, "key 'layer1.0.conv1.weight' is missing");
      net.type_ = has("layer1.0.conv3.weight") ? block_type::bottleneck : block_type::basic;
      const bool bottleneck = net.type_ == block_type::bottleneck;
      for (int i = 1; has("layer" + std::to_string(i) + ".0.conv1.weight"); ++i) {
        for (int j = 0;; ++j) {
          const std::string p = "layer" + std::to_string(i) + "." + std::to_string(j);
          if (!has(p + ".conv1.weight")) break;
          const index stride = (i > 1 && j == 0) ? 2 : 1;
          resnet_block b;
          b.name = p;
          auto add = [&](conv_layer L) {
            net.convs_.push_back(std::move(L));
            return static_cast<index>(net.convs_.size()) - 1;
          };
          const index in = cur;
          const std::string in_from = cur_from;
          if (bottleneck) {
            b.conv1 = add(conv(p + ".conv1", p + ".bn1", in, in_from, 1, 1, true));
            b.conv2 = add(conv(p + ".conv2", p + ".bn2", net.convs_[b.conv1].K, p + ".conv1", 3, stride, true));
            b.conv3 = add(conv(p + ".conv3", p + ".bn3", net.convs_[b.conv2].K, p + ".conv2", 1, 1, false));
          } else {
            ptq::detail::require(!has(p + ".conv3.weight"), where, "key '", p,
                                 ".conv3.weight' in a BasicBlock network (layer1.0 has no conv3)");
            b.conv1 = add(conv(p + ".conv1", p + ".bn1", in, in_from, 3, stride, true));
            b.conv2 = add(conv(p + ".conv2", p + ".bn2", net.convs_[b.conv1].K, p + ".conv1", 3, 1, false));
          }
          const index last = bottleneck ? b.conv3 : b.conv2;
          const index out = net.convs_[last].K;
          if (has(p + ".downsample.0.weight")) {
            b.downsample = add(conv(p + ".downsample.0", p + ".downsample.1", in, in_from, 1, stride, false, out,
                                    net.convs_[last].name));
          } else {
            ptq::detail::require(stride == 1 && in == out, where, "key '", p,
                                 ".downsample.0.weight' is missing: block ", p, " has stride ", stride, " and maps ",
                                 in, " to ", out, " channels, so it needs a downsample");
          }
          net.blocks_.push_back(b);
          cur = out;
          cur_from = net.convs_[last].name;
        }
      }

      // Classifier.
      const std::vector<index>& sf = shape_of("fc.weight", 2);
      ptq::detail::require(sf[1] == cur, where, "key 'fc.weight' has shape ", detail::shape_text(sf), ": ", sf[1],
                           " input features, expected ", cur, " (the output channels of ", cur_from, ")");
      const std::vector<double> fw = values("fc.weight", sf);
      const std::vector<double> fb = values("fc.bias", {sf[0]});
      net.fc_.weight.resize(sf[0], sf[1]);
      net.fc_.bias.resize(sf[0]);
      for (index k = 0; k < sf[0]; ++k) {
        for (index c = 0; c < sf[1]; ++c) net.fc_.weight(k, c) = static_cast<float>(fw[k * sf[1] + c]);
        net.fc_.bias[k] = static_cast<float>(fb[k]);
      }

      // Every key inside the network's modules must have been used; others are warned about.
      const std::string nbt = "num_batches_tracked";
      auto inside = [](const std::string& key) {
        for (const char* m : {"conv1.", "bn1.", "fc."})
          if (key.rfind(m, 0) == 0) return true;
        std::size_t i = 5;
        if (key.rfind("layer", 0) != 0 || key.size() <= i || !std::isdigit(static_cast<unsigned char>(key[i])))
          return false;
        while (i < key.size() && std::isdigit(static_cast<unsigned char>(key[i]))) ++i;
        return i < key.size() && key[i] == '.';
      };
      for (const auto& kv : sd) {
        const std::string& key = kv.first;
        const bool counter = key.size() >= nbt.size() && key.compare(key.size() - nbt.size(), nbt.size(), nbt) == 0;
        if (counter || used.count(key)) continue;
        ptq::detail::require(!inside(key), where, "key '", key, "' is not part of the ResNet the other keys describe");
        net.warnings_.push_back("key '" + key + "' is not part of a torchvision ResNet: ignored");
      }
      return net;
    }
  };
};

}  // namespace ptq_example
