// quantized_tensor.hpp: a quantized tensor held as its integer codes, each channel packed at its own bit width.
//
// quantized_tensor<T> is what the quantizer's output is worth keeping: the codes of
// gemmlowp_quantizer::quantize (row view, channel = row % channels as everywhere in ptq),
// the quant_params<T> that map them back (real = scale (q - zero_point)), and nothing else.
// Storage is a bit stream per row: row r's cols codes at bits[r % channels] bits each,
// least significant bit first, the row starting on a byte boundary; a 0-bit row takes no
// bytes. So a W4 weight tensor with per-channel bit allocation (channels at 0..8 bits,
// mean 4) takes what its bits say, half a byte per weight, where uint8 codes take one.
//
//   bytes = sum over rows r of ceil(bits[r % C] * cols / 8)
//
// dequantize() returns exactly gemmlowp_quantizer::fake_quantize(x, p) (bit for bit: the
// same codes through the same formula), codes() the uint16 codes of any row.
//
// Integer kernels need a zero point inside the code range; quant_params' constant channels
// (0 bits, or a zero-width range: scale = c, zero point -1 or qmax + 1) have none.
// integer_grid_of(p, c) gives every channel an integer form: scale s, zero point z and code
// range [lo, hi] (0 <= lo <= hi <= qmax or 1) with real = s (q - z):
//   ordinary channel:  s = scale, z = zero_point, [0, qmax];
//   constant c0 > 0:   s = c0, z = 0, the single code 1 (lo = hi = 1);
//   constant c0 < 0:   s = -c0, z = 1, the single code 0;
//   constant 0:        s = 0, z = 0, the single code 0.
// Padding a tensor with z is then the real 0 for every channel.
//
// pack_bits / unpack_bits are the stream format alone (fast: a 64-bit accumulator), with
// plain bit-by-bit _ref twins. Errors are ptq::error naming the function and the value.
#pragma once

#include <Eigen/Core>
#include <algorithm>
#include <cstdint>
#include <cstring>
#include <vector>

#include "config.hpp"
#include "error.hpp"
#include "gemmlowp_quantizer.hpp"

namespace ptq {

// Bytes of n codes at `bits` bits: ceil(n bits / 8).
inline index packed_bits_bytes(index n, int bits) { return (n * bits + 7) / 8; }

// codes[0..n) (each < 2^bits, bits in [0, 16]) into packed_bits_bytes(n, bits) bytes, LSB first;
// the unused high bits of the last byte are 0.
inline void pack_bits(const std::uint16_t* codes, index n, int bits, std::uint8_t* out) {
  constexpr const char* where = "ptq::pack_bits";
  detail::require(bits >= 0 && bits <= 16, where, "bits = ", bits, " is outside [0, 16]");
  detail::require(n >= 0, where, "n = ", n, " is negative");
  if (bits == 0 || n == 0) {
    for (index i = 0; i < n; ++i) detail::require(codes[i] == 0, where, "codes[", i, "] = ", codes[i], " with 0 bits");
    return;
  }
  const std::uint32_t limit = 1u << bits;
  std::uint64_t acc = 0;
  int filled = 0;
  index o = 0;
  for (index i = 0; i < n; ++i) {
    detail::require(codes[i] < limit, where, "codes[", i, "] = ", codes[i], " does not fit ", bits, " bits");
    acc |= std::uint64_t{codes[i]} << filled;
    filled += bits;
    while (filled >= 8) {
      out[o++] = static_cast<std::uint8_t>(acc);
      acc >>= 8;
      filled -= 8;
    }
  }
  if (filled > 0) out[o++] = static_cast<std::uint8_t>(acc);
}

// The inverse: n codes from packed_bits_bytes(n, bits) bytes. ptq::error if a bit past the
// last code is set (a stream that pack_bits cannot have written).
inline void unpack_bits(const std::uint8_t* in, index n, int bits, std::uint16_t* codes) {
  constexpr const char* where = "ptq::unpack_bits";
  detail::require(bits >= 0 && bits <= 16, where, "bits = ", bits, " is outside [0, 16]");
  detail::require(n >= 0, where, "n = ", n, " is negative");
  if (bits == 0) {
    std::fill(codes, codes + n, std::uint16_t{0});
    return;
  }
  const std::uint64_t mask = (std::uint64_t{1} << bits) - 1;
  std::uint64_t acc = 0;
  int filled = 0;
  index b = 0;
  for (index i = 0; i < n; ++i) {
    while (filled < bits) {
      acc |= std::uint64_t{in[b++]} << filled;
      filled += 8;
    }
    codes[i] = static_cast<std::uint16_t>(acc & mask);
    acc >>= bits;
    filled -= bits;
  }
  detail::require(acc == 0, where, "the padding bits after the last of ", n, " codes are not 0");
}

// Bit-by-bit twins.
inline void pack_bits_ref(const std::uint16_t* codes, index n, int bits, std::uint8_t* out) {
  const index bytes = packed_bits_bytes(n, bits);
  std::fill(out, out + bytes, std::uint8_t{0});
  for (index i = 0; i < n; ++i) {
    detail::require(bits == 16 || codes[i] < (1u << bits), "ptq::pack_bits_ref", "codes[", i, "] = ", codes[i],
                    " does not fit ", bits, " bits");
    for (int k = 0; k < bits; ++k)
      if ((codes[i] >> k) & 1u) {
        const index bit = i * bits + k;
        out[bit / 8] = static_cast<std::uint8_t>(out[bit / 8] | (1u << (bit % 8)));
      }
  }
}
inline void unpack_bits_ref(const std::uint8_t* in, index n, int bits, std::uint16_t* codes) {
  for (index i = 0; i < n; ++i) {
    unsigned v = 0;
    for (int k = 0; k < bits; ++k) {
      const index bit = i * bits + k;
      v |= ((in[bit / 8] >> (bit % 8)) & 1u) << k;
    }
    codes[i] = static_cast<std::uint16_t>(v);
  }
}

// One channel's integer grid (see the top of this file).
struct integer_grid {
  double scale = 0;
  int zero_point = 0, lo = 0, hi = 0;
};

template <class T>
integer_grid integer_grid_of(const quant_params<T>& p, index c) {
  detail::require(c >= 0 && c < p.channels(), "ptq::integer_grid_of", "channel ", c, " of ", p.channels());
  integer_grid g;
  const int qmax = p.qmax(c);
  if (!p.is_constant(c)) {
    g.scale = static_cast<double>(p.scale[c]);
    g.zero_point = p.zero_point[c];
    g.hi = qmax;
    return g;
  }
  const int q = std::min(std::max(p.zero_point[c], 0), qmax);
  const double c0 = static_cast<double>(p.scale[c]) * (q - p.zero_point[c]);
  g.scale = c0 < 0 ? -c0 : c0;
  g.zero_point = c0 < 0 ? 1 : 0;
  g.lo = g.hi = c0 > 0 ? 1 : 0;
  return g;
}

template <class T>
class quantized_tensor {
 public:
  quantized_tensor() = default;

