// int_test_util.hpp: configurations shared by the integer-engine tests.
#pragma once

#include "resnet50/options.hpp"

namespace ptq_test {

// W<w>A<a>, min/max (full = false) or the paper's full method with variance correction
// (bit allocation only with per-channel activations).
inline ptq_example::quant_config int_config(int w, int a, bool full, bool per_tensor) {
  ptq_example::quant_config c;
  c.name = "test";
  c.wbits = w;
  c.abits = a;
  if (full) {
    c.clip = ptq_example::clip_mode::laplace;
    c.bit_alloc_w = c.bit_alloc_a = !per_tensor;
    c.bias_corr_w = true;
    c.var_corr_w = true;
  }
  c.per_tensor_a = per_tensor;
  return c;
}

}  // namespace ptq_test
