// test_npy.cpp: .npy reading and writing against files numpy writes and reads at test time.
#include <doctest/doctest.h>

#include "io_test_util.hpp"
#include <stdlib.h>

#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <limits>
#include <ptq/io/npy.hpp>
#include <sstream>
#include <string>
#include <vector>

// Everything of this file in its own namespace: the test binary is a unity build.
namespace ptq_test_npy {

namespace {

using ptq::io::dtype;

using namespace ptq_io_test;

// Runs `script` with numpy's python, args appended; a missing python or numpy FAILS the test.
std::string python(const temp_dir& dir, const std::string& script, const std::string& args = "") {
  return run_python(dir, script, args);
}

// The values both numpy and this test compute for element k of each dtype.
double value(dtype t, std::int64_t k) {
  switch (t) {
    case dtype::float32:
    case dtype::float64:
      return static_cast<double>(k) * 0.25 - 3.5;
    case dtype::int64:
      return static_cast<double>(k * 1000003 - (std::int64_t(1) << 40));
    case dtype::int32:
      return static_cast<double>(k * 7919 - 100000);
    case dtype::uint8:
      return static_cast<double>((k * 37) % 256);
  }
  return 0;
}
const char* const python_values = R"(
import numpy as np
def values(dt, n):
    k = np.arange(n, dtype=np.int64)
    if dt in ('f4', 'f8'): return (k * 0.25 - 3.5).astype(dt)
    if dt == 'i8': return k * 1000003 - 2**40
    if dt == 'i4': return (k * 7919 - 100000).astype('i4')
    if dt == 'u1': return (k * 37 % 256).astype('u1')
)";

const std::vector<std::pair<std::string, dtype>> dtypes = {
    {"f4", dtype::float32}, {"f8", dtype::float64}, {"i8", dtype::int64}, {"i4", dtype::int32}, {"u1", dtype::uint8}};
const std::vector<std::pair<std::string, std::vector<ptq::index>>> shapes = {
    {"s0", {}}, {"s1", {7}}, {"s4", {2, 3, 4, 5}}, {"e1", {0}}, {"e3", {3, 0, 2}}};

ptq::index count(const std::vector<ptq::index>& s) {
  ptq::index n = 1;
  for (ptq::index d : s) n *= d;
  return n;
}

// Checks shape, dtype, 64-byte alignment and every value against value(t, k) (C order).
void check_array(const ptq::io::array& a, dtype t, const std::vector<ptq::index>& shape) {
  CHECK(a.type() == t);
  CHECK(a.shape() == shape);
  CHECK(a.rank() == static_cast<ptq::index>(shape.size()));
  REQUIRE(a.size() == count(shape));
  CHECK(reinterpret_cast<std::uintptr_t>(a.bytes()) % 64 == 0);
  const std::vector<double> v = a.to<double>();
  REQUIRE(v.size() == static_cast<std::size_t>(a.size()));
  int bad = 0;
  for (std::size_t k = 0; k < v.size(); ++k)
    if (v[k] != value(t, static_cast<std::int64_t>(k)) && ++bad < 5)
      CHECK(v[k] == value(t, static_cast<std::int64_t>(k)));
  CHECK(bad == 0);
}

template <class T>
std::vector<T> make_values(ptq::index n) {
  std::vector<T> v(static_cast<std::size_t>(n));
  for (ptq::index k = 0; k < n; ++k)
    v[static_cast<std::size_t>(k)] = static_cast<T>(value(ptq::io::dtype_of<T>::value, k));
  return v;
}

// A .npy with the given version and header dict text (no alignment padding) and raw data.
std::string npy_bytes(const std::string& dict, const std::string& data, int major = 1, int minor = 0) {
  std::string h = dict + "\n";
  std::string out = std::string("\x93NUMPY", 6) + static_cast<char>(major) + static_cast<char>(minor);
  const std::size_t len = h.size();
  out += static_cast<char>(len & 0xff);
  out += static_cast<char>((len >> 8) & 0xff);
  if (major != 1) out += std::string(2, '\0');
  return out + h + data;
}
std::string f32_bytes(std::vector<float> v) {
  return std::string(reinterpret_cast<const char*>(v.data()), v.size() * sizeof(float));
}

}  // namespace

