// test_npz.cpp: .npz reading against archives numpy.savez / savez_compressed write at test time.
#include <doctest/doctest.h>

#include "io_test_util.hpp"
#include <stdlib.h>

#include <cstdint>
#include <cstdlib>
#include <filesystem>
#include <cstring>
#include <fstream>
#include <map>
#include <ptq/io/npz.hpp>
#include <sstream>
#include <string>
#include <vector>

// Everything of this file in its own namespace: the test binary is a unity build.
namespace ptq_test_npz {

namespace {

using ptq::io::dtype;

using namespace ptq_io_test;

// Runs `script` with numpy's python, the scratch directory as its argument.
std::string python(const temp_dir& dir, const std::string& script) { return run_python(dir, script, dir.path); }

std::vector<double> values(std::int64_t n, double scale, double offset) {
  std::vector<double> v(static_cast<std::size_t>(n));
  for (std::int64_t k = 0; k < n; ++k) v[static_cast<std::size_t>(k)] = static_cast<double>(k) * scale + offset;
  return v;
}

std::uint32_t le32(const std::string& b, std::size_t at) {
  std::uint32_t v = 0;
  for (int i = 3; i >= 0; --i) v = v << 8 | static_cast<unsigned char>(b[at + static_cast<std::size_t>(i)]);
  return v;
}
void put_le32(std::string& b, std::size_t at, std::uint32_t v) {
  for (int i = 0; i < 4; ++i) b[at + static_cast<std::size_t>(i)] = static_cast<char>((v >> (8 * i)) & 0xff);
}
std::uint16_t le16(const std::string& b, std::size_t at) {
  return static_cast<std::uint16_t>(static_cast<unsigned char>(b[at]) | static_cast<unsigned char>(b[at + 1]) << 8);
}

// The arrays both archives hold (numpy writes them, this test recomputes them).
const char* const write_archives = R"(
import sys, zipfile, numpy as np
d = sys.argv[1]
k = np.arange(120, dtype=np.int64)
arrays = dict(
    w=(k * 0.25 - 3.5).astype('f4').reshape(2, 3, 4, 5),
    s=np.float64(-0.125),
    e=np.zeros((0, 3), 'u1'),
    i8=k[:7] * 1000003 - 2**40,
    i4=(k[:6] * 7919 - 100000).astype('>i4').reshape(2, 3),
    fo=np.asfortranarray((k[:24] * 0.5).reshape(2, 3, 4)),
    u=(k * 37 % 256).astype('u1'),
    big=(np.arange(200000, dtype=np.float64) * 0.25 - 3.5).astype('f4'),
)
np.savez(f'{d}/plain.npz', (k[:5] + 1).astype('i4'), **arrays)
np.savez_compressed(f'{d}/comp.npz', (k[:5] + 1).astype('i4'), **arrays)
with zipfile.ZipFile(f'{d}/plain.npz') as z:
    assert all(i.compress_type == zipfile.ZIP_STORED for i in z.infolist())
with zipfile.ZipFile(f'{d}/comp.npz') as z:
    assert all(i.compress_type == zipfile.ZIP_DEFLATED for i in z.infolist())
np.savez(f'{d}/empty.npz')
print('ok')
)";

void check_archive(const std::map<std::string, ptq::io::array>& m, const std::string& path) {
  CAPTURE(path);
  std::string keys;
  for (const auto& kv : m) keys += kv.first + " ";
  CHECK(keys == "arr_0 big e fo i4 i8 s u w ");
  for (const auto& kv : m) CHECK(kv.second.name() == path + " (key '" + kv.first + "')");

  const auto& w = ptq::io::get(m, "w", path);
  CHECK(w.type() == dtype::float32);
  CHECK(w.shape() == std::vector<ptq::index>{2, 3, 4, 5});
  CHECK(w.to<double>() == values(120, 0.25, -3.5));

  const auto& s = m.at("s");
  CHECK(s.rank() == 0);
  CHECK(s.type() == dtype::float64);
  CHECK(s.data<double>()[0] == -0.125);

  CHECK(m.at("e").shape() == std::vector<ptq::index>{0, 3});
  CHECK(m.at("e").type() == dtype::uint8);
  CHECK(m.at("e").size() == 0);

  const auto& i8 = m.at("i8");
  REQUIRE(i8.type() == dtype::int64);
  for (std::int64_t k = 0; k < 7; ++k) CHECK(i8.data<std::int64_t>()[k] == k * 1000003 - (std::int64_t(1) << 40));

  const auto& i4 = m.at("i4");  // stored big-endian: converted
  REQUIRE(i4.type() == dtype::int32);
  CHECK(i4.shape() == std::vector<ptq::index>{2, 3});
  for (std::int32_t k = 0; k < 6; ++k) CHECK(i4.data<std::int32_t>()[k] == k * 7919 - 100000);

  const auto& fo = m.at("fo");  // fortran order: converted to C order
  CHECK(fo.shape() == std::vector<ptq::index>{2, 3, 4});
  CHECK(fo.to<double>() == values(24, 0.5, 0));

  const auto& u = m.at("u");
  REQUIRE(u.type() == dtype::uint8);
  for (int k = 0; k < 120; ++k) CHECK(u.data<std::uint8_t>()[k] == (k * 37) % 256);

  const auto& big = m.at("big");
  CHECK(big.shape() == std::vector<ptq::index>{200000});
  CHECK(big.to<double>() == values(200000, 0.25, -3.5));
  CHECK(reinterpret_cast<std::uintptr_t>(big.bytes()) % 64 == 0);

  CHECK(m.at("arr_0").to<std::int64_t>() == std::vector<std::int64_t>{1, 2, 3, 4, 5});
}

}  // namespace

