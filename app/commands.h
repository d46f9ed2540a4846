// The sqlab subcommands. Each returns the process exit code (contract.md).
#pragma once

#include <string>
#include <vector>

#include "core/registries.h"

namespace sqlab {

int command_run(const std::vector<std::string>& args, const Registries& registries);
int command_show(const std::vector<std::string>& args, const Registries& registries);
int command_list(const std::vector<std::string>& args, const Registries& registries);
// sqlab show-model CHECKPOINT: family, config, parameter count, widths and Hadamard orders.
int command_show_model(const std::vector<std::string>& args);

}  // namespace sqlab
