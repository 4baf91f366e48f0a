// idx.hpp: read (Fashion-)MNIST IDX files, gzipped or plain, and normalize images to float NCHW.
//
// IDX format (big-endian): bytes 0, 0, a type code (0x08 = unsigned byte, the only one
// read here), the rank r; then r uint32 dimensions; then prod(dims) values in C order.
// Images are idx3 [N, rows, cols], labels idx1 [N]. Files are read through zlib's
// gzread, which also reads uncompressed files; the gzip CRC is checked at the end.
//
// Every malformed input is a ptq::error naming the file: a bad magic, another type
// code, a wrong rank for images/labels, a zero or absurd dimension, data shorter than
// the header declares (truncated), bytes after the data, a corrupt gzip stream, a label
// outside [0, classes). Memory grows with the data actually read, never with what a
// lying header declares.
//
// to_nchw maps pixel p in [0, 255] to ((p / 255) - mean[c]) / std[c] in float, for
// C = mean.size() channels (the gray image repeated in each: C = 3 for ImageNet
// networks), the convention of torchvision's ToTensor + Normalize.
#pragma once

#include <zlib.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <memory>
#include <ptq/config.hpp>
#include <ptq/error.hpp>
#include <string>
#include <vector>

namespace ptq_example {

using ptq::index;

inline const char* const fashion_mnist_dir = "/usr/share/datasets/fashion-mnist";

// The contents of one IDX file of unsigned bytes.
struct idx_data {
  std::vector<index> shape;          // dimensions as in the file
  std::vector<std::uint8_t> values;  // prod(shape) values, C order
};

// Images [count, rows, cols], pixels in C order (image, row, column).
struct idx_images {
  index count = 0, rows = 0, cols = 0;
  std::vector<std::uint8_t> pixels;
  const std::uint8_t* image(index i) const { return pixels.data() + i * rows * cols; }
};

// Reads an IDX file of type 0x08 (unsigned byte), gzipped or not.
inline idx_data read_idx(const std::string& path) {
  constexpr const char* where = "ptq_example::read_idx";
  struct closer {
    void operator()(gzFile_s* g) const { gzclose(g); }
  };
  std::unique_ptr<gzFile_s, closer> g(gzopen(path.c_str(), "rb"));
  if (!g) ptq::detail::fail(where, path, ": cannot open for reading");
  auto gz_fail = [&]() {
    int err = 0;
    std::string msg = gzerror(g.get(), &err);  // "<path>: <what>"
    if (msg.compare(0, path.size() + 2, path + ": ") == 0) msg.erase(0, path.size() + 2);
    ptq::detail::fail(where, path, ": gzip read error: ", msg);
  };
  auto read = [&](void* dst, std::size_t n) {
    std::size_t got = 0;
    while (got < n) {
      const unsigned chunk = static_cast<unsigned>(std::min<std::size_t>(n - got, 1u << 30));
      const int k = gzread(g.get(), static_cast<char*>(dst) + got, chunk);
      if (k < 0) gz_fail();
      if (k == 0) break;
      got += static_cast<std::size_t>(k);
    }
    // gzread returns short data for a cut gzip stream and reports it in gzerror.
    int err = Z_OK;
    gzerror(g.get(), &err);
    if (err != Z_OK && err != Z_STREAM_END) gz_fail();
    return got;
  };

  unsigned char head[4];
  const std::size_t h = read(head, 4);
  if (h != 4) ptq::detail::fail(where, path, ": truncated: ", h, " bytes, shorter than the 4-byte IDX magic");
  if (head[0] != 0 || head[1] != 0)
    ptq::detail::fail(where, path, ": not an IDX file: the magic starts with ", int(head[0]), ", ", int(head[1]),
                      " instead of 0, 0");
  if (head[2] != 0x08)
    ptq::detail::fail(where, path, ": IDX type code 0x", std::hex, int(head[2]), std::dec,
                      " is not supported (only 0x08, unsigned byte)");
  const int rank = head[3];
  if (rank < 1 || rank > 4) ptq::detail::fail(where, path, ": IDX rank ", rank, " is outside [1, 4]");
  idx_data d;
  std::uint64_t total = 1;
  for (int i = 0; i < rank; ++i) {
    unsigned char b[4];
    if (read(b, 4) != 4) ptq::detail::fail(where, path, ": truncated inside the dimensions of the header");
    const std::uint32_t v =
        (std::uint32_t(b[0]) << 24) | (std::uint32_t(b[1]) << 16) | (std::uint32_t(b[2]) << 8) | b[3];
    constexpr std::uint64_t max_values = std::uint64_t(1) << 40;
    if (v != 0 && total > max_values / v)
      ptq::detail::fail(where, path, ": the declared size exceeds 2^40 values (dimension ", i, " = ", v, ")");
    total *= v;
    d.shape.push_back(static_cast<index>(v));
  }
  // Grow with the data really there (a lying header cannot make us allocate).
  const std::size_t n = static_cast<std::size_t>(total);
  std::size_t got = 0;
  while (got < n) {
    const std::size_t step = std::min<std::size_t>(n - got, std::size_t(16) << 20);
    d.values.resize(got + step);
    const std::size_t k = read(d.values.data() + got, step);
    got += k;
    if (k < step) break;
  }
  if (got < n)
    ptq::detail::fail(where, path, ": truncated: the header declares ", n, " values but only ", got, " follow");
  d.values.resize(n);
  char extra;
  if (read(&extra, 1) != 0) ptq::detail::fail(where, path, ": bytes after the ", n, " declared values");
  return d;
}

// An idx3 file of images [N, rows, cols].
inline idx_images read_idx_images(const std::string& path) {
  idx_data d = read_idx(path);
  if (d.shape.size() != 3)
    ptq::detail::fail("ptq_example::read_idx_images", path, ": rank ", d.shape.size(),
                      " is not 3 (images [N, rows, cols])");
  if (d.shape[1] == 0 || d.shape[2] == 0)
    ptq::detail::fail("ptq_example::read_idx_images", path, ": image size ", d.shape[1], " x ", d.shape[2],
                      " is empty");
  idx_images im;
  im.count = d.shape[0];
  im.rows = d.shape[1];
  im.cols = d.shape[2];
  im.pixels = std::move(d.values);
  return im;
}

// An idx1 file of labels [N], each in [0, classes).
inline std::vector<std::uint8_t> read_idx_labels(const std::string& path, int classes = 10) {
  idx_data d = read_idx(path);
  if (d.shape.size() != 1)
    ptq::detail::fail("ptq_example::read_idx_labels", path, ": rank ", d.shape.size(), " is not 1 (labels [N])");
  for (std::size_t i = 0; i < d.values.size(); ++i)
    if (d.values[i] >= classes)
      ptq::detail::fail("ptq_example::read_idx_labels", path, ": label[", i, "] = ", int(d.values[i]),
                        " is outside [0, ", classes, ")");
  return std::move(d.values);
}

struct fashion_mnist_split {
  idx_images images;                 // [N, 28, 28]
  std::vector<std::uint8_t> labels;  // [N], 0..9
};

// split "train" (60000) or "t10k" (10000) from `dir`: images 28 x 28, as many labels as images.
inline fashion_mnist_split read_fashion_mnist(const std::string& split, const std::string& dir = fashion_mnist_dir) {
  constexpr const char* where = "ptq_example::read_fashion_mnist";
  if (split != "train" && split != "t10k") ptq::detail::fail(where, "split = '", split, "' is not 'train' or 't10k'");
  const std::string ip = dir + "/" + split + "-images-idx3-ubyte.gz", lp = dir + "/" + split + "-labels-idx1-ubyte.gz";
  fashion_mnist_split s{read_idx_images(ip), read_idx_labels(lp, 10)};
  if (s.images.rows != 28 || s.images.cols != 28)
    ptq::detail::fail(where, ip, ": images are ", s.images.rows, " x ", s.images.cols, ", not 28 x 28");
  if (static_cast<index>(s.labels.size()) != s.images.count)
    ptq::detail::fail(where, lp, ": ", s.labels.size(), " labels for ", s.images.count, " images in ", ip);
  return s;
}

// Images [first, first + count) as float NCHW [count, C, rows, cols], C = mean.size():
// out = ((p / 255) - mean[c]) / stdev[c] (torchvision ToTensor + Normalize).
inline std::vector<float> to_nchw(const idx_images& im, const std::vector<float>& mean, const std::vector<float>& stdev,
                                  index first = 0, index count = -1) {
  constexpr const char* where = "ptq_example::to_nchw";
  if (count < 0) count = im.count - first;
  if (first < 0 || first > im.count || count < 0 || count > im.count - first)
    ptq::detail::fail(where, "images [", first, ", ", first, " + ", count, ") are outside [0, ", im.count, ")");
  if (mean.empty() || mean.size() != stdev.size())
    ptq::detail::fail(where, "mean.size() = ", mean.size(), " and stdev.size() = ", stdev.size(),
                      " must be equal and positive (one per channel)");
  for (std::size_t c = 0; c < stdev.size(); ++c)
    if (!(stdev[c] > 0.0f) || !std::isfinite(stdev[c]) || !std::isfinite(mean[c]))
      ptq::detail::fail(where, "stdev[", c, "] = ", stdev[c], ", mean[", c, "] = ", mean[c],
                        ": stdev must be positive and both finite");
  const std::size_t C = mean.size(), hw = static_cast<std::size_t>(im.rows * im.cols);
  std::vector<float> out(static_cast<std::size_t>(count) * C * hw);
  for (index n = 0; n < count; ++n) {
    const std::uint8_t* p = im.image(first + n);
    for (std::size_t c = 0; c < C; ++c) {
      float* o = out.data() + (static_cast<std::size_t>(n) * C + c) * hw;
      for (std::size_t k = 0; k < hw; ++k) o[k] = (static_cast<float>(p[k]) / 255.0f - mean[c]) / stdev[c];
    }
  }
  return out;
}

}  // namespace ptq_example
