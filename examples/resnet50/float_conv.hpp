// float_conv.hpp: the FP32 conv (im2col + Eigen's sequential GEMM + fused epilogue: conv2d) and its plain-loop twin.
//
// conv2d: the output columns of the batch (g = image * OH*OW + pixel) are cut into tasks
// (whole images when images are small, else pieces of one image) sized to keep a task's
// buffers in L2; each task gathers its columns [C*R*S x cols] into a per-thread buffer (a
// 1x1 stride-1 conv over one image reads the input in place) and multiplies the weights
// [K x C*R*S] (KCRS, row-major) by it with Eigen's single-threaded GEMM kernel; the
// epilogue adds the bias (and the residual) and applies the ReLU while scattering into
// NCHW. Tasks run on threads.hpp's pool. conv2d_ref: direct convolution, double accumulation.
#pragma once

#include <Eigen/Core>

#include <algorithm>
#include <cstddef>

#include <ptq/error.hpp>
#include <ptq/layout.hpp>

#include "model.hpp"
#include "threads.hpp"

namespace ptq_example {

// What the conv epilogue does to acc = W * cols: y = acc + bias, then optionally + residual, ReLU.
enum class epilogue { bias, bias_relu, bias_add_relu };

namespace detail {

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

}  // namespace ptq_example
