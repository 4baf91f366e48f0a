// npy.hpp: read and write NumPy .npy arrays (format versions 1.0, 2.0 and 3.0).
//
// A .npy file is
//   "\x93NUMPY" major minor  header_len  header  data
// where header_len is a little-endian uint16 (version 1.0) or uint32 (2.0, 3.0),
// and the header is a Python dict literal, padded with spaces and ended by '\n':
//   {'descr': '<f4', 'fortran_order': False, 'shape': (2, 3), }
// The data are the prod(shape) elements (1 for shape (), 0 when a dimension is 0),
// itemsize bytes each, in C order unless fortran_order is True.
//
// What is read (anything else is a ptq::error naming the file, and for .npz the key,
// and what is wrong; the declared data size is checked against the bytes that are
// really there before anything is allocated, so a lying header cannot allocate):
//   - dtypes float32 'f4', float64 'f8', int64 'i8', int32 'i4', uint8 'u1'. Others
//     ('<c8', '|b1', '|O', '<U3', structured dtypes, ...) are refused.
//   - byte order '<', '>', '=' ('|' only for uint8). Data in the other byte order than
//     the host's are CONVERTED (byte-swapped) to host order; array is always host-endian.
//   - fortran_order True: the data are CONVERTED (transposed) to C order, so array is
//     always C order with the shape the file declares.
//   - the header is parsed strictly as numpy writes it and Python's literal_eval reads
//     it: exactly the keys 'descr', 'fortran_order', 'shape', in any order, quoted with
//     ' or ", a trailing comma allowed, whitespace between tokens; shape is a tuple of
//     non-negative decimal ints ("(3,)" for 1-D, "()" for 0-D; "(3)" is not a tuple).
//     After the closing '}' only whitespace may follow. Stricter than numpy.load: a
//     duplicate key, whitespace before '{', and a negative dimension are refused.
//   - the data must be exactly prod(shape) * itemsize bytes: missing bytes are
//     "truncated", TRAILING BYTES ARE AN ERROR too (they mean a wrong header or a
//     corrupt file; numpy.load would silently ignore them).
// Storage is 64-byte aligned, so data<T>() is aligned for T and for SIMD loads.
//
// write_npy writes what numpy.save writes: version 1.0 (2.0 when the header does not
// fit a uint16 length), a little-endian '<' descr ('|u1' for uint8), fortran_order
// False, and spaces padding the header so that the data start at a multiple of 64
// bytes. numpy.load reads it back exactly.
#pragma once

#include <algorithm>
#include <cmath>
#include <cstddef>
#include <cstdint>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <limits>
#include <memory>
#include <new>
#include <string>
#include <system_error>
#include <type_traits>
#include <utility>
#include <vector>

#include "../config.hpp"
#include "../error.hpp"

