// synthetic.hpp: a torchvision-style ResNet state_dict with random weights, for the ResNet tests (no Python).
#pragma once

#include <cmath>
#include <cstdint>
#include <map>
#include <random>
#include <string>
#include <vector>

#include <ptq/io/npy.hpp>

namespace ptq_test {

// A torchvision-style state_dict built here (no Python): random conv and fc weights
// (He-normal), random BatchNorm statistics; stage i has width * 2^(i-1) planes.
inline std::map<std::string, ptq::io::array> synthetic_state_dict(bool bottleneck, const std::vector<int>& layers,
                                                           ptq::index width, ptq::index in_channels,
                                                           ptq::index classes, ptq::index stem_kernel,
                                                           std::uint64_t seed) {
  std::mt19937_64 rng(seed);
  std::map<std::string, ptq::io::array> sd;
  auto put = [&](const std::string& key, std::vector<ptq::index> shape, auto draw) {
    ptq::index n = 1;
    for (ptq::index d : shape) n *= d;
    std::vector<float> v(static_cast<std::size_t>(n));
    for (float& x : v) x = draw();
    sd[key] = ptq::io::array::from(v.data(), shape, key);
  };
  auto conv = [&](const std::string& name, const std::string& bn, ptq::index K, ptq::index C, ptq::index k) {
    std::normal_distribution<float> he(0.0f, std::sqrt(2.0f / float(C * k * k)));
    put(name + ".weight", {K, C, k, k}, [&] { return he(rng); });
    std::uniform_real_distribution<float> u(0.5f, 1.5f);
    std::normal_distribution<float> small(0.0f, 0.1f);
    put(bn + ".weight", {K}, [&] { return u(rng); });
    put(bn + ".bias", {K}, [&] { return small(rng); });
    put(bn + ".running_mean", {K}, [&] { return small(rng); });
    put(bn + ".running_var", {K}, [&] { return u(rng); });
  };
  const ptq::index expansion = bottleneck ? 4 : 1;
  conv("conv1", "bn1", width, in_channels, stem_kernel);
  ptq::index inplanes = width;
  for (std::size_t i = 0; i < layers.size(); ++i) {
    const ptq::index planes = width << i;
    for (int j = 0; j < layers[i]; ++j) {
      const std::string p = "layer" + std::to_string(i + 1) + "." + std::to_string(j);
      const ptq::index stride = (i > 0 && j == 0) ? 2 : 1;
      if (bottleneck) {
        conv(p + ".conv1", p + ".bn1", planes, inplanes, 1);
        conv(p + ".conv2", p + ".bn2", planes, planes, 3);
        conv(p + ".conv3", p + ".bn3", planes * 4, planes, 1);
      } else {
        conv(p + ".conv1", p + ".bn1", planes, inplanes, 3);
        conv(p + ".conv2", p + ".bn2", planes, planes, 3);
      }
      if (stride != 1 || inplanes != planes * expansion)
        conv(p + ".downsample.0", p + ".downsample.1", planes * expansion, inplanes, 1);
      inplanes = planes * expansion;
    }
  }
  std::normal_distribution<float> g(0.0f, 1.0f / std::sqrt(float(inplanes)));
  put("fc.weight", {classes, inplanes}, [&] { return g(rng); });
  put("fc.bias", {classes}, [&] { return g(rng); });
  return sd;
}

}  // namespace ptq_test
