// resnet.hpp: the ResNet example's network in one include: the model and its FP32 forward.
//
// The parts, by job:
//   threads.hpp       the worker thread pool (detail::parallel_for, detail::default_threads)
//   model.hpp         conv_layer, linear_layer, resnet_block, the hooks' types, class resnet:
//                     the architecture, loading from .npz, BatchNorm folding
//   float_conv.hpp    the FP32 conv (im2col + GEMM + epilogue: conv2d) and its twin conv2d_ref
//   float_engine.hpp  resnet::forward (hooks, threading) and its twin resnet::forward_ref
#pragma once

#include "float_engine.hpp"
#include "model.hpp"
