// main.cpp: resnet_ptq: FP32 ResNet from .npz -> calibrated W4A4 with ACIQ, bit allocation and bias correction.
//
// resnet_ptq --weights W.npz --images X.npy --labels Y.npy --calib C.npy [options]  (see --help)
// resnet_ptq            the paper's ablation table on the bundled Fashion-MNIST ResNet-50 and ResNet-18
#include <chrono>
#include <cmath>
#include <map>
#include <utility>
#include <cstdio>
#include <filesystem>
#include <fstream>
#include <sstream>
#include <string>
#include <vector>

#include <ptq/io/npy.hpp>
#include <ptq/io/npz.hpp>

#include "idx.hpp"
#include "int_engine.hpp"
#include "int_io.hpp"
#include "int_model.hpp"
#include "options.hpp"
#include "pipeline.hpp"
#include "resnet.hpp"

#ifndef PTQ_EXAMPLE_DIR
#define PTQ_EXAMPLE_DIR "examples/resnet50"
#endif

namespace {

using namespace ptq_example;
using ptq::index;

// A message as one line of stderr: control characters (a newline in an .npz key) escaped.
std::string one_line(const std::string& s) {
  std::string out;
  for (const char ch : s) {
    const auto c = static_cast<unsigned char>(ch);
    if (c >= 0x20 && c != 0x7f) {
      out += ch;
    } else {
      const char hex[] = "0123456789abcdef";
      out += "\\x";
      out += hex[c >> 4];
      out += hex[c & 15];
    }
  }
  return out;
}

// Reads the numbers of `"key": [a, b, ...]` (or `"key": a`) inside the object `"section": {...}` of a small JSON file.
std::vector<float> json_numbers(const std::string& text, const std::string& section, const std::string& key,
                                const std::string& file) {
  const auto s = text.find("\"" + section + "\"");
  const auto k = s == std::string::npos ? s : text.find("\"" + key + "\"", s);
  if (k == std::string::npos) throw ptq::error(file + ": no \"" + section + "\": {\"" + key + "\": ...}");
  std::size_t i = text.find(':', k) + 1;
  while (i < text.size() && (text[i] == ' ' || text[i] == '[')) ++i;
  std::vector<float> out;
  while (i < text.size()) {
    char* end = nullptr;
    const float v = std::strtof(text.c_str() + i, &end);
    if (end == text.c_str() + i) break;
    out.push_back(v);
    i = static_cast<std::size_t>(end - text.c_str());
    while (i < text.size() && (text[i] == ' ' || text[i] == ',')) ++i;
  }
  if (out.empty()) throw ptq::error(file + ": \"" + key + "\" has no numbers");
  return out;
}

std::string read_text(const std::string& path) {
  std::ifstream f(path);
  if (!f) throw ptq::error(path + ": cannot open");
  std::stringstream s;
  s << f.rdbuf();
  return s.str();
}

// --json FILE must be writable where it is: not a directory, in an existing directory.
// Checked before any work, so that a bad path fails at once.
void check_output_path(const std::string& path, const std::string& flag) {
  std::error_code ec;
  if (std::filesystem::is_directory(path, ec)) throw ptq::error(flag + " " + path + ": is a directory");
  const std::filesystem::path parent = std::filesystem::path(path).parent_path();
  if (!parent.empty() && !std::filesystem::is_directory(parent, ec))
    throw ptq::error(flag + " " + path + ": the directory " + parent.string() + " does not exist");
}

// Writes `text` to `path` through a temporary file and a rename: never a partial file.
void write_atomically(const std::string& path, const std::string& text) {
  const std::string tmp = path + ".tmp";
  {
    std::ofstream f(tmp, std::ios::trunc);
    if (!f || !(f << text) || !f.flush()) throw ptq::error(tmp + ": cannot write");
  }
  if (std::rename(tmp.c_str(), path.c_str()) != 0) {
    std::remove(tmp.c_str());
    throw ptq::error(path + ": cannot rename " + tmp + " to it");
  }
}

struct dataset {
  std::vector<float> storage;
  image_set set;
  index in_file = 0;  // images in the file (set.count: the first --limit of them)
};

// Runs f(); a ptq::error from it gets "FLAG: " in front, so the message names the argument.
template <class F>
auto for_flag(const std::string& flag, F&& f) -> decltype(f()) {
  try {
    return f();
  } catch (const ptq::error& e) {
    throw ptq::error(flag + ": " + e.what());
  }
}

// A float32 NCHW .npy (--images / --calib): at least one image of at least 1x1, every value finite.
dataset load_images(const std::string& path, const std::string& flag, long limit, index channels) {
  const ptq::io::array a = for_flag(flag, [&] { return ptq::io::read_npy(path); });
  if (a.type() != ptq::io::dtype::float32 || a.shape().size() != 4)
    throw ptq::error(flag + " " + path + ": expected float32 NCHW (rank 4), got " +
                     std::to_string(a.shape().size()) + "-d " + ptq::io::dtype_name(a.type()));
  if (a.shape()[1] != channels)
    throw ptq::error(flag + " " + path + ": " + std::to_string(a.shape()[1]) + " channels, the network takes " +
                     std::to_string(channels));
  if (a.shape()[0] < 1 || a.shape()[2] < 1 || a.shape()[3] < 1)
    throw ptq::error(flag + " " + path + ": shape " + ptq::io::detail::shape_string(a.shape()) + " has no images");
  dataset d;
  d.in_file = a.shape()[0];
  const index n = limit > 0 ? std::min<index>(limit, a.shape()[0]) : a.shape()[0];
  const index per = a.shape()[1] * a.shape()[2] * a.shape()[3];
  d.storage.assign(a.data<float>(), a.data<float>() + n * per);
  for (std::size_t i = 0; i < d.storage.size(); ++i)
    if (!std::isfinite(d.storage[i]))
      throw ptq::error(flag + " " + path + ": element " + std::to_string(i) + " = " + std::to_string(d.storage[i]) +
                       " is not finite");
  d.set = {d.storage.data(), n, a.shape()[1], a.shape()[2], a.shape()[3]};
  return d;
}

// One int64 / int32 label per image of --images (in_file of them); the first `count` are used.
std::vector<std::int64_t> load_labels(const std::string& path, index count, index in_file, index classes) {
  const ptq::io::array a = for_flag("--labels", [&] { return ptq::io::read_npy(path); });
  if ((a.type() != ptq::io::dtype::int64 && a.type() != ptq::io::dtype::int32) || a.shape().size() != 1)
    throw ptq::error("--labels " + path + ": expected a 1-d int64 or int32 array, got " +
                     std::to_string(a.shape().size()) + "-d " + ptq::io::dtype_name(a.type()));
  if (a.shape()[0] != in_file)
    throw ptq::error("--labels " + path + ": " + std::to_string(a.shape()[0]) + " labels for the " +
                     std::to_string(in_file) + " images of --images");
  std::vector<std::int64_t> y = a.to<std::int64_t>();
  y.resize(static_cast<std::size_t>(count));
  for (std::size_t i = 0; i < y.size(); ++i)
    if (y[i] < 0 || y[i] >= classes)
      throw ptq::error("--labels " + path + ": label[" + std::to_string(i) + "] = " + std::to_string(y[i]) +
                       " is outside [0, " + std::to_string(classes) + ")");
  return y;
}

// The inputs of one model's run: the network, the test images and labels, and the pool
// the calibration sets are drawn from.
struct model_run {
  std::string name, weights;
  resnet net;
  dataset test, calib;          // calib: every image the calibration sets are drawn from
  std::vector<std::int64_t> labels;
  index calib_size = 0;         // images per calibration set
  std::string calib_source;     // "training images" or the --calib path
};

// Mean and sample standard deviation.
std::pair<double, double> mean_std(const std::vector<double>& v) {
  double m = 0;
  for (double x : v) m += x;
  m /= static_cast<double>(v.size());
  double s = 0;
  for (double x : v) s += (x - m) * (x - m);
  return {m, v.size() > 1 ? std::sqrt(s / static_cast<double>(v.size() - 1)) : 0.0};
}

std::string json_list(const std::vector<double>& v) {
  std::ostringstream s;
  s << "[";
  for (std::size_t i = 0; i < v.size(); ++i) s << (i ? ", " : "") << v[i];
  return s.str() + "]";
}

// --dump: the configuration's statistics, activation ranges and bits, final weights and
// logits, keyed by the state_dict's module names (the layout tools/reference_ptq.py writes).
void write_dump(const std::string& path, const quantized_net& q, const calibration& cal,
                const ptq::row_matrix<float>& logits) {
  std::map<std::string, ptq::io::array> d;
  auto vec = [](const Eigen::VectorXd& v, const std::string& key) {
    return ptq::io::array::from(v.data(), {v.size()}, key);
  };
  auto add_act = [&](const std::string& name, const act_quantizer& a) {
    if (!a.active) return;
    d["act/" + name + "/lo"] = vec(a.range.lo, name);
    d["act/" + name + "/hi"] = vec(a.range.hi, name);
    const std::vector<std::int32_t> b(a.bits.data(), a.bits.data() + a.bits.size());
    d["act/" + name + "/bits"] = ptq::io::array::from(b.data(), {a.bits.size()}, name);
  };
  d["logits"] = ptq::io::array::from(logits.data(), {logits.rows(), logits.cols()}, "logits");
  const auto& convs = q.net.convs();
  for (std::size_t i = 0; i < convs.size(); ++i) {
    const conv_layer& L = convs[i];
    d["weight/" + L.name] = ptq::io::array::from(L.weight.data(), {L.K, L.C, L.R, L.S}, L.name);
    if (!cal.per_channel.empty()) {
      const ptq::channel_stats& st = cal.per_channel[i];
      for (const auto& [stat, v] : {std::pair<const char*, const Eigen::VectorXd*>{"min", &st.min}, {"max", &st.max},
                                    {"mean", &st.mean}, {"b", &st.b}, {"std", &st.std}})
        d["stats/" + L.name + "/" + stat] = vec(*v, L.name);
    }
    if (!q.act.empty()) add_act(L.name, q.act[i]);
  }
  const linear_layer& fc = q.net.fc();
  d["weight/fc"] = ptq::io::array::from(fc.weight.data(), {fc.weight.rows(), fc.weight.cols()}, "fc");
  add_act("maxpool", q.pool);
  add_act("features", q.features);
  add_act("logits", q.logits);
  ptq::io::write_npz(path, d);
}

// The table (or one configuration) on one model, over calib_seeds disjoint calibration
// sets; returns the model's JSON object (or, for one configuration, its row).
std::string run_model(model_run& m, const options& o, bool table, bool single_row) {
  const std::vector<quant_config> configs =
      table ? (o.tables == table_kind::beyond ? beyond_table() : ablation_table()) : std::vector<quant_config>{o.config};
  bool need_calibration = false, need_per_tensor = false, need_sample = false;
  for (const auto& c : configs) {
    need_calibration |= c.activations_quantized() || c.bias_corr_a;
    need_per_tensor |= c.activations_quantized() && c.per_tensor_a;
    need_sample |= c.activations_quantized() && c.searched();
  }
  need_calibration |= !o.dump.empty();
  const index sets = o.calib_seeds;
  if (m.calib_size * sets > m.calib.set.count)
    throw ptq::error("--calib-seeds " + std::to_string(sets) + ": " + std::to_string(sets) + " disjoint sets of " +
                     std::to_string(m.calib_size) + " images need " + std::to_string(m.calib_size * sets) + ", " +
                     m.calib_source + " has " + std::to_string(m.calib.set.count));
  std::printf("\nresnet_ptq: %s: %s (%s, %zu convs, %td classes), %td test images, calibration: %td set%s of %td %s, "
              "statistics per %s%s\n",
              m.name.c_str(), m.weights.c_str(), m.net.type() == block_type::bottleneck ? "bottleneck" : "basic",
              m.net.convs().size(), m.net.classes(), m.test.set.count, sets, sets > 1 ? "s" : "", m.calib_size,
              m.calib_source.c_str(), protocol_name(o.protocol),
              o.protocol == stats_protocol::batch ? (" of " + std::to_string(o.calib_batch)).c_str() : "");
  std::vector<std::vector<accuracy>> acc(configs.size()), acc_int(configs.size()), acc_isim(configs.size());
  std::vector<double> search_seconds(configs.size()), bias_a_seconds(configs.size()), int_build_seconds(configs.size());
  std::vector<double> adaround_seconds(configs.size()), int_adaround_seconds(configs.size());
  double calib_seconds = 0;
  // --engine int: which rows run on the integer engine (weights and activations of at most 8 bits).
  auto integer_row = [&](const quant_config& c) {
    return o.engine_int && c.activations_quantized() && c.weights_quantized() && c.wbits <= 8 && c.abits <= 8;
  };
  for (index k = 0; k < sets; ++k) {
    image_set cs = m.calib.set;
    cs.data = m.calib.set.image(k * m.calib_size);
    cs.count = m.calib_size;
    calibration cal;
    if (need_calibration) {
      const auto t0 = std::chrono::steady_clock::now();
      calibration_options co;
      co.protocol = o.protocol;
      co.calib_batch = o.calib_batch;
      co.forward_batch = o.batch;
      co.per_tensor = need_per_tensor;
      co.progress = o.progress;
      co.cuda = o.cuda;
      co.sample_values = need_sample ? o.sample_values : 0;
      cal = calibrate(m.net, cs, co);
      const double sec = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
      calib_seconds += sec;
      std::printf("calibration set %td: %s %td..%td, %.1f s\n", k, m.calib_source.c_str(),
                  k * m.calib_size, (k + 1) * m.calib_size - 1, sec);
    }
    int_calibration ical;
    if (o.engine_int) ical = calibrate_int(m.net, cs, o.batch);
    if (sets == 1 && o.engine_int)
      std::printf("\n| configuration | top-1 | top-5 | seconds | int engine top-1 | int scheme (float) top-1 | int seconds |"
                  "\n|---|---|---|---|---|---|---|\n");
    else if (sets == 1)
      std::printf("\n| configuration | top-1 | top-5 | seconds |\n|---|---|---|---|\n");
    for (std::size_t i = 0; i < configs.size(); ++i) {
      const quant_config& c = configs[i];
      const quantized_net q = quantize(m.net, cal, c);
      search_seconds[i] += q.search_seconds;
      bias_a_seconds[i] += q.bias_corr_a_seconds;
      adaround_seconds[i] += q.adaround_seconds;
      if (c.adaround)
        std::printf("  %s: %s %.1f s, held-out reconstruction error summed over %s %.6g (round to nearest %.6g)\n",
                    c.name.c_str(), c.brecq ? "brecq" : "adaround", q.adaround_seconds, c.brecq ? "units" : "convs",
                    q.adaround_error, q.adaround_rtn_error);
      if (c.searched() && c.activations_quantized())
        std::printf("  %s: clip search %.1f s, sample MSE summed over layers %.6g (ACIQ start %.6g)\n",
                    c.name.c_str(), q.search_seconds, q.clip_mse, q.aciq_mse);
      if (c.bias_corr_a)
        std::printf("  %s: bias corr A %.1f s\n", c.name.c_str(), q.bias_corr_a_seconds);
      ptq::row_matrix<float> logits;
      const accuracy a = evaluate(q, m.test.set, m.labels, o.batch, c.name, o.progress, o.threads, o.cuda,
                                  o.dump.empty() ? nullptr : &logits);
      if (!o.dump.empty()) write_dump(o.dump, q, cal, logits);
      acc[i].push_back(a);
      if (integer_row(c)) {
        const auto tb = std::chrono::steady_clock::now();
        int_options io;
        io.fold_bits = o.fold_bits;
        const int_model im = build_int_model(m.net, cal, ical, c, io, &q);
        int_build_seconds[i] += std::chrono::duration<double>(std::chrono::steady_clock::now() - tb).count();
        int_adaround_seconds[i] += im.adaround_seconds;
        if (c.adaround && im.adaround_seconds > 0)
          std::printf("  %s: integer %s %.1f s, held-out reconstruction error summed over %s %.6g (round to "
                      "nearest %.6g)\n", c.name.c_str(), c.brecq ? "brecq" : "adaround", im.adaround_seconds,
                      c.brecq ? "units" : "convs", im.adaround_error, im.adaround_rtn_error);
        if (!o.export_path.empty()) write_int_model(o.export_path, im);
        const int_engine e(im, o.threads);
        const index H = m.test.set.H, W = m.test.set.W;
        acc_int[i].push_back(evaluate_forward(
            [&](const Eigen::Map<const ptq::row_matrix<float>>& x, index) { return e.forward(x, H, W); },
            im.classes(), m.test.set, m.labels, o.batch, c.name + " (int)", o.progress));
        const resnet sim = simulation(m.net, im);
        acc_isim[i].push_back(evaluate_forward(
            [&](const Eigen::Map<const ptq::row_matrix<float>>& x, index) { return simulate(sim, im, x, H, W); },
            im.classes(), m.test.set, m.labels, o.batch, c.name + " (int scheme)", o.progress));
      }
      if (sets == 1 && !acc_int[i].empty())
        std::printf("| %s | %.2f | %.2f | %.1f | %.2f | %.2f | %.1f |\n", c.name.c_str(), a.top1, a.top5, a.seconds,
                    acc_int[i].back().top1, acc_isim[i].back().top1, acc_int[i].back().seconds);
      else if (sets == 1 && o.engine_int)
        std::printf("| %s | %.2f | %.2f | %.1f | - | - | - |\n", c.name.c_str(), a.top1, a.top5, a.seconds);
      else if (sets == 1)
        std::printf("| %s | %.2f | %.2f | %.1f |\n", c.name.c_str(), a.top1, a.top5, a.seconds);
      std::fflush(stdout);
    }
  }
  if (sets > 1) std::printf("\n| configuration | top-1 (mean ± std over %td sets) | top-5 (mean) | top-1 per set |\n|---|---|---|---|\n", sets);
  std::ostringstream rows;
  for (std::size_t i = 0; i < configs.size(); ++i) {
    std::vector<double> t1, t5;
    double seconds = 0;
    for (const accuracy& a : acc[i]) {
      t1.push_back(a.top1);
      t5.push_back(a.top5);
      seconds += a.seconds;
    }
    const auto [m1, s1] = mean_std(t1);
    const auto [m5, s5] = mean_std(t5);
    std::vector<double> ti, ts;
    double int_seconds = 0;
    for (const accuracy& a : acc_int[i]) ti.push_back(a.top1), int_seconds += a.seconds;
    for (const accuracy& a : acc_isim[i]) ts.push_back(a.top1);
    if (sets > 1) {
      std::printf("| %s | %.2f ± %.2f | %.2f |", configs[i].name.c_str(), m1, s1, m5);
      for (std::size_t k = 0; k < t1.size(); ++k) std::printf("%s%.2f", k ? ", " : " ", t1[k]);
      std::printf(" |");
      if (!ti.empty()) {
        const auto [mi, si] = mean_std(ti);
        const auto [ms, ss] = mean_std(ts);
        std::printf(" int engine %.2f ± %.2f, int scheme (float) %.2f ± %.2f |", mi, si, ms, ss);
      }
      std::printf("\n");
    }
    rows << (i ? ",\n" : "") << "  {\"top1\": " << m1 << ", \"top1_std\": " << s1 << ", \"top1_per_set\": "
         << json_list(t1);
    if (!ti.empty())
      rows << ", \"int_top1\": " << mean_std(ti).first << ", \"int_top1_std\": " << mean_std(ti).second
           << ", \"int_top1_per_set\": " << json_list(ti) << ", \"int_scheme_top1\": " << mean_std(ts).first
           << ", \"int_scheme_top1_per_set\": " << json_list(ts)
           << ", \"int_seconds\": " << int_seconds / static_cast<double>(sets)
           << ", \"int_build_seconds\": " << int_build_seconds[i] / static_cast<double>(sets)
           << ", \"int_fold_bits\": " << o.fold_bits;
    if (!ti.empty() && configs[i].adaround)
      rows << ", \"int_adaround_seconds\": " << int_adaround_seconds[i] / static_cast<double>(sets);
    if (configs[i].searched() && configs[i].activations_quantized())
      rows << ", \"search_seconds\": " << search_seconds[i] / static_cast<double>(sets);
    if (configs[i].bias_corr_a) rows << ", \"bias_corr_a_seconds\": " << bias_a_seconds[i] / static_cast<double>(sets);
    if (configs[i].adaround) rows << ", \"adaround_seconds\": " << adaround_seconds[i] / static_cast<double>(sets);
    rows << ", \"top5\": " << m5 << ", \"top5_std\": " << s5 << ", \"images\": "
         << m.test.set.count << ", \"seconds\": " << seconds / static_cast<double>(sets)
         << ", \"config\": " << configs[i].json() << "}";
  }
  std::fflush(stdout);
  if (single_row) return rows.str().substr(2);
  std::ostringstream j;
  j << "{\"model\": \"" << m.name << "\", \"weights\": \"" << m.weights << "\", \"calibration_images\": "
    << m.calib_size << ", \"calibration_sets\": " << sets << ", \"calibration_protocol\": \""
    << protocol_name(o.protocol) << "\", \"calibration_batch\": "
    << (o.protocol == stats_protocol::batch ? o.calib_batch : 0) << ", \"calibration_seconds\": " << calib_seconds
    << ", \"sample_values\": " << (need_sample ? o.sample_values : 0)
    << ", \"rows\": [\n" << rows.str() << "\n]}";
  return j.str();
}

// --weights FILE.ptq.npz: the exported integer model on --images / --labels.
int run_exported(const options& o) {
  if (!o.json.empty()) check_output_path(o.json, "--json");
  const int_model im = for_flag("--weights", [&] { return read_int_model(o.weights); });
  const dataset test = load_images(o.images, "--images", o.limit, im.input_channels());
  const std::vector<std::int64_t> labels = load_labels(o.labels, test.set.count, test.in_file, im.classes());
  const int_engine e(im, o.threads);
  const accuracy a = evaluate_forward(
      [&](const Eigen::Map<const ptq::row_matrix<float>>& x, index) { return e.forward(x, test.set.H, test.set.W); },
      im.classes(), test.set, labels, o.batch, "integer engine", o.progress);
  std::printf("\nresnet_ptq: %s: exported integer model (%s, %zu convs, %td classes), %td test images, kernel %s\n\n"
              "| model | int engine top-1 | top-5 | seconds |\n|---|---|---|---|\n| %s | %.2f | %.2f | %.1f |\n",
              o.weights.c_str(), im.type == block_type::bottleneck ? "bottleneck" : "basic", im.convs.size(),
              im.classes(), test.set.count, ptq::igemm::kernel_name(), o.weights.c_str(), a.top1, a.top5, a.seconds);
  if (!o.json.empty()) {
    std::ostringstream j;
    j << "{\"weights\": \"" << o.weights << "\", \"int_top1\": " << a.top1 << ", \"top5\": " << a.top5
      << ", \"images\": " << test.set.count << ", \"int_seconds\": " << a.seconds << "}\n";
    write_atomically(o.json, j.str());
  }
  return 0;
}

int run(const options& o) {
  const std::string dir = PTQ_EXAMPLE_DIR;
  if (!o.json.empty()) check_output_path(o.json, "--json");
  if (!o.dump.empty()) check_output_path(o.dump, "--dump");
  if (!o.export_path.empty()) check_output_path(o.export_path, "--export");
  if (o.cuda) {
    std::string why;
    if (!resnet_device::cuda_device_available(&why)) throw ptq::error("--device cuda: " + why);
    std::printf("--device cuda: %s (calibration statistics and activation quantization; convs on the CPU)\n",
                why.c_str());
  }
  if (o.exported()) return run_exported(o);
  std::vector<model_run> runs;
  if (o.defaulted) {
    const fashion_mnist_split t10k = read_fashion_mnist("t10k"), train = read_fashion_mnist("train");
    const std::vector<std::string> models =
        o.models.empty() ? std::vector<std::string>{"resnet50", "resnet18"} : o.models;
    for (const std::string& name : models) {
      model_run m;
      m.name = "fashion_" + name;
      m.weights = dir + "/fashion_" + name + ".npz";
      const std::string meta_path = o.meta.empty() ? dir + "/fashion_" + name + ".json" : o.meta;
      const std::string meta = read_text(meta_path);
      const std::vector<float> mean = json_numbers(meta, "normalization", "mean", meta_path);
      const std::vector<float> stdev = json_numbers(meta, "normalization", "std", meta_path);
      const index n = o.limit > 0 ? std::min<index>(o.limit, t10k.images.count) : t10k.images.count;
      m.calib_size = o.calib_limit > 0 ? std::min<index>(o.calib_limit, train.images.count) : 512;
      const index nc = std::min<index>(m.calib_size * o.calib_seeds, train.images.count);
      m.test.storage = to_nchw(t10k.images, mean, stdev, 0, n);
      m.test.set = {m.test.storage.data(), n, static_cast<index>(mean.size()), 28, 28};
      m.calib.storage = to_nchw(train.images, mean, stdev, 0, nc);
      m.calib.set = {m.calib.storage.data(), nc, static_cast<index>(mean.size()), 28, 28};
      m.labels.assign(t10k.labels.begin(), t10k.labels.begin() + n);
      m.calib_source = "Fashion-MNIST training images";
      runs.push_back(std::move(m));
    }
  } else {
    model_run m;
    m.name = m.weights = o.weights;
    runs.push_back(std::move(m));
  }
  std::vector<std::string> out;
  const bool table = o.table || (o.defaulted && !o.config_given);
  const bool single_row = !table && runs.size() == 1;
  for (model_run& m : runs) {
    m.net = for_flag("--weights", [&] { return resnet::load(m.weights); });
    for (const std::string& w : m.net.warnings())
      std::fprintf(stderr, "resnet_ptq: warning: --weights %s: %s\n", m.weights.c_str(), one_line(w).c_str());
    m.net.set_threads(o.threads);
    if (!o.defaulted) {
      m.test = load_images(o.images, "--images", o.limit, m.net.input_channels());
      m.calib = load_images(o.calib, "--calib", -1, m.net.input_channels());
      m.labels = load_labels(o.labels, m.test.set.count, m.test.in_file, m.net.classes());
      m.calib_size = o.calib_limit > 0 ? std::min<index>(o.calib_limit, m.calib.set.count)
                                       : m.calib.set.count / o.calib_seeds;
      m.calib_source = "--calib " + o.calib + " images";
      if (m.calib_size < 1)
        throw ptq::error("--calib-seeds " + std::to_string(o.calib_seeds) + ": --calib " + o.calib + " has only " +
                         std::to_string(m.calib.set.count) + " images");
    } else if (m.net.input_channels() != m.test.set.C) {
      throw ptq::error("--weights " + m.weights + ": takes " + std::to_string(m.net.input_channels()) +
                       " input channels, the data has " + std::to_string(m.test.set.C));
    }
    out.push_back(run_model(m, o, table, single_row));
  }
  if (!o.json.empty()) {
    std::string j;
    if (single_row) {
      j = out[0] + "\n";
    } else {
      j = "{\"models\": [\n";
      for (std::size_t i = 0; i < out.size(); ++i) j += (i ? ",\n" : "") + out[i];
      j += "\n]}\n";
    }
    write_atomically(o.json, j);
  }
  return 0;
}

}  // namespace

int main(int argc, char** argv) {
  try {
    return run(parse_options(argc, argv));
  } catch (const ptq::error& e) {
    const std::string what = e.what();
    if (what.rfind("help\n", 0) == 0) {
      std::fputs(what.c_str() + 5, stdout);
      return 0;
    }
    std::fprintf(stderr, "resnet_ptq: %s\n", one_line(what).c_str());
    return 2;
  } catch (const std::exception& e) {  // std::bad_alloc and the like: still exit 2, as documented
    std::fprintf(stderr, "resnet_ptq: %s\n", one_line(e.what()).c_str());
    return 2;
  }
}
