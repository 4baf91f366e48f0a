// integer_layer.hpp: one layer's integer arithmetic: weight codes with the bias correction folded in, exact fixed-point accumulators, the output stage.
//
// A layer y_k = sum_j w_kj x_j + b_k whose input arrives as uint8 codes q_j on a grid
// x_j = s_j (q_j - z_j) and whose weights are quantized per output channel k. Fold the
// input scales into the weights first (w'_kj = w_kj s_j: exact, and the only way per-channel
// input scales survive an int32 sum over j), quantize w' per output channel with
// quant_params p (min/max, any bits per channel <= 8), optionally bias-correct it
// (bias_corrector: corrected = xi_k wq + beta_k), and the layer is, exactly,
//
//   corrected w'_kj = u_k (c_kj - e_k),   u_k = xi_k s_k,   e_k = zp_k - beta_k / u_k + o_k
//
// with stored int8 codes c_kj = q_kj - o_k, o_k = 2^(bits_k - 1) (0 for 0 bits), so that
// 4-bit codes are [-8, 7] and 8-bit ones [-128, 127] (what VNNI's u8 x s8 multiplies). No
// weight moves off its grid: xi goes into the scale, beta into the zero point e_k, which
// is real. A constant row (0 bits, zero-width range; scale 0 included) is the code 0 and
// u, e chosen so that u (0 - e) is its value plus beta.
// Then with the uint8 x int8 -> int32 accumulator acc_k = sum_j c_kj q_j and the row sum
// rowsum = sum_j q_j (padding counted as its zero point):
//
//   y_k / u_k = acc_k - e_k rowsum + e_k Z - sum_j c_kj z_j + b_k / u_k,   Z = sum_j z_j
//
// e_k and b_k / u_k are real; with F_k fractional bits the layer keeps them exactly as
// E_k = round(e_k 2^F_k) and a rounded bias:
//
//   fine_k = acc_k 2^F_k - E_k rowsum + B_k,   B_k = E_k Z - 2^F_k sum_j c_kj z_j + round(b_k 2^F_k / u_k)
//
// F_k is the largest value in [0, 24] for which the worst case |fine_k| over all input codes
// (|q_j - z_j| <= amax_j) stays below 2^31 - 4: fine_k is an exact int32 and, since it
// fits, evaluating it in wrapping int32 arithmetic (E_k and B_k reduced modulo 2^32) gives
// the same value, which is what SIMD kernels do. So the layer computes exactly with the
// weights u_k (c_kj - E_k / 2^F_k) and the bias u_k round(b_k 2^F_k / u_k) / 2^F_k: 2^-F_k
// of one weight step away from the corrected ones, nothing else. The output stage is
// fixedpoint.hpp's requantize with multiplier u_k / (2^F_k s_out,k) onto the output grid
// (integer_grid_of, quantized_tensor.hpp), its clamp the ReLU when lo = zero point.
// make_integer_stage checks every bound it relies on and throws ptq::error otherwise.
#pragma once

#include <Eigen/Core>
#include <cmath>
#include <cstdint>
#include <vector>

#include "bias_corrector.hpp"
#include "config.hpp"
#include "error.hpp"
#include "fixedpoint.hpp"
#include "gemmlowp_quantizer.hpp"
#include "quantized_tensor.hpp"

namespace ptq {

// A layer's weights in integer form (see the top of this file); rows = output channels.
struct integer_weights {
  Eigen::Matrix<std::int8_t, Eigen::Dynamic, Eigen::Dynamic, Eigen::RowMajor> codes;  // q - 2^(bits-1)
  Eigen::VectorXi bits;
  Eigen::VectorXd u, e;  // corrected weight = u (code - e)
  index rows() const { return codes.rows(); }
  index cols() const { return codes.cols(); }
};

// The codes of w (K x D, rows = output channels, already folded with the input scales)
// under per-channel p (<= 8 bits), with the bias correction bc (nullptr: none) folded into
// u and e. bc is what bias_corrector::compute(w, fake_quantize(w, p)) returns.
template <class D>
integer_weights to_integer_weights(const Eigen::DenseBase<D>& w, const quant_params<double>& p,
                                   const bias_correction* bc = nullptr) {
  constexpr const char* where = "ptq::to_integer_weights";
  detail::require(p.channels() == w.rows(), where, "params have ", p.channels(), " channels, w has ", w.rows(),
                  " rows (one channel per output row)");
  for (index k = 0; k < p.channels(); ++k)
    detail::require(p.bits[k] >= 0 && p.bits[k] <= 8, where, "channel ", k, " has ", p.bits[k],
                    " bits: int8 codes hold at most 8");
  detail::require(!bc || bc->channels() == w.rows(), where, "the bias correction has ", bc ? bc->channels() : 0,
                  " channels, w has ", w.rows(), " rows");
  Eigen::Matrix<std::uint8_t, Eigen::Dynamic, Eigen::Dynamic, Eigen::RowMajor> q(w.rows(), w.cols());
  const Eigen::Matrix<double, Eigen::Dynamic, Eigen::Dynamic, Eigen::RowMajor> wd = w.derived().template cast<double>();
  gemmlowp_quantizer::quantize<std::uint8_t>(wd, p, q);
  integer_weights out;
  out.bits = p.bits;
  out.codes.resize(w.rows(), w.cols());
  out.u.resize(w.rows());
  out.e.resize(w.rows());
  for (index k = 0; k < w.rows(); ++k) {
    const int o = p.bits[k] > 0 ? 1 << (p.bits[k] - 1) : 0;
    const double xi = bc ? bc->xi[k] : 1.0, beta = bc ? bc->beta[k] : 0.0, s = p.scale[k];
    const bool zero = s == 0.0;
    out.u[k] = zero ? 1.0 : xi * s;
    const double e = zero ? q(k, 0) - beta : p.zero_point[k] - beta / out.u[k];
    out.e[k] = e - o;
    for (index j = 0; j < w.cols(); ++j) out.codes(k, j) = static_cast<std::int8_t>(q(k, j) - o);
  }
  return out;
}

// One layer's fixed-point stage (see the top of this file).
struct integer_stage {
  std::vector<std::int64_t> E, B;
  std::vector<int> F;
  requantize_params out;  // bias 0; multiplier u / (2^F scale_out); offset, lo, hi from the output grid

