// model.hpp: a torchvision ResNet as data: its convs, blocks and fc, built from an .npz state_dict, BatchNorm folded.
//
// Architecture (torchvision v1.5), read from the keys and shapes alone:
//   stem    conv1 + bn1 + ReLU. A 7x7 conv1 is torchvision's ImageNet stem: stride 2,
//           pad 3, then max-pool 3x3 / stride 2 / pad 1. A 3x3 conv1 is the small-image
//           stem (CIFAR, MNIST): stride 1, pad 1, no max-pool.
//   stages  layer1..layerL (as many as the keys have; torchvision has 4), block j of
//           stage i is layer{i}.{j}. Blocks are Bottleneck when layer1.0.conv3.weight
//           exists, else BasicBlock. The first block of stages 2..L has stride 2, all
//           others stride 1.
//             BasicBlock:  y = ReLU(bn2(conv2_3x3(ReLU(bn1(conv1_3x3/s(x))))) + id(x))
//             Bottleneck:  y = ReLU(bn3(conv3_1x1(ReLU(bn2(conv2_3x3/s(ReLU(bn1(conv1_1x1(x)))))))) + id(x))
//           (the stride sits on the Bottleneck's 3x3: v1.5), id = downsample.0 (1x1 conv,
//           stride s) + downsample.1 (BatchNorm) when the keys have it, else x.
//   head    global average pool, fc (classes x features).
//   Widths, depth and input channels come from the weight shapes, so ResNet-18/34/50/
//   101/152, wide and narrow variants all load; every channel count is checked against
//   its neighbours.
//
// BatchNorm folding (eval mode, eps = 1e-5 as torchvision): with s_k = gamma_k / sqrt(var_k + eps),
//   w'[k, ...] = s_k * w[k, ...],   bias_k = beta_k - s_k * mean_k,
// computed in double and rounded once to float. Every conv then has a bias and no BN.
//
// Layers: convs() lists every conv in state_dict order (conv1; then per block conv1,
// conv2, [conv3], [downsample.0]), named by their state_dict prefix.
//
// Running it: resnet::forward and resnet::forward_ref are declared here and defined in
// float_engine.hpp (include that, or resnet.hpp, which includes both): a call with model.hpp
// alone is an inline function used but never defined (GCC and Clang warn; -Werror fails).
#pragma once

#include <Eigen/Core>

#include <algorithm>
#include <cctype>
#include <cmath>
#include <cstddef>
#include <functional>
#include <map>
#include <mutex>
#include <set>
#include <string>
#include <utility>
#include <vector>

#include <ptq/config.hpp>
#include <ptq/error.hpp>
#include <ptq/io/npz.hpp>
#include <ptq/layout.hpp>

namespace ptq_example {

using ptq::index;

// One conv with its BatchNorm folded in.
struct conv_layer {
  std::string name;                // state_dict prefix: "conv1", "layer1.0.conv2", "layer2.0.downsample.0"
  index K = 0, C = 0, R = 0, S = 0;  // output channels, input channels, kernel height, width
  index stride = 1, pad = 0;
  ptq::row_matrix<float> weight;   // K x (C*R*S), KCRS order, BN folded
  ptq::vector<float> bias;         // K
  bool feeds_relu = false;         // output goes straight into a ReLU (stem, block conv1/conv2)

