// ptq.hpp: the whole CPU library: calibration statistics, ACIQ, bit allocation, the GEMMLOWP quantizer, bias correction.
//
// The pipeline of Banner, Nahshan & Soudry (NeurIPS 2019), one plain struct between stages:
//
//   calibration_statistics::add(batch)...  -> channel_stats      (per-channel min/max/mean/b/std)
//   aciq_ranges(dist, stats, bits, range)  -> channel_ranges     (analytically optimal clipping)
//   bit_allocator::exact(scales, {4 bits}) -> bit_allocation     (per-channel bit widths)
//   quant_params<T>::per_channel(ranges, bits) -> quant_params   (GEMMLOWP scale / zero point)
//   gemmlowp_quantizer::fake_quantize / quantize / dequantize    (on Eigen row views)
//   bias_corrector::correct(w, wq)                               (per-channel mean / norm repair)
//   adaround(w, p, x[, y], params) -> adaround_result            (beyond the paper: learned rounding, AdaRound)
//   clip_search / clip_choice(rows, stats, bits)                 (beyond the paper: clips by measured MSE)
//   empirical_bias::add(y_float, y_quant)..., apply(bias)        (beyond the paper: output mean repair)
#pragma once

#include "aciq.hpp"
#include "adaround.hpp"
#include "bias_corrector.hpp"
#include "bit_allocator.hpp"
#include "block_reconstruction.hpp"
#include "calibration.hpp"
#include "clip_search.hpp"
#include "config.hpp"
#include "empirical_bias.hpp"
#include "error.hpp"
#include "fixedpoint.hpp"
#include "gemmlowp_quantizer.hpp"
#include "igemm.hpp"
#include "int4.hpp"
#include "integer_layer.hpp"
#include "layout.hpp"
#include "quantized_tensor.hpp"
#include "types.hpp"
