// layout.hpp: per-channel row views of NCHW / KCRS tensors over the caller's memory.
//
// Every per-channel algorithm in ptq sees a tensor as a RowMajor matrix of
// `outer * channels` rows and `inner` columns, where row r belongs to channel
// r % channels. A tensor of shape d[0..rank) with the channel on axis `axis` has
//   outer = d[0] * ... * d[axis-1],  channels = d[axis],  inner = d[axis+1] * ... * d[rank-1].
// So an NCHW activation (axis 1) is an (N*C) x (H*W) map with C channels, and
// KCRS conv weights (axis 0) are a K x (C*R*S) map with K channels: exactly the
// memory the caller already has, never a copy in another layout. Per-tensor
// granularity is the same view with channels = 1.
#pragma once

#include <Eigen/Core>
#include <initializer_list>
#include <limits>
#include <vector>

#include "config.hpp"
#include "error.hpp"

namespace ptq {

template <class T>
using row_matrix = Eigen::Matrix<T, Eigen::Dynamic, Eigen::Dynamic, Eigen::RowMajor>;
template <class T>
using row_map = Eigen::Map<row_matrix<T>>;
template <class T>
using const_row_map = Eigen::Map<const row_matrix<T>>;
template <class T>
using vector = Eigen::Matrix<T, Eigen::Dynamic, 1>;

enum class granularity { per_tensor, per_channel };

// outer x channels x inner decomposition of a dense C-order tensor.
struct channel_layout {
  index outer = 1;
  index channels = 1;
  index inner = 1;

  index rows() const { return outer * channels; }
  index size() const { return outer * channels * inner; }

  // The layout of a C-order tensor of shape `dims` with its channels on `axis`.
  static channel_layout of(const std::vector<index>& dims, int axis) {
    constexpr const char* where = "ptq::channel_layout::of";
    detail::require(!dims.empty(), where, "the shape is empty (rank 0)");
    detail::require(axis >= 0 && axis < static_cast<int>(dims.size()), where, "axis = ", axis,
                    " is outside [0, ", dims.size(), ") for a rank-", dims.size(), " tensor");
    channel_layout l;
    // The product of the nonzero dims must fit ptq::index: then so do outer, channels,
    // inner, rows() and size(), whatever the zeros.
    index nonzero = 1;
    for (std::size_t i = 0; i < dims.size(); ++i) {
      detail::require(dims[i] >= 0, where, "dims[", i, "] = ", dims[i], " is negative");
      if (dims[i] == 0) continue;
      if (dims[i] > std::numeric_limits<index>::max() / nonzero)
        detail::fail(where, "dims[", i, "] = ", dims[i], ": the product of the dims overflows ptq::index");
      nonzero *= dims[i];
    }
    for (std::size_t i = 0; i < dims.size(); ++i) {
      index& part = static_cast<int>(i) < axis ? l.outer : static_cast<int>(i) == axis ? l.channels : l.inner;
      part *= dims[i];
    }
    return l;
  }
  static channel_layout of(std::initializer_list<index> dims, int axis) {
    return of(std::vector<index>(dims), axis);
  }
};

// Row view of a tensor in `layout`: (outer*channels) x inner, RowMajor, no copy.
template <class T>
row_map<T> channel_rows(T* data, const channel_layout& layout) {
  return row_map<T>(data, layout.rows(), layout.inner);
}
template <class T>
const_row_map<T> channel_rows(const T* data, const channel_layout& layout) {
  return const_row_map<T>(data, layout.rows(), layout.inner);
}

namespace detail {
// Checks that a row view with `rows` rows splits into `channels` channels.
inline void check_channels(index rows, index cols, index channels, const char* where) {
  require(channels >= 1, where, "channels = ", channels, " must be at least 1");
  require(rows > 0 && cols > 0, where, "the tensor is empty (", rows, " x ", cols, ")");
  require(rows % channels == 0, where, "rows = ", rows, " is not a multiple of channels = ", channels);
}
}  // namespace detail

}  // namespace ptq
