// fuzz_quantizer.cpp: libFuzzer target: the quantizer parameter path on arbitrary numbers.
//
// The bytes choose float or double, a layout (channels, outer, inner, some invalid), the
// values (raw bit patterns: NaN, +-Inf, denormals, extremes; or tame ones), bit widths
// (any int: negative, 0, 17, huge), ranges, means, bins and allocator parameters, and run
// calibration_statistics (both modes, merge), batch_statistics_ref, aciq_ranges (scalar
// and per-channel bits), aciq_ranges_bins, minmax_ranges, bit_allocator::paper / exact,
// quant_params::per_tensor / per_channel, quantize (uint8, uint16), dequantize,
// fake_quantize, fake_quantize_in_place and their _ref twins, and bias_corrector.
// The only allowed outcome for bad input is ptq::error, with the caller's output untouched.
// For good input: statistics ordered and finite, ranges lo <= hi, codes <= qmax,
// optimized == _ref exactly, fake_quantize output on its channel's grid within half a step
// of the input (when the input is inside the grid), allocations within their bounds.
#include <fuzzer/FuzzedDataProvider.h>

#include <cmath>
#include <cstdint>
#include <cstring>
#include <limits>
#include <vector>

#include <ptq/ptq.hpp>

#include "fuzz_common.hpp"

