// test_int4.cpp: int4 pack / unpack: hand-written nibble order, round trips at every small length, fast == _ref, errors.
#include <doctest/doctest.h>

#include <algorithm>
#include <cstdint>
#include <type_traits>
#include <random>
#include <vector>

#include "ptq/int4.hpp"

// Everything of this file in its own namespace: the test binary is a unity build.
namespace ptq_test_int4 {

namespace {

using u8 = std::uint8_t;
using s8 = std::int8_t;
using idx = ptq::index;

template <class Code>
std::vector<Code> random_codes(idx n, std::mt19937_64& g) {
  constexpr int lo = std::is_signed<Code>::value ? -8 : 0;
  std::uniform_int_distribution<int> d(lo, lo + 15);
  std::vector<Code> c(static_cast<std::size_t>(n));
  for (auto& x : c) x = static_cast<Code>(d(g));
  return c;
}

// Pack, unpack with both versions; fast == _ref and the round trip is the identity.
// Buffers are one byte longer than needed, filled with a sentinel that must survive.
template <class Code>
void round_trip(idx n, std::mt19937_64& g) {
  CAPTURE(n);
  const auto codes = random_codes<Code>(n, g);
  const auto bytes = static_cast<std::size_t>(ptq::int4_packed_bytes(n));
  std::vector<u8> fast(bytes + 1, 0xEE), ref(bytes + 1, 0xEE);
  ptq::pack_int4(codes.data(), n, fast.data());
  ptq::pack_int4_ref(codes.data(), n, ref.data());
  REQUIRE(fast == ref);
  REQUIRE(fast[bytes] == 0xEE);
  if (n % 2) REQUIRE((fast[bytes - 1] >> 4) == 0);  // odd count: last high nibble 0
  // The layout written out: code 2j in the low nibble of byte j, 2j+1 in the high one.
  for (idx i = 0; i < n; ++i) {
    const int nib = (fast[static_cast<std::size_t>(i / 2)] >> (i % 2 ? 4 : 0)) & 0xF;
    REQUIRE(nib == (codes[static_cast<std::size_t>(i)] & 0xF));
  }
  std::vector<Code> back(static_cast<std::size_t>(n) + 1, Code(99)), back_ref = back;
  ptq::unpack_int4(fast.data(), n, back.data());
  ptq::unpack_int4_ref(fast.data(), n, back_ref.data());
  REQUIRE(back == back_ref);
  REQUIRE(back[static_cast<std::size_t>(n)] == Code(99));
  back.pop_back();
  REQUIRE(back == codes);
}

}  // namespace

TEST_CASE("int4: packed size") {
  CHECK(ptq::int4_packed_bytes(0) == 0);
  CHECK(ptq::int4_packed_bytes(1) == 1);
  CHECK(ptq::int4_packed_bytes(2) == 1);
  CHECK(ptq::int4_packed_bytes(3) == 2);
  CHECK(ptq::int4_packed_bytes(1001) == 501);
}

TEST_CASE("int4: nibble order and sign extension, written out by hand") {
  const std::vector<u8> uc = {0x1, 0x2, 0xA, 0xF, 0x0, 0x7, 0x9};
  std::vector<u8> p(4), pr(4);
  ptq::pack_int4(uc.data(), 7, p.data());
  ptq::pack_int4_ref(uc.data(), 7, pr.data());
  CHECK(p == std::vector<u8>{0x21, 0xFA, 0x70, 0x09});
  CHECK(pr == p);
  const std::vector<s8> sc = {-1, 7, -8, 0, 1, -2, 3};
  ptq::pack_int4(sc.data(), 7, p.data());
  ptq::pack_int4_ref(sc.data(), 7, pr.data());
  CHECK(p == std::vector<u8>{0x7F, 0x08, 0xE1, 0x03});
  CHECK(pr == p);
  // Every byte value unpacks to its two nibbles, unsigned and sign-extended.
  std::vector<u8> all(256);
  for (int b = 0; b < 256; ++b) all[static_cast<std::size_t>(b)] = static_cast<u8>(b);
  std::vector<u8> u(512), ur(512);
  std::vector<s8> s(512), sr(512);
  ptq::unpack_int4(all.data(), 512, u.data());
  ptq::unpack_int4_ref(all.data(), 512, ur.data());
  ptq::unpack_int4(all.data(), 512, s.data());
  ptq::unpack_int4_ref(all.data(), 512, sr.data());
  CHECK(u == ur);
  CHECK(s == sr);
  for (int b = 0; b < 256; ++b) {
    CAPTURE(b);
    const int lo = b & 15, hi = b >> 4;
    REQUIRE(u[static_cast<std::size_t>(2 * b)] == lo);
    REQUIRE(u[static_cast<std::size_t>(2 * b + 1)] == hi);
    REQUIRE(s[static_cast<std::size_t>(2 * b)] == (lo < 8 ? lo : lo - 16));
    REQUIRE(s[static_cast<std::size_t>(2 * b + 1)] == (hi < 8 ? hi : hi - 16));
  }
  // An odd count reads only the low nibble of the last byte.
  const std::vector<u8> q = {0x21, 0xF3};
  std::vector<s8> three(3);
  ptq::unpack_int4(q.data(), 3, three.data());
  CHECK(three == std::vector<s8>{1, 2, 3});
}

TEST_CASE("int4: round trip, fast == _ref at every length 0..130 and large odd lengths") {
  std::mt19937_64 g(11);
  for (idx n = 0; n <= 130; ++n) {
    round_trip<u8>(n, g);
    round_trip<s8>(n, g);
  }
  for (idx n : {1001, 4097, 65537, 1000003}) {
    round_trip<u8>(n, g);
    round_trip<s8>(n, g);
  }
}

TEST_CASE("int4: out-of-range codes are ptq::error naming the index, nothing written") {
  std::vector<u8> uc(77, 3);
  uc[70] = 16;
  uc[75] = 200;
  std::vector<u8> out(39, 0x5A);
  CHECK_THROWS_WITH_AS(ptq::pack_int4(uc.data(), 77, out.data()),
                       doctest::Contains("ptq::pack_int4: codes[70] = 16 is outside [0, 15]"), ptq::error);
  CHECK_THROWS_WITH_AS(ptq::pack_int4_ref(uc.data(), 77, out.data()),
                       doctest::Contains("ptq::pack_int4_ref: codes[70] = 16 is outside [0, 15]"), ptq::error);
  CHECK_NOTHROW(ptq::pack_int4(uc.data(), 70, out.data()));  // the bad codes lie beyond n
  std::fill(out.begin(), out.end(), u8{0x5A});
  std::vector<s8> sc(33, -8);
  sc[32] = 8;
  CHECK_THROWS_WITH_AS(ptq::pack_int4(sc.data(), 33, out.data()),
                       doctest::Contains("ptq::pack_int4: codes[32] = 8 is outside [-8, 7]"), ptq::error);
  sc[32] = 7;
  sc[5] = -9;
  CHECK_THROWS_WITH_AS(ptq::pack_int4_ref(sc.data(), 33, out.data()),
                       doctest::Contains("codes[5] = -9 is outside [-8, 7]"), ptq::error);
  sc[5] = -128;
  CHECK_THROWS_AS(ptq::pack_int4(sc.data(), 33, out.data()), ptq::error);
  CHECK(out == std::vector<u8>(39, 0x5A));
  CHECK_THROWS_WITH_AS(ptq::pack_int4(uc.data(), -1, out.data()), doctest::Contains("n = -1 is negative"), ptq::error);
  CHECK_THROWS_WITH_AS(ptq::unpack_int4(nullptr, 4, uc.data()), doctest::Contains("the input is null"), ptq::error);
  CHECK_NOTHROW(ptq::unpack_int4(static_cast<const u8*>(nullptr), 0, static_cast<s8*>(nullptr)));
}

}  // namespace ptq_test_int4
