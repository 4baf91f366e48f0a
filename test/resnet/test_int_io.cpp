// test_int_io.cpp: int_model files (int_io.hpp): exact round trips, int4 packing, and corrupt files refused by key.
#include <doctest/doctest.h>

#include <stdlib.h>

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
#include "synthetic.hpp"

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

ptq_example::quant_config config(int w, int a, bool full, bool per_tensor) {
  ptq_example::quant_config c;
  c.name = "test";
  c.wbits = w;
  c.abits = a;
  if (full) {
    c.clip = ptq_example::clip_mode::laplace;
    c.bit_alloc_w = c.bit_alloc_a = !per_tensor;
    c.bias_corr_w = true;
    c.var_corr_w = true;
  }
  c.per_tensor_a = per_tensor;
  return c;
}

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

// Byte offset of each conv's codes in conv_codes, and whether it is packed.
struct layout {
  std::vector<std::int64_t> at;
  std::vector<bool> packed;
  std::int64_t total = 0;
};
layout code_layout(const int_model& m) {
  layout l;
  for (const auto& q : m.convs) {
    const bool packed = q.wbits.maxCoeff() <= 4;
    l.at.push_back(l.total);
    l.packed.push_back(packed);
    const std::int64_t n = q.K * q.crs();
    l.total += packed ? (n + 1) / 2 : n;
  }
  return l;
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
    for (const auto& cfg : {config(8, 8, false, false), config(4, 4, true, false), config(4, 4, true, true),
                            config(2, 3, true, false)}) {
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
      // The codes are packed exactly where every channel has <= 4 bits.
      const ptq::io::npz_file file(path);
      const layout l = code_layout(m);
      CHECK(file.at("conv_codes").size() == l.total);
      int packed = 0;
      for (bool p : l.packed) packed += p;
      if (cfg.wbits == 8) CHECK(packed == 0);
      // Without bit allocation every weight has 4 bits: all but the 8-bit stem packed. With
      // it, a layer with a channel above 4 bits is stored a byte a code.
      if (cfg.wbits == 4 && cfg.per_tensor_a) CHECK(packed == static_cast<int>(m.convs.size()) - 1);
      if (cfg.wbits == 4) CHECK(packed >= 1);
      CHECK(file.keys().size() == 22);
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

TEST_CASE("int io: the writer refuses what the format cannot hold exactly") {
  const fixture f(kTiny);
  const int_model m = f.build(config(4, 4, true, false));
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
  const int_model m = f.build(config(4, 4, true, false));
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
    check_refused(with(good, "ptq_int_format", std::vector<std::int32_t>{ptq_example::int_format_magic, 2}),
                  "ptq_int_format", "version 2 is not supported");
  }
  SUBCASE("truncated members") {
    std::vector<std::uint8_t> codes = values<std::uint8_t>(good, "conv_codes");
    codes.pop_back();
    check_refused(with(good, "conv_codes", codes), "conv_codes", "bytes, expected");
    std::vector<float> u = values<float>(good, "conv_u");
    u.pop_back();
    check_refused(with(good, "conv_u", u), "conv_u", "is not the expected");
    std::vector<std::uint8_t> fc = values<std::uint8_t>(good, "fc_codes");
    fc.resize(fc.size() / 2);
    check_refused(with(good, "fc_codes", fc), "fc_codes", "bytes, expected");
    std::vector<float> s = values<float>(good, "grid_scale");
    s.pop_back();
    check_refused(with(good, "grid_scale", s), "grid_scale");
  }
  SUBCASE("a code above its wbits") {
    const layout l = code_layout(m);
    bool flipped = false;
    for (std::size_t i = 0; i < m.convs.size() && !flipped; ++i) {
      const auto& q = m.convs[i];
      for (ptq::index k = 0; k < q.K && !flipped; ++k) {
        if (q.wbits[k] >= 4 || !l.packed[i]) continue;
        // Channel k's first code: packed position k * crs.
        const std::int64_t pos = k * q.crs(), byte = l.at[i] + pos / 2;
        std::vector<std::uint8_t> codes = values<std::uint8_t>(good, "conv_codes");
        codes[static_cast<std::size_t>(byte)] |= pos % 2 ? 0xF0 : 0x0F;
        check_refused(with(good, "conv_codes", codes), "conv_codes", "exceeds 2^");
        flipped = true;
      }
    }
    CHECK(flipped);
    // An 8-bit channel cannot exceed its bits; a channel claimed at fewer bits can.
    std::vector<std::uint8_t> wb = values<std::uint8_t>(good, "conv_wbits");
    wb[0] = 1;  // the stem is 8-bit, unpacked
    check_refused(with(good, "conv_wbits", wb), "conv_codes", "exceeds 2^1 - 1");
    wb[0] = 9;
    check_refused(with(good, "conv_wbits", wb), "conv_wbits", "is outside [0, 8]");
    // A packed layer's odd padding nibble.
    std::vector<std::uint8_t> fc = values<std::uint8_t>(good, "fc_codes");
    if (m.fc.wbits.maxCoeff() <= 4 && (m.fc.K * m.fc.C) % 2) {
      fc.back() |= 0x10;
      check_refused(with(good, "fc_codes", fc), "fc_codes", "high nibble");
    }
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
    std::vector<std::uint8_t> zp8 = values<std::uint8_t>(good, "grid_zero_point");
    std::vector<std::int32_t> zp(zp8.begin(), zp8.end());
    zp[3] = 300;  // written as int32: the reader range-checks integer keys of any integer dtype
    check_refused(with(good, "grid_zero_point", zp), "grid_zero_point", "= 300 is outside [0, 255]");
    zp[3] = -1;
    check_refused(with(good, "grid_zero_point", zp), "grid_zero_point", "= -1 is outside [0, 255]");
    std::vector<std::uint8_t> lo = values<std::uint8_t>(good, "grid_lo");
    const std::vector<std::uint8_t> hi = values<std::uint8_t>(good, "grid_hi");
    std::size_t i = 0;
    while (i + 1 < hi.size() && hi[i] == 255) ++i;
    REQUIRE(hi[i] < 255);
    lo[i] = static_cast<std::uint8_t>(hi[i] + 1);
    check_refused(with(good, "grid_lo", lo), "grid_lo", "> hi");
    std::vector<float> s = values<float>(good, "grid_scale");
    s[2] = std::numeric_limits<float>::quiet_NaN();
    check_refused(with(good, "grid_scale", s), "grid_scale", "is not finite >= 0");
    s[2] = -1.0f;
    check_refused(with(good, "grid_scale", s), "grid_scale", "is not finite >= 0");
    std::vector<std::uint8_t> gb = values<std::uint8_t>(good, "grid_bits");
    gb[0] = 9;
    check_refused(with(good, "grid_bits", gb), "grid_bits", "is outside [0, 8]");
    // A scale that makes a multiplier impossible: named, never a crash.
    s = values<float>(good, "grid_scale");
    for (float& v : s) v = v > 0 ? 1e-44f : v;
    check_refused(with(good, "grid_scale", s), "conv_codes");
  }
  SUBCASE("weights' floats") {
    std::vector<float> u = values<float>(good, "conv_u");
    u[5] = 0.0f;
    check_refused(with(good, "conv_u", u), "conv_u", "is not finite > 0");
    u[5] = std::numeric_limits<float>::infinity();
    check_refused(with(good, "conv_u", u), "conv_u", "is not finite > 0");
    std::vector<float> e = values<float>(good, "conv_e");
    e[2] = std::numeric_limits<float>::quiet_NaN();
    check_refused(with(good, "conv_e", e), "conv_e", "is not finite");
    e[2] = 3e38f;  // finite, but no fixed-point stage can hold it
    check_refused(with(good, "conv_e", e), "conv_e", "overflows");
    std::vector<float> b = values<float>(good, "fc_bias");
    b[0] = std::numeric_limits<float>::infinity();
    check_refused(with(good, "fc_bias", b), "fc_bias", "is not finite");
    std::vector<double> d(u.size(), 1.0);
    check_refused(with(good, "conv_u", d), "conv_u", "is not float32");
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
  } seeds[] = {{"tiny_basic_w4a4.npz", kTiny, 4, 4},
               {"tiny_basic_w8a8.npz", kTiny, 8, 8},
               {"tiny_bottleneck_w2a3.npz", {true, {1}, 2, 1, 2, 3, 1, 6, 6}, 2, 3}};
  for (const auto& s : seeds) {
    CAPTURE(s.file);
    const std::string path = dir + "/" + s.file;
    if (out) {
      const fixture f(s.nc);
      ptq_example::write_int_model(path, f.build(config(s.w, s.a, s.w < 8, false)));
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
