// thrust.hpp: ptq's Thrust layer (ptq::device): quantizers, statistics, ACIQ ranges and bias correction on any Thrust backend.
//
// Include this (not ptq.hpp) where Thrust is available: under nvcc (CUDA backend) or
// under a host compiler with -I<cccl include dir> and THRUST_DEVICE_SYSTEM set to
// THRUST_DEVICE_SYSTEM_OMP (-fopenmp) or THRUST_DEVICE_SYSTEM_CPP. CMake: link
// ptq::thrust_omp, ptq::thrust_cpp or ptq::cuda. See include/ptq/thrust/common.hpp.
#pragma once

#include "thrust/aciq.hpp"
#include "thrust/bias_corrector.hpp"
#include "thrust/common.hpp"
#include "thrust/quantizer.hpp"
#include "thrust/statistics.hpp"
