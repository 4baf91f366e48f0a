// error.hpp: ptq::error, the one exception type of the library, and its checks.
//
// Every public entry point validates its arguments before it touches the
// caller's memory. A failed check throws ptq::error whose what() names the
// function, the argument and the offending value, for example
//   "ptq::gemmlowp_quantizer::quantize: bits[3] = 17 is outside [0, 16]".
// Nothing the caller passed in is modified when a check fails.
#pragma once

#include <cmath>
#include <sstream>
#include <stdexcept>
#include <string>
#include <utility>

namespace ptq {

class error : public std::runtime_error {
 public:
  explicit error(const std::string& what) : std::runtime_error(what) {}
};

namespace detail {

template <class... Args>
std::string concat(Args&&... args) {
  std::ostringstream s;
  s.precision(9);
  (s << ... << std::forward<Args>(args));
  return s.str();
}

// throw ptq::error("<where>: <message pieces...>")
template <class... Args>
[[noreturn]] void fail(const char* where, Args&&... args) {
  throw error(concat(where, ": ", std::forward<Args>(args)...));
}

template <class... Args>
void require(bool ok, const char* where, Args&&... args) {
  if (!ok) fail(where, std::forward<Args>(args)...);
}

// Bit widths: an integer in [lo, hi].
inline void check_bits(long long bits, int lo, int hi, const char* where, const char* name) {
  if (bits < lo || bits > hi) fail(where, name, " = ", bits, " is outside [", lo, ", ", hi, "]");
}

}  // namespace detail
}  // namespace ptq