TEST_CASE("io: read_npy reads every dtype and shape that numpy.save writes") {
  temp_dir dir;
  python(dir, std::string(python_values) + R"(
import sys
d = sys.argv[1]
shapes = {'s0': (), 's1': (7,), 's4': (2, 3, 4, 5), 'e1': (0,), 'e3': (3, 0, 2)}
for dt in ('f4', 'f8', 'i8', 'i4', 'u1'):
    for name, sh in shapes.items():
        np.save(f'{d}/{dt}_{name}.npy', values(dt, int(np.prod(sh))).reshape(sh))
    a = values(dt, 120).reshape(2, 3, 4, 5)
    np.save(f'{d}/be_{dt}.npy', a.astype('>' + dt[0] + dt[1:]))            # big-endian
    np.save(f'{d}/fo_{dt}.npy', np.asfortranarray(a))                       # fortran_order True
    for v in (2, 3):
        with open(f'{d}/v{v}_{dt}.npy', 'wb') as f:
            np.lib.format.write_array(f, a, version=(v, 0))
)",
         dir.path);

  for (const auto& code_t : dtypes) {
    const auto& code = code_t.first;
    const auto& t = code_t.second;
    for (const auto& sname_shape : shapes) {
      const auto& sname = sname_shape.first;
      const auto& shape = sname_shape.second;
      CAPTURE(code);
      CAPTURE(sname);
      check_array(ptq::io::read_npy(dir / (code + "_" + sname + ".npy")), t, shape);
    }
    CAPTURE(code);
    const std::vector<ptq::index> s4 = {2, 3, 4, 5};
    const std::string be = slurp(dir / ("be_" + code + ".npy"));
    CHECK(be.find(code == "u1" ? "'|u1'" : "'>" + code + "'") != std::string::npos);
    check_array(ptq::io::read_npy(dir / ("be_" + code + ".npy")), t, s4);
    const std::string fo = slurp(dir / ("fo_" + code + ".npy"));
    CHECK(fo.find("'fortran_order': True") != std::string::npos);
    check_array(ptq::io::read_npy(dir / ("fo_" + code + ".npy")), t, s4);
    for (int v : {2, 3}) {
      const std::string f = dir / ("v" + std::to_string(v) + "_" + code + ".npy");
      CHECK(static_cast<int>(slurp(f)[6]) == v);
      check_array(ptq::io::read_npy(f), t, s4);
    }
  }
}

TEST_CASE("io: seeded random float32 and float64 arrays match numpy's printed values") {
  temp_dir dir;
  python(dir, R"(
import sys, numpy as np
d = sys.argv[1]
rng = np.random.default_rng(2019)
for dt in ('f4', 'f8'):
    a = (rng.standard_normal((5, 6, 7)) * 10.0).astype(dt)
    np.save(f'{d}/r_{dt}.npy', a)
    with open(f'{d}/r_{dt}.txt', 'w') as f:
        f.write('\n'.join(repr(float(x)) for x in a.ravel()))
)",
         dir.path);
  for (const char* dt : {"f4", "f8"}) {
    CAPTURE(dt);
    const ptq::io::array a = ptq::io::read_npy(dir / (std::string("r_") + dt + ".npy"));
    std::istringstream text(slurp(dir / (std::string("r_") + dt + ".txt")));
    std::vector<double> expect;
    for (std::string line; std::getline(text, line);) expect.push_back(std::strtod(line.c_str(), nullptr));
    REQUIRE(expect.size() == 210);
    REQUIRE(a.size() == 210);
    CHECK(a.shape() == std::vector<ptq::index>{5, 6, 7});
    int bad = 0;
    if (dt[1] == '4') {
      const float* p = a.data<float>();
      for (std::size_t i = 0; i < expect.size(); ++i) bad += p[i] != static_cast<float>(expect[i]);
    } else {
      const double* p = a.data<double>();
      for (std::size_t i = 0; i < expect.size(); ++i) bad += p[i] != expect[i];
    }
    CHECK(bad == 0);
  }
}

