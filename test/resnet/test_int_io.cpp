// test_int_io.cpp: int_model files (int_io.hpp): exact round trips, the codes' bit streams (per-channel bits 0..8), and
// corrupt files refused by key.
#include <doctest/doctest.h>

#include <stdlib.h>

#include <algorithm>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <filesystem>
#include <functional>
#include <limits>
#include <map>
#include <random>
#include <string>
#include <vector>

#include "resnet50/int_engine.hpp"
#include "resnet50/int_io.hpp"
#include "resnet50/int_model.hpp"
#include "int_test_util.hpp"
#include "synthetic.hpp"

// Everything of this file in its own namespace: the test binary is a unity build.
namespace ptq_test_int_io {

namespace {

using ptq_example::int_model;
using matrix = ptq::row_matrix<float>;
using arrays_t = std::map<std::string, ptq::io::array>;

// A scratch directory removed at exit.
struct scratch_dir {
  std::string dir;
  scratch_dir() {
    std::string tmpl = (std::filesystem::temp_directory_path() / "ptq_int_io_XXXXXX").string();
    if (::mkdtemp(tmpl.data()) != nullptr) dir = tmpl;
  }
  ~scratch_dir() {
    std::error_code ec;
    if (!dir.empty()) std::filesystem::remove_all(dir, ec);
  }
  std::string operator()(const std::string& name) const { return dir + "/" + name; }
};

const scratch_dir& scratch() {
  static const scratch_dir s;
  REQUIRE_MESSAGE(!s.dir.empty(), "cannot create a scratch directory");
  return s;
}

using ptq_test::int_config;

struct net_case {
  bool bottleneck;
  std::vector<int> layers;
  ptq::index width, in_channels, classes, stem, n, h, w;
};

// A synthetic network, its calibration and an input batch, as test_int_engine.cpp builds them.
struct fixture {
  ptq_example::resnet net;
  ptq_example::calibration cal;
  ptq_example::int_calibration ical;
  matrix x;
  net_case nc;

