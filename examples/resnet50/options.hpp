// options.hpp: resnet_ptq's command line: the quantization configuration, parsed strictly.
#pragma once

#include <algorithm>
#include <cerrno>
#include <cstdlib>
#include <sstream>
#include <string>
#include <vector>

#include <ptq/error.hpp>
#include <ptq/types.hpp>

namespace ptq_example {

// Activation clipping: min/max, ACIQ (Laplace, Gauss), or from data (data_steps.hpp): search
// (ptq::clip_search from ACIQ's start, quant_config::search_dist) and choose (ptq::clip_choice:
// per layer Laplace, Gauss or searched, by the MSE measured on the calibration sample).
enum class clip_mode { none, laplace, gauss, search, choose };
// How per-channel bit widths are chosen (docs/method.md section 2):
//   paper  the 2/3-power rule with the reference's integerization (round, clamp to [0, 8],
//          damped re-tuning of the target; ptq::bit_allocator::paper with bit_retune::reference),
//          only for quantizers of at most 4 bits, as the reference; a 0-bit channel is the
//          constant the reference gives it (weights: the channel's minimum; activations: the
//          clipping range's offset);
//   exact  the exact integer optimum under a budget on the total bits (bit_allocator::exact),
//          for any quantizer below 8 bits; a 0-bit channel is its mean.
enum class bit_rule { paper, exact };
// The edge activations (first conv output, max-pool output, classifier):
//   minmax  as the reference: first conv output and max-pool output per tensor at 8 bits over
//           min/max without clipping, the pooled features in float, the logits per tensor at
//           8 bits over their global min/max;
//   aciq    first conv output per channel at 8 bits with the configuration's clipping, the
//           pooled features (fc input) per tensor at 8 bits over min/max, logits in float.
enum class edge_mode { minmax, aciq };
// ACIQ clipping factors: the reference's tables rounded to two decimals (and, for the Gaussian
// prior with bit allocation, the layer's nominal bits), or the exact optima for each channel's bits.
enum class alpha_mode { reference, exact };
// Calibration statistics (docs/method.md section 5a):
//   image   per image, averaged over the calibration images (the reference's offline route);
//   batch   per batch of --calib-batch images, averaged over batches;
//   pooled  exact statistics of all calibration values (two passes).
enum class stats_protocol { image, batch, pooled };

inline const char* clip_name(clip_mode c) {
  return c == clip_mode::none      ? "none"
         : c == clip_mode::laplace ? "laplace"
         : c == clip_mode::gauss   ? "gauss"
         : c == clip_mode::search  ? "search"
                                   : "choose";
}
inline const char* dist_name(ptq::distribution d) { return d == ptq::distribution::laplace ? "laplace" : "gauss"; }
// The tables --table prints: the paper's ablation (the default), or it and the data-driven steps.
enum class table_kind { paper, beyond };
inline const char* rule_name(bit_rule r) { return r == bit_rule::paper ? "paper" : "exact"; }
inline const char* edge_name(edge_mode e) { return e == edge_mode::minmax ? "minmax" : "aciq"; }
inline const char* alpha_name(alpha_mode a) { return a == alpha_mode::reference ? "reference" : "exact"; }
inline const char* protocol_name(stats_protocol p) {
  return p == stats_protocol::image ? "image" : p == stats_protocol::batch ? "batch" : "pooled";
}

// One quantization configuration (one row of the ablation table). 32 bits = float.
// Edge layers (first conv and classifier, weights and activations) use max(bits, 8)
// unless quantize_first_last is set.
struct quant_config {
  std::string name = "FP32";
  int wbits = 32;
  int abits = 32;
  clip_mode clip = clip_mode::none;
  bool bit_alloc_w = false;
  bool bit_alloc_a = false;
  // With bit_alloc_a: the last conv and the downsample of a projection block, whose outputs
  // are added, share one allocation over their channels (pipeline.hpp, activation_bits;
  // --bit-alloc-a-scope add); false: each conv output on its own, as the paper.
  bool bit_alloc_a_add = false;
  bool bias_corr_w = false;
  bool var_corr_w = false;
  bool per_tensor_a = false;
  bool quantize_first_last = false;  // reference: first conv and classifier stay at 8 bits
  bit_rule rule = bit_rule::paper;
  edge_mode edge = edge_mode::minmax;
  alpha_mode alphas = alpha_mode::reference;
  // Beyond the paper (data_steps.hpp): the distribution clip search starts from (its ACIQ
  // range; for choose, the searched candidate's), and the empirical bias correction of the
  // conv outputs on the first bias_corr_a_images calibration images (0: all).
  ptq::distribution search_dist = ptq::distribution::laplace;
  bool bias_corr_a = false;
  long bias_corr_a_images = 0;
  // Weight ranges per output channel: min/max (the paper's and the reference's) or searched,
  // the range minimizing the weights' own quantization MSE (ptq::clip_search on the rows, from
  // ACIQ's Laplace range; the grid AdaRound and BRECQ start from). Every quantized conv and the
  // classifier; the integer model's folded weights W' are searched on their own.
  bool clip_w_search = false;
  // Learned rounding of the conv weights (reconstruct.hpp, ptq::adaround; the integer model's
  // folded weights: int_reconstruct.hpp): adaround_iters Adam steps per conv, on
  // adaround_images calibration images; adaround_seconds > 0: a wall-clock budget of the whole
  // pass (each conv or block gets what is left over those left; 0: none).
  bool adaround = false;
  long adaround_iters = 2000;
  long adaround_images = 64;
  double adaround_seconds = 0.0;
  // Per conv: reconstruct the output after the ReLU where one follows (reconstruct.hpp,
  // rounding_options::relu_output; --adaround-output relu, the default: chosen on held-out
  // images, docs/figures/adaround_output_heldout.txt) or before it (linear).
  bool adaround_relu = true;
  // Block-wise instead of per conv (block_reconstruct.hpp, ptq::reconstruct_block: BRECQ; with
  // qdrop > 0, QDrop's random dropping of activation quantization at that rate). Sets adaround.
  bool brecq = false;
  double qdrop = 0.0;
  // With brecq: act_lr > 0 learns the activation quantizers' scales with the rounding (LSQ on
  // log scales, Adam's rate act_lr; ptq::block_params::act_lr); the integer model folds the
  // learned grids. 0: the calibrated grids stay.
  double act_lr = 0.0;

