// test_thrust_lanes.cpp: both work splits of the Thrust statistics reduction (CUDA's lanes, the host's row tiles) on the OMP backend against a naive double loop.
#include <doctest/doctest.h>

#include <thrust/execution_policy.h>

#include <cmath>
#include <random>
#include <vector>

#include "ptq/thrust/statistics.hpp"
#include "device_test_util.hpp"

// Everything of this file in its own namespace: the test binary is a unity build.
namespace ptq_test_thrust_lanes {

namespace {

using namespace device_test;
using ptq::device::channel_sums;
using ptq::device::impl::reduction;
using ptq::device::impl::split;

// Naive reference: channel c's values are rows c, c + C, ... of the rows x cols view.
template <class T>
channel_sums naive(const std::vector<T>& x, const shape& s, reduction r, const std::vector<double>& centre) {
  const auto C = static_cast<std::size_t>(s.channels);
  channel_sums out;
  out.count = s.outer * s.inner;
  out.s1.assign(C, 0.0), out.s2.assign(C, 0.0), out.lo.assign(C, HUGE_VAL), out.hi.assign(C, -HUGE_VAL);
  for (idx o = 0; o < s.outer; ++o)
    for (idx c = 0; c < s.channels; ++c)
      for (idx j = 0; j < s.inner; ++j) {
        const double v = static_cast<double>(x[static_cast<std::size_t>((o * s.channels + c) * s.inner + j)]);
        const auto u = static_cast<std::size_t>(c);
        if (r == reduction::moments) {
          out.s1[u] += v;
        } else {
          out.s1[u] += std::abs(v - centre[u]);
          if (r == reduction::spread) out.s2[u] += (v - centre[u]) * (v - centre[u]);
        }
        if (r != reduction::spread) out.lo[u] = std::min(out.lo[u], v), out.hi[u] = std::max(out.hi[u], v);
      }
  return out;
}

void check_sums(const channel_sums& got, const channel_sums& want) {
  CHECK(got.count == want.count);
  REQUIRE(got.s1.size() == want.s1.size());
  for (std::size_t c = 0; c < want.s1.size(); ++c) {
    CAPTURE(c);
    CHECK(got.s1[c] == doctest::Approx(want.s1[c]).epsilon(1e-9).scale(1.0));
    CHECK(got.s2[c] == doctest::Approx(want.s2[c]).epsilon(1e-9).scale(1.0));
    CHECK(got.lo[c] == want.lo[c]);  // exact (or +inf, -inf when not computed)
    CHECK(got.hi[c] == want.hi[c]);
  }
}

template <split S, reduction R, class T>
void run_one(const std::vector<T>& x, const shape& s, const std::vector<double>& centre) {
  const thrust::device_vector<double> d_centre(centre.begin(), centre.end());
  const channel_sums got = ptq::device::impl::reduce_channels<R, S>(
      thrust::omp::par, span<const T>(x.data(), x.size()), s.inner, s.channels,
      R == reduction::moments ? nullptr : thrust::raw_pointer_cast(d_centre.data()));
  check_sums(got, naive(x, s, R, centre));
}

}  // namespace

TEST_CASE_TEMPLATE("Thrust statistics: CUDA's lane split and the host's tile split equal a naive loop", T, float,
                   double) {
  // Odd sizes; rows shorter and longer than a warp and than a tile; one and many channels;
  // channels with fewer values than lanes.
  const shape shapes[] = {{1, 1, 1},   {1, 1, 7},    {1, 7, 1},    {7, 1, 1},     {3, 31, 11},  {1, 1, 1023},
                          {5, 3, 49},  {2, 64, 196}, {7, 163, 919}, {1, 2, 40000}, {1, 1, 1048579}};
  std::mt19937_64 g(903);
  for (const shape& s : shapes) {
    CAPTURE(s.outer);
    CAPTURE(s.channels);
    CAPTURE(s.inner);
    const std::vector<T> x = make_data<T>(g, s.size());
    std::vector<double> centre(static_cast<std::size_t>(s.channels));
    for (double& m : centre) m = std::uniform_real_distribution<double>(-1.0, 1.0)(g);
    run_one<split::elements, reduction::moments>(x, s, centre);
    run_one<split::elements, reduction::spread>(x, s, centre);
    run_one<split::elements, reduction::deviation>(x, s, centre);
    run_one<split::tiles, reduction::moments>(x, s, centre);
    run_one<split::tiles, reduction::spread>(x, s, centre);
    run_one<split::tiles, reduction::deviation>(x, s, centre);
  }
}

TEST_CASE("Thrust statistics: lanes per channel") {
  using ptq::device::impl::lanes_for;
  CHECK(lanes_for(1, 1) == 1);
  CHECK(lanes_for(7, 1) == 1);              // at least 8 values per lane
  CHECK(lanes_for(1 << 26, 64) == 2048);    // 2^17 lanes in all, whole warps
  CHECK(lanes_for(1 << 26, 3) % 32 == 0);
  CHECK(lanes_for(1 << 26, 1 << 20) == 1);  // more channels than 2^17: one lane each
  for (ptq::index per : {1, 2, 9, 100, 4097, 1 << 20})
    for (ptq::index c : {1, 3, 64, 2048, 100000}) {
      const ptq::index l = lanes_for(per, c);
      CHECK(l >= 1);
      CHECK(l <= per);
    }
}

}  // namespace ptq_test_thrust_lanes
