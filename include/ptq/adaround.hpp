// adaround.hpp: learned rounding of one layer's weights on their GEMMLOWP grid (AdaRound, Nagel et al. 2020).
//
// The problem (Nagel, Amjad, van Baalen, Louizos & Blankevoort, "Up or Down? Adaptive
// Rounding for Post-Training Quantization", ICML 2020; docs/method.md section 9). A linear
// layer (a conv after im2col) has weights W (K x D, row k = output channel k), calibration
// inputs X (D x N: one column per sample, the layer's inputs in the quantized network; the
// im2col layout, so that the outputs are W X) and targets Y (K x N: the float network's
// outputs; default W X). Row k lies on the grid of channel k % p.channels() of the
// quant_params p (gemmlowp_quantizer.hpp): scale s, zero point z, Q = 2^bits - 1. Rounding
// to nearest picks each code alone; AdaRound picks down or up for every weight so that the
// layer's output, not each weight, stays close. Per weight w, in T:
//
//   u    = w * inv_scale, clamped to [-z - 1, Q - z + 1]   inv_scale = 1 / s in T, as the quantizer
//   f    = floor(u) + z                                    the floor code
//   h(V) = clamp(sigmoid(V) (zeta - gamma) + gamma, 0, 1)  rectified sigmoid, zeta = 1.1, gamma = -0.1
//   c    = clamp(f + h(V), 0, Q),   W_soft = s (c - z)
//   V_0  = -log((zeta - gamma) / (r - gamma) - 1),  r = u - floor(u), so h(V_0) = r
//
// (W_soft = W at the start for weights inside the grid; a weight more than a step outside it
// is clipped: its code is the grid's end whatever V.) V minimizes, by Adam, at iteration t
// on the step's batch of B columns X_b, Y_b:
//
//   L(t) = (1/B) sum_b sum_k (W_soft X_b - Y_b)_kb^2                    reconstruction
//        + lambda sum_{k, j} (1 - |2 h(V_kj) - 1|^beta(t))             regularizer, after warm-up
//
// With an output activation (params.output_lo / output_hi, K values each, +-inf allowed),
// row k's outputs and targets are clamped to [lo_k, hi_k] before they are compared:
//
//   L_rec(t) = (1/B) sum_b sum_k (clamp(W_soft X_b, lo_k, hi_k) - clamp(Y_b, lo_k, hi_k))_kb^2
//
// which is the AdaRound paper's reconstruction through the activation function (its eq. 25
// with f_a a ReLU: lo_k = -b_k, hi_k = inf for a conv with bias b feeding a ReLU, in the
// units of W X) and, with a finite hi_k, through the clip of the quantizer that reads the
// output next: errors the ReLU or the clip would erase cost nothing. The gradient passes
// where lo_k <= (W_soft X_b)_kb <= hi_k (torch.clamp's), so an output driven past a bound
// whose target lies inside is not pulled back by this term. Empty (the default): linear.
//
// The reconstruction is the squared Frobenius norm of the paper summed over the K output
// channels and averaged over the batch's columns (BRECQ's and QDrop's lp_loss on a conv's
// N x K x H x W output). Summing over channels keeps every row's problem, and its balance
// with lambda, independent of how many rows the layer has: the rows are independent
// problems that share the batches. The regularizer pushes every h to 0 or 1; with a
// count c = t + 1 (t = 0, 1, ... the iteration), T iterations and w0 = warmup T it is off
// while c < w0, and beta is annealed linearly after it (BRECQ's LinearTempDecay):
//
//   beta(t) = beta_end + (beta_start - beta_end) max(0, 1 - (c - w0) / (T - w0)),  c >= w0
//
// (beta_start before), from 20 at the end of the warm-up to 2 at the last iteration. The
// result is the hard rounding
//
//   code = clamp(f + [V >= 0], 0, Q)          ([V >= 0] iff h(V) >= 1/2)
//
// ordinary codes on p's grid (each within one step of the weight: f or f + 1), so every
// integer path runs them unchanged; weights = s (code - z) in T, which quantize() maps back
// to the same codes. The threshold is the paper's: by the end the regularizer has driven
// almost every h to exactly 0 or 1, which it leaves as they are; it only settles the few
// left in between. u is computed as quantize() computes x * inv_scale, so with no
// iterations the codes are quantize()'s round-to-nearest, except that a tie r = 1/2 goes up
// (V_0 = 0), not to even. Channels that p maps to a constant (0 bits, zero-width range:
// quant_params::is_constant) keep quantize()'s code and value and have no V.
//
// Gradients are those of automatic differentiation: clamp passes the gradient where
// lo <= x <= hi (inclusive, as torch.clamp), |x| has slope sign(x) (0 at 0). Adam updates V
// as torch.optim.Adam does (lr 1e-3, betas 0.9 / 0.999, eps 1e-8, no weight decay), with
// m = b1 m + (1 - b1) g, v = b2 v + (1 - b2) g g, V -= (lr / (1 - b1^n)) m / (sqrt(v) /
// sqrt(1 - b2^n) + eps) at step n = t + 1, the bias corrections in double.
//
// Batches: adaround_sampler(seed, N, B) draws each step's B distinct columns from
// std::mt19937_64 by a partial Fisher-Yates shuffle of a persistent permutation, each
// bounded draw by rejection (x >= 2^64 mod n, then x mod n: portable, unlike the standard
// distributions), returned in increasing order. B >= N: every column every step (full
// batch). The index sequence is a function of (seed, N, B) alone.
//
// Threads. Rows are cut into fixed blocks of row_block rows, whatever the thread count, and
// the blocks split over params.threads std::threads (0: hardware_concurrency). Every thread
// draws the same batch sequence and gathers its share of the columns of one shared X_b (a
// barrier after the gather); a block's two GEMMs (E = W_soft X_b - Y_b,
// G = (2 / B) E X_b^T) have the same shapes on every run, and the per-block loss
// sums are added in block order at a barrier after each iteration. So the result is the
// same bit for bit for a seed and row_block whatever the thread count (it depends on
// row_block: a GEMM's rounding depends on its shape). Under OpenMP Eigen may split each GEMM
// itself, with other blocking: call Eigen::setNbThreads(1) to keep that guarantee. Each
// block's GEMMs pack X_b again, so blocks of 48 rows (the default) cost less per row than
// blocks of 16 (about 6 and 10 ms of CPU per iteration for K = 96, D = 864, B = 1024); only
// K / row_block blocks can run in parallel.
//
// Precision: GEMMs, the elementwise steps and Adam's state in T; the losses accumulated in
// double. Per iteration 4 K D B flops in the GEMMs and K D exponentials and logarithms.
// Memory: Y (K x N in T) when it is not given (W X, computed once), one X_b (D x B),
// and nine K x D arrays. x may be any Eigen expression of T; each step gathers its B columns
// (never a copy of x in another layout): from column-major storage (or the transpose() of
// a row-major N x D matrix, one sample per row) that reads B D contiguous values, from a
// row-major D x N matrix D rows at B places each (a cache line per value when B << N).
//
// Time: params.seconds is a wall-clock budget checked after every iteration (at the
// barrier): the run stops there with what it has (the schedule stays that of `iterations`,
// so a run cut short ends with beta above beta_end and some h short of 0 or 1), and the
// result says so (stopped_by_time). Only runs that complete their iterations are
// reproducible.
//
// adaround_ref is the plain twin: one thread, scalar loops, everything in double except u
// (as above, in T), the same sampler, schedule and steps. With T = double the two agree to
// the rounding of the sums (test_adaround.cpp); tools/adaround_ref.py is an independent
// PyTorch implementation (test/io/test_adaround_torch.cpp).
//
// Errors (ptq::error naming function, argument and value; nothing is returned, nothing the
// caller passed is touched): invalid quant_params (check_params), w empty or not a
// multiple of p's channels, x with other than D rows or no columns, y not K x N, NaN / Inf
// in w, x or y, output_lo / output_hi not both empty or both K values, NaN in them or
// lo > hi, and parameters outside their ranges (iterations < 0, batch < 1, lambda < 0,
// beta_start or beta_end < 1, warmup outside [0, 1), gamma >= 0 or zeta <= 1, lr <= 0,
// Adam betas outside [0, 1), eps <= 0, threads < 0, row_block < 1, seconds <= 0 or NaN);
// a loss that overflows T while running.
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
#include <limits>
#include <mutex>
#include <optional>
#include <random>
#include <thread>
#include <type_traits>
#include <vector>