TEST_CASE("io: write_npy writes what numpy.load reads back exactly and read_npy round-trips it") {
  temp_dir dir;
  auto write_all = [&](auto tag, const std::string& code) {
    using T = decltype(tag);
    for (const auto& sname_shape : shapes) {
      const auto& sname = sname_shape.first;
      const auto& shape = sname_shape.second;
      ptq::io::write_npy(dir / ("w_" + code + "_" + sname + ".npy"), make_values<T>(count(shape)).data(), shape);
    }
  };
  write_all(float{}, "f4");
  write_all(double{}, "f8");
  write_all(std::int64_t{}, "i8");
  write_all(std::int32_t{}, "i4");
  write_all(std::uint8_t{}, "u1");

  const std::string out = python(dir, std::string(python_values) + R"(
import sys, struct
d = sys.argv[1]
shapes = {'s0': (), 's1': (7,), 's4': (2, 3, 4, 5), 'e1': (0,), 'e3': (3, 0, 2)}
ok = 0
for dt in ('f4', 'f8', 'i8', 'i4', 'u1'):
    for name, sh in shapes.items():
        path = f'{d}/w_{dt}_{name}.npy'
        raw = open(path, 'rb').read()
        assert raw[:8] == b'\x93NUMPY\x01\x00', raw[:8]
        hl = struct.unpack('<H', raw[8:10])[0]
        assert (10 + hl) % 64 == 0, hl
        assert raw[10 + hl - 1:10 + hl] == b'\n'
        a = np.load(path)
        assert a.dtype == np.dtype(dt), (path, a.dtype)
        assert a.shape == sh, (path, a.shape)
        assert a.flags.c_contiguous
        assert np.array_equal(a, values(dt, int(np.prod(sh))).reshape(sh)), path
        assert len(raw) == 10 + hl + a.nbytes
        ok += 1
print('checked', ok)
)",
                                 dir.path);
  CHECK(out.find("checked 25") != std::string::npos);

  for (const auto& code_t : dtypes) {
    const auto& code = code_t.first;
    const auto& t = code_t.second;
    for (const auto& sname_shape : shapes) {
      const auto& sname = sname_shape.first;
      const auto& shape = sname_shape.second;
      CAPTURE(code);
      CAPTURE(sname);
      const ptq::io::array a = ptq::io::read_npy(dir / ("w_" + code + "_" + sname + ".npy"));
      check_array(a, t, shape);
      // write the array object again: same bytes
      ptq::io::write_npy(dir / "again.npy", a);
      CHECK(slurp(dir / "again.npy") == slurp(dir / ("w_" + code + "_" + sname + ".npy")));
    }
  }

  SUBCASE("a header longer than 65535 bytes is written as version 2.0") {
    const std::vector<ptq::index> shape(30000, 1);  // 30000 dims: "1, " each
    const float x = 2.5f;
    ptq::io::write_npy(dir / "long.npy", &x, shape);
    const std::string raw = slurp(dir / "long.npy");
    REQUIRE(raw.size() > 12);
    CHECK(raw[6] == 2);
    const std::size_t hl = static_cast<unsigned char>(raw[8]) | static_cast<unsigned char>(raw[9]) << 8 |
                           static_cast<std::size_t>(static_cast<unsigned char>(raw[10])) << 16;
    CHECK(hl > 65535);
    CHECK((12 + hl) % 64 == 0);
    const ptq::io::array a = ptq::io::read_npy(dir / "long.npy");
    CHECK(a.shape() == shape);
    CHECK(a.data<float>()[0] == 2.5f);
  }
  SUBCASE("bad arguments throw before anything is written") {
    const float x = 0;
    CHECK_THROWS_WITH_AS(ptq::io::write_npy(dir / "neg.npy", &x, {2, -1}), doctest::Contains("negative"), ptq::error);
    CHECK_THROWS_WITH_AS(ptq::io::write_npy<float>(dir / "null.npy", nullptr, {3}), doctest::Contains("null"),
                         ptq::error);
    CHECK_FALSE(std::filesystem::exists(dir / "neg.npy"));
    CHECK_THROWS_WITH_AS(ptq::io::write_npy(dir.path + "/no/such/dir/x.npy", &x, {1}),
                         doctest::Contains("cannot open for writing"), ptq::error);
  }
}