  index out_size(index in) const { return (in + 2 * pad - R) / stride + 1; }  // R == S
};

// The classifier: logits = features * weight^T + bias.
struct linear_layer {
  std::string name = "fc";
  ptq::row_matrix<float> weight;  // classes x features
  ptq::vector<float> bias;        // classes
};

enum class block_type { basic, bottleneck };

// Indices into resnet::convs(); conv3 is -1 for a BasicBlock, downsample -1 for identity.
struct resnet_block {
  std::string name;  // "layer2.0"
  index conv1 = -1, conv2 = -1, conv3 = -1, downsample = -1;
  // The conv whose output the residual add takes: conv3 (Bottleneck) or conv2 (BasicBlock).
  index last() const { return conv3 >= 0 ? conv3 : conv2; }
};

using conv_hook = std::function<void(index layer, ptq::row_map<float> output)>;  // (N*K) x (H*W)
using features_hook = std::function<void(ptq::row_map<float> features)>;         // N x F
using pool_hook = std::function<void(ptq::row_map<float> output)>;               // (N*C) x (H*W)
using block_hook = std::function<void(index block, ptq::row_map<float> output)>; // (N*K) x (H*W), after add + ReLU

namespace detail {

// Per-thread scratch, grown on demand, reused across layers and forwards.
// (The float conv's, float_conv.hpp; defined here because resnet's workspace holds one.)
struct conv_scratch {
  std::vector<std::vector<float>> cols, acc;
  void reserve(int threads, std::size_t cols_floats, std::size_t acc_floats) {
    if (cols.size() < static_cast<std::size_t>(threads)) {
      cols.resize(threads);
      acc.resize(threads);
    }
    for (int t = 0; t < threads; ++t) {
      if (cols[t].size() < cols_floats) cols[t].resize(cols_floats);
      if (acc[t].size() < acc_floats) acc[t].resize(acc_floats);
    }
  }
};

inline void check_conv_layer(const conv_layer& L, const char* where) {
  ptq::detail::require(L.K >= 1 && L.C >= 1 && L.R >= 1 && L.S >= 1 && L.stride >= 1 && L.pad >= 0, where, "layer ",
                       L.name, ": geometry K = ", L.K, ", C = ", L.C, ", R = ", L.R, ", S = ", L.S,
                       ", stride = ", L.stride, ", pad = ", L.pad, " is invalid");
  ptq::detail::require(L.weight.rows() == L.K && L.weight.cols() == L.C * L.R * L.S, where, "layer ", L.name,
                       ": weight is ", L.weight.rows(), " x ", L.weight.cols(), ", expected ", L.K, " x ",
                       L.C * L.R * L.S);
  ptq::detail::require(L.bias.size() == L.K, where, "layer ", L.name, ": bias has ", L.bias.size(),
                       " elements, expected ", L.K);
}

inline std::string shape_text(const std::vector<index>& s) {
  std::string t = "[";
  for (std::size_t i = 0; i < s.size(); ++i) t += (i ? ", " : "") + std::to_string(s[i]);
  return t + "]";
}

}  // namespace detail

// A torchvision ResNet, BatchNorm folded; see the top of this file.
class resnet {
 public:
  // From a state_dict (key -> array, float32 or float64; "*.num_batches_tracked" ignored).
  // A missing key, a wrong rank or shape (the message has the expected one), a channel
  // count that does not match its neighbour, a non-float dtype, a non-finite value,
  // var + eps <= 0, or an unused key inside the network's modules (conv1., bn1., fc.,
  // layer<i>.: it would change the network if it meant anything) is a ptq::error naming
  // the key. An unused key outside them (metadata, an optimizer's state) is not fatal:
  // it is listed in warnings().
  static resnet from_state_dict(const std::map<std::string, ptq::io::array>& sd, double eps = 1e-5) {
    builder b{sd, eps, {}};
    return b.build();
  }
  // The same from an .npz file; every error names the file as well.
  static resnet load(const std::string& npz_path, double eps = 1e-5) {
    std::map<std::string, ptq::io::array> sd = ptq::io::read_npz(npz_path);
    try {
      return from_state_dict(sd, eps);
    } catch (const ptq::error& e) {
      throw ptq::error("ptq_example::resnet::load: " + npz_path + ": " + e.what());
    }
  }
  // Keys of the state_dict that were ignored, one message each.
  const std::vector<std::string>& warnings() const { return warnings_; }

  std::vector<conv_layer>& convs() { return convs_; }
  const std::vector<conv_layer>& convs() const { return convs_; }
  linear_layer& fc() { return fc_; }
  const linear_layer& fc() const { return fc_; }
  const std::vector<resnet_block>& blocks() const { return blocks_; }
  block_type type() const { return type_; }
  bool imagenet_stem() const { return max_pool_; }  // 7x7/2 conv + max-pool; else 3x3/1, no pool
  index input_channels() const { return convs_.front().C; }
  index features() const { return fc_.weight.cols(); }
  index classes() const { return fc_.weight.rows(); }
  index layer_index(const std::string& name) const {
    for (std::size_t i = 0; i < convs_.size(); ++i)
      if (convs_[i].name == name) return static_cast<index>(i);
    return -1;
  }

  // Threads used by forward (0: all; default).
  void set_threads(int threads) { threads_ = std::max(0, threads); }

  // forward keeps its activation buffers (4 x the largest activation of the last batch
  // shape) and GEMM scratch for the next call; this frees them.
  void release_workspace() {
    std::lock_guard<std::mutex> lock(cache_mutex_);
    cache_ = workspace();
  }