  index channels() const { return static_cast<index>(F.size()); }
  // fine_k for one accumulator and its row sum (exact; it fits int32 by construction).
  std::int32_t fine(std::int32_t acc, std::int64_t rowsum, index k) const {
    const auto kk = static_cast<std::size_t>(k);
    return static_cast<std::int32_t>(std::int64_t{acc} * (std::int64_t{1} << F[kk]) - E[kk] * rowsum + B[kk]);
  }
};

// The stage of weights w for inputs whose reduction index j has zero point in_zero[j] and
// |q - z| <= in_amax[j], float bias `bias` (one per row; real units), onto output grids
// out[k]. u, e finite, u > 0; zero points in [0, 255]; bounds checked.
inline integer_stage make_integer_stage(const integer_weights& w, const std::vector<int>& in_zero,
                                        const std::vector<int>& in_amax, const Eigen::VectorXd& bias,
                                        const std::vector<integer_grid>& out) {
  constexpr const char* where = "ptq::make_integer_stage";
  const index K = w.rows(), D = w.cols();
  detail::require(static_cast<index>(in_zero.size()) == D && static_cast<index>(in_amax.size()) == D, where,
                  "in_zero / in_amax have ", in_zero.size(), " / ", in_amax.size(), " entries, the weights ", D,
                  " columns");
  detail::require(bias.size() == K && static_cast<index>(out.size()) == K, where, "bias / out have ", bias.size(),
                  " / ", out.size(), " entries, the weights ", K, " rows");
  for (index j = 0; j < D; ++j)
    detail::require(in_zero[static_cast<std::size_t>(j)] >= 0 && in_zero[static_cast<std::size_t>(j)] <= 255 &&
                        in_amax[static_cast<std::size_t>(j)] >= 0 && in_amax[static_cast<std::size_t>(j)] <= 255,
                    where, "input ", j, ": zero point ", in_zero[static_cast<std::size_t>(j)], ", amax ",
                    in_amax[static_cast<std::size_t>(j)], " (expected 0..255)");
  integer_stage st;
  st.E.assign(static_cast<std::size_t>(K), 0);
  st.B.assign(static_cast<std::size_t>(K), 0);
  st.F.assign(static_cast<std::size_t>(K), 0);
  std::int64_t Z = 0;
  for (int z : in_zero) Z += z;
  const double limit = 2147483647.0 - 4.0;
  for (index k = 0; k < K; ++k) {
    const double es = w.e[k], bu = bias[k] / w.u[k];
    detail::require(std::isfinite(w.u[k]) && w.u[k] > 0 && std::isfinite(es) && std::isfinite(bu), where, "row ", k,
                    ": u = ", w.u[k], ", e = ", es, ", bias / u = ", bu, " (u must be > 0, all finite)");
    std::int64_t qz = 0;
    for (index j = 0; j < D; ++j) qz += std::int64_t{w.codes(k, j)} * in_zero[static_cast<std::size_t>(j)];
    int F = 24;  // the largest F whose worst case |fine| fits int32
    for (; F >= 0; --F) {
      const double ef = std::ldexp(std::nearbyint(std::ldexp(es, F)), -F);
      double bound = std::abs(bu) + 1.0;
      for (index j = 0; j < D; ++j) bound += std::abs(w.codes(k, j) - ef) * in_amax[static_cast<std::size_t>(j)];
      if (std::ldexp(bound, F) < limit) break;
    }
    detail::require(F >= 0, where, "row ", k, ": the accumulator's worst case does not fit int32 even without "
                    "fractional bits");
    // int64 safety of E Z and the bias term (Z < 2^25 for D <= 65793 codes of <= 255).
    detail::require(std::abs(std::ldexp(es, F)) < 0x1p36 && std::abs(std::ldexp(bu, F)) < 0x1p52, where, "row ", k,
                    ": e = ", es, " or bias / u = ", bu, " is too large for the fixed-point stage");
    const std::int64_t E = std::llround(std::ldexp(es, F));
    const auto kk = static_cast<std::size_t>(k);
    st.F[kk] = F;
    st.E[kk] = E;
    st.B[kk] = E * Z - qz * (std::int64_t{1} << F) + std::llround(std::ldexp(bu, F));
    const integer_grid& g = out[kk];
    detail::require(g.lo >= 0 && g.lo <= g.hi && g.hi <= 255 && g.zero_point >= 0 && g.zero_point <= 255 &&
                        std::isfinite(g.scale) && g.scale >= 0,
                    where, "output grid ", k, ": scale ", g.scale, ", zero point ", g.zero_point, ", codes [", g.lo,
                    ", ", g.hi, "]");
    const bool constant = g.lo == g.hi || g.scale == 0.0;
    st.out.bias.push_back(0);
    st.out.mult.push_back(quantize_multiplier(constant ? 0.0 : w.u[k] / std::ldexp(g.scale, F)));
    st.out.offset.push_back(g.zero_point);
    st.out.lo.push_back(static_cast<std::uint8_t>(g.lo));
    st.out.hi.push_back(static_cast<std::uint8_t>(g.hi));
  }
  return st;
}

}  // namespace ptq