TEST_CASE("io: header spellings Python's literal_eval accepts are read like numpy reads them") {
  temp_dir dir;
  const std::string d3 = f32_bytes({1.5f, -2.0f, 4.25f});
  const std::vector<std::pair<std::string, std::string>> files = {
      {"reordered", npy_bytes("{'shape': (3,), 'fortran_order': False, 'descr': '<f4'}", d3)},
      {"double_quotes", npy_bytes("{\"descr\": \"<f4\", \"fortran_order\": False, \"shape\": (3, )}", d3)},
      {"spaces", npy_bytes("{ 'descr' : '<f4' ,\n 'fortran_order' : False , 'shape' : ( 3 , ) , }   ", d3)},
      {"native_order", npy_bytes("{'descr': '=f4', 'fortran_order': False, 'shape': (3,), }", d3)},
      {"fortran_1d", npy_bytes("{'descr': '<f4', 'fortran_order': True, 'shape': (3,), }", d3)},
      {"v2", npy_bytes("{'descr': '<f4', 'fortran_order': False, 'shape': (3,), }", d3, 2)},
      {"v3", npy_bytes("{'descr': '<f4', 'fortran_order': False, 'shape': (3,), }", d3, 3)},
  };
  std::string names;
  for (const auto& name_bytes : files) {
    const auto& name = name_bytes.first;
    const auto& bytes = name_bytes.second;
    spit(dir / (name + ".npy"), bytes);
    names += " " + name;
  }
  const std::string out = python(dir, R"(
import sys, numpy as np
d = sys.argv[1]
for name in sys.argv[2:]:
    a = np.load(f'{d}/{name}.npy')
    assert a.dtype == np.float32 and a.shape == (3,) and list(a) == [1.5, -2.0, 4.25], (name, a)
print('numpy read', len(sys.argv) - 2)
)",
                                 dir.path + names);
  CHECK(out.find("numpy read 7") != std::string::npos);
  for (const auto& name_bytes : files) {
    const auto& name = name_bytes.first;
    const auto& bytes = name_bytes.second;
    CAPTURE(name);
    const ptq::io::array a = ptq::io::read_npy(dir / (name + ".npy"));
    REQUIRE(a.shape() == std::vector<ptq::index>{3});
    CHECK(a.data<float>()[0] == 1.5f);
    CHECK(a.data<float>()[1] == -2.0f);
    CHECK(a.data<float>()[2] == 4.25f);
    const ptq::io::array m = ptq::io::parse_npy(bytes.data(), bytes.size(), name);
    CHECK(m.to<double>() == a.to<double>());
  }
  // 0-d: one element; uint8 under '<' and '|'
  const std::string sb =
      npy_bytes("{'descr': '<f8', 'fortran_order': False, 'shape': ()}", std::string("\0\0\0\0\0\0\x0c\x40", 8));
  const ptq::io::array s = ptq::io::parse_npy(sb.data(), sb.size(), "scalar");
  CHECK(s.rank() == 0);
  CHECK(s.size() == 1);
  CHECK(s.data<double>()[0] == 3.5);
  for (const char* d : {"<u1", "|u1", ">u1"}) {
    const std::string b =
        npy_bytes(std::string("{'descr': '") + d + "', 'fortran_order': False, 'shape': (2,)}", "\x07\xff");
    const ptq::io::array u = ptq::io::parse_npy(b.data(), b.size(), d);
    CHECK(u.data<std::uint8_t>()[0] == 7);
    CHECK(u.data<std::uint8_t>()[1] == 255);
  }
}

