// int_io.hpp: an int_model (int_model.hpp) to and from an .npz file.
//
// write_int_model(path, m) writes ONLY the primary fields of the integer network, as a
// deflated .npz (ptq::io::write_npz, level 9) with few members: each zip member costs
// ~170 bytes (zip headers, the .npy header) and a ResNet has thousands of channels, so
// per-layer fields are concatenated over the layers in network order (resnet::convs()).
// Format version 2, the keys:
//   ptq_int_format   int32 [2]   magic 0x49515450 ("PTQI" little-endian), version 2
//   arch             int32 [6]   block type (0 basic, 1 bottleneck), max_pool (0/1),
//                                n_convs, n_blocks, input channels, classes
//   conv_geometry    int32 [n_convs, 6]   K, C, R, S, stride, pad
//   conv_names       uint8 [*]   the convs' names joined by '\n' (printable ASCII)
//   blocks           int32 [n_blocks, 4]  conv1, conv2, conv3 or -1, downsample or -1
//                                (a block's name is its conv1's name less ".conv1")
//   conv_wbits       uint8 [sum K]        bits of each output channel, 0..8
//   conv_codes       uint8 [*]   one bit stream per conv, concatenated in network order,
//                                each conv starting on a byte boundary. Within a conv,
//                                channel after channel, each channel's C R S unsigned codes
//                                qw = w + 2^(wbits-1) (w as int_conv::w stores it, in its
//                                order; the offset is 0 for a 0-bit channel) at exactly its
//                                wbits bits, LSB-first: code i of a conv starts at bit
//                                (sum of the bits before it), bit t of the stream is bit
//                                t % 8 of byte t / 8. A 0-bit channel takes no bits. A conv
//                                takes ceil(C R S sum_k wbits_k / 8) bytes; the unused high
//                                bits of its last byte are 0.
//   conv_floats      uint8 [4, 3, sum K]  u, e, bias (weight = u (w - e), the float bias)
//                                as float32 byte planes: [b, f, k] is byte b (little-endian,
//                                0 the lowest) of field f (0 u, 1 e, 2 bias) of channel k.
//                                numpy: a.reshape(4, -1).T.copy().view('<f4').reshape(3, -1)
//   grid_channels    int32 [1 + n_convs + n_blocks]   channels of the grids in the order
//                                input, act[0..n_convs), block_out[0..n_blocks): 1 (per
//                                tensor) or the tensor's channels
//   grid_scale       uint8 [4, sum grid_channels]  the float32 scales (finite, >= 0) as
//                                byte planes, [b, c] byte b of channel c's scale
//   grid_params      uint8 [sum grid_channels, 4]  per channel: zero_point, lo, hi, bits
//   fc_shape         int32 [2]   K (classes), C (the last block's channels)
//   fc_wbits         uint8 [K];  fc_codes  uint8 [*]: as conv_codes (one layer)
//   fc_floats        uint8 [4, 3, K]   as conv_floats
// Byte planes, not float32 arrays, because deflate compresses the planes of sign and
// exponent bytes and hardly the float32 arrays at all; records of four uint8 and 15
// members, not 22, save a little more. The bundled models at W4A4 (the paper's full
// method, per-channel bits 0..8, mean 4): ResNet-50 454 442 bytes = FP32 .npz / 7.07
// (codes 371 KB, floats 76 KB where float32 members took 84, other members 6 KB, zip
// headers 1.6 KB), ResNet-18 335 777 bytes = FP32 / 7.84 (codes 314 KB, floats 18 KB).
// The streams are written and read through a 64-bit accumulator, 32 bits at a time: the
// 23.5 M codes of an ImageNet ResNet-50 unpack in ~15 ms, read_int_model takes ~0.4 s.
// Version 1 (per-layer int4 nibbles or one byte a code, float32 members; ResNet-50 503 236
// bytes) is refused with a ptq::error that says to rewrite the file with resnet_ptq --export.
//
// The derived integers (int_conv::E, B, F, out; int_model::add) are NOT stored: the
// reader rebuilds them with the very functions build_int_model uses (detail::
// integer_stages and detail::add_stage), from the stored fields, which the builder has
// already rounded to float (u, e, bias, scales are float values). So a file cannot carry
// integers inconsistent with its scales, and a read model equals the written one field for
// field. write_int_model checks this: it refuses (ptq::error) a model whose floats are not
// float32 values, whose codes exceed their bits, or whose derived integers differ from the
// rebuilt ones, so every file it writes reads back to an identical model.
//
// read_int_model (and int_model_from_arrays, which the fuzz target drives) validates
// everything and throws ptq::error naming the file and the key: magic and version, dtypes
// (integer keys accept any integer dtype, range-checked; codes, names and byte planes
// uint8), shapes and counts (sum of K, the exact code bytes the wbits imply), wbits in
// 0..8, the unused bits of each layer's last code byte 0 (codes <= 2^wbits - 1 holds by
// construction), grid channel counts, zero points / lo / hi in [0, 255] with lo <= hi,
// grid bits 0..8, scales finite >= 0, u finite > 0, e and bias finite, the geometry (K, C
// >= 1, R == S odd in 1..11, pad == (R - 1) / 2, stride in 1..8), the channel chaining of
// the ResNet (each conv's C is its producer's K, downsample and identity paths match the
// block's output in channels and stride) and the blocks' indices in the order
// build_int_model produces; and before rebuilding a conv's integers, a conservative bound
// that keeps integer_stages' int64 arithmetic from overflowing. Sizes are checked against
// the arrays that are really there before anything is allocated; as 0-bit channels take no
// bytes, their codes (which the model holds as int8 zeros) are bounded too: at most 2^20
// plus 8 times the codes of the channels with bits, per key (conv_codes, fc_codes).
#pragma once

#include <cmath>
#include <cstdint>
#include <cstring>
#include <limits>
#include <map>
#include <string>
#include <vector>

#include <ptq/io/npz.hpp>

#include "int_model.hpp"

