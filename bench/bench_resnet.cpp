// bench_resnet.cpp: FP32 and W4A4-simulated forward of the example ResNets (images per second).
//
// Cases (real time, the forward uses all cores):
//   BM_resnet_fp32/<net>/<batch>   resnet::forward, no hooks (bias, residual, ReLU fused)
//   BM_resnet_int_w8a8/<net>/<batch>, BM_resnet_int_w4a4/<net>/<batch>
//                                  the integer engine (int_engine.hpp) on uint8 codes: W8A8
//                                  min/max, and the W4A4 full method below
//   BM_resnet_w4a4/<net>/<batch>   the ablation table's "W4A4 full" network: weights
//                                  fake-quantized by quantize(), activations fake-quantized
//                                  in place by the conv and features hooks, as evaluate() does
// Networks:
//   bundled       examples/resnet50/fashion_resnet50.npz (env PTQ_BENCH_BUNDLED overrides), 1x28x28, batch 256
//   resnet50_224  torchvision ResNet-50 .npz from env PTQ_BENCH_RESNET50 (tools/bench_resnet.py
//                 writes one with seeded random weights), 3x224x224, batch 1 and 8
// Inputs and the W4A4 calibration batch are seeded standard-normal images.
// Threads: env PTQ_BENCH_THREADS (unset or 0: all cores, resnet's default).
// Integer engine: env PTQ_BENCH_CHUNK (images per chunk) and PTQ_BENCH_SPLIT (layers | images |
// automatic), int_engine's constructor arguments; unset: its defaults.
// tools/bench_resnet.py runs this binary beside PyTorch's CPU forward of the same networks.

#include <benchmark/benchmark.h>

#include <cstdlib>
#include <map>
#include <memory>
#include <mutex>
#include <random>
#include <string>
#include <vector>

#include <resnet50/int_engine.hpp>
#include <resnet50/int_model.hpp>
#include <resnet50/options.hpp>
#include <resnet50/pipeline.hpp>
#include <resnet50/resnet.hpp>

#ifndef PTQ_EXAMPLE_DIR
#define PTQ_EXAMPLE_DIR "examples/resnet50"
#endif