#include "config.hpp"
#include "error.hpp"
#include "gemmlowp_quantizer.hpp"
#include "layout.hpp"

namespace ptq {

// The parameters; defaults are the paper's (and BRECQ's) settings.
struct adaround_params {
  index iterations = 10000;                                   // Adam steps (the schedule's T)
  double seconds = std::numeric_limits<double>::infinity();   // wall-clock budget
  index batch = 1024;                                         // columns per step (>= N: all)
  std::uint64_t seed = 0;                                     // of the batch sequence
  double lambda = 0.01;                                       // regularizer weight
  double beta_start = 20.0, beta_end = 2.0;                   // annealed linearly after warm-up
  double warmup = 0.2;                                        // fraction of iterations without regularizer
  double zeta = 1.1, gamma = -0.1;                            // rectified sigmoid's stretch
  double lr = 1e-3, adam_beta1 = 0.9, adam_beta2 = 0.999, adam_eps = 1e-8;
  int threads = 0;                                            // 0: std::thread::hardware_concurrency()
  index row_block = 48;                                       // rows per task (the result depends on it)
  // The output's activation (see the top of this file): empty, a linear output; else K
  // values each, row k's output clamped to [output_lo[k], output_hi[k]] (+-inf allowed).
  Eigen::VectorXd output_lo, output_hi;
};

// The result. Rows of constant channels hold quantize()'s code and value, v = h = 0.
template <class T>
struct adaround_result {
  Eigen::Matrix<std::uint16_t, Eigen::Dynamic, Eigen::Dynamic, Eigen::RowMajor> codes;  // K x D, on p's grid
  row_matrix<T> weights;  // K x D: scale (code - zero_point)
  row_matrix<T> v, h;     // K x D: the learned V and h(V)
  std::vector<double> rec_loss, reg_loss, beta;  // per iteration done: L's two terms at the step's V and batch
  index iterations = 0;                          // iterations done
  bool stopped_by_time = false;
  double seconds = 0.0;
};

// beta(t) and whether the regularizer is on at iteration t (0-based); see the top of this file.
inline bool adaround_regularized(const adaround_params& p, index t) {
  return static_cast<double>(t + 1) >= p.warmup * static_cast<double>(p.iterations);
}
inline double adaround_beta(const adaround_params& p, index t) {
  const double T = static_cast<double>(p.iterations), w0 = p.warmup * T, c = static_cast<double>(t + 1);
  if (c < w0) return p.beta_start;
  return p.beta_end + (p.beta_start - p.beta_end) * std::max(0.0, 1.0 - (c - w0) / (T - w0));
}

// Each step's batch of column indices; see the top of this file.
class adaround_sampler {
 public:
  adaround_sampler(std::uint64_t seed, index columns, index batch) : gen_(seed), n_(columns) {
    constexpr const char* where = "ptq::adaround_sampler";
    detail::require(columns >= 1, where, "columns = ", columns, " is not positive");
    detail::require(batch >= 1, where, "batch = ", batch, " is not positive");
    b_ = std::min(batch, columns);
    perm_.resize(static_cast<std::size_t>(n_));
    for (index i = 0; i < n_; ++i) perm_[static_cast<std::size_t>(i)] = i;
    out_.assign(perm_.begin(), perm_.begin() + b_);
  }

