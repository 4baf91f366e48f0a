// int4.hpp: two 4-bit codes per byte (pack / unpack), unsigned [0, 15] or signed [-8, 7].
//
// Layout (the order gemmlowp-style and most int4 kernels use, low nibble first):
//   byte j = code[2j] in bits 0..3  |  code[2j+1] in bits 4..7
// An odd count n leaves the high nibble of the last byte 0. int4_packed_bytes(n) = (n + 1) / 2.
// Signed codes are two's complement nibbles: -1 is 0xF, -8 is 0x8; unpacking sign-extends
// (nibble x becomes x - 16 when x >= 8).
//
// pack_int4 checks every code first (a vectorized OR reduction) and throws ptq::error
// naming the first bad index and its value before writing anything. The fast versions
// handle a pair of codes as one little-endian uint16 (two codes <-> one byte), branch-free
// loops the compiler vectorizes (-O2 -march=native: AVX2 / AVX-512); the sign extension
// is u | (u & 0x0808) * 0x1E (bit 3 of a nibble copied into bits 4..7 of its byte, no
// carry between the two bytes). The _ref twins are plain loops, one code at a time; the
// two are equal bit for bit (test_int4.cpp). On a big-endian target the fast versions
// are the _ref loops.
#pragma once

#include <cstdint>
#include <cstring>

#include "config.hpp"
#include "error.hpp"

