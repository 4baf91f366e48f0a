// fuzz_common.hpp: invariants the .npy / .npz fuzz targets check on every array that parses.
#pragma once

#include <cstdint>
#include <cstdlib>
#include <cstring>
#include <limits>
#include <string>
#include <vector>

#include <ptq/io/npy.hpp>

namespace ptq_fuzz {

// A fuzz target's own check failed: abort, so that libFuzzer records the input.
#define PTQ_FUZZ_CHECK(cond)                                                                       \
  do {                                                                                             \
    if (!(cond)) {                                                                                 \
      std::fprintf(stderr, "%s:%d: fuzz invariant failed: %s\n", __FILE__, __LINE__, #cond);       \
      std::abort();                                                                                \
    }                                                                                              \
  } while (0)

// A parsed array is consistent (size = prod(shape), storage readable to its end, aligned),
// and writing it back (npy.hpp's header + its bytes) parses to the same array.
inline void check_array(const ptq::io::array& a) {
  ptq::index n = 1;
  for (ptq::index d : a.shape()) PTQ_FUZZ_CHECK(d >= 0);
  for (ptq::index d : a.shape()) n = d == 0 ? 0 : n;
  for (ptq::index d : a.shape()) {
    if (n == 0) break;
    PTQ_FUZZ_CHECK(n <= std::numeric_limits<ptq::index>::max() / d);
    n *= d;
  }
  PTQ_FUZZ_CHECK(a.size() == n);
  PTQ_FUZZ_CHECK(a.nbytes() == static_cast<std::size_t>(n) * ptq::io::itemsize(a.type()));
  PTQ_FUZZ_CHECK(reinterpret_cast<std::uintptr_t>(a.bytes()) % 64 == 0);
  // Touch every byte (ASan checks the storage is as long as it claims).
  const auto* p = static_cast<const unsigned char*>(a.bytes());
  unsigned sum = 0;
  for (std::size_t i = 0; i < a.nbytes(); ++i) sum += p[i];
  (void)sum;
  // Conversions either succeed or throw ptq::error, never anything else.
  const std::vector<double> d = a.to<double>();
  PTQ_FUZZ_CHECK(d.size() == static_cast<std::size_t>(n));
  try {
    (void)a.to<float>();
  } catch (const ptq::error&) {
  }
  try {
    (void)a.to<std::int32_t>();
  } catch (const ptq::error&) {
  }
  // Round trip through the writer's header (little-endian host: the bytes are what a file holds).
  if (ptq::io::detail::host_is_little_endian()) {
    std::string bytes = ptq::io::detail::npy_header_bytes(a.type(), a.shape());
    PTQ_FUZZ_CHECK(bytes.size() % 64 == 0);
    bytes.append(static_cast<const char*>(a.bytes()), a.nbytes());
    const ptq::io::array b = ptq::io::parse_npy(bytes.data(), bytes.size(), "round trip");
    PTQ_FUZZ_CHECK(b.type() == a.type());
    PTQ_FUZZ_CHECK(b.shape() == a.shape());
    PTQ_FUZZ_CHECK(std::memcmp(b.bytes(), a.bytes(), a.nbytes()) == 0);
  }
}

}  // namespace ptq_fuzz
