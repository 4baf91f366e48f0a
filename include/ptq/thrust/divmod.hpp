// divmod.hpp: division by a divisor fixed for a whole kernel, by one multiply and a shift.
//
// A GPU has no integer divide instruction: a 64-bit `i / cols` compiles to a library
// routine of some 60-100 instructions, and a per-element channel (i / cols) % channels
// needs two of them, more work than the memory traffic of the element itself. Division
// by an invariant d is instead (Granlund and Montgomery, "Division by invariant integers
// using multiplication", PLDI 1994, the round-up method with an add):
//
//   l = ceil(log2 d),   m = floor(2^32 (2^l - d) / d) + 1      (0 < m < 2^32, on the host)
//   n / d = (mulhi32(m, n) + n) >> l                           exactly, for all n < 2^32
//
// (the sum is taken in 64 bits, so no carry is lost). d = 1 gives m = 1, l = 0; a power
// of two gives m = 1, a shift. Numerators must fit 32 bits: channel_of below falls back
// to the plain 64-bit division for views of 2^32 elements or more.
#pragma once

#include <cstddef>
#include <cstdint>

#include "../config.hpp"
#include "../error.hpp"
#include "../types.hpp"

namespace ptq {
namespace device {

class fast_divmod {
 public:
  fast_divmod() = default;
  // d in [1, 2^32 - 1].
  explicit fast_divmod(std::uint32_t d) : d_(d) {
    ptq::detail::require(d >= 1, "ptq::device::fast_divmod", "the divisor must be at least 1");
    while ((std::uint64_t(1) << l_) < d) ++l_;
    m_ = static_cast<std::uint32_t>(((std::uint64_t(1) << 32) * ((std::uint64_t(1) << l_) - d)) / d + 1);
  }

  PTQ_HOST_DEVICE std::uint32_t divisor() const { return d_; }
  PTQ_HOST_DEVICE std::uint32_t div(std::uint32_t n) const {
#if defined(__CUDA_ARCH__)
    const std::uint64_t hi = __umulhi(m_, n);
#else
    const std::uint64_t hi = (static_cast<std::uint64_t>(m_) * n) >> 32;
#endif
    return static_cast<std::uint32_t>((hi + n) >> l_);
  }
  PTQ_HOST_DEVICE std::uint32_t mod(std::uint32_t n) const { return n - div(n) * d_; }

 private:
  std::uint32_t d_ = 1, m_ = 1;
  unsigned l_ = 0;
};

// The channel of flat element i of a row view (rows x cols, row r of channel
// r % channels): (i / cols) % channels, by fast_divmod when the view has fewer than
// 2^32 elements (the usual case), else by 64-bit division. The choice is one flag, the
// same for every thread, so a kernel does not diverge on it.
class channel_of {
 public:
  channel_of(std::size_t size, index cols, index channels)
      : narrow_(size <= 0xffffffffu), cols_(cols), channels_(channels) {
    if (narrow_) {
      by_cols_ = fast_divmod(static_cast<std::uint32_t>(cols));
      by_channels_ = fast_divmod(static_cast<std::uint32_t>(channels));
    }
  }
  PTQ_HOST_DEVICE index operator()(index i) const {
    if (narrow_) return by_channels_.mod(by_cols_.div(static_cast<std::uint32_t>(i)));
    return (i / cols_) % channels_;
  }

 private:
  bool narrow_;
  index cols_, channels_;
  fast_divmod by_cols_, by_channels_;
};

}  // namespace device
}  // namespace ptq
