// test_block_reconstruction.cpp: block reconstruction against its plain twin, adaround, finite differences, naive loops and itself across threads.
#include <doctest/doctest.h>

#include <ptq/block_reconstruction.hpp>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <optional>
#include <random>
#include <string>
#include <vector>

// Everything of this file in its own namespace: the test binary is a unity build.
namespace ptq_test_block_reconstruction {

namespace {

using mat = ptq::row_matrix<double>;
using ix = ptq::index;
using problem = ptq::block_problem<double>;

// Bit for bit (NaN equals itself).
bool same_bits(const mat& a, const mat& b) {
  return a.rows() == b.rows() && a.cols() == b.cols() &&
         std::memcmp(a.data(), b.data(), static_cast<std::size_t>(a.size()) * sizeof(double)) == 0;
}

double rel(double a, double b) { return std::abs(a - b) / std::max({std::abs(a), std::abs(b), 1e-300}); }

double max_rel(const std::vector<double>& a, const std::vector<double>& b) {
  REQUIRE(a.size() == b.size());
  double m = 0.0;
  for (std::size_t i = 0; i < a.size(); ++i) m = std::max(m, rel(a[i], b[i]));
  return m;
}

// The block with float activations, by direct loops in double: every conv's z_j ((N K_j) x (OH_j OW_j), before
// ReLU) and the output. Written from the graph's definition, independent of the header.
struct naive_result {
  std::vector<mat> z;
  mat out;
};

naive_result naive_forward(const problem& b, const std::vector<mat>& w, const mat& x, ix H, ix W) {
  const auto& cv = b.graph.convs;
  const ix C_in = [&] {
    for (const auto& c : cv)
      if (c.source < 0) return c.in_channels;
    return ix(0);
  }();
  const ix N = x.rows() / C_in;
  naive_result r;
  std::vector<mat> o;
  std::vector<ix> hs, ws;
  for (std::size_t j = 0; j < cv.size(); ++j) {
    const auto& c = cv[j];
    const mat& in = c.source < 0 ? x : o[static_cast<std::size_t>(c.source)];
    const ix h = c.source < 0 ? H : hs[static_cast<std::size_t>(c.source)];
    const ix wd = c.source < 0 ? W : ws[static_cast<std::size_t>(c.source)];
    const ix oh = (h + 2 * c.pad - c.kernel) / c.stride + 1, ow = (wd + 2 * c.pad - c.kernel) / c.stride + 1;
    mat z(N * c.out_channels, oh * ow), a(N * c.out_channels, oh * ow);
    for (ix n = 0; n < N; ++n)
      for (ix k = 0; k < c.out_channels; ++k)
        for (ix oy = 0; oy < oh; ++oy)
          for (ix ox = 0; ox < ow; ++ox) {
            double v = b.bias[j][k];
            for (ix ci = 0; ci < c.in_channels; ++ci)
              for (ix r0 = 0; r0 < c.kernel; ++r0)
                for (ix s0 = 0; s0 < c.kernel; ++s0) {
                  const ix iy = oy * c.stride + r0 - c.pad, ixx = ox * c.stride + s0 - c.pad;
                  if (iy < 0 || iy >= h || ixx < 0 || ixx >= wd) continue;
                  v += w[j](k, (ci * c.kernel + r0) * c.kernel + s0) * in(n * c.in_channels + ci, iy * wd + ixx);
                }
            z(n * c.out_channels + k, oy * ow + ox) = v;
            a(n * c.out_channels + k, oy * ow + ox) = c.relu ? std::max(v, 0.0) : v;
          }
    r.z.push_back(z);
    o.push_back(a);
    hs.push_back(oh);
    ws.push_back(ow);
  }
  const auto& g = b.graph;
  r.out = o[static_cast<std::size_t>(g.main)];
  if (g.shortcut == -1) r.out += x;
  if (g.shortcut >= 0) r.out += o[static_cast<std::size_t>(g.shortcut)];
  if (g.relu) r.out = r.out.cwiseMax(0.0);
  return r;
}

struct setup {
  problem b;
  mat x_q, x_fp, y;  // fitting images
  mat xt_q, xt_fp, yt;  // held-out images
  ix H = 0, W = 0;
};

// x = relu(low-rank + noise) per image (C_in x H W), x_q its 4-bit per-tensor fake quantization; y the float
// block's output on x_fp; the activation grids from the float z's (act_bits 0: none), clipped to `clip` of the range.
setup make_setup(ptq::block_graph graph, ix H, ix W, ix N, ix N_test, std::uint64_t seed,
                 const std::vector<Eigen::VectorXi>& wbits, const std::vector<int>& act_mode, double clip = 0.8,
                 int act_bits = 4, ix rank = 0) {
  std::mt19937_64 rng(seed);
  std::normal_distribution<double> g(0.0, 1.0);
  setup s;
  s.H = H;
  s.W = W;
  s.b.graph = graph;
  const auto& cv = graph.convs;
  ix C_in = 0;
  for (const auto& c : cv)
    if (c.source < 0) C_in = c.in_channels;
  for (std::size_t j = 0; j < cv.size(); ++j) {
    const ix K = cv[j].out_channels, D = cv[j].in_channels * cv[j].kernel * cv[j].kernel;
    mat w = mat::NullaryExpr(K, D, [&] { return g(rng) / std::sqrt(static_cast<double>(D)); });
    s.b.weight.push_back(w);
    s.b.bias.push_back(Eigen::VectorXd::NullaryExpr(K, [&] { return 0.1 * g(rng); }));
    ptq::channel_ranges r;
    r.lo = w.rowwise().minCoeff();
    r.hi = w.rowwise().maxCoeff();
    const Eigen::VectorXi& bits = wbits[j];
    if (bits.size() < K) {  // fewer grid channels than K: the ranges of rows c, c + p, ...
      const ix p = bits.size();
      ptq::channel_ranges rp;
      rp.lo = Eigen::VectorXd::Constant(p, 1e9);
      rp.hi = Eigen::VectorXd::Constant(p, -1e9);
      for (ix k = 0; k < K; ++k) {
        rp.lo[k % p] = std::min(rp.lo[k % p], r.lo[k]);
        rp.hi[k % p] = std::max(rp.hi[k % p], r.hi[k]);
      }
      s.b.weight_grid.push_back(ptq::quant_params<double>::per_channel(rp, bits));
    } else {
      s.b.weight_grid.push_back(ptq::quant_params<double>::per_channel(r, bits));
    }
  }
  const ix HW = H * W;
  const mat A = mat::NullaryExpr(C_in * HW, std::max<ix>(rank, 1), [&] { return g(rng); });
  const auto inputs = [&](ix n) {
    mat x(n * C_in, HW);
    for (ix i = 0; i < n; ++i) {
      Eigen::VectorXd v = Eigen::VectorXd::NullaryExpr(C_in * HW, [&] { return (rank > 0 ? 0.2 : 1.0) * g(rng); });
      if (rank > 0) v += A * Eigen::VectorXd::NullaryExpr(rank, [&] { return g(rng); });
      for (ix c = 0; c < C_in; ++c)
        for (ix p = 0; p < HW; ++p) x(i * C_in + c, p) = std::max(v[c * HW + p], 0.0);
    }
    return x;
  };
  s.x_fp = inputs(N);
  s.xt_fp = inputs(N_test);
  const auto xq = ptq::quant_params<double>::per_tensor(0.0, 0.7 * s.x_fp.maxCoeff(), 4);
  s.x_q.resize(s.x_fp.rows(), s.x_fp.cols());
  s.xt_q.resize(s.xt_fp.rows(), s.xt_fp.cols());
  ptq::gemmlowp_quantizer::fake_quantize(s.x_fp, xq, s.x_q);
  ptq::gemmlowp_quantizer::fake_quantize(s.xt_fp, xq, s.xt_q);
  const naive_result fl = naive_forward(s.b, s.b.weight, s.x_fp, H, W);
  for (std::size_t j = 0; j < cv.size(); ++j) {
    const mat& z = fl.z[j];
    const ix K = cv[j].out_channels;
    if (act_mode[j] == 0) {
      s.b.act.emplace_back(std::nullopt);
    } else if (act_mode[j] == 1) {  // per tensor
      s.b.act.emplace_back(ptq::quant_params<double>::per_tensor(clip * z.minCoeff(), clip * z.maxCoeff(), act_bits));
    } else {  // per channel, act_mode channels
      const ix p = act_mode[j];
      ptq::channel_ranges r;
      r.lo = Eigen::VectorXd::Zero(p);
      r.hi = Eigen::VectorXd::Zero(p);
      for (ix row = 0; row < z.rows(); ++row) {
        const ix c = (row % K) % p;
        r.lo[c] = std::min(r.lo[c], clip * z.row(row).minCoeff());
        r.hi[c] = std::max(r.hi[c], clip * z.row(row).maxCoeff());
      }
      s.b.act.emplace_back(ptq::quant_params<double>::per_channel(r, act_bits));
    }
  }
  s.y = fl.out;
  s.yt = naive_forward(s.b, s.b.weight, s.xt_fp, H, W).out;
  return s;
}

// A bottleneck with a projection shortcut and stride 2: C_in -> a (1x1, ReLU) -> b (3x3 / 2, ReLU) -> K (1x1),
// shortcut 1x1 / 2 C_in -> K.
ptq::block_graph bottleneck(ix C_in, ix a, ix b2, ix K) {
  ptq::block_graph g;
  g.convs = {{C_in, a, 1, 1, 0, -1, true}, {a, b2, 3, 2, 1, 0, true}, {b2, K, 1, 1, 0, 1, false}, {C_in, K, 1, 2, 0, -1, false}};
  g.main = 2;
  g.shortcut = 3;
  return g;
}

ptq::block_graph basic(ix C) {
  ptq::block_graph g;
  g.convs = {{C, C, 3, 1, 1, -1, true}, {C, C, 3, 1, 1, 0, false}};
  g.main = 1;
  g.shortcut = -1;
  return g;
}

setup bottleneck_setup(std::uint64_t seed, ix N = 11) {
  Eigen::VectorXi b0(3), b1(4), b2(3), b3(6);
  b0 << 4, 3, 0;        // conv 0: per channel, a 0-bit (constant) channel
  b1 << 4, 2, 4, 5;
  b2 << 4, 3, 4;        // conv 2: 3 grid channels for 6 rows
  b3 << 4, 4, 3, 4, 8, 4;
  return make_setup(bottleneck(5, 3, 4, 6), 7, 5, N, 4, seed, {b0, b1, b2, b3}, {1, 4, 1, 2});
}

ptq::block_params run_params(ix iterations, ix batch, double qdrop) {
  ptq::block_params p;
  p.rounding.iterations = iterations;
  p.rounding.batch = batch;
  p.rounding.seed = 5;
  p.rounding.threads = 2;
  p.rounding.lr = 1e-2;  // moves V enough in a short run to change codes
  p.qdrop = qdrop;
  return p;
}

void check_same_run(const ptq::block_result<double>& fast, const ptq::block_result<double>& ref, double tol) {
  REQUIRE(fast.iterations == ref.iterations);
  CHECK(fast.beta == ref.beta);
  const double dr = max_rel(fast.rec_loss, ref.rec_loss), dg = max_rel(fast.reg_loss, ref.reg_loss);
  MESSAGE("fast vs twin, largest relative difference: reconstruction " << dr << ", regularizer " << dg);
  CHECK(dr < tol);
  CHECK(dg < tol);
  REQUIRE(fast.codes.size() == ref.codes.size());
  for (std::size_t j = 0; j < fast.codes.size(); ++j) {
    CAPTURE(j);
    CHECK(fast.codes[j] == ref.codes[j]);
    CHECK(fast.weights[j] == ref.weights[j]);
  }
}

// Codes learned that differ from round-to-nearest (all convs).
ix moved_codes(const problem& b, const ptq::block_result<double>& r) {
  ix moved = 0;
  for (std::size_t j = 0; j < b.weight.size(); ++j) {
    Eigen::Matrix<std::uint16_t, Eigen::Dynamic, Eigen::Dynamic, Eigen::RowMajor> q(b.weight[j].rows(), b.weight[j].cols());
    ptq::gemmlowp_quantizer::quantize<std::uint16_t>(b.weight[j], b.weight_grid[j], q);
    moved += (q.array() != r.codes[j].array()).count();
  }
  return moved;
}


// The integer network's form of s's block: every conv reads codes (input_scale: per input channel, mixed values, one
// 0), weights folded, W' = W diag(s) (per column c k k + r k + q: s_c), on per-output-channel grids of W' with the
// original bits (the rows k, k + P, ... of a P-channel grid share one); the block output on a per-channel grid of
// 3 channels (one 0 bits: a constant channel) from y's range.
problem integer_form(const setup& s) {
  problem b = s.b;
  const auto& cv = b.graph.convs;
  b.input_scale.resize(cv.size());
  for (std::size_t j = 0; j < cv.size(); ++j) {
    const ix C = cv[j].in_channels, kk = cv[j].kernel * cv[j].kernel, K = cv[j].out_channels;
    Eigen::VectorXd sc(C);
    for (ix c = 0; c < C; ++c) sc[c] = 0.05 + 0.03 * static_cast<double>((c * 7 + static_cast<ix>(j)) % 5);
    sc[(static_cast<ix>(j) + 1) % C] = 0.0;
    b.input_scale[j] = sc;
    mat& w = b.weight[j];
    for (ix c = 0; c < C; ++c) w.middleCols(c * kk, kk) *= sc[c];
    const auto& g0 = s.b.weight_grid[j];
    const ix P = g0.channels();
    ptq::channel_ranges r;
    r.lo = Eigen::VectorXd::Constant(P, 0.0);
    r.hi = Eigen::VectorXd::Constant(P, 0.0);
    for (ix k = 0; k < K; ++k) {
      r.lo[k % P] = std::min(r.lo[k % P], w.row(k).minCoeff());
      r.hi[k % P] = std::max(r.hi[k % P], w.row(k).maxCoeff());
    }
    b.weight_grid[j] = ptq::quant_params<double>::per_channel(r, g0.bits);
  }
  Eigen::VectorXi ob(3);
  ob << 4, 0, 3;
  ptq::channel_ranges r;
  r.lo = Eigen::VectorXd::Zero(3);
  r.hi = Eigen::VectorXd::Constant(3, 0.9 * s.y.maxCoeff());
  b.output_act = ptq::quant_params<double>::per_channel(r, ob);
  return b;
}

// b with conv j reading codes on a per-tensor grid of scale sc: input_scale[j] = sc per channel, W' = sc W on the
// grid of scales sc p.scale (the same codes: W' / (sc p.scale) = W / p.scale).
problem fold(problem b, std::size_t j, double sc) {
  b.input_scale.resize(b.graph.convs.size());
  b.input_scale[j] = Eigen::VectorXd::Constant(b.graph.convs[j].in_channels, sc);
  b.weight[j] *= sc;
  b.weight_grid[j].scale *= sc;
  return b;
}
}  // namespace

TEST_CASE("block reconstruction: fast path follows its plain twin on a strided bottleneck with projection") {
  const setup s = bottleneck_setup(1);
  for (const double qdrop : {0.0, 0.5, 1.0}) {
    CAPTURE(qdrop);
    const auto p = run_params(80, 5, qdrop);  // 2 chunks of images per step
    const auto fast = ptq::reconstruct_block(s.b, s.x_q, s.x_fp, s.H, s.W, s.y, p);
    const auto ref = ptq::reconstruct_block_ref(s.b, s.x_q, s.x_fp, s.H, s.W, s.y, p);
    check_same_run(fast, ref, 1e-12);
    CHECK(ref.reg_loss[14] == 0.0);  // count 15 < 0.2 * 80
    CHECK(ref.reg_loss[15] > 0.0);
    CHECK(moved_codes(s.b, fast) > 0);
    // Constant channels keep quantize()'s value (conv 0's channel 2: 0 bits).
    CHECK(fast.weights[0].row(2).isConstant(fast.weights[0](2, 0)));
  }
  // The drops do something: the three runs differ.
  const auto r0 = ptq::reconstruct_block(s.b, s.x_q, s.x_fp, s.H, s.W, s.y, run_params(3, 5, 0.0));
  const auto r5 = ptq::reconstruct_block(s.b, s.x_q, s.x_fp, s.H, s.W, s.y, run_params(3, 5, 0.5));
  const auto r1 = ptq::reconstruct_block(s.b, s.x_q, s.x_fp, s.H, s.W, s.y, run_params(3, 5, 1.0));
  CHECK(r0.rec_loss[0] != r5.rec_loss[0]);
  CHECK(r5.rec_loss[0] != r1.rec_loss[0]);
}

TEST_CASE("block reconstruction: fast path follows its plain twin on a BasicBlock with identity shortcut") {
  Eigen::VectorXi bits(4);
  bits << 4, 4, 0, 3;
  const setup s = make_setup(basic(4), 5, 4, 9, 2, 2, {bits, Eigen::VectorXi::Constant(1, 4)}, {4, 1});
  const mat none(0, 0);
  for (const double qdrop : {0.0, 0.5}) {
    for (const bool with_fp : {true, false}) {
      CAPTURE(qdrop);
      CAPTURE(with_fp);
      const auto p = run_params(60, 6, qdrop);
      const auto fast = ptq::reconstruct_block(s.b, s.x_q, with_fp ? s.x_fp : none, s.H, s.W, s.y, p);
      const auto ref = ptq::reconstruct_block_ref(s.b, s.x_q, with_fp ? s.x_fp : none, s.H, s.W, s.y, p);
      check_same_run(fast, ref, 1e-12);
    }
  }
}

TEST_CASE("block reconstruction: the float fast path follows the double twin") {
  const setup s = bottleneck_setup(14);
  const auto cast = [](const ptq::quant_params<double>& q) {
    ptq::quant_params<float> f;
    f.scale = q.scale.cast<float>();
    f.zero_point = q.zero_point;
    f.bits = q.bits;
    f.g = q.g;
    return f;
  };
  for (const bool integer : {false, true}) {  // the float block, and its integer form (input_scale, output_act)
    CAPTURE(integer);
    const problem src = integer ? integer_form(s) : s.b;
    ptq::block_problem<float> bf;
    bf.graph = src.graph;
    for (std::size_t j = 0; j < src.weight.size(); ++j) {
      bf.weight.push_back(src.weight[j].cast<float>());
      bf.bias.push_back(src.bias[j].cast<float>());
      bf.weight_grid.push_back(cast(src.weight_grid[j]));
      bf.act.push_back(src.act[j] ? std::optional<ptq::quant_params<float>>(cast(*src.act[j])) : std::nullopt);
    }
    for (const auto& sc : src.input_scale) bf.input_scale.push_back(sc.cast<float>());
    if (src.output_act) bf.output_act = cast(*src.output_act);
    // The twin on the same (float) values in double.
    problem bd = src;
    for (std::size_t j = 0; j < bd.weight.size(); ++j) {
      bd.weight[j] = bf.weight[j].cast<double>();
      bd.bias[j] = bf.bias[j].cast<double>();
      bd.weight_grid[j].scale = bf.weight_grid[j].scale.cast<double>();
      if (bd.act[j]) bd.act[j]->scale = bf.act[j]->scale.cast<double>();
    }
    for (std::size_t j = 0; j < bd.input_scale.size(); ++j) bd.input_scale[j] = bf.input_scale[j].cast<double>();
    if (bd.output_act) bd.output_act->scale = bf.output_act->scale.cast<double>();
    const ptq::row_matrix<float> xq = s.x_q.cast<float>(), xfp = s.x_fp.cast<float>(), y = s.y.cast<float>();
    const auto p = run_params(60, 5, 0.5);
    const auto fast = ptq::reconstruct_block(bf, xq, xfp, s.H, s.W, y, p);
    const auto ref = ptq::reconstruct_block_ref(bd, mat(xq.cast<double>()), mat(xfp.cast<double>()), s.H, s.W,
                                                mat(y.cast<double>()), p);
    REQUIRE(fast.iterations == ref.iterations);
    // Float GEMMs, activations and Adam state against double: an activation element near a rounding boundary may
    // land on the other code, so the losses agree to float's precision times a few codes' worth.
    const double dr = max_rel(fast.rec_loss, ref.rec_loss), dg = max_rel(fast.reg_loss, ref.reg_loss);
    MESSAGE("float fast vs double twin, largest relative difference: reconstruction " << dr << ", regularizer " << dg);
    CHECK(dr < 1e-4);  // measured 1.6e-7 (float block), 1.3e-8 (integer form)
    CHECK(dg < 1e-4);
    ix same = 0, total = 0;
    for (std::size_t j = 0; j < fast.codes.size(); ++j) {
      same += (fast.codes[j].array() == ref.codes[j].array()).count();
      total += fast.codes[j].size();
    }
    CHECK(same >= total - total / 100);
  }
}

TEST_CASE("block reconstruction: a single conv block is adaround on the im2col columns of all pixels") {
  ptq::block_graph g;
  g.convs = {{3, 5, 3, 2, 1, -1, false}};
  g.main = 0;
  g.shortcut = -2;
  g.relu = false;
  Eigen::VectorXi bits(5);
  bits << 4, 3, 0, 4, 5;
  const ix H = 6, W = 5, N = 7;
  const setup s = make_setup(g, H, W, N, 1, 3, {bits}, {0});
  const ix OH = 3, OW = 3, K = 5, D = 27;
  // The columns: (c, r, s) x (n, oy, ox); targets y - bias.
  mat X = mat::Zero(D, N * OH * OW), Y(K, N * OH * OW);
  for (ix n = 0; n < N; ++n)
    for (ix oy = 0; oy < OH; ++oy)
      for (ix ox = 0; ox < OW; ++ox) {
        const ix col = (n * OH + oy) * OW + ox;
        for (ix c = 0; c < 3; ++c)
          for (ix r = 0; r < 3; ++r)
            for (ix q = 0; q < 3; ++q) {
              const ix iy = oy * 2 + r - 1, ixx = ox * 2 + q - 1;
              if (iy >= 0 && iy < H && ixx >= 0 && ixx < W) X((c * 3 + r) * 3 + q, col) = s.x_q(n * 3 + c, iy * W + ixx);
            }
        for (ix k = 0; k < K; ++k) Y(k, col) = s.y(n * K + k, oy * OW + ox) - s.b.bias[0][k];
      }
  auto p = run_params(200, 100, 0.0);  // full batch
  p.rounding.lr = 3e-3;
  const auto blk = ptq::reconstruct_block(s.b, s.x_q, s.x_fp, H, W, s.y, p);
  const auto ada = ptq::adaround(s.b.weight[0], s.b.weight_grid[0], X, Y, p.rounding);
  REQUIRE(blk.iterations == ada.iterations);
  CHECK(blk.beta == ada.beta);
  const double dr = max_rel(blk.rec_loss, ada.rec_loss), dg = max_rel(blk.reg_loss, ada.reg_loss);
  MESSAGE("block vs adaround, largest relative difference: reconstruction " << dr << ", regularizer " << dg);
  CHECK(dr < 1e-12);
  CHECK(dg < 1e-12);
  CHECK(blk.codes[0] == ada.codes);
  CHECK(blk.weights[0] == ada.weights);
  CHECK(moved_codes(s.b, blk) > 0);
}

TEST_CASE("block reconstruction: the same result bit for bit on 1, 2 and 3 threads, another seed another run") {
  const setup s = bottleneck_setup(4, 13);
  auto p = run_params(40, 12, 0.5);  // 3 chunks per step
  std::vector<ptq::block_result<double>> runs;
  for (const int threads : {1, 2, 3}) {
    p.rounding.threads = threads;
    runs.push_back(ptq::reconstruct_block(s.b, s.x_q, s.x_fp, s.H, s.W, s.y, p));
  }
  for (std::size_t i = 1; i < runs.size(); ++i) {
    CAPTURE(i);
    CHECK(runs[i].rec_loss == runs[0].rec_loss);
    CHECK(runs[i].reg_loss == runs[0].reg_loss);
    CHECK(runs[i].codes == runs[0].codes);
    CHECK(runs[i].weights == runs[0].weights);
  }
  p.rounding.seed = 6;
  const auto other = ptq::reconstruct_block(s.b, s.x_q, s.x_fp, s.H, s.W, s.y, p);
  ix differ = 0;
  for (std::size_t t = 0; t < other.rec_loss.size(); ++t) differ += other.rec_loss[t] != runs[0].rec_loss[t];
  CHECK(differ > 30);
  // The batches: adaround_sampler over images, another seed another sequence.
  ptq::adaround_sampler a(5, 13, 12), b(6, 13, 12);
  bool same = true;
  for (int t = 0; t < 5; ++t) same = same && a.next() == b.next();
  CHECK_FALSE(same);
}

TEST_CASE("block reconstruction: the gradient w.r.t. V - finite differences, and the STE against the twin") {
  Eigen::VectorXi b0(3), b1(2), b2(4), b3(4);
  b0 << 4, 0, 3;
  b1 << 4, 3;
  b2 << 4, 4, 5, 3;
  b3 << 4, 4, 4, 4;
  // Float activations: the loss is smooth in V (away from the kinks of ReLU and clamp).
  const setup s = make_setup(bottleneck(3, 3, 2, 4), 5, 5, 3, 1, 8, {b0, b1, b2, b3}, {0, 0, 0, 0});
  std::mt19937_64 rng(9);
  std::uniform_real_distribution<double> u(-2.0, 2.0);
  std::vector<mat> V;
  for (const auto& w : s.b.weight) V.push_back(mat::NullaryExpr(w.rows(), w.cols(), [&] { return u(rng); }));
  const std::vector<ix> idx = {0, 2};
  auto p = run_params(100, 2, 0.0);
  const ix t = 60;  // regularizer on, beta between 20 and 2
  const auto at = ptq::detail::block_loss_and_gradient(s.b, s.x_q, s.x_fp, s.H, s.W, s.y, p, V, idx, t, false);
  REQUIRE(at.reg > 0.0);
  const double eps = 1e-6;
  double worst = 0.0, scale = 0.0;
  ix checked = 0;
  for (std::size_t j = 0; j < V.size(); ++j)
    for (ix k = 0; k < V[j].rows(); ++k) {
      if (s.b.weight_grid[j].is_constant(k % s.b.weight_grid[j].channels())) {
        CHECK(at.grad[j].row(k).isZero(0.0));
        continue;
      }
      for (ix d = 0; d < V[j].cols(); ++d) {
        std::vector<mat> vp = V, vm = V;
        vp[j](k, d) += eps;
        vm[j](k, d) -= eps;
        const auto lp = ptq::detail::block_loss_and_gradient(s.b, s.x_q, s.x_fp, s.H, s.W, s.y, p, vp, idx, t, false);
        const auto lm = ptq::detail::block_loss_and_gradient(s.b, s.x_q, s.x_fp, s.H, s.W, s.y, p, vm, idx, t, false);
        const double fd = ((lp.rec + lp.reg) - (lm.rec + lm.reg)) / (2 * eps);
        worst = std::max(worst, std::abs(fd - at.grad[j](k, d)));
        scale = std::max(scale, std::abs(fd));
        ++checked;
      }
    }
  MESSAGE(checked << " derivatives, largest |finite difference - gradient| " << worst << " (largest derivative "
                  << scale << ")");
  CHECK(checked > 60);
  CHECK(worst < 1e-6 * scale);
  // The twin's gradient is the same.
  const auto twin = ptq::detail::block_loss_and_gradient(s.b, s.x_q, s.x_fp, s.H, s.W, s.y, p, V, idx, t, true);
  CHECK(rel(twin.rec, at.rec) < 1e-13);
  for (std::size_t j = 0; j < V.size(); ++j) CHECK((twin.grad[j] - at.grad[j]).cwiseAbs().maxCoeff() < 1e-12 * scale);

  // With activation quantizers (clipped ranges: some z outside them) and QDrop, the STE: the fast path's
  // gradient is the twin's, whose loops spell the definition; and a drop rate of 1 gives the float gradient.
  const setup q = make_setup(bottleneck(3, 3, 2, 4), 5, 5, 3, 1, 8, {b0, b1, b2, b3}, {1, 2, 1, 4}, 0.6);
  for (const double qdrop : {0.0, 0.5, 1.0}) {
    CAPTURE(qdrop);
    p.qdrop = qdrop;
    const auto f = ptq::detail::block_loss_and_gradient(q.b, q.x_q, q.x_fp, q.H, q.W, q.y, p, V, idx, t, false);
    const auto r = ptq::detail::block_loss_and_gradient(q.b, q.x_q, q.x_fp, q.H, q.W, q.y, p, V, idx, t, true);
    CHECK(rel(f.rec, r.rec) < 1e-13);
    double gmax = 0.0;
    for (std::size_t j = 0; j < V.size(); ++j) gmax = std::max(gmax, r.grad[j].cwiseAbs().maxCoeff());
    for (std::size_t j = 0; j < V.size(); ++j) CHECK((f.grad[j] - r.grad[j]).cwiseAbs().maxCoeff() < 1e-12 * gmax);
    if (qdrop == 1.0) {  // every activation and the block input float: s's problem on x_fp
      const auto fl = ptq::detail::block_loss_and_gradient(s.b, s.x_fp, s.x_fp, s.H, s.W, s.y, p, V, idx, t, false);
      CHECK(rel(fl.rec, f.rec) < 1e-13);
      for (std::size_t j = 0; j < V.size(); ++j) CHECK((f.grad[j] - fl.grad[j]).cwiseAbs().maxCoeff() < 1e-12 * gmax);
    }
  }
}

TEST_CASE("block reconstruction: block_forward is the naive block, and the learned rounding beats round-to-nearest") {
  Eigen::VectorXi b8 = Eigen::VectorXi::Constant(8, 4);
  const setup s =
      make_setup(bottleneck(8, 8, 8, 8), 6, 6, 256, 64, 11, {b8, b8, b8, b8}, {1, 8, 1, 8}, 0.9, 4, /*rank*/ 3);
  // Float weights, no activation quantizers: a naive double loop.
  problem fl = s.b;
  for (auto& a : fl.act) a.reset();
  const mat f = ptq::block_forward(fl, s.b.weight, s.xt_fp, s.H, s.W);
  CHECK((f - s.yt).cwiseAbs().maxCoeff() < 1e-12 * s.yt.cwiseAbs().maxCoeff());
  // With activation quantizers: each act is the fake quantization of the naive z.
  {
    problem one = s.b;
    one.graph.convs.resize(1);
    one.graph.main = 0;
    one.graph.shortcut = -2;
    one.graph.relu = false;
    one.graph.convs[0].relu = false;
    one.weight.resize(1);
    one.bias.resize(1);
    one.weight_grid.resize(1);
    one.act.resize(1);
    const mat a = ptq::block_forward(one, {s.b.weight[0]}, s.xt_q, s.H, s.W);
    const mat z = naive_forward(one, {s.b.weight[0]}, s.xt_q, s.H, s.W).z[0];
    mat fq(z.rows(), z.cols());
    ptq::gemmlowp_quantizer::fake_quantize_ref(z, *s.b.act[0], fq);
    CHECK((a - fq).cwiseAbs().maxCoeff() <= 1e-12);
  }
  // Round-to-nearest weights against the learned ones on held-out images, the quantized network's inputs.
  std::vector<mat> rtn;
  for (std::size_t j = 0; j < s.b.weight.size(); ++j) {
    mat q(s.b.weight[j].rows(), s.b.weight[j].cols());
    ptq::gemmlowp_quantizer::fake_quantize(s.b.weight[j], s.b.weight_grid[j], q);
    rtn.push_back(q);
  }
  ptq::block_params p;
  p.rounding.iterations = 1500;
  p.rounding.batch = 8;
  p.rounding.lr = 1e-2;
  p.rounding.threads = 2;
  p.qdrop = 0.5;
  const auto r = ptq::reconstruct_block(s.b, s.x_q, s.x_fp, s.H, s.W, s.y, p);
  const double e_rtn = (ptq::block_forward(s.b, rtn, s.xt_q, s.H, s.W) - s.yt).squaredNorm();
  const double e_learn = (ptq::block_forward(s.b, r.weights, s.xt_q, s.H, s.W) - s.yt).squaredNorm();
  const double e_fit_rtn = (ptq::block_forward(s.b, rtn, s.x_q, s.H, s.W) - s.y).squaredNorm();
  const double e_fit = (ptq::block_forward(s.b, r.weights, s.x_q, s.H, s.W) - s.y).squaredNorm();
  MESSAGE("held-out block output error: round-to-nearest " << e_rtn << ", learned " << e_learn << " (fitting images "
                                                           << e_fit_rtn << ", " << e_fit << "); " << moved_codes(s.b, r)
                                                           << " codes moved");
  CHECK(e_learn < 0.95 * e_rtn);  // measured 0.89: the 4-bit activations dominate the error
  CHECK(e_fit < e_fit_rtn);
  // Every code within one step of the floor code, inside its grid.
  for (std::size_t j = 0; j < s.b.weight.size(); ++j) {
    const auto& g = s.b.weight_grid[j];
    for (ix k = 0; k < r.codes[j].rows(); ++k)
      for (ix d = 0; d < r.codes[j].cols(); ++d) {
        const ix c = k % g.channels();
        CHECK(r.codes[j](k, d) <= g.qmax(c));
        const double u = s.b.weight[j](k, d) / g.scale[c] + g.zero_point[c];
        CHECK(std::abs(static_cast<double>(r.codes[j](k, d)) - u) < 1.0 + 1e-9);
      }
  }
}


TEST_CASE("block reconstruction: integer form (input_scale on every conv, output_act) - fast path follows its twin") {
  const setup s = bottleneck_setup(21);
  const problem b = integer_form(s);
  for (const double qdrop : {0.0, 0.5}) {
    CAPTURE(qdrop);
    const auto p = run_params(60, 5, qdrop);
    const auto fast = ptq::reconstruct_block(b, s.x_q, s.x_fp, s.H, s.W, s.y, p);
    const auto ref = ptq::reconstruct_block_ref(b, s.x_q, s.x_fp, s.H, s.W, s.y, p);
    check_same_run(fast, ref, 1e-12);
    CHECK(moved_codes(b, fast) > 0);
    // Each new field changes the run.
    problem no_out = b, no_in = b;
    no_out.output_act.reset();
    no_in.input_scale.clear();
    const auto a = ptq::reconstruct_block(no_out, s.x_q, s.x_fp, s.H, s.W, s.y, run_params(2, 5, qdrop));
    const auto c = ptq::reconstruct_block(no_in, s.x_q, s.x_fp, s.H, s.W, s.y, run_params(2, 5, qdrop));
    CHECK(a.rec_loss[0] != fast.rec_loss[0]);
    CHECK(c.rec_loss[0] != fast.rec_loss[0]);
  }
  // The gradient with respect to V: fast path against the twin's loops (the STE through the codes, 1 / s), with drops
  // of every activation and of the block output.
  std::mt19937_64 rng(3);
  std::uniform_real_distribution<double> u(-2.0, 2.0);
  std::vector<mat> V;
  for (const auto& w : b.weight) V.push_back(mat::NullaryExpr(w.rows(), w.cols(), [&] { return u(rng); }));
  for (const double qdrop : {0.0, 0.5}) {
    CAPTURE(qdrop);
    const auto p = run_params(100, 4, qdrop);
    const std::vector<ix> idx = {1, 4, 7, 9, 10};  // two chunks
    const auto f = ptq::detail::block_loss_and_gradient(b, s.x_q, s.x_fp, s.H, s.W, s.y, p, V, idx, 60, false);
    const auto r = ptq::detail::block_loss_and_gradient(b, s.x_q, s.x_fp, s.H, s.W, s.y, p, V, idx, 60, true);
    CHECK(rel(f.rec, r.rec) < 1e-13);
    double gmax = 0.0;
    for (std::size_t j = 0; j < V.size(); ++j) gmax = std::max(gmax, r.grad[j].cwiseAbs().maxCoeff());
    REQUIRE(gmax > 0.0);
    for (std::size_t j = 0; j < V.size(); ++j) CHECK((f.grad[j] - r.grad[j]).cwiseAbs().maxCoeff() < 1e-12 * gmax);
  }
}

TEST_CASE("block reconstruction: folding a per-tensor input scale into the weights gives the same run") {
  // Inputs on a grid of scale sc: x = sc (code - 3), codes 0 .. 15. The conv on W with grid p against the conv on
  // W' = sc W with grid sc p.scale reading round(x / sc) = code - 3: z = W_soft x = W'_soft x'. With sc a power of
  // two every step is exact (the same run bit for bit); otherwise the same to rounding.
  ptq::block_graph g;
  g.convs = {{3, 4, 3, 1, 1, -1, true}, {4, 5, 3, 2, 0, 0, false}};
  g.main = 1;
  g.shortcut = -2;
  g.relu = false;
  Eigen::VectorXi b0(4), b1(5);
  b0 << 4, 3, 4, 5;
  b1 << 4, 4, 3, 4, 4;
  setup s = make_setup(g, 7, 6, 6, 1, 31, {b0, b1}, {1, 0});
  std::mt19937_64 rng(8);
  std::uniform_int_distribution<int> code(0, 15);
  const mat none(0, 0);
  for (const double sc : {0.125, 0.37}) {
    CAPTURE(sc);
    mat x = mat::NullaryExpr(s.x_q.rows(), s.x_q.cols(), [&] { return sc * (code(rng) - 3); });
    // conv 0 alone (its output quantizer on, drops on it), then the chain with conv 1 reading conv 0's quantized
    // output on its grid (scale set to a power of two), no drops.
    for (const bool chain : {false, true}) {
      CAPTURE(chain);
      problem b = s.b;
      if (!chain) {
        b.graph.convs.resize(1);
        b.graph.convs[0].relu = false;
        b.graph.main = 0;
        b.weight.resize(1);
        b.bias.resize(1);
        b.weight_grid.resize(1);
        b.act.resize(1);
      } else {
        b.act[0]->scale[0] = 0.0625;
      }
      problem f = fold(b, 0, sc);
      if (chain) f = fold(f, 1, b.act[0]->scale[0]);
      const mat y = ptq::block_forward(b, b.weight, x, s.H, s.W);
      const mat yf = ptq::block_forward(f, f.weight, x, s.H, s.W);
      CHECK((yf - y).cwiseAbs().maxCoeff() <= 1e-12 * y.cwiseAbs().maxCoeff());
      const mat target = y + mat::Constant(y.rows(), y.cols(), 0.01);
      for (const double qdrop : {0.0, 0.5}) {
        if (chain && qdrop > 0.0) continue;  // a dropped conv 0 output is not on its grid: the folded conv rounds it
        CAPTURE(qdrop);
        const auto p = run_params(80, 4, qdrop);
        const auto r = ptq::reconstruct_block(b, x, none, s.H, s.W, target, p);
        const auto rf = ptq::reconstruct_block(f, x, none, s.H, s.W, target, p);
        REQUIRE(r.iterations == rf.iterations);
        CHECK(moved_codes(b, r) > 0);
        for (std::size_t j = 0; j < r.codes.size(); ++j) CHECK(r.codes[j] == rf.codes[j]);
        if (sc == 0.125) {
          CHECK(r.rec_loss == rf.rec_loss);
          CHECK(r.reg_loss == rf.reg_loss);
        } else {
          const double dr = max_rel(r.rec_loss, rf.rec_loss), dg = max_rel(r.reg_loss, rf.reg_loss);
          MESSAGE("folded vs unfolded (scale " << sc << "), largest relative difference: reconstruction " << dr
                                               << ", regularizer " << dg);
          CHECK(dr < 1e-12);
          CHECK(dg < 1e-12);
        }
      }
    }
  }
}

TEST_CASE("block reconstruction: block_forward - output_act is the fake quantization of the block output, "
          "input_scale reads the codes") {
  const setup s = bottleneck_setup(22);
  const problem b = integer_form(s);
  problem no_out = b;
  no_out.output_act.reset();
  const mat y = ptq::block_forward(no_out, b.weight, s.xt_q, s.H, s.W);
  mat fq(y.rows(), y.cols());
  ptq::gemmlowp_quantizer::fake_quantize(y, *b.output_act, fq);
  const mat yq = ptq::block_forward(b, b.weight, s.xt_q, s.H, s.W);
  CHECK(same_bits(yq, fq));
  CHECK(!same_bits(yq, y));
  CHECK(yq.row(1).isConstant(yq(1, 0)));  // output channel 1: the constant grid channel
  // A single conv with input_scale (one 0 channel) reads rint(x / s): the same as the plain conv on those codes.
  problem one = b;
  one.graph.convs.resize(1);
  one.graph.convs[0].relu = false;
  one.graph.main = 0;
  one.graph.shortcut = -2;
  one.graph.relu = false;
  one.weight.resize(1);
  one.bias.resize(1);
  one.weight_grid.resize(1);
  one.act.assign(1, std::nullopt);
  one.input_scale.resize(1);
  one.output_act.reset();
  problem plain = one;
  plain.input_scale.clear();
  mat codes = s.xt_q;
  const ix C = one.graph.convs[0].in_channels;
  for (ix r = 0; r < codes.rows(); ++r) {
    const double sc = one.input_scale[0][r % C];
    for (ix q = 0; q < codes.cols(); ++q) codes(r, q) = sc == 0.0 ? 0.0 : std::nearbyint(codes(r, q) * (1.0 / sc));
  }
  CHECK(same_bits(ptq::block_forward(one, one.weight, s.xt_q, s.H, s.W),
                  ptq::block_forward(plain, one.weight, codes, s.H, s.W)));
}

TEST_CASE("block reconstruction: bad input throws ptq::error naming the argument, inputs untouched") {
  const setup s = bottleneck_setup(12, 5);
  const auto ok = run_params(2, 3, 0.5);
  const mat none(0, 0);
  const auto expect = [&](const problem& b, const mat& xq, const mat& xfp, ix H, ix W, const mat& y,
                          const ptq::block_params& p, const std::string& what) {
    CAPTURE(what);
    const problem b0 = b;
    const mat xq0 = xq, y0 = y;
    CHECK_THROWS_WITH_AS(ptq::reconstruct_block(b, xq, xfp, H, W, y, p), doctest::Contains(what.c_str()), ptq::error);
    CHECK_THROWS_WITH_AS(ptq::reconstruct_block_ref(b, xq, xfp, H, W, y, p), doctest::Contains(what.c_str()),
                         ptq::error);
    CHECK(same_bits(xq, xq0));
    CHECK(same_bits(y, y0));
    for (std::size_t j = 0; j < b.weight.size() && j < b0.weight.size(); ++j) CHECK(same_bits(b.weight[j], b0.weight[j]));
  };
  const auto graph_error = [&](auto edit, const std::string& what) {
    problem b = s.b;
    edit(b);
    expect(b, s.x_q, s.x_fp, s.H, s.W, s.y, ok, what);
  };
  CHECK_NOTHROW(ptq::reconstruct_block(s.b, s.x_q, s.x_fp, s.H, s.W, s.y, ok));
  graph_error([](problem& b) { b.graph.convs[1].source = 1; }, "b.graph.convs[1].source = 1");
  graph_error([](problem& b) { b.graph.convs[1].source = -3; }, "b.graph.convs[1].source = -3");
  graph_error([](problem& b) { b.graph.convs[2].in_channels = 5; }, "b.graph.convs[2].in_channels = 5");
  graph_error([](problem& b) { b.graph.convs[3].in_channels = 4; }, "b.graph.convs[3].in_channels = 4");
  graph_error([](problem& b) { b.graph.convs[0].kernel = 0; }, "b.graph.convs[0].kernel = 0");
  graph_error([](problem& b) { b.graph.convs[1].stride = 0; }, "b.graph.convs[1].stride = 0");
  graph_error([](problem& b) { b.graph.convs[1].pad = -1; }, "b.graph.convs[1].pad = -1");
  graph_error([](problem& b) { b.graph.convs[1].kernel = 9; }, "b.graph.convs[1]: kernel 9");
  graph_error([](problem& b) { b.graph.main = 4; }, "b.graph.main = 4");
  graph_error([](problem& b) { b.graph.main = -1; }, "b.graph.main = -1");
  graph_error([](problem& b) { b.graph.shortcut = 2; }, "b.graph.shortcut = 2");
  graph_error([](problem& b) { b.graph.shortcut = -3; }, "b.graph.shortcut = -3");
  graph_error([](problem& b) { b.graph.shortcut = 1; }, "b.graph.shortcut = 1: its out_channels = 4");
  graph_error([](problem& b) { b.graph.shortcut = -1; }, "b.graph.shortcut = -1 (identity)");
  graph_error([](problem& b) { b.graph.convs[3].stride = 1; }, "b.graph.shortcut = 3: its output is 7 x 5");
  graph_error([](problem& b) { b.graph.convs.clear(); }, "b.graph.convs is empty");
  graph_error([](problem& b) { b.weight.pop_back(); }, "b.weight.size() = 3");
  graph_error([](problem& b) { b.bias.pop_back(); }, "b.bias.size() = 3");
  graph_error([](problem& b) { b.weight_grid.pop_back(); }, "b.weight_grid.size() = 3");
  graph_error([](problem& b) { b.act.pop_back(); }, "b.act.size() = 3");
  graph_error([](problem& b) { b.weight[1] = mat::Zero(4, 26); }, "b.weight[1] is 4 x 26, expected 4 x 27");
  graph_error([](problem& b) { b.weight[2](0, 1) = NAN; }, "b.weight[2]");
  graph_error([](problem& b) { b.bias[0].resize(2); }, "b.bias[0].size() = 2");
  graph_error([](problem& b) { b.bias[3][1] = INFINITY; }, "b.bias[3]");
  graph_error([](problem& b) { b.weight_grid[1].bits[0] = 17; }, "b.weight_grid[1]: params.bits[0] = 17");
  graph_error([](problem& b) { b.weight_grid[2] = ptq::quant_params<double>::per_channel({Eigen::VectorXd::Constant(4, -1.0), Eigen::VectorXd::Constant(4, 1.0)}, 4); },
              "b.weight_grid[2] has 4 channels");
  graph_error([](problem& b) { b.act[0]->scale[0] = -1.0; }, "b.act[0]: params.scale[0] = -1");
  graph_error([](problem& b) { b.act[3] = ptq::quant_params<double>::per_channel({Eigen::VectorXd::Constant(4, -1.0), Eigen::VectorXd::Constant(4, 1.0)}, 4); },
              "b.act[3] has 4 channels");
  // The integer form's fields.
  const problem ib = integer_form(s);
  CHECK_NOTHROW(ptq::reconstruct_block(ib, s.x_q, s.x_fp, s.H, s.W, s.y, ok));
  const auto int_error = [&](auto edit, const std::string& what) {
    problem b = ib;
    edit(b);
    expect(b, s.x_q, s.x_fp, s.H, s.W, s.y, ok, what);
    CHECK_THROWS_WITH_AS(ptq::block_forward(b, ib.weight, s.x_q, s.H, s.W), doctest::Contains(what.c_str()), ptq::error);
  };
  int_error([](problem& b) { b.input_scale.pop_back(); }, "b.input_scale.size() = 3 is neither 0 nor the 4 convs");
  int_error([](problem& b) { b.input_scale[2].resize(3); }, "b.input_scale[2].size() = 3 is neither 0 nor in_channels = 4");
  int_error([](problem& b) { b.input_scale[1][2] = -0.5; }, "b.input_scale[1][2] = -0.5 is not a finite scale");
  int_error([](problem& b) { b.input_scale[0][0] = NAN; }, "b.input_scale[0][0] = nan");
  int_error([](problem& b) { b.input_scale[3][4] = INFINITY; }, "b.input_scale[3][4] = inf");
  int_error([](problem& b) { b.input_scale[3][4] = 1e-320; }, "with a finite inverse");
  int_error([](problem& b) { b.output_act->scale[0] = -1.0; }, "b.output_act: params.scale[0] = -1");
  int_error([](problem& b) { b.output_act = ptq::quant_params<double>::per_channel({Eigen::VectorXd::Constant(4, -1.0), Eigen::VectorXd::Constant(4, 1.0)}, 4); },
            "b.output_act has 4 channels, which do not divide the block's output channels K_out = 6");
  {  // empty entries are allowed
    problem b = ib;
    b.input_scale[1].resize(0);
    CHECK_NOTHROW(ptq::reconstruct_block(b, s.x_q, s.x_fp, s.H, s.W, s.y, ok));
  }
  // The data.
  expect(s.b, mat(s.x_q.topRows(9)), none, s.H, s.W, s.y, ok, "x_q is 9 x 35");
  expect(s.b, s.x_q, s.x_fp, 6, 6, s.y, ok, "x_q is 25 x 35, expected (N * 5) x (6 * 6)");
  expect(s.b, s.x_q, s.x_fp, 0, 5, s.y, ok, "height = 0");
  expect(s.b, s.x_q, mat(s.x_fp.leftCols(4)), s.H, s.W, s.y, ok, "x_fp is 25 x 4");
  expect(s.b, s.x_q, s.x_fp, s.H, s.W, mat(s.y.topRows(6)), ok, "y is 6 x 12, expected (N * K_out) x (OH * OW) = 30 x 12");
  mat bad = s.x_q;
  bad(3, 4) = NAN;
  expect(s.b, bad, s.x_fp, s.H, s.W, s.y, ok, "x_q(3, 4) = nan");
  expect(s.b, s.x_q, bad, s.H, s.W, s.y, ok, "x_fp(3, 4) = nan");
  mat ybad = s.y;
  ybad(0, 0) = INFINITY;
  expect(s.b, s.x_q, s.x_fp, s.H, s.W, ybad, ok, "y(0, 0) = inf");
  // The parameters.
  const auto param_error = [&](auto edit, const std::string& what) {
    auto p = ok;
    edit(p);
    expect(s.b, s.x_q, s.x_fp, s.H, s.W, s.y, p, what);
  };
  param_error([](ptq::block_params& p) { p.qdrop = 1.5; }, "params.qdrop = 1.5");
  param_error([](ptq::block_params& p) { p.qdrop = -0.1; }, "params.qdrop = -0.1");
  param_error([](ptq::block_params& p) { p.qdrop = NAN; }, "params.qdrop = nan");
  param_error([](ptq::block_params& p) { p.rounding.iterations = -1; }, "params.rounding.iterations = -1");
  param_error([](ptq::block_params& p) { p.rounding.batch = 0; }, "params.rounding.batch = 0");
  param_error([](ptq::block_params& p) { p.rounding.lambda = -1; }, "params.rounding.lambda = -1");
  param_error([](ptq::block_params& p) { p.rounding.warmup = 1; }, "params.rounding.warmup = 1");
  param_error([](ptq::block_params& p) { p.rounding.threads = -1; }, "params.rounding.threads = -1");
  param_error([](ptq::block_params& p) { p.rounding.seconds = 0; }, "params.rounding.seconds = 0");
  // block_forward.
  CHECK_THROWS_WITH_AS(ptq::block_forward(s.b, {s.b.weight[0]}, s.x_q, s.H, s.W), doctest::Contains("weights.size() = 1"),
                       ptq::error);
  std::vector<mat> w = s.b.weight;
  w[3] = mat::Zero(6, 4);
  CHECK_THROWS_WITH_AS(ptq::block_forward(s.b, w, s.x_q, s.H, s.W), doctest::Contains("weights[3] is 6 x 4"),
                       ptq::error);
  CHECK_THROWS_WITH_AS(ptq::block_forward(s.b, s.b.weight, bad, s.H, s.W), doctest::Contains("x(3, 4) = nan"),
                       ptq::error);
  problem bare = s.b;  // block_forward reads neither b.weight nor b.weight_grid
  bare.weight.clear();
  bare.weight_grid.clear();
  CHECK(same_bits(ptq::block_forward(bare, s.b.weight, s.x_q, s.H, s.W), ptq::block_forward(s.b, s.b.weight, s.x_q, s.H, s.W)));
}

TEST_CASE("block reconstruction: a time budget stops the run after an iteration and says so") {
  const setup s = bottleneck_setup(13);
  auto p = run_params(100000, 4, 0.5);
  p.rounding.seconds = 0.05;
  const auto r = ptq::reconstruct_block(s.b, s.x_q, s.x_fp, s.H, s.W, s.y, p);
  CHECK(r.stopped_by_time);
  CHECK(r.iterations >= 1);
  CHECK(r.iterations < 100000);
  CHECK(r.rec_loss.size() == static_cast<std::size_t>(r.iterations));
  const auto zero = ptq::reconstruct_block(s.b, s.x_q, s.x_fp, s.H, s.W, s.y, run_params(0, 4, 0.5));
  CHECK(zero.iterations == 0);
  CHECK(moved_codes(s.b, zero) == 0);  // round-to-nearest (no ties in random weights)
}


namespace {
// s.b with its output quantized as integer_form's (per-channel, one 0-bit channel) and the scale
// of every activation channel that is not a constant multiplied by f (f > 1: steps too coarse,
// which learned steps should shrink; a constant channel's value would move).
problem coarse_steps(const setup& s, double f) {
  problem b = s.b;
  b.output_act = integer_form(s).output_act;
  const auto coarsen = [f](ptq::quant_params<double>& q) {
    for (ix c = 0; c < q.channels(); ++c)
      if (!q.is_constant(c)) q.scale[c] *= f;
  };
  for (auto& a : b.act)
    if (a) coarsen(*a);
  coarsen(*b.output_act);
  return b;
}

// The block output's mean squared error over all images with the given weights and quantizers,
// on the output channels that b.output_act does not make constants (their error no step can change).
double block_error(problem b, const std::vector<mat>& w, const std::vector<std::optional<ptq::quant_params<double>>>& act,
                   const std::optional<ptq::quant_params<double>>& out, const setup& s) {
  const ptq::quant_params<double> given = *b.output_act;
  const ix K = b.graph.convs[static_cast<std::size_t>(b.graph.main)].out_channels;
  b.act = act;
  b.output_act = out;
  const mat o = ptq::block_forward(b, w, s.x_q, s.H, s.W);
  double e = 0.0, n = 0.0;
  for (ix r = 0; r < o.rows(); ++r) {
    if (given.is_constant(r % K % given.channels())) continue;
    e += (o.row(r) - s.y.row(r)).squaredNorm();
    n += static_cast<double>(o.cols());
  }
  return e / n;
}
}  // namespace

TEST_CASE("block reconstruction: learned activation steps follow the twin and lower the error of coarse steps") {
  const setup s = bottleneck_setup(1);
  const problem b = coarse_steps(s, 2.0);
  for (const double qdrop : {0.0, 0.5}) {
    CAPTURE(qdrop);
    auto p = run_params(80, 5, qdrop);
    p.act_lr = 1e-2;
    const auto fast = ptq::reconstruct_block(b, s.x_q, s.x_fp, s.H, s.W, s.y, p);
    const auto ref = ptq::reconstruct_block_ref(b, s.x_q, s.x_fp, s.H, s.W, s.y, p);
    check_same_run(fast, ref, 1e-12);
    // The learned quantizers: the same in both, moved from the given ones, zero points and bits kept.
    REQUIRE(fast.act.size() == b.act.size());
    REQUIRE(ref.act.size() == b.act.size());
    for (std::size_t j = 0; j < b.act.size(); ++j) {
      CAPTURE(j);
      REQUIRE(fast.act[j].has_value() == b.act[j].has_value());
      if (!b.act[j]) continue;
      CHECK((fast.act[j]->scale - ref.act[j]->scale).cwiseAbs().maxCoeff() <= 1e-12 * ref.act[j]->scale.maxCoeff());
      CHECK(fast.act[j]->zero_point == b.act[j]->zero_point);
      CHECK(fast.act[j]->bits == b.act[j]->bits);
      CHECK(fast.act[j]->scale != b.act[j]->scale);
    }
    REQUIRE(fast.output_act);
    CHECK((fast.output_act->scale - ref.output_act->scale).cwiseAbs().maxCoeff() <=
          1e-12 * ref.output_act->scale.maxCoeff());
    // The 0-bit output channel is a constant: its scale is not learned.
    CHECK(fast.output_act->scale[1] == b.output_act->scale[1]);
    CHECK(fast.output_act->scale[0] != b.output_act->scale[0]);
    // Steps twice too coarse: learning them lowers the block's output error below that of the same
    // run with the steps kept (each with its own learned rounding), on all images.
    auto p0 = p;
    p0.act_lr = 0.0;
    const auto kept = ptq::reconstruct_block(b, s.x_q, s.x_fp, s.H, s.W, s.y, p0);
    for (std::size_t j = 0; j < b.act.size(); ++j)
      if (b.act[j]) CHECK(kept.act[j]->scale == b.act[j]->scale);
    const double e_learned = block_error(b, fast.weights, fast.act, fast.output_act, s);
    const double e_kept = block_error(b, kept.weights, kept.act, kept.output_act, s);
    MESSAGE("output MSE with steps twice too coarse: kept " << e_kept << ", learned " << e_learned);
    CHECK(e_learned < 0.5 * e_kept);  // measured 0.122 -> 0.046 (qdrop 0), 0.123 -> 0.041 (0.5)
  }
}

TEST_CASE("block reconstruction: the learned steps' gradient of the fast path equals the twin's") {
  const setup s = bottleneck_setup(3);
  const problem b = coarse_steps(s, 1.5);
  auto p = run_params(10, 5, 0.5);
  p.act_lr = 1e-3;
  std::vector<mat> V;
  std::mt19937_64 rng(9);
  std::normal_distribution<double> nd(0.0, 2.0);
  for (const auto& w : b.weight) V.push_back(mat::NullaryExpr(w.rows(), w.cols(), [&] { return nd(rng); }));
  const std::vector<ix> idx = {0, 3, 4, 7, 9};
  const auto f = ptq::detail::block_loss_and_gradient(b, s.x_q, s.x_fp, s.H, s.W, s.y, p, V, idx, 4, false);
  const auto r = ptq::detail::block_loss_and_gradient(b, s.x_q, s.x_fp, s.H, s.W, s.y, p, V, idx, 4, true);
  REQUIRE(f.step_grad.size() == b.act.size() + 1);
  REQUIRE(r.step_grad.size() == f.step_grad.size());
  double scale = 0.0;
  for (const auto& g : r.step_grad)
    for (const double v : g) scale = std::max(scale, std::abs(v));
  REQUIRE(scale > 0.0);
  for (std::size_t j = 0; j < f.step_grad.size(); ++j) {
    CAPTURE(j);
    REQUIRE(f.step_grad[j].size() == r.step_grad[j].size());
    for (std::size_t k = 0; k < f.step_grad[j].size(); ++k) CHECK(std::abs(f.step_grad[j][k] - r.step_grad[j][k]) <= 1e-12 * scale);
  }
  // Without learning no step gradient is reported.
  p.act_lr = 0.0;
  CHECK(ptq::detail::block_loss_and_gradient(b, s.x_q, s.x_fp, s.H, s.W, s.y, p, V, idx, 4, false).step_grad.empty());
}

TEST_CASE("block reconstruction: learned steps refuse a folded block and a bad rate") {
  const setup s = bottleneck_setup(1);
  auto p = run_params(3, 5, 0.0);
  p.act_lr = 1e-3;
  const problem folded = integer_form(s);
  CHECK_THROWS_WITH_AS(ptq::reconstruct_block(folded, s.x_q, s.x_fp, s.H, s.W, s.y, p),
                       doctest::Contains("learned activation steps need the float block"), ptq::error);
  CHECK_THROWS_WITH_AS(ptq::reconstruct_block_ref(folded, s.x_q, s.x_fp, s.H, s.W, s.y, p),
                       doctest::Contains("b.input_scale[0] set"), ptq::error);
  for (const double bad : {-1e-3, std::nan(""), HUGE_VAL}) {
    p.act_lr = bad;
    CHECK_THROWS_WITH_AS(ptq::reconstruct_block(s.b, s.x_q, s.x_fp, s.H, s.W, s.y, p),
                         doctest::Contains("params.act_lr"), ptq::error);
  }
}

}  // namespace ptq_test_block_reconstruction