namespace {

using ptq_example::index;

struct net_spec {
  const char* name;
  index C, H, W;
  index calib_images;
};

const net_spec bundled_spec{"bundled", 1, 28, 28, 256};
const net_spec resnet50_spec{"resnet50_224", 3, 224, 224, 8};

std::string npz_path(const net_spec& s) {
  const std::string name = s.name;
  if (name == "bundled") {
    const char* env = std::getenv("PTQ_BENCH_BUNDLED");
    return env && *env ? env : std::string(PTQ_EXAMPLE_DIR) + "/fashion_resnet50.npz";
  }
  const char* env = std::getenv("PTQ_BENCH_RESNET50");
  return env && *env ? env : "";
}

// PTQ_BENCH_CHUNK: images per chunk of the integer engine (0 or unset: its default).
index bench_chunk() {
  const char* env = std::getenv("PTQ_BENCH_CHUNK");
  return env && *env ? std::max<index>(0, std::atoll(env)) : 0;
}

// PTQ_BENCH_SPLIT: layers | images | automatic (unset: automatic), the integer engine's split.
ptq_example::int_engine::split bench_split() {
  const char* env = std::getenv("PTQ_BENCH_SPLIT");
  const std::string v = env ? env : "";
  if (v == "layers") return ptq_example::int_engine::split::layers;
  if (v == "images") return ptq_example::int_engine::split::images;
  if (v.empty() || v == "automatic") return ptq_example::int_engine::split::automatic;
  throw ptq::error("bench_resnet: PTQ_BENCH_SPLIT = \"" + v + "\" is not layers, images or automatic");
}

int bench_threads() {
  const char* env = std::getenv("PTQ_BENCH_THREADS");
  return env && *env ? std::max(0, std::atoi(env)) : 0;
}

std::vector<float> random_images(index n, const net_spec& s, std::uint64_t seed) {
  std::mt19937_64 rng(seed);
  std::normal_distribution<float> dist(0.0f, 1.0f);
  std::vector<float> v(static_cast<std::size_t>(n * s.C * s.H * s.W));
  for (auto& x : v) x = dist(rng);
  return v;
}

ptq_example::quant_config w4a4_full() {
  for (const auto& c : ptq_example::ablation_table())
    if (c.name == "W4A4 paper's full method (+bias corr W)") return c;
  throw ptq::error("bench_resnet: the ablation table has no \"W4A4 paper's full method (+bias corr W)\" row");
}

// One loaded network and (on first W4A4 use) its quantized twin, kept across cases.
struct loaded {
  std::unique_ptr<ptq_example::resnet> fp32;
  std::unique_ptr<ptq_example::quantized_net> w4a4;
  std::map<int, std::unique_ptr<ptq_example::int_model>> int_models;  // by weight/activation bits (8 or 4)
  std::map<int, std::unique_ptr<ptq_example::int_engine>> engines;
};

ptq_example::quant_config w8a8() {
  ptq_example::quant_config c;
  c.name = "W8A8";
  c.wbits = c.abits = 8;
  return c;
}

// The integer engine of the W8A8 (bits 8) or the W4A4 full-method (bits 4) model of s.
ptq_example::int_engine& get_int(const net_spec& s, loaded& l, int bits) {
  static std::mutex m;
  std::lock_guard<std::mutex> lock(m);
  if (!l.engines[bits]) {
    const std::vector<float> calib = random_images(s.calib_images, s, 7);
    const ptq_example::image_set set{calib.data(), s.calib_images, s.C, s.H, s.W};
    ptq_example::calibration_options co;
    co.forward_batch = std::min<index>(s.calib_images, 64);
    const ptq_example::calibration cal = ptq_example::calibrate(*l.fp32, set, co);
    const ptq_example::int_calibration ical = ptq_example::calibrate_int(*l.fp32, set, co.forward_batch);
    l.int_models[bits] = std::make_unique<ptq_example::int_model>(
        ptq_example::build_int_model(*l.fp32, cal, ical, bits == 8 ? w8a8() : w4a4_full()));
    l.engines[bits] = std::make_unique<ptq_example::int_engine>(*l.int_models[bits], bench_threads(), bench_chunk(), bench_split());
    l.fp32->release_workspace();
  }
  return *l.engines[bits];
}

loaded& get(const net_spec& s, bool need_w4a4) {
  static std::map<std::string, loaded> cache;
  static std::mutex m;
  std::lock_guard<std::mutex> lock(m);
  loaded& l = cache[s.name];
  if (!l.fp32) {
    l.fp32 = std::make_unique<ptq_example::resnet>(ptq_example::resnet::load(npz_path(s)));
    l.fp32->set_threads(bench_threads());
  }
  if (need_w4a4 && !l.w4a4) {
    const std::vector<float> calib = random_images(s.calib_images, s, 7);
    const ptq_example::image_set set{calib.data(), s.calib_images, s.C, s.H, s.W};
    ptq_example::calibration_options co;
    co.forward_batch = std::min<index>(s.calib_images, 64);
    const ptq_example::calibration cal = ptq_example::calibrate(*l.fp32, set, co);
    l.w4a4 = std::make_unique<ptq_example::quantized_net>(ptq_example::quantize(*l.fp32, cal, w4a4_full()));
    l.w4a4->net.set_threads(bench_threads());
    l.fp32->release_workspace();
  }
  return l;
}

void run_forward(benchmark::State& state, const net_spec& s, index batch, bool w4a4) {
  if (npz_path(s).empty()) {
    state.SkipWithError("set PTQ_BENCH_RESNET50 to a torchvision ResNet-50 .npz (tools/bench_resnet.py writes one)");
    return;
  }
  loaded* l = nullptr;
  try {
    l = &get(s, w4a4);
  } catch (const std::exception& e) {
    state.SkipWithError(e.what());
    return;
  }
  const std::vector<float> x = random_images(batch, s, 42);
  const Eigen::Map<const ptq::row_matrix<float>> input(x.data(), batch * s.C, s.H * s.W);

  ptq_example::conv_hook on_conv;
  ptq_example::features_hook on_features;
  ptq_example::pool_hook on_pool;
  const ptq_example::resnet* net = l->fp32.get();
  const ptq_example::quantized_net* q = w4a4 ? l->w4a4.get() : nullptr;
  if (q) {
    net = &q->net;
    ptq_example::activation_hooks(*q, bench_threads(), on_conv, on_features, on_pool);  // exactly evaluate()'s hooks
  }
  // One untimed call sizes the workspace.
  benchmark::DoNotOptimize(net->forward(input, s.H, s.W, on_conv, on_features, on_pool));
  for (auto _ : state) {
    ptq::row_matrix<float> logits = net->forward(input, s.H, s.W, on_conv, on_features, on_pool);
    if (q && q->logits.active) ptq::gemmlowp_quantizer::fake_quantize_in_place(logits, q->logits.p);
    benchmark::DoNotOptimize(logits.data());
    benchmark::ClobberMemory();
  }
  state.SetItemsProcessed(static_cast<std::int64_t>(state.iterations()) * batch);
  state.counters["threads"] = bench_threads() > 0 ? bench_threads() : ptq_example::detail::default_threads();
}

// The integer engine (int_engine.hpp) on codes: W8A8, or the W4A4 full method.
void run_int(benchmark::State& state, const net_spec& s, index batch, int bits) {
  if (npz_path(s).empty()) {
    state.SkipWithError("set PTQ_BENCH_RESNET50 to a torchvision ResNet-50 .npz (tools/bench_resnet.py writes one)");
    return;
  }
  ptq_example::int_engine* e = nullptr;
  try {
    e = &get_int(s, get(s, false), bits);
  } catch (const std::exception& ex) {
    state.SkipWithError(ex.what());
    return;
  }
  const std::vector<float> x = random_images(batch, s, 42);
  const Eigen::Map<const ptq::row_matrix<float>> input(x.data(), batch * s.C, s.H * s.W);
  benchmark::DoNotOptimize(e->forward(input, s.H, s.W));
  for (auto _ : state) {
    ptq::row_matrix<float> logits = e->forward(input, s.H, s.W);
    benchmark::DoNotOptimize(logits.data());
    benchmark::ClobberMemory();
  }
  state.SetItemsProcessed(static_cast<std::int64_t>(state.iterations()) * batch);
  state.counters["threads"] = bench_threads() > 0 ? bench_threads() : ptq_example::detail::default_threads();
}

struct registrar {
  registrar() {
    const std::vector<std::pair<const net_spec*, index>> cases = {
        {&bundled_spec, 256}, {&resnet50_spec, 1}, {&resnet50_spec, 8}};
    for (bool w4a4 : {false, true})
      for (const auto& [spec, batch] : cases) {
        const std::string name = std::string(w4a4 ? "BM_resnet_w4a4/" : "BM_resnet_fp32/") + spec->name + "/" +
                                 std::to_string(batch);
        benchmark::RegisterBenchmark(name.c_str(), [spec = spec, batch = batch, w4a4](benchmark::State& st) {
          run_forward(st, *spec, batch, w4a4);
        })->UseRealTime()->Unit(benchmark::kMillisecond);
      }
    for (int bits : {8, 4})
      for (const auto& [spec, batch] : cases) {
        const std::string name = std::string(bits == 8 ? "BM_resnet_int_w8a8/" : "BM_resnet_int_w4a4/") + spec->name +
                                 "/" + std::to_string(batch);
        benchmark::RegisterBenchmark(name.c_str(), [spec = spec, batch = batch, bits](benchmark::State& st) {
          run_int(st, *spec, batch, bits);
        })->UseRealTime()->Unit(benchmark::kMillisecond);
      }
  }
} registrar_instance;

}  // namespace