TEST_CASE("io: malformed .npy input throws ptq::error naming the file and what is wrong") {
  temp_dir dir;
  const std::vector<float> six = {0, 1, 2, 3, 4, 5};
  ptq::io::write_npy(dir / "good.npy", six.data(), {2, 3});
  const std::string good = slurp(dir / "good.npy");
  REQUIRE(good.size() == 128 + 24);

  // Each case: (name, bytes, expected message part). Checked through read_npy (file) and parse_npy (memory).
  auto check_bad = [&](const std::string& name, const std::string& bytes, const std::string& what) {
    CAPTURE(name);
    const std::string path = dir / (name + ".npy");
    spit(path, bytes);
    CHECK_THROWS_WITH_AS(ptq::io::read_npy(path), contains(path), ptq::error);
    CHECK_THROWS_WITH_AS(ptq::io::read_npy(path), contains(what), ptq::error);
    CHECK_THROWS_WITH_AS(ptq::io::parse_npy(bytes.data(), bytes.size(), "mem:" + name),
                         contains("ptq::io::parse_npy: mem:" + name + ": "), ptq::error);
    CHECK_THROWS_WITH_AS(ptq::io::parse_npy(bytes.data(), bytes.size(), "mem:" + name), contains(what), ptq::error);
  };

  SUBCASE("truncated at every byte: magic, version, header length, header, data") {
    for (std::size_t len = 0; len < good.size(); ++len) {
      const std::string what = len < 8     ? "ends inside the magic string and version"
                               : len < 10  ? "ends inside the header length field"
                               : len < 128 ? "the header length 118 runs past the end of the file"
                                           : "the data are truncated: shape (2, 3) of float32 needs 24 bytes but only";
      check_bad("cut" + std::to_string(len), good.substr(0, len), what);
    }
  }
  SUBCASE("magic, version, header length") {
    std::string b = good;
    b[5] = 'Z';
    check_bad("magic", b, "not a .npy file: it starts with \"\\x93NUMPZ\"");
    check_bad("text", "hello, this is not an array at all", "not a .npy file");
    for (auto [major, minor] : {std::pair<int, int>{4, 0}, {1, 1}, {0, 0}, {2, 1}}) {
      b = good;
      b[6] = static_cast<char>(major);
      b[7] = static_cast<char>(minor);
      check_bad("version", b, "unsupported .npy format version " + std::to_string(major) + "." + std::to_string(minor));
    }
    b = good;
    b[8] = '\x60';
    b[9] = '\xea';  // 60000
    check_bad("header_len", b, "the header length 60000 runs past the end of the file (152 bytes");
    check_bad("trailing", good + "abcd", "4 trailing bytes after the 24 data bytes");
  }
  SUBCASE("dtypes: unsupported, or a byte order that cannot be") {
    const std::string d = f32_bytes({1, 2});
    for (const char* descr : {"<c8", "|O", "|b1", "<f2", "<U3", "|V8", "f4", "<i2", "<u4", "<f16", ""}) {
      check_bad(std::string("descr") + (descr + (*descr == '<' || *descr == '|' ? 1 : 0)),
                npy_bytes(std::string("{'descr': '") + descr + "', 'fortran_order': False, 'shape': (2,), }", d),
                std::string("unsupported dtype '") + descr + "'");
    }
    check_bad("bar_f4", npy_bytes("{'descr': '|f4', 'fortran_order': False, 'shape': (2,), }", d),
              "has an invalid byte order '|'");
    check_bad("structured", npy_bytes("{'descr': [('a', '<f4')], 'fortran_order': False, 'shape': (2,), }", d),
              "'descr' is not a string (structured dtypes are not supported)");
    check_bad("nonascii",
              npy_bytes("{'descr': '<f\xe9"
                        "4', 'fortran_order': False, 'shape': (2,), }",
                        d),
              "unsupported dtype '<f\\xe94'");
  }
  SUBCASE("shapes: negative, not a tuple, overflowing, lying about the size") {
    const std::string d = f32_bytes({1, 2});
    auto h = [&](const std::string& shape, const std::string& descr = "<f4") {
      return npy_bytes("{'descr': '" + descr + "', 'fortran_order': False, 'shape': " + shape + ", }", d);
    };
    check_bad("neg", h("(-1,)"), "shape[0] = -1 is negative");
    check_bad("neg2", h("(2, -3)"), "shape[1] = -3 is negative");
    check_bad("notuple", h("(2)"), "'shape' (2) is not a tuple: a 1-D shape is written (n,)");
    check_bad("list", h("[2]"), "'shape' is not a tuple");
    check_bad("int", h("2"), "'shape' is not a tuple");
    check_bad("float", h("(1.5,)"), "shape[0] is not a decimal integer");
    check_bad("hex", h("(0x2,)"), "shape[0] is not a decimal integer");
    check_bad("lead0", h("(02,)"), "shape[0] = 02 has a leading zero");
    check_bad("comma2", h("(2,,)"), "shape[1] is not a decimal integer");
    check_bad("open", h("(2, "), "not a decimal integer");
    check_bad("digits", h("(99999999999999999999999,)"), "shape[0] = 99999999999999999999999 overflows");
    check_bad("product", h("(1099511627776, 1099511627776)", "<f8"), "(size overflow)");
    check_bad("product_bytes", h("(2305843009213693952,)", "<f8"), "(size overflow)");
    // A lying header: ~8 TB declared, 8 bytes present. Refused before any allocation.
    check_bad("huge", h("(1000000000000,)", "<f8"),
              "the data are truncated: shape (1000000000000,) of float64 needs 8000000000000 bytes but only 8 follow");
    check_bad("big", h("(2147483648,)"), "needs 8589934592 bytes but only 8 follow");
    check_bad("short", h("(3,)"), "needs 12 bytes but only 8 follow");
    check_bad("long", h("(1,)"), "4 trailing bytes");
    check_bad("empty_data", h("(0,)"), "8 trailing bytes");
  }
  SUBCASE("header dict syntax") {
    const std::string d = f32_bytes({1, 2});
    check_bad("fortran_int", npy_bytes("{'descr': '<f4', 'fortran_order': 0, 'shape': (2,), }", d),
              "'fortran_order' is not True or False");
    check_bad("fortran_word", npy_bytes("{'descr': '<f4', 'fortran_order': Truely, 'shape': (2,), }", d),
              "'fortran_order' is not True or False");
    check_bad("missing", npy_bytes("{'descr': '<f4', 'fortran_order': False, }", d), "the key 'shape' is missing");
    check_bad("missing2", npy_bytes("{'shape': (2,)}", d), "the key 'descr' is missing");
    check_bad("emptydict", npy_bytes("{}", d), "the key 'descr' is missing");
    check_bad("unknown", npy_bytes("{'descr': '<f4', 'fortran_order': False, 'shape': (2,), 'x': 1}", d),
              "unknown key 'x'");
    check_bad("dup", npy_bytes("{'descr': '<f4', 'descr': '<f4', 'fortran_order': False, 'shape': (2,)}", d),
              "duplicate key 'descr'");
    check_bad("nobrace", npy_bytes("'descr': '<f4', 'fortran_order': False, 'shape': (2,)", d),
              "the header dict does not start with '{'");
    check_bad("leadspace", npy_bytes(" {'descr': '<f4', 'fortran_order': False, 'shape': (2,)}", d),
              "the header dict does not start with '{'");
    check_bad("noclose", npy_bytes("{'descr': '<f4', 'fortran_order': False, 'shape': (2,)", d),
              "',' or '}' expected after the value of 'shape'");
    check_bad("junk", npy_bytes("{'descr': '<f4', 'fortran_order': False, 'shape': (2,)} x", d),
              "unexpected text after the closing '}'");
    check_bad("nocolon", npy_bytes("{'descr' '<f4', 'fortran_order': False, 'shape': (2,)}", d),
              "':' expected after key 'descr'");
    check_bad("nocomma", npy_bytes("{'descr': '<f4' 'fortran_order': False, 'shape': (2,)}", d),
              "',' or '}' expected after the value of 'descr'");
    check_bad("doublecomma", npy_bytes("{'descr': '<f4',, 'fortran_order': False, 'shape': (2,)}", d),
              "a key must be a quoted string");
    check_bad("unquoted", npy_bytes("{descr: '<f4', 'fortran_order': False, 'shape': (2,)}", d),
              "a key must be a quoted string");
    check_bad("unterminated", npy_bytes("{'descr: '<f4', 'fortran_order': False, 'shape': (2,)}", d),
              "unknown key 'descr: '");
    check_bad("unterminated2", npy_bytes("{'descr': '<f4", d), "unterminated string");
    check_bad("escape", npy_bytes("{'descr': '<f\\x34', 'fortran_order': False, 'shape': (2,)}", d),
              "escape sequences are not supported");
    check_bad(
        "nul",
        npy_bytes(std::string("{'descr': '<f4', 'fortran_order': False, 'shape': (2,)}") + std::string(1, '\0'), d),
        "unexpected text after the closing '}'");
  }
  SUBCASE("not a file") {
    CHECK_THROWS_WITH_AS(ptq::io::read_npy(dir / "absent.npy"), contains(dir / "absent.npy: no such file"), ptq::error);
    CHECK_THROWS_WITH_AS(ptq::io::read_npy(dir.path), contains(dir.path + ": is not a regular file"), ptq::error);
  }
}

