// quantizer.hpp: GEMMLOWP quantize, dequantize and fake quantize on Thrust (any backend), per tensor or per channel.
//
// The semantics are the core's (gemmlowp_quantizer.hpp), bit for bit: with the
// per-channel coefficients computed on the host by the core from quant_params<T>
// (inv = 1 / scale, or 0 for a constant channel), each element goes through the same
// PTQ_HOST_DEVICE functions:
//
//   q   = clamp(nearbyint(x * inv) + zero_point, 0, qmax)     round half to even
//   out = (q - zero_point) * scale
//
// so codes are identical and floats equal to the last bit on every backend (no FMA can
// form: the product is rounded by nearbyint before the add; build without fast-math).
//
// Tensors are the core's row view over a flat span: rows = size / cols, row r belongs to
// channel r % params.channels() (NCHW: cols = H*W; per tensor: params with 1 channel).
//
// Errors. Everything the core checks is checked on the host before any kernel runs
// (bits, scales, zero points, shapes, span sizes), then the data: one validating
// reduction over x (any NaN / Inf?) runs before the first write; if it finds one, a
// second search names the first, and ptq::error is thrown with the caller's output
// untouched, as in the core ("ptq::device::fake_quantize: x(r, c) = nan is not finite").
// dequantize likewise refuses codes above their channel's qmax before writing.
// Thrust's own failures (e.g. a CUDA error) surface as Thrust's exceptions.
//
// Cost: the validating pass reads the input once more (as the core does). On a GPU,
// ptq::gpu::fake_quantize (include/ptq/cuda/quantizer.cuh) can fuse it into one pass.
#pragma once

#include <cstdint>
#include <type_traits>

#include "common.hpp"