TEST_CASE("io: read_npz reads numpy.savez and numpy.savez_compressed archives") {
  temp_dir dir;
  CHECK(python(dir, write_archives).find("ok") != std::string::npos);
  check_archive(ptq::io::read_npz(dir / "plain.npz"), dir / "plain.npz");
  check_archive(ptq::io::read_npz(dir / "comp.npz"), dir / "comp.npz");
  CHECK(ptq::io::read_npz(dir / "empty.npz").empty());

  const ptq::io::npz_file f(dir / "comp.npz");
  CHECK(f.path() == dir / "comp.npz");
  CHECK(f.contains("w"));
  CHECK_FALSE(f.contains("w.npy"));
  CHECK(f.keys().size() == 9);
  CHECK(f.at("s").data<double>()[0] == -0.125);
  CHECK_THROWS_WITH_AS(f.at("conv1"), contains(dir / "comp.npz" + ": no key 'conv1' (keys: 'arr_0', 'big', 'e'"),
                       ptq::error);
  CHECK_THROWS_WITH_AS(ptq::io::get(f.arrays(), "x", "weights.npz"), contains("ptq::io::get: weights.npz: no key 'x'"),
                       ptq::error);
  CHECK_THROWS_WITH_AS(ptq::io::get({}, "x", "e.npz"), contains("e.npz: no key 'x' (keys: none)"), ptq::error);
  CHECK_THROWS_WITH_AS(f.at("s").data<float>(), contains(dir / "comp.npz" + " (key 's'): the array holds float64"),
                       ptq::error);
}

