// options.hpp: resnet_ptq's command line: the quantization configuration, parsed strictly.
#pragma once

#include <cerrno>
#include <cstdlib>
#include <sstream>
#include <string>
#include <vector>

#include <ptq/error.hpp>

namespace ptq_example {

enum class clip_mode { none, laplace, gauss };

inline const char* clip_name(clip_mode c) {
  return c == clip_mode::none ? "none" : c == clip_mode::laplace ? "laplace" : "gauss";
}

// One quantization configuration (one row of the ablation table). 32 bits = float.
struct quant_config {
  std::string name = "FP32";
  int wbits = 32;
  int abits = 32;
  clip_mode clip = clip_mode::none;
  bool bit_alloc_w = false;
  bool bit_alloc_a = false;
  bool bias_corr_w = false;
  bool var_corr_w = false;
  bool per_tensor_a = false;
  bool quantize_first_last = false;  // reference: first conv and classifier stay at 8 bits

  bool weights_quantized() const { return wbits < 32; }
  bool activations_quantized() const { return abits < 32; }

  std::string json() const {
    std::ostringstream s;
    s << "{\"name\": \"" << name << "\", \"wbits\": " << wbits << ", \"abits\": " << abits << ", \"clip\": \""
      << clip_name(clip) << "\", \"bit_alloc_w\": " << (bit_alloc_w ? "true" : "false")
      << ", \"bit_alloc_a\": " << (bit_alloc_a ? "true" : "false")
      << ", \"bias_corr_w\": " << (bias_corr_w ? "true" : "false")
      << ", \"var_corr_w\": " << (var_corr_w ? "true" : "false")
      << ", \"per_tensor_a\": " << (per_tensor_a ? "true" : "false")
      << ", \"quantize_first_last\": " << (quantize_first_last ? "true" : "false") << "}";
    return s.str();
  }
};

struct options {
  std::string weights, images, labels, calib, json, meta;
  quant_config config;
  bool table = false;
  long limit = -1;         // test images (-1: all)
  long calib_limit = -1;   // calibration images (-1: all in --calib)
  int batch = 64;
  int threads = 0;         // 0: all cores
  bool progress = true;
  bool cuda = false;       // --device cuda: calibration statistics and activation quantization on the GPU
  bool config_given = false;  // any of --wbits --abits --clip --bit-alloc-* --*-corr-w --per-tensor-a --quantize-first-last
  bool defaulted = false;  // no --weights/--images/--labels/--calib: the bundled model and Fashion-MNIST
};

inline const char* usage() {
  return "usage: resnet_ptq --weights W.npz --images X.npy --labels Y.npy --calib C.npy\n"
         "                  [--wbits N] [--abits N] [--clip none|laplace|gauss] [--bit-alloc-w] [--bit-alloc-a]\n"
         "                  [--bias-corr-w] [--var-corr-w] [--per-tensor-a] [--quantize-first-last]\n"
         "                  [--limit N] [--calib-limit N] [--batch N] [--threads N] [--json FILE] [--table]\n"
         "                  [--no-progress] [--device cpu|cuda]\n"
         "       resnet_ptq [options]  (no --weights/--images/--labels/--calib: --table on the bundled\n"
         "                              Fashion-MNIST ResNet-50, its 10 000 test images (--limit N: the\n"
         "                              first N) and 512 calibration images from the training set)\n"
         "X and C: float32 NCHW, already normalized. Y: int64 or int32 labels. --wbits/--abits 32 means float.\n"
         "--table: the paper's ablation; its ACIQ rows use --clip laplace|gauss (default gauss), and it adds\n"
         "the full W4A4 method with the other prior.\n";
}

namespace detail {
inline long parse_long(const std::string& flag, const std::string& text, long lo, long hi) {
  char* end = nullptr;
  errno = 0;
  const long v = std::strtol(text.c_str(), &end, 10);
  if (text.empty() || *end != '\0' || errno != 0 || v < lo || v > hi)
    throw ptq::error(flag + ": '" + text + "' is not an integer in [" + std::to_string(lo) + ", " +
                     std::to_string(hi) + "]");
  return v;
}
}  // namespace detail

// A row name for a configuration given by flags, e.g. "W4A4 laplace +bit alloc A +bias corr W".
inline std::string describe(const quant_config& c) {
  auto bits = [](int b) { return b == 32 ? std::string("32") : std::to_string(b); };
  std::string n = "W" + bits(c.wbits) + "A" + bits(c.abits);
  if (c.activations_quantized()) n += std::string(" ") + clip_name(c.clip) + (c.per_tensor_a ? " per tensor" : "");
  if (c.bit_alloc_a) n += " +bit alloc A";
  if (c.bit_alloc_w) n += " +bit alloc W";
  if (c.bias_corr_w) n += " +bias corr W";
  if (c.var_corr_w) n += " +var corr W";
  if (c.quantize_first_last) n += " +first/last quantized";
  return n;
}

// Parses argv; throws ptq::error with one line naming the bad argument.
inline options parse_options(int argc, char** argv) {
  options o;
  std::vector<std::string> a(argv + 1, argv + argc);
  for (std::size_t i = 0; i < a.size(); ++i) {
    const std::string& f = a[i];
    auto value = [&]() -> const std::string& {
      if (i + 1 >= a.size()) throw ptq::error(f + " needs a value");
      return a[++i];
    };
    if (f == "--weights") o.weights = value();
    else if (f == "--images") o.images = value();
    else if (f == "--labels") o.labels = value();
    else if (f == "--calib") o.calib = value();
    else if (f == "--json") o.json = value();
    else if (f == "--meta") o.meta = value();
    else if (f == "--wbits" || f == "--abits") {
      const long b = detail::parse_long(f, value(), 1, 32);
      if (b > 16 && b != 32) throw ptq::error(f + ": " + std::to_string(b) + " bits: use 1..16, or 32 for float");
      (f == "--wbits" ? o.config.wbits : o.config.abits) = static_cast<int>(b);
    } else if (f == "--clip") {
      const std::string& c = value();
      if (c == "none") o.config.clip = clip_mode::none;
      else if (c == "laplace") o.config.clip = clip_mode::laplace;
      else if (c == "gauss") o.config.clip = clip_mode::gauss;
      else throw ptq::error("--clip: '" + c + "' is not one of none, laplace, gauss");
    } else if (f == "--bit-alloc-w") o.config.bit_alloc_w = true;
    else if (f == "--bit-alloc-a") o.config.bit_alloc_a = true;
    else if (f == "--bias-corr-w") o.config.bias_corr_w = true;
    else if (f == "--var-corr-w") o.config.var_corr_w = true;
    else if (f == "--per-tensor-a") o.config.per_tensor_a = true;
    else if (f == "--quantize-first-last") o.config.quantize_first_last = true;
    else if (f == "--table") o.table = true;
    else if (f == "--no-progress") o.progress = false;
    else if (f == "--device") {
      const std::string& d = value();
      if (d == "cpu") o.cuda = false;
      else if (d == "cuda") o.cuda = true;
      else throw ptq::error("--device: '" + d + "' is not one of cpu, cuda");
    }
    else if (f == "--limit") o.limit = detail::parse_long(f, value(), 1, 1L << 40);
    else if (f == "--calib-limit") o.calib_limit = detail::parse_long(f, value(), 1, 1L << 40);
    else if (f == "--batch") o.batch = static_cast<int>(detail::parse_long(f, value(), 1, 1 << 16));
    else if (f == "--threads") o.threads = static_cast<int>(detail::parse_long(f, value(), 1, 1024));
    else if (f == "--help" || f == "-h") throw ptq::error(std::string("help\n") + usage());
    else throw ptq::error("unknown argument '" + f + "' (see --help)");
  }
  // None of the four inputs: the bundled model and data (other options still apply).
  o.defaulted = o.weights.empty() && o.images.empty() && o.labels.empty() && o.calib.empty();
  const quant_config plain;
  o.config_given = o.config.json() != plain.json();
  if (o.config_given) o.config.name = describe(o.config);
  if (!o.defaulted) {
    for (const auto& [flag, path] : {std::pair<const char*, const std::string*>{"--weights", &o.weights},
                                     {"--images", &o.images}, {"--labels", &o.labels}, {"--calib", &o.calib}})
      if (path->empty()) throw ptq::error(std::string(flag) + " is required (see --help)");
  }
  if (o.config.bit_alloc_w && !o.config.weights_quantized())
    throw ptq::error("--bit-alloc-w needs --wbits below 32");
  if (o.config.bit_alloc_a && !o.config.activations_quantized())
    throw ptq::error("--bit-alloc-a needs --abits below 32");
  if ((o.config.bias_corr_w || o.config.var_corr_w) && !o.config.weights_quantized())
    throw ptq::error("--bias-corr-w / --var-corr-w need --wbits below 32");
  return o;
}

// The paper's ablation (Banner et al. 2019, Table 1 shape), one process, one calibration.
// aciq: the clipping prior of the ACIQ rows (laplace or gauss). The table adds the
// full W4A4 method with the other prior, so both are always shown. The default,
// gauss, was chosen on held-out training images, not on the test set (README).
inline std::vector<quant_config> ablation_table(clip_mode aciq = clip_mode::gauss) {
  if (aciq == clip_mode::none) throw ptq::error("--table --clip none: the table's ACIQ rows need laplace or gauss");
  const std::string prior = aciq == clip_mode::gauss ? "Gauss" : "Laplace";
  std::vector<quant_config> t;
  quant_config fp32;
  t.push_back(fp32);
  quant_config w8a8;
  w8a8.name = "W8A8";
  w8a8.wbits = w8a8.abits = 8;
  t.push_back(w8a8);
  quant_config naive = w8a8;
  naive.name = "W4A4 naive";
  naive.wbits = naive.abits = 4;
  t.push_back(naive);
  quant_config aciq_row = naive;
  aciq_row.name = "W4A4 +ACIQ (" + prior + ")";
  aciq_row.clip = aciq;
  t.push_back(aciq_row);
  quant_config baa = aciq_row;
  baa.name = aciq_row.name + " +bit alloc A";
  baa.bit_alloc_a = true;
  t.push_back(baa);
  quant_config baw = baa;
  baw.name = baa.name + " +bit alloc W";
  baw.bit_alloc_w = true;
  t.push_back(baw);
  quant_config full = baw;
  full.name = "W4A4 full (+bias corr W)";
  full.bias_corr_w = true;
  t.push_back(full);
  quant_config other = full;
  other.clip = aciq == clip_mode::gauss ? clip_mode::laplace : clip_mode::gauss;
  other.name = std::string("W4A4 full, ") + (aciq == clip_mode::gauss ? "Laplace" : "Gauss") + " prior";
  t.push_back(other);
  quant_config w4a8 = full;
  w4a8.name = "W4A8 full";
  w4a8.abits = 8;
  t.push_back(w4a8);
  quant_config w8a4 = full;
  w8a4.name = "W8A4 full";
  w8a4.wbits = 8;
  t.push_back(w8a4);
  return t;
}

}  // namespace ptq_example
