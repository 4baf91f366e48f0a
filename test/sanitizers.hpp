// sanitizers.hpp: whether the test binary runs under AddressSanitizer (the asan preset), for tests that lighten their repeats there.
//
// The sanitizers check memory and undefined behaviour at ~10x the run time. The learned-rounding
// tests repeat the same optimization on a second net and once more for determinism; those
// repeats check the method and the result's independence of threads, which the ci and portable
// presets check, not new memory accesses. Under the sanitizers such a test runs the first of
// its cases once (ptq_test::sanitized); everything else is unchanged.
#pragma once

namespace ptq_test {

#if defined(__SANITIZE_ADDRESS__)  // GCC
inline constexpr bool sanitized = true;
#elif defined(__has_feature)
#if __has_feature(address_sanitizer)  // Clang
inline constexpr bool sanitized = true;
#else
inline constexpr bool sanitized = false;
#endif
#else
inline constexpr bool sanitized = false;
#endif

}  // namespace ptq_test
