// fuzz_npy.cpp: libFuzzer target: ptq::io::parse_npy on arbitrary bytes.
// The only allowed outcome for a bad input is ptq::error; a good one must satisfy check_array.
#include <cstddef>
#include <cstdint>

#include <ptq/io/npy.hpp>

#include "fuzz_common.hpp"

extern "C" int LLVMFuzzerTestOneInput(const std::uint8_t* data, std::size_t size) {
  try {
    const ptq::io::array a = ptq::io::parse_npy(data, size, "fuzz.npy");
    ptq_fuzz::check_array(a);
  } catch (const ptq::error&) {
  }
  return 0;
}