namespace ptq::io {

enum class dtype { float32, float64, int64, int32, uint8 };

inline std::size_t itemsize(dtype t) {
  switch (t) {
    case dtype::float32:
      return 4;
    case dtype::float64:
      return 8;
    case dtype::int64:
      return 8;
    case dtype::int32:
      return 4;
    case dtype::uint8:
      return 1;
  }
  return 0;
}

inline const char* dtype_name(dtype t) {
  switch (t) {
    case dtype::float32:
      return "float32";
    case dtype::float64:
      return "float64";
    case dtype::int64:
      return "int64";
    case dtype::int32:
      return "int32";
    case dtype::uint8:
      return "uint8";
  }
  return "?";
}

// dtype_of<T>::value: the dtype stored as C++ type T (float, double, int64_t, int32_t, uint8_t).
template <class T>
struct dtype_of;
template <>
struct dtype_of<float> : std::integral_constant<dtype, dtype::float32> {};
template <>
struct dtype_of<double> : std::integral_constant<dtype, dtype::float64> {};
template <>
struct dtype_of<std::int64_t> : std::integral_constant<dtype, dtype::int64> {};
template <>
struct dtype_of<std::int32_t> : std::integral_constant<dtype, dtype::int32> {};
template <>
struct dtype_of<std::uint8_t> : std::integral_constant<dtype, dtype::uint8> {};

class array;

namespace detail {
using ptq::detail::fail;
struct npy_access;

inline bool host_is_little_endian() {
  const std::uint16_t one = 1;
  unsigned char first = 0;
  std::memcpy(&first, &one, 1);
  return first == 1;
}

// Bytes shown in a message: printable ASCII as is, the rest as \xNN; long text cut.
inline std::string printable(const char* p, std::size_t n, std::size_t max = 120) {
  static const char* hex = "0123456789abcdef";
  std::string s;
  for (std::size_t i = 0; i < n && i < max; ++i) {
    const auto c = static_cast<unsigned char>(p[i]);
    if (c >= 0x20 && c < 0x7f && c != '\\') {
      s += static_cast<char>(c);
    } else {
      s += "\\x";
      s += hex[c >> 4];
      s += hex[c & 15];
    }
  }
  if (n > max) s += "...";
  return s;
}

inline std::string shape_string(const std::vector<index>& shape) {
  std::string s = "(";
  for (std::size_t i = 0; i < shape.size(); ++i) s += (i ? ", " : "") + std::to_string(shape[i]);
  if (shape.size() == 1) s += ",";
  return s + ")";
}

// 64-byte aligned, immutable once filled; copies of an array share it.
inline std::shared_ptr<unsigned char> allocate_aligned(std::size_t bytes, const std::string& name, const char* where) {
  try {
    auto* p = static_cast<unsigned char*>(::operator new (bytes ? bytes : 1, std::align_val_t{64}));
    return std::shared_ptr<unsigned char>(p, [](unsigned char* q) { ::operator delete (q, std::align_val_t{64}); });
  } catch (const std::bad_alloc&) {
    fail(where, name, ": cannot allocate ", bytes, " bytes for the data");
  }
}

// Element count of `shape`, or -1 when it does not fit ptq::index.
inline index checked_size(const std::vector<index>& shape, std::size_t item) {
  const auto max = static_cast<std::uint64_t>(std::numeric_limits<index>::max()) / item;
  std::uint64_t n = 1;
  for (index d : shape) {
    if (d < 0) return -1;
    if (d == 0) return 0;
  }
  for (index d : shape) {
    if (n > max / static_cast<std::uint64_t>(d)) return -1;
    n *= static_cast<std::uint64_t>(d);
  }
  return static_cast<index>(n);
}
}  // namespace detail

// One array: dtype, shape and C-order, host-endian elements in 64-byte aligned storage.
class array {
 public:
  array() = default;  // float32, shape (0,), no elements

  // A copy of `size(shape)` elements of `data` (C order). name is used in error messages.
  template <class T>
  static array from(const T* data, const std::vector<index>& shape, std::string name = "array") {
    constexpr const char* where = "ptq::io::array::from";
    const index n = detail::checked_size(shape, sizeof(T));
    ptq::detail::require(n >= 0, where, name, ": shape ", detail::shape_string(shape),
                         " has a negative dimension or too many elements");
    ptq::detail::require(n == 0 || data != nullptr, where, name, ": data is null for ", n, " elements");
    array a;
    a.type_ = dtype_of<T>::value;
    a.shape_ = shape;
    a.size_ = n;
    a.name_ = std::move(name);
    a.bytes_ = detail::allocate_aligned(static_cast<std::size_t>(n) * sizeof(T), a.name_, where);
    if (n) std::memcpy(a.bytes_.get(), data, static_cast<std::size_t>(n) * sizeof(T));
    return a;
  }

  const std::vector<index>& shape() const { return shape_; }
  index rank() const { return static_cast<index>(shape_.size()); }
  dtype type() const { return type_; }
  index size() const { return size_; }  // prod(shape); 1 for a 0-d array
  std::size_t nbytes() const { return static_cast<std::size_t>(size_) * itemsize(type_); }
  const std::string& name() const { return name_; }  // the file (and .npz key) it came from
  const void* bytes() const { return bytes_.get(); }

  // The elements; T must be exactly the stored type (float for float32, ...), else ptq::error.
  template <class T>
  const T* data() const {
    const dtype want = dtype_of<T>::value;
    if (want != type_)
      ptq::detail::fail("ptq::io::array::data", name_, ": the array holds ", dtype_name(type_), ", not ",
                        dtype_name(want));
    return reinterpret_cast<const T*>(bytes_.get());
  }

