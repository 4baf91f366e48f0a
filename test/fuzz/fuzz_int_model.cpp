// fuzz_int_model.cpp: libFuzzer target: ptq::io::parse_npz, then int_model_from_arrays (int_io.hpp),
// the integer model reader's validation and its rebuild of the fixed-point stages.
// The only allowed outcome for a bad input is ptq::error; a model that is accepted must be
// consistent (what the engine relies on) and write back to arrays that read to the same model,
// with the same code bit streams byte for byte (format 2's streams are canonical: exact
// lengths, padding bits 0).
#include <cstddef>
#include <cstdint>
#include <cstring>

#include <ptq/io/npz.hpp>

#include "fuzz_common.hpp"
#include "resnet50/int_io.hpp"

// Mutated zip members almost never pass libzip's CRC, so besides .npz inputs the target
// reads a CRC-free container of the same arrays, which lets mutations reach the model
// reader's checks: "PTQA", then per array: u8 key length, the key, u32 (little-endian)
// .npy length, the .npy bytes (test_int_io.cpp's "int io: fuzz seeds" writes both kinds).
static bool parse_raw(const std::uint8_t* data, std::size_t size, std::map<std::string, ptq::io::array>& out) {
  if (size < 4 || std::memcmp(data, "PTQA", 4) != 0) return false;
  std::size_t at = 4;
  while (at < size) {
    const std::size_t klen = data[at++];
    if (size - at < klen + 4) return true;
    const std::string key(reinterpret_cast<const char*>(data + at), klen);
    at += klen;
    const std::size_t n = std::size_t{data[at]} | std::size_t{data[at + 1]} << 8 | std::size_t{data[at + 2]} << 16 |
                          std::size_t{data[at + 3]} << 24;
    at += 4;
    if (size - at < n) return true;
    try {
      out[key] = ptq::io::parse_npy(data + at, n, "fuzz.npz (key '" + key + "')");
    } catch (const ptq::error&) {
    }
    at += n;
  }
  return true;
}

extern "C" int LLVMFuzzerTestOneInput(const std::uint8_t* data, std::size_t size) {
  std::map<std::string, ptq::io::array> arrays;
  if (!parse_raw(data, size, arrays)) {
    try {
      arrays = ptq::io::parse_npz(data, size, "fuzz.npz");
    } catch (const ptq::error&) {
      return 0;
    }
  }
  ptq_example::int_model m;
  try {
    m = ptq_example::int_model_from_arrays(arrays, "fuzz.npz");
  } catch (const ptq::error&) {
    return 0;
  }
  PTQ_FUZZ_CHECK(m.convs.size() >= 3 && !m.blocks.empty());
  PTQ_FUZZ_CHECK(m.act.size() == m.convs.size() && m.block_out.size() == m.blocks.size());
  PTQ_FUZZ_CHECK(m.add.size() == m.blocks.size());
  for (const ptq_example::int_conv& q : m.convs) {
    PTQ_FUZZ_CHECK(static_cast<ptq::index>(q.w.size()) == q.K * q.crs());
    PTQ_FUZZ_CHECK(static_cast<ptq::index>(q.E.size()) == q.K && q.out.channels() == q.K);
  }
  PTQ_FUZZ_CHECK(static_cast<ptq::index>(m.fc.w.size()) == m.fc.K * m.fc.C);
  // An accepted model is one the writer accepts, and its arrays read back to it.
  const std::map<std::string, ptq::io::array> again = ptq_example::int_model_to_arrays(m, "fuzz.npz");
  const ptq_example::int_model back = ptq_example::int_model_from_arrays(again, "fuzz.npz");
  PTQ_FUZZ_CHECK(back.convs.size() == m.convs.size());
  for (std::size_t i = 0; i < m.convs.size(); ++i) {
    PTQ_FUZZ_CHECK(back.convs[i].w == m.convs[i].w);
    PTQ_FUZZ_CHECK(back.convs[i].E == m.convs[i].E && back.convs[i].B == m.convs[i].B);
  }
  PTQ_FUZZ_CHECK(back.fc.w == m.fc.w);
  for (const char* key : {"conv_codes", "fc_codes"}) {
    const ptq::io::array &in = arrays.at(key), &out = again.at(key);
    PTQ_FUZZ_CHECK(in.type() == ptq::io::dtype::uint8 && out.type() == ptq::io::dtype::uint8);
    PTQ_FUZZ_CHECK(in.size() == out.size());
    PTQ_FUZZ_CHECK(in.size() == 0 || std::memcmp(in.bytes(), out.bytes(), in.nbytes()) == 0);
  }
  return 0;
}
