#include "methods/options.h"

#include <fmt/format.h>
#include <yaml-cpp/yaml.h>

#include <cmath>
#include <vector>

#include "core/config.h"
#include "core/method.h"

namespace sqlab {

std::pair<int64_t, int64_t> parse_kronecker_option(ConfigReader& reader, const std::string& key) {
  const YAML::Node node = reader.raw(key);
  if (!node || (node.IsScalar() && node.as<std::string>() == "auto")) return {0, 0};
  std::vector<int64_t> pair;
  try {
    if (node.IsSequence()) pair = node.as<std::vector<int64_t>>();
  } catch (const YAML::Exception&) {
  }
  if (pair.size() != 2 || pair[0] < 1 || pair[1] < 1)
    reader.fail(key, fmt::format("expected auto or [n1, n2] with positive n1, n2; got '{}'", yaml_to_flow(node)));
  return {pair[0], pair[1]};
}

CayleySGDOptions parse_cayley_sgd_options(ConfigReader& reader, const CayleySGDOptions& defaults) {
  CayleySGDOptions o = defaults;
  o.lr = reader.get<double>("lr", o.lr);
  if (!(o.lr > 0.0) || !std::isfinite(o.lr)) reader.fail("lr", "must be positive");
  o.momentum = reader.get<double>("momentum", o.momentum);
  if (!(o.momentum >= 0.0 && o.momentum < 1.0)) reader.fail("momentum", "must be in [0, 1)");
  const std::string schedule =
      reader.choice("schedule", schedule_name(o.schedule), {"constant", "linear", "cosine"});
  o.schedule = schedule == "constant" ? LrSchedule::constant
               : schedule == "linear" ? LrSchedule::linear
                                      : LrSchedule::cosine;
  o.total_steps = reader.get<int64_t>("steps", o.total_steps);
  if (o.total_steps < 0) reader.fail("steps", "must be >= 0");
  o.retraction = reader.choice("cayley", o.retraction == CayleyRetraction::solve ? "solve" : "fixed_point",
                               {"fixed_point", "solve"}) == "solve"
                     ? CayleyRetraction::solve
                     : CayleyRetraction::fixed_point;
  o.fixed_point_iters = reader.get<int>("fixed_point_iters", o.fixed_point_iters);
  if (o.fixed_point_iters < 0) reader.fail("fixed_point_iters", "must be >= 0");
  o.tangent_start = reader.choice("fixed_point_start", o.tangent_start ? "tangent" : "gradient",
                                  {"gradient", "tangent"}) == "tangent";
  o.grad_clip = reader.get<double>("grad_clip", o.grad_clip);
  if (!(o.grad_clip >= 0.0)) reader.fail("grad_clip", "must be >= 0 (0: off)");
  o.normalize_rows = reader.get<bool>("normalize_rows", o.normalize_rows);
  o.random_reorth = reader.get<bool>("random_reorth", o.random_reorth);
  o.reorth_every = reader.get<int64_t>("reorth_every", o.reorth_every);
  if (o.reorth_every < 0) reader.fail("reorth_every", "must be >= 0 (0: off)");
  return o;
}

void trace_cayley_step(FitLog& log, int64_t step, double loss, const CayleyStepStats& stats) {
  log.trace("loss", step, loss);
  log.trace("grad_norm", step, stats.grad_norm);
  log.trace("euclid_grad_norm", step, stats.euclid_grad_norm);
  log.trace("lr", step, stats.lr);
  log.trace("step_size", step, stats.step_size);
  log.trace("orth_error", step, stats.orth_error);
}

}  // namespace sqlab
