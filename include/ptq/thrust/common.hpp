// common.hpp: spans, per-channel device coefficients and the work split shared by ptq's Thrust layer.
//
// The layers (README "GPU"): scalar formulas (gemmlowp_quantizer.hpp's
// detail::quantize_value / dequantize_value, PTQ_HOST_DEVICE) -> Eigen/CPU core ->
// this Thrust layer, ptq::device (any backend: CUDA under nvcc, OMP or CPP under g++)
// -> CUB kernels, ptq::gpu (include/ptq/cuda/*.cuh, nvcc only).
//
// Every algorithm of ptq::device takes a Thrust execution policy first (thrust::device,
// thrust::cuda::par.on(stream), thrust::omp::par, thrust::cpp::par, ...) and its tensors
// as ::cuda::std::span over memory that policy can access, seen exactly as the core
// sees them (layout.hpp): a RowMajor (rows x cols) view, row r belonging to channel
// r % channels. Per-channel coefficients, temporaries and partial sums live in
// thrust::device_vector, i.e. in THRUST_DEVICE_SYSTEM's memory: the policy must be one
// that reaches it (its system is THRUST_DEVICE_SYSTEM, or a host system when
// THRUST_DEVICE_SYSTEM is OMP, CPP or TBB). The core's headers never include this.
//
// Work split. On a CUDA policy an element-wise op is one Thrust transform over all
// elements (coalesced; channel = (i / cols) % channels by divmod.hpp's multiply and
// shift). On a host policy (OMP, CPP) the same op runs over tiles of up to `host_tile`
// contiguous elements of one row, so that each thread runs a plain loop the compiler
// vectorizes; the per-element formula is the same function either way, so results are
// identical bit for bit (the tests run both splits on the OMP backend).
#pragma once

#include <thrust/copy.h>
#include <thrust/device_vector.h>
#include <thrust/execution_policy.h>
#include <thrust/find.h>
#include <thrust/for_each.h>
#include <thrust/host_vector.h>
#include <thrust/iterator/counting_iterator.h>
#include <thrust/logical.h>
#include <thrust/transform.h>
#include <thrust/transform_reduce.h>

#include <cuda/std/span>

#include <cmath>
#include <cstdint>
#include <type_traits>
#include <vector>

#include "../config.hpp"
#include "../error.hpp"
#include "../gemmlowp_quantizer.hpp"
#include "../layout.hpp"
#include "../types.hpp"
#include "divmod.hpp"

#if defined(__CUDACC__)
#include <thrust/system/cuda/execution_policy.h>
#endif

namespace ptq {
namespace device {

template <class T>
using span = ::cuda::std::span<T>;

// One channel's affine coefficients in T, computed on the host by the core
// (detail::affine_coeffs: inv = 1 / scale or 0 for a constant channel, zp, qmax, scale),
// so that the device applies exactly the core's per-element arithmetic.
template <class T>
struct affine_coef {
  T inv, zp, qmax, scale;
};

// The core's coefficients of every channel of p, in channel order (host vector).
template <class T>
std::vector<affine_coef<T>> make_coefs(const quant_params<T>& p) {
  const ptq::detail::affine_coeffs<T> k(p);
  std::vector<affine_coef<T>> out(static_cast<std::size_t>(p.channels()));
  for (index c = 0; c < p.channels(); ++c) out[static_cast<std::size_t>(c)] = {k.inv[c], k.zp[c], k.qmax[c], k.scale[c]};
  return out;
}

// quant_params on the device: validated once on the host (the core's checks), then
// uploaded. Reuse one for many calls to save the upload.
template <class T>
class device_quant_params {
 public:
  // code_width: the widest code the params will be used with (16 for float outputs).
  explicit device_quant_params(const quant_params<T>& p, int code_width = quant_params<T>::max_bits)
      : host_(checked(p, code_width)) {
    const std::vector<affine_coef<T>> h = make_coefs(p);
    coefs_.assign(h.begin(), h.end());
  }

  index channels() const { return host_.channels(); }
  const quant_params<T>& host() const { return host_; }
  const affine_coef<T>* data() const { return thrust::raw_pointer_cast(coefs_.data()); }