namespace ptq {
namespace device {
namespace impl {

// Each op: the per-element function, and (host passes only) the same operations in
// the same order on Eigen arrays, as the core's vector kernels spell them, for a tile
// of one row: bit for bit the per-element result, vectorized by Eigen.
template <class T>
using host_array = Eigen::Array<T, Eigen::Dynamic, 1>;

template <class T>
struct fake_op {
  PTQ_HOST_DEVICE T operator()(T x, const affine_coef<T>& k) const {
    return ptq::detail::dequantize_value(ptq::detail::quantize_value(x, k.inv, k.zp, k.qmax), k.zp, k.scale);
  }
#if !defined(__CUDA_ARCH__)
  void row(const T* x, T* y, index n, const affine_coef<T>& k) const {
    const Eigen::Map<const host_array<T>> in(x, n);
    Eigen::Map<host_array<T>>(y, n) = (((in * k.inv).rint() + k.zp).max(T(0)).min(k.qmax) - k.zp) * k.scale;
  }
#endif
};
template <class T, class Code>
struct quantize_op {
  PTQ_HOST_DEVICE Code operator()(T x, const affine_coef<T>& k) const {
    return static_cast<Code>(ptq::detail::quantize_value(x, k.inv, k.zp, k.qmax));
  }
#if !defined(__CUDA_ARCH__)
  void row(const T* x, Code* y, index n, const affine_coef<T>& k) const {
    const Eigen::Map<const host_array<T>> in(x, n);
    Eigen::Map<host_array<Code>>(y, n) = ((in * k.inv).rint() + k.zp).max(T(0)).min(k.qmax).template cast<Code>();
  }
#endif
};
template <class T, class Code>
struct dequantize_op {
  PTQ_HOST_DEVICE T operator()(Code q, const affine_coef<T>& k) const {
    return ptq::detail::dequantize_value(static_cast<T>(q), k.zp, k.scale);
  }
#if !defined(__CUDA_ARCH__)
  void row(const Code* q, T* y, index n, const affine_coef<T>& k) const {
    for (index j = 0; j < n; ++j) y[j] = (*this)(q[j], k);
  }
#endif
};

// out[i] = op(in[i], coef[(i / cols) % channels]) over all elements (divmod.hpp: no
// hardware division per element).
template <class In, class Out, class Op, class T>
struct element_kernel {
  const In* in;
  Out* out;
  const affine_coef<T>* coef;
  channel_of channel;
  Op op;
  PTQ_HOST_DEVICE void operator()(index i) const { out[i] = op(in[i], coef[channel(i)]); }
};

// The same over one tile of one row, with the channel's coefficients in registers: on
// the host the op's Eigen row form, on a device a plain loop.
template <class In, class Out, class Op, class T>
struct tile_kernel {
  const In* in;
  Out* out;
  const affine_coef<T>* coef;
  index channels;
  tiling t;
  Op op;
  PTQ_HOST_DEVICE void operator()(index k) const {
    const index r = k / t.per_row, j0 = (k % t.per_row) * t.len;
    const index n = (j0 + t.len < t.cols ? j0 + t.len : t.cols) - j0;
    const affine_coef<T> c = coef[r % channels];
    const In* x = in + r * t.cols + j0;
    Out* y = out + r * t.cols + j0;
#if defined(__CUDA_ARCH__)
    for (index j = 0; j < n; ++j) y[j] = op(x[j], c);
#else
    op.row(x, y, n, c);
#endif
  }
};

template <split S, class Policy, class In, class Out, class Op, class T>
void apply(Policy& policy, const In* in, Out* out, std::size_t size, index cols, const affine_coef<T>* coef,
           index channels, Op op) {
  if constexpr (S == split::elements) {
    thrust::for_each(policy, thrust::counting_iterator<index>(0),
                     thrust::counting_iterator<index>(static_cast<index>(size)),
                     element_kernel<In, Out, Op, T>{in, out, coef, channel_of(size, cols, channels), op});
  } else {
    const tiling t = tiling::of(static_cast<index>(size) / cols, cols);
    thrust::for_each(policy, thrust::counting_iterator<index>(0), thrust::counting_iterator<index>(t.count()),
                     tile_kernel<In, Out, Op, T>{in, out, coef, channels, t, op});
  }
}

template <class In, class Out>
void check_out(span<In> in, span<Out> out, const char* where, const char* in_name, const char* out_name) {
  ptq::detail::require(out.size() == in.size(), where, out_name, ".size() = ", out.size(), " but ", in_name,
                       ".size() = ", in.size());
}

template <class T, class Code>
struct code_too_big {
  const affine_coef<T>* coef;
  channel_of channel;
  PTQ_HOST_DEVICE bool operator()(thrust::tuple<index, Code> iq) const {
    return static_cast<T>(thrust::get<1>(iq)) > coef[channel(thrust::get<0>(iq))].qmax;
  }
};

template <split S, class Policy, class T>
void fake_quantize(Policy& policy, span<const T> x, index cols, const device_quant_params<T>& p, span<T> out,
                   const char* where) {
  check_view(x.size(), cols, p.channels(), where, "x");
  check_out(x, out, where, "x", "out");
  check_finite(policy, x, cols, where, "x");
  apply<S>(policy, x.data(), out.data(), x.size(), cols, p.data(), p.channels(), fake_op<T>{});
}

template <split S, class Code, class Policy, class T>
void quantize(Policy& policy, span<const T> x, index cols, const device_quant_params<T>& p, span<Code> codes) {
  static constexpr const char* where = "ptq::device::quantize";
  ptq::detail::check_params(p.host(), ptq::detail::code_bits<Code>(), where);
  check_view(x.size(), cols, p.channels(), where, "x");
  check_out(x, codes, where, "x", "codes");
  check_finite(policy, x, cols, where, "x");
  apply<S>(policy, x.data(), codes.data(), x.size(), cols, p.data(), p.channels(), quantize_op<T, Code>{});
}

template <split S, class Policy, class Code, class T>
void dequantize(Policy& policy, span<const Code> codes, index cols, const device_quant_params<T>& p, span<T> out) {
  static constexpr const char* where = "ptq::device::dequantize";
  ptq::detail::check_params(p.host(), ptq::detail::code_bits<Code>(), where);
  check_view(codes.size(), cols, p.channels(), where, "codes");
  check_out(codes, out, where, "codes", "out");
  const auto first = thrust::make_zip_iterator(thrust::make_tuple(thrust::counting_iterator<index>(0), codes.data()));
  const auto last = first + static_cast<index>(codes.size());
  const auto bad = thrust::find_if(policy, first, last, code_too_big<T, Code>{p.data(), channel_of(codes.size(), cols, p.channels())});
  if (bad != last) {
    const index i = bad - first, c = (i / cols) % p.channels();
    ptq::detail::fail(where, "codes(", i / cols, ", ", i % cols, ") = ",
                      static_cast<unsigned>(read_one(policy, codes.data() + i)), " is above qmax = ",
                      p.host().qmax(c), " of channel ", c, " (", p.host().bits[c], " bits)");
  }
  apply<S>(policy, codes.data(), out.data(), codes.size(), cols, p.data(), p.channels(), dequantize_op<T, Code>{});
}

}  // namespace impl

// The split (common.hpp) follows the policy: impl::default_split<Policy>(). The tests
// call impl::fake_quantize<split::elements / tiles> directly to check both.

// out = dequantize(quantize(x)) in T. out may be x (in place); partial overlap is not allowed.
template <class Policy, class T>
void fake_quantize(Policy&& policy, impl::cspan<T> x, index cols, const device_quant_params<T>& p, span<T> out) {
  impl::fake_quantize<impl::default_split<std::decay_t<Policy>>()>(policy, x, cols, p, out,
                                                                     "ptq::device::fake_quantize");
}
template <class Policy, class T>
void fake_quantize(Policy&& policy, impl::cspan<T> x, index cols, const quant_params<T>& p, span<T> out) {
  fake_quantize(policy, x, cols, device_quant_params<T>(p), out);
}

// x = dequantize(quantize(x)).
template <class Policy, class T>
void fake_quantize_in_place(Policy&& policy, span<T> x, index cols, const device_quant_params<T>& p) {
  impl::fake_quantize<impl::default_split<std::decay_t<Policy>>()>(policy, span<const T>(x.data(), x.size()), cols,
                                                                     p, x, "ptq::device::fake_quantize_in_place");
}
template <class Policy, class T>
void fake_quantize_in_place(Policy&& policy, span<T> x, index cols, const quant_params<T>& p) {
  fake_quantize_in_place(policy, x, cols, device_quant_params<T>(p));
}

// codes = clamp(nearbyint(x * inv) + zero_point, 0, qmax); Code = uint8_t or uint16_t,
// wide enough for every channel's bits.
template <class Code, class Policy, class T>
void quantize(Policy&& policy, impl::cspan<T> x, index cols, const device_quant_params<T>& p, span<Code> codes) {
  impl::quantize<impl::default_split<std::decay_t<Policy>>(), Code>(policy, x, cols, p, codes);
}
template <class Code, class Policy, class T>
void quantize(Policy&& policy, impl::cspan<T> x, index cols, const quant_params<T>& p, span<Code> codes) {
  ptq::detail::check_params(p, ptq::detail::code_bits<Code>(), "ptq::device::quantize");
  quantize<Code>(policy, x, cols, device_quant_params<T>(p), codes);
}

// out = (codes - zero_point) * scale. Codes above their channel's qmax are refused.
// codes: span<const Code> (or span<Code>), Code = uint8_t or uint16_t.
template <class Policy, class Code, class T>
void dequantize(Policy&& policy, span<const Code> codes, index cols, const device_quant_params<T>& p, span<T> out) {
  impl::dequantize<impl::default_split<std::decay_t<Policy>>()>(policy, codes, cols, p, out);
}
template <class Policy, class Code, class T>
void dequantize(Policy&& policy, span<const Code> codes, index cols, const quant_params<T>& p, span<T> out) {
  ptq::detail::check_params(p, ptq::detail::code_bits<Code>(), "ptq::device::dequantize");
  dequantize(policy, codes, cols, device_quant_params<T>(p), out);
}
template <class Policy, class Code, class P, class T, std::enable_if_t<!std::is_const<Code>::value, int> = 0>
void dequantize(Policy&& policy, span<Code> codes, index cols, const P& p, span<T> out) {
  dequantize(policy, span<const Code>(codes.data(), codes.size()), cols, p, out);
}

}  // namespace device
}  // namespace ptq
