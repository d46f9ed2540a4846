// sqlab generate --model PATH [--tokenizer PATH] --prompt TEXT [--steps N] [--set KEY=VALUE]...
// A continuation of the prompt from the full-precision model, or from the W4A4 model a
// rotation method builds (--set method=NAME), to see what quantization does.
#pragma once

#include <string>
#include <vector>

#include "core/registries.h"

namespace sqlab {

int command_generate(const std::vector<std::string>& args, const Registries& registries);

}  // namespace sqlab