  index batch() const { return b_; }
  bool full() const { return b_ == n_; }

  // The next step's b = min(batch, columns) distinct indices in increasing order.
  const std::vector<index>& next() {
    if (full()) return out_;
    for (index i = 0; i < b_; ++i) {
      const auto j = static_cast<std::size_t>(i + static_cast<index>(bounded(static_cast<std::uint64_t>(n_ - i))));
      std::swap(perm_[static_cast<std::size_t>(i)], perm_[j]);
    }
    out_.assign(perm_.begin(), perm_.begin() + b_);
    std::sort(out_.begin(), out_.end());
    return out_;
  }

 private:
  std::uint64_t bounded(std::uint64_t n) {  // uniform in [0, n)
    const std::uint64_t reject_below = (0 - n) % n;  // 2^64 mod n
    for (;;) {
      const std::uint64_t x = gen_();
      if (x >= reject_below) return x % n;
    }
  }

  std::mt19937_64 gen_;
  index n_ = 0, b_ = 0;
  std::vector<index> perm_, out_;
};

namespace detail {

// A reusable barrier; the last thread to arrive runs `done` before releasing the others.
class adaround_barrier {
 public:
  explicit adaround_barrier(std::function<void()> done) : done_(std::move(done)) {}
  void set_count(int n) { n_ = n; }
  void arrive_and_wait() {
    std::unique_lock<std::mutex> lock(m_);
    const std::uint64_t gen = gen_;
    if (++count_ == n_) {
      done_();
      count_ = 0;
      ++gen_;
      cv_.notify_all();
    } else {
      cv_.wait(lock, [&] { return gen_ != gen; });
    }
  }