  // A converted copy. Integer -> float and float64 -> float32 round to nearest (as
  // static_cast). A finite float64 beyond float32's range, or a value that is not an
  // integer or out of range when T is an integer type, is a ptq::error: never a silently
  // wrapped or infinite value. NaN and +-inf convert to float types as they are.
  template <class T>
  std::vector<T> to() const {
    (void)dtype_of<T>::value;
    switch (type_) {
      case dtype::float32:
        return convert<float, T>();
      case dtype::float64:
        return convert<double, T>();
      case dtype::int64:
        return convert<std::int64_t, T>();
      case dtype::int32:
        return convert<std::int32_t, T>();
      case dtype::uint8:
        return convert<std::uint8_t, T>();
    }
    return {};
  }

  // ptq::error naming the array unless its shape is `expected`.
  void expect_shape(const std::vector<index>& expected) const {
    if (expected != shape_)
      ptq::detail::fail("ptq::io::array::expect_shape", name_, ": shape ", detail::shape_string(shape_),
                        " is not the expected ", detail::shape_string(expected));
  }

 private:
  friend struct detail::npy_access;

  template <class S, class T>
  std::vector<T> convert() const {
    const S* s = reinterpret_cast<const S*>(bytes_.get());
    std::vector<T> out(static_cast<std::size_t>(size_));
    for (std::size_t i = 0; i < out.size(); ++i) {
      if constexpr (std::is_integral_v<T> && !std::is_same_v<S, T>) {
        bool ok;
        if constexpr (std::is_floating_point_v<S>) {
          // [lo, hi) as doubles, exact: lo = min, hi = max + 1 are powers of two (or 0).
          const double lo = static_cast<double>(std::numeric_limits<T>::min());
          const double hi = 2.0 * static_cast<double>(std::numeric_limits<T>::max() / 2 + 1);
          const double v = static_cast<double>(s[i]);
          ok = std::isfinite(v) && v == std::floor(v) && v >= lo && v < hi;
        } else if constexpr (std::is_signed_v<S>) {
          const auto v = static_cast<std::int64_t>(s[i]);
          ok = v < 0 ? std::is_signed_v<T> && v >= static_cast<std::int64_t>(std::numeric_limits<T>::min())
                     : static_cast<std::uint64_t>(v) <= static_cast<std::uint64_t>(std::numeric_limits<T>::max());
        } else {
          ok = static_cast<std::uint64_t>(s[i]) <= static_cast<std::uint64_t>(std::numeric_limits<T>::max());
        }
        if (!ok)
          ptq::detail::fail("ptq::io::array::to", name_, ": element ", i, " = ", +s[i], " (", dtype_name(type_),
                            ") is not exactly representable as ", dtype_name(dtype_of<T>::value));
      }
      if constexpr (std::is_same_v<S, double> && std::is_same_v<T, float>) {
        if (std::isfinite(s[i]) && std::abs(s[i]) > static_cast<double>(std::numeric_limits<float>::max()))
          ptq::detail::fail("ptq::io::array::to", name_, ": element ", i, " = ", s[i],
                            " (float64) is outside the range of float32");
      }
      out[i] = static_cast<T>(s[i]);
    }
    return out;
  }

  dtype type_ = dtype::float32;
  std::vector<index> shape_{0};
  index size_ = 0;
  std::string name_ = "array";
  std::shared_ptr<unsigned char> bytes_ = detail::allocate_aligned(0, name_, "ptq::io::array");
};

namespace detail {

struct npy_header {
  std::string descr;
  bool fortran_order = false;
  std::vector<index> shape;
};

// Strict parser of the header dict (see the top of this file).
class npy_header_parser {
 public:
  npy_header_parser(const char* p, std::size_t n, const std::string& name, const char* where)
      : p_(p), n_(n), name_(name), where_(where) {}

