// main.cpp: resnet_ptq: FP32 ResNet from .npz -> calibrated W4A4 with ACIQ, bit allocation and bias correction.
//
// resnet_ptq --weights W.npz --images X.npy --labels Y.npy --calib C.npy [options]  (see --help)
// resnet_ptq            the paper's ablation table on the bundled Fashion-MNIST ResNet-50
#include <cmath>
#include <cstdio>
#include <filesystem>
#include <fstream>
#include <sstream>
#include <string>
#include <vector>

#include <ptq/io/npy.hpp>

#include "idx.hpp"
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
void check_output_path(const std::string& path) {
  std::error_code ec;
  if (std::filesystem::is_directory(path, ec)) throw ptq::error("--json " + path + ": is a directory");
  const std::filesystem::path parent = std::filesystem::path(path).parent_path();
  if (!parent.empty() && !std::filesystem::is_directory(parent, ec))
    throw ptq::error("--json " + path + ": the directory " + parent.string() + " does not exist");
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

int run(const options& o) {
  const std::string dir = PTQ_EXAMPLE_DIR;
  const std::string weights = o.defaulted ? dir + "/fashion_resnet50.npz" : o.weights;
  if (!o.json.empty()) check_output_path(o.json);
  if (o.cuda) {
    std::string why;
    if (!resnet_device::cuda_device_available(&why)) throw ptq::error("--device cuda: " + why);
    std::printf("--device cuda: %s (calibration statistics and activation quantization; convs on the CPU)\n",
                why.c_str());
  }
  resnet net = for_flag("--weights", [&] { return resnet::load(weights); });
  for (const std::string& w : net.warnings()) std::fprintf(stderr, "resnet_ptq: warning: --weights %s: %s\n", weights.c_str(), one_line(w).c_str());
  net.set_threads(o.threads);

  dataset test, calib;
  std::vector<std::int64_t> labels;
  std::string data_name;
  if (o.defaulted) {
    const std::string meta_path = o.meta.empty() ? dir + "/fashion_resnet50.json" : o.meta;
    const std::string meta = read_text(meta_path);
    const std::vector<float> mean = json_numbers(meta, "normalization", "mean", meta_path);
    const std::vector<float> stdev = json_numbers(meta, "normalization", "std", meta_path);
    const fashion_mnist_split t10k = read_fashion_mnist("t10k"), train = read_fashion_mnist("train");
    const index n = o.limit > 0 ? std::min<index>(o.limit, t10k.images.count) : t10k.images.count;
    const index nc = o.calib_limit > 0 ? std::min<index>(o.calib_limit, train.images.count) : 512;
    test.storage = to_nchw(t10k.images, mean, stdev, 0, n);
    test.set = {test.storage.data(), n, static_cast<index>(mean.size()), 28, 28};
    calib.storage = to_nchw(train.images, mean, stdev, 0, nc);
    calib.set = {calib.storage.data(), nc, static_cast<index>(mean.size()), 28, 28};
    labels.assign(t10k.labels.begin(), t10k.labels.begin() + n);
    data_name = "Fashion-MNIST";
  } else {
    test = load_images(o.images, "--images", o.limit, net.input_channels());
    calib = load_images(o.calib, "--calib", o.calib_limit, net.input_channels());
    labels = load_labels(o.labels, test.set.count, test.in_file, net.classes());
    data_name = o.images;
  }
  const bool table = o.table || (o.defaulted && !o.config_given);
  std::printf("resnet_ptq: %s (%s, %zu convs, %td classes), %td test images of %s, %td calibration images\n",
              weights.c_str(), net.type() == block_type::bottleneck ? "bottleneck" : "basic", net.convs().size(),
              net.classes(), test.set.count, data_name.c_str(), calib.set.count);

  const std::vector<quant_config> configs = table ? ablation_table(o.config.clip == clip_mode::none ? clip_mode::gauss : o.config.clip) : std::vector<quant_config>{o.config};
  bool need_calibration = false, need_per_tensor = false;
  for (const auto& c : configs) {
    need_calibration |= c.activations_quantized();
    need_per_tensor |= c.activations_quantized() && c.per_tensor_a;
  }
  calibration cal;
  double calib_seconds = 0;
  if (need_calibration) {
    const auto t0 = std::chrono::steady_clock::now();
    cal = calibrate(net, calib.set, o.batch, o.progress, need_per_tensor, o.cuda);
    calib_seconds = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
    std::printf("calibrated on %td images in %.1f s\n", cal.images, calib_seconds);
  }

  std::printf("\n| configuration | top-1 | top-5 | seconds |\n|---|---|---|---|\n");
  std::ostringstream rows;
  for (std::size_t i = 0; i < configs.size(); ++i) {
    const quant_config& c = configs[i];
    const quantized_net q = quantize(net, cal, c);
    const accuracy a = evaluate(q, test.set, labels, o.batch, c.name, o.progress, o.threads, o.cuda);
    std::printf("| %s | %.2f | %.2f | %.1f |\n", c.name.c_str(), a.top1, a.top5, a.seconds);
    std::fflush(stdout);
    rows << (i ? ",\n" : "") << "  {\"top1\": " << a.top1 << ", \"top5\": " << a.top5 << ", \"images\": " << a.images
         << ", \"seconds\": " << a.seconds << ", \"config\": " << c.json() << "}";
  }
  if (!o.json.empty()) {
    std::ostringstream j;
    if (table)
      j << "{\"calibration_images\": " << cal.images << ", \"calibration_seconds\": " << calib_seconds
        << ", \"rows\": [\n" << rows.str() << "\n]}\n";
    else
      j << rows.str().substr(2) << "\n";
    write_atomically(o.json, j.str());
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
  } catch (const std::exception& e) {
    std::fprintf(stderr, "resnet_ptq: %s\n", one_line(e.what()).c_str());
    return 1;
  }
}