 private:
  std::function<void()> done_;
  std::mutex m_;
  std::condition_variable cv_;
  int n_ = 1, count_ = 0;
  std::uint64_t gen_ = 0;
};

template <class T>
struct adaround_grid {
  T s, z, q, inv;
  bool active;
  std::uint16_t const_code;  // constant channels
};

template <class T>
std::vector<adaround_grid<T>> adaround_grids(const quant_params<T>& p, index K) {
  std::vector<adaround_grid<T>> g(static_cast<std::size_t>(K));
  for (index k = 0; k < K; ++k) {
    const index c = k % p.channels();
    const int qm = p.qmax(c), z = p.zero_point[c];
    auto& e = g[static_cast<std::size_t>(k)];
    e.s = p.scale[c];
    e.z = static_cast<T>(z);
    e.q = static_cast<T>(qm);
    e.active = !p.is_constant(c);
    e.inv = e.active ? T(1) / p.scale[c] : T(0);
    e.const_code = static_cast<std::uint16_t>(std::min(std::max(z, 0), qm));
  }
  return g;
}

// u = w * inv clamped to [-z - 1, Q - z + 1], in T (both paths).
template <class T>
T adaround_u(T w, const adaround_grid<T>& g) {
  return std::min(std::max(w * g.inv, -g.z - T(1)), g.q - g.z + T(1));
}

// The checks of adaround_params; prefix names the struct in the messages ("params.").
inline void adaround_check_params(const adaround_params& a, const char* where, const char* prefix) {
  require(a.iterations >= 0, where, prefix, "iterations = ", a.iterations, " is negative");
  require(a.batch >= 1, where, prefix, "batch = ", a.batch, " is not positive");
  require(a.seconds > 0.0, where, prefix, "seconds = ", a.seconds, " is not a positive time budget");
  require(std::isfinite(a.lambda) && a.lambda >= 0.0, where, prefix, "lambda = ", a.lambda,
          " is not a finite number >= 0");
  require(std::isfinite(a.beta_start) && a.beta_start >= 1.0, where, prefix, "beta_start = ", a.beta_start,
          " is not a finite number >= 1");
  require(std::isfinite(a.beta_end) && a.beta_end >= 1.0, where, prefix, "beta_end = ", a.beta_end,
          " is not a finite number >= 1");
  require(a.warmup >= 0.0 && a.warmup < 1.0, where, prefix, "warmup = ", a.warmup, " is outside [0, 1)");
  require(std::isfinite(a.gamma) && a.gamma < 0.0, where, prefix, "gamma = ", a.gamma, " is not a finite number < 0");
  require(std::isfinite(a.zeta) && a.zeta > 1.0, where, prefix, "zeta = ", a.zeta, " is not a finite number > 1");
  require(std::isfinite(a.lr) && a.lr > 0.0, where, prefix, "lr = ", a.lr, " is not a finite number > 0");
  require(a.adam_beta1 >= 0.0 && a.adam_beta1 < 1.0, where, prefix, "adam_beta1 = ", a.adam_beta1,
          " is outside [0, 1)");
  require(a.adam_beta2 >= 0.0 && a.adam_beta2 < 1.0, where, prefix, "adam_beta2 = ", a.adam_beta2,
          " is outside [0, 1)");
  require(std::isfinite(a.adam_eps) && a.adam_eps > 0.0, where, prefix, "adam_eps = ", a.adam_eps,
          " is not a finite number > 0");
  require(a.threads >= 0, where, prefix, "threads = ", a.threads, " is negative");
  require(a.row_block >= 1, where, prefix, "row_block = ", a.row_block, " is not positive");
}

template <class T, class DW, class DX>
void adaround_check(const Eigen::DenseBase<DW>& w, const quant_params<T>& p, const Eigen::DenseBase<DX>& x,
                    const adaround_params& a, const char* where) {
  static_assert(std::is_floating_point<T>::value, "adaround: T must be float or double");
  static_assert(std::is_same<typename DW::Scalar, T>::value && std::is_same<typename DX::Scalar, T>::value,
                "adaround: w, x and the quant_params must have the same T");
  adaround_check_params(a, where, "params.");
  check_params(p, quant_params<T>::max_bits, where);
  require(w.rows() >= 1 && w.cols() >= 1, where, "w is empty (", w.rows(), " x ", w.cols(), ")");
  check_channels(w.rows(), w.cols(), p.channels(), where);
  require(x.rows() == w.cols() && x.cols() >= 1, where, "x is ", x.rows(), " x ", x.cols(), ": expected ", w.cols(),
          " rows (w's columns) and at least one column");
  check_finite(w, where, "w");
  check_finite(x, where, "x");
  const bool lo = a.output_lo.size() > 0, hi = a.output_hi.size() > 0;
  require(lo == hi && (!lo || (a.output_lo.size() == w.rows() && a.output_hi.size() == w.rows())), where,
          "params.output_lo and output_hi have ", a.output_lo.size(), " and ", a.output_hi.size(),
          " values: expected none or ", w.rows(), " each (w's rows)");
  for (index k = 0; k < a.output_lo.size(); ++k)
    require(!std::isnan(a.output_lo[k]) && !std::isnan(a.output_hi[k]) && a.output_lo[k] <= a.output_hi[k], where,
            "params.output_lo[", k, "] = ", a.output_lo[k], " and output_hi[", k, "] = ", a.output_hi[k],
            " are not an interval lo <= hi");
}

template <class T, class DY>
void adaround_check_y(const Eigen::DenseBase<DY>& y, index K, index N, const char* where) {
  static_assert(std::is_same<typename DY::Scalar, T>::value, "adaround: y must have the weights' T");
  require(y.rows() == K && y.cols() == N, where, "y is ", y.rows(), " x ", y.cols(), ", expected ", K, " x ", N,
          " (w's rows x x's columns)");
  check_finite(y, where, "y");
}

inline void adaround_check_loss(double rec, double reg, index t, const char* where) {
  require(std::isfinite(rec) && std::isfinite(reg), where, "the loss overflowed at iteration ", t,
          " (reconstruction ", rec, ", regularizer ", reg, "): the data are too large for the weights' type");
}

// One block of rows of the fast path: state and scratch, all rows x D (E, Yb: rows x B).
template <class T>
struct adaround_block {
  index r0 = 0, rows = 0;
  row_matrix<T> F, V, M, S, Ws, G, H, DH, SC, Y;  // Y: rows x N when y is not given
  row_matrix<T> E, Yb;
  double rec = 0.0, reg = 0.0;
};

template <class T>
using adaround_xb = row_matrix<T>;

// Columns [c0, c1) of xb = x(:, idx) (row-major: with E row-major both GEMMs pack it as fast
// as a column-major one, and a row-major x is gathered row by row). A column-major x is read
// in tiles of 64 columns, each advancing down its column, so the reads stream.
template <class T, class DX>
void adaround_gather(const Eigen::DenseBase<DX>& x, const std::vector<index>& idx, index c0, index c1,
                     adaround_xb<T>& xb) {
  const DX& xd = x.derived();
  const index D = x.rows();
  if constexpr (DX::IsRowMajor) {
    for (index d = 0; d < D; ++d)
      for (index b = c0; b < c1; ++b) xb(d, b) = xd.coeff(d, idx[static_cast<std::size_t>(b)]);
  } else {
    constexpr index tile = 64;
    for (index b0 = c0; b0 < c1; b0 += tile) {
      const index b1 = std::min(c1, b0 + tile);
      for (index d = 0; d < D; ++d)
        for (index b = b0; b < b1; ++b) xb(d, b) = xd.coeff(d, idx[static_cast<std::size_t>(b)]);
    }
  }
}

template <class T, class DW, class DX, class DY>
adaround_result<T> adaround_fast(const Eigen::DenseBase<DW>& w, const quant_params<T>& p,
                                 const Eigen::DenseBase<DX>& x, const Eigen::DenseBase<DY>* y,
                                 const adaround_params& a, const char* where) {
  using clock = std::chrono::steady_clock;
  const auto start = clock::now();
  const index K = w.rows(), D = w.cols(), N = x.cols(), iters = a.iterations;
  const std::vector<adaround_grid<T>> grid = adaround_grids(p, K);
  const index nblocks = (K + a.row_block - 1) / a.row_block;
  std::vector<adaround_block<T>> blocks(static_cast<std::size_t>(nblocks));
  for (index i = 0; i < nblocks; ++i) {
    blocks[static_cast<std::size_t>(i)].r0 = i * a.row_block;
    blocks[static_cast<std::size_t>(i)].rows = std::min(a.row_block, K - i * a.row_block);
  }
  const T gamma = static_cast<T>(a.gamma), stretch = static_cast<T>(a.zeta - a.gamma);
  const T b1 = static_cast<T>(a.adam_beta1), b2 = static_cast<T>(a.adam_beta2), eps = static_cast<T>(a.adam_eps);
  const T c1 = static_cast<T>(1.0 - a.adam_beta1), c2 = static_cast<T>(1.0 - a.adam_beta2);
  const bool clamped = a.output_lo.size() > 0;
  std::vector<T> out_lo, out_hi;  // the output's clamp in T (+-inf stay infinite)
  for (index k = 0; clamped && k < K; ++k) {
    out_lo.push_back(static_cast<T>(a.output_lo[k]));
    out_hi.push_back(static_cast<T>(a.output_hi[k]));
  }

  adaround_result<T> out;
  std::mutex err_m;
  std::exception_ptr err;
  std::atomic<bool> failed{false}, stop{false};
  const auto record_error = [&] {
    std::lock_guard<std::mutex> lock(err_m);
    if (!err) err = std::current_exception();
    failed = true;
  };
  index done = 0;  // iterations completed (written by the barrier's completion)
  adaround_barrier barrier([&] {
    try {
      if (!failed) {
        double rec = 0.0, reg = 0.0;
        for (const auto& b : blocks) rec += b.rec, reg += b.reg;
        adaround_check_loss(rec, reg, done, where);
        out.rec_loss.push_back(rec);
        out.reg_loss.push_back(reg);
        out.beta.push_back(adaround_beta(a, done));
        ++done;
        if (done < iters && std::chrono::duration<double>(clock::now() - start).count() >= a.seconds) {
          out.stopped_by_time = true;
          stop = true;
        }
      }
    } catch (...) {
      record_error();
    }
    if (failed || done == iters) stop = true;
  });

  // Block setup: grid position, V_0, and Y = W X when not given.
  const auto setup = [&](adaround_block<T>& b) {
    b.F.resize(b.rows, D);
    b.V.resize(b.rows, D);
    b.M.setZero(b.rows, D);
    b.S.setZero(b.rows, D);
    b.Ws.resize(b.rows, D);
    b.G.resize(b.rows, D);
    b.H.setZero(b.rows, D);
    b.DH.setZero(b.rows, D);
    b.SC.setZero(b.rows, D);
    for (index i = 0; i < b.rows; ++i) {
      const auto& g = grid[static_cast<std::size_t>(b.r0 + i)];
      for (index j = 0; j < D; ++j) {
        if (!g.active) {
          b.F(i, j) = T(0);
          b.V(i, j) = T(0);
          b.Ws(i, j) = (static_cast<T>(g.const_code) - g.z) * g.s;
          continue;
        }
        const T u = adaround_u(w.derived().coeff(b.r0 + i, j), g), fl = std::floor(u), r = u - fl;
        b.F(i, j) = fl + g.z;
        b.V(i, j) = -std::log(stretch / (r - gamma) - T(1));
      }
    }
    if (!y) b.Y.noalias() = w.derived().middleRows(b.r0, b.rows) * x.derived();
  };

  // One iteration of one block on the gathered batch xb (B columns idx).
  const auto step = [&](adaround_block<T>& b, const adaround_xb<T>& xb, const std::vector<index>& idx, index t) {
    const index B = static_cast<index>(idx.size());
    for (index i = 0; i < b.rows; ++i) {
      const auto& g = grid[static_cast<std::size_t>(b.r0 + i)];
      if (!g.active) continue;
      auto sig = b.DH.row(i).array();
      sig = (T(1) + (-b.V.row(i).array()).exp()).inverse();
      const auto P = sig * stretch + gamma;
      b.H.row(i).array() = P.max(T(0)).min(T(1));
      const auto C = b.F.row(i).array() + b.H.row(i).array();
      b.SC.row(i).array() = (C >= T(0) && C <= g.q).select(Eigen::Array<T, 1, Eigen::Dynamic>::Constant(D, g.s), T(0));
      b.Ws.row(i).array() = (C.max(T(0)).min(g.q) - g.z) * g.s;
      sig = (P >= T(0) && P <= T(1)).select(sig * (T(1) - sig) * stretch, T(0));  // DH = dh/dV
    }
    b.E.resize(b.rows, B);
    b.Yb.resize(b.rows, B);
    for (index i = 0; i < b.rows; ++i)
      for (index j = 0; j < B; ++j) {
        const index col = idx[static_cast<std::size_t>(j)];
        b.Yb(i, j) = y ? y->derived().coeff(b.r0 + i, col) : b.Y(i, col);
      }
    b.E.noalias() = b.Ws * xb;
    if (clamped) {  // E = clamp(O) - clamp(Y) where lo <= O <= hi, else 0 (the gradient's mask)
      double rec = 0.0;
      for (index i = 0; i < b.rows; ++i) {
        const T lo = out_lo[static_cast<std::size_t>(b.r0 + i)], hi = out_hi[static_cast<std::size_t>(b.r0 + i)];
        for (index j = 0; j < B; ++j) {
          const T o = b.E(i, j), e = std::min(std::max(o, lo), hi) - std::min(std::max(b.Yb(i, j), lo), hi);
          rec += static_cast<double>(e) * static_cast<double>(e);
          b.E(i, j) = o >= lo && o <= hi ? e : T(0);
        }
      }
      b.rec = rec / static_cast<double>(B);
    } else {
      b.E -= b.Yb;
      b.rec = b.E.array().template cast<double>().square().sum() / static_cast<double>(B);
    }
    b.E *= static_cast<T>(2.0 / static_cast<double>(B));
    b.G.noalias() = b.E * xb.transpose();
    const bool reg_on = adaround_regularized(a, t);
    const double beta = adaround_beta(a, t);
    const T tb = static_cast<T>(beta), tb1 = static_cast<T>(beta - 1.0), lam = static_cast<T>(a.lambda);
    const double n = static_cast<double>(t + 1);
    const T step_size = static_cast<T>(a.lr / (1.0 - std::pow(a.adam_beta1, n)));
    const T bc2_sqrt = static_cast<T>(std::sqrt(1.0 - std::pow(a.adam_beta2, n)));
    double reg = 0.0;
    for (index i = 0; i < b.rows; ++i) {
      if (!grid[static_cast<std::size_t>(b.r0 + i)].active) continue;
      auto gr = b.G.row(i).array();
      gr *= b.SC.row(i).array() * b.DH.row(i).array();
      if (reg_on) {
        const auto s2 = b.H.row(i).array() * T(2) - T(1);
        const Eigen::Array<T, 1, Eigen::Dynamic> A = s2.abs();
        const Eigen::Array<T, 1, Eigen::Dynamic> pw =
            tb1 == T(0) ? Eigen::Array<T, 1, Eigen::Dynamic>::Ones(D) : (A.log() * tb1).exp().eval();
        reg += (T(1) - pw * A).template cast<double>().sum();
        gr += (pw * s2.sign()) * (lam * T(-2) * tb) * b.DH.row(i).array();
      }
      auto m = b.M.row(i).array();
      auto v2 = b.S.row(i).array();
      m = m * b1 + gr * c1;
      v2 = v2 * b2 + gr * c2 * gr;
      b.V.row(i).array() -= step_size * m / (v2.sqrt() / bc2_sqrt + eps);
    }
    b.reg = reg_on ? a.lambda * reg : 0.0;
  };

  adaround_xb<T> xb(D, std::min(a.batch, N));  // this iteration's batch, shared by the threads
  adaround_barrier gathered([] {});
  std::mutex gate_m;
  std::condition_variable gate_cv;
  bool go = false;
  int participants = 1;
  const auto worker = [&](int id) {
    {
      std::unique_lock<std::mutex> lock(gate_m);
      gate_cv.wait(lock, [&] { return go; });
    }
    const index lo = nblocks * id / participants, hi = nblocks * (id + 1) / participants;
    const index B = std::min(a.batch, N), c0 = B * id / participants, c1 = B * (id + 1) / participants;
    std::vector<index> idx;
    std::optional<adaround_sampler> sampler;
    try {
      for (index i = lo; i < hi; ++i) setup(blocks[static_cast<std::size_t>(i)]);
      sampler.emplace(a.seed, N, a.batch);
    } catch (...) {
      record_error();
    }
    for (index t = 0; t < iters; ++t) {
      const bool gather = t == 0 || B < N;  // the same on every thread (barrier)
      if (gather) {  // every thread gathers its share of the columns of the shared X_b
        if (!failed) {
          try {
            idx = sampler->next();
            adaround_gather<T>(x, idx, c0, c1, xb);
          } catch (...) {
            record_error();
          }
        }
        gathered.arrive_and_wait();
      }
      if (!failed) {
        try {
          for (index i = lo; i < hi; ++i) step(blocks[static_cast<std::size_t>(i)], xb, idx, t);
        } catch (...) {
          record_error();
        }
      }
      barrier.arrive_and_wait();
      if (stop) break;
    }
  };

  const int hw = static_cast<int>(std::thread::hardware_concurrency());
  const int wanted = static_cast<int>(std::min<index>(a.threads > 0 ? a.threads : std::max(hw, 1), nblocks));
  std::vector<std::thread> pool;
  for (int i = 1; i < wanted; ++i) {
    try {
      pool.emplace_back(worker, i);
    } catch (...) {
      break;  // fewer threads: the same result
    }
  }
  {
    std::lock_guard<std::mutex> lock(gate_m);
    participants = static_cast<int>(pool.size()) + 1;
    barrier.set_count(participants);
    gathered.set_count(participants);
    go = true;
  }
  gate_cv.notify_all();
  worker(0);
  for (auto& th : pool) th.join();
  if (err) std::rethrow_exception(err);

  out.iterations = done;
  out.codes.resize(K, D);
  out.weights.resize(K, D);
  out.v.resize(K, D);
  out.h.resize(K, D);
  for (const auto& b : blocks) {
    for (index i = 0; i < b.rows; ++i) {
      const index k = b.r0 + i;
      const auto& g = grid[static_cast<std::size_t>(k)];
      for (index j = 0; j < D; ++j) {
        const T v = b.V(i, j);
        require(std::isfinite(v), where, "V(", k, ", ", j, ") = ", v, " is not finite after ", done, " iterations");
        const T c = g.active ? std::min(std::max(b.F(i, j) + (v >= T(0) ? T(1) : T(0)), T(0)), g.q)
                             : static_cast<T>(g.const_code);
        out.codes(k, j) = static_cast<std::uint16_t>(c);
        out.weights(k, j) = (c - g.z) * g.s;
        out.v(k, j) = v;
        out.h(k, j) = g.active ? std::min(std::max(T(1) / (T(1) + std::exp(-v)) * stretch + gamma, T(0)), T(1)) : T(0);
      }
    }
  }
  out.seconds = std::chrono::duration<double>(clock::now() - start).count();
  return out;
}

template <class T, class DW, class DX, class DY>
adaround_result<T> adaround_plain(const Eigen::DenseBase<DW>& w, const quant_params<T>& p,
                                  const Eigen::DenseBase<DX>& x, const Eigen::DenseBase<DY>* y,
                                  const adaround_params& a, const char* where) {
  using clock = std::chrono::steady_clock;
  const auto start = clock::now();
  const index K = w.rows(), D = w.cols(), N = x.cols();
  const auto at = [D](index k, index j) { return static_cast<std::size_t>(k * D + j); };
  const std::vector<adaround_grid<T>> grid = adaround_grids(p, K);
  const double zeta = a.zeta, gamma = a.gamma;
  std::vector<double> F(static_cast<std::size_t>(K * D)), V(F.size()), M(F.size()), S(F.size()), Ws(F.size()),
      H(F.size()), DH(F.size()), SC(F.size());
  std::vector<double> X(static_cast<std::size_t>(D * N)), Y(static_cast<std::size_t>(K * N));
  for (index d = 0; d < D; ++d)
    for (index n = 0; n < N; ++n) X[static_cast<std::size_t>(d * N + n)] = static_cast<double>(x.derived().coeff(d, n));
  for (index k = 0; k < K; ++k) {
    const auto& g = grid[static_cast<std::size_t>(k)];
    for (index j = 0; j < D; ++j) {
      if (!g.active) {
        Ws[at(k, j)] = (static_cast<double>(g.const_code) - static_cast<double>(g.z)) * static_cast<double>(g.s);
        continue;
      }
      const double u = static_cast<double>(adaround_u(w.derived().coeff(k, j), g)), fl = std::floor(u), r = u - fl;
      F[at(k, j)] = fl + static_cast<double>(g.z);
      V[at(k, j)] = -std::log((zeta - gamma) / (r - gamma) - 1.0);
    }
    for (index n = 0; n < N; ++n) {
      double acc = 0.0;
      if (y) {
        acc = static_cast<double>(y->derived().coeff(k, n));
      } else {
        for (index j = 0; j < D; ++j)
          acc += static_cast<double>(w.derived().coeff(k, j)) * X[static_cast<std::size_t>(j * N + n)];
      }
      Y[static_cast<std::size_t>(k * N + n)] = acc;
    }
  }
  adaround_result<T> out;
  adaround_sampler sampler(a.seed, N, a.batch);
  const bool clamped = a.output_lo.size() > 0;
  std::vector<double> E;
  for (index t = 0; t < a.iterations; ++t) {
    const std::vector<index>& idx = sampler.next();
    const index B = static_cast<index>(idx.size());
    for (index k = 0; k < K; ++k) {
      const auto& g = grid[static_cast<std::size_t>(k)];
      if (!g.active) continue;
      const double s = static_cast<double>(g.s), z = static_cast<double>(g.z), q = static_cast<double>(g.q);
      for (index j = 0; j < D; ++j) {
        const double sig = 1.0 / (1.0 + std::exp(-V[at(k, j)])), P = sig * (zeta - gamma) + gamma;
        const double h = std::min(std::max(P, 0.0), 1.0), c = F[at(k, j)] + h;
        H[at(k, j)] = h;
        DH[at(k, j)] = P >= 0.0 && P <= 1.0 ? sig * (1.0 - sig) * (zeta - gamma) : 0.0;
        SC[at(k, j)] = c >= 0.0 && c <= q ? s : 0.0;
        Ws[at(k, j)] = (std::min(std::max(c, 0.0), q) - z) * s;
      }
    }
    E.assign(static_cast<std::size_t>(K * B), 0.0);
    double rec = 0.0;
    for (index k = 0; k < K; ++k) {
      for (index b = 0; b < B; ++b) {
        const index n = idx[static_cast<std::size_t>(b)];
        double e = 0.0;
        for (index j = 0; j < D; ++j) e += Ws[at(k, j)] * X[static_cast<std::size_t>(j * N + n)];
        double grad = 1.0;
        if (clamped) {
          const double lo = a.output_lo[k], hi = a.output_hi[k];
          grad = e >= lo && e <= hi ? 1.0 : 0.0;
          e = std::min(std::max(e, lo), hi) - std::min(std::max(Y[static_cast<std::size_t>(k * N + n)], lo), hi);
        } else {
          e -= Y[static_cast<std::size_t>(k * N + n)];
        }
        rec += e * e;
        E[static_cast<std::size_t>(k * B + b)] = grad * e * (2.0 / static_cast<double>(B));
      }
    }
    rec /= static_cast<double>(B);
    const bool reg_on = adaround_regularized(a, t);
    const double beta = adaround_beta(a, t), n1 = static_cast<double>(t + 1);
    const double step_size = a.lr / (1.0 - std::pow(a.adam_beta1, n1));
    const double bc2_sqrt = std::sqrt(1.0 - std::pow(a.adam_beta2, n1));
    double reg = 0.0;
    for (index k = 0; k < K; ++k) {
      if (!grid[static_cast<std::size_t>(k)].active) continue;
      for (index j = 0; j < D; ++j) {
        double g = 0.0;
        for (index b = 0; b < B; ++b)
          g += E[static_cast<std::size_t>(k * B + b)] * X[static_cast<std::size_t>(j * N + idx[static_cast<std::size_t>(b)])];
        g *= SC[at(k, j)] * DH[at(k, j)];
        if (reg_on) {
          const double s2 = 2.0 * H[at(k, j)] - 1.0, A = std::abs(s2);
          reg += 1.0 - std::pow(A, beta);
          const double sign = s2 > 0.0 ? 1.0 : s2 < 0.0 ? -1.0 : 0.0;
          g += -2.0 * a.lambda * beta * std::pow(A, beta - 1.0) * sign * DH[at(k, j)];
        }
        double& m = M[at(k, j)];
        double& v2 = S[at(k, j)];
        m = a.adam_beta1 * m + (1.0 - a.adam_beta1) * g;
        v2 = a.adam_beta2 * v2 + (1.0 - a.adam_beta2) * g * g;
        V[at(k, j)] -= step_size * m / (std::sqrt(v2) / bc2_sqrt + a.adam_eps);
      }
    }
    reg = reg_on ? a.lambda * reg : 0.0;
    adaround_check_loss(rec, reg, t, where);
    out.rec_loss.push_back(rec);
    out.reg_loss.push_back(reg);
    out.beta.push_back(beta);
    out.iterations = t + 1;
    if (t + 1 < a.iterations && std::chrono::duration<double>(clock::now() - start).count() >= a.seconds) {
      out.stopped_by_time = true;
      break;
    }
  }
  out.codes.resize(K, D);
  out.weights.resize(K, D);
  out.v.resize(K, D);
  out.h.resize(K, D);
  for (index k = 0; k < K; ++k) {
    const auto& g = grid[static_cast<std::size_t>(k)];
    for (index j = 0; j < D; ++j) {
      const double v = V[at(k, j)];
      require(std::isfinite(v), where, "V(", k, ", ", j, ") = ", v, " is not finite after ", out.iterations,
              " iterations");
      const double c = g.active ? std::min(std::max(F[at(k, j)] + (v >= 0.0 ? 1.0 : 0.0), 0.0), static_cast<double>(g.q))
                                : static_cast<double>(g.const_code);
      out.codes(k, j) = static_cast<std::uint16_t>(c);
      out.weights(k, j) = (static_cast<T>(c) - g.z) * g.s;
      out.v(k, j) = static_cast<T>(v);
      out.h(k, j) = g.active ? static_cast<T>(std::min(std::max(1.0 / (1.0 + std::exp(-v)) * (zeta - gamma) + gamma, 0.0), 1.0))
                             : T(0);
    }
  }
  out.seconds = std::chrono::duration<double>(clock::now() - start).count();
  return out;
}

}  // namespace detail

// AdaRound of w (K x D) on p's grid for inputs x (D x N), targets y (K x N) or W X.
template <class T, class DW, class DX, class DY>
adaround_result<T> adaround(const Eigen::DenseBase<DW>& w, const quant_params<T>& p, const Eigen::DenseBase<DX>& x,
                            const Eigen::DenseBase<DY>& y, const adaround_params& params = {}) {
  static constexpr const char* where = "ptq::adaround";
  detail::adaround_check(w, p, x, params, where);
  detail::adaround_check_y<T>(y, w.rows(), x.cols(), where);
  return detail::adaround_fast(w, p, x, &y, params, where);
}
template <class T, class DW, class DX>
adaround_result<T> adaround(const Eigen::DenseBase<DW>& w, const quant_params<T>& p, const Eigen::DenseBase<DX>& x,
                            const adaround_params& params = {}) {
  static constexpr const char* where = "ptq::adaround";
  detail::adaround_check(w, p, x, params, where);
  return detail::adaround_fast(w, p, x, static_cast<const Eigen::DenseBase<row_matrix<T>>*>(nullptr), params, where);
}

// The plain twin (scalar loops in double, one thread); for tests and small layers.
template <class T, class DW, class DX, class DY>
adaround_result<T> adaround_ref(const Eigen::DenseBase<DW>& w, const quant_params<T>& p,
                                const Eigen::DenseBase<DX>& x, const Eigen::DenseBase<DY>& y,
                                const adaround_params& params = {}) {
  static constexpr const char* where = "ptq::adaround_ref";
  detail::adaround_check(w, p, x, params, where);
  detail::adaround_check_y<T>(y, w.rows(), x.cols(), where);
  return detail::adaround_plain(w, p, x, &y, params, where);
}
template <class T, class DW, class DX>
adaround_result<T> adaround_ref(const Eigen::DenseBase<DW>& w, const quant_params<T>& p,
                                const Eigen::DenseBase<DX>& x, const adaround_params& params = {}) {
  static constexpr const char* where = "ptq::adaround_ref";
  detail::adaround_check(w, p, x, params, where);
  return detail::adaround_plain(w, p, x, static_cast<const Eigen::DenseBase<row_matrix<T>>*>(nullptr), params, where);
}

}  // namespace ptq