  bool searched() const { return clip == clip_mode::search || clip == clip_mode::choose; }
  bool weights_quantized() const { return wbits < 32; }
  bool activations_quantized() const { return abits < 32; }
  static int edge_bits(int bits) { return bits >= 32 ? bits : std::max(bits, 8); }

  std::string json() const {
    std::ostringstream s;
    s << "{\"name\": \"" << name << "\", \"wbits\": " << wbits << ", \"abits\": " << abits << ", \"clip\": \""
      << clip_name(clip) << "\", \"bit_alloc_w\": " << (bit_alloc_w ? "true" : "false")
      << ", \"bit_alloc_a\": " << (bit_alloc_a ? "true" : "false")
      << ", \"bit_alloc_a_scope\": \"" << (bit_alloc_a_add ? "add" : "conv") << "\""
      << ", \"bias_corr_w\": " << (bias_corr_w ? "true" : "false")
      << ", \"var_corr_w\": " << (var_corr_w ? "true" : "false")
      << ", \"per_tensor_a\": " << (per_tensor_a ? "true" : "false")
      << ", \"quantize_first_last\": " << (quantize_first_last ? "true" : "false") << ", \"bit_alloc_rule\": \""
      << rule_name(rule) << "\", \"edge_act\": \"" << edge_name(edge) << "\", \"aciq_alphas\": \""
      << alpha_name(alphas) << "\", \"search_dist\": \"" << dist_name(search_dist)
      << "\", \"bias_corr_a\": " << (bias_corr_a ? "true" : "false")
      << ", \"bias_corr_a_images\": " << bias_corr_a_images
      << ", \"clip_w\": \"" << (clip_w_search ? "search" : "minmax") << "\", \"adaround\": " << (adaround ? "true" : "false")
      << ", \"adaround_iters\": " << adaround_iters << ", \"adaround_images\": " << adaround_images
      << ", \"adaround_seconds\": " << adaround_seconds << ", \"adaround_output\": \"" << (adaround_relu ? "relu" : "linear") << "\""
      << ", \"brecq\": " << (brecq ? "true" : "false") << ", \"qdrop\": " << qdrop << ", \"act_lr\": " << act_lr << "}";
    return s.str();
  }
};

struct options {
  std::string weights, images, labels, calib, json, meta, dump, export_path;
  bool engine_int = false;  // --engine int: every row also on the integer engine (int_engine.hpp)
  int fold_bits = 0;        // --fold-bits N: int_options::fold_bits (0: the weight bits)
  // --weights names an exported integer model (--export's *.ptq.npz).
  bool exported() const {
    const std::string ext = ".ptq.npz";
    return weights.size() >= ext.size() && weights.compare(weights.size() - ext.size(), ext.size(), ext) == 0;
  }
  std::vector<std::string> models;  // --model (bundled): resnet50, resnet18; empty: both
  quant_config config;
  bool table = false;
  table_kind tables = table_kind::paper;  // --table beyond
  long sample_values = 4096;  // --sample-values: calibration sample per channel for --clip search|choose
  long limit = -1;         // test images (-1: all)
  long calib_limit = -1;   // calibration images per set (-1: all in --calib; bundled: 512)
  int batch = 64;          // evaluation batch
  stats_protocol protocol = stats_protocol::image;
  int calib_batch = 64;    // --calib-stats batch: images per statistics batch
  int calib_seeds = 1;     // disjoint calibration sets
  int threads = 0;         // 0: all cores
  bool progress = true;
  bool cuda = false;       // --device cuda: calibration statistics and activation quantization on the GPU
  bool config_given = false;  // any of the configuration flags
  bool defaulted = false;  // no --weights/--images/--labels/--calib: the bundled models and Fashion-MNIST
};

inline const char* usage() {
  return "usage: resnet_ptq --weights W.npz --images X.npy --labels Y.npy --calib C.npy\n"
         "                  [--wbits N] [--abits N] [--clip none|laplace|gauss] [--bit-alloc-w] [--bit-alloc-a]\n"
         "                  [--bias-corr-w] [--var-corr-w] [--per-tensor-a] [--quantize-first-last]\n"
         "                  [--bit-alloc-rule paper|exact] [--edge-act minmax|aciq] [--aciq-alphas reference|exact]\n"
         "                  [--calib-stats image|batch|pooled] [--calib-batch N] [--calib-seeds K]\n"
         "                  [--limit N] [--calib-limit N] [--batch N] [--threads N] [--json FILE] [--dump FILE.npz]\n"
         "                  [--table [paper|beyond]] [--no-progress] [--device cpu|cuda] [--engine float|int]\n"
         "                  [--export FILE.ptq.npz] [--fold-bits N]\n"
         "                  beyond the paper: [--clip search|choose] [--clip-dist laplace|gauss] [--sample-values N]\n"
         "                  [--clip-w minmax|search] [--bias-corr-a] [--bias-corr-a-images N] [--bit-alloc-a-scope conv|add]\n"
         "                  [--adaround] [--adaround-iters N] [--adaround-images N] [--adaround-seconds S]\n"
         "                  [--adaround-output linear|relu] [--brecq] [--qdrop P] [--lsq LR]\n"
         "       resnet_ptq [options]  (no --weights/--images/--labels/--calib: --table on the bundled\n"
         "                              Fashion-MNIST models (--model resnet50|resnet18, repeatable; default\n"
         "                              both), their 10 000 test images (--limit N: the first N) and 512\n"
         "                              calibration images from the training set)\n"
         "X and C: float32 NCHW, already normalized. Y: int64 or int32 labels. --wbits/--abits 32 means float.\n"
         "Defaults are the reference implementation's: --bit-alloc-rule paper, --edge-act minmax,\n"
         "--aciq-alphas reference, --calib-stats image (per-image statistics averaged over the images).\n"
         "--calib-seeds K: K disjoint calibration sets (training images [512k, 512k + 512) for the bundled\n"
         "data; K consecutive slices of --calib otherwise); every row reports the mean and std over them.\n"
         "--table: the paper's ablation with the Laplace prior, plus the project's best configuration.\n"
         "--table beyond: that table, then the data-driven steps beside the paper's full method: per-tensor\n"
         "activations, clipping searched on data, empirical bias correction of activations, both, learned\n"
         "rounding (AdaRound), all three, both steps with block-wise rounding (BRECQ), at W4A4 (per channel\n"
         "and per tensor), W3A3 and W2A4.\n"
         "--clip search: clipping ranges minimizing the measured quantization MSE of a calibration sample\n"
         "(ptq::clip_search), from ACIQ's range for --clip-dist (default laplace; exact alphas);\n"
         "--clip choose: per layer Laplace, Gauss or the searched ranges, by measured MSE (ptq::clip_choice).\n"
         "--sample-values N: calibration values kept per channel of every conv output for them (default 4096).\n"
         "--clip-w search: weight ranges per output channel minimizing the weights' quantization MSE\n"
         "(ptq::clip_search on the rows, from ACIQ's Laplace range) instead of min/max (--clip-w minmax, the\n"
         "default and the paper's); the grid learned rounding starts from (AdaRound's and BRECQ's practice).\n"
         "--bias-corr-a: empirical bias correction: per conv in network order, E[y_fp32 - y_quant] per output\n"
         "channel on the calibration images (earlier convs already quantized and corrected), folded into its\n"
         "bias; --bias-corr-a-images N: on the first N calibration images (default: all).\n"
         "--bit-alloc-a-scope add (with --bit-alloc-a): the last conv and the downsample of a projection block,\n"
         "whose outputs are added, share one bit allocation over their channels (the same total bits; the noise\n"
         "of both adds up in the sum); conv (the default, the paper's): each conv output on its own.\n"
         "--adaround: learned rounding (ptq::adaround, AdaRound): per conv in network order, each weight rounded\n"
         "up or down on its grid so that the conv's output on calibration inputs (from the quantized network)\n"
         "matches the FP32 one; --adaround-iters N Adam steps per conv (default 2000), on the first\n"
         "--adaround-images N calibration images (default 64); --adaround-seconds S: a time budget of the whole\n"
         "pass (each conv or block gets the time left over those left; results then depend on the machine).\n"
         "--adaround-output relu (the default): each conv that feeds a ReLU is reconstructed after it (relu(W X + b)\n"
         "against the FP32 relu(y)), the others before the residual add; linear: every conv before its ReLU.\n"
         "With --engine int (and --export) the integer\n"
         "model learns its own rounding the same way, of the weights folded with the input grid's scales,\n"
         "on its own grids (int_reconstruct.hpp).\n"
         "--brecq: learned rounding block by block (ptq::reconstruct_block, BRECQ): the stem conv, then every\n"
         "residual block's convs together, so that the block's output (after the add and the ReLU, with the\n"
         "activation quantizers inside) matches the FP32 one; --adaround-iters / -images / -seconds as above.\n"
         "--qdrop P (with --brecq): QDrop, each activation element skips its quantizer with probability P\n"
         "during the reconstruction. With --engine int (and --export) the integer model learns its own block\n"
         "rounding the same way, of its folded weights on its own grids (int_block_reconstruct.hpp).\n"
         "--lsq LR (with --brecq): learned activation steps: every activation quantizer's scales are learned\n"
         "with the rounding (LSQ; Adam with rate LR on their logarithms, e.g. 1e-3); the integer model folds\n"
         "the grids the float model learned.\n"
         "--dump FILE.npz (one configuration): statistics, activation ranges and bits, quantized weights\n"
         "and logits, keyed by the state_dict's module names (tools/reference_ptq.py writes the same).\n"
         "--engine int: every row with weights and activations of at most 8 bits also runs on the integer\n"
         "engine (uint8 codes, int8 weights, fixed-point output stages); the row reports its top-1 beside\n"
         "the float simulation's and the integer scheme's simulation. --export FILE.ptq.npz (one configuration,\n"
         "implies --engine int) writes the integer model; --weights FILE.ptq.npz --images X --labels Y runs it.\n"
         "--fold-bits N (with --engine int, N > --wbits, per-channel activations): the integer model folds the\n"
         "float model's quantized weights (its learned rounding included) with the per-channel activation\n"
         "scales into N-bit weights, instead of quantizing the folded weights at --wbits: it computes the\n"
         "simulation's weights up to an N-bit rounding and stores N bits per weight (int_model.hpp).\n";
}

namespace detail {
// text as one double v with lo < v <= hi (lo_open) or lo <= v <= hi, else a ptq::error
// "flag: 'text' is not <what>".
inline double parse_double(const std::string& flag, const std::string& text, double lo, bool lo_open, double hi,
                           const char* what) {
  char* end = nullptr;
  errno = 0;
  const double v = std::strtod(text.c_str(), &end);
  if (text.empty() || *end != '\0' || errno != 0 || !((lo_open ? v > lo : v >= lo) && v <= hi))
    throw ptq::error(flag + ": '" + text + "' is not " + what);
  return v;
}
inline double parse_probability(const std::string& flag, const std::string& text) {
  return parse_double(flag, text, 0.0, false, 1.0, "a probability in [0, 1]");
}
inline double parse_rate(const std::string& flag, const std::string& text) {
  return parse_double(flag, text, 0.0, true, 1.0, "a learning rate in (0, 1]");
}
inline double parse_seconds(const std::string& flag, const std::string& text) {
  return parse_double(flag, text, 0.0, true, 1e9, "a time in seconds in (0, 1e9]");
}
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

// A row name for a configuration given by flags, e.g. "W4A4 laplace +bit alloc A (paper) +bias corr W":
// the bit widths, then describe_method().
inline std::string describe_method(const quant_config& c) {
  std::string n;
  if (c.activations_quantized()) {
    n += clip_name(c.clip);
    if (c.searched() && c.search_dist == ptq::distribution::gauss) n += " (from gauss)";
    if (c.per_tensor_a) n += " per tensor";
  }
  if (c.bit_alloc_a) n += c.bit_alloc_a_add ? " +bit alloc A (joint at adds)" : " +bit alloc A";
  if (c.bit_alloc_w) n += " +bit alloc W";
  if (c.bit_alloc_a || c.bit_alloc_w) n += std::string(" (") + rule_name(c.rule) + ")";
  if (c.clip_w_search) n += " +clip W search";
  if (c.bias_corr_w) n += " +bias corr W";
  if (c.var_corr_w) n += " +var corr W";
  if (c.adaround) n += c.brecq ? " +brecq" : c.adaround_relu ? " +adaround" : " +adaround (linear)";
  if (c.brecq && c.qdrop > 0) {
    std::ostringstream q;
    q << " +qdrop " << c.qdrop;
    n += q.str();
  }
  if (c.brecq && c.act_lr > 0) {
    std::ostringstream q;
    q << " +lsq " << c.act_lr;
    n += q.str();
  }
  if (c.bias_corr_a) n += " +bias corr A";
  if (c.bias_corr_a && c.bias_corr_a_images > 0) n += " (" + std::to_string(c.bias_corr_a_images) + " images)";
  if (c.quantize_first_last) n += " +first/last quantized";
  if (c.activations_quantized() && (c.clip == clip_mode::laplace || c.clip == clip_mode::gauss) &&
      c.alphas == alpha_mode::exact)
    n += " [exact alphas]";
  if (c.activations_quantized() && c.edge == edge_mode::aciq) n += " [edge aciq]";
  return n;
}
inline std::string describe(const quant_config& c) {
  auto bits = [](int b) { return b == 32 ? std::string("32") : std::to_string(b); };
  const std::string m = describe_method(c);
  return "W" + bits(c.wbits) + "A" + bits(c.abits) + (m.empty() || m[0] == ' ' ? "" : " ") + m;
}

// Parses argv; throws ptq::error with one line naming the bad argument.
inline options parse_options(int argc, char** argv) {
  options o;
  std::vector<std::string> a(argv + 1, argv + argc);
  bool calib_batch_given = false, method_given = false, dist_given = false, sample_given = false, adaround_given = false,
       bits_given = false, qdrop_given = false, lsq_given = false, output_given = false, scope_given = false;
  for (std::size_t i = 0; i < a.size(); ++i) {
    const std::string& f = a[i];
    auto value = [&]() -> const std::string& {
      if (i + 1 >= a.size()) throw ptq::error(f + " needs a value");
      return a[++i];
    };
    // One of `names` (the value of flag f), as its index.
    auto choice = [&](std::initializer_list<const char*> names) {
      const std::string& v = value();
      int k = 0;
      std::string all;
      for (const char* n : names) {
        if (v == n) return k;
        all += (k++ ? ", " : "") + std::string(n);
      }
      throw ptq::error(f + ": '" + v + "' is not one of " + all);
    };
    if (f == "--weights") o.weights = value();
    else if (f == "--images") o.images = value();
    else if (f == "--labels") o.labels = value();
    else if (f == "--calib") o.calib = value();
    else if (f == "--json") o.json = value();
    else if (f == "--dump") o.dump = value();
    else if (f == "--export") o.export_path = value();
    else if (f == "--engine") o.engine_int = choice({"float", "int"}) == 1;
    else if (f == "--fold-bits") o.fold_bits = static_cast<int>(detail::parse_long(f, value(), 1, 8));
    else if (f == "--meta") o.meta = value();
    else if (f == "--model") o.models.push_back(choice({"resnet50", "resnet18"}) == 0 ? "resnet50" : "resnet18");
    else if (f == "--wbits" || f == "--abits") {
      const long b = detail::parse_long(f, value(), 1, 32);
      if (b > 16 && b != 32) throw ptq::error(f + ": " + std::to_string(b) + " bits: use 1..16, or 32 for float");
      (f == "--wbits" ? o.config.wbits : o.config.abits) = static_cast<int>(b);
      bits_given = true;
    } else if (f == "--clip") o.config.clip = static_cast<clip_mode>(choice({"none", "laplace", "gauss", "search", "choose"}));
    else if (f == "--clip-dist") o.config.search_dist = static_cast<ptq::distribution>(choice({"laplace", "gauss"})), dist_given = true;
    else if (f == "--sample-values") o.sample_values = detail::parse_long(f, value(), 1, 1L << 24), sample_given = true;
    else if (f == "--bias-corr-a") o.config.bias_corr_a = true;
    else if (f == "--clip-w") o.config.clip_w_search = choice({"minmax", "search"}) == 1;
    else if (f == "--adaround") o.config.adaround = true;
    else if (f == "--brecq") o.config.brecq = o.config.adaround = true;
    else if (f == "--qdrop") o.config.qdrop = detail::parse_probability(f, value()), qdrop_given = true;
    else if (f == "--lsq") o.config.act_lr = detail::parse_rate(f, value()), lsq_given = true;
    else if (f == "--adaround-iters") o.config.adaround_iters = detail::parse_long(f, value(), 1, 1L << 30), adaround_given = true;
    else if (f == "--adaround-images") o.config.adaround_images = detail::parse_long(f, value(), 1, 1L << 30), adaround_given = true;
    else if (f == "--adaround-seconds") o.config.adaround_seconds = detail::parse_seconds(f, value()), adaround_given = true;
    else if (f == "--adaround-output") o.config.adaround_relu = choice({"linear", "relu"}) == 1, output_given = true;
    else if (f == "--bias-corr-a-images") o.config.bias_corr_a_images = detail::parse_long(f, value(), 1, 1L << 40);
    else if (f == "--bit-alloc-rule") o.config.rule = static_cast<bit_rule>(choice({"paper", "exact"})), method_given = true;
    else if (f == "--edge-act") o.config.edge = static_cast<edge_mode>(choice({"minmax", "aciq"})), method_given = true;
    else if (f == "--aciq-alphas") o.config.alphas = static_cast<alpha_mode>(choice({"reference", "exact"})), method_given = true;
    else if (f == "--calib-stats") o.protocol = static_cast<stats_protocol>(choice({"image", "batch", "pooled"}));
    else if (f == "--calib-batch") o.calib_batch = static_cast<int>(detail::parse_long(f, value(), 1, 1 << 16)), calib_batch_given = true;
    else if (f == "--calib-seeds") o.calib_seeds = static_cast<int>(detail::parse_long(f, value(), 1, 100));
    else if (f == "--bit-alloc-w") o.config.bit_alloc_w = true;
    else if (f == "--bit-alloc-a") o.config.bit_alloc_a = true;
    else if (f == "--bit-alloc-a-scope") o.config.bit_alloc_a_add = choice({"conv", "add"}) == 1, scope_given = true;
    else if (f == "--bias-corr-w") o.config.bias_corr_w = true;
    else if (f == "--var-corr-w") o.config.var_corr_w = true;
    else if (f == "--per-tensor-a") o.config.per_tensor_a = true;
    else if (f == "--quantize-first-last") o.config.quantize_first_last = true;
    else if (f == "--table") {
      o.table = true;
      if (i + 1 < a.size() && (a[i + 1] == "paper" || a[i + 1] == "beyond"))  // optional value
        o.tables = a[++i] == "paper" ? table_kind::paper : table_kind::beyond;
    }
    else if (f == "--no-progress") o.progress = false;
    else if (f == "--device") o.cuda = choice({"cpu", "cuda"}) == 1;
    else if (f == "--limit") o.limit = detail::parse_long(f, value(), 1, 1L << 40);
    else if (f == "--calib-limit") o.calib_limit = detail::parse_long(f, value(), 1, 1L << 40);
    else if (f == "--batch") o.batch = static_cast<int>(detail::parse_long(f, value(), 1, 1 << 16));
    else if (f == "--threads") o.threads = static_cast<int>(detail::parse_long(f, value(), 1, 1024));
    else if (f == "--help" || f == "-h") throw ptq::error(std::string("help\n") + usage());
    else throw ptq::error("unknown argument '" + f + "' (see --help)");
  }
  // None of the four inputs: the bundled model and data (other options still apply).
  o.defaulted = o.weights.empty() && o.images.empty() && o.labels.empty() && o.calib.empty();
  if (!o.export_path.empty()) o.engine_int = true;
  quant_config plain;
  // An explicit --wbits / --abits is a configuration, even 32 / 32 (the FP32 row alone).
  o.config_given = bits_given || o.config.json() != plain.json();
  if (o.config_given) o.config.name = describe(o.config);
  if (!o.defaulted) {
    for (const auto& [flag, path] : {std::pair<const char*, const std::string*>{"--weights", &o.weights},
                                     {"--images", &o.images}, {"--labels", &o.labels}, {"--calib", &o.calib}})
      if (path->empty() && !(o.exported() && path == &o.calib))
        throw ptq::error(std::string(flag) + " is required (see --help)");
    if (o.exported() && (o.config_given || o.table || !o.calib.empty() || !o.export_path.empty() || !o.dump.empty() ||
                         o.calib_seeds > 1))
      throw ptq::error("--weights " + o.weights + " is an exported integer model (*.ptq.npz): its configuration is "
                       "fixed, so it takes only --images, --labels, --limit, --batch, --threads, --json");
    if (o.exported()) o.engine_int = true;
    if (!o.models.empty()) throw ptq::error("--model selects a bundled model: it cannot be used with --weights");
  }
  if (o.config.bit_alloc_w && !o.config.weights_quantized())
    throw ptq::error("--bit-alloc-w needs --wbits below 32");
  if (o.config.bit_alloc_a && !o.config.activations_quantized())
    throw ptq::error("--bit-alloc-a needs --abits below 32");
  if (scope_given && (!o.config.bit_alloc_a || o.config.per_tensor_a))
    throw ptq::error("--bit-alloc-a-scope says which channels --bit-alloc-a allocates together: it needs --bit-alloc-a "
                     "with per-channel activations (not --per-tensor-a)");
  if ((o.config.bias_corr_w || o.config.var_corr_w) && !o.config.weights_quantized())
    throw ptq::error("--bias-corr-w / --var-corr-w need --wbits below 32");
  if (dist_given && !o.config.searched())
    throw ptq::error("--clip-dist says where --clip search|choose starts: it needs --clip search or --clip choose");
  if (sample_given && !o.config.searched() && !(o.table && o.tables == table_kind::beyond))
    throw ptq::error("--sample-values sizes the sample of --clip search|choose: it needs one of them (or --table beyond)");
  if (o.config.searched() && !o.config.activations_quantized())
    throw ptq::error(std::string("--clip ") + clip_name(o.config.clip) + " clips activations: it needs --abits below 32");
  if (o.config.bias_corr_a && !o.config.weights_quantized() && !o.config.activations_quantized())
    throw ptq::error("--bias-corr-a corrects what quantization shifts: it needs --wbits or --abits below 32");
  if (o.config.clip_w_search && !o.config.weights_quantized())
    throw ptq::error("--clip-w search sets the weights' ranges: it needs --wbits below 32");
  if (o.config.bias_corr_a_images > 0 && !o.config.bias_corr_a)
    throw ptq::error("--bias-corr-a-images needs --bias-corr-a");
  if (o.config.adaround && !o.config.weights_quantized())
    throw ptq::error(std::string(o.config.brecq ? "--brecq" : "--adaround") +
                     " learns how to round weights: it needs --wbits below 32");
  if (output_given && (!o.config.adaround || o.config.brecq))
    throw ptq::error("--adaround-output needs --adaround (per conv; --brecq reconstructs a block's output after its ReLU)");
  if (qdrop_given && !o.config.brecq) throw ptq::error("--qdrop needs --brecq");
  if (lsq_given && !o.config.brecq) throw ptq::error("--lsq needs --brecq");
  if (lsq_given && !o.config.activations_quantized())
    throw ptq::error("--lsq learns the activation quantizers' steps: it needs --abits below 32");
  if (adaround_given && !o.config.adaround)
    throw ptq::error("--adaround-iters / --adaround-images / --adaround-seconds need --adaround or --brecq");
  if (calib_batch_given && o.protocol != stats_protocol::batch)
    throw ptq::error("--calib-batch needs --calib-stats batch");
  if (!o.dump.empty() && (o.table || (o.defaulted && !o.config_given) || o.calib_seeds > 1))
    throw ptq::error("--dump FILE.npz writes one configuration: give its flags, without --table or --calib-seeds");
  if (!o.dump.empty() && o.cuda) throw ptq::error("--dump is not supported with --device cuda");
  if (!o.export_path.empty() && (o.table || (o.defaulted && !o.config_given) || o.calib_seeds > 1 || o.models.size() > 1))
    throw ptq::error("--export FILE.ptq.npz writes one configuration of one model: give its flags (and --model), "
                     "without --table or --calib-seeds");
  if (o.engine_int && o.config_given && (o.config.wbits > 8 || o.config.abits > 8))
    throw ptq::error("--engine int runs weights and activations of at most 8 bits (--wbits " +
                     std::to_string(o.config.wbits) + " --abits " + std::to_string(o.config.abits) + ")");
  if (o.engine_int && o.cuda) throw ptq::error("--engine int runs on the CPU: drop --device cuda");
  if (o.fold_bits > 0 && o.exported())
    throw ptq::error("--fold-bits sets how an integer model is built: --weights " + o.weights +
                     " is an exported one, built already");
  if (o.fold_bits > 0 && !o.engine_int)
    throw ptq::error("--fold-bits sets how the integer model is built: it needs --engine int or --export");
  if (o.table && method_given)
    throw ptq::error("--table fixes each row's method (--bit-alloc-rule, --edge-act, --aciq-alphas): drop them");
  return o;
}

// The project's best configuration at W<wbits>A<abits>: what ptq adds to the paper's method
// (Gaussian prior with the exact optimum for each channel's bits, the exact bit allocation,
// bias and variance correction), chosen on held-out training images, never on the test set:
// of 11 candidates (tools/select_config.py) it had the lowest gap to FP32 averaged over
// W4A4 and W3A3 on both bundled models (README, "How the best configuration was chosen").
inline quant_config best_config(int wbits, int abits) {
  quant_config c;
  c.wbits = wbits;
  c.abits = abits;
  c.clip = clip_mode::gauss;
  c.bit_alloc_a = c.bit_alloc_w = true;
  c.bias_corr_w = c.var_corr_w = true;
  c.rule = bit_rule::exact;
  c.alphas = alpha_mode::exact;
  c.edge = edge_mode::minmax;
  c.name = "W" + std::to_string(wbits) + "A" + std::to_string(abits) + " ptq best: " + describe_method(c);
  return c;
}

// The paper's ablation (Banner et al. 2019, Table 1 shape) with the paper's Laplace prior and
// the reference's choices (paper bit-allocation rule, min/max edge activations, rounded ACIQ
// tables), then the project's best configuration beside it, marked as such (README: how it was
// chosen, on held-out training images). Every row's name says its prior and rule.
inline std::vector<quant_config> ablation_table() {
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
  aciq_row.name = "W4A4 +ACIQ (Laplace)";
  aciq_row.clip = clip_mode::laplace;
  t.push_back(aciq_row);
  quant_config baa = aciq_row;
  baa.name = aciq_row.name + " +bit alloc A (paper)";
  baa.bit_alloc_a = true;
  t.push_back(baa);
  quant_config baw = baa;
  baw.name = "W4A4 +ACIQ (Laplace) +bit alloc A, W (paper)";
  baw.bit_alloc_w = true;
  t.push_back(baw);
  quant_config full = baw;
  full.name = "W4A4 paper's full method (+bias corr W)";
  full.bias_corr_w = true;
  t.push_back(full);
  quant_config w4a8 = full;
  w4a8.name = "W4A8 paper's full method";
  w4a8.abits = 8;
  t.push_back(w4a8);
  quant_config w8a4 = full;
  w8a4.name = "W8A4 paper's full method";
  w8a4.wbits = 8;
  t.push_back(w8a4);
  t.push_back(best_config(4, 4));
  return t;
}

// The paper's full method at W<wbits>A<abits> (Laplace, bit allocation for weights and, per
// channel, activations, bias correction of weights: the reference's rules and tables), per
// channel or per tensor activations (no activation bit allocation per tensor: one grid).
inline quant_config paper_full(int wbits, int abits, bool per_tensor) {
  quant_config c;
  c.wbits = wbits;
  c.abits = abits;
  c.clip = clip_mode::laplace;
  c.bit_alloc_w = true;
  c.bit_alloc_a = !per_tensor;
  c.bias_corr_w = true;
  c.per_tensor_a = per_tensor;
  c.name = "W" + std::to_string(wbits) + "A" + std::to_string(abits) + " paper's full method" +
           (per_tensor ? ", per-tensor activations" : "");
  return c;
}

// The paper's full method with issue 12's data-driven steps (data_steps.hpp): clipping searched
// on the calibration sample from the Laplace ACIQ start (search), the empirical bias correction
// of activations (bias_a), or both.
inline quant_config with_data_steps(quant_config c, bool search, bool bias_a) {
  if (search) c.clip = clip_mode::search, c.name += " +clip search";
  if (bias_a) c.bias_corr_a = true, c.name += " +bias corr A";
  return c;
}

// The configuration with learned rounding of the conv weights (--adaround, its defaults).
inline quant_config with_adaround(quant_config c) {
  c.adaround = true;
  c.name += " +adaround";
  return c;
}

// The configuration with block-wise learned rounding (--brecq, its defaults: no QDrop).
inline quant_config with_brecq(quant_config c) {
  c.adaround = c.brecq = true;
  c.name += " +brecq";
  return c;
}

// --table beyond: the paper's ablation (ablation_table), then per-tensor activations and the
// data-driven steps beside the paper's full method: at W4A4 per channel and per tensor, W3A3 and
// W2A4 (per channel), each + clip search, + bias corr A, + both, + AdaRound, + all three, + both steps and
// block-wise learned rounding (BRECQ). The defaults (search from
// Laplace, 4096 sample values per channel, every calibration image for the correction) and the
// best per-tensor configuration (the paper's full method per tensor + clip search + bias corr A,
// over + clip choice and over ptq's best configuration per tensor with both steps) were chosen
// on held-out training images 50 000-52 999 (docs/figures/data_steps_heldout.txt).
inline std::vector<quant_config> beyond_table() {
  std::vector<quant_config> t = ablation_table();
  struct width {
    int w, a;
    bool per_tensor;
  };
  for (const width& x : {width{4, 4, false}, width{4, 4, true}, width{3, 3, false}, width{2, 4, false}}) {
    const quant_config base = paper_full(x.w, x.a, x.per_tensor);
    if (x.per_tensor || x.w != 4) t.push_back(base);  // W4A4 per channel is in the ablation already
    t.push_back(with_data_steps(base, true, false));
    t.push_back(with_data_steps(base, false, true));
    t.push_back(with_data_steps(base, true, true));
    if (x.per_tensor) t.back().name += " (ptq best per tensor)";
    // Learned rounding (reconstruct.hpp; int_reconstruct.hpp on the integer engine): alone, then
    // with both data-driven steps.
    t.push_back(with_adaround(base));
    t.push_back(with_adaround(with_data_steps(base, true, true)));
    // Block-wise (block_reconstruct.hpp; int_block_reconstruct.hpp) with both steps.
    t.push_back(with_brecq(with_data_steps(base, true, true)));
  }
  return t;
}

}  // namespace ptq_example