namespace ptq_example {

constexpr std::int32_t int_format_magic = 0x49515450;  // "PTQI" as little-endian bytes
constexpr std::int32_t int_format_version = 2;

namespace detail {
namespace int_io {

constexpr index max_kernel = 11, max_stride = 8, max_input_channels = 65536;

// A block's name: its conv1's name less ".conv1" ("layer2.0.conv1" -> "layer2.0").
inline std::string block_name(const std::string& conv1_name) {
  const std::string suffix = ".conv1";
  if (conv1_name.size() > suffix.size() &&
      conv1_name.compare(conv1_name.size() - suffix.size(), suffix.size(), suffix) == 0)
    return conv1_name.substr(0, conv1_name.size() - suffix.size());
  return conv1_name;
}

inline bool printable_name(const std::string& s) {
  if (s.empty()) return false;
  for (const char ch : s) {
    const auto c = static_cast<unsigned char>(ch);
    if (c < 0x20 || c > 0x7e) return false;
  }
  return true;
}

// a * b, or -1 when it would exceed 2^62.
inline std::int64_t mul(std::int64_t a, std::int64_t b) {
  if (a < 0 || b < 0) return -1;
  if (a != 0 && b > (std::int64_t{1} << 62) / a) return -1;
  return a * b;
}

// The code stream of a key (conv_codes, fc_codes) counted layer by layer before anything
// is allocated: its bytes (each layer rounded up to a byte), and its codes in channels with
// bits and in 0-bit channels, which take no bytes (see the top of this file).
struct code_count {
  std::int64_t bytes = 0, coded = 0, zero = 0;
  // Adds a layer of channels of n codes at bits wbits(0..K-1); false when a count passes 2^61.
  template <class Bits>
  bool add(std::int64_t K, std::int64_t n, const Bits& wbits) {
    std::int64_t sum = 0, zeros = 0;  // K <= 2^31, bits <= 8: no overflow
    for (std::int64_t k = 0; k < K; ++k) {
      sum += wbits(k);
      zeros += wbits(k) == 0;
    }
    const std::int64_t bits = mul(n, sum), z = mul(n, zeros), c = mul(n, K - zeros);
    constexpr std::int64_t limit = std::int64_t{1} << 61;
    if (bits < 0 || z < 0 || c < 0 || bits / 8 + 1 > limit - bytes || z > limit - zero || c > limit - coded) return false;
    bytes += bits / 8 + (bits % 8 != 0);
    zero += z;
    coded += c;
    return true;
  }
  // The 0-bit channels' codes within 2^20 + 8 x the others' (which take >= 1 bit each).
  bool zero_bounded() const { return zero <= (std::int64_t{1} << 20) + 8 * coded; }
};

// Byte planes of float32 fields (see the top of this file): [b][f][k] is byte b of
// fields[f][k], little-endian whatever the host.
inline std::vector<std::uint8_t> float_planes(const std::vector<const std::vector<float>*>& fields) {
  const std::size_t n = fields.empty() ? 0 : fields[0]->size(), nf = fields.size();
  std::vector<std::uint8_t> out(4 * nf * n);
  for (std::size_t f = 0; f < nf; ++f)
    for (std::size_t k = 0; k < n; ++k) {
      std::uint32_t v;
      std::memcpy(&v, &(*fields[f])[k], 4);
      for (std::size_t b = 0; b < 4; ++b) out[(b * nf + f) * n + k] = static_cast<std::uint8_t>(v >> (8 * b));
    }
  return out;
}

inline bool same(const ptq::fixed_multiplier& a, const ptq::fixed_multiplier& b) {
  return a.multiplier == b.multiplier && a.shift == b.shift;
}
inline bool same(const std::vector<ptq::fixed_multiplier>& a, const std::vector<ptq::fixed_multiplier>& b) {
  if (a.size() != b.size()) return false;
  for (std::size_t i = 0; i < a.size(); ++i)
    if (!same(a[i], b[i])) return false;
  return true;
}
inline bool same(const ptq::requantize_params& a, const ptq::requantize_params& b) {
  return a.bias == b.bias && same(a.mult, b.mult) && a.offset == b.offset && a.lo == b.lo && a.hi == b.hi;
}
inline bool same(const ptq::add_params& a, const ptq::add_params& b) {
  return a.left_shift == b.left_shift && a.za == b.za && a.zb == b.zb && a.offset == b.offset && same(a.ma, b.ma) &&
         same(a.mb, b.mb) && same(a.mo, b.mo) && a.lo == b.lo && a.hi == b.hi;
}

// The writer's side: every value checked to be what the format can hold exactly.
struct writer {
  static constexpr const char* where = "ptq_example::write_int_model";
  const std::string& path;

  template <class... Args>
  [[noreturn]] void fail(const Args&... args) const {
    ptq::detail::fail(where, path, ": ", args...);
  }

  std::int32_t i32(index v, const std::string& what) const {
    if (v < std::numeric_limits<std::int32_t>::min() || v > std::numeric_limits<std::int32_t>::max())
      fail(what, " = ", v, " does not fit int32");
    return static_cast<std::int32_t>(v);
  }
  std::uint8_t u8(index v, const std::string& what) const {
    if (v < 0 || v > 255) fail(what, " = ", v, " is outside [0, 255]");
    return static_cast<std::uint8_t>(v);
  }
  float f32(double v, const std::string& what) const {
    const auto f = static_cast<float>(v);
    if (!std::isfinite(v) || static_cast<double>(f) != v)
      fail(what, " = ", v, " is not a finite float32 value (the builder rounds u, e, bias and scales to float)");
    return f;
  }

