// test_layout.cpp: channel_layout decomposition and the zero-copy row views.
#include <doctest/doctest.h>

#include <numeric>
#include <ptq/layout.hpp>
#include <vector>

// Everything of this file in its own namespace: the test binary is a unity build.
namespace ptq_test_layout {

TEST_CASE("layout: outer x channels x inner of a C-order shape") {
  const auto a = ptq::channel_layout::of({2, 3, 4, 5}, 1);  // NCHW, channel axis 1
  CHECK(a.outer == 2);
  CHECK(a.channels == 3);
  CHECK(a.inner == 20);
  CHECK(a.rows() == 6);
  CHECK(a.size() == 120);
  const auto w = ptq::channel_layout::of({8, 3, 3, 3}, 0);  // KCRS, channel axis 0
  CHECK(w.outer == 1);
  CHECK(w.channels == 8);
  CHECK(w.inner == 27);
  const auto last = ptq::channel_layout::of({2, 3, 4}, 2);
  CHECK(last.outer == 6);
  CHECK(last.channels == 4);
  CHECK(last.inner == 1);
}

TEST_CASE("layout: row r of the view is channel r % C of the NCHW tensor, without a copy") {
  const ptq::index N = 2, C = 3, H = 2, W = 5;
  std::vector<float> t(N * C * H * W);
  std::iota(t.begin(), t.end(), 0.0f);
  const auto l = ptq::channel_layout::of({N, C, H, W}, 1);
  auto rows = ptq::channel_rows(t.data(), l);
  CHECK(rows.data() == t.data());
  for (ptq::index n = 0; n < N; ++n)
    for (ptq::index c = 0; c < C; ++c)
      for (ptq::index hw = 0; hw < H * W; ++hw)
        CHECK(rows(n * C + c, hw) == t[static_cast<std::size_t>(((n * C + c) * H * W) + hw)]);
  rows(1, 0) = -1.0f;  // writes go to the caller's memory
  CHECK(t[static_cast<std::size_t>(H * W)] == -1.0f);
}

TEST_CASE("layout: bad shapes and axes throw ptq::error naming the argument") {
  CHECK_THROWS_WITH_AS(ptq::channel_layout::of({2, 3}, 2), doctest::Contains("axis = 2"), ptq::error);
  CHECK_THROWS_WITH_AS(ptq::channel_layout::of({2, 3}, -1), doctest::Contains("axis = -1"), ptq::error);
  CHECK_THROWS_WITH_AS(ptq::channel_layout::of({2, -3}, 0), doctest::Contains("dims[1] = -3"), ptq::error);
  CHECK_THROWS_WITH_AS(ptq::channel_layout::of(std::vector<ptq::index>{}, 0), doctest::Contains("rank 0"),
                       ptq::error);
  CHECK_THROWS_WITH_AS(ptq::detail::check_channels(7, 4, 3, "f"), doctest::Contains("rows = 7"), ptq::error);
  CHECK_THROWS_WITH_AS(ptq::detail::check_channels(0, 4, 1, "f"), doctest::Contains("empty"), ptq::error);
  CHECK_THROWS_WITH_AS(ptq::detail::check_channels(4, 4, 0, "f"), doctest::Contains("channels = 0"), ptq::error);
}

}  // namespace ptq_test_layout