TEST_CASE("io: numpy also refuses the headers read_npy refuses for their syntax") {
  // Where read_npy refuses a header for its syntax, numpy does too. (read_npy is stricter
  // only where numpy is lax: a duplicate key, and shape (-1,), which numpy.load takes as
  // "whatever is there".)
  temp_dir dir;
  const std::string d = f32_bytes({1, 2});
  const std::vector<std::string> dicts = {
      "{'descr': '<f4', 'fortran_order': 0, 'shape': (2,), }",
      "{'descr': '<f4', 'fortran_order': False, }",
      "{'descr': '<f4', 'fortran_order': False, 'shape': (2,), 'x': 1}",
      "{'descr': '<f4', 'fortran_order': False, 'shape': (2), }",
      "{'descr': '<f4', 'fortran_order': False, 'shape': [2], }",
      "{'descr': '<f4', 'fortran_order': False, 'shape': (1.5,), }",
      "{'descr': '<f4', 'fortran_order': False, 'shape': (02,), }",
      "{'descr': '<f4', 'fortran_order': False, 'shape': (2,)} x",
      "{'descr': '<f4' 'fortran_order': False, 'shape': (2,)}",
      "{'descr': '<f4', 'fortran_order': False, 'shape': (3,), }",
  };
  std::string args;
  for (std::size_t i = 0; i < dicts.size(); ++i) {
    spit(dir / ("h" + std::to_string(i) + ".npy"), npy_bytes(dicts[i], d));
    args += " h" + std::to_string(i);
    CAPTURE(dicts[i]);
    CHECK_THROWS_AS(ptq::io::read_npy(dir / ("h" + std::to_string(i) + ".npy")), ptq::error);
  }
  const std::string out = python(dir, R"(
import sys, numpy as np
d = sys.argv[1]
loaded = []
for name in sys.argv[2:]:
    try:
        np.load(f'{d}/{name}.npy')
        loaded.append(name)
    except Exception:
        pass
print('numpy loaded', len(loaded), 'of', len(sys.argv) - 2, loaded)
)",
                                 dir.path + args);
  INFO(out);
  CHECK(out.find("numpy loaded 0 of " + std::to_string(dicts.size()) + " []") != std::string::npos);
}