namespace {

using ptq::index;

template <class T>
T number(FuzzedDataProvider& in) {
  switch (in.ConsumeIntegralInRange<int>(0, 4)) {
    case 0: {  // any bit pattern: NaN, infinities, denormals, extremes
      T v;
      const auto b = in.ConsumeBytes<unsigned char>(sizeof(T));
      unsigned char raw[sizeof(T)] = {};
      if (!b.empty()) std::memcpy(raw, b.data(), b.size());
      std::memcpy(&v, raw, sizeof(T));
      return v;
    }
    case 1: {
      static const T special[] = {T(0),
                                  -T(0),
                                  T(1),
                                  T(-1),
                                  std::numeric_limits<T>::quiet_NaN(),
                                  std::numeric_limits<T>::infinity(),
                                  -std::numeric_limits<T>::infinity(),
                                  std::numeric_limits<T>::denorm_min(),
                                  -std::numeric_limits<T>::denorm_min(),
                                  std::numeric_limits<T>::min(),
                                  std::numeric_limits<T>::max(),
                                  std::numeric_limits<T>::lowest(),
                                  std::numeric_limits<T>::epsilon(),
                                  T(0.5),
                                  T(1e-30),
                                  T(1e30)};
      return special[in.ConsumeIntegralInRange<std::size_t>(0, sizeof(special) / sizeof(special[0]) - 1)];
    }
    case 2:
      return static_cast<T>(in.ConsumeIntegralInRange<int>(-8, 8));
    default:
      return in.ConsumeFloatingPointInRange<T>(T(-10), T(10));
  }
}

int bits_value(FuzzedDataProvider& in) {
  switch (in.ConsumeIntegralInRange<int>(0, 3)) {
    case 0:
      return in.ConsumeIntegral<int>();  // anything, INT_MIN and INT_MAX included
    case 1:
      return in.ConsumeIntegralInRange<int>(-2, 18);
    default:
      return in.ConsumeIntegralInRange<int>(0, 8);
  }
}

template <class T>
bool bit_equal(const ptq::row_matrix<T>& a, const ptq::row_matrix<T>& b) {
  return a.rows() == b.rows() && a.cols() == b.cols() &&
         std::memcmp(a.data(), b.data(), static_cast<std::size_t>(a.size()) * sizeof(T)) == 0;
}

// Calls f(); ptq::error is fine, and then `out` must still equal `before`.
template <class M, class F>
bool guarded(const M& out, F&& f) {
  const M before = out;
  try {
    f();
    return true;
  } catch (const ptq::error&) {
    PTQ_FUZZ_CHECK(before.rows() == out.rows() && before.cols() == out.cols());
    PTQ_FUZZ_CHECK(std::memcmp(before.data(), out.data(),
                               static_cast<std::size_t>(out.size()) * sizeof(typename M::Scalar)) == 0);
    return false;
  }
}

template <class T>
void check_stats(const ptq::channel_stats& s, index channels, bool with_b) {
  PTQ_FUZZ_CHECK(s.mean.size() == channels && s.min.size() == channels && s.max.size() == channels);
  PTQ_FUZZ_CHECK(s.std.size() == channels && (!with_b || s.b.size() == channels));
  for (index c = 0; c < channels; ++c) {
    PTQ_FUZZ_CHECK(std::isfinite(s.min[c]) && std::isfinite(s.max[c]) && std::isfinite(s.mean[c]));
    PTQ_FUZZ_CHECK(s.min[c] <= s.mean[c] && s.mean[c] <= s.max[c]);
    PTQ_FUZZ_CHECK(std::isfinite(s.std[c]) && s.std[c] >= 0);
    if (with_b) PTQ_FUZZ_CHECK(std::isfinite(s.b[c]) && s.b[c] >= 0);
  }
}

template <class T>
void check_quantizer(const ptq::row_matrix<T>& x, const ptq::quant_params<T>& p) {
  const index C = p.channels();
  PTQ_FUZZ_CHECK(C >= 1 && p.zero_point.size() == C && p.bits.size() == C);
  for (index c = 0; c < C; ++c) {
    PTQ_FUZZ_CHECK(p.bits[c] >= 0 && p.bits[c] <= 16);
    PTQ_FUZZ_CHECK(std::isfinite(p.scale[c]) && p.scale[c] >= T(0));
    if (!p.is_constant(c)) PTQ_FUZZ_CHECK(p.scale[c] >= std::numeric_limits<T>::min());
  }
  using codes8 = Eigen::Matrix<std::uint8_t, Eigen::Dynamic, Eigen::Dynamic, Eigen::RowMajor>;
  using codes16 = Eigen::Matrix<std::uint16_t, Eigen::Dynamic, Eigen::Dynamic, Eigen::RowMajor>;
  codes16 q16 = codes16::Constant(x.rows(), x.cols(), 0xbeef), q16r = q16;
  const bool ok16 = guarded(q16, [&] { ptq::gemmlowp_quantizer::quantize<std::uint16_t>(x, p, q16); });
  const bool ok16r = guarded(q16r, [&] { ptq::gemmlowp_quantizer::quantize_ref<std::uint16_t>(x, p, q16r); });
  PTQ_FUZZ_CHECK(ok16 == ok16r);
  if (ok16) {
    PTQ_FUZZ_CHECK(q16 == q16r);
    for (index r = 0; r < x.rows(); ++r)
      for (index j = 0; j < x.cols(); ++j) PTQ_FUZZ_CHECK(q16(r, j) <= p.qmax(r % C));
  }
  codes8 q8 = codes8::Constant(x.rows(), x.cols(), 0xa5), q8r = q8;
  const bool ok8 = guarded(q8, [&] { ptq::gemmlowp_quantizer::quantize<std::uint8_t>(x, p, q8); });
  const bool ok8r = guarded(q8r, [&] { ptq::gemmlowp_quantizer::quantize_ref<std::uint8_t>(x, p, q8r); });
  PTQ_FUZZ_CHECK(ok8 == ok8r);
  if (ok8) PTQ_FUZZ_CHECK(q8 == q8r);

  ptq::row_matrix<T> fq = ptq::row_matrix<T>::Constant(x.rows(), x.cols(), T(7)), fqr = fq, inplace = x;
  const bool okf = guarded(fq, [&] { ptq::gemmlowp_quantizer::fake_quantize(x, p, fq); });
  const bool okfr = guarded(fqr, [&] { ptq::gemmlowp_quantizer::fake_quantize_ref(x, p, fqr); });
  const bool oki = guarded(inplace, [&] { ptq::gemmlowp_quantizer::fake_quantize_in_place(inplace, p); });
  PTQ_FUZZ_CHECK(okf == okfr && okf == oki);
  PTQ_FUZZ_CHECK(okf == ok16);  // the same checks (finite data, shapes) for both paths
  if (!okf) return;
  PTQ_FUZZ_CHECK(bit_equal(fq, fqr));
  PTQ_FUZZ_CHECK(bit_equal(fq, inplace));
  for (index r = 0; r < x.rows(); ++r) {
    const index c = r % C;
    const T s = p.scale[c];
    for (index j = 0; j < x.cols(); ++j) {
      const T v = x(r, j), o = fq(r, j);
      PTQ_FUZZ_CHECK(std::isfinite(o));
      if (p.is_constant(c)) {
        PTQ_FUZZ_CHECK(o == fq(c, 0));  // one value for the whole channel
        continue;
      }
      const T zp = static_cast<T>(p.zero_point[c]);
      const T glo = (T(0) - zp) * s, ghi = (static_cast<T>(p.qmax(c)) - zp) * s;
      PTQ_FUZZ_CHECK(glo <= o && o <= ghi);
      const T eps = std::numeric_limits<T>::epsilon();
      if (v >= glo && v <= ghi)  // inside the grid: within half a step (plus rounding of x * inv and of the product)
        PTQ_FUZZ_CHECK(std::abs(static_cast<double>(o) - static_cast<double>(v)) <=
                       0.5 * static_cast<double>(s) + 4.0 * static_cast<double>(eps) *
                                                          (std::abs(static_cast<double>(v)) + static_cast<double>(s)));
    }
  }
  // dequantize(quantize(x)) == fake_quantize(x), bit for bit.
  ptq::row_matrix<T> dq = ptq::row_matrix<T>::Constant(x.rows(), x.cols(), T(3)), dqr = dq;
  const bool okd = guarded(dq, [&] { ptq::gemmlowp_quantizer::dequantize(q16, p, dq); });
  const bool okdr = guarded(dqr, [&] { ptq::gemmlowp_quantizer::dequantize_ref(q16, p, dqr); });
  PTQ_FUZZ_CHECK(okd && okdr);
  PTQ_FUZZ_CHECK(bit_equal(dq, fq));
  PTQ_FUZZ_CHECK(bit_equal(dqr, fq));
}

template <class T>
void run(FuzzedDataProvider& in) {
  // Layout: a few invalid channel counts and empty tensors on purpose.
  const index C = in.ConsumeIntegralInRange<int>(-1, 6);
  const index outer = in.ConsumeIntegralInRange<int>(0, 4);
  const index inner = in.ConsumeIntegralInRange<int>(0, 24);
  try {  // arbitrary (huge, negative) dims: an error or a consistent layout, never overflow
    const std::vector<index> dims = {in.ConsumeIntegral<index>(), in.ConsumeIntegral<index>(),
                                     in.ConsumeIntegral<index>()};
    const ptq::channel_layout l = ptq::channel_layout::of(dims, in.ConsumeIntegralInRange<int>(-1, 3));
    PTQ_FUZZ_CHECK(l.outer >= 0 && l.channels >= 0 && l.inner >= 0);
  } catch (const ptq::error&) {
  }
  const index rows = outer * std::max<index>(C, 1);
  ptq::row_matrix<T> x(rows, inner);
  const bool tame = in.ConsumeBool();
  for (index i = 0; i < x.size(); ++i) {
    const T v = number<T>(in);
    x.data()[i] = tame && !std::isfinite(v) ? T(0) : v;
  }

  // Calibration statistics: one or two batches, both modes, merged halves.
  ptq::channel_stats stats;
  bool have_stats = false;
  const bool exact = in.ConsumeBool();
  try {
    ptq::calibration_statistics whole(C, exact ? ptq::stats_mode::exact : ptq::stats_mode::batch_mean);
    whole.add(x);
    if (exact) {
      whole.begin_deviation_pass();
      whole.add(x);
    }
    stats = whole.result();
    check_stats<T>(stats, C, true);
    const ptq::channel_stats ref = ptq::batch_statistics_ref(x, C);
    PTQ_FUZZ_CHECK(ref.min == stats.min && ref.max == stats.max);
    have_stats = true;
  } catch (const ptq::error& e) {
    // The naive twin must refuse it too, unless the sums overflow double: in another
    // order of additions they may not (values near DBL_MAX).
    const bool overflow = std::strstr(e.what(), "overflows double") != nullptr;
    bool ref_ok = true;
    try {
      (void)ptq::batch_statistics_ref(x, C);
    } catch (const ptq::error&) {
      ref_ok = false;
    }
    if (ref_ok && !overflow) std::fprintf(stderr, "refused by add() only: %s\n", e.what());
    PTQ_FUZZ_CHECK(!ref_ok || overflow);
  }
  const index half = (outer / 2) * std::max<index>(C, 1);
  if (have_stats && half > 0) {  // two halves merged: same count; exact mode: same min and max
    try {
      ptq::calibration_statistics a(C, exact ? ptq::stats_mode::exact : ptq::stats_mode::batch_mean), b = a;
      a.add(x.topRows(half));
      b.add(x.bottomRows(rows - half));
      a.merge(b);
      PTQ_FUZZ_CHECK(a.count() == stats.count);
      const ptq::channel_stats m = a.moments();
      if (exact) PTQ_FUZZ_CHECK(m.min == stats.min && m.max == stats.max);
    } catch (const ptq::error&) {
    }
  }
  if (!have_stats || in.ConsumeBool()) {  // statistics straight from the bytes (sizes may disagree)
    const index n = std::max<index>(C, 0) + in.ConsumeIntegralInRange<int>(-1, 1);
    auto vec = [&](index m) {
      Eigen::VectorXd v(std::max<index>(m, 0));
      for (index i = 0; i < v.size(); ++i) v[i] = number<double>(in);
      return v;
    };
    stats.min = vec(n), stats.max = vec(n), stats.mean = vec(n), stats.b = vec(n + in.ConsumeIntegralInRange<int>(-1, 0));
    stats.std = vec(n);
  }

  // Ranges.
  const auto dist = in.ConsumeBool() ? ptq::distribution::laplace : ptq::distribution::gauss;
  const auto kind = in.ConsumeBool() ? ptq::range_kind::signed_range : ptq::range_kind::unsigned_range;
  ptq::channel_ranges ranges;
  bool have_ranges = false;
  Eigen::VectorXi bits = Eigen::VectorXi::Constant(std::max<index>(C, 0), 4);
  for (index c = 0; c < bits.size(); ++c) bits[c] = bits_value(in);
  auto check_ranges = [&](const ptq::channel_ranges& r) {
    PTQ_FUZZ_CHECK(r.lo.size() == r.hi.size());
    for (index c = 0; c < r.lo.size(); ++c)
      PTQ_FUZZ_CHECK(std::isfinite(r.lo[c]) && std::isfinite(r.hi[c]) && r.lo[c] <= r.hi[c]);
  };
  switch (in.ConsumeIntegralInRange<int>(0, 4)) {
    case 0:
      try {
        ranges = ptq::aciq_ranges(dist, stats, bits_value(in), kind);
        have_ranges = true;
      } catch (const ptq::error&) {
      }
      break;
    case 1:
      try {
        ranges = ptq::aciq_ranges(dist, stats, bits, kind);
        have_ranges = true;
      } catch (const ptq::error&) {
      }
      break;
    case 2:
      try {
        Eigen::VectorXd bins(bits.size());
        for (index c = 0; c < bins.size(); ++c) bins[c] = number<double>(in);
        ranges = ptq::aciq_ranges_bins(dist, stats, bins, kind);
        have_ranges = true;
      } catch (const ptq::error&) {
      }
      break;
    case 3:
      try {
        ranges = ptq::minmax_ranges(stats, kind);
        have_ranges = true;
      } catch (const ptq::error&) {
      }
      break;
    default:
      break;
  }
  if (have_ranges) check_ranges(ranges);
  try {  // the modelled MSE and alphas with arbitrary arguments
    const double a = ptq::aciq_alpha_bins(dist, number<double>(in), kind);
    PTQ_FUZZ_CHECK(std::isfinite(a) && a > 0);
    const double m = ptq::aciq_mse(dist, number<double>(in), number<double>(in), kind);
    PTQ_FUZZ_CHECK(!std::isnan(m) && m >= 0);  // +inf: the MSE of alpha > ~1e154 is beyond double
  } catch (const ptq::error&) {
  }
  if (!have_ranges || in.ConsumeBool()) {
    const index n = std::max<index>(C, 0) + in.ConsumeIntegralInRange<int>(-1, 1);
    ranges.lo.resize(std::max<index>(n, 0));
    ranges.hi.resize(ranges.lo.size());
    for (index c = 0; c < ranges.lo.size(); ++c) ranges.lo[c] = number<double>(in), ranges.hi[c] = number<double>(in);
  }

  // Bit allocation on the range widths.
  try {
    Eigen::VectorXd widths = ranges.hi - ranges.lo;
    if (in.ConsumeBool())
      for (index c = 0; c < widths.size(); ++c) widths[c] = number<double>(in);
    ptq::bit_allocator::params bp;
    bp.target_bits = in.ConsumeBool() ? number<double>(in) : in.ConsumeFloatingPointInRange<double>(0, 8);
    bp.min_bits = in.ConsumeBool() ? bits_value(in) : 0;
    bp.max_bits = in.ConsumeBool() ? bits_value(in) : 8;
    bp.rounding = in.ConsumeBool() ? ptq::bit_rounding::round : ptq::bit_rounding::ceil;
    bp.retune = in.ConsumeBool() ? ptq::bit_retune::bisection : ptq::bit_retune::reference;
    bp.retune_iterations = in.ConsumeIntegralInRange<int>(-1, 200);
    const bool exact_alloc = in.ConsumeBool();
    const ptq::bit_allocation al = exact_alloc ? ptq::bit_allocator::exact(widths, bp) : ptq::bit_allocator::paper(widths, bp);
    PTQ_FUZZ_CHECK(al.bits.size() == widths.size());
    long long total = 0;
    for (index c = 0; c < al.bits.size(); ++c) {
      PTQ_FUZZ_CHECK(al.bits[c] >= bp.min_bits && al.bits[c] <= bp.max_bits);
      total += al.bits[c];
    }
    if (exact_alloc)
      PTQ_FUZZ_CHECK(total == static_cast<long long>(std::floor(static_cast<double>(widths.size()) * bp.target_bits + 1e-9)));
    // modelled_mse = sum a^2 / (3 * 4^M) is +inf (honestly) when some a is beyond ~1e154.
    PTQ_FUZZ_CHECK(std::isfinite(al.mean_bits) && !std::isnan(al.modelled_mse) && al.modelled_mse >= 0);
    if (in.ConsumeBool()) bits = al.bits;
  } catch (const ptq::error&) {
  }

  // Quantization parameters, then every operation on x.
  ptq::quant_params<T> p;
  bool have_params = false;
  try {
    switch (in.ConsumeIntegralInRange<int>(0, 3)) {
      case 0:
        p = ptq::quant_params<T>::per_tensor(number<double>(in), number<double>(in), bits_value(in));
        break;
      case 1:
        p = ptq::quant_params<T>::per_channel(ranges, bits_value(in));
        break;
      case 2:
        p = ptq::quant_params<T>::per_channel(ranges, bits);
        break;
      default: {
        Eigen::VectorXd mean(ranges.lo.size() + in.ConsumeIntegralInRange<int>(-1, 0) + (ranges.lo.size() == 0));
        for (index c = 0; c < mean.size(); ++c) mean[c] = number<double>(in);
        p = ptq::quant_params<T>::per_channel(ranges, bits, mean);
      }
    }
    have_params = true;
  } catch (const ptq::error&) {
  }
  if (have_params && x.size() > 0) check_quantizer<T>(x, p);

  // Bias correction of x (as weights, C rows per outer index: use the row view as is)
  // towards its fake-quantized copy, or towards arbitrary numbers.
  if (x.size() > 0) {
    ptq::row_matrix<T> wq(x.rows(), x.cols());
    for (index i = 0; i < wq.size(); ++i) wq.data()[i] = in.ConsumeBool() ? x.data()[i] : number<T>(in);
    ptq::bias_corrector::params bc;
    bc.variance = in.ConsumeBool();
    ptq::bias_correction corr;
    const bool ok = guarded(wq, [&] { corr = ptq::bias_corrector::correct(x, wq, bc); });
    if (ok) {
      PTQ_FUZZ_CHECK(corr.channels() == x.rows());
      for (index r = 0; r < corr.channels(); ++r)
        PTQ_FUZZ_CHECK(std::isfinite(corr.mu[r]) && std::isfinite(corr.xi[r]) && std::isfinite(corr.beta[r]));
      for (index i = 0; i < wq.size(); ++i) PTQ_FUZZ_CHECK(std::isfinite(wq.data()[i]));
    }
  }
}

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const std::uint8_t* data, std::size_t size) {
  FuzzedDataProvider in(data, size);
  try {
    if (in.ConsumeBool())
      run<float>(in);
    else
      run<double>(in);
  } catch (const ptq::error&) {
    // Every call above that may throw is guarded; one escaping here is still an allowed outcome.
  }
  return 0;
}
