// Experiment files: every class of bad input is a config error that names the file,
// line and key; sweeps expand as grid x zip; run ids are stable.
#include <gtest/gtest.h>

#include "core/error.h"
#include "core/experiment.h"
#include "core/registries.h"
#include "core/runner.h"
#include "datasets/builtin.h"
#include "methods/builtin.h"
#include "tests/test_util.h"

namespace sqlab {
namespace {

using testing::TempDir;
using testing::write_text;

const char* kBase = R"(name: tiny
seeds: [0, 1]
data: {source: synthetic, tokens: 16, channels: 8}
quant: {w_bits: 4, a_bits: 4}
methods:
  - {label: rtn, method: identity}
  - {label: rot, method: random_orthogonal}
)";

Registries builtin_registries() {
  Registries r;
  register_builtin_methods(r.methods);
  register_builtin_datasets(r.datasets);
  return r;
}

// Loads and validates like `sqlab run --dry-run`; returns the config error message.
std::string config_error_of(const std::string& yaml, const std::vector<std::string>& overrides = {}) {
  TempDir dir;
  const std::string file = write_text(dir.file("exp.yaml"), yaml);
  try {
    const Experiment ex = load_experiment(file, overrides);
    const Registries registries = builtin_registries();
    prepare_all(ex, registries);
  } catch (const Error& e) {
    EXPECT_EQ(e.kind(), ErrorKind::config) << e.what();
    EXPECT_NE(std::string(e.what()).find("exp.yaml"), std::string::npos) << e.what();
    return e.what();
  }
  return "";
}

TEST(ConfigErrors, MalformedYamlNamesLineAndColumn) {
  const std::string msg = config_error_of("name: x\nmethods: [\n  {label: a\n");
  EXPECT_NE(msg.find("exp.yaml:"), std::string::npos) << msg;
  EXPECT_NE(msg.find("malformed YAML"), std::string::npos) << msg;
}

TEST(ConfigErrors, UnknownKeysNameTheirPathAndLine) {
  std::string msg = config_error_of(std::string(kBase) + "colour: blue\n");
  EXPECT_NE(msg.find("exp.yaml:8:9: colour: unknown key"), std::string::npos) << msg;
  msg = config_error_of(std::string(kBase) + "record: {histogram: true}\n");
  EXPECT_NE(msg.find("record.histogram: unknown key"), std::string::npos) << msg;
  EXPECT_NE(msg.find("histograms"), std::string::npos) << msg;  // lists the valid keys
  msg = config_error_of(R"(data: {source: synthetic, tokens: 16, channels: 8, massive: {cont: 2}}
methods: [{method: identity}]
)");
  EXPECT_NE(msg.find("exp.yaml:1:"), std::string::npos) << msg;
  EXPECT_NE(msg.find("data.massive.cont: unknown key"), std::string::npos) << msg;
  msg = config_error_of(R"(data: {source: synthetic, tokens: 16, channels: 8}
methods:
  - {method: identity, threshold: 3}
)");
  EXPECT_NE(msg.find("exp.yaml:3:"), std::string::npos) << msg;
  EXPECT_NE(msg.find("methods.identity.threshold: unknown key"), std::string::npos) << msg;
}

TEST(ConfigErrors, WrongTypes) {
  std::string msg = config_error_of(std::string(kBase) + "record: {histogram_bins: many}\n");
  EXPECT_NE(msg.find("record.histogram_bins: expected an integer, got 'many'"), std::string::npos) << msg;
  msg = config_error_of(R"(data: {source: synthetic, tokens: lots}
methods: [{method: identity}]
)");
  EXPECT_NE(msg.find("exp.yaml:1:"), std::string::npos) << msg;
  EXPECT_NE(msg.find("data.tokens: expected an integer"), std::string::npos) << msg;
  msg = config_error_of(std::string(kBase) + "sweep: {grid: {quant.a_bits: 4}}\n");
  EXPECT_NE(msg.find("must map to a non-empty list"), std::string::npos) << msg;
  msg = config_error_of(R"(data: {source: synthetic}
quant: {a_bits: 12}
methods: [{method: identity}]
)");
  EXPECT_NE(msg.find("quant.a_bits: must be 2..8"), std::string::npos) << msg;
}

TEST(ConfigErrors, UnknownNamesListTheValidOnes) {
  std::string msg = config_error_of(R"(data: {source: synthetic}
methods: [{method: spinquant_magic}]
)");
  EXPECT_NE(msg.find("unknown method 'spinquant_magic'"), std::string::npos) << msg;
  EXPECT_NE(msg.find("identity"), std::string::npos) << msg;
  EXPECT_NE(msg.find("random_orthogonal"), std::string::npos) << msg;
  msg = config_error_of(R"(data: {source: imagenet}
methods: [{method: identity}]
)");
  EXPECT_NE(msg.find("exp.yaml:1:"), std::string::npos) << msg;
  EXPECT_NE(msg.find("unknown dataset 'imagenet' (valid: "), std::string::npos) << msg;
  EXPECT_NE(msg.find("synthetic"), std::string::npos) << msg;
  msg = config_error_of(R"(data: {source: synthetic}
quant: {a_granularity: per_channel}
methods: [{method: identity}]
)");
  EXPECT_NE(msg.find("quant.a_granularity: unknown value 'per_channel' (valid: per_token"), std::string::npos) << msg;
}

TEST(ConfigErrors, MethodsThatCannotActOnTheWidth) {
  const std::string msg = config_error_of(R"(data: {source: synthetic, tokens: 16, channels: 64}
methods:
  - {label: sq, method: singlequant, kronecker: [8, 16]}
)");
  EXPECT_NE(msg.find("exp.yaml:3:"), std::string::npos) << msg;
  EXPECT_NE(msg.find("methods.sq.kronecker"), std::string::npos) << msg;
  EXPECT_NE(msg.find("does not factor the site width n = 64"), std::string::npos) << msg;
  const std::string hadamard = config_error_of(R"(data: {source: synthetic, tokens: 16, channels: 236}
methods: [{method: hadamard}]
)");
  EXPECT_NE(hadamard.find("no Hadamard matrix of order 236"), std::string::npos) << hadamard;
}

TEST(ConfigErrors, BadOverrides) {
  std::string msg = config_error_of(kBase, {"methods.nolabel.x=1"});
  EXPECT_NE(msg.find("no entry labelled 'nolabel'"), std::string::npos) << msg;
  msg = config_error_of(kBase, {"quant"});
  EXPECT_NE(msg.find("expected KEY=VALUE"), std::string::npos) << msg;
  msg = config_error_of(kBase, {"quant.a_bitz=3"});
  EXPECT_NE(msg.find("quant.a_bitz: unknown key"), std::string::npos) << msg;
  msg = config_error_of(kBase, {"quant.a_bits.x=3"});
  EXPECT_NE(msg.find("not a mapping"), std::string::npos) << msg;
  msg = config_error_of(kBase, {"a..b=3"});
  EXPECT_NE(msg.find("not a key path"), std::string::npos) << msg;
}

TEST(ConfigErrors, DuplicateLabelsAndMissingMethods) {
  std::string msg = config_error_of(R"(data: {source: synthetic}
methods: [{method: identity}, {method: identity}]
)");
  EXPECT_NE(msg.find("label 'identity' is used twice"), std::string::npos) << msg;
  msg = config_error_of("data: {source: synthetic}\n");
  EXPECT_NE(msg.find("methods: required key is missing"), std::string::npos) << msg;
}

TEST(ConfigOverrides, SetChangesValuesAndLabelledEntries) {
  TempDir dir;
  const std::string file = write_text(dir.file("exp.yaml"), kBase);
  const Experiment ex = load_experiment(file, {"quant.a_bits=8", "seeds=[5]", "methods.rot.label=rotated"});
  EXPECT_EQ(ex.resolved["quant"]["a_bits"].as<int>(), 8);
  ASSERT_EQ(ex.runs.size(), 2u);
  EXPECT_EQ(ex.runs[0].seed, 5);
  EXPECT_EQ(ex.runs[1].label, "rotated");
  EXPECT_EQ(ex.runs[0].config["quant"]["a_bits"].as<int>(), 8);
}

TEST(SweepExpansion, GridZipAndBoth) {
  TempDir dir;
  const std::string grid = write_text(dir.file("grid.yaml"), std::string(kBase) +
      "sweep: {grid: {quant.a_bits: [4, 8], data.tokens: [16, 32, 64]}}\n");
  Experiment ex = load_experiment(grid, {});
  EXPECT_EQ(ex.runs.size(), 2u * 3u * 2u * 2u);  // points x seeds x methods
  EXPECT_EQ(ex.swept_keys, (std::vector<std::string>{"quant.a_bits", "data.tokens"}));

  const std::string zip = write_text(dir.file("zip.yaml"), std::string(kBase) +
      "sweep: {zip: {quant.a_bits: [4, 8, 6], quant.w_bits: [4, 8, 6]}}\n");
  ex = load_experiment(zip, {});
  ASSERT_EQ(ex.runs.size(), 3u * 2u * 2u);
  for (const auto& run : ex.runs)
    EXPECT_EQ(run.config["quant"]["a_bits"].as<int>(), run.config["quant"]["w_bits"].as<int>());

  const std::string both = write_text(dir.file("both.yaml"), std::string(kBase) +
      "sweep: {grid: {data.tokens: [16, 32]}, zip: {quant.a_bits: [4, 8], quant.w_bits: [4, 8]}}\n");
  ex = load_experiment(both, {"seeds=[0]"});
  EXPECT_EQ(ex.runs.size(), 2u * 2u * 2u);

  const std::string bad = write_text(dir.file("bad.yaml"), std::string(kBase) +
      "sweep: {zip: {quant.a_bits: [4, 8], quant.w_bits: [4]}}\n");
  EXPECT_THROW(load_experiment(bad, {}), Error);
}

TEST(SweepExpansion, MethodKeysApplyToTheirLabelOnly) {
  TempDir dir;
  const std::string file = write_text(dir.file("exp.yaml"), std::string(kBase) +
      "sweep: {grid: {methods.rot.method: [random_orthogonal, identity]}}\n");
  const Experiment ex = load_experiment(file, {"seeds=[0]"});
  // rtn does not depend on the swept key: it runs once, not twice.
  int rtn_runs = 0;
  for (const auto& run : ex.runs) {
    if (run.label == "rtn") {
      ++rtn_runs;
      EXPECT_TRUE(run.point.empty());
    } else {
      ASSERT_EQ(run.point.size(), 1u);
      EXPECT_EQ(run.point[0].second, run.method);
    }
  }
  EXPECT_EQ(rtn_runs, 1);
  EXPECT_EQ(ex.runs.size(), 3u);
}

TEST(RunIds, StableAndDistinct) {
  TempDir dir;
  const std::string file = write_text(dir.file("exp.yaml"), kBase);
  const Experiment a = load_experiment(file, {});
  const Experiment b = load_experiment(file, {});
  ASSERT_EQ(a.runs.size(), 4u);
  std::set<std::string> ids;
  for (size_t i = 0; i < a.runs.size(); ++i) {
    EXPECT_EQ(a.runs[i].run_id, b.runs[i].run_id);
    ids.insert(a.runs[i].run_id);
  }
  EXPECT_EQ(ids.size(), 4u);
  EXPECT_EQ(a.runs[0].run_id.rfind("rtn-s0-", 0), 0u) << a.runs[0].run_id;
  const Experiment c = load_experiment(file, {"quant.a_bits=8"});
  EXPECT_NE(a.runs[0].run_id, c.runs[0].run_id);
  const Experiment renamed = load_experiment(file, {"name=other"});
  EXPECT_EQ(a.runs[0].run_id, renamed.runs[0].run_id);  // the name does not change results
}

}  // namespace
}  // namespace sqlab