  npy_header parse() {
    npy_header h;
    bool seen[3] = {false, false, false};
    expect('{', "the header dict does not start with '{'");
    skip_ws();
    while (peek() != '}') {
      const std::string key = string_literal("a key");
      int k = key == "descr" ? 0 : key == "fortran_order" ? 1 : key == "shape" ? 2 : -1;
      if (k < 0) bad("unknown key '" + printable(key.data(), key.size()) + "'");
      if (seen[k]) bad("duplicate key '" + key + "'");
      seen[k] = true;
      skip_ws();
      expect(':', "':' expected after key '" + key + "'");
      skip_ws();
      if (k == 0) {
        if (peek() != '\'' && peek() != '"') bad("'descr' is not a string (structured dtypes are not supported)");
        h.descr = string_literal("the 'descr' value");
      } else if (k == 1) {
        if (word("True"))
          h.fortran_order = true;
        else if (word("False"))
          h.fortran_order = false;
        else
          bad("'fortran_order' is not True or False");
      } else {
        h.shape = shape_tuple();
      }
      skip_ws();
      if (peek() == ',') {
        ++i_;
        skip_ws();
      } else if (peek() != '}') {
        bad("',' or '}' expected after the value of '" + key + "'");
      }
    }
    ++i_;
    skip_ws();
    if (i_ != n_) bad("unexpected text after the closing '}'");
    static const char* names[3] = {"descr", "fortran_order", "shape"};
    for (int k = 0; k < 3; ++k)
      if (!seen[k]) bad(std::string("the key '") + names[k] + "' is missing");
    return h;
  }

