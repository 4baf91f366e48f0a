// test_thrust_divmod.cpp: fast_divmod and channel_of against the plain integer division.
#include <doctest/doctest.h>

#include <cstdint>
#include <random>
#include <vector>

#include "ptq/error.hpp"
#include "ptq/thrust/divmod.hpp"

// Everything of this file in its own namespace: the test binary is a unity build.
namespace ptq_test_thrust_divmod {

namespace {

using ptq::device::channel_of;
using ptq::device::fast_divmod;

// Numerators where the rounding of m*n could go wrong: around every multiple of d near
// the ends of the range, and the ends themselves.
std::vector<std::uint32_t> corners(std::uint32_t d) {
  std::vector<std::uint32_t> n{0u, 1u, d - 1, d, 0x7fffffffu, 0x80000000u, 0xfffffffeu, 0xffffffffu};
  if (d < 0xffffffffu) n.push_back(d + 1);
  const std::uint64_t top = 0xffffffffull / d;  // the largest quotient
  for (std::uint64_t q : {std::uint64_t(1), std::uint64_t(2), top / 2, top - 1, top})
    for (std::int64_t e : {-1, 0, 1}) {
      const std::int64_t v = static_cast<std::int64_t>(q * d) + e;
      if (q >= 1 && v >= 0 && v <= 0xffffffffll) n.push_back(static_cast<std::uint32_t>(v));
    }
  return n;
}

void check(std::uint32_t d, const std::vector<std::uint32_t>& numerators) {
  const fast_divmod f(d);
  for (std::uint32_t n : numerators) {
    const std::uint32_t q = f.div(n), r = f.mod(n);
    if (q != n / d || r != n % d) {  // one assertion per failure, not per value
      CHECK_MESSAGE(q == n / d, "n = ", n, ", d = ", d);
      CHECK_MESSAGE(r == n % d, "n = ", n, ", d = ", d);
    }
  }
}

}  // namespace

TEST_CASE("fast_divmod equals n / d and n % d for every divisor up to 4096 and at the corners of the range") {
  std::mt19937 rng(7);
  std::vector<std::uint32_t> divisors;
  for (std::uint32_t d = 1; d <= 4096; ++d) divisors.push_back(d);
  for (int k = 12; k < 32; ++k)
    for (std::int64_t e : {-1, 0, 1}) divisors.push_back(static_cast<std::uint32_t>((std::int64_t(1) << k) + e));
  for (std::uint32_t d : {0xfffffffeu, 0xffffffffu, 0x80000001u, 0xaaaaaaabu, 0x9e3779b9u})
    divisors.push_back(d);
  for (int k = 0; k < 2000; ++k) divisors.push_back(std::max<std::uint32_t>(1u, rng()));
  for (int k = 0; k < 2000; ++k) divisors.push_back(1u + rng() % 100000u);
  for (std::uint32_t d : divisors) {
    std::vector<std::uint32_t> n = corners(d);
    for (int k = 0; k < 64; ++k) n.push_back(rng());
    for (int k = 0; k < 64; ++k) n.push_back(rng() % (16u * d + 1u));
    check(d, n);
  }
  CHECK(fast_divmod(1).div(0xffffffffu) == 0xffffffffu);
  CHECK(fast_divmod(0xffffffffu).div(0xffffffffu) == 1u);
  CHECK(fast_divmod(0xffffffffu).div(0xfffffffeu) == 0u);
}

TEST_CASE("fast_divmod: every numerator below 2^22 for small divisors") {
  for (std::uint32_t d : {3u, 7u, 49u, 196u, 784u, 3136u}) {  // 7x7 ... 56x56 feature maps
    const fast_divmod f(d);
    std::uint32_t bad = 0;
    for (std::uint32_t n = 0; n < (1u << 22); ++n) bad += f.div(n) != n / d || f.mod(n) != n % d;
    CHECK_MESSAGE(bad == 0, "d = ", d);
  }
}

TEST_CASE("fast_divmod refuses a zero divisor") {
  CHECK_THROWS_AS(fast_divmod(0), ptq::error);
}

TEST_CASE("channel_of equals (i / cols) % channels on narrow and wide views") {
  struct view {
    std::size_t size;
    ptq::index cols, channels;
  };
  const view views[] = {{1, 1, 1},
                        {7, 7, 1},
                        {7, 1, 7},
                        {49 * 64 * 3, 49, 64},
                        {1048579, 919, 163},
                        {0xffffffffull, 0xffffffffll, 1},         // the largest narrow view: one row
                        {0xffffffffull, 1, 0xffffffffll},         // ... one column
                        {std::size_t(1) << 32, 1 << 16, 1 << 8},  // wide: 64-bit division
                        {std::size_t(3) << 33, 49, 1000}};
  std::mt19937_64 rng(11);
  for (const view& v : views) {
    const channel_of ch(v.size, v.cols, v.channels);
    std::vector<ptq::index> is{0, static_cast<ptq::index>(v.size) - 1, v.cols - 1, v.cols};
    for (int k = 0; k < 20000; ++k) is.push_back(static_cast<ptq::index>(rng() % v.size));
    for (ptq::index i : is) {
      if (i < 0 || static_cast<std::size_t>(i) >= v.size) continue;
      const ptq::index want = (i / v.cols) % v.channels;
      if (ch(i) != want) CHECK_MESSAGE(ch(i) == want, "i = ", i, ", cols = ", v.cols, ", channels = ", v.channels);
    }
  }
}

}  // namespace ptq_test_thrust_divmod
