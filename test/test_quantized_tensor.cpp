// test_quantized_tensor.cpp: per-channel bit-packed codes against the quantizer, the bit-by-bit twins and hand-made streams.
#include <doctest/doctest.h>

#include <ptq/quantized_tensor.hpp>

#include <cstdint>
#include <random>
#include <vector>

// Everything of this file in its own namespace: the test binary is a unity build.
namespace ptq_test_quantized_tensor {

namespace {
using matrix = Eigen::Matrix<float, Eigen::Dynamic, Eigen::Dynamic, Eigen::RowMajor>;
}

TEST_CASE("quantized_tensor: pack_bits by hand, and equal to its bit-by-bit twin at every width and odd lengths") {
  // 3-bit codes 5, 3, 7 -> bits 101 | 011 | 111 (LSB first): 0b11011101, 0b1 -> 0xDD, 0x01.
  const std::uint16_t c3[] = {5, 3, 7};
  std::uint8_t out[2] = {0xAA, 0xAA};
  ptq::pack_bits(c3, 3, 3, out);
  CHECK(out[0] == 0xDD);
  CHECK(out[1] == 0x01);
  std::mt19937 rng(1);
  for (int bits = 0; bits <= 16; ++bits)
    for (ptq::index n : {0, 1, 2, 3, 7, 8, 9, 63, 64, 65, 1001}) {
      CAPTURE(bits);
      CAPTURE(n);
      std::vector<std::uint16_t> codes(static_cast<std::size_t>(n)), back(codes.size()), back_ref(codes.size());
      for (auto& c : codes) c = bits ? static_cast<std::uint16_t>(rng() & ((1u << bits) - 1u)) : 0;
      const ptq::index bytes = ptq::packed_bits_bytes(n, bits);
      std::vector<std::uint8_t> fast(static_cast<std::size_t>(bytes) + 1, 0xEE), ref(fast.size(), 0xEE);
      ptq::pack_bits(codes.data(), n, bits, fast.data());
      ptq::pack_bits_ref(codes.data(), n, bits, ref.data());
      CHECK(fast == ref);                               // the guard byte after the stream untouched by both
      CHECK(fast.back() == 0xEE);
      ptq::unpack_bits(fast.data(), n, bits, back.data());
      ptq::unpack_bits_ref(fast.data(), n, bits, back_ref.data());
      CHECK(back == codes);
      CHECK(back_ref == codes);
    }
  const std::uint16_t big[] = {1, 16};
  std::uint8_t o[2];
  CHECK_THROWS_WITH_AS(ptq::pack_bits(big, 2, 4, o), doctest::Contains("codes[1] = 16"), ptq::error);
  const std::uint8_t padded[] = {0x05, 0x80};  // two 4-bit codes in one byte... then a stray bit
  std::uint16_t two[3];
  CHECK_THROWS_WITH_AS(ptq::unpack_bits(padded, 3, 4, two), doctest::Contains("padding bits"), ptq::error);
}

TEST_CASE("quantized_tensor: codes and values equal the quantizer's, stored at each channel's bits") {
  std::mt19937 rng(3);
  std::normal_distribution<float> g(0.0f, 1.0f);
  for (ptq::index cols : {1, 3, 9, 64, 77}) {
    const ptq::index K = 7, outer = 2;  // rows = outer * K, channel = row % K
    const matrix x = matrix::NullaryExpr(outer * K, cols, [&] { return g(rng); });
    ptq::channel_ranges r;
    r.lo = Eigen::VectorXd::Constant(K, -1.5);
    r.hi = Eigen::VectorXd::Constant(K, 2.0);
    r.lo[3] = r.hi[3] = 0.75;  // a zero-width range: the constant 0.75
    const Eigen::VectorXi bits = (Eigen::VectorXi(K) << 0, 1, 2, 4, 5, 8, 3).finished();
    const auto p = ptq::quant_params<float>::per_channel(r, bits);
    const auto q = ptq::quantized_tensor<float>::quantize(x, p);
    ptq::index expect_bytes = 0;
    for (ptq::index row = 0; row < outer * K; ++row) expect_bytes += (bits[row % K] * cols + 7) / 8;
    CHECK(q.bytes() == expect_bytes);
    Eigen::Matrix<std::uint16_t, Eigen::Dynamic, Eigen::Dynamic, Eigen::RowMajor> want(x.rows(), x.cols());
    ptq::gemmlowp_quantizer::quantize<std::uint16_t>(x, p, want);
    std::vector<std::uint16_t> row(static_cast<std::size_t>(cols));
    for (ptq::index rr = 0; rr < x.rows(); ++rr) {
      q.codes(rr, row.data());
      for (ptq::index j = 0; j < cols; ++j) CHECK(row[static_cast<std::size_t>(j)] == want(rr, j));
    }
    matrix fq(x.rows(), x.cols());
    ptq::gemmlowp_quantizer::fake_quantize(x, p, fq);
    CHECK((q.dequantize() - fq).cwiseAbs().maxCoeff() == 0.0f);
  }
}

TEST_CASE("quantized_tensor: integer grids give constant channels a zero point inside their code range") {
  ptq::channel_ranges r;
  r.lo = (Eigen::VectorXd(5) << -1.0, 0.5, -0.5, 0.0, -2.0).finished();
  r.hi = (Eigen::VectorXd(5) << 1.0, 0.5, -0.5, 0.0, 2.0).finished();
  const auto p = ptq::quant_params<double>::per_channel(r, (Eigen::VectorXi(5) << 4, 4, 4, 4, 0).finished());
  // Channel 0: ordinary; 1, 2, 3: the constants 0.5, -0.5, 0; 4: 0 bits, the midpoint 0.
  const double want[5] = {std::nan(""), 0.5, -0.5, 0.0, 0.0};
  for (ptq::index c = 0; c < 5; ++c) {
    CAPTURE(c);
    const ptq::integer_grid g = ptq::integer_grid_of(p, c);
    CHECK(g.lo <= g.hi);
    CHECK(g.lo >= 0);
    CHECK(g.zero_point >= 0);
    CHECK(g.zero_point <= 255);
    if (c == 0) {
      CHECK(g.hi == 15);
      CHECK(g.scale == p.scale[0]);
      CHECK(g.zero_point == p.zero_point[0]);
      continue;
    }
    CHECK(g.lo == g.hi);                                   // one code
    CHECK(g.scale * (g.lo - g.zero_point) == want[c]);     // ... whose value is the constant
  }
}

}  // namespace ptq_test_quantized_tensor