  // Codes of one layer (K x n, int8 w + offset) appended to `out` as its bit stream (see
  // the top of this file); wbits, u, e, bias to theirs.
  void layer(const std::string& what, index K, index n, const std::vector<std::int8_t>& w, const Eigen::VectorXi& wbits,
             const Eigen::VectorXd& u, const Eigen::VectorXd& e, const Eigen::VectorXd& bias,
             std::vector<std::uint8_t>& out, std::vector<std::uint8_t>& bits_out, std::vector<float>& u_out,
             std::vector<float>& e_out, std::vector<float>& bias_out) const {
    if (static_cast<index>(w.size()) != K * n || wbits.size() != K || u.size() != K || e.size() != K ||
        bias.size() != K)
      fail(what, ": ", w.size(), " codes, ", wbits.size(), " wbits, ", u.size(), " u, ", e.size(), " e, ",
           bias.size(), " bias for K = ", K, " channels of ", n, " codes");
    std::int64_t sum_bits = 0;
    for (index k = 0; k < K; ++k) {
      const int b = wbits[k];
      if (b < 0 || b > 8) fail(what, " channel ", k, ": wbits = ", b, " is outside [0, 8]");
      sum_bits += b;
      bits_out.push_back(static_cast<std::uint8_t>(b));
      const std::string ch = what + " channel " + std::to_string(k);
      if (!(u[k] > 0)) fail(ch, ": u = ", u[k], " is not positive");
      u_out.push_back(f32(u[k], ch + ": u"));
      e_out.push_back(f32(e[k], ch + ": e"));
      bias_out.push_back(f32(bias[k], ch + ": bias"));
    }
    // The stream: codes LSB-first into a 64-bit accumulator (< 2^have), 32 bits out at a time.
    const std::size_t at = out.size(), bits = static_cast<std::size_t>(sum_bits * n);
    out.resize(at + bits / 8 + (bits % 8 != 0));
    std::uint8_t* p = out.data() + at;
    std::uint64_t acc = 0;
    int have = 0;
    for (index k = 0; k < K; ++k) {
      const int b = wbits[k], off = code_offset(b), qmax = (1 << b) - 1;
      const std::int8_t* row = w.data() + k * n;
      for (index j = 0; j < n; ++j) {
        const int c = row[j] + off;
        if (c < 0 || c > qmax)
          fail(what, " channel ", k, " code ", j, ": w = ", c - off, " is outside the ", b, "-bit codes [", -off, ", ",
               qmax - off, "]");
        acc |= static_cast<std::uint64_t>(c) << have;
        have += b;
        if (have >= 32) {
          for (int i = 0; i < 4; ++i) p[i] = static_cast<std::uint8_t>(acc >> (8 * i));
          p += 4;
          acc >>= 32;
          have -= 32;
        }
      }
    }
    for (; have > 0; have -= 8, acc >>= 8) *p++ = static_cast<std::uint8_t>(acc);
  }

  // Appends grid g's channel count, scales and (zero_point, lo, hi, bits) records.
  void grid(const std::string& what, const int_grid& g, index channels, std::vector<std::int32_t>& counts,
            std::vector<float>& scale, std::vector<std::uint8_t>& params) const {
    const index n = g.channels();
    if (n != 1 && n != channels) fail(what, ": ", n, " channels, expected 1 or ", channels);
    if (g.zero_point.size() != n || g.lo.size() != n || g.hi.size() != n || g.bits.size() != n)
      fail(what, ": scale, zero_point, lo, hi, bits have ", n, ", ", g.zero_point.size(), ", ", g.lo.size(), ", ",
           g.hi.size(), ", ", g.bits.size(), " channels");
    counts.push_back(static_cast<std::int32_t>(n));
    for (index c = 0; c < n; ++c) {
      const std::string ch = what + " channel " + std::to_string(c);
      if (!(g.scale[c] >= 0)) fail(ch, ": scale = ", g.scale[c], " is negative or NaN");
      scale.push_back(f32(g.scale[c], ch + ": scale"));
      params.push_back(u8(g.zero_point[c], ch + ": zero_point"));
      params.push_back(u8(g.lo[c], ch + ": lo"));
      params.push_back(u8(g.hi[c], ch + ": hi"));
      if (g.lo[c] > g.hi[c]) fail(ch, ": lo = ", g.lo[c], " > hi = ", g.hi[c]);
      if (g.bits[c] < 0 || g.bits[c] > 8) fail(ch, ": bits = ", g.bits[c], " is outside [0, 8]");
      params.push_back(static_cast<std::uint8_t>(g.bits[c]));
    }
  }
};

template <class T>
ptq::io::array vec(const std::vector<T>& v, const std::string& key) {
  return ptq::io::array::from(v.data(), {static_cast<index>(v.size())}, key);
}

// The reader's side: every key looked up, typed and shaped, or a ptq::error naming it.
struct reader {
  static constexpr const char* where = "ptq_example::read_int_model";
  const std::map<std::string, ptq::io::array>& arrays;
  const std::string& file;

  template <class... Args>
  [[noreturn]] void fail(const std::string& key, const Args&... args) const {
    ptq::detail::fail(where, file, " (key '", key, "'): ", args...);
  }