  // Logits (N x classes) of the batch `input` = (N*C) x (H*W), NCHW rows, with optional hooks;
  // defined and documented in float_engine.hpp.
  inline ptq::row_matrix<float> forward(const Eigen::Ref<const ptq::row_matrix<float>>& input, index height,
                                        index width, const conv_hook& on_conv = {},
                                        const features_hook& on_features = {}, const pool_hook& on_pool = {},
                                        const block_hook& on_block = {}) const;

  // The plain-loop twin of forward; defined and documented in float_engine.hpp.
  inline ptq::row_matrix<float> forward_ref(const Eigen::Ref<const ptq::row_matrix<float>>& input, index height,
                                            index width, const conv_hook& on_conv = {},
                                            const features_hook& on_features = {},
                                            const pool_hook& on_pool = {}, const block_hook& on_block = {}) const;

 private:
  struct workspace {
    std::vector<float> buf[4];
    detail::conv_scratch scratch;
  };

  std::vector<conv_layer> convs_;
  linear_layer fc_;
  std::vector<resnet_block> blocks_;
  block_type type_ = block_type::basic;
  bool max_pool_ = false;
  int threads_ = 0;
  std::vector<std::string> warnings_;
  mutable std::mutex cache_mutex_;
  mutable workspace cache_;

 public:
  resnet() = default;
  resnet(const resnet& o)
      : convs_(o.convs_), fc_(o.fc_), blocks_(o.blocks_), type_(o.type_), max_pool_(o.max_pool_), threads_(o.threads_),
        warnings_(o.warnings_) {}
  resnet(resnet&& o) noexcept
      : convs_(std::move(o.convs_)), fc_(std::move(o.fc_)), blocks_(std::move(o.blocks_)), type_(o.type_),
        max_pool_(o.max_pool_), threads_(o.threads_), warnings_(std::move(o.warnings_)) {}
  resnet& operator=(resnet o) noexcept {
    convs_ = std::move(o.convs_);
    fc_ = std::move(o.fc_);
    blocks_ = std::move(o.blocks_);
    type_ = o.type_;
    max_pool_ = o.max_pool_;
    threads_ = o.threads_;
    warnings_ = std::move(o.warnings_);
    return *this;
  }

 private:
  // Validates the layers (the caller may have replaced weights) and the input; returns N.
  index check_input(const Eigen::Ref<const ptq::row_matrix<float>>& input, index height, index width,
                    const char* where) const {
    ptq::detail::require(!convs_.empty(), where, "the network is empty (default-constructed)");
    for (const conv_layer& L : convs_) detail::check_conv_layer(L, where);
    ptq::detail::require(fc_.weight.rows() >= 1 && fc_.weight.cols() == convs_.back().K, where, "fc.weight is ",
                         fc_.weight.rows(), " x ", fc_.weight.cols(), ", expected classes x ", convs_.back().K);
    ptq::detail::require(fc_.bias.size() == fc_.weight.rows(), where, "fc.bias has ", fc_.bias.size(),
                         " elements, expected ", fc_.weight.rows());
    ptq::detail::require(height >= 1 && width >= 1, where, "height x width = ", height, " x ", width,
                         " is empty");
    ptq::detail::require(input.cols() == height * width, where, "input has ", input.cols(),
                         " columns, expected height * width = ", height * width);
    ptq::detail::require(input.rows() >= 1 && input.rows() % input_channels() == 0, where, "input has ",
                         input.rows(), " rows, expected N * ", input_channels(), " (N >= 1)");
    ptq::detail::require(input.allFinite(), where, "input has a non-finite value");
    return input.rows() / input_channels();
  }

  // forward's helpers, defined in float_engine.hpp.
  inline index largest_activation(index n, index H, index W) const;
  template <class Tensor>
  static Tensor max_pool(const Tensor& x, int slot, index n, workspace* ws, int threads);

  // Builds a resnet from a state_dict, checking every key and shape.
  struct builder {
    const std::map<std::string, ptq::io::array>& sd;
    double eps;
    std::set<std::string> used;

    static constexpr const char* where = "ptq_example::resnet::from_state_dict";

    bool has(const std::string& key) const { return sd.count(key) != 0; }

