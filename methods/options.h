// Options that several methods read from YAML, parsed in one place: the Kronecker
// split `kronecker: auto | [n1, n2]` (singlequant, cayley_sgd) and the Cayley SGD
// optimizer's keys with its per-step traces (cayley_sgd at site level, and the
// model-level Cayley SGD in model/model_cayley.cpp). The kernels they configure
// (rotations/kronecker.h, rotations/stiefel.h) know nothing of YAML.
#pragma once

#include <cstdint>
#include <string>
#include <utility>

#include "rotations/stiefel.h"

namespace sqlab {

class ConfigReader;
class FitLog;

// Reads a `kronecker: auto | [n1, n2]` option: {0, 0} for auto (or absent), else the
// pair; anything else is a config error naming the key. n1 * n2 = n is checked later,
// against the site's width.
std::pair<int64_t, int64_t> parse_kronecker_option(ConfigReader& reader, const std::string& key);

// Reads lr, momentum, schedule, steps, cayley, fixed_point_iters, fixed_point_start, grad_clip,
// normalize_rows, random_reorth, reorth_every from a method's options; validates them.
CayleySGDOptions parse_cayley_sgd_options(ConfigReader& reader, const CayleySGDOptions& defaults = {});

// The traces of one step (the paper's Fig. 2 and its diagnostics), the same at site level
// and model level: loss, grad_norm, euclid_grad_norm, lr, step_size, orth_error.
void trace_cayley_step(FitLog& log, int64_t step, double loss, const CayleyStepStats& stats);

}  // namespace sqlab