TEST_CASE("io: malformed .npz input throws ptq::error naming the file and the key") {
  temp_dir dir;
  python(dir, std::string(write_archives) + R"(
import zlib
def npy(a):
    import io
    b = io.BytesIO(); np.save(b, a); return b.getvalue()
good = npy(np.arange(4, dtype='f4'))
with zipfile.ZipFile(f'{d}/txt.npz', 'w') as z:
    z.writestr('a.npy', good); z.writestr('readme.txt', b'hello')
with zipfile.ZipFile(f'{d}/dir.npz', 'w') as z:
    z.writestr('a.npy', good); z.writestr('sub/', b'')
with zipfile.ZipFile(f'{d}/badver.npz', 'w') as z:
    z.writestr('a.npy', good); z.writestr('bad.npy', good[:6] + b'\x04' + good[7:])
with zipfile.ZipFile(f'{d}/trail.npz', 'w', zipfile.ZIP_DEFLATED) as z:
    z.writestr('t.npy', good + b'xyz')
with zipfile.ZipFile(f'{d}/cplx.npz', 'w') as z:
    z.writestr('c.npy', npy(np.zeros(3, 'c8')))
with zipfile.ZipFile(f'{d}/obj.npz', 'w') as z:
    z.writestr('o.npy', npy(np.array([None, 1], dtype=object)))
with zipfile.ZipFile(f'{d}/short.npz', 'w') as z:
    z.writestr('s.npy', good[:-3])
import warnings
warnings.simplefilter('ignore')
with zipfile.ZipFile(f'{d}/dup.npz', 'w') as z:
    z.writestr('a.npy', good); z.writestr('a.npy', good)
# plain zip headers (no zip64 extras) for size-field surgery
with zipfile.ZipFile(f'{d}/lie_stored.npz', 'w') as z:
    z.writestr('a.npy', npy(np.arange(1000, dtype='f8')))
with zipfile.ZipFile(f'{d}/lie_deflated.npz', 'w', zipfile.ZIP_DEFLATED) as z:
    z.writestr('a.npy', npy(np.arange(1000, dtype='f8')))
rng = np.random.default_rng(5)
np.savez(f'{d}/crc_plain.npz', noise=rng.standard_normal(2000), other=np.arange(3))
np.savez_compressed(f'{d}/crc_comp.npz', noise=rng.standard_normal(2000), other=np.arange(3))
open(f'{d}/text.npz', 'w').write('this is not a zip archive, only some text to fill bytes ' * 4)
print('ok')
)");
  auto bad = [&](const std::string& file, const std::string& what) {
    CAPTURE(file);
    const std::string path = dir / file;
    CHECK_THROWS_WITH_AS(ptq::io::read_npz(path), contains("ptq::io::read_npz: " + path), ptq::error);
    CHECK_THROWS_WITH_AS(ptq::io::read_npz(path), contains(what), ptq::error);
    CHECK_THROWS_WITH_AS(ptq::io::npz_file{path}, contains(what), ptq::error);
  };
  bad("absent.npz", "cannot open as a zip archive: No such file");
  bad("text.npz", "cannot open as a zip archive: Not a zip archive");
  bad("txt.npz", "member 'readme.txt' is not a .npy file");
  bad("dir.npz", "member 'sub/' is not a .npy file");
  bad("badver.npz", "(key 'bad'): unsupported .npy format version 4.0");
  bad("trail.npz", "(key 't'): 3 trailing bytes after the 16 data bytes");
  bad("cplx.npz", "(key 'c'): unsupported dtype '<c8'");
  bad("obj.npz", "(key 'o'): unsupported dtype '|O'");
  bad("short.npz", "(key 's'): the data are truncated");
  bad("dup.npz", "two members have the same name");  // libzip 1.7 refuses duplicate names (ZIP_ER_EXISTS)

  SUBCASE("a truncated archive: every cut is refused") {
    const std::string whole = slurp(dir / "plain.npz");
    for (std::size_t cut : {std::size_t(0), std::size_t(3), std::size_t(30), whole.size() / 3, whole.size() / 2,
                            whole.size() - 30, whole.size() - 1}) {
      spit(dir / "cut.npz", whole.substr(0, cut));
      CAPTURE(cut);
      CHECK_THROWS_WITH_AS(ptq::io::read_npz(dir / "cut.npz"), contains(dir / "cut.npz"), ptq::error);
    }
  }
  SUBCASE("a corrupt member: the CRC check or inflate refuses it") {
    for (const char* file : {"crc_plain.npz", "crc_comp.npz"}) {
      std::string b = slurp(dir / file);
      REQUIRE(b.compare(0, 4, "PK\x03\x04") == 0);
      CHECK(b.compare(30, 9, "noise.npy") == 0);  // first member
      const std::size_t data = 30 + le16(b, 26) + le16(b, 28);
      b[data + 4000] = static_cast<char>(b[data + 4000] ^ 0x5a);  // inside the 16000 data bytes
      spit(dir / "corrupt.npz", b);
      CAPTURE(file);
      const std::string what =
          std::string(file) == "crc_plain.npz" ? "(key 'noise'): zip read error: CRC error" : "(key 'noise'): ";
      CHECK_THROWS_WITH_AS(ptq::io::read_npz(dir / "corrupt.npz"), contains(dir / "corrupt.npz" + " " + what),
                           ptq::error);
    }
  }
  SUBCASE("a member declaring an impossible size is refused before allocating it") {
    for (const char* file : {"lie_stored.npz", "lie_deflated.npz"}) {
      std::string b = slurp(dir / file);
      const std::size_t central = b.find("PK\x01\x02");
      REQUIRE(central != std::string::npos);
      CHECK(le32(b, 22) == 8128u);  // uncompressed size in the local header (128 + 8000)
      CHECK(le32(b, central + 24) == 8128u);
      put_le32(b, 22, 0x7fffff00u);
      put_le32(b, central + 24, 0x7fffff00u);
      spit(dir / "lie.npz", b);
      CAPTURE(file);
      CHECK_THROWS_WITH_AS(ptq::io::read_npz(dir / "lie.npz"),
                           contains(dir / "lie.npz" + " (key 'a'): the declared size 2147483392 is impossible"),
                           ptq::error);
    }
  }
}