    std::vector<double> values(const std::string& key, const std::vector<index>& shape) {
      const auto it = sd.find(key);
      if (it == sd.end()) ptq::detail::fail(where, "key '", key, "' is missing");
      const ptq::io::array& a = it->second;
      ptq::detail::require(a.type() == ptq::io::dtype::float32 || a.type() == ptq::io::dtype::float64, where,
                           "key '", key, "' has dtype ", ptq::io::dtype_name(a.type()),
                           ", expected float32 or float64");
      ptq::detail::require(a.shape() == shape, where, "key '", key, "' has shape ", detail::shape_text(a.shape()),
                           ", expected ", detail::shape_text(shape));
      std::vector<double> v = a.to<double>();
      for (std::size_t i = 0; i < v.size(); ++i)
        ptq::detail::require(std::isfinite(v[i]), where, "key '", key, "' element ", i, " = ", v[i],
                             " is not finite");
      used.insert(key);
      return v;
    }

    const std::vector<index>& shape_of(const std::string& key, std::size_t rank) {
      const auto it = sd.find(key);
      if (it == sd.end()) ptq::detail::fail(where, "key '", key, "' is missing");
      const auto& s = it->second.shape();
      ptq::detail::require(s.size() == rank, where, "key '", key, "' has shape ", detail::shape_text(s),
                           ", expected rank ", rank);
      for (index d : s)
        ptq::detail::require(d >= 1, where, "key '", key, "' has shape ", detail::shape_text(s),
                             " with an empty dimension");
      return s;
    }

    // conv `name` + BatchNorm `bn`, folded; C and kernel as expected (kernel 0: 3 or 7).
    conv_layer conv(const std::string& name, const std::string& bn, index C, const std::string& c_from,
                    index kernel, index stride, bool feeds_relu, index K = -1, const std::string& k_from = "") {
      const std::string wkey = name + ".weight";
      const std::vector<index> s = shape_of(wkey, 4);
      ptq::detail::require(K < 0 || s[0] == K, where, "key '", wkey, "' has shape ", detail::shape_text(s), ": ", s[0],
                           " output channels, expected ", K, " (the output channels of ", k_from, ")");
      ptq::detail::require(s[1] == C, where, "key '", wkey, "' has shape ", detail::shape_text(s), ": ", s[1],
                           " input channels, expected ", C, " (the output channels of ", c_from, ")");
      ptq::detail::require(s[2] == s[3] && s[2] == kernel, where, "key '", wkey, "' has shape ",
                           detail::shape_text(s), ": kernel ", s[2], "x", s[3], ", expected ", kernel, "x", kernel);
      conv_layer L;
      L.name = name;
      L.K = s[0];
      L.C = s[1];
      L.R = s[2];
      L.S = s[3];
      L.stride = stride;
      L.pad = (kernel - 1) / 2;
      L.feeds_relu = feeds_relu;
      const std::vector<double> w = values(wkey, s);
      const std::vector<double> gamma = values(bn + ".weight", {L.K});
      const std::vector<double> beta = values(bn + ".bias", {L.K});
      const std::vector<double> mean = values(bn + ".running_mean", {L.K});
      const std::vector<double> var = values(bn + ".running_var", {L.K});
      const index crs = L.C * L.R * L.S;
      L.weight.resize(L.K, crs);
      L.bias.resize(L.K);
      for (index k = 0; k < L.K; ++k) {
        ptq::detail::require(var[k] + eps > 0.0, where, "key '", bn, ".running_var' element ", k, " = ", var[k],
                             ": var + eps = ", var[k] + eps, " is not positive");
        const double scale = gamma[k] / std::sqrt(var[k] + eps);
        for (index j = 0; j < crs; ++j) L.weight(k, j) = static_cast<float>(w[k * crs + j] * scale);
        L.bias[k] = static_cast<float>(beta[k] - scale * mean[k]);
      }
      return L;
    }

