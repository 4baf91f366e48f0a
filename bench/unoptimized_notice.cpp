// unoptimized_notice.cpp: marks a benchmark built with PTQ_BENCH_UNOPTIMIZED (-O0, a compile check) in its output.
#include <benchmark/benchmark.h>

namespace {

[[maybe_unused]] const bool ptq_unoptimized_notice = [] {
  benchmark::AddCustomContext("ptq_build", "UNOPTIMIZED (-O0, PTQ_BENCH_UNOPTIMIZED): a compile check, not a measurement");
  return true;
}();

}  // namespace