 private:
  static const quant_params<T>& checked(const quant_params<T>& p, int code_width) {
    ptq::detail::check_params(p, code_width, "ptq::device::device_quant_params");
    return p;
  }
  quant_params<T> host_;
  thrust::device_vector<affine_coef<T>> coefs_;
};

namespace impl {

// Elements per host tile: long enough to amortize the dispatch, short enough to
// split one long row (per tensor, or a large H*W) across threads.
constexpr index host_tile = 16384;

template <class X>
struct identity {
  using type = X;
};
// A non-deduced span parameter: span<float> converts to span<const float>.
template <class X>
using cspan = typename identity<span<const X>>::type;

// A span argument of any constness: X = span<T> or span<const T>.
template <class X>
using elem_t = std::remove_const_t<typename X::element_type>;
template <class X>
span<const elem_t<X>> as_const(X x) {
  return span<const elem_t<X>>(x.data(), x.size());
}

// Policy as deduced from an argument: thrust::device and thrust::cuda::par are const
// globals, so strip cv and references before looking for Thrust's CUDA base.
template <class Policy>
constexpr bool is_cuda_policy() {
#if defined(__CUDACC__)
  using P = std::remove_cv_t<std::remove_reference_t<Policy>>;
  return std::is_base_of<thrust::cuda_cub::execution_policy<P>, P>::value;
#else
  return false;
#endif
}

// Which work split an element-wise op uses (see the top of this file).
enum class split { elements, tiles };
template <class Policy>
constexpr split default_split() {
  return is_cuda_policy<Policy>() ? split::elements : split::tiles;
}

// The tiles of a rows x cols view: tile k is row k / per_row, columns
// [(k % per_row) * len, min(cols, ... + len)).
struct tiling {
  index rows, cols, per_row, len;
  PTQ_HOST_DEVICE index count() const { return rows * per_row; }
  static tiling of(index rows, index cols, index len = host_tile) {
    const index per_row = (cols + len - 1) / len;
    return {rows, cols, per_row, len};
  }
};

// Shape checks of a row view with `size` elements and `cols` columns: returns rows.
inline index check_view(std::size_t size, index cols, index channels, const char* where, const char* name) {
  ptq::detail::require(cols >= 1, where, "cols = ", cols, " must be at least 1");
  ptq::detail::require(size > 0, where, name, " is empty");
  ptq::detail::require(static_cast<index>(size) % cols == 0, where, name, ".size() = ", size, " is not a multiple of cols = ", cols);
  const index rows = static_cast<index>(size) / cols;
  ptq::detail::check_channels(rows, cols, channels, where);
  return rows;
}

// One value from memory the policy reaches (for error messages).
template <class Policy, class T>
T read_one(Policy& policy, const T* p) {
  thrust::device_vector<T> v(1);
  thrust::copy_n(policy, p, 1, v.begin());
  return v[0];
}

template <class T>
struct is_not_finite {
  PTQ_HOST_DEVICE bool operator()(T v) const { return !(v * T(0) == T(0)); }
};

// Any non-finite value in a tile: a branch-free flag per element (vectorizable).
template <class T>
struct tile_not_finite {
  const T* x;
  tiling t;
  PTQ_HOST_DEVICE bool operator()(index k) const {
    const index r = k / t.per_row, j0 = (k % t.per_row) * t.len;
    const index j1 = j0 + t.len < t.cols ? j0 + t.len : t.cols;
    const T* p = x + r * t.cols;
    unsigned bad = 0;
    for (index j = j0; j < j1; ++j) bad |= static_cast<unsigned>(!(p[j] * T(0) == T(0)));
    return bad != 0;
  }
};

// The core's check: refuse NaN / Inf before anything is written, naming the first one
// as "name(r, c) = v is not finite". One validating reduction over the data.
template <class Policy, class T>
void check_finite(Policy& policy, span<const T> x, index cols, const char* where, const char* name) {
  bool bad;
  if constexpr (default_split<Policy>() == split::elements) {
    bad = thrust::any_of(policy, x.data(), x.data() + x.size(), is_not_finite<T>{});
  } else {
    const tiling t = tiling::of(static_cast<index>(x.size()) / cols, cols);
    bad = thrust::any_of(policy, thrust::counting_iterator<index>(0), thrust::counting_iterator<index>(t.count()),
                         tile_not_finite<T>{x.data(), t});
  }
  if (!bad) return;
  const T* first = thrust::find_if(policy, x.data(), x.data() + x.size(), is_not_finite<T>{});
  const index i = first - x.data();
  ptq::detail::fail(where, name, "(", i / cols, ", ", i % cols, ") = ", read_one(policy, first), " is not finite");
}

}  // namespace impl
}  // namespace device
}  // namespace ptq
