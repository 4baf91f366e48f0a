// test_resnet_golden.cpp: the ResNet example against torchvision (run at test time), its conv against plain loops, its key checks.
#include <doctest/doctest.h>

#include <stdlib.h>

#include <cmath>
#include <cstdint>
#include <cstdlib>
#include <filesystem>
#include <limits>
#include <map>
#include <numeric>
#include <random>
#include <string>
#include <vector>

#include "resnet50/resnet.hpp"
#include "synthetic.hpp"

// Everything of this file in its own namespace: the test binary is a unity build.
namespace ptq_test_resnet_golden {

#ifndef PTQ_SOURCE_DIR
#error "PTQ_SOURCE_DIR must be defined as the repository root (the golden script is tools/torchvision_golden.py)"
#endif
#ifndef PTQ_PYTHON
#define PTQ_PYTHON "/usr/bin/python3"
#endif

namespace {

using ptq_example::conv_layer;
using ptq_example::epilogue;
using ptq_example::resnet;
using matrix = ptq::row_matrix<float>;

// tools/torchvision_golden.py run once per process into a fresh directory, removed at exit.
struct golden_files {
  std::string dir;
  int status = -1;
  golden_files() {
    std::string tmpl = (std::filesystem::temp_directory_path() / "ptq_resnet_golden_XXXXXX").string();
    if (::mkdtemp(tmpl.data()) == nullptr) return;
    dir = tmpl;
    const std::string cmd = std::string("'") + PTQ_PYTHON + "' '" + PTQ_SOURCE_DIR +
                            "/tools/torchvision_golden.py' '" + dir + "'";
    status = std::system(cmd.c_str());
  }
  ~golden_files() {
    std::error_code ec;
    if (!dir.empty()) std::filesystem::remove_all(dir, ec);
  }
  std::string operator()(const std::string& name) const { return dir + "/" + name; }
};

const golden_files& golden() {
  static const golden_files g;
  // The reference must exist: a failing script fails the test, never skips it.
  REQUIRE_MESSAGE(g.status == 0, "tools/torchvision_golden.py failed (status ", g.status, ") into '", g.dir, "'");
  return g;
}

// An NCHW .npy as (N*C) x (H*W) rows, with its shape.
struct batch {
  matrix x;
  ptq::index n = 0, c = 0, h = 0, w = 0;
};
batch load_batch(const std::string& path) {
  const ptq::io::array a = ptq::io::read_npy(path);
  REQUIRE(a.shape().size() == 4);
  batch b{matrix(a.shape()[0] * a.shape()[1], a.shape()[2] * a.shape()[3]), a.shape()[0], a.shape()[1],
          a.shape()[2], a.shape()[3]};
  const float* p = a.data<float>();
  std::copy(p, p + a.size(), b.x.data());
  return b;
}
matrix load_matrix(const std::string& path) {
  const ptq::io::array a = ptq::io::read_npy(path);
  REQUIRE(a.shape().size() == 2);
  matrix m(a.shape()[0], a.shape()[1]);
  const float* p = a.data<float>();
  std::copy(p, p + a.size(), m.data());
  return m;
}

// max |got - want| / max |want|
double relative_error(const matrix& got, const matrix& want) {
  REQUIRE(got.rows() == want.rows());
  REQUIRE(got.cols() == want.cols());
  return double((got - want).cwiseAbs().maxCoeff()) / double(want.cwiseAbs().maxCoeff());
}

conv_layer random_conv(std::mt19937_64& rng, ptq::index K, ptq::index C, ptq::index R, ptq::index stride, ptq::index pad) {
  std::normal_distribution<float> g(0.0f, 1.0f);
  conv_layer L;
  L.name = "test";
  L.K = K;
  L.C = C;
  L.R = L.S = R;
  L.stride = stride;
  L.pad = pad;
  L.weight = matrix::NullaryExpr(K, C * R * R, [&] { return g(rng); });
  L.bias = ptq::vector<float>::NullaryExpr(K, [&] { return g(rng); });
  return L;
}

}  // namespace

TEST_CASE("resnet: conv2d (im2col + GEMM, all epilogues, any split) matches the plain-loop conv2d_ref") {
  struct shape {
    ptq::index K, C, R, stride, pad, n, H, W;
  };
  const shape shapes[] = {
      {8, 3, 7, 2, 3, 2, 23, 19},   // ImageNet stem, odd sizes
      {16, 8, 3, 1, 1, 3, 9, 11},   // 3x3 stride 1, several images per task
      {16, 8, 3, 2, 1, 2, 10, 7},   // 3x3 stride 2
      {32, 16, 1, 1, 0, 5, 6, 6},   // pointwise, whole images gathered
      {12, 16, 1, 2, 0, 3, 9, 8},   // strided 1x1 (downsample)
      {8, 4, 3, 1, 1, 1, 64, 64},   // one large image cut into pieces
      {16, 32, 1, 1, 0, 1, 48, 40}, // pointwise over pieces of one image (read in place)
      {4, 2, 3, 1, 1, 7, 1, 1},     // 1x1 images
      {5, 3, 3, 2, 1, 1, 2, 3},     // output smaller than the kernel
      {8, 4, 3, 2, 1, 1, 75, 61},   // stride 2 over pieces of one image that start mid-row
      {8, 4, 3, 1, 1, 1, 37, 37},   // "same" 3x3 over pieces that start mid-row
      {6, 5, 3, 1, 0, 2, 12, 9},    // 3x3 without padding (stride 1, not "same")
      {4, 3, 5, 1, 2, 2, 13, 11},   // 5x5 "same"
      {4, 2, 7, 1, 3, 2, 5, 6},     // 7x7 "same" on an image smaller than the kernel
  };
  std::mt19937_64 rng(42);
  std::normal_distribution<float> g(0.0f, 1.0f);
  for (const shape& s : shapes) {
    const conv_layer L = random_conv(rng, s.K, s.C, s.R, s.stride, s.pad);
    const ptq::index OH = L.out_size(s.H), OW = (s.W + 2 * s.pad - s.R) / s.stride + 1;
    std::vector<float> x(static_cast<std::size_t>(s.n * s.C * s.H * s.W));
    for (float& v : x) v = g(rng);
    const std::size_t ny = static_cast<std::size_t>(s.n * s.K * OH * OW);
    std::vector<float> residual(ny);
    for (float& v : residual) v = g(rng);
    for (epilogue e : {epilogue::bias, epilogue::bias_relu, epilogue::bias_add_relu}) {
      std::vector<float> want(ny);
      ptq_example::conv2d_ref(L, x.data(), s.n, s.H, s.W, want.data(), e, residual.data());
      double scale = 0.0;
      for (float v : want) scale = std::max(scale, double(std::abs(v)));
      for (int threads : {1, 2, 3}) {
        CAPTURE(s.K);
        CAPTURE(s.C);
        CAPTURE(s.R);
        CAPTURE(s.H);
        CAPTURE(static_cast<int>(e));
        CAPTURE(threads);
        std::vector<float> got(ny, std::numeric_limits<float>::quiet_NaN());  // unwritten outputs stay NaN
        ptq_example::conv2d(L, x.data(), s.n, s.H, s.W, got.data(), e, residual.data(), threads);
        double err = 0.0;
        for (std::size_t i = 0; i < ny; ++i) err = std::max(err, std::isnan(got[i]) ? 1e30 : double(std::abs(got[i] - want[i])));
        CHECK(err <= 1e-5 * scale);
      }
    }
  }
  conv_layer bad = random_conv(rng, 4, 3, 3, 1, 1);
  bad.bias.resize(3);
  std::vector<float> x(3 * 5 * 5), y(4 * 5 * 5);
  CHECK_THROWS_WITH_AS(ptq_example::conv2d(bad, x.data(), 1, 5, 5, y.data()), doctest::Contains("bias has 3"),
                       ptq::error);
}

TEST_CASE("resnet: FP32 logits match torchvision (ResNet-18, ResNet-50, small-image stems)") {
  const golden_files& g = golden();
  struct model_case {
    const char* name;
    int inputs;
    ptq_example::block_type type;
    bool imagenet_stem;
    std::size_t convs;
    ptq::index in_channels, classes;
  };
  const model_case cases[] = {
      {"resnet18", 2, ptq_example::block_type::basic, true, 20, 3, 1000},
      {"resnet50", 2, ptq_example::block_type::bottleneck, true, 53, 3, 1000},
      {"small_bottleneck", 1, ptq_example::block_type::bottleneck, false, 20, 1, 10},
      {"small_basic", 2, ptq_example::block_type::basic, false, 12, 3, 10},
  };
  for (const model_case& mc : cases) {
    CAPTURE(mc.name);
    const resnet net = resnet::load(g(std::string(mc.name) + ".npz"));
    CHECK(net.type() == mc.type);
    CHECK(net.imagenet_stem() == mc.imagenet_stem);
    CHECK(net.convs().size() == mc.convs);
    CHECK(net.input_channels() == mc.in_channels);
    CHECK(net.classes() == mc.classes);
    for (int i = 0; i < mc.inputs; ++i) {
      CAPTURE(i);
      const batch b = load_batch(g(std::string(mc.name) + "_input" + std::to_string(i) + ".npy"));
      const matrix want = load_matrix(g(std::string(mc.name) + "_logits" + std::to_string(i) + ".npy"));
      const matrix got = net.forward(b.x, b.h, b.w);
      CHECK(relative_error(got, want) <= 1e-4);
      if (!mc.imagenet_stem) CHECK(relative_error(net.forward_ref(b.x, b.h, b.w), want) <= 1e-4);
    }
  }

  // Layer list: names, geometry and which outputs feed a ReLU (ResNet-50).
  const resnet r50 = resnet::load(g("resnet50.npz"));
  const auto& c = r50.convs();
  CHECK(c[0].name == "conv1");
  CHECK((c[0].K == 64 && c[0].C == 3 && c[0].R == 7 && c[0].stride == 2 && c[0].pad == 3 && c[0].feeds_relu));
  const ptq::index l2 = r50.layer_index("layer2.0.conv2");
  REQUIRE(l2 > 0);
  CHECK((c[l2].R == 3 && c[l2].stride == 2 && c[l2].feeds_relu && c[l2].K == 128 && c[l2].C == 128));
  const ptq::index l3 = r50.layer_index("layer2.0.conv3");
  CHECK((c[l3].R == 1 && c[l3].stride == 1 && !c[l3].feeds_relu && c[l3].K == 512));
  const ptq::index ds = r50.layer_index("layer2.0.downsample.0");
  CHECK((c[ds].R == 1 && c[ds].stride == 2 && !c[ds].feeds_relu && c[ds].K == 512 && c[ds].C == 256));
  CHECK(r50.layer_index("layer4.2.conv3") == 52);
  CHECK(r50.blocks().size() == 16);
  CHECK((r50.fc().weight.rows() == 1000 && r50.fc().weight.cols() == 2048));
}

TEST_CASE("resnet: hooks see every conv output before the residual add and ReLU, and the fc input") {
  const golden_files& g = golden();
  const resnet net = resnet::load(g("resnet18.npz"));
  const batch b = load_batch(g("resnet18_input0.npy"));
  const matrix plain = net.forward(b.x, b.h, b.w);

  SUBCASE("a hook that only looks changes nothing; it is called once per conv, in layer order, with NCHW rows") {
    std::vector<ptq::index> order;
    matrix features;
    const matrix looked = net.forward(
        b.x, b.h, b.w,
        [&](ptq::index layer, ptq::row_map<float> y) {
          order.push_back(layer);
          CHECK(y.rows() % b.n == 0);
          CHECK(y.rows() / b.n == net.convs()[layer].K);
          if (layer == 0) CHECK(y.cols() == (b.h / 2) * (b.w / 2));
        },
        [&](ptq::row_map<float> f) { features = f; });
    REQUIRE(order.size() == net.convs().size());
    for (std::size_t i = 0; i < order.size(); ++i) CHECK(order[i] == static_cast<ptq::index>(i));
    CHECK(relative_error(looked, plain) <= 1e-6);
    CHECK(relative_error(features, load_matrix(g("resnet18_features0.npy"))) <= 1e-4);
  }

  SUBCASE("modifying hooks act where torchvision's BatchNorm outputs and fc input are") {
    const auto clamp = [](ptq::index, ptq::row_map<float> y) { y = (y.array().max(-0.5f).min(1.5f) - 0.1f).matrix(); };
    const auto affine = [](ptq::row_map<float> f) { f = (2.0f * f.array() - 0.25f).matrix(); };
    const matrix want = load_matrix(g("resnet18_hooked_logits0.npy"));
    const matrix got = net.forward(b.x, b.h, b.w, clamp, affine);
    CHECK(relative_error(got, want) <= 1e-4);
    CHECK(relative_error(plain, want) > 1e-2);  // the hooks matter
    const matrix ref = net.forward_ref(b.x, b.h, b.w, clamp, affine);
    CHECK(relative_error(ref, want) <= 1e-4);
  }
}

TEST_CASE("resnet: forward equals the plain-loop forward_ref (any depth, both stems, replaced weights, threads)") {
  struct net_case {
    bool bottleneck;
    std::vector<int> layers;
    ptq::index width, in_channels, classes, stem, n, h, w;
  };
  const net_case cases[] = {
      {true, {1, 2, 1, 1}, 16, 1, 10, 3, 3, 28, 28},  // small-image stem, Bottleneck
      {false, {2, 2}, 8, 3, 7, 7, 2, 33, 29},         // ImageNet stem, two stages
      {false, {1, 1, 1}, 4, 2, 5, 3, 1, 9, 1},        // one-pixel-wide images
      {true, {1}, 4, 3, 3, 7, 2, 1, 1},               // 1x1 images through the max-pool
  };
  std::mt19937_64 rng(7);
  std::normal_distribution<float> g(0.0f, 1.0f);
  for (const net_case& nc : cases) {
    CAPTURE(nc.layers.size());
    CAPTURE(nc.h);
    resnet net = resnet::from_state_dict(
        ptq_test::synthetic_state_dict(nc.bottleneck, nc.layers, nc.width, nc.in_channels, nc.classes, nc.stem, 11));
    const std::size_t convs_expected = [&] {
      std::size_t c = 1;
      for (int l : nc.layers) c += static_cast<std::size_t>(l) * (nc.bottleneck ? 3 : 2);
      return c + nc.layers.size() - (nc.bottleneck ? 0 : 1);  // a downsample per stage (not layer1 of BasicBlock)
    }();
    CHECK(net.convs().size() == convs_expected);
    CHECK(net.blocks().size() == static_cast<std::size_t>(std::accumulate(nc.layers.begin(), nc.layers.end(), 0)));
    const matrix x = matrix::NullaryExpr(nc.n * nc.in_channels, nc.h * nc.w, [&] { return g(rng); });
    CHECK(relative_error(net.forward(x, nc.h, nc.w), net.forward_ref(x, nc.h, nc.w)) <= 1e-5);

    // Replace weights as a quantizer would (same shapes): round to a coarse grid.
    for (conv_layer& L : net.convs()) L.weight = (L.weight.array() * 8.0f).round().matrix() / 8.0f;
    net.fc().weight = (net.fc().weight.array() * 8.0f).round().matrix() / 8.0f;
    const matrix ref = net.forward_ref(x, nc.h, nc.w);
    for (int threads : {1, 2, 3}) {
      net.set_threads(threads);
      CHECK(relative_error(net.forward(x, nc.h, nc.w), ref) <= 1e-5);
    }
    // A batch given as a block with an outer stride (not contiguous) reads the same.
    matrix wide = matrix::Zero(x.rows(), x.cols() + 5);
    wide.leftCols(x.cols()) = x;
    CHECK(relative_error(net.forward(wide.leftCols(x.cols()), nc.h, nc.w), ref) <= 1e-5);

    // A replacement with the wrong shape is refused, naming the layer.
    net.convs()[1].weight.resize(net.convs()[1].K, 5);
    CHECK_THROWS_WITH_AS(net.forward(x, nc.h, nc.w),
                         doctest::Contains((net.convs()[1].name + ": weight is").c_str()), ptq::error);
  }
}

TEST_CASE("resnet: bad state_dicts and inputs throw ptq::error naming the key") {
  // The layout of tools/torchvision_golden.py's small_basic: BasicBlock [1, 1, 1, 1], width 8.
  const std::map<std::string, ptq::io::array> good = ptq_test::synthetic_state_dict(false, {1, 1, 1, 1}, 8, 3, 10, 3, 5);
  REQUIRE_NOTHROW(resnet::from_state_dict(good));

  auto fails_with = [&](auto edit, const std::string& message) {
    std::map<std::string, ptq::io::array> sd = good;
    edit(sd);
    CAPTURE(message);
    CHECK_THROWS_WITH_AS(resnet::from_state_dict(sd), doctest::Contains(message.c_str()), ptq::error);
  };
  auto zeros = [](std::vector<ptq::index> shape) {
    ptq::index n = 1;
    for (ptq::index d : shape) n *= d;
    std::vector<float> v(static_cast<std::size_t>(n), 0.0f);
    return ptq::io::array::from(v.data(), shape);
  };
  using sd_t = std::map<std::string, ptq::io::array>;

  fails_with([](sd_t& sd) { sd.erase("fc.weight"); }, "key 'fc.weight' is missing");
  fails_with([](sd_t& sd) { sd.erase("layer2.0.bn1.running_mean"); }, "key 'layer2.0.bn1.running_mean' is missing");
  fails_with([&](sd_t& sd) { sd["layer1.0.conv2.weight"] = zeros({8, 4, 3, 3}); },
             "key 'layer1.0.conv2.weight' has shape [8, 4, 3, 3]: 4 input channels, expected 8");
  fails_with([&](sd_t& sd) { sd["layer3.0.conv1.weight"] = zeros({32, 8, 3, 3}); },
             "key 'layer3.0.conv1.weight' has shape [32, 8, 3, 3]: 8 input channels, expected 16");
  fails_with([&](sd_t& sd) { sd["layer2.0.bn2.running_var"] = zeros({15}); }, "key 'layer2.0.bn2.running_var' has shape [15]");
  fails_with([&](sd_t& sd) { sd["fc.weight"] = zeros({10, 63}); }, "key 'fc.weight' has shape [10, 63]");
  fails_with([&](sd_t& sd) { sd["fc.bias"] = zeros({9}); }, "key 'fc.bias' has shape [9]");
  fails_with([&](sd_t& sd) { sd["conv1.weight"] = zeros({8, 3, 5, 5}); }, "key 'conv1.weight' has shape [8, 3, 5, 5]: kernel 5x5");
  fails_with([&](sd_t& sd) { sd["layer1.0.conv1.weight"] = zeros({8, 8, 3}); }, "key 'layer1.0.conv1.weight' has shape [8, 8, 3], expected rank 4");
  fails_with([&](sd_t& sd) { sd["layer4.0.downsample.0.weight"] = zeros({32, 32, 1, 1}); },
             "key 'layer4.0.downsample.0.weight' has shape [32, 32, 1, 1]: 32 output channels, expected 64");
  fails_with(
      [](sd_t& sd) {
        for (const char* k : {"weight", "bias", "running_mean", "running_var"}) sd.erase(std::string("layer2.0.downsample.1.") + k);
        sd.erase("layer2.0.downsample.0.weight");
      },
      "key 'layer2.0.downsample.0.weight' is missing");
  fails_with([&](sd_t& sd) { sd["layer1.0.conv1.bias"] = zeros({8}); }, "key 'layer1.0.conv1.bias' is not part of");
  fails_with([&](sd_t& sd) { sd["layer1.1.bn9.weight"] = zeros({8}); }, "key 'layer1.1.bn9.weight' is not part of");
  fails_with(
      [&](sd_t& sd) {
        std::vector<std::int64_t> v(10, 0);
        sd["fc.bias"] = ptq::io::array::from(v.data(), {10});
      },
      "key 'fc.bias' has dtype int64");
  fails_with(
      [&](sd_t& sd) {
        std::vector<float> v(8, 1.0f);
        v[5] = -2.0f;
        sd["bn1.running_var"] = ptq::io::array::from(v.data(), {8});
      },
      "key 'bn1.running_var' element 5 = -2");
  fails_with(
      [&](sd_t& sd) {
        std::vector<float> v = sd.at("layer1.0.bn1.weight").to<float>();
        v[2] = std::numeric_limits<float>::quiet_NaN();
        sd["layer1.0.bn1.weight"] = ptq::io::array::from(v.data(), {8});
      },
      "key 'layer1.0.bn1.weight' element 2 = nan is not finite");
  // num_batches_tracked counters are ignored.
  {
    sd_t sd = good;
    std::vector<std::int64_t> one{1};
    sd["bn1.num_batches_tracked"] = ptq::io::array::from(one.data(), {});
    CHECK_NOTHROW(resnet::from_state_dict(sd));
  }

  const resnet net = resnet::from_state_dict(good);
  const matrix x = matrix::Ones(2 * 3, 8 * 8);
  CHECK_THROWS_WITH_AS(net.forward(x.topRows(5), 8, 8), doctest::Contains("rows, expected N * 3"), ptq::error);
  CHECK_THROWS_WITH_AS(net.forward(x, 8, 7), doctest::Contains("columns, expected height * width = 56"), ptq::error);
  CHECK_THROWS_WITH_AS(resnet().forward(x, 8, 8), doctest::Contains("empty"), ptq::error);
}

}  // namespace ptq_test_resnet_golden
