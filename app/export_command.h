// `sqlab export RESULTS_DIR [--run RUN_ID]... [--format safetensors|npy] --out DIR`:
// the fitted rotations of a results directory's runs, for PyTorch pipelines
// (contract.md, "Site files": exported rotations).
#pragma once

#include <string>
#include <vector>

namespace sqlab {

int command_export(const std::vector<std::string>& args);

}  // namespace sqlab
