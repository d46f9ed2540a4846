// libFuzzer target: parse_hf_config_json (model/checkpoint.h) on config.json text.
#include "fuzz/fuzz_util.h"
#include "model/checkpoint.h"

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  const std::string text(reinterpret_cast<const char*>(data), size);
  return sqlab::fuzz::expect_clean([&] { sqlab::parse_hf_config_json(text, "fuzz/config.json"); });
}