  const ptq::io::array& get(const std::string& key) const {
    const auto it = arrays.find(key);
    if (it == arrays.end()) fail(key, "the key is missing (an integer model file has it)");
    return it->second;
  }
  const ptq::io::array& shaped(const std::string& key, const std::vector<index>& shape) const {
    const ptq::io::array& a = get(key);
    if (a.shape() != shape)
      fail(key, "shape ", ptq::io::detail::shape_string(a.shape()), " is not the expected ",
           ptq::io::detail::shape_string(shape));
    return a;
  }
  // A 1-D array's length (any length accepted).
  index length(const std::string& key) const {
    const ptq::io::array& a = get(key);
    if (a.rank() != 1) fail(key, "shape ", ptq::io::detail::shape_string(a.shape()), " is not 1-D");
    return a.size();
  }
  // Integer values of any integer dtype, in [lo, hi].
  std::vector<std::int64_t> ints(const std::string& key, const std::vector<index>& shape, std::int64_t lo,
                                 std::int64_t hi) const {
    const ptq::io::array& a = shaped(key, shape);
    if (a.type() != ptq::io::dtype::uint8 && a.type() != ptq::io::dtype::int32 && a.type() != ptq::io::dtype::int64)
      fail(key, "dtype ", ptq::io::dtype_name(a.type()), " is not an integer dtype (int32 or uint8)");
    std::vector<std::int64_t> v = a.to<std::int64_t>();
    for (std::size_t i = 0; i < v.size(); ++i)
      if (v[i] < lo || v[i] > hi) fail(key, "element ", i, " = ", v[i], " is outside [", lo, ", ", hi, "]");
    return v;
  }
  // The float32 values of the byte planes `key`, uint8 [4, n] (fields == 0) or [4, fields, n]
  // (see the top of this file): field f of element k at [f n + k].
  std::vector<float> planes(const std::string& key, index fields, index n) const {
    const ptq::io::array& a = fields == 0 ? shaped(key, {4, n}) : shaped(key, {4, fields, n});
    if (a.type() != ptq::io::dtype::uint8) fail(key, "dtype ", ptq::io::dtype_name(a.type()), " is not uint8");
    const std::uint8_t* p = a.data<std::uint8_t>();
    const std::size_t m = static_cast<std::size_t>(a.size() / 4);
    std::vector<float> v(m);
    for (std::size_t i = 0; i < m; ++i) {
      const std::uint32_t x = std::uint32_t{p[i]} | std::uint32_t{p[m + i]} << 8 | std::uint32_t{p[2 * m + i]} << 16 |
                              std::uint32_t{p[3 * m + i]} << 24;
      std::memcpy(&v[i], &x, 4);
    }
    return v;
  }
  const std::uint8_t* bytes(const std::string& key, index n) const {
    const ptq::io::array& a = shaped(key, {n});
    if (a.type() != ptq::io::dtype::uint8) fail(key, "dtype ", ptq::io::dtype_name(a.type()), " is not uint8");
    return a.data<std::uint8_t>();
  }

  // One layer's codes from the bit stream `codes` at byte `at` (advanced past the layer;
  // the caller has checked that the stream holds every layer's bytes): K x n codes at
  // wbits, LSB-first (see the top of this file), returned as int8 w = qw - offset. A code
  // of b bits is <= 2^b - 1 by construction; the unused bits of the last byte must be 0.
  std::vector<std::int8_t> codes(const std::string& key, const std::string& layer, const std::uint8_t* codes,
                                 std::int64_t& at, index K, index n, const std::vector<int>& wbits) const {
    std::int64_t sum_bits = 0;
    for (int b : wbits) sum_bits += b;
    const std::int64_t bits = sum_bits * n, nbytes = bits / 8 + (bits % 8 != 0);
    const std::uint8_t* p = codes + at;
    const std::uint8_t* const end = p + nbytes;
    std::vector<std::int8_t> w(static_cast<std::size_t>(K * n));
    std::uint64_t acc = 0;  // < 2^have: the bits read and not yet used
    int have = 0;
    for (index k = 0; k < K; ++k) {
      const int b = wbits[static_cast<std::size_t>(k)], off = code_offset(b);
      if (b == 0) continue;  // codes 0, w 0
      const std::uint64_t mask = (std::uint64_t{1} << b) - 1;
      std::int8_t* out = w.data() + k * n;
      for (index j = 0; j < n; ++j) {
        if (have < b) {
          if (end - p >= 4) {
            acc |= (std::uint64_t{p[0]} | std::uint64_t{p[1]} << 8 | std::uint64_t{p[2]} << 16 |
                    std::uint64_t{p[3]} << 24) << have;
            p += 4;
            have += 32;
          } else {
            acc |= std::uint64_t{*p++} << have;
            have += 8;
          }
        }
        out[j] = static_cast<std::int8_t>(static_cast<int>(acc & mask) - off);
        acc >>= b;
        have -= b;
      }
    }
    // Every byte of the layer read (its last holds its last code's bits), what is left the padding.
    if (acc != 0)
      fail(key, layer, ": the ", have, " unused high bits of its last byte (after its ", bits,
           " code bits) are ", acc, ", not 0");
    at += nbytes;
    return w;
  }

