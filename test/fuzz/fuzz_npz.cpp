// fuzz_npz.cpp: libFuzzer target: ptq::io::parse_npz (libzip over the bytes, then every
// member through the .npy parser), then the ResNet example's builder on what parsed.
// The only allowed outcome for a bad input is ptq::error.
#include <cstddef>
#include <cstdint>

#include <ptq/io/npz.hpp>

#include "fuzz_common.hpp"
#include "resnet50/resnet.hpp"

extern "C" int LLVMFuzzerTestOneInput(const std::uint8_t* data, std::size_t size) {
  std::map<std::string, ptq::io::array> arrays;
  try {
    arrays = ptq::io::parse_npz(data, size, "fuzz.npz");
  } catch (const ptq::error&) {
    return 0;
  }
  for (const auto& kv : arrays) {
    PTQ_FUZZ_CHECK(kv.second.name() == "fuzz.npz (key '" + ptq::io::detail::printable(kv.first.data(), kv.first.size()) + "')");
    ptq_fuzz::check_array(kv.second);
  }
  try {
    const ptq_example::resnet net = ptq_example::resnet::from_state_dict(arrays);
    PTQ_FUZZ_CHECK(!net.convs().empty());
    PTQ_FUZZ_CHECK(net.classes() >= 1);
  } catch (const ptq::error&) {
  }
  return 0;
}
