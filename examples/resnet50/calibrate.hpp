// calibrate.hpp: the FP32 network's activation statistics over the calibration images, in one of three protocols.
//
// What is collected (docs/method.md section 5a), for every conv output:
//   per_channel  min, max, mean, b, std per output channel (ACIQ, bit allocation, min/max);
//   per_tensor   the same with one channel (for --per-tensor-a; only when asked for);
// and for the edge quantizers:
//   stem         the first conv's output per tensor (its 8-bit min/max quantizer);
//   pool         the max-pool output per tensor (ImageNet stem only);
//   features     the pooled features per tensor (the fc input, --edge-act aciq);
//   logits       the global min and max of the logits (the classifier's 8-bit quantizer).
//
// The protocol decides what one "sample" of a statistic is:
//   image   each image alone: statistics over its H*W values per channel, averaged over
//           the images (ptq::stats_mode::batch_mean with one image per batch). This is the
//           reference implementation's offline route (-b 1 -sm collect, then -sm use).
//   batch   each batch of calib_batch images: statistics over its N*H*W values per
//           channel, averaged over the batches (the last one may be smaller). The
//           per-tensor edge statistics stay per image, as the reference's per-tensor
//           manager averages per-image minima and maxima whatever the batch.
//   pooled  all calibration values at once (ptq::stats_mode::exact: two passes over the
//           calibration set, since b needs the global mean).
// The logits' range is always the global one (the reference's classifier quantizer).
//
// Sample (calibration_options::sample_values = V > 0; what data_steps.hpp's clip search
// measures): a bounded copy of every conv output, taken in the first pass. With N calibration
// images of P = H*W pixels per channel, each image gives m = clamp(V / N, 1, P) pixels of every
// channel: pixels o + j*s, j < m, s = P / m (integer division), o = (image index) % s (the offset
// turns with the image, so that a stride dividing the row width does not keep the same columns).
// Every image is kept, so per-image statistics and the sample see the same images. Sample of
// conv i: (N*K) x m floats, row r channel r % K (an NCHW row view); N*K*m*4 bytes, at most
// (V + N)*K*4 (V = 4096, 512 images, ResNet-50's 4 970 channels: 81 MB). The calibration
// also keeps a view of its images (calibration::images) for the empirical bias correction.
#pragma once

#include <algorithm>
#include <cstdio>
#include <limits>
#include <string>
#include <vector>

#include <ptq/ptq.hpp>

#include "device.hpp"
#include "options.hpp"
#include "resnet.hpp"

namespace ptq_example {

// A float NCHW batch set in memory: count images of C x H x W.
struct image_set {
  const float* data = nullptr;
  index count = 0, C = 0, H = 0, W = 0;
  const float* image(index i) const { return data + i * C * H * W; }
};

// Progress on stderr: "label [#####.....] 512/10000".
class progress_bar {
 public:
  progress_bar(std::string label, index total, bool enabled) : label_(std::move(label)), total_(total), on_(enabled) {
    draw(0);
  }
  void draw(index done) {
    if (!on_) return;
    const int width = 30, filled = total_ > 0 ? static_cast<int>(width * done / total_) : width;
    std::fprintf(stderr, "\r  %-40s [%s%s] %td/%td", label_.c_str(), std::string(filled, '#').c_str(),
                 std::string(width - filled, '.').c_str(), done, total_);
    std::fflush(stderr);
  }
  void finish() {
    if (on_) std::fprintf(stderr, "\r%*s\r", 100, "");
  }

 private:
  std::string label_;
  index total_;
  bool on_;
};

// Per-layer calibration statistics of the FP32 network.
struct calibration {
  std::vector<ptq::channel_stats> per_channel;  // one per conv: channels = K
  std::vector<ptq::channel_stats> per_tensor;   // one per conv: channels = 1 (if asked for)
  ptq::channel_stats stem, pool, features;      // per tensor (pool: ImageNet stem only)
  double logits_min = 0, logits_max = 0;        // global
  std::vector<ptq::row_matrix<float>> sample;   // one per conv when sample_values > 0 (see the top)
  image_set images;                             // the calibration images (a view: the caller owns them)
};

struct calibration_options {
  stats_protocol protocol = stats_protocol::image;
  index calib_batch = 64;   // batch protocol: images per statistics sample
  index forward_batch = 64; // images per forward pass (image and pooled protocols)
  bool per_tensor = false;  // also per-tensor statistics of every conv output
  bool progress = false;
  bool cuda = false;        // per-channel statistics reduced on the GPU (device.hpp)
  index sample_values = 0;  // values per channel of every conv output kept (0: no sample; see the top)
};

// Pixels per image of the sample (see the top): m for V values per channel over n images of P pixels.
inline index sample_pixels(index values, index images, index pixels) {
  return std::min(pixels, std::max<index>(1, values / std::max<index>(images, 1)));
}

namespace detail {

// The accumulators of one calibration, fed by the forward hooks.
class calibration_accumulator {
 public:
  calibration_accumulator(const resnet& net, const calibration_options& o, index images)
      : o_(o), net_(net), images_(images) {
    ptq::detail::require(o.sample_values >= 0, "ptq_example::calibrate", "sample_values = ", o.sample_values,
                         " is negative");
    if (o.sample_values > 0) sample_.resize(net.convs().size());
    const ptq::stats_mode mode = o.protocol == stats_protocol::pooled ? ptq::stats_mode::exact : ptq::stats_mode::batch_mean;
    for (const auto& L : net.convs()) {
      if (o.cuda)
        dc_.emplace_back(L.K, mode);
      else
        pc_.emplace_back(L.K, mode);
      if (o.per_tensor) pt_.emplace_back(1, mode);
    }
    stem_.emplace_back(1, mode);
    if (net.imagenet_stem()) pool_.emplace_back(1, mode);
    feat_.emplace_back(1, mode);
  }