namespace ptq {

inline index int4_packed_bytes(index n) { return (n + 1) / 2; }

namespace detail {
inline void check_int4_call(const void* in, index n, const void* out, const char* where) {
  require(n >= 0, where, "n = ", n, " is negative");
  if (n > 0) {
    require(in != nullptr, where, "the input is null");
    require(out != nullptr, where, "the output is null");
  }
}
inline void check_int4_codes(const std::uint8_t* codes, index n, const char* where) {
  std::uint8_t bad = 0;
  for (index i = 0; i < n; ++i) bad |= codes[i];
  if (bad <= 15) return;
  for (index i = 0; i < n; ++i)
    require(codes[i] <= 15, where, "codes[", i, "] = ", int{codes[i]}, " is outside [0, 15]");
}
inline void check_int4_codes(const std::int8_t* codes, index n, const char* where) {
  std::uint8_t bad = 0;  // c + 8 in [0, 15] iff c in [-8, 7]
  for (index i = 0; i < n; ++i) bad |= static_cast<std::uint8_t>(codes[i] + 8);
  if (bad <= 15) return;
  for (index i = 0; i < n; ++i)
    require(codes[i] >= -8 && codes[i] <= 7, where, "codes[", i, "] = ", int{codes[i]}, " is outside [-8, 7]");
}
inline std::uint8_t nibble(std::int8_t c) { return static_cast<std::uint8_t>(c) & 0x0F; }
inline std::int8_t sign_extend_nibble(std::uint8_t x) { return static_cast<std::int8_t>(x >= 8 ? x - 16 : x); }

#if defined(__BYTE_ORDER__) && __BYTE_ORDER__ == __ORDER_LITTLE_ENDIAN__
constexpr bool int4_little_endian = true;
#else
constexpr bool int4_little_endian = false;
#endif

// Pairs of codes as uint16 (code 2j in the low byte): one packed byte each.
template <class Code>
void pack_pairs(const Code* codes, index pairs, std::uint8_t* packed) {
  for (index j = 0; j < pairs; ++j) {
    std::uint16_t v;
    std::memcpy(&v, codes + 2 * j, 2);
    v &= 0x0F0F;
    packed[j] = static_cast<std::uint8_t>(v | (v >> 4));
  }
}
template <bool Signed, class Code>
void unpack_pairs(const std::uint8_t* packed, index pairs, Code* codes) {
  for (index j = 0; j < pairs; ++j) {
    const std::uint16_t b = packed[j];
    auto u = static_cast<std::uint16_t>((b & 0x0F) | ((b & 0xF0) << 4));
    if (Signed) u = static_cast<std::uint16_t>(u | (u & 0x0808) * 0x1E);
    std::memcpy(codes + 2 * j, &u, 2);
  }
}
}  // namespace detail

inline void pack_int4_ref(const std::uint8_t* codes, index n, std::uint8_t* packed) {
  constexpr const char* where = "ptq::pack_int4_ref";
  detail::check_int4_call(codes, n, packed, where);
  detail::check_int4_codes(codes, n, where);
  for (index j = 0; j < int4_packed_bytes(n); ++j) packed[j] = 0;
  for (index i = 0; i < n; ++i) packed[i / 2] = static_cast<std::uint8_t>(packed[i / 2] | codes[i] << (4 * (i % 2)));
}
inline void pack_int4_ref(const std::int8_t* codes, index n, std::uint8_t* packed) {
  constexpr const char* where = "ptq::pack_int4_ref";
  detail::check_int4_call(codes, n, packed, where);
  detail::check_int4_codes(codes, n, where);
  for (index j = 0; j < int4_packed_bytes(n); ++j) packed[j] = 0;
  for (index i = 0; i < n; ++i)
    packed[i / 2] = static_cast<std::uint8_t>(packed[i / 2] | detail::nibble(codes[i]) << (4 * (i % 2)));
}
inline void unpack_int4_ref(const std::uint8_t* packed, index n, std::uint8_t* codes) {
  detail::check_int4_call(packed, n, codes, "ptq::unpack_int4_ref");
  for (index i = 0; i < n; ++i) codes[i] = static_cast<std::uint8_t>((packed[i / 2] >> (4 * (i % 2))) & 0x0F);
}
inline void unpack_int4_ref(const std::uint8_t* packed, index n, std::int8_t* codes) {
  detail::check_int4_call(packed, n, codes, "ptq::unpack_int4_ref");
  for (index i = 0; i < n; ++i)
    codes[i] = detail::sign_extend_nibble(static_cast<std::uint8_t>((packed[i / 2] >> (4 * (i % 2))) & 0x0F));
}

inline void pack_int4(const std::uint8_t* codes, index n, std::uint8_t* packed) {
  constexpr const char* where = "ptq::pack_int4";
  detail::check_int4_call(codes, n, packed, where);
  detail::check_int4_codes(codes, n, where);
  if (!detail::int4_little_endian) return pack_int4_ref(codes, n, packed);
  detail::pack_pairs(codes, n / 2, packed);
  if (n % 2) packed[n / 2] = codes[n - 1];
}
inline void pack_int4(const std::int8_t* codes, index n, std::uint8_t* packed) {
  constexpr const char* where = "ptq::pack_int4";
  detail::check_int4_call(codes, n, packed, where);
  detail::check_int4_codes(codes, n, where);
  if (!detail::int4_little_endian) return pack_int4_ref(codes, n, packed);
  detail::pack_pairs(codes, n / 2, packed);
  if (n % 2) packed[n / 2] = detail::nibble(codes[n - 1]);
}
inline void unpack_int4(const std::uint8_t* packed, index n, std::uint8_t* codes) {
  detail::check_int4_call(packed, n, codes, "ptq::unpack_int4");
  if (!detail::int4_little_endian) return unpack_int4_ref(packed, n, codes);
  detail::unpack_pairs<false>(packed, n / 2, codes);
  if (n % 2) codes[n - 1] = packed[n / 2] & 0x0F;
}
inline void unpack_int4(const std::uint8_t* packed, index n, std::int8_t* codes) {
  detail::check_int4_call(packed, n, codes, "ptq::unpack_int4");
  if (!detail::int4_little_endian) return unpack_int4_ref(packed, n, codes);
  detail::unpack_pairs<true>(packed, n / 2, codes);
  if (n % 2) codes[n - 1] = detail::sign_extend_nibble(packed[n / 2] & 0x0F);
}

}  // namespace ptq
