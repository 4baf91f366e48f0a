// test_bad_files.cpp: hostile .npy / .npz files and ResNet weight archives: ptq::error naming the file and key.
//
// Extends test/io/test_npy.cpp and test_npz.cpp (which already cover version 1.0 cut at
// every byte, bad magic and versions, unsupported dtypes, negative and overflowing shapes,
// header syntax, and archives numpy writes): here format versions 2.0 and 3.0 (uint32
// header length), both byte orders and Fortran order cut at every header and element
// boundary, header lengths past the end for both length widths, size_t overflow of
// the byte count, parse_npz (in memory) against read_npz (file), and the ResNet builder
// on weight archives with a missing key, an extra key (a warning, not an error), a
// tensor of the wrong shape, a wrong dtype, a non-finite value and a corrupt entry.
//
// Decisions this file pins down: big-endian data are CONVERTED to host order (never
// refused); fortran_order True is CONVERTED to C order; trailing bytes are an error.
#include <doctest/doctest.h>
#include <zip.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <limits>
#include <map>
#include <string>
#include <utility>
#include <vector>

#include <ptq/io/npz.hpp>

#include "io_test_util.hpp"
#include "resnet50/resnet.hpp"

// Everything of this file in its own namespace: the test binary is a unity build.
namespace ptq_test_bad_files {

namespace {

using ptq::index;
using ptq_io_test::contains;
using ptq_io_test::slurp;
using ptq_io_test::spit;
using ptq_io_test::temp_dir;

// A .npy: magic, version major.0, header length (uint16 for 1.0, uint32 for 2.0 / 3.0),
// the dict padded with spaces to a multiple of 64 and '\n', then `data`.
std::string npy(const std::string& dict, const std::string& data, int major = 1) {
  const std::size_t prefix = major == 1 ? 10 : 12;
  std::string h = dict;
  while ((prefix + h.size() + 1) % 64 != 0) h += ' ';
  h += '\n';
  std::string b = std::string("\x93NUMPY", 6) + static_cast<char>(major) + '\0';
  for (std::size_t i = 0; i < prefix - 8; ++i) b += static_cast<char>((h.size() >> (8 * i)) & 0xff);
  return b + h + data;
}

// Raw element bytes of `values` as `T`, in little- or big-endian order.
template <class T>
std::string raw(const std::vector<double>& values, bool big_endian) {
  std::string out;
  for (double v : values) {
    const T t = static_cast<T>(v);
    char b[sizeof(T)];
    std::memcpy(b, &t, sizeof(T));  // the test hosts are little-endian (checked below)
    if (big_endian) std::reverse(b, b + sizeof(T));
    out.append(b, sizeof(T));
  }
  return out;
}

// Writes a zip archive: (member name, bytes) pairs, stored or deflated, through libzip.
void write_zip(const std::string& path, const std::vector<std::pair<std::string, std::string>>& members,
               bool deflate) {
  int err = 0;
  zip_t* z = zip_open(path.c_str(), ZIP_CREATE | ZIP_TRUNCATE, &err);
  REQUIRE(z != nullptr);
  for (const auto& m : members) {
    zip_source_t* s = zip_source_buffer(z, m.second.data(), m.second.size(), 0);
    REQUIRE(s != nullptr);
    const zip_int64_t i = zip_file_add(z, m.first.c_str(), s, ZIP_FL_ENC_UTF_8);
    REQUIRE(i >= 0);
    REQUIRE(zip_set_file_compression(z, static_cast<zip_uint64_t>(i), deflate ? ZIP_CM_DEFLATE : ZIP_CM_STORE, 0) == 0);
  }
  REQUIRE(zip_close(z) == 0);
}

// The .npy bytes numpy.save would write for `a`.
std::string npy_of(const ptq::io::array& a) {
  return ptq::io::detail::npy_header_bytes(a.type(), a.shape()) +
         std::string(static_cast<const char*>(a.bytes()), a.nbytes());
}

// Checks that both readers (file and memory) throw ptq::error naming the input and saying `what`.
void refused(const temp_dir& dir, const std::string& name, const std::string& bytes, const std::string& what) {
  CAPTURE(name);
  CAPTURE(what);
  const std::string path = dir / (name + ".npy");
  spit(path, bytes);
  CHECK_THROWS_WITH_AS(ptq::io::read_npy(path), contains("ptq::io::read_npy: " + path + ": "), ptq::error);
  CHECK_THROWS_WITH_AS(ptq::io::read_npy(path), contains(what), ptq::error);
  CHECK_THROWS_WITH_AS(ptq::io::parse_npy(bytes.data(), bytes.size(), name),
                       contains("ptq::io::parse_npy: " + name + ": " ), ptq::error);
  CHECK_THROWS_WITH_AS(ptq::io::parse_npy(bytes.data(), bytes.size(), name), contains(what), ptq::error);
}

}  // namespace

TEST_CASE("bad_input: .npy of versions 1.0-3.0, both byte orders, C and Fortran order, cut at every boundary") {
  REQUIRE(ptq::io::detail::host_is_little_endian());
  temp_dir dir;
  const std::vector<double> values = {1.5, -2.25, 3.0, 1e10, -0.0, 7.0};  // shape (2, 3), C order
  const std::vector<double> fortran = {1.5, 1e10, -2.25, -0.0, 3.0, 7.0};  // the same array, column-major
  int cuts = 0;
  for (int major : {1, 2, 3}) {
    for (const char* descr : {"<f8", ">f8", "<f4", ">f4", "<i8", ">i8", "<i4", ">i4", "|u1"}) {
      for (bool fo : {false, true}) {
        const bool big = descr[0] == '>';
        const std::string code = descr + 1;
        const std::vector<double>& stored = fo ? fortran : values;
        std::vector<double> ints = stored;
        for (double& v : ints) v = std::abs(std::round(v)) > 1e9 ? 99 : std::abs(std::round(v));  // fits uint8
        const std::string data = code == "f8"   ? raw<double>(stored, big)
                                 : code == "f4" ? raw<float>(stored, big)
                                 : code == "i8" ? raw<std::int64_t>(ints, big)
                                 : code == "i4" ? raw<std::int32_t>(ints, big)
                                                : raw<std::uint8_t>(ints, big);
        const std::string dict = std::string("{'descr': '") + descr + "', 'fortran_order': " +
                                 (fo ? "True" : "False") + ", 'shape': (2, 3), }";
        const std::string whole = npy(dict, data, major);
        const std::string name = "v" + std::to_string(major) + code + (big ? "be" : "le") + (fo ? "F" : "C");
        CAPTURE(name);
        // The whole file: converted to host order and C order.
        const ptq::io::array a = ptq::io::parse_npy(whole.data(), whole.size(), name);
        CHECK(a.shape() == std::vector<ptq::index>{2, 3});
        const std::vector<double> want = code[0] == 'f' ? values : [&] {
          std::vector<double> w = values;
          for (double& v : w) v = std::abs(std::round(v)) > 1e9 ? 99 : std::abs(std::round(v));
          return w;
        }();
        const std::vector<double> got = a.to<double>();
        for (std::size_t i = 0; i < want.size(); ++i)
          CHECK(got[i] == (code == "f4" ? static_cast<double>(static_cast<float>(want[i])) : want[i]));
        // Every boundary: inside the magic, after it, after the version, inside / after the
        // header length, inside / at the end of the header, and at every element.
        const std::size_t len_bytes = major == 1 ? 2 : 4, data_start = whole.size() - data.size();
        const std::size_t item = data.size() / 6;
        std::vector<std::size_t> at = {0, 3, 6, 7, 8, 9, 8 + len_bytes, 8 + len_bytes + 1, data_start - 1};
        for (std::size_t k = 0; k < 6; ++k) at.push_back(data_start + k * item);
        if (item > 1) at.push_back(data_start + 5 * item + item / 2);  // inside the last element
        for (std::size_t cut : at) {
          const std::string what = cut < 8                ? "ends inside the magic string and version"
                                   : cut < 8 + len_bytes  ? "ends inside the header length field"
                                   : cut < data_start     ? "runs past the end of the file"
                                                          : "the data are truncated: shape (2, 3) of ";
          refused(dir, name + "_cut" + std::to_string(cut), whole.substr(0, cut), what);
          ++cuts;
        }
        refused(dir, name + "_long", whole + "x", "1 trailing bytes after the " + std::to_string(data.size()));
      }
    }
  }
  CHECK(cuts == 3 * 2 * (8 * 16 + 15));  // |u1 has no "inside an element" cut
}

TEST_CASE("bad_input: .npy header lengths past the end of the file, for uint16 and uint32 length fields") {
  temp_dir dir;
  const std::string good = npy("{'descr': '<f4', 'fortran_order': False, 'shape': (1,), }", std::string(4, '\0'), 2);
  for (std::uint32_t len : {0xffffffffu, 0x80000000u, 0x10000u, static_cast<std::uint32_t>(good.size())}) {
    std::string b = good;
    for (int i = 0; i < 4; ++i) b[8 + static_cast<std::size_t>(i)] = static_cast<char>((len >> (8 * i)) & 0xff);
    refused(dir, "len" + std::to_string(len), b,
            "the header length " + std::to_string(len) + " runs past the end of the file (" +
                std::to_string(good.size()) + " bytes");
  }
  std::string v1 = npy("{'descr': '<f4', 'fortran_order': False, 'shape': (1,), }", std::string(4, '\0'), 1);
  v1[8] = '\xff', v1[9] = '\xff';
  refused(dir, "len65535", v1, "the header length 65535 runs past the end of the file");
  // A header length of 0: the dict is missing.
  std::string zero = good.substr(0, 12);
  zero[8] = zero[9] = zero[10] = zero[11] = '\0';
  refused(dir, "len0", zero, "the header dict does not start with '{'");
}

TEST_CASE("bad_input: .npy shapes whose element or byte count overflows size_t, and negative ones") {
  temp_dir dir;
  const std::string d(8, '\0');
  auto h = [&](const std::string& shape, const char* descr, int major) {
    return npy(std::string("{'descr': '") + descr + "', 'fortran_order': False, 'shape': " + shape + ", }", d, major);
  };
  for (int major : {1, 2, 3}) {
    const std::string v = std::to_string(major);
    refused(dir, "prod" + v, h("(4294967296, 4294967296)", "<f4", major), "(size overflow)");
    refused(dir, "prod3_" + v, h("(3037000500, 3037000500, 2)", "|u1", major), "(size overflow)");
    refused(dir, "bytes" + v, h("(9223372036854775807,)", "<f8", major), "(size overflow)");
    refused(dir, "bytes2_" + v, h("(1152921504606846976,)", "<f8", major), "(size overflow)");  // 2^60 * 8 = 2^63
    refused(dir, "max" + v, h("(9223372036854775807,)", "|u1", major),
            "needs 9223372036854775807 bytes but only 8 follow");  // fits; refused before allocating
    refused(dir, "neg" + v, h("(-1,)", "<f4", major), "shape[0] = -1 is negative");
    refused(dir, "neg2_" + v, h("(2, -9223372036854775807)", "<f4", major), "shape[1] = -9223372036854775807 is negative");
    refused(dir, "over" + v, h("(18446744073709551616,)", "<f4", major), "shape[0] = 18446744073709551616 overflows");
  }
  // A zero dimension makes any other dimension harmless: 0 elements, 0 bytes.
  const std::string empty = npy("{'descr': '<f8', 'fortran_order': False, 'shape': (0, 9223372036854775807), }", "");
  const ptq::io::array e = ptq::io::parse_npy(empty.data(), empty.size(), "empty");
  CHECK(e.size() == 0);
  CHECK(e.nbytes() == 0);
}

TEST_CASE("bad_input: .npy dtypes, magic strings and versions beyond the I/O tests' list") {
  temp_dir dir;
  const std::string d(16, '\0');
  for (const char* descr : {"<c8", ">c8", "<c16", "|O", "|O8", "<M8[s]", "<m8[ns]", "|S4", "<U1", "|V16", "<u8", "<u2",
                            "<f2", "<g", "|b1", "|i1", "<f4 ", "f8", "<F4", "<<f4"}) {
    refused(dir, std::string("descr_") + std::to_string(std::strlen(descr)) + "_" + std::to_string(descr[1]),
            npy(std::string("{'descr': '") + descr + "', 'fortran_order': False, 'shape': (2,), }", d, 2),
            std::string("unsupported dtype '") + descr + "'");
  }
  refused(dir, "order_bar", npy("{'descr': '|i8', 'fortran_order': False, 'shape': (2,), }", d),
          "has an invalid byte order '|'");
  refused(dir, "order_bang", npy("{'descr': '!f8', 'fortran_order': False, 'shape': (2,), }", d),
          "has an invalid byte order '!'");
  const std::string good = npy("{'descr': '<f8', 'fortran_order': False, 'shape': (2,), }", d);
  for (const std::string& magic : {std::string("\x92NUMPY", 6), std::string("NUMPY\x93", 6), std::string("\x93numpy", 6),
                                  std::string("PK\x03\x04\x14\x00", 6), std::string(6, '\0')}) {
    std::string b = good;
    b.replace(0, 6, magic);
    refused(dir, "magic" + std::to_string(static_cast<unsigned char>(magic[0])), b, "not a .npy file: it starts with");
  }
  for (auto v : {std::pair<int, int>{0, 0}, {1, 1}, {3, 1}, {4, 0}, {255, 255}, {2, 255}}) {
    std::string b = good;
    b[6] = static_cast<char>(v.first), b[7] = static_cast<char>(v.second);
    refused(dir, "ver" + std::to_string(v.first) + "_" + std::to_string(v.second), b,
            "unsupported .npy format version " + std::to_string(v.first) + "." + std::to_string(v.second));
  }
}

TEST_CASE("bad_input: parse_npz (memory) refuses what read_npz (file) refuses, naming the archive and key") {
  temp_dir dir;
  const std::vector<float> w = {1, 2, 3, 4, 5, 6};
  const std::string a = npy_of(ptq::io::array::from(w.data(), {2, 3})), s = npy_of(ptq::io::array::from(w.data(), {}));
  write_zip(dir / "good.npz", {{"w.npy", a}, {"s.npy", s}}, true);
  write_zip(dir / "stored.npz", {{"w.npy", a}, {"s.npy", s}}, false);
  for (const char* f : {"good.npz", "stored.npz"}) {
    const std::string bytes = slurp(dir / f);
    const auto m = ptq::io::parse_npz(bytes.data(), bytes.size(), f);
    const auto r = ptq::io::read_npz(dir / f);
    REQUIRE(m.size() == 2);
    CHECK(m.at("w").to<float>() == w);
    CHECK(m.at("w").name() == std::string(f) + " (key 'w')");
    CHECK(r.at("s").to<float>() == m.at("s").to<float>());
  }
  // (file name, archive bytes, message part): every reader must throw ptq::error with it.
  std::vector<std::pair<std::string, std::pair<std::string, std::string>>> bad;
  const std::string stored = slurp(dir / "stored.npz"), deflated = slurp(dir / "good.npz");
  {
    std::string b = stored;
    const std::size_t at = b.find("NUMPY") + 128;  // first member's data
    b[at + 3] = static_cast<char>(b[at + 3] ^ 0x40);
    bad.push_back({"crc.npz", {b, "(key 'w'): zip read error: CRC error"}});
  }
  {
    std::string b = deflated;
    const std::size_t at = 30 + 5 + 20;  // inside the first member's deflate stream
    b[at] = static_cast<char>(b[at] ^ 0xff);
    bad.push_back({"inflate.npz", {b, "(key 'w'): "}});
  }
  for (std::size_t cut : {std::size_t(0), std::size_t(4), std::size_t(22), stored.size() / 2, stored.size() - 22,
                          stored.size() - 1})
    bad.push_back({"cut" + std::to_string(cut) + ".npz", {stored.substr(0, cut), ""}});
  write_zip(dir / "txt.npz", {{"w.npy", a}, {"notes.txt", "hello"}}, false);
  bad.push_back({"txt.npz", {slurp(dir / "txt.npz"), "member 'notes.txt' is not a .npy file"}});
  write_zip(dir / "c8.npz", {{"c.npy", npy("{'descr': '<c8', 'fortran_order': False, 'shape': (1,), }", std::string(8, '\0'))}},
            true);
  bad.push_back({"c8.npz", {slurp(dir / "c8.npz"), "(key 'c'): unsupported dtype '<c8'"}});
  write_zip(dir / "cut_member.npz", {{"w.npy", a.substr(0, a.size() - 4)}}, true);
  bad.push_back({"cut_member.npz", {slurp(dir / "cut_member.npz"), "(key 'w'): the data are truncated"}});
  bad.push_back({"garbage.npz", {std::string(300, '\x5a'), "cannot open as a zip archive"}});
  for (const auto& entry : bad) {
    const std::string& file = entry.first;
    const std::string& bytes = entry.second.first;
    const std::string& what = entry.second.second;
    CAPTURE(file);
    spit(dir / file, bytes);
    CHECK_THROWS_WITH_AS(ptq::io::read_npz(dir / file), contains("ptq::io::read_npz: " + dir / file), ptq::error);
    CHECK_THROWS_WITH_AS(ptq::io::read_npz(dir / file), contains(what), ptq::error);
    CHECK_THROWS_WITH_AS(ptq::io::parse_npz(bytes.data(), bytes.size(), file), contains("ptq::io::parse_npz: " + file),
                         ptq::error);
    CHECK_THROWS_WITH_AS(ptq::io::parse_npz(bytes.data(), bytes.size(), file), contains(what), ptq::error);
  }
  CHECK_THROWS_WITH_AS(ptq::io::parse_npz(nullptr, 5, "null"), contains("null: bytes is null"), ptq::error);
}

namespace {

// A torchvision-style BasicBlock state_dict, one block per stage in `stages`, as arrays.
std::map<std::string, ptq::io::array> tiny_state_dict(int stages = 2, ptq::index width = 2, ptq::index classes = 3) {
  std::map<std::string, ptq::io::array> sd;
  double t = 0.1;
  auto put = [&](const std::string& key, const std::vector<ptq::index>& shape, double base) {
    ptq::index n = 1;
    for (ptq::index d : shape) n *= d;
    std::vector<float> v(static_cast<std::size_t>(n));
    for (float& x : v) x = static_cast<float>(base + 0.1 * std::sin(t += 0.7));
    sd[key] = ptq::io::array::from(v.data(), shape, key);
  };
  auto conv = [&](const std::string& name, const std::string& bn, ptq::index k, ptq::index c, ptq::index r) {
    put(name + ".weight", {k, c, r, r}, 0.0);
    put(bn + ".weight", {k}, 1.0);
    put(bn + ".bias", {k}, 0.0);
    put(bn + ".running_mean", {k}, 0.0);
    put(bn + ".running_var", {k}, 1.0);
  };
  conv("conv1", "bn1", width, 1, 3);
  ptq::index in = width;
  for (int i = 1; i <= stages; ++i) {
    const ptq::index out = width << (i - 1);
    const std::string p = "layer" + std::to_string(i) + ".0";
    conv(p + ".conv1", p + ".bn1", out, in, 3);
    conv(p + ".conv2", p + ".bn2", out, out, 3);
    if (i > 1) conv(p + ".downsample.0", p + ".downsample.1", out, in, 1);
    in = out;
  }
  put("fc.weight", {classes, in}, 0.0);
  put("fc.bias", {classes}, 0.0);
  return sd;
}

void write_state_dict(const std::string& path, const std::map<std::string, ptq::io::array>& sd) {
  std::vector<std::pair<std::string, std::string>> members;
  for (const auto& kv : sd) members.push_back({kv.first + ".npy", npy_of(kv.second)});
  write_zip(path, members, true);
}

}  // namespace

TEST_CASE("bad_input: ResNet weight archives: missing key, extra key (warned), wrong shape, dtype, values, corrupt entry") {
  using ptq_example::resnet;
  temp_dir dir;
  const auto good = tiny_state_dict();
  write_state_dict(dir / "good.npz", good);
  const resnet net = resnet::load(dir / "good.npz");
  CHECK(net.warnings().empty());
  CHECK(net.classes() == 3);
  CHECK(net.convs().size() == 6);

  SUBCASE("extra keys outside the network: warned, not fatal, the same network") {
    auto sd = good;
    const std::vector<std::int64_t> epoch = {38};
    sd["training_epoch"] = ptq::io::array::from(epoch.data(), {});
    sd["optimizer.state.0.momentum"] = sd.at("fc.weight");
    sd["layer2_notes"] = sd.at("fc.bias");  // "layer2_" is not a stage prefix
    write_state_dict(dir / "extra.npz", sd);
    const resnet e = resnet::load(dir / "extra.npz");
    REQUIRE(e.warnings().size() == 3);
    CHECK(e.warnings()[0] == "key 'layer2_notes' is not part of a torchvision ResNet: ignored");
    CHECK(e.warnings()[1] == "key 'optimizer.state.0.momentum' is not part of a torchvision ResNet: ignored");
    CHECK(e.warnings()[2] == "key 'training_epoch' is not part of a torchvision ResNet: ignored");
    REQUIRE(e.convs().size() == net.convs().size());
    for (std::size_t i = 0; i < e.convs().size(); ++i) CHECK(e.convs()[i].weight == net.convs()[i].weight);
    const resnet copy = e;  // warnings travel with copies
    CHECK(copy.warnings() == e.warnings());
  }
  SUBCASE("extra keys inside the network's modules are errors: they would change it") {
    for (const char* key : {"layer1.0.conv1.bias", "conv1.bias", "fc.extra", "layer3.0.conv1.weight", "bn1.scale"}) {
      auto sd = good;
      sd[key] = sd.at("fc.bias");
      write_state_dict(dir / "inside.npz", sd);
      CAPTURE(key);
      CHECK_THROWS_WITH_AS(resnet::load(dir / "inside.npz"),
                           contains("ptq_example::resnet::load: " + dir / "inside.npz" + ": "), ptq::error);
      CHECK_THROWS_WITH_AS(resnet::load(dir / "inside.npz"), contains(std::string("key '") + key + "'"), ptq::error);
    }
  }
  SUBCASE("every missing key is named with the file") {
    int n = 0;
    for (const auto& kv : good) {
      auto sd = good;
      sd.erase(kv.first);
      write_state_dict(dir / "missing.npz", sd);
      CAPTURE(kv.first);
      const std::string file = dir / "missing.npz";
      CHECK_THROWS_WITH_AS(resnet::load(file), contains(file + ": ptq_example::resnet::from_state_dict: key '"),
                           ptq::error);
      // Without the first conv of stage 2 the network ends after stage 1: fc no longer fits.
      const bool stage_head = kv.first == "layer2.0.conv1.weight";
      CHECK_THROWS_WITH_AS(resnet::load(file),
                           contains(stage_head ? "key 'fc.weight' has shape [3, 4]: 4 input features, expected 2"
                                               : "key '" + kv.first + "' is missing"),
                           ptq::error);
      ++n;
    }
    CHECK(n == static_cast<int>(good.size()));
  }
  SUBCASE("a tensor of the wrong shape: the key, its shape and the expected one") {
    struct bad_shape {
      const char* key;
      std::vector<ptq::index> shape;
      const char* what;
    };
    const std::vector<bad_shape> cases = {
        {"layer1.0.conv2.weight", {2, 2, 5, 5}, "key 'layer1.0.conv2.weight' has shape [2, 2, 5, 5]: kernel 5x5, expected 3x3"},
        {"layer1.0.conv2.weight", {2, 3, 3, 3}, "has shape [2, 3, 3, 3]: 3 input channels, expected 2"},
        {"layer2.0.downsample.0.weight", {3, 2, 1, 1}, "has shape [3, 2, 1, 1]: 3 output channels, expected 4"},
        {"layer1.0.bn1.running_var", {3}, "key 'layer1.0.bn1.running_var' has shape [3], expected [2]"},
        {"bn1.weight", {2, 1}, "key 'bn1.weight' has shape [2, 1], expected [2]"},
        {"fc.weight", {3, 5}, "key 'fc.weight' has shape [3, 5]: 5 input features, expected 4"},
        {"fc.bias", {4}, "key 'fc.bias' has shape [4], expected [3]"},
        {"fc.weight", {3, 4, 1}, "key 'fc.weight' has shape [3, 4, 1], expected rank 2"},
        {"conv1.weight", {2, 1, 3}, "key 'conv1.weight' has shape [2, 1, 3], expected rank 4"},
        {"layer1.0.conv1.weight", {0, 2, 3, 3}, "with an empty dimension"},
    };
    for (const auto& c : cases) {
      auto sd = good;
      std::vector<float> zeros(256, 0.0f);
      sd[c.key] = ptq::io::array::from(zeros.data(), c.shape, c.key);
      write_state_dict(dir / "shape.npz", sd);
      CAPTURE(c.key);
      CHECK_THROWS_WITH_AS(resnet::load(dir / "shape.npz"), contains(dir / "shape.npz" + ": "), ptq::error);
      CHECK_THROWS_WITH_AS(resnet::load(dir / "shape.npz"), contains(c.what), ptq::error);
    }
  }
  SUBCASE("a wrong dtype, NaN, +Inf, -Inf: the key and the element") {
    auto sd = good;
    std::vector<std::int32_t> ints(3, 1);
    sd["fc.bias"] = ptq::io::array::from(ints.data(), {3});
    write_state_dict(dir / "dtype.npz", sd);
    CHECK_THROWS_WITH_AS(resnet::load(dir / "dtype.npz"),
                         contains("key 'fc.bias' has dtype int32, expected float32 or float64"), ptq::error);
    for (const float bad : {std::numeric_limits<float>::quiet_NaN(), std::numeric_limits<float>::infinity(),
                            -std::numeric_limits<float>::infinity()}) {
      sd = good;
      std::vector<float> v = sd.at("layer2.0.conv1.weight").to<float>();
      v[17] = bad;
      sd["layer2.0.conv1.weight"] = ptq::io::array::from(v.data(), sd.at("layer2.0.conv1.weight").shape());
      write_state_dict(dir / "values.npz", sd);
      const std::string shown = std::isnan(bad) ? "nan" : bad > 0 ? "inf" : "-inf";
      CAPTURE(shown);
      CHECK_THROWS_WITH_AS(resnet::load(dir / "values.npz"),
                           contains("key 'layer2.0.conv1.weight' element 17 = " + shown + " is not finite"), ptq::error);
    }
  }
  SUBCASE("a corrupt or truncated archive: the file and (for a member) the key") {
    std::vector<std::pair<std::string, std::string>> members;
    for (const auto& kv : good) members.push_back({kv.first + ".npy", npy_of(kv.second)});
    write_zip(dir / "stored.npz", members, false);
    std::string b = slurp(dir / "stored.npz");
    const std::size_t at = b.find("fc.bias.npy");  // the name in its local header
    REQUIRE(at != std::string::npos);
    const std::size_t extra = static_cast<unsigned char>(b[at - 2]) | static_cast<unsigned char>(b[at - 1]) << 8;
    const std::size_t data = at + 11 + extra + 128;  // past the name, extra field and .npy header
    b[data + 2] = static_cast<char>(b[data + 2] ^ 0x10);  // a data byte of fc.bias
    spit(dir / "corrupt.npz", b);
    CHECK_THROWS_WITH_AS(resnet::load(dir / "corrupt.npz"),
                         contains("ptq::io::read_npz: " + dir / "corrupt.npz" + " (key 'fc.bias'): zip read error: CRC error"),
                         ptq::error);
    spit(dir / "cut.npz", b.substr(0, b.size() / 2));
    CHECK_THROWS_WITH_AS(resnet::load(dir / "cut.npz"), contains(dir / "cut.npz"), ptq::error);
    CHECK_THROWS_WITH_AS(resnet::load(dir.path), contains(dir.path), ptq::error);  // a directory
    CHECK_THROWS_WITH_AS(resnet::load(dir / "absent.npz"), contains(dir / "absent.npz"), ptq::error);
  }
}

}  // namespace ptq_test_bad_files
