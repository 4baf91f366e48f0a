// test_adaround_torch.cpp: ptq::adaround on a real ResNet layer against tools/adaround_ref.py (PyTorch autograd + Adam).
#include <doctest/doctest.h>

#include "io_test_util.hpp"

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <limits>
#include <ptq/adaround.hpp>
#include <ptq/io/npy.hpp>
#include <resnet50/idx.hpp>
#include <resnet50/model.hpp>
#include <string>
#include <vector>

// Everything of this file in its own namespace: the test binary is a unity build.
namespace ptq_test_adaround_torch {

#ifndef PTQ_SOURCE_DIR
#error "PTQ_SOURCE_DIR must be defined as the repository root (the script is tools/adaround_ref.py)"
#endif

namespace {

using namespace ptq_io_test;
using dmat = ptq::row_matrix<double>;
using ix = ptq::index;

const ptq_example::conv_layer& find_conv(const ptq_example::resnet& net, const std::string& name) {
  for (const auto& c : net.convs())
    if (c.name == name) return c;
  FAIL("no conv " << name);
  return net.convs().front();
}

// A stride-1 conv with zero padding on NCHW activations (n x C x H x W as rows n*C + c),
// + bias, then ReLU; plain loops in double.
dmat conv_relu(const dmat& in, ix n_img, const ptq_example::conv_layer& L, ix H, ix W) {
  REQUIRE(L.stride == 1);
  dmat out = dmat::Zero(n_img * L.K, H * W);
  for (ix n = 0; n < n_img; ++n)
    for (ix k = 0; k < L.K; ++k)
      for (ix yy = 0; yy < H; ++yy)
        for (ix xx = 0; xx < W; ++xx) {
          double acc = L.bias[k];
          for (ix c = 0; c < L.C; ++c)
            for (ix r = 0; r < L.R; ++r)
              for (ix s = 0; s < L.S; ++s) {
                const ix iy = yy + r - L.pad, ixx = xx + s - L.pad;
                if (iy < 0 || iy >= H || ixx < 0 || ixx >= W) continue;
                acc += static_cast<double>(L.weight(k, (c * L.R + r) * L.S + s)) * in(n * L.C + c, iy * W + ixx);
              }
          out(n * L.K + k, yy * W + xx) = std::max(acc, 0.0);
        }
  return out;
}

// im2col for an R x S stride-1 conv with padding pad: rows (c, r, s) in KCRS order, columns (n, y, x).
dmat im2col(const dmat& in, ix n_img, ix C, ix H, ix W, ix R, ix S, ix pad) {
  dmat X = dmat::Zero(C * R * S, n_img * H * W);
  for (ix c = 0; c < C; ++c)
    for (ix r = 0; r < R; ++r)
      for (ix s = 0; s < S; ++s)
        for (ix n = 0; n < n_img; ++n)
          for (ix yy = 0; yy < H; ++yy)
            for (ix xx = 0; xx < W; ++xx) {
              const ix iy = yy + r - pad, ixx = xx + s - pad;
              if (iy >= 0 && iy < H && ixx >= 0 && ixx < W)
                X((c * R + r) * S + s, (n * H + yy) * W + xx) = in(n * C + c, iy * W + ixx);
            }
  return X;
}

void save(const temp_dir& dir, const std::string& name, const dmat& m) {
  ptq::io::write_npy(dir / (name + ".npy"), m.data(), {m.rows(), m.cols()});
}
template <class T>
void save(const temp_dir& dir, const std::string& name, const std::vector<T>& v, std::vector<ix> shape) {
  ptq::io::write_npy(dir / (name + ".npy"), v.data(), shape);
}
std::vector<double> load(const temp_dir& dir, const std::string& name) {
  return ptq::io::read_npy(dir / (name + ".npy")).to<double>();
}

// fashion_resnet50's layer1.0.conv2 (3x3, 12 -> 12, BatchNorm folded), K = 12, D = 108, with
// its real inputs: 4 Fashion-MNIST test images through the stem (conv1 + ReLU) and
// layer1.0.conv1 (1x1 + ReLU), im2col'd: X is 108 x 3136. Targets Y = W X (the conv's bias
// cancels in W_soft X - W X). The grid: per-channel min/max, 4 bits, one channel at 3 bits,
// one at 0 (a constant).
struct real_layer {
  dmat Wt, X, Y, fixed;
  ptq::quant_params<double> p;
  std::vector<double> bias;
};

real_layer make_real_layer() {
  real_layer rl;
  const auto net = ptq_example::resnet::load(std::string(PTQ_SOURCE_DIR) + "/examples/resnet50/fashion_resnet50.npz");
  const auto& stem = find_conv(net, "conv1");
  const auto& c1 = find_conv(net, "layer1.0.conv1");
  const auto& c2 = find_conv(net, "layer1.0.conv2");
  REQUIRE(c2.K == 12);
  REQUIRE(c2.C * c2.R * c2.S == 108);
  const ix n_img = 4, H = 28, W = 28;
  const auto test = ptq_example::read_fashion_mnist("t10k");
  // Normalization of examples/resnet50/fashion_resnet50.json.
  const std::vector<float> img = ptq_example::to_nchw(test.images, {0.2860405969887955f}, {0.35302424451492237f}, 0, n_img);
  dmat a0(n_img, H * W);
  for (ix i = 0; i < a0.size(); ++i) a0.data()[i] = img[static_cast<std::size_t>(i)];
  const dmat a1 = conv_relu(a0, n_img, stem, H, W);
  const dmat a2 = conv_relu(a1, n_img, c1, H, W);
  rl.X = im2col(a2, n_img, c2.C, H, W, c2.R, c2.S, c2.pad);
  rl.Wt = c2.weight.cast<double>();
  rl.Y = rl.Wt * rl.X;
  const ix K = rl.Wt.rows(), D = rl.Wt.cols();
  for (ix k = 0; k < K; ++k) rl.bias.push_back(c2.bias[k]);

  ptq::channel_ranges r;
  r.lo = rl.Wt.rowwise().minCoeff();
  r.hi = rl.Wt.rowwise().maxCoeff();
  Eigen::VectorXi bits = Eigen::VectorXi::Constant(K, 4);
  bits[3] = 3;
  bits[7] = 0;
  rl.p = ptq::quant_params<double>::per_channel(r, bits);
  rl.fixed.resize(K, D);
  ptq::gemmlowp_quantizer::fake_quantize(rl.Wt, rl.p, rl.fixed);
  return rl;
}

// ptq::adaround(a) on the layer against tools/adaround_ref.py on the same data and batches.
void compare_with_torch(const real_layer& L, const ptq::adaround_params& a) {
  const dmat& Wt = L.Wt;
  const dmat& X = L.X;
  const dmat& Y = L.Y;
  const ptq::quant_params<double>& p = L.p;
  const ix K = Wt.rows(), D = Wt.cols(), N = X.cols();
  const auto res = ptq::adaround(Wt, p, X, Y, a);
  REQUIRE(res.iterations == a.iterations);

  temp_dir dir;
  save(dir, "w", Wt);
  save(dir, "x", X);
  save(dir, "y", Y);
  save(dir, "fixed", L.fixed);
  std::vector<double> scale(static_cast<std::size_t>(K)), zp(scale.size()), qmax(scale.size());
  std::vector<std::uint8_t> active(scale.size());
  for (ix k = 0; k < K; ++k) {
    const auto i = static_cast<std::size_t>(k);
    scale[i] = p.scale[k];
    zp[i] = p.zero_point[k];
    qmax[i] = p.qmax(k);
    active[i] = p.is_constant(k) ? 0 : 1;
  }
  save(dir, "scale", scale, {K});
  save(dir, "zero_point", zp, {K});
  save(dir, "qmax", qmax, {K});
  save(dir, "active", active, {K});
  // The batch sequence the C++ drew (adaround_sampler is what adaround uses).
  ptq::adaround_sampler sampler(a.seed, N, a.batch);
  std::vector<std::int64_t> batches;
  for (ix t = 0; t < a.iterations; ++t)
    for (const ix c : sampler.next()) batches.push_back(c);
  save(dir, "batches", batches, {a.iterations, a.batch});
  if (a.output_lo.size() > 0) {
    save(dir, "out_lo", std::vector<double>(a.output_lo.data(), a.output_lo.data() + K), {K});
    save(dir, "out_hi", std::vector<double>(a.output_hi.data(), a.output_hi.data() + K), {K});
  }

  const std::string out = run_python(
      dir, "import runpy, sys\nsys.argv = sys.argv[1:]\nrunpy.run_path(sys.argv[0], run_name='__main__')\n",
      std::string(PTQ_SOURCE_DIR) + "/tools/adaround_ref.py " + dir.path);
  MESSAGE(out);

  const std::vector<double> rec = load(dir, "torch_rec"), reg = load(dir, "torch_reg"), beta = load(dir, "torch_beta");
  REQUIRE(rec.size() == res.rec_loss.size());
  REQUIRE(reg.size() == res.reg_loss.size());
  double worst_rec = 0.0, worst_reg = 0.0;
  for (std::size_t t = 0; t < rec.size(); ++t) {
    CAPTURE(t);
    CHECK(beta[t] == doctest::Approx(res.beta[t]).epsilon(1e-12));
    CHECK((reg[t] == 0.0) == (res.reg_loss[t] == 0.0));
    const double dr = std::abs(rec[t] - res.rec_loss[t]) / rec[t];
    const double dg = reg[t] == 0.0 ? 0.0 : std::abs(reg[t] - res.reg_loss[t]) / reg[t];
    worst_rec = std::max(worst_rec, dr);
    worst_reg = std::max(worst_reg, dg);
    // Both in double; they differ in the order of the sums (Eigen's GEMMs vs torch's) and in
    // sigmoid's last bit: measured 5e-16. Stated tolerance: 1e-10 relative at every step.
    CHECK(dr < 1e-10);
    CHECK(dg < 1e-10);
  }
  MESSAGE("largest relative difference along " << rec.size() << " iterations: reconstruction " << worst_rec
                                               << ", regularizer " << worst_reg);
  // Codes: equal but for ties at V ~ 0 (none expected; at most 0.2% of the weights allowed).
  const std::vector<double> codes = load(dir, "torch_codes");
  REQUIRE(codes.size() == static_cast<std::size_t>(K * D));
  ix differ = 0, compared = 0, moved = 0;
  dmat rtn(K, D);
  Eigen::Matrix<std::uint16_t, Eigen::Dynamic, Eigen::Dynamic, Eigen::RowMajor> q(K, D);
  ptq::gemmlowp_quantizer::quantize<std::uint16_t>(Wt, p, q);
  for (ix k = 0; k < K; ++k) {
    if (p.is_constant(k)) continue;
    for (ix j = 0; j < D; ++j) {
      ++compared;
      differ += codes[static_cast<std::size_t>(k * D + j)] != static_cast<double>(res.codes(k, j));
      moved += q(k, j) != res.codes(k, j);
    }
  }
  MESSAGE(differ << " of " << compared << " codes differ from PyTorch's; " << moved
                 << " differ from round-to-nearest");
  CHECK(differ * 500 <= compared);
  CHECK(moved > 0);  // the run did change the rounding
}

}  // namespace

TEST_CASE("adaround: a real ResNet layer against PyTorch (tools/adaround_ref.py) - losses along the run and codes") {
  const real_layer L = make_real_layer();
  ptq::adaround_params a;
  a.iterations = 500;
  a.batch = 256;
  a.seed = 3;
  a.threads = 2;
  a.row_block = 4;  // 3 blocks over 2 threads
  compare_with_torch(L, a);
}

TEST_CASE("adaround: a clamped output against PyTorch - the layer's ReLU and a quantizer's clip") {
  // The conv feeds a ReLU and then a quantizer: row k's output (pre-bias units, as Y) is
  // clamped to [-b_k, c_k], c_k the 90th percentile of its targets (a tenth of them clip);
  // row 0 ReLU only (c = inf), row 1 linear.
  const real_layer L = make_real_layer();
  const ix K = L.Wt.rows();
  ptq::adaround_params a;
  a.iterations = 500;
  a.batch = 256;
  a.seed = 4;
  a.threads = 2;
  a.row_block = 4;
  a.output_lo.resize(K);
  a.output_hi.resize(K);
  ix below = 0, above = 0;
  for (ix k = 0; k < K; ++k) {
    std::vector<double> v(L.Y.row(k).data(), L.Y.row(k).data() + L.Y.cols());
    std::sort(v.begin(), v.end());
    a.output_lo[k] = -L.bias[static_cast<std::size_t>(k)];
    a.output_hi[k] = std::max(v[v.size() * 9 / 10], a.output_lo[k]);
    for (const double y : v) below += y < a.output_lo[k], above += y > a.output_hi[k];
  }
  a.output_hi[0] = std::numeric_limits<double>::infinity();
  a.output_lo[1] = -std::numeric_limits<double>::infinity();
  a.output_hi[1] = std::numeric_limits<double>::infinity();
  MESSAGE(below << " targets below the ReLU's threshold, " << above << " above the clip");
  CHECK(below > 0);
  CHECK(above > 0);
  compare_with_torch(L, a);
}

}  // namespace ptq_test_adaround_torch