TEST_CASE("io: array element access checks the type and conversions never wrap") {
  const std::vector<double> d = {1.0, 2.5, -3.0, 1e300};
  const ptq::io::array a = ptq::io::array::from(d.data(), {2, 2}, "weights.npz (key 'w')");
  CHECK(reinterpret_cast<std::uintptr_t>(a.bytes()) % 64 == 0);
  CHECK(a.data<double>()[1] == 2.5);
  CHECK_THROWS_WITH_AS(a.data<float>(),
                       doctest::Contains("weights.npz (key 'w'): the array holds float64, not float32"), ptq::error);
  CHECK_THROWS_WITH_AS(a.to<float>(), doctest::Contains("element 3 = 1e+300 (float64) is outside the range of float32"),
                       ptq::error);
  const std::vector<float> f = ptq::io::array::from(d.data(), {3}).to<float>();
  CHECK(f[1] == 2.5f);
  const std::vector<double> special = {std::numeric_limits<double>::infinity(), -3.4e38};
  CHECK(ptq::io::array::from(special.data(), {2}).to<float>() ==
        std::vector<float>{std::numeric_limits<float>::infinity(), -3.4e38f});
  CHECK_THROWS_WITH_AS(a.to<std::int32_t>(),
                       doctest::Contains("element 1 = 2.5 (float64) is not exactly representable as int32"),
                       ptq::error);
  const std::vector<double> third = {0.1};
  CHECK(ptq::io::array::from(third.data(), {1}).to<float>()[0] == 0.1f);

  const std::vector<std::int64_t> i = {0, 255, 256, -1, std::numeric_limits<std::int64_t>::min()};
  const ptq::io::array ia = ptq::io::array::from(i.data(), {5});
  CHECK_THROWS_WITH_AS(ia.to<std::uint8_t>(), doctest::Contains("element 2 = 256"), ptq::error);
  CHECK_THROWS_WITH_AS(ia.to<std::int32_t>(), doctest::Contains("element 4 = -9223372036854775808"), ptq::error);
  CHECK(ptq::io::array::from(i.data(), {2}).to<std::uint8_t>() == std::vector<std::uint8_t>{0, 255});
  CHECK(ptq::io::array::from(i.data(), {4}).to<std::int32_t>() == std::vector<std::int32_t>{0, 255, 256, -1});
  const std::vector<std::uint8_t> u = {0, 200};
  CHECK(ptq::io::array::from(u.data(), {2}).to<std::int32_t>() == std::vector<std::int32_t>{0, 200});
  const std::vector<float> big = {2147483648.0f, -2147483648.0f};
  CHECK_THROWS_WITH_AS(ptq::io::array::from(big.data(), {2}).to<std::int32_t>(), doctest::Contains("element 0"),
                       ptq::error);
  CHECK(ptq::io::array::from(big.data() + 1, {1}).to<std::int32_t>()[0] == std::numeric_limits<std::int32_t>::min());
  const std::vector<float> nan = {std::numeric_limits<float>::quiet_NaN()};
  CHECK_THROWS_AS(ptq::io::array::from(nan.data(), {1}).to<std::int64_t>(), ptq::error);

  a.expect_shape({2, 2});
  CHECK_THROWS_WITH_AS(a.expect_shape({4}),
                       doctest::Contains("weights.npz (key 'w'): shape (2, 2) is not the expected (4,)"), ptq::error);
  CHECK_THROWS_AS(ptq::io::array::from(d.data(), {-1}), ptq::error);

  const ptq::io::array empty;
  CHECK(empty.size() == 0);
  CHECK(empty.shape() == std::vector<ptq::index>{0});
  CHECK(empty.to<float>().empty());
  const ptq::io::array copy = a;  // copies share the immutable storage
  CHECK(copy.data<double>() == a.data<double>());
}

}  // namespace ptq_test_npy
