// stats_checks.hpp: the comparison of two channel_stats bit for bit, shared by the core and device tests.
#pragma once

#include <doctest/doctest.h>

#include "ptq/calibration.hpp"

// Bit for bit the same statistics (an accumulator left unchanged by a refused batch, or
// two ways of computing the same thing that must agree exactly).
inline void check_identical_stats(const ptq::channel_stats& a, const ptq::channel_stats& b) {
  CHECK(a.count == b.count);
  CHECK(a.min == b.min);
  CHECK(a.max == b.max);
  CHECK(a.mean == b.mean);
  CHECK(a.std == b.std);
  CHECK(a.b == b.b);
}