  // One forward over `n` images: every statistic gets its samples (per image, per batch or pooled).
  void add(const image_set& set, index first, index n) {
    const Eigen::Map<const ptq::row_matrix<float>> x(set.image(first), n * set.C, set.H * set.W);
    const bool whole = o_.protocol != stats_protocol::image;  // per-channel sample = the whole batch
    // Adds y (n images of `rows` rows each, an NCHW image's rows being its channels) to an
    // accumulator: whole, or image by image.
    auto feed = [&](auto& s, ptq::row_map<float> y, index rows, bool per_image) {
      if (!per_image) return add_to(s, y, rows);
      for (index i = 0; i < n; ++i) add_to(s, y.middleRows(i * rows, rows), rows);
    };
    const bool per_image_tensor = o_.protocol != stats_protocol::pooled;
    const ptq::row_matrix<float> logits = net_.forward(
        x, set.H, set.W,
        [&](index layer, ptq::row_map<float> y) {
          const auto l = static_cast<std::size_t>(layer);
          const index K = net_.convs()[l].K;
          if (o_.cuda)
            feed(dc_[l], y, K, !whole);
          else
            feed(pc_[l], y, K, !whole);
          if (o_.per_tensor) feed(pt_[l], y, K, !whole);
          if (layer == 0) feed(stem_[0], y, K, per_image_tensor);
          if (o_.sample_values > 0 && !second_pass_) keep_sample(sample_[l], y, K, first, n);
        },
        [&](ptq::row_map<float> f) { feed(feat_[0], f, 1, per_image_tensor); },
        [&](ptq::row_map<float> p) { feed(pool_[0], p, p.rows() / n, per_image_tensor); });
    if (logits.size()) {
      lmin_ = std::min(lmin_, static_cast<double>(logits.minCoeff()));
      lmax_ = std::max(lmax_, static_cast<double>(logits.maxCoeff()));
    }
  }

  // Exact (pooled) mode: the second pass over the same images follows.
  void begin_deviation_pass() {
    second_pass_ = true;
    for (auto* v : {&pc_, &pt_, &stem_, &pool_, &feat_})
      for (auto& s : *v) s.begin_deviation_pass();
    for (auto& s : dc_) s.begin_deviation_pass();
  }

  calibration result() {
    calibration c;
    for (std::size_t i = 0; i < net_.convs().size(); ++i) {
      c.per_channel.push_back(o_.cuda ? dc_[i].result() : pc_[i].result());
      if (o_.per_tensor) c.per_tensor.push_back(pt_[i].result());
    }
    c.stem = stem_[0].result();
    if (net_.imagenet_stem()) c.pool = pool_[0].result();
    c.features = feat_[0].result();
    c.logits_min = lmin_;
    c.logits_max = lmax_;
    c.sample = std::move(sample_);
    return c;
  }

 private:
  // The sample's pixels of images first..first+n-1 (see the top of this file).
  void keep_sample(ptq::row_matrix<float>& s, const ptq::row_map<float>& y, index K, index first, index n) const {
    const index P = y.cols(), m = sample_pixels(o_.sample_values, images_, P), stride = P / m;
    if (s.size() == 0) s.resize(images_ * K, m);
    for (index i = 0; i < n; ++i) {
      const index o = (first + i) % stride;
      for (index c = 0; c < K; ++c)
        for (index j = 0; j < m; ++j) s((first + i) * K + c, j) = y(i * K + c, o + j * stride);
    }
  }

  // One sample (a batch or one image; rows of contiguous values, `channels` rows per image)
  // into either accumulator.
  template <class Rows>
  static void add_to(ptq::calibration_statistics& s, const Rows& y, index) { s.add(y); }
  template <class Rows>
  static void add_to(resnet_device::device_calibrator& s, const Rows& y, index channels) {
    s.add(y.data(), y.rows() / channels, y.cols());
  }

  calibration_options o_;
  const resnet& net_;
  index images_;
  bool second_pass_ = false;
  std::vector<ptq::row_matrix<float>> sample_;
  std::vector<ptq::calibration_statistics> pc_, pt_, stem_, pool_, feat_;
  std::vector<resnet_device::device_calibrator> dc_;
  double lmin_ = std::numeric_limits<double>::infinity(), lmax_ = -std::numeric_limits<double>::infinity();
};

}  // namespace detail

// Statistics of `net` over `set` (see the top of this file).
inline calibration calibrate(const resnet& net, const image_set& set, const calibration_options& o) {
  detail::calibration_accumulator acc(net, o, set.count);
  const index step = o.protocol == stats_protocol::batch ? o.calib_batch : o.forward_batch;
  const int passes = o.protocol == stats_protocol::pooled ? 2 : 1;
  for (int pass = 0; pass < passes; ++pass) {
    if (pass == 1) acc.begin_deviation_pass();
    progress_bar bar(passes == 2 ? (pass ? "calibrating (pass 2)" : "calibrating (pass 1)") : "calibrating",
                     set.count, o.progress);
    for (index first = 0; first < set.count; first += step) {
      const index n = std::min(step, set.count - first);
      acc.add(set, first, n);
      bar.draw(first + n);
    }
    bar.finish();
  }
  calibration c = acc.result();
  c.images = set;
  return c;
}

}  // namespace ptq_example
