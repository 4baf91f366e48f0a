// test_block_reconstruction_torch.cpp: reconstruct_block on a real ResNet-50 block (float and integer form) against tools/block_reconstruction_ref.py.
#include <doctest/doctest.h>

#include "io_test_util.hpp"
#include "../sanitizers.hpp"

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <fstream>
#include <optional>
#include <ptq/block_reconstruction.hpp>
#include <ptq/io/npy.hpp>
#include <resnet50/idx.hpp>
#include <resnet50/model.hpp>
#include <string>
#include <vector>

// Everything of this file in its own namespace: the test binary is a unity build.
namespace ptq_test_block_reconstruction_torch {

#ifndef PTQ_SOURCE_DIR
#error "PTQ_SOURCE_DIR must be defined as the repository root (the script is tools/block_reconstruction_ref.py)"
#endif

namespace {

using namespace ptq_io_test;
using dmat = ptq::row_matrix<double>;
using ix = ptq::index;
using problem = ptq::block_problem<double>;

// A block of the network as a block_problem in double (BatchNorm folded by the loader), float weights, no grids.
problem block_of(const ptq_example::resnet& net, const ptq_example::resnet_block& rb) {
  problem b;
  std::vector<ix> ids = {rb.conv1, rb.conv2};
  if (rb.conv3 >= 0) ids.push_back(rb.conv3);
  const int main = static_cast<int>(ids.size()) - 1;
  if (rb.downsample >= 0) ids.push_back(rb.downsample);
  for (std::size_t j = 0; j < ids.size(); ++j) {
    const auto& L = net.convs()[static_cast<std::size_t>(ids[j])];
    REQUIRE(L.R == L.S);
    const int source = rb.downsample >= 0 && j + 1 == ids.size() ? -1 : static_cast<int>(j) - 1;
    b.graph.convs.push_back({L.C, L.K, L.R, L.stride, L.pad, source, static_cast<int>(j) < main});
    b.weight.push_back(L.weight.cast<double>());
    b.bias.push_back(L.bias.cast<double>());
    b.act.emplace_back(std::nullopt);
  }
  b.graph.main = main;
  b.graph.shortcut = rb.downsample >= 0 ? static_cast<int>(ids.size()) - 1 : -1;
  b.graph.relu = true;
  b.weight_grid.resize(ids.size());
  return b;
}

const ptq_example::resnet_block& find_block(const ptq_example::resnet& net, const std::string& name) {
  for (const auto& b : net.blocks())
    if (b.name == name) return b;
  FAIL("no block " << name);
  return net.blocks().front();
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

// One quant_params' per-row scale, zero point, qmax and activity, expanded to K rows.
void save_grid(const temp_dir& dir, const std::string& prefix, ix j, const ptq::quant_params<double>& p, ix K) {
  std::vector<double> s, z, q;
  std::vector<std::uint8_t> active;
  for (ix k = 0; k < K; ++k) {
    const ix c = k % p.channels();
    s.push_back(p.scale[c]);
    z.push_back(p.zero_point[c]);
    q.push_back(p.qmax(c));
    active.push_back(p.is_constant(c) ? 0 : 1);
  }
  const std::string n = j < 0 ? std::string() : std::to_string(j);  // j < 0: no index (the block output)
  save(dir, prefix + "scale" + n, s, {K});
  save(dir, prefix + "zp" + n, z, {K});
  save(dir, prefix + "qmax" + n, q, {K});
  save(dir, prefix + "active" + n, active, {K});
}

// Each output channel's quantizer channel (k % channels()), K of them: the learned step it shares.
void save_chan(const temp_dir& dir, const std::string& name, const ptq::quant_params<double>& p, ix K) {
  std::vector<std::int64_t> c;
  for (ix k = 0; k < K; ++k) c.push_back(k % p.channels());
  save(dir, name, c, {K});
}

// Runs reconstruct_block on b and tools/block_reconstruction_ref.py on the same files; checks the losses (1e-9
// relative at every step) and the codes (all equal, some moved from round-to-nearest); with act_lr > 0 (learned
// activation steps) also the final scales of every activation quantizer (1e-9 relative).
void compare_with_torch(const problem& b, const dmat& x_q, const dmat& x_fp, ix Hb, ix Wb, const dmat& y, double qdrop,
                        const std::string& label, double act_lr = 0.0) {
  CAPTURE(label);
  const ix n_img = x_q.rows() / b.graph.convs[0].in_channels, n_conv = static_cast<ix>(b.graph.convs.size());
  ptq::block_params p;
  p.rounding.iterations = 200;
  p.rounding.batch = 6;
  p.rounding.seed = 17;
  p.rounding.threads = 2;
  p.rounding.lr = 5e-3;
  p.qdrop = qdrop;
  p.act_lr = act_lr;
  const auto res = ptq::reconstruct_block(b, x_q, x_fp, Hb, Wb, y, p);
  REQUIRE(res.iterations == p.rounding.iterations);
  MESSAGE("reconstruct_block: " << res.seconds << " s");

  temp_dir dir;
  {
    std::ofstream js(dir / "block.json");
    js << "{\"convs\": [";
    for (std::size_t j = 0; j < b.graph.convs.size(); ++j) {
      const auto& c = b.graph.convs[j];
      js << (j ? ", " : "") << "{\"in_channels\": " << c.in_channels << ", \"out_channels\": " << c.out_channels
         << ", \"kernel\": " << c.kernel << ", \"stride\": " << c.stride << ", \"pad\": " << c.pad
         << ", \"source\": " << c.source << ", \"relu\": " << (c.relu ? "true" : "false") << "}";
    }
    js << "], \"main\": " << b.graph.main << ", \"shortcut\": " << b.graph.shortcut
       << ", \"relu\": " << (b.graph.relu ? "true" : "false") << ", \"height\": " << Hb << ", \"width\": " << Wb
       << ", \"qdrop\": " << qdrop << ", \"seed\": " << p.rounding.seed << "}\n";
    REQUIRE(js.good());
  }
  for (ix j = 0; j < n_conv; ++j) {
    const auto u = static_cast<std::size_t>(j);
    const ix K = b.weight[u].rows();
    save(dir, "w" + std::to_string(j), b.weight[u]);
    save(dir, "b" + std::to_string(j), std::vector<double>(b.bias[u].data(), b.bias[u].data() + K), {K});
    save_grid(dir, "w", j, b.weight_grid[u], K);
    save_grid(dir, "a", j, *b.act[u], K);
    if (act_lr > 0.0) save_chan(dir, "achan" + std::to_string(j), *b.act[u], K);
    if (u < b.input_scale.size() && b.input_scale[u].size() > 0) {
      const auto& sc = b.input_scale[u];
      save(dir, "iscale" + std::to_string(j), std::vector<double>(sc.data(), sc.data() + sc.size()), {sc.size()});
    }
  }
  const ix K_out = b.weight[static_cast<std::size_t>(b.graph.main)].rows();
  if (b.output_act) save_grid(dir, "o", -1, *b.output_act, K_out);
  if (b.output_act && act_lr > 0.0) save_chan(dir, "ochan", *b.output_act, K_out);
  save(dir, "x_q", x_q);
  save(dir, "x_fp", x_fp);
  save(dir, "y", y);
  ptq::adaround_sampler sampler(p.rounding.seed, n_img, p.rounding.batch);
  std::vector<std::int64_t> batches;
  for (ix t = 0; t < p.rounding.iterations; ++t)
    for (const ix c : sampler.next()) batches.push_back(c);
  save(dir, "batches", batches, {p.rounding.iterations, sampler.batch()});

  const std::string out = run_python(
      dir, "import runpy, sys\nsys.argv = sys.argv[1:]\nrunpy.run_path(sys.argv[0], run_name='__main__')\n",
      std::string(PTQ_SOURCE_DIR) + "/tools/block_reconstruction_ref.py " + dir.path + " --lr 5e-3" +
          (act_lr > 0.0 ? " --act-lr " + std::to_string(act_lr) : std::string()));
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
    // Both in double; they differ in the order of the sums (Eigen's GEMMs vs torch's conv2d). Stated tolerance:
    // 1e-9 relative at every step.
    CHECK(dr < 1e-9);
    CHECK(dg < 1e-9);
  }
  MESSAGE(label << ", qdrop " << qdrop << ": largest relative difference along " << rec.size() << " iterations: reconstruction "
                   << worst_rec << ", regularizer " << worst_reg);
  ix differ = 0, compared = 0, moved = 0;
  for (ix j = 0; j < n_conv; ++j) {
    const auto u = static_cast<std::size_t>(j);
    const std::vector<double> codes = load(dir, "torch_codes" + std::to_string(j));
    const auto& grid = b.weight_grid[u];
    const ix K = b.weight[u].rows(), D = b.weight[u].cols();
    REQUIRE(codes.size() == static_cast<std::size_t>(K * D));
    Eigen::Matrix<std::uint16_t, Eigen::Dynamic, Eigen::Dynamic, Eigen::RowMajor> q(K, D);
    ptq::gemmlowp_quantizer::quantize<std::uint16_t>(b.weight[u], grid, q);
    for (ix k = 0; k < K; ++k) {
      if (grid.is_constant(k % grid.channels())) continue;
      for (ix d = 0; d < D; ++d) {
        ++compared;
        differ += codes[static_cast<std::size_t>(k * D + d)] != static_cast<double>(res.codes[u](k, d));
        moved += q(k, d) != res.codes[u](k, d);
      }
    }
  }
  MESSAGE(differ << " of " << compared << " codes differ from PyTorch's; " << moved << " differ from round-to-nearest");
  CHECK(differ == 0);
  CHECK(moved > 0);  // the run did change the rounding
  if (act_lr <= 0.0) return;
  // The learned steps: the same final scales, and moved from the given ones.
  double worst = 0.0, moved_most = 0.0;
  const auto compare_scales = [&](const std::string& file, const ptq::quant_params<double>& given,
                                  const ptq::quant_params<double>& learned, ix K) {
    const std::vector<double> ts = load(dir, file);
    REQUIRE(ts.size() == static_cast<std::size_t>(K));
    for (ix k = 0; k < K; ++k) {
      const ix c = k % learned.channels();
      worst = std::max(worst, std::abs(ts[static_cast<std::size_t>(k)] - learned.scale[c]) / learned.scale[c]);
      moved_most = std::max(moved_most, std::abs(learned.scale[c] / given.scale[c] - 1.0));
    }
  };
  for (ix j = 0; j < n_conv; ++j) {
    const auto u = static_cast<std::size_t>(j);
    REQUIRE(res.act[u]);
    compare_scales("torch_ascale" + std::to_string(j), *b.act[u], *res.act[u], b.weight[u].rows());
  }
  if (b.output_act) compare_scales("torch_oscale", *b.output_act, *res.output_act, K_out);
  MESSAGE(label << ": learned steps: largest relative difference from PyTorch's " << worst
                << ", largest relative move from the given scale " << moved_most);
  CHECK(worst < 1e-9);
  CHECK(moved_most > 0.01);
}

}  // namespace

TEST_CASE("block reconstruction: a real ResNet-50 block against PyTorch (tools/block_reconstruction_ref.py) - losses and codes") {
  // The block: fashion_resnet50's layer2.0 (bottleneck 48 -> 24 -> 24 (3x3 / 2) -> 96, downsample 1x1 / 2), BatchNorm
  // folded. Its FP32 input: 10 Fashion-MNIST test images through the stem and layer1 (float block_forward), cropped
  // to 14 x 14 (output 7 x 7); its quantized input that fake-quantized per tensor at 4 bits (range [0, 0.8 max]).
  const auto net = ptq_example::resnet::load(std::string(PTQ_SOURCE_DIR) + "/examples/resnet50/fashion_resnet50.npz");
  const ix n_img = 10, H = 28, W = 28;
  const auto test = ptq_example::read_fashion_mnist("t10k");
  const std::vector<float> img = ptq_example::to_nchw(test.images, {0.2860405969887955f}, {0.35302424451492237f}, 0, n_img);
  dmat x(n_img, H * W);
  for (ix i = 0; i < x.size(); ++i) x.data()[i] = img[static_cast<std::size_t>(i)];
  {  // the stem: one conv + ReLU, no shortcut
    const auto& L = net.convs().front();
    problem stem;
    stem.graph.convs = {{L.C, L.K, L.R, L.stride, L.pad, -1, false}};
    stem.graph.main = 0;
    stem.graph.shortcut = -2;
    stem.weight = {L.weight.cast<double>()};
    stem.bias = {L.bias.cast<double>()};
    stem.weight_grid.resize(1);
    stem.act.resize(1);
    x = ptq::block_forward(stem, stem.weight, x, H, W);
  }
  for (const char* name : {"layer1.0", "layer1.1", "layer1.2"}) {
    const problem b = block_of(net, find_block(net, name));
    x = ptq::block_forward(b, b.weight, x, H, W);
  }
  problem b = block_of(net, find_block(net, "layer2.0"));
  REQUIRE(b.graph.convs.size() == 4);
  REQUIRE(b.graph.convs[1].stride == 2);
  // The central 14 x 14 window of the block input (torch's float64 conv2d takes 60 ms a step on 28 x 28).
  const ix C_in = b.graph.convs[0].in_channels;
  {
    dmat crop(n_img * C_in, 14 * 14);
    for (ix r = 0; r < crop.rows(); ++r)
      for (ix yy = 0; yy < 14; ++yy)
        for (ix xx = 0; xx < 14; ++xx) crop(r, yy * 14 + xx) = x(r, (yy + 7) * W + xx + 7);
    x = crop;
  }
  const ix Hb = 14, Wb = 14;
  const dmat y = ptq::block_forward(b, b.weight, x, Hb, Wb);
  const dmat x_fp = x;
  dmat x_q(x.rows(), x.cols());
  ptq::gemmlowp_quantizer::fake_quantize(x_fp, ptq::quant_params<double>::per_tensor(0.0, 0.8 * x_fp.maxCoeff(), 4), x_q);

  // Grids: weights per channel min/max at 4 bits (conv 1: one channel at 3 bits, one at 0); activations at 4 bits
  // from the float z's (clipped to 0.9 of their range): per tensor on convs 0 and 2, per channel on 1 and 3.
  const ix n_conv = 4;
  for (ix j = 0; j < n_conv; ++j) {
    const dmat& w = b.weight[static_cast<std::size_t>(j)];
    ptq::channel_ranges r;
    r.lo = w.rowwise().minCoeff();
    r.hi = w.rowwise().maxCoeff();
    Eigen::VectorXi bits = Eigen::VectorXi::Constant(w.rows(), 4);
    if (j == 1) {
      bits[3] = 3;
      bits[7] = 0;
    }
    b.weight_grid[static_cast<std::size_t>(j)] = ptq::quant_params<double>::per_channel(r, bits);
    problem upto = b;  // z_j = the output of the graph cut after conv j, no ReLU, no shortcut
    upto.graph.convs.resize(static_cast<std::size_t>(j + 1));
    upto.graph.convs.back().relu = false;
    upto.graph.main = static_cast<int>(j);
    upto.graph.shortcut = -2;
    upto.graph.relu = false;
    upto.weight.resize(static_cast<std::size_t>(j + 1));
    upto.bias.resize(static_cast<std::size_t>(j + 1));
    upto.weight_grid.resize(static_cast<std::size_t>(j + 1));
    upto.act.assign(static_cast<std::size_t>(j + 1), std::nullopt);
    const dmat z = ptq::block_forward(upto, upto.weight, x_fp, Hb, Wb);
    const ix K = w.rows();
    if (j % 2 == 0) {
      b.act[static_cast<std::size_t>(j)] = ptq::quant_params<double>::per_tensor(0.9 * z.minCoeff(), 0.9 * z.maxCoeff(), 4);
    } else {
      ptq::channel_ranges a;
      a.lo = Eigen::VectorXd::Zero(K);
      a.hi = Eigen::VectorXd::Zero(K);
      for (ix row = 0; row < z.rows(); ++row) {
        a.lo[row % K] = std::min(a.lo[row % K], 0.9 * z.row(row).minCoeff());
        a.hi[row % K] = std::max(a.hi[row % K], 0.9 * z.row(row).maxCoeff());
      }
      b.act[static_cast<std::size_t>(j)] = ptq::quant_params<double>::per_channel(a, 4);
    }
  }

  // Under the sanitizers qdrop 0.5 only (sanitizers.hpp: its drops and the quantizers take every branch of 0's).
  for (const double qdrop : ptq_test::sanitized ? std::vector<double>{0.5} : std::vector<double>{0.0, 0.5}) {
    CAPTURE(qdrop);
    compare_with_torch(b, x_q, x_fp, Hb, Wb, y, qdrop, "float block");
  }

  // The integer network's form of the block, qdrop 0.5: the block input on a per-channel 4-bit grid ([0, 0.8 max] of
  // each channel over the images), x_q fake-quantized on it; every conv reads the codes of its input's grid
  // (input_scale: the block input's scales for convs 0 and 3, act[0]'s (per tensor) for conv 1, act[1]'s for conv 2),
  // its weights folded, W' = W diag(s), on per-output-channel min/max grids of W' with the bits above; the block
  // output on a per-channel 4-bit grid ([0, 0.9 max] of each channel of y).
  problem bi = b;
  ptq::channel_ranges ri;
  ri.lo = Eigen::VectorXd::Zero(C_in);
  ri.hi = Eigen::VectorXd::Zero(C_in);
  for (ix r = 0; r < x_fp.rows(); ++r) ri.hi[r % C_in] = std::max(ri.hi[r % C_in], 0.8 * x_fp.row(r).maxCoeff());
  const auto in_grid = ptq::quant_params<double>::per_channel(ri, 4);
  dmat xi_q(x_fp.rows(), x_fp.cols());
  ptq::gemmlowp_quantizer::fake_quantize(x_fp, in_grid, xi_q);
  const auto per_input_channel = [](const ptq::quant_params<double>& q, ix C) {
    Eigen::VectorXd sc(C);
    for (ix c = 0; c < C; ++c) sc[c] = q.scale[c % q.channels()];
    return sc;
  };
  bi.input_scale = {per_input_channel(in_grid, C_in), per_input_channel(*b.act[0], b.graph.convs[1].in_channels),
                    per_input_channel(*b.act[1], b.graph.convs[2].in_channels), per_input_channel(in_grid, C_in)};
  for (ix j = 0; j < n_conv; ++j) {
    const auto u = static_cast<std::size_t>(j);
    const ix kk = b.graph.convs[u].kernel * b.graph.convs[u].kernel;
    dmat& w = bi.weight[u];
    for (ix c = 0; c < b.graph.convs[u].in_channels; ++c) w.middleCols(c * kk, kk) *= bi.input_scale[u][c];
    ptq::channel_ranges r;
    r.lo = w.rowwise().minCoeff();
    r.hi = w.rowwise().maxCoeff();
    bi.weight_grid[u] = ptq::quant_params<double>::per_channel(r, b.weight_grid[u].bits);
  }
  const ix K_out = b.graph.convs[static_cast<std::size_t>(b.graph.main)].out_channels;
  ptq::channel_ranges ro;
  ro.lo = Eigen::VectorXd::Zero(K_out);
  ro.hi = Eigen::VectorXd::Zero(K_out);
  for (ix r = 0; r < y.rows(); ++r) ro.hi[r % K_out] = std::max(ro.hi[r % K_out], 0.9 * y.row(r).maxCoeff());
  bi.output_act = ptq::quant_params<double>::per_channel(ro, 4);
  compare_with_torch(bi, xi_q, x_fp, Hb, Wb, y, 0.5, "integer form");

  // Learned activation steps (LSQ) on the float block with the integer form's output quantizer, qdrop 0.5.
  problem bl = b;
  bl.output_act = bi.output_act;
  compare_with_torch(bl, x_q, x_fp, Hb, Wb, y, 0.5, "float block, learned steps", 1e-2);
}

}  // namespace ptq_test_block_reconstruction_torch
