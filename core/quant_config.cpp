#include "core/quant_config.h"

#include <fmt/format.h>

#include <string>

#include "core/config.h"

namespace sqlab {

namespace {

Granularity parse_granularity(ConfigReader& reader, const std::string& key,
                              const std::string& fallback, const std::string& row_name) {
  const std::string value = reader.choice(key, fallback, {row_name, "per_tensor", "per_group"});
  if (value == "per_tensor") return Granularity::per_tensor;
  if (value == "per_group") return Granularity::per_group;
  return Granularity::per_row;
}

QuantSpec parse_spec(ConfigReader& reader, const std::string& prefix, const QuantSpec& base,
                     const std::string& row_name) {
  QuantSpec spec = base;
  spec.bits = reader.get<int>(prefix + "bits", base.bits);
  if (spec.bits < 2 || (spec.bits > 8 && spec.bits != 16))
    reader.fail(prefix + "bits", fmt::format("must be 2..8, or 16 for no quantization; got {}", spec.bits));
  spec.symmetric = reader.get<bool>(prefix + "sym", base.symmetric);
  spec.granularity = parse_granularity(reader, prefix + "granularity", row_name, row_name);
  spec.group_size = reader.get<int64_t>(prefix + "group_size", base.group_size);
  if (spec.group_size <= 0) reader.fail(prefix + "group_size", "must be positive");
  spec.clip = reader.get<double>(prefix + "clip", base.clip);
  if (!(spec.clip > 0.0 && spec.clip <= 1.0)) reader.fail(prefix + "clip", "must be in (0, 1]");
  return spec;
}

}  // namespace

QuantConfig parse_quant_config(ConfigReader& reader) {
  QuantConfig config;
  config.weight = parse_spec(reader, "w_", config.weight, "per_channel");
  config.act = parse_spec(reader, "a_", config.act, "per_token");
  const Rounding rounding =
      reader.choice("rounding", "ste", {"ste", "smooth"}) == "smooth" ? Rounding::smooth : Rounding::ste;
  config.weight.rounding = rounding;
  config.act.rounding = rounding;
  config.w_quantizer = reader.choice("w_quantizer", "rtn", {"rtn", "gptq"}) == "gptq" ? WeightQuantizer::gptq
                                                                                    : WeightQuantizer::rtn;
  ConfigReader gptq = reader.child("gptq");
  config.gptq.damp = gptq.get<double>("damp", config.gptq.damp);
  if (!(config.gptq.damp >= 0.0)) gptq.fail("damp", "must be >= 0");
  config.gptq.block_size = gptq.get<int64_t>("block_size", config.gptq.block_size);
  if (config.gptq.block_size <= 0) gptq.fail("block_size", "must be positive");
  config.gptq.act_order = gptq.get<bool>("act_order", config.gptq.act_order);
  gptq.finish();
  reader.finish();
  return config;
}

}  // namespace sqlab
