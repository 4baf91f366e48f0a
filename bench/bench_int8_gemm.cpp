// bench_int8_gemm.cpp: single-thread u8 x s8 -> s32 GEMM on ResNet-50's conv shapes: ptq::igemm beside oneDNN, gemmlowp, XNNPACK, Eigen FP32.
//
// Each conv of ResNet-50 at 224x224 is one GEMM C[M x N] = A[M x K] x W[N x K]^T
// with M = output pixels (x batch), N = output channels, K = C*R*S (im2col in
// NHWC). The weights are packed once outside the timed loop for every library
// that packs (ptq::igemm::packed_weights, the oneDNN matmul primitive with
// weights in format `any`, XNNPACK's operator); the counter GMAC/s is
// M*N*K / time. Everything runs on one thread: the integer engine splits M
// over its own threads. Candidates missing at configure time are left out
// (bench/CMakeLists.txt says which).
//
//   OMP_NUM_THREADS=1 build/gemm/bench/ptq_int8_gemm_bench --benchmark_repetitions=5
//       --benchmark_min_time=0.2 --benchmark_report_aggregates_only=true
#include <benchmark/benchmark.h>

#include <Eigen/Core>
#include <cstdint>
#include <cstdlib>
#include <ptq/igemm.hpp>
#include <random>
#include <vector>

#if PTQ_HAVE_DNNL
#include <omp.h>

#include <oneapi/dnnl/dnnl.h>
#include <oneapi/dnnl/dnnl.hpp>
#endif
#if PTQ_HAVE_GEMMLOWP
#include <gemmlowp/public/gemmlowp.h>
#endif
#if PTQ_HAVE_XNNPACK
#include <xnnpack.h>
#endif