  // u (finite > 0), e and bias (finite) of channels [first, first + K) from `f`, the decoded
  // byte planes `key` (u, e, bias of the `total` channels one after the other).
  void channel_floats(const std::string& key, const std::string& layer, const std::vector<float>& f, index first,
                      index K, index total, Eigen::VectorXd& u, Eigen::VectorXd& e, Eigen::VectorXd& bias) const {
    u.resize(K);
    e.resize(K);
    bias.resize(K);
    for (index k = 0; k < K; ++k) {
      const auto i = static_cast<std::size_t>(first + k), n = static_cast<std::size_t>(total);
      const float uk = f[i], ek = f[n + i], bk = f[2 * n + i];
      if (!(std::isfinite(uk) && uk > 0)) fail(key, layer, " channel ", k, ": u = ", uk, " is not finite > 0");
      if (!std::isfinite(ek)) fail(key, layer, " channel ", k, ": e = ", ek, " is not finite");
      if (!std::isfinite(bk)) fail(key, layer, " channel ", k, ": bias = ", bk, " is not finite");
      u[k] = uk;
      e[k] = ek;
      bias[k] = bk;
    }
  }
};

}  // namespace int_io
}  // namespace detail

// The arrays of m's file (see the top of this file); `path` names it in errors.
inline std::map<std::string, ptq::io::array> int_model_to_arrays(const int_model& m, const std::string& path) {
  using detail::int_io::vec;
  const detail::int_io::writer w{path};
  const index n_convs = static_cast<index>(m.convs.size()), n_blocks = static_cast<index>(m.blocks.size());
  if (n_convs < 2 || n_blocks < 1) w.fail("the model has ", n_convs, " convs and ", n_blocks, " blocks");
  if (static_cast<index>(m.act.size()) != n_convs || static_cast<index>(m.block_out.size()) != n_blocks ||
      static_cast<index>(m.add.size()) != n_blocks)
    w.fail("act, block_out, add have ", m.act.size(), ", ", m.block_out.size(), ", ", m.add.size(),
           " entries for ", n_convs, " convs and ", n_blocks, " blocks");
  std::map<std::string, ptq::io::array> a;
  const std::vector<std::int32_t> format{int_format_magic, int_format_version};
  a["ptq_int_format"] = vec(format, "ptq_int_format");
  const std::vector<std::int32_t> arch{m.type == block_type::bottleneck ? 1 : 0, m.max_pool ? 1 : 0,
                                       w.i32(n_convs, "n_convs"),      w.i32(n_blocks, "n_blocks"),
                                       w.i32(m.input_channels(), "input channels"), w.i32(m.classes(), "classes")};
  a["arch"] = vec(arch, "arch");

  std::vector<std::int32_t> geometry;
  std::string names;
  std::vector<std::uint8_t> codes, wbits;
  std::vector<float> u, e, bias;
  for (const int_conv& q : m.convs) {
    if (!detail::int_io::printable_name(q.name))
      w.fail("conv '", ptq::io::detail::printable(q.name.data(), q.name.size()),
             "': a name must be 1 or more printable ASCII characters");
    for (index v : {q.K, q.C, q.R, q.S, q.stride, q.pad}) geometry.push_back(w.i32(v, q.name + " geometry"));
    names += (names.empty() ? "" : "\n") + q.name;
    if (q.K < 1 || q.crs() < 1) w.fail("conv '", q.name, "': K = ", q.K, ", C * R * S = ", q.crs());
    w.layer("conv '" + q.name + "'", q.K, q.crs(), q.w, q.wbits, q.u, q.e, q.bias, codes, wbits, u, e, bias);
  }
  a["conv_geometry"] = ptq::io::array::from(geometry.data(), {n_convs, 6}, "conv_geometry");
  a["conv_names"] = ptq::io::array::from(reinterpret_cast<const std::uint8_t*>(names.data()),
                                         {static_cast<index>(names.size())}, "conv_names");
  a["conv_codes"] = vec(codes, "conv_codes");
  a["conv_wbits"] = vec(wbits, "conv_wbits");
  const std::vector<std::uint8_t> conv_floats = detail::int_io::float_planes({&u, &e, &bias});
  a["conv_floats"] = ptq::io::array::from(conv_floats.data(), {4, 3, static_cast<index>(u.size())}, "conv_floats");

  std::vector<std::int32_t> blocks;
  for (const resnet_block& b : m.blocks) {
    for (index v : {b.conv1, b.conv2, b.conv3, b.downsample}) blocks.push_back(w.i32(v, "block " + b.name));
    if (b.conv1 < 0 || b.conv1 >= n_convs) w.fail("block '", b.name, "': conv1 = ", b.conv1);
    const std::string derived = detail::int_io::block_name(m.convs[static_cast<std::size_t>(b.conv1)].name);
    if (b.name != derived)
      w.fail("block '", b.name, "': the format names a block after its conv1 ('", derived,
             "'): rename the block or its conv");
  }
  a["blocks"] = ptq::io::array::from(blocks.data(), {n_blocks, 4}, "blocks");

  std::vector<std::int32_t> counts;
  std::vector<float> scale;
  std::vector<std::uint8_t> params;
  w.grid("the input grid", m.input, m.input_channels(), counts, scale, params);
  for (index i = 0; i < n_convs; ++i)
    w.grid("the grid of conv '" + m.convs[static_cast<std::size_t>(i)].name + "'", m.act[static_cast<std::size_t>(i)],
           m.convs[static_cast<std::size_t>(i)].K, counts, scale, params);
  for (index b = 0; b < n_blocks; ++b) {
    const resnet_block& bl = m.blocks[static_cast<std::size_t>(b)];
    const index last = bl.last();
    if (last < 0 || last >= n_convs) w.fail("block '", bl.name, "': its last conv is ", last);
    w.grid("the output grid of block '" + bl.name + "'", m.block_out[static_cast<std::size_t>(b)],
           m.convs[static_cast<std::size_t>(last)].K, counts, scale, params);
  }
  a["grid_channels"] = vec(counts, "grid_channels");
  const std::vector<std::uint8_t> scale_planes = detail::int_io::float_planes({&scale});
  a["grid_scale"] = ptq::io::array::from(scale_planes.data(), {4, static_cast<index>(scale.size())}, "grid_scale");
  a["grid_params"] = ptq::io::array::from(params.data(), {static_cast<index>(scale.size()), 4}, "grid_params");

  const std::vector<std::int32_t> fc_shape{w.i32(m.fc.K, "fc K"), w.i32(m.fc.C, "fc C")};
  if (m.fc.K < 1 || m.fc.C < 1) w.fail("the classifier is ", m.fc.K, " x ", m.fc.C);
  std::vector<std::uint8_t> fc_codes, fc_wbits;
  std::vector<float> fc_u, fc_e, fc_bias;
  w.layer("the classifier", m.fc.K, m.fc.C, m.fc.w, m.fc.wbits, m.fc.u, m.fc.e, m.fc.bias, fc_codes, fc_wbits, fc_u,
          fc_e, fc_bias);
  a["fc_shape"] = vec(fc_shape, "fc_shape");
  a["fc_codes"] = vec(fc_codes, "fc_codes");
  a["fc_wbits"] = vec(fc_wbits, "fc_wbits");
  const std::vector<std::uint8_t> fc_floats = detail::int_io::float_planes({&fc_u, &fc_e, &fc_bias});
  a["fc_floats"] = ptq::io::array::from(fc_floats.data(), {4, 3, m.fc.K}, "fc_floats");
  return a;
}

// The integer model the arrays of a file hold (see the top of this file); `file` names it
// in errors. Shared by read_int_model and the fuzz target fuzz_int_model.
inline int_model int_model_from_arrays(const std::map<std::string, ptq::io::array>& arrays, const std::string& file) {
  using detail::int_io::mul;
  const detail::int_io::reader r{arrays, file};
  constexpr std::int64_t i32max = std::numeric_limits<std::int32_t>::max();

  const std::vector<std::int64_t> format =
      r.ints("ptq_int_format", {2}, std::numeric_limits<std::int32_t>::min(), i32max);
  if (format[0] != int_format_magic)
    r.fail("ptq_int_format", "magic ", format[0], " is not ", int_format_magic, " (0x49515450): not a ptq integer model");
  if (format[1] == 1)
    r.fail("ptq_int_format", "version 1 (int4 or byte codes, float32 members) is no longer read (this reader reads "
           "version ", int_format_version, ", codes at their bits): rewrite the file with resnet_ptq --export");
  if (format[1] != int_format_version)
    r.fail("ptq_int_format", "version ", format[1], " is not supported (this reader reads version ", int_format_version,
           ")");

  const std::vector<std::int64_t> arch = r.ints("arch", {6}, 0, i32max);
  if (arch[0] > 1) r.fail("arch", "block type ", arch[0], " is neither 0 (basic) nor 1 (bottleneck)");
  if (arch[1] > 1) r.fail("arch", "max_pool ", arch[1], " is neither 0 nor 1");
  const index n_convs = arch[2], n_blocks = arch[3], in_channels = arch[4], classes = arch[5];
  if (n_blocks < 1 || n_convs < 1 + 2 * n_blocks)
    r.fail("arch", n_convs, " convs and ", n_blocks, " blocks: a ResNet has at least one block and 2 convs a block "
           "after the stem");
  if (in_channels < 1 || in_channels > detail::int_io::max_input_channels)
    r.fail("arch", "input channels = ", in_channels, " is outside [1, ", detail::int_io::max_input_channels, "]");
  if (classes < 1) r.fail("arch", "classes = ", classes, " is not positive");

  int_model m;
  m.type = arch[0] == 1 ? block_type::bottleneck : block_type::basic;
  m.max_pool = arch[1] == 1;
  const bool bottleneck = m.type == block_type::bottleneck;

  // Geometry: every conv alone.
  const std::vector<std::int64_t> geo = r.ints("conv_geometry", {n_convs, 6}, -i32max - 1, i32max);
  m.convs.resize(static_cast<std::size_t>(n_convs));
  for (index i = 0; i < n_convs; ++i) {
    int_conv& q = m.convs[static_cast<std::size_t>(i)];
    const std::int64_t* g = geo.data() + 6 * i;
    q.K = g[0], q.C = g[1], q.R = g[2], q.S = g[3], q.stride = g[4], q.pad = g[5];
    if (q.K < 1 || q.C < 1 || q.R < 1 || q.R > detail::int_io::max_kernel || q.S != q.R || q.R % 2 == 0 ||
        q.stride < 1 || q.stride > detail::int_io::max_stride || q.pad != (q.R - 1) / 2)
      r.fail("conv_geometry", "conv ", i, ": K = ", q.K, ", C = ", q.C, ", R = ", q.R, ", S = ", q.S, ", stride = ",
             q.stride, ", pad = ", q.pad, " is not a ResNet conv (K, C >= 1; R == S odd in [1, ",
             detail::int_io::max_kernel, "]; pad = (R - 1) / 2; stride in [1, ", detail::int_io::max_stride, "])");
  }

  // Names.
  {
    const index n = r.length("conv_names");
    const std::uint8_t* p = r.bytes("conv_names", n);
    const std::string all(reinterpret_cast<const char*>(p), static_cast<std::size_t>(n));
    std::size_t at = 0;
    index count = 0;
    for (;;) {
      const std::size_t end = std::min(all.find('\n', at), all.size());
      if (count == n_convs) r.fail("conv_names", "holds more than the ", n_convs, " names of the convs");
      std::string name = all.substr(at, end - at);
      if (!detail::int_io::printable_name(name))
        r.fail("conv_names", "conv ", count, ": the name '", ptq::io::detail::printable(name.data(), name.size()),
               "' is not 1 or more printable ASCII characters");
      m.convs[static_cast<std::size_t>(count++)].name = std::move(name);
      if (end == all.size()) break;
      at = end + 1;
    }
    if (count != n_convs) r.fail("conv_names", "holds ", count, " names, expected ", n_convs);
  }

  // Blocks: indices in build_int_model's order, channels chained, strides matched.
  {
    const std::vector<std::int64_t> bl = r.ints("blocks", {n_blocks, 4}, -1, i32max);
    auto conv = [&](index i) -> const int_conv& { return m.convs[static_cast<std::size_t>(i)]; };
    if (conv(0).C != in_channels)
      r.fail("conv_geometry", "conv '", conv(0).name, "' has C = ", conv(0).C, ", expected the ", in_channels,
             " input channels of 'arch'");
    index next = 1, cin = conv(0).K;
    for (index b = 0; b < n_blocks; ++b) {
      resnet_block B;
      B.conv1 = bl[4 * b], B.conv2 = bl[4 * b + 1], B.conv3 = bl[4 * b + 2], B.downsample = bl[4 * b + 3];
      const index last = bottleneck ? next + 2 : next + 1;
      const bool ok = B.conv1 == next && B.conv2 == next + 1 && B.conv3 == (bottleneck ? next + 2 : -1) &&
                      (B.downsample == -1 || B.downsample == last + 1) &&
                      (B.downsample >= 0 ? B.downsample : last) < n_convs;
      if (!ok)
        r.fail("blocks", "block ", b, " = [", B.conv1, ", ", B.conv2, ", ", B.conv3, ", ", B.downsample,
               "]: expected conv1 = ", next, ", conv2 = ", next + 1, ", conv3 = ", bottleneck ? next + 2 : -1,
               ", downsample = -1 or ", last + 1, " (convs in network order, ", n_convs, " of them)");
      B.name = detail::int_io::block_name(conv(B.conv1).name);
      // Channels and strides.
      index chain = cin, stride = 1;
      for (index i = B.conv1; i <= last; ++i) {
        if (conv(i).C != chain)
          r.fail("conv_geometry", "conv '", conv(i).name, "' has C = ", conv(i).C, ", expected ", chain,
                 " (the channels of its input)");
        chain = conv(i).K;
        stride = std::min<index>(stride * conv(i).stride, 1 << 30);
      }
      if (B.downsample >= 0) {
        const int_conv& d = conv(B.downsample);
        if (d.C != cin || d.K != chain || d.stride != stride)
          r.fail("conv_geometry", "downsample '", d.name, "' is C = ", d.C, ", K = ", d.K, ", stride ", d.stride,
                 ", expected C = ", cin, ", K = ", chain, ", stride ", stride, " (the block's input and output)");
      } else if (cin != chain || stride != 1) {
        r.fail("blocks", "block ", b, " ('", B.name, "') has no downsample but maps ", cin, " to ", chain,
               " channels at stride ", stride, " (an identity path needs the same channels at stride 1)");
      }
      cin = chain;
      next = (B.downsample >= 0 ? B.downsample : last) + 1;
      m.blocks.push_back(B);
    }
    if (next != n_convs)
      r.fail("blocks", "the blocks use convs 0..", next - 1, " of the ", n_convs, " in 'conv_geometry'");
  }

  // Per-channel fields and codes.
  index sum_k = 0;
  for (const int_conv& q : m.convs) sum_k += q.K;  // K <= 2^31 - 1 each, n_convs <= the data: no overflow
  const std::vector<std::int64_t> wbits = r.ints("conv_wbits", {sum_k}, 0, 8);
  {
    detail::int_io::code_count count;
    index first = 0;
    for (const int_conv& q : m.convs) {
      const std::int64_t n = mul(q.C, q.R * q.S);
      if (!count.add(q.K, n, [&](std::int64_t k) { return wbits[static_cast<std::size_t>(first + k)]; }))
        r.fail("conv_geometry", "conv '", q.name, "' has more codes than any file can hold");
      first += q.K;
    }
    const index have_bytes = r.length("conv_codes");
    if (have_bytes != count.bytes)
      r.fail("conv_codes", have_bytes, " bytes, expected ", count.bytes,
             " (the codes of the convs at their 'conv_wbits', each conv rounded up to a byte)");
    if (!count.zero_bounded())
      r.fail("conv_wbits", "the 0-bit channels hold ", count.zero, " codes, more than 2^20 + 8 x the ", count.coded,
             " codes of the channels with bits (a file's 0-bit channels are few)");
  }
  const std::uint8_t* codes = r.bytes("conv_codes", r.length("conv_codes"));
  const std::vector<float> conv_floats = r.planes("conv_floats", 3, sum_k);
  {
    index first = 0;
    std::int64_t at = 0;
    for (int_conv& q : m.convs) {
      std::vector<int> bits(static_cast<std::size_t>(q.K));
      q.wbits.resize(q.K);
      for (index k = 0; k < q.K; ++k) q.wbits[k] = bits[static_cast<std::size_t>(k)] =
          static_cast<int>(wbits[static_cast<std::size_t>(first + k)]);
      q.w = r.codes("conv_codes", "conv '" + q.name + "'", codes, at, q.K, q.crs(), bits);
      r.channel_floats("conv_floats", "conv '" + q.name + "'", conv_floats, first, q.K, sum_k, q.u, q.e, q.bias);
      first += q.K;
    }
  }

  // Grids.
  {
    const index n_grids = 1 + n_convs + n_blocks;
    const std::vector<std::int64_t> counts = r.ints("grid_channels", {n_grids}, 1, i32max);
    std::vector<index> tensor{in_channels};
    for (const int_conv& q : m.convs) tensor.push_back(q.K);
    for (const resnet_block& b : m.blocks) tensor.push_back(m.convs[static_cast<std::size_t>(b.last())].K);
    index total = 0;
    for (index g = 0; g < n_grids; ++g) {
      const auto gi = static_cast<std::size_t>(g);
      if (counts[gi] != 1 && counts[gi] != tensor[gi])
        r.fail("grid_channels", "grid ", g, " has ", counts[gi], " channels, expected 1 or its tensor's ", tensor[gi]);
      total += counts[gi];
    }
    const std::vector<float> scale = r.planes("grid_scale", 0, total);
    const std::vector<std::int64_t> params = r.ints("grid_params", {total, 4}, 0, 255);
    index at = 0;
    std::vector<int_grid> grids(static_cast<std::size_t>(n_grids));
    for (index g = 0; g < n_grids; ++g) {
      int_grid& G = grids[static_cast<std::size_t>(g)];
      const index n = counts[static_cast<std::size_t>(g)];
      G.scale.resize(n);
      G.zero_point.resize(n);
      G.lo.resize(n);
      G.hi.resize(n);
      G.bits.resize(n);
      for (index c = 0; c < n; ++c, ++at) {
        const auto ai = static_cast<std::size_t>(at);
        const std::int64_t* p = params.data() + 4 * ai;  // zero_point, lo, hi, bits
        if (!(std::isfinite(scale[ai]) && scale[ai] >= 0))
          r.fail("grid_scale", "grid ", g, " channel ", c, ": scale = ", scale[ai], " is not finite >= 0");
        if (p[1] > p[2]) r.fail("grid_params", "grid ", g, " channel ", c, ": lo = ", p[1], " > hi = ", p[2]);
        if (p[3] > 8) r.fail("grid_params", "grid ", g, " channel ", c, ": bits = ", p[3], " is outside [0, 8]");
        G.scale[c] = scale[ai];
        G.zero_point[c] = static_cast<int>(p[0]);
        G.lo[c] = static_cast<int>(p[1]);
        G.hi[c] = static_cast<int>(p[2]);
        G.bits[c] = static_cast<int>(p[3]);
      }
    }
    m.input = std::move(grids[0]);
    m.act.assign(grids.begin() + 1, grids.begin() + 1 + n_convs);
    m.block_out.assign(grids.begin() + 1 + n_convs, grids.end());
  }

  // Classifier.
  {
    const std::vector<std::int64_t> shape = r.ints("fc_shape", {2}, 1, i32max);
    const resnet_block& lb = m.blocks.back();
    const index features = m.convs[static_cast<std::size_t>(lb.last())].K;
    if (shape[0] != classes || shape[1] != features)
      r.fail("fc_shape", "the classifier is ", shape[0], " x ", shape[1], ", expected ", classes, " classes x ",
             features, " features (the last block's channels)");
    m.fc.K = shape[0];
    m.fc.C = shape[1];
    const std::vector<std::int64_t> fb = r.ints("fc_wbits", {m.fc.K}, 0, 8);
    std::vector<int> bits(fb.begin(), fb.end());
    detail::int_io::code_count count;
    if (!count.add(m.fc.K, m.fc.C, [&](std::int64_t k) { return bits[static_cast<std::size_t>(k)]; }))
      r.fail("fc_shape", "the classifier has more codes than any file can hold");
    const index have = r.length("fc_codes");
    if (have != count.bytes)
      r.fail("fc_codes", have, " bytes, expected ", count.bytes, " (the classifier's codes at its 'fc_wbits')");
    if (!count.zero_bounded())
      r.fail("fc_wbits", "the 0-bit channels hold ", count.zero, " codes, more than 2^20 + 8 x the ", count.coded,
             " codes of the channels with bits");
    std::int64_t at = 0;
    m.fc.wbits.resize(m.fc.K);
    for (index k = 0; k < m.fc.K; ++k) m.fc.wbits[k] = bits[static_cast<std::size_t>(k)];
    m.fc.w = r.codes("fc_codes", "the classifier", r.bytes("fc_codes", have), at, m.fc.K, m.fc.C, bits);
    r.channel_floats("fc_floats", "the classifier", r.planes("fc_floats", 3, m.fc.K), 0, m.fc.K, m.fc.K, m.fc.u, m.fc.e,
                     m.fc.bias);
  }

  // The derived integers, rebuilt as build_int_model builds them. First a conservative
  // bound (F <= 24) that keeps integer_stages' int64 terms E Z, qz 2^F and their sum far
  // from overflowing; a model the builder made is orders of magnitude inside it.
  for (std::size_t i = 0; i < m.convs.size(); ++i) {
    int_conv& q = m.convs[i];
    const int_grid& in = m.input_grid(static_cast<index>(i));
    const index crs = q.crs(), C = q.C, RS = q.R * q.S;
    // Z = sum_j z_j (the same for every channel), qz = sum_j qw_kj z_j exactly in int64
    // (|qz| <= 128 * 255 * crs); code j is (r, s, c) with c = j % C.
    std::vector<std::int64_t> z(static_cast<std::size_t>(C));
    std::int64_t zsum = 0;
    for (index c = 0; c < C; ++c) zsum += z[static_cast<std::size_t>(c)] = in.zero_point[in.at(c)];
    const double Z = static_cast<double>(zsum) * static_cast<double>(RS);
    for (index k = 0; k < q.K; ++k) {
      std::int64_t qzi = 0;
      if (zsum != 0) {
        const std::int8_t* w = q.w.data() + k * crs;
        for (index rs = 0; rs < RS; ++rs, w += C)
          for (index c = 0; c < C; ++c) qzi += w[c] * z[static_cast<std::size_t>(c)];
      }
      const double two24 = 16777216.0, e = std::abs(q.e[k]), qz = static_cast<double>(qzi);
      if (!(e <= 1073741824.0 && (e * two24 + 1) * Z + std::abs(qz) * two24 < 0x1p61))
        r.fail("conv_floats", "conv '", q.name, "' channel ", k, ": e = ", q.e[k], " with zero points summing to ", Z,
               " overflows the fixed-point stage");
    }
    try {
      detail::integer_stages(q, in, m.act[i]);
    } catch (const ptq::error& err) {
      ptq::detail::fail(detail::int_io::reader::where, file, " (key 'conv_codes'): conv '", q.name,
                        "': no fixed-point stage for its codes, u, e, bias and grids: ", err.what());
    }
  }
  for (std::size_t b = 0; b < m.blocks.size(); ++b) {
    const resnet_block& bl = m.blocks[b];
    const index last = bl.last();
    const int_grid& id = bl.downsample >= 0 ? m.act[static_cast<std::size_t>(bl.downsample)] : m.input_grid(bl.conv1);
    try {
      m.add.push_back(detail::add_stage(m.act[static_cast<std::size_t>(last)], id, m.block_out[b],
                                        m.convs[static_cast<std::size_t>(last)].K));
      ptq::check(m.add.back(), "ptq_example::add_stage");
    } catch (const ptq::error& err) {
      ptq::detail::fail(detail::int_io::reader::where, file, " (key 'grid_scale'): block '", bl.name,
                        "': its residual add: ", err.what());
    }
  }
  for (const int_conv& q : m.convs) {
    try {
      ptq::check(q.out, "ptq_example::integer_stages");
    } catch (const ptq::error& err) {
      ptq::detail::fail(detail::int_io::reader::where, file, " (key 'grid_scale'): conv '", q.name, "': ", err.what());
    }
  }
  return m;
}

// The integer model of the file at `path` (see the top of this file).
inline int_model read_int_model(const std::string& path) {
  return int_model_from_arrays(ptq::io::read_npz(path), path);
}

// Writes m to `path` (a deflated .npz; see the top of this file). Refuses a model that
// would not read back identically: ptq::error naming the path and the field.
inline void write_int_model(const std::string& path, const int_model& m) {
  constexpr const char* where = detail::int_io::writer::where;
  const std::map<std::string, ptq::io::array> arrays = int_model_to_arrays(m, path);
  int_model back;
  try {
    back = int_model_from_arrays(arrays, path);
  } catch (const ptq::error& e) {
    ptq::detail::fail(where, path, ": the model fails the reader's checks: ", e.what());
  }
  for (std::size_t i = 0; i < m.convs.size(); ++i) {
    const int_conv &a = m.convs[i], &b = back.convs[i];
    if (a.E != b.E || a.B != b.B || a.F != b.F || !detail::int_io::same(a.out, b.out))
      ptq::detail::fail(where, path, ": conv '", a.name, "': its fixed-point stage (E, B, F, out) is not what "
                        "detail::integer_stages computes from its codes, u, e, bias and grids");
  }
  for (std::size_t b = 0; b < m.blocks.size(); ++b)
    if (!detail::int_io::same(m.add[b], back.add[b]))
      ptq::detail::fail(where, path, ": block '", m.blocks[b].name, "': its add parameters are not what "
                        "detail::add_stage computes from its grids");
  ptq::io::write_npz(path, arrays, /*compress=*/true);
}

}  // namespace ptq_example