 private:
  [[noreturn]] void bad(const std::string& what) const {
    fail(where_, name_, ": malformed header at byte ", i_, ": ", what, " (header: \"", printable(p_, n_), "\")");
  }
  int peek() const { return i_ < n_ ? static_cast<unsigned char>(p_[i_]) : -1; }
  void skip_ws() {
    while (i_ < n_ && (p_[i_] == ' ' || p_[i_] == '\t' || p_[i_] == '\n' || p_[i_] == '\r')) ++i_;
  }
  void expect(char c, const std::string& what) {
    if (peek() != static_cast<unsigned char>(c)) bad(what);
    ++i_;
  }
  static bool ident_char(int c) {
    return c == '_' || (c >= '0' && c <= '9') || (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z');
  }
  bool word(const char* w) {
    const std::size_t len = std::strlen(w);
    if (n_ - i_ < len || std::memcmp(p_ + i_, w, len) != 0) return false;
    if (i_ + len < n_ && ident_char(static_cast<unsigned char>(p_[i_ + len]))) return false;
    i_ += len;
    return true;
  }
  std::string string_literal(const char* what) {
    const int q = peek();
    if (q != '\'' && q != '"') bad(std::string(what) + " must be a quoted string");
    const std::size_t start = ++i_;
    while (i_ < n_ && p_[i_] != q) {
      if (p_[i_] == '\\') bad("escape sequences are not supported in strings");
      if (p_[i_] == '\n' || p_[i_] == '\r') bad("unterminated string");
      ++i_;
    }
    if (i_ >= n_) bad("unterminated string");
    return std::string(p_ + start, p_ + i_++);
  }
  std::vector<index> shape_tuple() {
    std::vector<index> shape;
    if (peek() != '(') bad("'shape' is not a tuple");
    ++i_;
    skip_ws();
    bool comma = false;
    while (peek() != ')') {
      const std::size_t dim = shape.size();
      const std::string where = "shape[" + std::to_string(dim) + "]";
      const bool negative = peek() == '-';
      if (negative) ++i_;
      const std::size_t start = i_;
      while (peek() >= '0' && peek() <= '9') ++i_;
      if (i_ == start) bad(where + " is not a decimal integer");
      if (ident_char(peek()) || peek() == '.') bad(where + " is not a decimal integer");
      std::string digits(p_ + start, p_ + i_);
      if (digits.size() > 1 && digits[0] == '0' && digits.find_first_not_of('0') != std::string::npos)
        bad(where + " = " + digits + " has a leading zero");
      if (negative) bad(where + " = -" + digits + " is negative");
      index v = 0;
      for (char c : digits) {
        if (v > (std::numeric_limits<index>::max() - (c - '0')) / 10) bad(where + " = " + digits + " overflows");
        v = v * 10 + (c - '0');
      }
      shape.push_back(v);
      skip_ws();
      comma = false;
      if (peek() == ',') {
        comma = true;
        ++i_;
        skip_ws();
      } else if (peek() != ')') {
        bad("',' or ')' expected in 'shape'");
      }
    }
    if (shape.size() == 1 && !comma)
      bad("'shape' (" + std::to_string(shape[0]) + ") is not a tuple: a 1-D shape is written (n,)");
    ++i_;
    return shape;
  }

  const char* p_;
  std::size_t n_;
  const std::string& name_;
  const char* where_;
  std::size_t i_ = 0;
};

struct npy_access {
  // Parses one .npy from a sequential byte source of `total` bytes:
  // read(dst, n) copies up to n bytes and returns how many (fewer only at the end).
  template <class Read>
  static array parse(Read&& read, std::uint64_t total, const std::string& name, const char* where) {
    auto get = [&](void* dst, std::size_t n, const char* part) {
      const std::size_t got = read(dst, n);
      if (got != n) fail(where, name, ": the file is truncated: it ends inside the ", part);
    };
    auto need = [&](std::uint64_t end, const char* part) {
      if (total < end) fail(where, name, ": the file is truncated (", total, " bytes): it ends inside the ", part);
    };

    need(8, "magic string and version (8 bytes)");
    unsigned char pre[8];
    get(pre, 8, "magic string and version");
    if (std::memcmp(pre, "\x93NUMPY", 6) != 0)
      fail(where, name, ": not a .npy file: it starts with \"", printable(reinterpret_cast<char*>(pre), 6),
           "\" instead of the magic string \"\\x93NUMPY\"");
    const int major = pre[6], minor = pre[7];
    if (!((major == 1 || major == 2 || major == 3) && minor == 0))
      fail(where, name, ": unsupported .npy format version ", major, ".", minor, " (1.0, 2.0 and 3.0 are read)");

    const std::size_t len_bytes = major == 1 ? 2 : 4;
    need(8 + len_bytes, "header length field");
    unsigned char lb[4] = {0, 0, 0, 0};
    get(lb, len_bytes, "header length field");
    const std::uint64_t header_len = lb[0] | (lb[1] << 8) | (std::uint64_t(lb[2]) << 16) | (std::uint64_t(lb[3]) << 24);
    const std::uint64_t data_start = 8 + len_bytes + header_len;
    if (total < data_start)
      fail(where, name, ": the header length ", header_len, " runs past the end of the file (", total,
           " bytes, the header would end at byte ", data_start, ")");
    std::string text(static_cast<std::size_t>(header_len), '\0');
    get(text.data(), text.size(), "header");
    const npy_header h = npy_header_parser(text.data(), text.size(), name, where).parse();

    // descr: byte order + kind + size
    const std::string& d = h.descr;
    const std::string code = d.size() >= 1 ? d.substr(1) : std::string();
    const char order = d.empty() ? '\0' : d[0];
    dtype t = dtype::float32;
    if (code == "f4")
      t = dtype::float32;
    else if (code == "f8")
      t = dtype::float64;
    else if (code == "i8")
      t = dtype::int64;
    else if (code == "i4")
      t = dtype::int32;
    else if (code == "u1")
      t = dtype::uint8;
    else
      fail(where, name, ": unsupported dtype '", printable(d.data(), d.size()),
           "' (float32 '<f4', float64 '<f8', int64 '<i8', int32 '<i4' and uint8 '|u1' are read; either byte order)");
    const std::size_t item = itemsize(t);
    if (!(order == '<' || order == '>' || order == '=' || (order == '|' && item == 1)))
      fail(where, name, ": dtype '", printable(d.data(), d.size()), "' has an invalid byte order '",
           printable(&order, 1), "' (expected '<', '>' or '=', or '|' for one-byte types)");
    const bool little = host_is_little_endian();
    const bool swap = item > 1 && ((order == '>' && little) || (order == '<' && !little));

    const index n = checked_size(h.shape, item);
    if (n < 0)
      fail(where, name, ": shape ", shape_string(h.shape), " of ", dtype_name(t),
           " has more elements or bytes than fit in memory (size overflow)");
    const std::uint64_t nbytes = static_cast<std::uint64_t>(n) * item;
    const std::uint64_t available = total - data_start;
    if (available < nbytes)
      fail(where, name, ": the data are truncated: shape ", shape_string(h.shape), " of ", dtype_name(t), " needs ",
           nbytes, " bytes but only ", available, " follow the header");
    if (available > nbytes)
      fail(where, name, ": ", available - nbytes, " trailing bytes after the ", nbytes, " data bytes of shape ",
           shape_string(h.shape), " ", dtype_name(t));

    array a;
    a.type_ = t;
    a.shape_ = h.shape;
    a.size_ = n;
    a.name_ = name;
    a.bytes_ = allocate_aligned(static_cast<std::size_t>(nbytes), name, where);
    if (nbytes) get(a.bytes_.get(), static_cast<std::size_t>(nbytes), "data");
    if (swap) swap_bytes(a.bytes_.get(), static_cast<std::size_t>(n), item);
    if (h.fortran_order && h.shape.size() > 1 && n > 0) a.bytes_ = fortran_to_c(a, where);
    return a;
  }