  explicit fixture(const net_case& c, std::uint64_t seed = 3) : nc(c) {
    std::mt19937_64 rng(seed);
    std::normal_distribution<float> g(0.0f, 1.0f);
    net = ptq_example::resnet::from_state_dict(
        ptq_test::synthetic_state_dict(c.bottleneck, c.layers, c.width, c.in_channels, c.classes, c.stem, 5));
    const ptq::index calib_n = 16;
    const matrix calib = matrix::NullaryExpr(calib_n * c.in_channels, c.h * c.w, [&] { return g(rng); });
    const ptq_example::image_set cs{calib.data(), calib_n, c.in_channels, c.h, c.w};
    ptq_example::calibration_options co;
    co.per_tensor = true;
    cal = ptq_example::calibrate(net, cs, co);
    ical = ptq_example::calibrate_int(net, cs, 8);
    x = matrix::NullaryExpr(c.n * c.in_channels, c.h * c.w, [&] { return g(rng); });
  }
  int_model build(const ptq_example::quant_config& cfg) const { return ptq_example::build_int_model(net, cal, ical, cfg); }
};

const net_case kBottleneck{true, {1, 2, 1}, 8, 1, 10, 3, 3, 13, 11};  // small-image stem, downsamples
const net_case kBasicImagenet{false, {2, 1}, 8, 3, 7, 7, 2, 23, 19};  // ImageNet stem (max-pool)
const net_case kTiny{false, {1}, 2, 1, 2, 3, 1, 6, 6};                // the fuzz seeds' size
const net_case kOdd{false, {1, 1}, 3, 1, 5, 3, 2, 9, 7};              // odd widths: layers of bits not a multiple of 8

void check_vec(const Eigen::VectorXd& a, const Eigen::VectorXd& b) {
  REQUIRE(a.size() == b.size());
  for (ptq::index i = 0; i < a.size(); ++i) CHECK(a[i] == b[i]);
}
void check_vec(const Eigen::VectorXi& a, const Eigen::VectorXi& b) {
  REQUIRE(a.size() == b.size());
  CHECK(a == b);
}
void check_mult(const std::vector<ptq::fixed_multiplier>& a, const std::vector<ptq::fixed_multiplier>& b) {
  REQUIRE(a.size() == b.size());
  for (std::size_t i = 0; i < a.size(); ++i) {
    CHECK(a[i].multiplier == b[i].multiplier);
    CHECK(a[i].shift == b[i].shift);
  }
}
void check_grid(const ptq_example::int_grid& a, const ptq_example::int_grid& b) {
  check_vec(a.scale, b.scale);
  check_vec(a.zero_point, b.zero_point);
  check_vec(a.lo, b.lo);
  check_vec(a.hi, b.hi);
  check_vec(a.bits, b.bits);
}

// Every field of a and b equal (the derived integers included).
void check_equal(const int_model& a, const int_model& b) {
  CHECK(a.type == b.type);
  CHECK(a.max_pool == b.max_pool);
  REQUIRE(a.convs.size() == b.convs.size());
  for (std::size_t i = 0; i < a.convs.size(); ++i) {
    CAPTURE(i);
    const ptq_example::int_conv &p = a.convs[i], &q = b.convs[i];
    CHECK(p.name == q.name);
    CHECK(p.K == q.K);
    CHECK(p.C == q.C);
    CHECK(p.R == q.R);
    CHECK(p.S == q.S);
    CHECK(p.stride == q.stride);
    CHECK(p.pad == q.pad);
    CHECK(p.w == q.w);
    check_vec(p.wbits, q.wbits);
    check_vec(p.u, q.u);
    check_vec(p.e, q.e);
    check_vec(p.bias, q.bias);
    CHECK(p.E == q.E);
    CHECK(p.B == q.B);
    CHECK(p.F == q.F);
    CHECK(p.out.bias == q.out.bias);
    check_mult(p.out.mult, q.out.mult);
    CHECK(p.out.offset == q.out.offset);
    CHECK(p.out.lo == q.out.lo);
    CHECK(p.out.hi == q.out.hi);
  }
  REQUIRE(a.blocks.size() == b.blocks.size());
  for (std::size_t i = 0; i < a.blocks.size(); ++i) {
    CHECK(a.blocks[i].name == b.blocks[i].name);
    CHECK(a.blocks[i].conv1 == b.blocks[i].conv1);
    CHECK(a.blocks[i].conv2 == b.blocks[i].conv2);
    CHECK(a.blocks[i].conv3 == b.blocks[i].conv3);
    CHECK(a.blocks[i].downsample == b.blocks[i].downsample);
  }
  check_grid(a.input, b.input);
  REQUIRE(a.act.size() == b.act.size());
  for (std::size_t i = 0; i < a.act.size(); ++i) check_grid(a.act[i], b.act[i]);
  REQUIRE(a.block_out.size() == b.block_out.size());
  for (std::size_t i = 0; i < a.block_out.size(); ++i) check_grid(a.block_out[i], b.block_out[i]);
  CHECK(a.fc.K == b.fc.K);
  CHECK(a.fc.C == b.fc.C);
  CHECK(a.fc.w == b.fc.w);
  check_vec(a.fc.wbits, b.fc.wbits);
  check_vec(a.fc.u, b.fc.u);
  check_vec(a.fc.e, b.fc.e);
  check_vec(a.fc.bias, b.fc.bias);
  REQUIRE(a.add.size() == b.add.size());
  for (std::size_t i = 0; i < a.add.size(); ++i) {
    const ptq::add_params &p = a.add[i], &q = b.add[i];
    CHECK(p.left_shift == q.left_shift);
    CHECK(p.za == q.za);
    CHECK(p.zb == q.zb);
    CHECK(p.offset == q.offset);
    check_mult(p.ma, q.ma);
    check_mult(p.mb, q.mb);
    check_mult(p.mo, q.mo);
    CHECK(p.lo == q.lo);
    CHECK(p.hi == q.hi);
  }
}

std::uintmax_t file_size(const std::string& path) { return std::filesystem::file_size(path); }

// Byte offset and bit count of each conv's stream in conv_codes (format 2: a conv takes
// C R S sum_k wbits_k bits, rounded up to a byte).
struct layout {
  std::vector<std::int64_t> at, bits;
  std::int64_t total = 0;
};
std::int64_t stream_bits(const Eigen::VectorXi& wbits, ptq::index n) { return std::int64_t{wbits.sum()} * n; }
layout code_layout(const int_model& m) {
  layout l;
  for (const auto& q : m.convs) {
    const std::int64_t bits = stream_bits(q.wbits, q.crs());
    l.at.push_back(l.total);
    l.bits.push_back(bits);
    l.total += (bits + 7) / 8;
  }
  return l;
}

// One layer's bit stream written one bit at a time, the reference for int_io.hpp's 64-bit
// accumulators: channel after channel, code qw = w + 2^(b-1) at its b bits, LSB-first.
std::vector<std::uint8_t> reference_stream(const std::vector<std::int8_t>& w, const Eigen::VectorXi& wbits,
                                           ptq::index n) {
  std::vector<std::uint8_t> out;
  std::int64_t bit = 0;
  for (ptq::index k = 0; k < wbits.size(); ++k) {
    const int b = wbits[k], off = ptq_example::detail::code_offset(b);
    for (ptq::index j = 0; j < n; ++j) {
      const int qw = w[static_cast<std::size_t>(k * n + j)] + off;
      for (int t = 0; t < b; ++t, ++bit) {
        if (bit % 8 == 0) out.push_back(0);
        out.back() = static_cast<std::uint8_t>(out.back() | ((qw >> t) & 1) << (bit % 8));
      }
    }
  }
  return out;
}

// m with every layer's bits and codes replaced: channel k of conv i at (5 k + i) % 9 bits
// (0..8 mixed, odd bit counts), conv 1 all 0 bits (a layer of no bytes), conv 2 all 8,
// the classifier at (3 k + 1) % 9; uniform random codes; the fixed-point stages rebuilt.
int_model with_mixed_bits(int_model m, std::uint64_t seed = 11) {
  std::mt19937_64 rng(seed);
  auto fill = [&](std::vector<std::int8_t>& w, Eigen::VectorXi& wbits, ptq::index n, auto bits_of) {
    for (ptq::index k = 0; k < wbits.size(); ++k) {
      const int b = bits_of(k), off = ptq_example::detail::code_offset(b);
      wbits[k] = b;
      std::uniform_int_distribution<int> code(0, (1 << b) - 1);
      for (ptq::index j = 0; j < n; ++j) w[static_cast<std::size_t>(k * n + j)] = static_cast<std::int8_t>(code(rng) - off);
    }
  };
  for (std::size_t i = 0; i < m.convs.size(); ++i) {
    auto& q = m.convs[i];
    fill(q.w, q.wbits, q.crs(), [&](ptq::index k) {
      return i == 1 ? 0 : i == 2 ? 8 : static_cast<int>((5 * k + static_cast<ptq::index>(i)) % 9);
    });
    ptq_example::detail::integer_stages(q, m.input_grid(static_cast<ptq::index>(i)), m.act[i]);
  }
  fill(m.fc.w, m.fc.wbits, m.fc.C, [](ptq::index k) { return static_cast<int>((3 * k + 1) % 9); });
  return m;
}

// The float32 values of byte planes (conv_floats, fc_floats, grid_scale), and a copy of `a`
// with them replaced (same shape).
std::vector<float> plane_floats(const arrays_t& a, const std::string& key) {
  const ptq::io::array& x = a.at(key);
  const std::size_t n = static_cast<std::size_t>(x.size() / 4);
  const std::uint8_t* p = x.data<std::uint8_t>();
  std::vector<float> v(n);
  for (std::size_t i = 0; i < n; ++i) {
    const std::uint32_t u = std::uint32_t{p[i]} | std::uint32_t{p[n + i]} << 8 | std::uint32_t{p[2 * n + i]} << 16 |
                            std::uint32_t{p[3 * n + i]} << 24;
    std::memcpy(&v[i], &u, 4);
  }
  return v;
}
arrays_t with_plane_floats(arrays_t a, const std::string& key, const std::vector<float>& v) {
  const std::vector<ptq::index> shape = a.at(key).shape();
  std::vector<std::uint8_t> bytes(4 * v.size());
  for (std::size_t i = 0; i < v.size(); ++i) {
    std::uint32_t u;
    std::memcpy(&u, &v[i], 4);
    for (std::size_t b = 0; b < 4; ++b) bytes[b * v.size() + i] = static_cast<std::uint8_t>(u >> (8 * b));
  }
  a[key] = ptq::io::array::from(bytes.data(), shape, key);
  return a;
}

// A copy of `a` with `key`'s array replaced by `v` (shape {v.size()} unless given).
template <class T>
arrays_t with(arrays_t a, const std::string& key, const std::vector<T>& v, std::vector<ptq::index> shape = {}) {
  if (shape.empty()) shape = {static_cast<ptq::index>(v.size())};
  a[key] = ptq::io::array::from(v.data(), shape, key);
  return a;
}
template <class T>
std::vector<T> values(const arrays_t& a, const std::string& key) {
  const ptq::io::array& x = a.at(key);
  return std::vector<T>(x.data<T>(), x.data<T>() + x.size());
}

// read_int_model of `arrays` written to a file throws ptq::error naming the file, the key and `what`.
void check_refused(const arrays_t& arrays, const std::string& key, const std::string& what = "") {
  static int counter = 0;
  const std::string path = scratch()("bad_" + std::to_string(counter++) + ".npz");
  ptq::io::write_npz(path, arrays, true);
  CAPTURE(key);
  CAPTURE(what);
  CHECK_THROWS_WITH_AS(ptq_example::read_int_model(path), doctest::Contains((path + " (key '" + key + "')").c_str()), ptq::error);
  if (!what.empty()) CHECK_THROWS_WITH_AS(ptq_example::read_int_model(path), doctest::Contains(what.c_str()), ptq::error);
}

}  // namespace

TEST_CASE("int io: a written model reads back equal in every field, and the engine's logits are identical") {
  int checked = 0;
  for (const net_case& nc : {kBottleneck, kBasicImagenet}) {
    const fixture f(nc);
    std::uintmax_t size8 = 0, size4 = 0, size4_alloc = 0;
    for (const auto& cfg : {int_config(8, 8, false, false), int_config(4, 4, true, false), int_config(4, 4, true, true),
                            int_config(2, 3, true, false)}) {
      CAPTURE(nc.bottleneck);
      CAPTURE(cfg.wbits);
      CAPTURE(cfg.abits);
      CAPTURE(cfg.per_tensor_a);
      const int_model m = f.build(cfg);
      const std::string path = scratch()("model.npz");
      ptq_example::write_int_model(path, m);
      const int_model back = ptq_example::read_int_model(path);
      check_equal(m, back);
      const matrix la = ptq_example::int_engine(m).forward(f.x, nc.h, nc.w);
      const matrix lb = ptq_example::int_engine(back).forward(f.x, nc.h, nc.w);
      REQUIRE(la.rows() == lb.rows());
      REQUIRE(la.cols() == lb.cols());
      CHECK(std::memcmp(la.data(), lb.data(), sizeof(float) * static_cast<std::size_t>(la.size())) == 0);
      // Every code at exactly its channel's bits: each conv's stream is the bit-by-bit reference.
      const ptq::io::npz_file file(path);
      const layout l = code_layout(m);
      const ptq::io::array codes = file.at("conv_codes");
      REQUIRE(codes.size() == l.total);
      for (std::size_t i = 0; i < m.convs.size(); ++i) {
        CAPTURE(i);
        const std::vector<std::uint8_t> ref = reference_stream(m.convs[i].w, m.convs[i].wbits, m.convs[i].crs());
        REQUIRE(static_cast<std::int64_t>(ref.size()) == (l.bits[i] + 7) / 8);
        CHECK(std::equal(ref.begin(), ref.end(), codes.data<std::uint8_t>() + l.at[i]));  // (ref may be empty)
      }
      CHECK(file.at("fc_codes").size() == (stream_bits(m.fc.wbits, m.fc.C) + 7) / 8);
      CHECK(file.keys().size() == 15);
      const std::uintmax_t size = file_size(path);
      if (cfg.wbits == 8) size8 = size;
      if (cfg.wbits == 4 && cfg.per_tensor_a) size4 = size;
      if (cfg.wbits == 4 && !cfg.per_tensor_a) size4_alloc = size;
      MESSAGE(std::string(nc.bottleneck ? "bottleneck" : "basic"), " W", cfg.wbits, "A", cfg.abits,
              std::string(cfg.per_tensor_a ? " per tensor" : cfg.bit_alloc_w ? " per channel, bit allocation" : " per channel"), ": ", size, " bytes (", m.convs.size(), " convs, ",
              l.total, " code bytes)");
      ++checked;
    }
    CHECK(size4 > 0);
    CHECK(size4 < size8);
    CHECK(size4_alloc < size8);
  }
  CHECK(checked == 8);
}

TEST_CASE("int io: per-channel bits 0..8 (odd counts, 0-bit and 8-bit layers) round trip through the bit streams") {
  int checked = 0, padded = 0;
  for (const net_case& nc : {kBottleneck, kBasicImagenet, kTiny, kOdd}) {
    CAPTURE(nc.bottleneck);
    CAPTURE(nc.stem);
    const fixture f(nc);
    for (std::uint64_t seed : {11u, 12u}) {
      const int_model m = with_mixed_bits(f.build(int_config(4, 4, true, false)), seed);
      REQUIRE(m.convs[1].wbits.maxCoeff() == 0);
      REQUIRE(m.convs[2].wbits.minCoeff() == 8);
      const std::string path = scratch()("mixed.npz");
      ptq_example::write_int_model(path, m);
      const int_model back = ptq_example::read_int_model(path);
      check_equal(m, back);
      const matrix la = ptq_example::int_engine(m).forward(f.x, nc.h, nc.w);
      const matrix lb = ptq_example::int_engine(back).forward(f.x, nc.h, nc.w);
      REQUIRE(la.size() == lb.size());
      CHECK(std::memcmp(la.data(), lb.data(), sizeof(float) * static_cast<std::size_t>(la.size())) == 0);
      // The streams: the reference bit by bit, each conv from a byte boundary, padding 0.
      const arrays_t a = ptq_example::int_model_to_arrays(m, path);
      const layout l = code_layout(m);
      const ptq::io::array& codes = a.at("conv_codes");
      REQUIRE(codes.size() == l.total);
      for (std::size_t i = 0; i < m.convs.size(); ++i) {
        CAPTURE(i);
        const std::vector<std::uint8_t> ref = reference_stream(m.convs[i].w, m.convs[i].wbits, m.convs[i].crs());
        REQUIRE(static_cast<std::int64_t>(ref.size()) == (l.bits[i] + 7) / 8);
        CHECK(std::equal(ref.begin(), ref.end(), codes.data<std::uint8_t>() + l.at[i]));  // (ref may be empty)
        padded += l.bits[i] % 8 != 0;
      }
      CHECK(l.bits[1] == 0);
      const std::vector<std::uint8_t> fc = reference_stream(m.fc.w, m.fc.wbits, m.fc.C);
      REQUIRE(a.at("fc_codes").size() == static_cast<ptq::index>(fc.size()));
      CHECK(std::equal(fc.begin(), fc.end(), a.at("fc_codes").data<std::uint8_t>()));
      ++checked;
    }
  }
  CHECK(checked == 8);
  CHECK(padded >= 8);  // kTiny's stem, kOdd's stem, conv 3 and 4 (per seed)
}

TEST_CASE("int io: the writer refuses what the format cannot hold exactly") {
  const fixture f(kTiny);
  const int_model m = f.build(int_config(4, 4, true, false));
  const std::string path = scratch()("refused.npz");
  {
    int_model b = m;
    b.convs[1].u[0] = 0.1;  // not a float32 value
    CHECK_THROWS_WITH_AS(ptq_example::write_int_model(path, b), doctest::Contains("not a finite float32 value"),
                         ptq::error);
  }
  {
    int_model b = m;
    b.convs[1].w[0] = 100;  // beyond 4 bits
    CHECK_THROWS_WITH_AS(ptq_example::write_int_model(path, b), doctest::Contains("is outside the"), ptq::error);
  }
  {
    int_model b = m;
    b.convs[1].E[0] += 1;  // a derived integer the stored fields do not imply
    CHECK_THROWS_WITH_AS(ptq_example::write_int_model(path, b), doctest::Contains("detail::integer_stages"),
                         ptq::error);
  }
  {
    int_model b = m;
    b.add[0].offset[0] += 1;
    CHECK_THROWS_WITH_AS(ptq_example::write_int_model(path, b), doctest::Contains("detail::add_stage"), ptq::error);
  }
  {
    int_model b = m;
    b.act[0].zero_point[0] = 300;
    CHECK_THROWS_WITH_AS(ptq_example::write_int_model(path, b), doctest::Contains("is outside [0, 255]"), ptq::error);
  }
  CHECK(!std::filesystem::exists(path));
}

TEST_CASE("int io: corrupt files are refused with a ptq::error naming the file and the key") {
  const fixture f(kBottleneck);
  const int_model m = f.build(int_config(4, 4, true, false));
  const std::string path = scratch()("good.npz");
  ptq_example::write_int_model(path, m);
  const arrays_t good = ptq::io::read_npz(path);
  REQUIRE_NOTHROW(ptq_example::int_model_from_arrays(good, path));

  SUBCASE("a missing key, each in turn") {
    for (const auto& kv : good) {
      arrays_t a = good;
      a.erase(kv.first);
      check_refused(a, kv.first, "the key is missing");
    }
  }
  SUBCASE("magic and version") {
    check_refused(with(good, "ptq_int_format", std::vector<std::int32_t>{0x12345678, 1}), "ptq_int_format",
                  "not a ptq integer model");
    check_refused(with(good, "ptq_int_format", std::vector<std::int32_t>{ptq_example::int_format_magic, 3}),
                  "ptq_int_format", "version 3 is not supported");
    check_refused(with(good, "ptq_int_format", std::vector<std::int32_t>{ptq_example::int_format_magic, 1}),
                  "ptq_int_format", "version 1 (int4 or byte codes, float32 members) is no longer read");
    check_refused(with(good, "ptq_int_format", std::vector<std::int32_t>{ptq_example::int_format_magic, 1}),
                  "ptq_int_format", "rewrite the file with resnet_ptq --export");
  }
  SUBCASE("truncated members") {
    std::vector<std::uint8_t> codes = values<std::uint8_t>(good, "conv_codes");
    codes.pop_back();
    check_refused(with(good, "conv_codes", codes), "conv_codes", "bytes, expected");
    codes.push_back(0);
    codes.push_back(0);
    check_refused(with(good, "conv_codes", codes), "conv_codes", "bytes, expected");
    const ptq::index K = good.at("conv_floats").shape()[2];
    std::vector<std::uint8_t> f = values<std::uint8_t>(good, "conv_floats");
    f.resize(f.size() - 12);
    check_refused(with(good, "conv_floats", f, {4, 3, K - 1}), "conv_floats", "is not the expected");
    check_refused(with(good, "conv_floats", f), "conv_floats", "is not the expected");
    std::vector<std::uint8_t> fc = values<std::uint8_t>(good, "fc_codes");
    fc.resize(fc.size() / 2);
    check_refused(with(good, "fc_codes", fc), "fc_codes", "bytes, expected");
    std::vector<std::uint8_t> s = values<std::uint8_t>(good, "grid_scale");
    s.resize(s.size() - 4);
    check_refused(with(good, "grid_scale", s, {4, static_cast<ptq::index>(s.size() / 4)}), "grid_scale",
                  "is not the expected");
  }
  SUBCASE("bit streams: nonzero padding, truncated or lengthened layers, wbits that do not match") {
    // A model with per-channel bits 0..8 and odd widths: layers whose bits are not a multiple of 8.
    const fixture fo(kOdd);
    const int_model mixed = with_mixed_bits(fo.build(int_config(4, 4, true, false)));
    const std::string mp = scratch()("mixed_good.npz");
    ptq_example::write_int_model(mp, mixed);
    const arrays_t mg = ptq::io::read_npz(mp);
    REQUIRE_NOTHROW(ptq_example::int_model_from_arrays(mg, mp));
    const layout l = code_layout(mixed);
    int padded = 0;
    for (std::size_t i = 0; i < mixed.convs.size(); ++i) {
      const std::int64_t pad = l.bits[i] % 8;
      if (pad == 0) continue;
      CAPTURE(i);
      // Each unused bit of the layer's last byte in turn.
      for (std::int64_t t = pad; t < 8; ++t) {
        std::vector<std::uint8_t> codes = values<std::uint8_t>(mg, "conv_codes");
        codes[static_cast<std::size_t>(l.at[i] + l.bits[i] / 8)] |= static_cast<std::uint8_t>(1u << t);
        check_refused(with(mg, "conv_codes", codes), "conv_codes",
                      "conv '" + mixed.convs[i].name + "': the " + std::to_string(8 - pad) + " unused high bits");
      }
      ++padded;
    }
    CHECK(padded == 3);  // the stem, conv 3 and conv 4 (see with_mixed_bits)
    // The classifier's padding.
    const std::int64_t fc_bits = stream_bits(mixed.fc.wbits, mixed.fc.C);
    REQUIRE(fc_bits % 8 != 0);
    std::vector<std::uint8_t> fc = values<std::uint8_t>(mg, "fc_codes");
    fc.back() |= 0x80;
    check_refused(with(mg, "fc_codes", fc), "fc_codes", "the classifier: the ");
    fc = values<std::uint8_t>(mg, "fc_codes");
    fc.pop_back();
    check_refused(with(mg, "fc_codes", fc), "fc_codes", "bytes, expected");
    // A layer cut short: the stream one byte short, or a layer's bytes dropped and zeros appended.
    std::vector<std::uint8_t> codes = values<std::uint8_t>(mg, "conv_codes");
    codes.pop_back();
    check_refused(with(mg, "conv_codes", codes), "conv_codes", "bytes, expected");
    codes = values<std::uint8_t>(mg, "conv_codes");
    codes.erase(codes.begin() + l.at[3], codes.begin() + l.at[4]);
    check_refused(with(mg, "conv_codes", codes), "conv_codes", "bytes, expected");
    // A channel claimed at one more or one fewer bit: its layer's byte count no longer matches.
    for (int delta : {1, -1}) {
      std::vector<std::uint8_t> wb = values<std::uint8_t>(mg, "conv_wbits");
      std::size_t k = 0;
      while (wb[k] == 0 || wb[k] == 8) ++k;  // the stem: 1..7 bits for some channel
      wb[k] = static_cast<std::uint8_t>(wb[k] + delta);
      check_refused(with(mg, "conv_wbits", wb), "conv_codes", "bytes, expected");
    }
    std::vector<std::uint8_t> wb = values<std::uint8_t>(mg, "conv_wbits");
    wb[0] = 9;
    check_refused(with(mg, "conv_wbits", wb), "conv_wbits", "is outside [0, 8]");
  }
  SUBCASE("0-bit channels: their codes take no bytes, and a file cannot claim billions of them") {
    // Every channel at 0 bits, no code bytes: a valid model of zero weights.
    const ptq::index sum_k = good.at("conv_wbits").size();
    arrays_t a = with(good, "conv_wbits", std::vector<std::uint8_t>(static_cast<std::size_t>(sum_k), 0));
    a = with(a, "conv_codes", std::vector<std::uint8_t>{});
    const int_model z = ptq_example::int_model_from_arrays(a, "zero.npz");
    for (const auto& q : z.convs) CHECK(std::all_of(q.w.begin(), q.w.end(), [](std::int8_t v) { return v == 0; }));
    // The same with every conv 4096 times wider (channels chained): ~10^10 codes in a few
    // hundred KB of file, refused before anything of their size is allocated.
    std::vector<std::int32_t> geo = values<std::int32_t>(good, "conv_geometry");
    std::int64_t wide_k = 0;
    for (std::size_t i = 0; i < geo.size(); i += 6) {
      geo[i] *= 4096;
      if (i > 0) geo[i + 1] *= 4096;
      wide_k += geo[i];
    }
    a = with(good, "conv_geometry", geo, {static_cast<ptq::index>(geo.size() / 6), 6});
    a = with(a, "conv_wbits", std::vector<std::uint8_t>(static_cast<std::size_t>(wide_k), 0));
    a = with(a, "conv_codes", std::vector<std::uint8_t>{});
    check_refused(a, "conv_wbits", "the 0-bit channels hold");
  }
  SUBCASE("mismatched counts") {
    std::vector<std::uint8_t> wb = values<std::uint8_t>(good, "conv_wbits");
    wb.push_back(4);
    check_refused(with(good, "conv_wbits", wb), "conv_wbits", "is not the expected");
    std::vector<std::int32_t> arch = values<std::int32_t>(good, "arch");
    arch[3] += 1;  // one more block
    check_refused(with(good, "arch", arch), "blocks", "is not the expected");
    arch = values<std::int32_t>(good, "arch");
    arch[5] += 1;  // classes
    check_refused(with(good, "arch", arch), "fc_shape", "classes");
    std::vector<std::int32_t> gc = values<std::int32_t>(good, "grid_channels");
    gc[0] = 2;  // neither 1 nor the input's 1 channel... (the input has 1 channel here)
    check_refused(with(good, "grid_channels", gc), "grid_channels", "expected 1 or");
    std::vector<std::uint8_t> names = values<std::uint8_t>(good, "conv_names");
    names.push_back('\n');
    names.push_back('x');
    check_refused(with(good, "conv_names", names), "conv_names", "holds more than");
  }
  SUBCASE("grid values") {
    // grid_params: per channel zero_point, lo, hi, bits.
    const std::vector<std::uint8_t> p8 = values<std::uint8_t>(good, "grid_params");
    const ptq::index total = good.at("grid_params").shape()[0];
    REQUIRE(static_cast<ptq::index>(p8.size()) == 4 * total);
    std::vector<std::int32_t> p(p8.begin(), p8.end());
    p[4 * 3] = 300;  // written as int32: the reader range-checks integer keys of any integer dtype
    check_refused(with(good, "grid_params", p, {total, 4}), "grid_params", "= 300 is outside [0, 255]");
    p[4 * 3] = -1;
    check_refused(with(good, "grid_params", p, {total, 4}), "grid_params", "= -1 is outside [0, 255]");
    std::vector<std::uint8_t> q = p8;
    std::size_t i = 0;
    while (i + 1 < static_cast<std::size_t>(total) && q[4 * i + 2] == 255) ++i;
    REQUIRE(q[4 * i + 2] < 255);
    q[4 * i + 1] = static_cast<std::uint8_t>(q[4 * i + 2] + 1);  // lo = hi + 1
    check_refused(with(good, "grid_params", q, {total, 4}), "grid_params", "> hi");
    q = p8;
    q[4 * 0 + 3] = 9;  // bits
    check_refused(with(good, "grid_params", q, {total, 4}), "grid_params", "bits = 9 is outside [0, 8]");
    check_refused(with(good, "grid_params", p8), "grid_params", "is not the expected");  // 1-D
    std::vector<float> s = plane_floats(good, "grid_scale");
    REQUIRE(static_cast<ptq::index>(s.size()) == total);
    s[2] = std::numeric_limits<float>::quiet_NaN();
    check_refused(with_plane_floats(good, "grid_scale", s), "grid_scale", "is not finite >= 0");
    s[2] = -1.0f;
    check_refused(with_plane_floats(good, "grid_scale", s), "grid_scale", "is not finite >= 0");
    // A scale that makes a multiplier impossible: named, never a crash.
    s = plane_floats(good, "grid_scale");
    for (float& v : s) v = v > 0 ? 1e-44f : v;
    check_refused(with_plane_floats(good, "grid_scale", s), "conv_codes");
  }
  SUBCASE("weights' floats") {
    // conv_floats: u, e, bias of the sum K channels one after the other, as byte planes.
    const ptq::index K = good.at("conv_floats").shape()[2];
    const auto k = static_cast<std::size_t>(K);
    std::vector<float> f = plane_floats(good, "conv_floats");
    REQUIRE(f.size() == 3 * k);
    for (std::size_t c = 0; c < k; ++c) CHECK(f[c] > 0);
    f[5] = 0.0f;
    check_refused(with_plane_floats(good, "conv_floats", f), "conv_floats", ": u = 0 is not finite > 0");
    f[5] = std::numeric_limits<float>::infinity();
    check_refused(with_plane_floats(good, "conv_floats", f), "conv_floats", "is not finite > 0");
    f = plane_floats(good, "conv_floats");
    f[k + 2] = std::numeric_limits<float>::quiet_NaN();
    check_refused(with_plane_floats(good, "conv_floats", f), "conv_floats", ": e = nan is not finite");
    f[k + 2] = 3e38f;  // finite, but no fixed-point stage can hold it
    check_refused(with_plane_floats(good, "conv_floats", f), "conv_floats", "overflows");
    f = plane_floats(good, "conv_floats");
    f[2 * k + 1] = -std::numeric_limits<float>::infinity();
    check_refused(with_plane_floats(good, "conv_floats", f), "conv_floats", ": bias = -inf is not finite");
    std::vector<float> b = plane_floats(good, "fc_floats");
    b[2 * static_cast<std::size_t>(m.fc.K)] = std::numeric_limits<float>::infinity();
    check_refused(with_plane_floats(good, "fc_floats", b), "fc_floats", "the classifier channel 0: bias = inf");
    // float32 arrays in place of the byte planes.
    check_refused(with(good, "conv_floats", plane_floats(good, "conv_floats"), {4, 3, K / 4}), "conv_floats",
                  "is not the expected");
    const std::vector<float> u4(4 * 3 * k, 1.0f);
    check_refused(with(good, "conv_floats", u4, {4, 3, K}), "conv_floats", "is not uint8");
  }
  SUBCASE("geometry") {
    const std::vector<std::int32_t> geo = values<std::int32_t>(good, "conv_geometry");
    const ptq::index n = static_cast<ptq::index>(geo.size() / 6);
    for (int field = 0; field < 6; ++field) {
      std::vector<std::int32_t> g = geo;
      g[static_cast<std::size_t>(6 + field)] = -3;  // conv 1
      CAPTURE(field);
      check_refused(with(good, "conv_geometry", g, {n, 6}), "conv_geometry", "is not a ResNet conv");
    }
    std::vector<std::int32_t> g = geo;
    g[6 + 2] = g[6 + 3] = 13;  // kernel 13 > 11
    g[6 + 5] = 6;
    check_refused(with(good, "conv_geometry", g, {n, 6}), "conv_geometry", "is not a ResNet conv");
    g = geo;
    g[6 + 1] += 1;  // conv 1's C does not chain
    check_refused(with(good, "conv_geometry", g, {n, 6}), "conv_geometry", "expected");
    g = geo;
    g[6 * 1 + 4] = 2;  // a stride on the main path that the downsample does not have
    check_refused(with(good, "conv_geometry", g, {n, 6}), "conv_geometry", "downsample");
    std::vector<std::int32_t> bl = values<std::int32_t>(good, "blocks");
    std::swap(bl[0], bl[1]);
    check_refused(with(good, "blocks", bl, {static_cast<ptq::index>(bl.size() / 4), 4}), "blocks", "network order");
    bl = values<std::int32_t>(good, "blocks");
    bl[3] = -1;  // drop block 0's downsample
    check_refused(with(good, "blocks", bl, {static_cast<ptq::index>(bl.size() / 4), 4}), "blocks");
    std::vector<std::int32_t> arch = values<std::int32_t>(good, "arch");
    arch[0] = 0;  // basic, with bottleneck blocks
    check_refused(with(good, "arch", arch), "blocks", "network order");
  }
  SUBCASE("dtypes") {
    std::vector<float> fmt{1.0f, 1.0f};
    check_refused(with(good, "ptq_int_format", fmt), "ptq_int_format", "is not an integer dtype");
    std::vector<std::int32_t> codes(static_cast<std::size_t>(good.at("conv_codes").size()), 0);
    check_refused(with(good, "conv_codes", codes), "conv_codes", "is not uint8");
  }
  SUBCASE("not an npz at all") {
    const std::string p = scratch()("garbage.npz");
    {
      std::FILE* fp = std::fopen(p.c_str(), "wb");
      REQUIRE(fp != nullptr);
      std::fputs("not a zip file", fp);
      std::fclose(fp);
    }
    CHECK_THROWS_AS(ptq_example::read_int_model(p), ptq::error);
    CHECK_THROWS_AS(ptq_example::read_int_model(scratch()("missing.npz")), ptq::error);
  }
}

// The fuzz target's seeds (test/fuzz/corpus/int_model/) are files of tiny models that this
// test writes when PTQ_WRITE_INT_SEEDS names a directory:
//   PTQ_WRITE_INT_SEEDS=test/fuzz/corpus/int_model build/.../ptq_resnet_tests -tc='int io: fuzz seeds*'
// (each also as <name>.raw, fuzz_int_model.cpp's CRC-free container of the same arrays).
// Without it, the committed seeds must read back and run.
TEST_CASE("int io: fuzz seeds") {
  const char* out = std::getenv("PTQ_WRITE_INT_SEEDS");
  const std::string dir = out ? out : std::string(PTQ_SOURCE_DIR) + "/test/fuzz/corpus/int_model";
  const struct {
    const char* file;
    net_case nc;
    int w, a;
    bool mixed;  // with_mixed_bits: per-channel bits 0..8, layers with padding bits
  } seeds[] = {{"tiny_basic_w4a4.npz", kTiny, 4, 4, false},
               {"tiny_basic_w8a8.npz", kTiny, 8, 8, false},
               {"tiny_bottleneck_w2a3.npz", {true, {1}, 2, 1, 2, 3, 1, 6, 6}, 2, 3, false},
               {"tiny_basic_mixed_bits.npz", kTiny, 4, 4, true}};
  for (const auto& s : seeds) {
    CAPTURE(s.file);
    const std::string path = dir + "/" + s.file;
    if (out) {
      const fixture f(s.nc);
      const int_model built = f.build(int_config(s.w, s.a, s.w < 8, false));
      ptq_example::write_int_model(path, s.mixed ? with_mixed_bits(built) : built);
      // The same arrays in fuzz_int_model.cpp's CRC-free container.
      std::string raw = "PTQA";
      for (const auto& kv : ptq::io::read_npz(path)) {
        const ptq::io::array& a = kv.second;
        const std::string npy = ptq::io::detail::npy_header_bytes(a.type(), a.shape()) +
                                std::string(static_cast<const char*>(a.bytes()), a.nbytes());
        raw += static_cast<char>(kv.first.size()) + kv.first;
        for (int b = 0; b < 4; ++b) raw += static_cast<char>((npy.size() >> (8 * b)) & 0xFF);
        raw += npy;
      }
      std::FILE* fp = std::fopen((path.substr(0, path.size() - 4) + ".raw").c_str(), "wb");
      REQUIRE(fp != nullptr);
      REQUIRE(std::fwrite(raw.data(), 1, raw.size(), fp) == raw.size());
      std::fclose(fp);
    }
    const int_model m = ptq_example::read_int_model(path);
    CHECK(file_size(path) < 20000);
    const matrix x = matrix::Constant(s.nc.in_channels, s.nc.h * s.nc.w, 0.5f);
    const matrix l = ptq_example::int_engine(m).forward(x, s.nc.h, s.nc.w);
    CHECK(l.allFinite());
  }
}

}  // namespace ptq_test_int_io