  // x's row view quantized with p (gemmlowp_quantizer::quantize's checks and codes), packed.
  template <class D>
  static quantized_tensor quantize(const Eigen::DenseBase<D>& x, const quant_params<T>& p) {
    quantized_tensor q;
    Eigen::Matrix<std::uint16_t, Eigen::Dynamic, Eigen::Dynamic, Eigen::RowMajor> codes(x.rows(), x.cols());
    gemmlowp_quantizer::quantize<std::uint16_t>(x, p, codes);
    q.rows_ = x.rows();
    q.cols_ = x.cols();
    q.p_ = p;
    q.offset_.resize(static_cast<std::size_t>(q.rows_) + 1, 0);
    for (index r = 0; r < q.rows_; ++r)
      q.offset_[static_cast<std::size_t>(r) + 1] =
          q.offset_[static_cast<std::size_t>(r)] + packed_bits_bytes(q.cols_, p.bits[r % p.channels()]);
    q.data_.assign(static_cast<std::size_t>(q.offset_.back()), 0);
    for (index r = 0; r < q.rows_; ++r)
      pack_bits(codes.data() + r * q.cols_, q.cols_, p.bits[r % p.channels()],
                q.data_.data() + q.offset_[static_cast<std::size_t>(r)]);
    return q;
  }

  index rows() const { return rows_; }
  index cols() const { return cols_; }
  const quant_params<T>& params() const { return p_; }
  // The packed stream (bytes() of them) and where row r starts in it.
  const std::vector<std::uint8_t>& data() const { return data_; }
  index bytes() const { return static_cast<index>(data_.size()); }
  index row_offset(index r) const { return offset_[static_cast<std::size_t>(r)]; }

  // Row r's codes (cols() of them).
  void codes(index r, std::uint16_t* out) const {
    detail::require(r >= 0 && r < rows_, "ptq::quantized_tensor::codes", "row ", r, " of ", rows_);
    unpack_bits(data_.data() + offset_[static_cast<std::size_t>(r)], cols_, p_.bits[r % p_.channels()], out);
  }

  // The values: exactly gemmlowp_quantizer::fake_quantize of the tensor that was quantized.
  Eigen::Matrix<T, Eigen::Dynamic, Eigen::Dynamic, Eigen::RowMajor> dequantize() const {
    Eigen::Matrix<std::uint16_t, Eigen::Dynamic, Eigen::Dynamic, Eigen::RowMajor> codes_all(rows_, cols_);
    for (index r = 0; r < rows_; ++r) codes(r, codes_all.data() + r * cols_);
    Eigen::Matrix<T, Eigen::Dynamic, Eigen::Dynamic, Eigen::RowMajor> out(rows_, cols_);
    gemmlowp_quantizer::dequantize(codes_all, p_, out);
    return out;
  }

 private:
  index rows_ = 0, cols_ = 0;
  quant_params<T> p_;
  std::vector<index> offset_{0};
  std::vector<std::uint8_t> data_;
};

}  // namespace ptq
