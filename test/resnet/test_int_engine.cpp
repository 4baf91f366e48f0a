// test_int_engine.cpp: the integer ResNet engine against its plain-loop twin (every code) and against its float simulation.
#include <doctest/doctest.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <random>
#include <string>
#include <vector>

#include "resnet50/int_engine.hpp"
#include "resnet50/int_model.hpp"
#include "int_test_util.hpp"
#include "synthetic.hpp"

// Everything of this file in its own namespace: the test binary is a unity build.
namespace ptq_test_int_engine {

namespace {

using matrix = ptq::row_matrix<float>;

struct captured {
  std::vector<std::vector<std::uint8_t>> conv, block;
};

ptq_example::int_hook capture(captured& c) {
  return [&c](int kind, ptq::index idx, const std::uint8_t* codes, ptq::index pixels, ptq::index channels) {
    auto& v = kind == 0 ? c.conv : c.block;
    if (static_cast<ptq::index>(v.size()) <= idx) v.resize(static_cast<std::size_t>(idx + 1));
    v[static_cast<std::size_t>(idx)].assign(codes, codes + pixels * channels);
  };
}

using ptq_test::int_config;

}  // namespace

TEST_CASE("int engine: every conv and block output equals the plain-loop twin, code for code - logits follow the simulation") {
  struct net_case {
    bool bottleneck;
    std::vector<int> layers;
    ptq::index width, in_channels, classes, stem, n, h, w;
  };
  const net_case cases[] = {
      {true, {1, 2, 1}, 8, 1, 10, 3, 3, 13, 11},   // Bottleneck, small-image stem, odd sizes
      {false, {2, 1}, 8, 3, 7, 7, 2, 23, 19},      // BasicBlock, ImageNet stem (max-pool)
      {false, {1, 1, 1, 1}, 16, 1, 10, 3, 5, 28, 28},
  };
  std::mt19937_64 rng(3);
  std::normal_distribution<float> g(0.0f, 1.0f);
  int zero_bit_channels = 0;
  for (const net_case& nc : cases) {
    ptq_example::resnet net = ptq_example::resnet::from_state_dict(
        ptq_test::synthetic_state_dict(nc.bottleneck, nc.layers, nc.width, nc.in_channels, nc.classes, nc.stem, 5));
    // Every 5th output channel nearly silent: bit allocation gives such channels 0 bits.
    for (auto& L : net.convs())
      for (ptq::index k = 2; k < L.K; k += 5) {
        L.weight.row(k) *= 1e-4f;
        L.bias[k] *= 1e-4f;
      }
    const ptq::index calib_n = 16;
    const matrix calib = matrix::NullaryExpr(calib_n * nc.in_channels, nc.h * nc.w, [&] { return g(rng); });
    const ptq_example::image_set cs{calib.data(), calib_n, nc.in_channels, nc.h, nc.w};
    ptq_example::calibration_options co;
    co.per_tensor = true;
    const ptq_example::calibration cal = ptq_example::calibrate(net, cs, co);
    const ptq_example::int_calibration ical = ptq_example::calibrate_int(net, cs, 8);
    const matrix x = matrix::NullaryExpr(nc.n * nc.in_channels, nc.h * nc.w, [&] { return g(rng); });
    for (const auto& cfg : {int_config(8, 8, false, false), int_config(4, 4, true, false), int_config(4, 4, true, true),
                            int_config(2, 3, true, false)}) {
      CAPTURE(nc.h);
      CAPTURE(cfg.wbits);
      CAPTURE(cfg.abits);
      CAPTURE(cfg.per_tensor_a);
      const ptq_example::int_model m = ptq_example::build_int_model(net, cal, ical, cfg);
      for (const auto& L : m.convs)
        for (ptq::index k = 0; k < L.K; ++k) zero_bit_channels += L.wbits[k] == 0;
      for (const auto& a : m.act)
        for (ptq::index c = 0; c < a.channels(); ++c) zero_bit_channels += a.bits[c] == 0;
      captured ref, got;
      const matrix lr = ptq_example::int_forward_ref(m, x, nc.h, nc.w, capture(ref));
      for (int threads : {1, 2, 3}) {
        CAPTURE(threads);
        ptq_example::int_engine e(m, threads);
        const matrix le = e.forward(x, nc.h, nc.w, capture(got));
        REQUIRE(got.conv.size() == ref.conv.size());
        REQUIRE(got.block.size() == ref.block.size());
        for (std::size_t i = 0; i < ref.conv.size(); ++i) {
          CAPTURE(i);
          CHECK(got.conv[i] == ref.conv[i]);
        }
        for (std::size_t b = 0; b < ref.block.size(); ++b) {
          CAPTURE(b);
          CHECK(got.block[b] == ref.block[b]);
        }
        CHECK((le - lr).cwiseAbs().maxCoeff() == 0.0f);
        // Images through the network two at a time (the last chunk short), each split of the
        // work over the threads, and the automatic choice: the same logits.
        using split = ptq_example::int_engine::split;
        for (const split sp : {split::layers, split::images, split::automatic})
          for (const ptq::index chunk : {0, 1, 2}) {
            CAPTURE(static_cast<int>(sp));
            CAPTURE(chunk);
            const ptq_example::int_engine chunked(m, threads, chunk, sp);
            if (sp == split::images && threads > 1) CHECK(chunked.images_chunk(nc.n, nc.h, nc.w, threads) >= 1);
            if (sp == split::layers) CHECK(chunked.images_chunk(nc.n, nc.h, nc.w, threads) == 0);
            CHECK((chunked.forward(x, nc.h, nc.w) - lr).cwiseAbs().maxCoeff() == 0.0f);
          }
      }
      // The float simulation of the same scheme: equal up to float rounding and rare one-code
      // differences where a value sits on a rounding boundary.
      const ptq_example::resnet sim = ptq_example::simulation(net, m);
      const matrix ls = ptq_example::simulate(sim, m, x, nc.h, nc.w);
      const double scale = std::max(1e-6, static_cast<double>(lr.cwiseAbs().maxCoeff()));
      CHECK((ls - lr).cwiseAbs().maxCoeff() / scale <= 5e-3);
    }
  }
  CHECK(zero_bit_channels > 0);  // 0-bit channels (bit allocation at 2 and 3 bits) were exercised
}

TEST_CASE("int engine: the conv output stage kernel equals ptq::requantize_ref at int32 extremes, ReLU clamps included") {
  // conv_stage's paths (block path: kn % 16 == 0 or rows not back to back; flat path: rows back
  // to back) against fine = (acc << F) - E rowsum + B in int64, then requantize_ref. Channels with
  // F = E = B = 0 carry the accumulator itself as fine: every int32 extreme and the products
  // small negative
  // values (where the ReLU-clamped lanes skip the rounding adjustment of negative products).
  std::mt19937_64 g(5);
  std::uniform_real_distribution<double> u01(0.0, 1.0);
  for (const ptq::index kn : {12, 16, 20, 24, 48}) {
    for (const int relu : {0, 1, 2}) {  // no channel, every channel, some channels clamped at the zero point
      ptq_example::int_conv L;
      L.name = "stage";
      L.K = kn;
      L.C = 1, L.R = 1, L.S = 1;
      for (ptq::index k = 0; k < kn; ++k) {
        const bool plain = k % 3 == 0;
        L.F.push_back(plain ? 0 : static_cast<int>(g() % 9));
        L.E.push_back(plain ? 0 : static_cast<std::int64_t>(g() % 2001) - 1000);
        L.B.push_back(plain ? 0 : static_cast<std::int64_t>(g() % 2000001) - 1000000);
        L.out.bias.push_back(0);
        L.out.mult.push_back(ptq::quantize_multiplier(std::ldexp(0.5 + 0.5 * u01(g), -static_cast<int>(g() % 31))));
        const auto off = static_cast<std::int32_t>(g() % 256);
        L.out.offset.push_back(off);
        const bool clamp0 = relu == 1 || (relu == 2 && g() % 2 == 0);
        const auto lo = static_cast<std::uint8_t>(clamp0 ? off : g() % 8 == 0 ? off / 2 : 0);
        L.out.lo.push_back(lo);
        L.out.hi.push_back(static_cast<std::uint8_t>(std::max<int>(lo, g() % 4 == 0 ? 15 : 255)));
      }
      const ptq_example::detail::stage_lanes S(L, 0, kn);
      const ptq::index rows = 53;
      std::vector<std::int32_t> acc(static_cast<std::size_t>(rows * kn)), rowsum(static_cast<std::size_t>(rows)),
          fine(acc.size());
      for (auto& r : rowsum) r = static_cast<std::int32_t>(g() % 4000);
      for (ptq::index r = 0; r < rows; ++r)
        for (ptq::index k = 0; k < kn; ++k) {
          const auto kk = static_cast<std::size_t>(k), i = static_cast<std::size_t>(r * kn + k);
          if (k % 3 == 0) {
            // Extremes, values around -2^30 / M, and anything.
            // Around -2^shift: where the output stage's exact result turns from 0 to -1.
            const std::int64_t edge = -(std::int64_t{1} << std::clamp(L.out.mult[kk].shift, 0, 30));
            const auto pick = g() % 6;
            const std::int64_t v = pick == 0   ? INT32_MIN
                                   : pick == 1 ? INT32_MAX
                                   : pick == 2 ? edge + static_cast<std::int64_t>(g() % 9) - 4
                                   : pick == 3 ? -static_cast<std::int64_t>(g() % 100000)
                                               : static_cast<std::int64_t>(static_cast<std::int32_t>(g()));
            acc[i] = static_cast<std::int32_t>(std::clamp<std::int64_t>(v, INT32_MIN, INT32_MAX));
          } else {
            acc[i] = static_cast<std::int32_t>(g() % 200001) - 100000;
          }
          fine[i] = static_cast<std::int32_t>(static_cast<std::int64_t>(acc[i]) * (std::int64_t{1} << L.F[kk]) -
                                              L.E[kk] * rowsum[static_cast<std::size_t>(r)] + L.B[kk]);
        }
      std::vector<std::uint8_t> ref(acc.size()), out(acc.size(), 7), wide(static_cast<std::size_t>(rows * (kn + 5)), 7);
      ptq::requantize_ref(fine.data(), rows, kn, L.out, ref.data(), kn);
      std::vector<std::int32_t> scratch(acc.size());
      INFO("kn = ", kn, ", relu = ", relu);
      ptq_example::detail::conv_stage(acc.data(), rows, kn, rowsum.data(), S, L, 0, L.out, scratch.data(), out.data(), kn);
      CHECK(out == ref);
      ptq_example::detail::conv_stage(acc.data(), rows, kn, rowsum.data(), S, L, 0, L.out, scratch.data(), wide.data(),
                                      kn + 5);
      bool same = true;
      for (ptq::index r = 0; r < rows; ++r)
        for (ptq::index k = 0; k < kn; ++k)
          same = same && wide[static_cast<std::size_t>(r * (kn + 5) + k)] == ref[static_cast<std::size_t>(r * kn + k)];
      CHECK(same);
    }
  }
}

TEST_CASE("int engine: the residual add kernel equals ptq::add_requantize_ref, negative output shifts and saturation included") {
  // Every path of add_stage_rows: per-channel tables (few channels), the whole-add code table
  // (few first-input codes; rows of 256 or, with few second-input codes too, of 8 or 16 codes:
  // 11 codes need rows of 16), the arithmetic (many channels); output multipliers above 1
  // (negative shifts, up to 2^8) whose pre-shift saturates int32 for large sums.
  std::mt19937_64 g(11);
  std::uniform_real_distribution<double> u01(0.0, 1.0);
  for (const ptq::index C : {1, 15, 16, 17, 48, 97, 300}) {
    for (const int few_codes : {0, 1, 2, 3})  // first input < 16; second < 8 (2), < 11 (3)
    for (const bool relu : {false, true}) {  // relu: every channel clamped at its zero point
      const ptq::index rows = 37, ld = C + 3;
      std::vector<double> sa, sb, so;
      std::vector<std::int32_t> za, zb, zo;
      for (ptq::index k = 0; k < C; ++k) {
        sa.push_back(std::ldexp(0.5 + u01(g), -static_cast<int>(g() % 6)));
        sb.push_back(std::ldexp(0.5 + u01(g), -static_cast<int>(g() % 6)));
        // Output steps from coarser than the inputs' to 2^-8 of them times 2^-20 (mo up to 2^8).
        const int e = k == 0 ? 28 : static_cast<int>(g() % 30);
        so.push_back(2 * std::max(sa.back(), sb.back()) * std::ldexp(0.5 + u01(g), -e));
        za.push_back(static_cast<std::int32_t>(g() % 16));
        zb.push_back(static_cast<std::int32_t>(g() % 256));
        zo.push_back(static_cast<std::int32_t>(g() % 256));
      }
      ptq::add_params p = ptq::make_add_params(sa, za, sb, zb, so, zo);
      for (ptq::index k = 0; k < C; ++k) {
        const auto kk = static_cast<std::size_t>(k);
        p.lo[kk] = static_cast<std::uint8_t>(relu || g() % 3 == 0 ? zo[kk] : 0);
        p.hi[kk] = static_cast<std::uint8_t>(std::max<int>(p.lo[kk], g() % 4 == 0 ? 15 : 255));
      }
      bool negative = false;
      for (const auto& m : p.mo) negative = negative || m.shift < 0;
      CHECK(negative);
      std::vector<ptq::index> a_codes, b_codes;
      const int nb = few_codes == 2 ? 8 : few_codes == 3 ? 11 : 256;
      if (few_codes) a_codes.assign(static_cast<std::size_t>(C), 16);
      if (nb < 256) b_codes.assign(static_cast<std::size_t>(C), nb);
      const ptq_example::detail::add_lanes32 lanes(p, a_codes, b_codes);
      CHECK(lanes.t2.empty() == (few_codes == 0 || (nb == 256 && C * 16 * 256 > (1 << 18))));
      std::vector<std::uint8_t> a(static_cast<std::size_t>(rows * ld)), b(a.size());
      for (std::size_t i = 0; i < a.size(); ++i) {
        const auto r = g() % 8;  // extremes often
        a[i] = static_cast<std::uint8_t>(r == 0 ? 0 : r == 1 ? 15 : g() % 16);
        b[i] = static_cast<std::uint8_t>(r == 0 ? nb - 1 : r == 1 ? 0 : g() % nb);
      }
      std::vector<std::uint8_t> out(a.size(), 7), ref(a.size(), 7);
      ptq_example::detail::add_stage_rows(a.data(), b.data(), rows, ld, p, lanes, out.data());
      ptq::add_requantize_ref(a.data(), b.data(), rows, ld, p, ref.data(), ld);
      INFO("C = ", C, ", few codes = ", few_codes, ", relu = ", relu);
      CHECK(out == ref);
    }
  }
}

}  // namespace ptq_test_int_engine