    resnet build() {
      resnet net;
      // Stem.
      const std::vector<index>& s0 = shape_of("conv1.weight", 4);
      const index k0 = s0[2];
      ptq::detail::require(k0 == 7 || k0 == 3, where, "key 'conv1.weight' has shape ", detail::shape_text(s0),
                           ": kernel ", s0[2], "x", s0[3], ", expected 7x7 (ImageNet stem) or 3x3 (small-image stem)");
      net.max_pool_ = k0 == 7;
      net.convs_.push_back(conv("conv1", "bn1", s0[1], "the input", k0, k0 == 7 ? 2 : 1, true));
      index cur = net.convs_.back().K;
      std::string cur_from = "conv1";

      ptq::detail::require(has("layer1.0.conv1.weight"), where, "key 'layer1.0.conv1.weight' is missing");
      net.type_ = has("layer1.0.conv3.weight") ? block_type::bottleneck : block_type::basic;
      const bool bottleneck = net.type_ == block_type::bottleneck;
      for (int i = 1; has("layer" + std::to_string(i) + ".0.conv1.weight"); ++i) {
        for (int j = 0;; ++j) {
          const std::string p = "layer" + std::to_string(i) + "." + std::to_string(j);
          if (!has(p + ".conv1.weight")) break;
          const index stride = (i > 1 && j == 0) ? 2 : 1;
          resnet_block b;
          b.name = p;
          auto add = [&](conv_layer L) {
            net.convs_.push_back(std::move(L));
            return static_cast<index>(net.convs_.size()) - 1;
          };
          const index in = cur;
          const std::string in_from = cur_from;
          if (bottleneck) {
            b.conv1 = add(conv(p + ".conv1", p + ".bn1", in, in_from, 1, 1, true));
            b.conv2 = add(conv(p + ".conv2", p + ".bn2", net.convs_[b.conv1].K, p + ".conv1", 3, stride, true));
            b.conv3 = add(conv(p + ".conv3", p + ".bn3", net.convs_[b.conv2].K, p + ".conv2", 1, 1, false));
          } else {
            ptq::detail::require(!has(p + ".conv3.weight"), where, "key '", p,
                                 ".conv3.weight' in a BasicBlock network (layer1.0 has no conv3)");
            b.conv1 = add(conv(p + ".conv1", p + ".bn1", in, in_from, 3, stride, true));
            b.conv2 = add(conv(p + ".conv2", p + ".bn2", net.convs_[b.conv1].K, p + ".conv1", 3, 1, false));
          }
          const index last = bottleneck ? b.conv3 : b.conv2;
          const index out = net.convs_[last].K;
          if (has(p + ".downsample.0.weight")) {
            b.downsample = add(conv(p + ".downsample.0", p + ".downsample.1", in, in_from, 1, stride, false, out,
                                    net.convs_[last].name));
          } else {
            ptq::detail::require(stride == 1 && in == out, where, "key '", p,
                                 ".downsample.0.weight' is missing: block ", p, " has stride ", stride, " and maps ",
                                 in, " to ", out, " channels, so it needs a downsample");
          }
          net.blocks_.push_back(b);
          cur = out;
          cur_from = net.convs_[last].name;
        }
      }

      // Classifier.
      const std::vector<index>& sf = shape_of("fc.weight", 2);
      ptq::detail::require(sf[1] == cur, where, "key 'fc.weight' has shape ", detail::shape_text(sf), ": ", sf[1],
                           " input features, expected ", cur, " (the output channels of ", cur_from, ")");
      const std::vector<double> fw = values("fc.weight", sf);
      const std::vector<double> fb = values("fc.bias", {sf[0]});
      net.fc_.weight.resize(sf[0], sf[1]);
      net.fc_.bias.resize(sf[0]);
      for (index k = 0; k < sf[0]; ++k) {
        for (index c = 0; c < sf[1]; ++c) net.fc_.weight(k, c) = static_cast<float>(fw[k * sf[1] + c]);
        net.fc_.bias[k] = static_cast<float>(fb[k]);
      }

      // Every key inside the network's modules must have been used; others are warned about.
      const std::string nbt = "num_batches_tracked";
      auto inside = [](const std::string& key) {
        for (const char* m : {"conv1.", "bn1.", "fc."})
          if (key.rfind(m, 0) == 0) return true;
        std::size_t i = 5;
        if (key.rfind("layer", 0) != 0 || key.size() <= i || !std::isdigit(static_cast<unsigned char>(key[i])))
          return false;
        while (i < key.size() && std::isdigit(static_cast<unsigned char>(key[i]))) ++i;
        return i < key.size() && key[i] == '.';
      };
      for (const auto& kv : sd) {
        const std::string& key = kv.first;
        const bool counter = key.size() >= nbt.size() && key.compare(key.size() - nbt.size(), nbt.size(), nbt) == 0;
        if (counter || used.count(key)) continue;
        ptq::detail::require(!inside(key), where, "key '", key, "' is not part of the ResNet the other keys describe");
        net.warnings_.push_back("key '" + key + "' is not part of a torchvision ResNet: ignored");
      }
      return net;
    }
  };
};

}  // namespace ptq_example