  static void swap_bytes(unsigned char* p, std::size_t count, std::size_t item) {
    for (std::size_t i = 0; i < count; ++i, p += item)
      for (std::size_t j = 0; j < item / 2; ++j) std::swap(p[j], p[item - 1 - j]);
  }

  // Element (i0, ..., ik) is at sum_j i_j * (s_0 * ... * s_{j-1}) in Fortran order;
  // walk the C-order positions with an odometer and gather.
  static std::shared_ptr<unsigned char> fortran_to_c(const array& a, const char* where) {
    const std::size_t item = itemsize(a.type_), rank = a.shape_.size();
    auto out = allocate_aligned(a.nbytes(), a.name_, where);
    std::vector<index> stride(rank), idx(rank, 0);
    index s = 1;
    for (std::size_t j = 0; j < rank; ++j) {
      stride[j] = s;
      s *= a.shape_[j];
    }
    const unsigned char* src = a.bytes_.get();
    unsigned char* dst = out.get();
    index f = 0;
    for (index c = 0; c < a.size_; ++c) {
      std::memcpy(dst + static_cast<std::size_t>(c) * item, src + static_cast<std::size_t>(f) * item, item);
      for (std::size_t j = rank; j-- > 0;) {  // increment the last axis first (C order)
        f += stride[j];
        if (++idx[j] < a.shape_[j]) break;
        f -= stride[j] * a.shape_[j];
        idx[j] = 0;
      }
    }
    return out;
  }
};

// The header numpy.save writes for a C-order array: magic, version, length, dict,
// spaces and '\n' so that the data start at a multiple of 64 bytes.
inline std::string npy_header_bytes(dtype t, const std::vector<index>& shape) {
  const char* descr = t == dtype::float32   ? "<f4"
                      : t == dtype::float64 ? "<f8"
                      : t == dtype::int64   ? "<i8"
                      : t == dtype::int32   ? "<i4"
                                            : "|u1";
  std::string dict =
      std::string("{'descr': '") + descr + "', 'fortran_order': False, 'shape': " + shape_string(shape) + ", }";
  std::string out;
  for (int major = 1; major <= 2; ++major) {
    const std::size_t prefix = major == 1 ? 10 : 12;
    const std::size_t unpadded = prefix + dict.size() + 1;  // + '\n'
    const std::size_t total = (unpadded + 63) / 64 * 64;
    const std::size_t header_len = total - prefix;
    if (major == 1 && header_len > 65535) continue;
    out = std::string("\x93NUMPY", 6);
    out += static_cast<char>(major);
    out += '\0';
    for (std::size_t b = 0; b < prefix - 8; ++b) out += static_cast<char>((header_len >> (8 * b)) & 0xff);
    out += dict;
    out.append(total - unpadded, ' ');
    out += '\n';
    break;
  }
  return out;
}

}  // namespace detail

// Parses a whole .npy held in memory. `name` names it in error messages.
inline array parse_npy(const void* bytes, std::size_t size, const std::string& name) {
  constexpr const char* where = "ptq::io::parse_npy";
  ptq::detail::require(bytes != nullptr || size == 0, where, name, ": bytes is null");
  const auto* p = static_cast<const unsigned char*>(bytes);
  std::size_t pos = 0;
  auto read = [&](void* dst, std::size_t n) {
    const std::size_t k = std::min(n, size - pos);
    if (k) std::memcpy(dst, p + pos, k);
    pos += k;
    return k;
  };
  return detail::npy_access::parse(read, size, name, where);
}

// Reads the .npy file at `path`; errors name the path.
inline array read_npy(const std::string& path) {
  constexpr const char* where = "ptq::io::read_npy";
  std::error_code ec;
  if (!std::filesystem::is_regular_file(path, ec))
    ptq::detail::fail(where, path, ": ", std::filesystem::exists(path, ec) ? "is not a regular file" : "no such file");
  std::ifstream in(path, std::ios::binary);
  if (!in) ptq::detail::fail(where, path, ": cannot open for reading");
  in.seekg(0, std::ios::end);
  const std::streamoff total = in.tellg();
  in.seekg(0, std::ios::beg);
  if (!in || total < 0) ptq::detail::fail(where, path, ": cannot determine the file size");
  auto read = [&](void* dst, std::size_t n) {
    in.read(static_cast<char*>(dst), static_cast<std::streamsize>(n));
    return static_cast<std::size_t>(in.gcount());
  };
  return detail::npy_access::parse(read, static_cast<std::uint64_t>(total), path, where);
}

// Writes size(shape) elements of `data` (C order) as a .npy numpy.load reads back exactly.
// T is float, double, int64_t, int32_t or uint8_t. A bad shape, a null `data` with
// elements, or an I/O failure is a ptq::error naming the path.
template <class T>
void write_npy(const std::string& path, const T* data, const std::vector<index>& shape) {
  constexpr const char* where = "ptq::io::write_npy";
  constexpr dtype t = dtype_of<T>::value;
  const index n = detail::checked_size(shape, sizeof(T));
  ptq::detail::require(n >= 0, where, path, ": shape ", detail::shape_string(shape),
                       " has a negative dimension or too many elements");
  ptq::detail::require(n == 0 || data != nullptr, where, path, ": data is null for ", n, " elements");
  const std::string header = detail::npy_header_bytes(t, shape);
  std::ofstream out(path, std::ios::binary | std::ios::trunc);
  if (!out) ptq::detail::fail(where, path, ": cannot open for writing");
  out.write(header.data(), static_cast<std::streamsize>(header.size()));
  const auto* bytes = reinterpret_cast<const char*>(data);
  const std::size_t nbytes = static_cast<std::size_t>(n) * sizeof(T);
  if (sizeof(T) == 1 || detail::host_is_little_endian()) {
    if (nbytes) out.write(bytes, static_cast<std::streamsize>(nbytes));
  } else {  // big-endian host: the file is little-endian
    std::vector<unsigned char> chunk;
    for (std::size_t off = 0; off < nbytes; off += chunk.size()) {
      chunk.assign(bytes + off, bytes + std::min(nbytes, off + (std::size_t(1) << 20)));
      detail::npy_access::swap_bytes(chunk.data(), chunk.size() / sizeof(T), sizeof(T));
      out.write(reinterpret_cast<const char*>(chunk.data()), static_cast<std::streamsize>(chunk.size()));
    }
  }
  out.close();
  if (!out) ptq::detail::fail(where, path, ": writing failed");
}

// Writes an array read or built earlier (same format as above).
inline void write_npy(const std::string& path, const array& a) {
  switch (a.type()) {
    case dtype::float32:
      return write_npy(path, a.data<float>(), a.shape());
    case dtype::float64:
      return write_npy(path, a.data<double>(), a.shape());
    case dtype::int64:
      return write_npy(path, a.data<std::int64_t>(), a.shape());
    case dtype::int32:
      return write_npy(path, a.data<std::int32_t>(), a.shape());
    case dtype::uint8:
      return write_npy(path, a.data<std::uint8_t>(), a.shape());
  }
}

}  // namespace ptq::io
