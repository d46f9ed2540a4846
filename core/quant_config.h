// The `quant:` block of an experiment, read into the quantizers' QuantConfig
// (quant/quant.h). The framework reads YAML; the quantizers never do.
#pragma once

#include "quant/quant.h"

namespace sqlab {

class ConfigReader;

// Reads the `quant:` mapping (keys w_bits, a_bits, w_sym, a_sym, w_granularity,
// a_granularity, w_group_size, a_group_size, w_clip, a_clip, `rounding: ste|smooth`
// for both weights and activations, `w_quantizer: rtn|gptq` and
// `gptq: {damp, block_size, act_order}`).
QuantConfig parse_quant_config(ConfigReader& reader);

}  // namespace sqlab
