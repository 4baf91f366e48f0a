// test_idx.cpp: Fashion-MNIST IDX reading against python's gzip + numpy reading of the same files.
#include <doctest/doctest.h>

#include "io_test_util.hpp"
#include <stdlib.h>

#include <cmath>
#include <cstdint>
#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <resnet50/idx.hpp>
#include <sstream>
#include <string>
#include <vector>

// Everything of this file in its own namespace: the test binary is a unity build.
namespace ptq_test_idx {

namespace {

using namespace ptq_io_test;

// Runs `script` with numpy's python, the scratch and Fashion-MNIST directories as its arguments.
std::string python(const temp_dir& dir, const std::string& script) {
  return run_python(dir, script, dir.path + " " + ptq_example::fashion_mnist_dir);
}

template <class T>
std::vector<T> numbers(const std::string& text) {
  std::istringstream s(text);
  std::vector<T> v;
  for (T x; s >> x;) v.push_back(x);
  return v;
}

}  // namespace

TEST_CASE("io: Fashion-MNIST images and labels read as numpy reads the same gzip files") {
  temp_dir dir;
  // numpy's reading: header fields by struct, pixels by frombuffer after the 16-byte header.
  python(dir, R"(
import sys, gzip, struct, numpy as np
d, src = sys.argv[1], sys.argv[2]
for split in ('t10k', 'train'):
    raw = gzip.open(f'{src}/{split}-images-idx3-ubyte.gz').read()
    magic, n, r, c = struct.unpack('>IIII', raw[:16])
    assert magic == 0x803, magic
    im = np.frombuffer(raw, np.uint8, offset=16).reshape(n, r, c).astype(np.int64)
    lab = np.frombuffer(gzip.open(f'{src}/{split}-labels-idx1-ubyte.gz').read(), np.uint8, offset=8)
    w = np.arange(r * c, dtype=np.int64) % 251 + 1
    with open(f'{d}/{split}.txt', 'w') as f:
        f.write(f'{n} {r} {c} {len(lab)}\n')
        f.write(' '.join(map(str, im.reshape(n, -1).sum(1))) + '\n')       # per-image sums
        f.write(' '.join(map(str, im.reshape(n, -1) @ w)) + '\n')          # per-image weighted sums
        f.write(' '.join(map(str, lab)) + '\n')
        f.write(' '.join(map(str, np.bincount(lab, minlength=10))) + '\n')
        f.write(f'{im[0, 14, 14]} {im[n - 1, 27, 0]} {im[1234, 5, 20]}\n')
)");
  for (const char* split : {"t10k", "train"}) {
    CAPTURE(split);
    const ptq_example::fashion_mnist_split s = ptq_example::read_fashion_mnist(split);
    std::istringstream ref(slurp(dir / (std::string(split) + ".txt")));
    std::vector<std::string> lines;
    for (std::string line; std::getline(ref, line);) lines.push_back(line);
    REQUIRE(lines.size() == 6);
    const auto head = numbers<long long>(lines[0]);
    const auto sums = numbers<long long>(lines[1]);
    const auto wsums = numbers<long long>(lines[2]);
    const auto labels = numbers<int>(lines[3]);
    const auto hist = numbers<long long>(lines[4]);
    const auto px = numbers<int>(lines[5]);
    const ptq::index n = std::string(split) == "t10k" ? 10000 : 60000;
    REQUIRE(head == std::vector<long long>{n, 28, 28, n});
    REQUIRE(s.images.count == n);
    CHECK(s.images.rows == 28);
    CHECK(s.images.cols == 28);
    REQUIRE(s.images.pixels.size() == static_cast<std::size_t>(n * 784));
    REQUIRE(s.labels.size() == static_cast<std::size_t>(n));
    REQUIRE(sums.size() == static_cast<std::size_t>(n));
    REQUIRE(wsums.size() == static_cast<std::size_t>(n));
    REQUIRE(labels.size() == static_cast<std::size_t>(n));
    int bad = 0;
    for (ptq::index i = 0; i < n; ++i) {
      const std::uint8_t* p = s.images.image(i);
      long long sum = 0, wsum = 0;
      for (int k = 0; k < 784; ++k) {
        sum += p[k];
        wsum += static_cast<long long>(p[k]) * (k % 251 + 1);
      }
      const auto u = static_cast<std::size_t>(i);
      bad += sum != sums[u] || wsum != wsums[u] || s.labels[u] != labels[u];
    }
    CHECK(bad == 0);
    std::vector<long long> h(10, 0);
    for (std::uint8_t l : s.labels) ++h[l];
    CHECK(h == hist);
    CHECK(h == std::vector<long long>(10, n / 10));  // Fashion-MNIST is balanced
    CHECK(s.images.image(0)[14 * 28 + 14] == px[0]);
    CHECK(s.images.image(n - 1)[27 * 28 + 0] == px[1]);
    CHECK(s.images.image(1234)[5 * 28 + 20] == px[2]);
  }
}

TEST_CASE("io: to_nchw normalizes pixels to ((p / 255) - mean) / std per channel") {
  ptq_example::idx_images im;
  im.count = 3;
  im.rows = 2;
  im.cols = 4;
  for (int k = 0; k < 24; ++k) im.pixels.push_back(static_cast<std::uint8_t>(k * 11));
  const std::vector<float> mean = {0.485f, 0.456f, 0.406f}, sd = {0.229f, 0.224f, 0.225f};
  const std::vector<float> x = ptq_example::to_nchw(im, mean, sd, 1, 2);  // images 1 and 2, 3 channels
  REQUIRE(x.size() == 2 * 3 * 8);
  for (int n = 0; n < 2; ++n)
    for (int c = 0; c < 3; ++c)
      for (int k = 0; k < 8; ++k) {
        const double p = (n + 1) * 8 * 11 + k * 11;
        const double want = (p / 255.0 - mean[static_cast<std::size_t>(c)]) / sd[static_cast<std::size_t>(c)];
        CHECK(x[static_cast<std::size_t>((n * 3 + c) * 8 + k)] == doctest::Approx(want).epsilon(1e-6));
      }
  const std::vector<float> g = ptq_example::to_nchw(im, {0.5f}, {0.25f});
  REQUIRE(g.size() == 24);
  CHECK(g[0] == -2.0f);                                           // (0 - 0.5) / 0.25
  CHECK(g[23] == doctest::Approx((253.0 / 255.0 - 0.5) / 0.25));  // p = 253
  CHECK(ptq_example::to_nchw(im, {0.5f}, {0.25f}, 3, 0).empty());

  CHECK_THROWS_WITH_AS(ptq_example::to_nchw(im, {0.5f}, {0.25f}, 2, 2),
                       doctest::Contains("images [2, 2 + 2) are outside [0, 3)"), ptq::error);
  CHECK_THROWS_WITH_AS(ptq_example::to_nchw(im, {0.5f}, {0.25f}, -1), doctest::Contains("outside"), ptq::error);
  CHECK_THROWS_WITH_AS(ptq_example::to_nchw(im, {0.5f, 0.5f}, {0.25f}),
                       doctest::Contains("mean.size() = 2 and stdev.size() = 1"), ptq::error);
  CHECK_THROWS_WITH_AS(ptq_example::to_nchw(im, {}, {}), doctest::Contains("mean.size() = 0"), ptq::error);
  CHECK_THROWS_WITH_AS(ptq_example::to_nchw(im, {0.5f}, {0.0f}), doctest::Contains("stdev[0] = 0"), ptq::error);
}

TEST_CASE("io: malformed IDX files throw ptq::error naming the file") {
  temp_dir dir;
  // Written by python's gzip (independent of zlib's gz* reader used by idx.hpp).
  python(dir, R"(
import sys, gzip, struct
d = sys.argv[1]
def idx(dims, data, code=8, zero=b'\0\0'):
    return zero + bytes([code, len(dims)]) + b''.join(struct.pack('>I', x) for x in dims) + bytes(data)
px = [(7 * k) % 256 for k in range(3 * 4 * 5)]
files = {
    'ok': idx([3, 4, 5], px),
    'labels': idx([6], [0, 1, 2, 9, 3, 4]),
    'badlabel': idx([3], [0, 10, 2]),
    'magic': idx([3, 4, 5], px, zero=b'\0\1'),
    'float': idx([3, 4, 5], px, code=0x0D),
    'rank0': idx([], []),
    'rank5': idx([1, 1, 1, 1, 1], [0]),
    'short': idx([3, 4, 5], px[:-7]),
    'long': idx([3, 4, 5], px + [1]),
    'dims': idx([3, 4], px[:12])[:10],
    'huge': idx([1 << 20, 1 << 20, 1 << 20], []),
    'big': idx([1 << 20, 28, 28], px),
    'empty': b'',
    'zero': idx([0, 28, 28], []),
}
for name, b in files.items():
    open(f'{d}/{name}.gz', 'wb').write(gzip.compress(b))
open(f'{d}/plain', 'wb').write(files['ok'])   # not gzipped: read as is
z = gzip.compress(files['ok'])
open(f'{d}/cut.gz', 'wb').write(z[:len(z) // 2])
crc = bytearray(z); crc[-8] ^= 0xff                    # gzip trailer: CRC-32
open(f'{d}/crc.gz', 'wb').write(bytes(crc))
)");
  const ptq_example::idx_images ok = ptq_example::read_idx_images(dir / "ok.gz");
  CHECK(ok.count == 3);
  CHECK(ok.rows == 4);
  CHECK(ok.cols == 5);
  REQUIRE(ok.pixels.size() == 60);
  for (int k = 0; k < 60; ++k) CHECK(ok.pixels[static_cast<std::size_t>(k)] == (7 * k) % 256);
  CHECK(ptq_example::read_idx_images(dir / "plain").pixels == ok.pixels);
  CHECK(ptq_example::read_idx_labels(dir / "labels.gz") == std::vector<std::uint8_t>{0, 1, 2, 9, 3, 4});
  CHECK(ptq_example::read_idx_images(dir / "zero.gz").count == 0);
  const ptq_example::idx_data raw = ptq_example::read_idx(dir / "ok.gz");
  CHECK(raw.shape == std::vector<ptq::index>{3, 4, 5});

  auto bad = [&](const std::string& file, const std::string& what, bool labels = false) {
    CAPTURE(file);
    const std::string path = dir / file;
    if (labels)
      CHECK_THROWS_WITH_AS(ptq_example::read_idx_labels(path), contains(path + ": " + what), ptq::error);
    else
      CHECK_THROWS_WITH_AS(ptq_example::read_idx_images(path), contains(path + ": " + what), ptq::error);
  };
  bad("absent.gz", "cannot open for reading");
  bad("magic.gz", "not an IDX file: the magic starts with 0, 1 instead of 0, 0");
  bad("float.gz", "IDX type code 0xd is not supported");
  bad("rank0.gz", "IDX rank 0 is outside [1, 4]");
  bad("rank5.gz", "IDX rank 5 is outside [1, 4]");
  bad("short.gz", "truncated: the header declares 60 values but only 53 follow");
  bad("long.gz", "bytes after the 60 declared values");
  bad("dims.gz", "truncated inside the dimensions of the header");
  bad("huge.gz", "the declared size exceeds 2^40 values");
  bad("big.gz", "truncated: the header declares 822083584 values but only 60 follow");
  bad("empty.gz", "truncated: 0 bytes, shorter than the 4-byte IDX magic");
  bad("cut.gz", "gzip read error: unexpected end of file");
  bad("crc.gz", "gzip read error: incorrect data check");
  bad("labels.gz", "rank 1 is not 3 (images [N, rows, cols])");
  bad("ok.gz", "rank 3 is not 1 (labels [N])", true);
  bad("badlabel.gz", "label[1] = 10 is outside [0, 10)", true);
  CHECK_THROWS_WITH_AS(ptq_example::read_fashion_mnist("test"), doctest::Contains("split = 'test'"), ptq::error);
  CHECK_THROWS_WITH_AS(ptq_example::read_fashion_mnist("t10k", dir.path),
                       contains(dir / "t10k-images-idx3-ubyte.gz: cannot open for reading"), ptq::error);
}

}  // namespace ptq_test_idx
