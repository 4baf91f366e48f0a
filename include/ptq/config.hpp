// config.hpp: version, the host/device function macro and the basic index and matrix types.
#pragma once

#include <cstdint>

#define PTQ_VERSION_MAJOR 0
#define PTQ_VERSION_MINOR 1
#define PTQ_VERSION_PATCH 0

// Functors shared by the CPU, Thrust and CUDA layers are marked PTQ_HOST_DEVICE.
// Under nvcc this is __host__ __device__; under a host compiler it is empty.
#if defined(__CUDACC__)
#define PTQ_HOST_DEVICE __host__ __device__
#else
#define PTQ_HOST_DEVICE
#endif

namespace ptq {
using index = std::ptrdiff_t;  // same as Eigen::Index
}  // namespace ptq