TEST_CASE("io: write_npz writes what numpy.load reads back exactly - a failure leaves no file") {
  temp_dir dir;
  std::map<std::string, ptq::io::array> a;
  const std::vector<double> d = values(7, -0.375, 1e-300);
  const std::vector<float> f = {1.5f, -0.0f, 3.25e-38f, 65504.0f, -1e30f, 0.1f};
  const std::vector<std::int32_t> i32 = {0, -1, 2147483647, -2147483647 - 1};
  const std::vector<std::int64_t> i64 = {9007199254740993LL};
  const std::vector<std::uint8_t> u8 = {0, 255, 16};
  a["act/layer1.0.conv1/lo"] = ptq::io::array::from(d.data(), {7});
  a["weight/conv1"] = ptq::io::array::from(f.data(), {2, 1, 3, 1});
  a["bits"] = ptq::io::array::from(i32.data(), {2, 2});
  a["big"] = ptq::io::array::from(i64.data(), {1});
  a["codes"] = ptq::io::array::from(u8.data(), {3});
  a["empty"] = ptq::io::array::from(f.data(), {0, 4});
  ptq::io::write_npz(dir / "out.npz", a);
  // Independent reader: numpy prints every key with dtype, shape and exact values (repr of floats).
  const std::string out = python(dir, R"(
import sys, numpy as np
z = np.load(sys.argv[1] + "/out.npz")
for k in sorted(z.files):
    v = z[k]
    print(k, v.dtype.str, v.shape, [float(x).hex() if v.dtype.kind == "f" else int(x) for x in v.ravel()])
)");
  CHECK(out.find("act/layer1.0.conv1/lo <f8 (7,) ['0x1.") != std::string::npos);
  CHECK(out.find("bits <i4 (2, 2) [0, -1, 2147483647, -2147483648]") != std::string::npos);
  CHECK(out.find("big <i8 (1,) [9007199254740993]") != std::string::npos);
  CHECK(out.find("codes |u1 (3,) [0, 255, 16]") != std::string::npos);
  CHECK(out.find("empty <f4 (0, 4) []") != std::string::npos);
  CHECK(out.find("weight/conv1 <f4 (2, 1, 3, 1) ['0x1.8000000000000p+0', '-0x0.0p+0', ") != std::string::npos);
  // And ptq's own reader gives back the same bits.
  const auto back = ptq::io::read_npz(dir / "out.npz");
  REQUIRE(back.size() == a.size());
  for (const auto& kv : a) {  // (no structured binding: C++17 lambdas, as in CAPTURE, cannot capture one)
    const std::string& k = kv.first;
    const ptq::io::array& v = kv.second;
    CAPTURE(k);
    REQUIRE(back.at(k).type() == v.type());
    CHECK(back.at(k).shape() == v.shape());
    CHECK(std::memcmp(back.at(k).bytes(), v.bytes(), v.nbytes()) == 0);
  }
  // Over an existing file: replaced whole. Into a missing directory or with an empty key: an
  // error naming the path, and no file (nor temporary) left behind.
  std::map<std::string, ptq::io::array> one;
  one["x"] = ptq::io::array::from(i32.data(), {1});
  ptq::io::write_npz(dir / "out.npz", one);
  CHECK(ptq::io::read_npz(dir / "out.npz").size() == 1);
  CHECK_THROWS_WITH_AS(ptq::io::write_npz(dir / "no/such/x.npz", one), contains(dir / "no/such/x.npz"), ptq::error);
  std::map<std::string, ptq::io::array> bad;
  bad[""] = ptq::io::array::from(i32.data(), {1});
  CHECK_THROWS_WITH_AS(ptq::io::write_npz(dir / "bad.npz", bad), contains("empty key"), ptq::error);
  CHECK_FALSE(std::filesystem::exists(dir / "bad.npz"));
  CHECK_FALSE(std::filesystem::exists(dir / "bad.npz.tmp"));
  CHECK_FALSE(std::filesystem::exists(dir / "no/such/x.npz.tmp"));
}

}  // namespace ptq_test_npz
