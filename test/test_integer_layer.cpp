// test_integer_layer.cpp: a layer's integer arithmetic against the real-valued layer computed in double.
#include <doctest/doctest.h>

#include <ptq/igemm.hpp>
#include <ptq/integer_layer.hpp>

#include <cmath>
#include <cstdint>
#include <random>
#include <vector>

// Everything of this file in its own namespace: the test binary is a unity build.
namespace ptq_test_integer_layer {

namespace {
using dmatrix = Eigen::Matrix<double, Eigen::Dynamic, Eigen::Dynamic, Eigen::RowMajor>;
}

TEST_CASE("integer_layer: folded codes reproduce the bias-corrected weights - fine accumulators reproduce the layer") {
  std::mt19937 rng(11);
  std::normal_distribution<double> g(0.0, 1.0);
  std::uniform_int_distribution<int> code(0, 255);
  for (int wbits : {8, 4, 2}) {
    for (bool correct : {false, true}) {
      CAPTURE(wbits);
      CAPTURE(correct);
      const ptq::index K = 9, D = 53, P = 31;  // output channels, reduction length, pixels
      dmatrix w = dmatrix::NullaryExpr(K, D, [&] { return 0.1 * g(rng); });
      w.row(3).setConstant(0.02);  // a constant row: a zero-width range
      Eigen::VectorXd bias = Eigen::VectorXd::NullaryExpr(K, [&] { return g(rng); });
      ptq::channel_ranges r;
      r.lo = w.rowwise().minCoeff();
      r.hi = w.rowwise().maxCoeff();
      Eigen::VectorXi bits = Eigen::VectorXi::Constant(K, wbits);
      bits[5] = 0;  // a 0-bit row
      const auto p = ptq::quant_params<double>::per_channel(r, bits, w.rowwise().mean());
      dmatrix wq(K, D);
      ptq::gemmlowp_quantizer::fake_quantize(w, p, wq);
      ptq::bias_correction bc;
      if (correct) {
        ptq::bias_corrector::params bp;
        bp.variance = true;
        bc = ptq::bias_corrector::correct(w, wq, bp);  // wq is now the corrected weights
      }
      const ptq::integer_weights iw = ptq::to_integer_weights(w, p, correct ? &bc : nullptr);
      // 1. u (code - e) is the corrected weight (the fold loses nothing).
      for (ptq::index k = 0; k < K; ++k)
        for (ptq::index j = 0; j < D; ++j)
          CHECK(std::abs(iw.u[k] * (iw.codes(k, j) - iw.e[k]) - wq(k, j)) <= 1e-12 * (1 + std::abs(wq(k, j))));
      // 2. Input codes with per-column zero points (amax the largest |q - z| a code can have).
      std::vector<int> z(static_cast<std::size_t>(D)), amax(z.size());
      for (ptq::index j = 0; j < D; ++j) {
        z[static_cast<std::size_t>(j)] = code(rng) / 2;
        amax[static_cast<std::size_t>(j)] = std::max(z[static_cast<std::size_t>(j)], 255 - z[static_cast<std::size_t>(j)]);
      }
      Eigen::Matrix<std::uint8_t, Eigen::Dynamic, Eigen::Dynamic, Eigen::RowMajor> a(P, D);
      for (ptq::index i = 0; i < P; ++i)
        for (ptq::index j = 0; j < D; ++j) a(i, j) = static_cast<std::uint8_t>(code(rng));
      a.row(0).setConstant(255);  // extreme inputs
      for (ptq::index j = 0; j < D; ++j) a(1, j) = static_cast<std::uint8_t>(z[static_cast<std::size_t>(j)]);  // all zero
      // Output grid per channel: the real output range over these inputs, 8 bits.
      dmatrix y(P, K);
      for (ptq::index i = 0; i < P; ++i)
        for (ptq::index k = 0; k < K; ++k) {
          double s = bias[k];
          for (ptq::index j = 0; j < D; ++j) s += wq(k, j) * (a(i, j) - z[static_cast<std::size_t>(j)]);
          y(i, k) = s;
        }
      std::vector<ptq::integer_grid> out(static_cast<std::size_t>(K));
      for (ptq::index k = 0; k < K; ++k) {
        const double lo = std::min(0.0, y.col(k).minCoeff()), hi = std::max(0.0, y.col(k).maxCoeff());
        ptq::integer_grid& o = out[static_cast<std::size_t>(k)];
        o.scale = (hi - lo) / 255.0;
        o.zero_point = static_cast<int>(std::lround(-lo / o.scale));
        o.hi = 255;
      }
      const ptq::integer_stage st = ptq::make_integer_stage(iw, z, amax, bias, out);
      std::vector<std::int32_t> acc(static_cast<std::size_t>(P * K)), fine(acc.size());
      ptq::igemm::gemm_u8s8s32_ref(P, K, D, a.data(), D, iw.codes.data(), D, acc.data(), K);
      for (ptq::index i = 0; i < P; ++i) {
        std::int64_t rowsum = 0;
        for (ptq::index j = 0; j < D; ++j) rowsum += a(i, j);
        for (ptq::index k = 0; k < K; ++k) {
          CAPTURE(i);
          CAPTURE(k);
          const auto kk = static_cast<std::size_t>(k);
          const std::int32_t f = st.fine(acc[static_cast<std::size_t>(i * K + k)], rowsum, k);
          fine[static_cast<std::size_t>(i * K + k)] = f;
          // 3. The layer's value from fine: u fine / 2^F equals the real one up to the weights'
          // 2^-F rounding of e and the bias's (<= u 2^-F (sum |q - z| / 2 + 1)).
          const double got = iw.u[k] * std::ldexp(static_cast<double>(f), -st.F[kk]);
          double slack = 1;
          for (ptq::index j = 0; j < D; ++j) slack += std::abs(a(i, j) - z[static_cast<std::size_t>(j)]) / 2.0;
          CHECK(std::abs(got - y(i, k)) <= iw.u[k] * std::ldexp(slack, -st.F[kk]) + 1e-9 * (1 + std::abs(y(i, k))));
          CHECK(st.F[kk] >= 8);  // these layers keep at least 8 fractional bits
        }
      }
      // 4. Output codes within one code of the real value rounded onto the grid (a rounding
      // boundary may fall between the two), and equal on most.
      std::vector<std::uint8_t> q(static_cast<std::size_t>(P * K));
      ptq::requantize_ref(fine.data(), P, K, st.out, q.data(), K);
      int equal = 0;
      for (ptq::index i = 0; i < P; ++i)
        for (ptq::index k = 0; k < K; ++k) {
          const ptq::integer_grid& o = out[static_cast<std::size_t>(k)];
          const double want = std::min(255.0, std::max(0.0, std::round(y(i, k) / o.scale) + o.zero_point));
          const int qk = q[static_cast<std::size_t>(i * K + k)];
          CHECK(std::abs(qk - want) <= 1.0);
          equal += qk == want;
        }
      CHECK(equal >= P * K * 95 / 100);
    }
  }
}

TEST_CASE("integer_layer: bad arguments are refused with the reason") {
  ptq::integer_weights w;
  w.codes.setZero(2, 3);
  w.bits = Eigen::VectorXi::Constant(2, 4);
  w.u = Eigen::VectorXd::Ones(2);
  w.e = Eigen::VectorXd::Zero(2);
  const std::vector<ptq::integer_grid> out(2, ptq::integer_grid{1.0, 0, 0, 255});
  CHECK_THROWS_WITH_AS(ptq::make_integer_stage(w, {0, 0}, {1, 1}, Eigen::VectorXd::Zero(2), out),
                       doctest::Contains("3 columns"), ptq::error);
  CHECK_THROWS_WITH_AS(ptq::make_integer_stage(w, {0, 300, 0}, {1, 1, 1}, Eigen::VectorXd::Zero(2), out),
                       doctest::Contains("input 1"), ptq::error);
  w.u[1] = 0;
  CHECK_THROWS_WITH_AS(ptq::make_integer_stage(w, {0, 0, 0}, {1, 1, 1}, Eigen::VectorXd::Zero(2), out),
                       doctest::Contains("row 1"), ptq::error);
  const auto p9 = ptq::quant_params<double>::per_channel(
      ptq::channel_ranges{Eigen::VectorXd::Constant(2, -1.0), Eigen::VectorXd::Constant(2, 1.0)}, 9);
  CHECK_THROWS_WITH_AS(ptq::to_integer_weights(Eigen::MatrixXd::Zero(2, 3), p9), doctest::Contains("9 bits"),
                       ptq::error);
}

}  // namespace ptq_test_integer_layer