namespace {

using idx = ptq::index;

// {M, N, K} of ResNet-50's convolutions at 224x224, batch 1 (M = 56*56, 28*28, 14*14, 7*7 pixels).
constexpr idx resnet50_shapes[][3] = {{3136, 64, 64},  {3136, 64, 576},  {3136, 256, 64},   {784, 128, 1152}, {784, 512, 128},
                                      {196, 256, 2304}, {196, 1024, 256}, {49, 512, 4608}, {49, 2048, 512}};

void batch1(benchmark::internal::Benchmark* b) {
  for (const auto& s : resnet50_shapes) b->Args({s[0], s[1], s[2]});
}
void batch1_and_8(benchmark::internal::Benchmark* b) {
  batch1(b);
  for (const auto& s : resnet50_shapes) b->Args({8 * s[0], s[1], s[2]});
}

struct operands {
  idx M, N, K;
  std::vector<std::uint8_t> A;
  std::vector<std::int8_t> W;  // N x K row-major: one row per output channel
  std::vector<std::int32_t> C;
  explicit operands(const benchmark::State& state)
      : M(state.range(0)), N(state.range(1)), K(state.range(2)), A(std::size_t(M * K)), W(std::size_t(N * K)),
        C(std::size_t(M * N)) {
    std::mt19937 rng(42);
    for (auto& a : A) a = static_cast<std::uint8_t>(rng());
    for (auto& w : W) w = static_cast<std::int8_t>(rng());
  }
};

void set_rate(benchmark::State& state) {
  const double macs = double(state.range(0)) * double(state.range(1)) * double(state.range(2));
  state.counters["GMAC/s"] = benchmark::Counter(macs * 1e-9, benchmark::Counter::kIsIterationInvariantRate);
}

// Single-threaded everything before the first benchmark runs.
[[maybe_unused]] const bool single_threaded = [] {
  Eigen::setNbThreads(1);
#if PTQ_HAVE_DNNL
  omp_set_num_threads(1);
#endif
#if PTQ_HAVE_XNNPACK
  if (xnn_initialize(nullptr) != xnn_status_success) std::abort();
#endif
  return true;
}();

void igemm(benchmark::State& state) {
  operands o(state);
  const ptq::igemm::packed_weights packed(o.W.data(), o.N, o.K, o.K);
  for (auto _ : state) {
    ptq::igemm::gemm_u8s8s32(o.M, o.A.data(), o.K, packed, o.C.data(), o.N);
    benchmark::ClobberMemory();
  }
  state.SetLabel(ptq::igemm::kernel_name());
  set_rate(state);
}
BENCHMARK(igemm)->Apply(batch1_and_8)->Unit(benchmark::kMicrosecond);

// The kernels one by one (igemm above runs whichever gemm_u8s8s32 dispatches to).
void igemm_kernel(benchmark::State& state, ptq::igemm::isa k) {
  operands o(state);
  const ptq::igemm::packed_weights packed(o.W.data(), o.N, o.K, o.K);
  namespace d = ptq::igemm::detail;
  if ((k == ptq::igemm::isa::amx_int8 && !d::has_amx()) || (k == ptq::igemm::isa::avx512_vnni && !d::has_vnni()) ||
      (k == ptq::igemm::isa::avx2 && !d::has_avx2())) {
    state.SkipWithError("this kernel's instructions are not offered here");
    return;
  }
  for (auto _ : state) {
#if PTQ_IGEMM_AMX
    if (k == ptq::igemm::isa::amx_int8) d::gemm_amx(o.M, o.A.data(), o.K, packed, o.C.data(), o.N);
#endif
#if PTQ_IGEMM_X86
    if (k == ptq::igemm::isa::avx512_vnni) d::gemm_vnni(o.M, o.A.data(), o.K, packed, o.C.data(), o.N);
    if (k == ptq::igemm::isa::avx2) d::gemm_avx2(o.M, o.A.data(), o.K, packed, o.C.data(), o.N);
#endif
    if (k == ptq::igemm::isa::portable) d::gemm_portable(o.M, o.A.data(), o.K, packed, o.C.data(), o.N);
    benchmark::ClobberMemory();
  }
  set_rate(state);
}
BENCHMARK_CAPTURE(igemm_kernel, amx_int8, ptq::igemm::isa::amx_int8)->Apply(batch1)->Unit(benchmark::kMicrosecond);
BENCHMARK_CAPTURE(igemm_kernel, avx512_vnni, ptq::igemm::isa::avx512_vnni)->Apply(batch1)->Unit(benchmark::kMicrosecond);
BENCHMARK_CAPTURE(igemm_kernel, avx2, ptq::igemm::isa::avx2)->Apply(batch1)->Unit(benchmark::kMicrosecond);
BENCHMARK_CAPTURE(igemm_kernel, portable, ptq::igemm::isa::portable)->Apply(batch1)->Unit(benchmark::kMicrosecond);

void igemm_ref(benchmark::State& state) {
  operands o(state);
  for (auto _ : state) {
    ptq::igemm::gemm_u8s8s32_ref(o.M, o.N, o.K, o.A.data(), o.K, o.W.data(), o.K, o.C.data(), o.N);
    benchmark::ClobberMemory();
  }
  set_rate(state);
}
BENCHMARK(igemm_ref)->Apply(batch1)->Unit(benchmark::kMicrosecond);

// The FP32 engine's GEMM: Eigen's sequential kernel on the same shape.
void eigen_fp32(benchmark::State& state) {
  const idx M = state.range(0), N = state.range(1), K = state.range(2);
  using mat = Eigen::Matrix<float, Eigen::Dynamic, Eigen::Dynamic, Eigen::RowMajor>;
  const mat A = mat::Random(M, K), W = mat::Random(N, K);
  mat C(M, N);
  for (auto _ : state) {
    C.noalias() = A * W.transpose();
    benchmark::ClobberMemory();
  }
  set_rate(state);
}
BENCHMARK(eigen_fp32)->Apply(batch1_and_8)->Unit(benchmark::kMicrosecond);

#if PTQ_HAVE_DNNL
// oneDNN's BLAS-like entry: row-major, B = W^T given as 'T' of the N x K rows; packs B on every call.
void dnnl_gemm(benchmark::State& state) {
  operands o(state);
  const std::int32_t c_offset = 0;  // offsetc 'F': one fixed offset, read through this pointer
  for (auto _ : state) {
    const dnnl_status_t st = dnnl_gemm_u8s8s32('N', 'T', 'F', o.M, o.N, o.K, 1.0f, o.A.data(), o.K, 0, o.W.data(), o.K,
                                               0, 0.0f, o.C.data(), o.N, &c_offset);
    if (st != dnnl_success) state.SkipWithError("dnnl_gemm_u8s8s32 failed");
    benchmark::ClobberMemory();
  }
  set_rate(state);
}
BENCHMARK(dnnl_gemm)->Apply(batch1_and_8)->Unit(benchmark::kMicrosecond);

// oneDNN's best case: the matmul primitive, weights in format `any` reordered (packed) once.
void dnnl_matmul(benchmark::State& state) {
  operands o(state);
  using dt = dnnl::memory::data_type;
  using tag = dnnl::memory::format_tag;
  dnnl::engine eng(dnnl::engine::kind::cpu, 0);
  dnnl::stream s(eng);
  const dnnl::memory::desc a_md({o.M, o.K}, dt::u8, tag::ab), c_md({o.M, o.N}, dt::s32, tag::ab);
  const dnnl::memory::desc w_any({o.K, o.N}, dt::s8, tag::any);
  const dnnl::matmul::primitive_desc pd(dnnl::matmul::desc(a_md, w_any, c_md), eng);
  dnnl::memory w_user({{o.K, o.N}, dt::s8, tag::ba}, eng, o.W.data());  // K x N viewed from the N x K rows
  dnnl::memory w_packed(pd.weights_desc(), eng);
  dnnl::reorder(w_user, w_packed).execute(s, w_user, w_packed);
  dnnl::memory a_mem(a_md, eng, o.A.data()), c_mem(c_md, eng, o.C.data());
  const dnnl::matmul prim(pd);
  for (auto _ : state) {
    prim.execute(s, {{DNNL_ARG_SRC, a_mem}, {DNNL_ARG_WEIGHTS, w_packed}, {DNNL_ARG_DST, c_mem}});
    s.wait();
    benchmark::ClobberMemory();
  }
  state.SetLabel(pd.impl_info_str());
  set_rate(state);
}
BENCHMARK(dnnl_matmul)->Apply(batch1_and_8)->Unit(benchmark::kMicrosecond);
#endif

#if PTQ_HAVE_GEMMLOWP
// gemmlowp: u8 x u8 (its weights are unsigned), int32 out through an empty output pipeline.
void gemmlowp_u8u8(benchmark::State& state) {
  operands o(state);
  std::vector<std::uint8_t> Wu(o.W.size());
  for (std::size_t i = 0; i < Wu.size(); ++i) Wu[i] = static_cast<std::uint8_t>(o.W[i] + 128);
  gemmlowp::GemmContext ctx;
  ctx.set_max_num_threads(1);
  const gemmlowp::MatrixMap<const std::uint8_t, gemmlowp::MapOrder::RowMajor> lhs(o.A.data(), int(o.M), int(o.K));
  const gemmlowp::MatrixMap<const std::uint8_t, gemmlowp::MapOrder::ColMajor> rhs(Wu.data(), int(o.K), int(o.N));
  gemmlowp::MatrixMap<std::int32_t, gemmlowp::MapOrder::RowMajor> res(o.C.data(), int(o.M), int(o.N));
  for (auto _ : state) {
    gemmlowp::GemmWithOutputPipeline<std::uint8_t, std::int32_t, gemmlowp::DefaultL8R8BitDepthParams>(
        &ctx, lhs, rhs, &res, 0, 0, std::make_tuple());
    benchmark::ClobberMemory();
  }
  set_rate(state);
}
BENCHMARK(gemmlowp_u8u8)->Apply(batch1_and_8)->Unit(benchmark::kMicrosecond);
#endif

#if PTQ_HAVE_XNNPACK
// XNNPACK's int8 fully connected (s8 x s8, requantized to s8 output: a little more work than an int32 GEMM).
void xnnpack_qs8(benchmark::State& state) {
  operands o(state);
  std::vector<std::int8_t> As(o.A.size()), Cs(std::size_t(o.M * o.N));
  for (std::size_t i = 0; i < As.size(); ++i) As[i] = static_cast<std::int8_t>(o.A[i] - 128);
  xnn_operator_t op = nullptr;
  if (xnn_create_fully_connected_nc_qs8(std::size_t(o.K), std::size_t(o.N), std::size_t(o.K), std::size_t(o.N), 0, 1.0f,
                                        1.0f / 64, o.W.data(), nullptr, 0, 1024.0f, -128, 127, 0,
                                        &op) != xnn_status_success ||
      xnn_setup_fully_connected_nc_qs8(op, std::size_t(o.M), As.data(), Cs.data(), nullptr) != xnn_status_success) {
    state.SkipWithError("xnn_create/setup_fully_connected_nc_qs8 failed");
    return;
  }
  for (auto _ : state) {
    xnn_run_operator(op, nullptr);
    benchmark::ClobberMemory();
  }
  xnn_delete_operator(op);
  set_rate(state);
}
BENCHMARK(xnnpack_qs8)->Apply(batch1_and_8)->Unit(benchmark::kMicrosecond);
#endif

}  // namespace
