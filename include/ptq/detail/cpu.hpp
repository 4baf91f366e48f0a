// cpu.hpp: run-time CPU feature checks and the target attribute of the AVX2 paths (x86-64, GCC and Clang).
//
// The AVX2 routines of igemm.hpp and fixedpoint.hpp are compiled with
// __attribute__((target("avx2"))) so that a baseline x86-64 build carries them, and are
// called only where cpu_has_avx2() says the CPU runs them: no -march flag is needed.
#pragma once

#if (defined(__x86_64__) || defined(__i386__)) && (defined(__GNUC__) || defined(__clang__))
#define PTQ_X86_DISPATCH 1
#include <immintrin.h>
#else
#define PTQ_X86_DISPATCH 0
#endif

#if PTQ_X86_DISPATCH
// GCC 12 at -O3 spills register tiles that -O2 keeps (igemm.hpp measured it), hence O2 there.
#if defined(__clang__)
#define PTQ_AVX2_TARGET __attribute__((target("avx2")))
#else
#define PTQ_AVX2_TARGET __attribute__((target("avx2"), optimize("O2")))
#endif
#endif

namespace ptq::detail {

// Whether this CPU executes AVX2 instructions (false off x86 or without GCC / Clang builtins).
inline bool cpu_has_avx2() {
#if PTQ_X86_DISPATCH
  static const bool ok = [] {
    __builtin_cpu_init();
    return __builtin_cpu_supports("avx2") != 0;
  }();
  return ok;
#else
  return false;
#endif
}

}  // namespace ptq::detail
