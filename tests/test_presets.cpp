// Presets (`defaults:`): merging, search order, swapping and sweeping fragments, and
// the errors, each naming the file chain.
#include <gtest/gtest.h>

#include <cstdlib>
#include <filesystem>

#include "core/error.h"
#include "core/experiment.h"
#include "core/presets.h"
#include "core/quant_config.h"
#include "core/registries.h"
#include "core/runner.h"
#include "datasets/builtin.h"
#include "methods/builtin.h"
#include "tests/test_util.h"

namespace sqlab {
namespace {
namespace fs = std::filesystem;
using testing::TempDir;
using testing::write_text;

std::string write(const TempDir& dir, const std::string& relative, const std::string& text) {
  const fs::path path = dir.path() / relative;
  fs::create_directories(path.parent_path());
  return write_text(path.string(), text);
}

const char* kMethods = "methods: [{label: rtn, method: identity}]\n";

std::string error_of(const std::string& file, const std::vector<std::string>& overrides = {}) {
  try {
    const Experiment ex = load_experiment(file, overrides);
    Registries registries;
    register_builtin_methods(registries.methods);
    register_builtin_datasets(registries.datasets);
    prepare_all(ex, registries);
  } catch (const Error& e) {
    EXPECT_EQ(e.kind(), ErrorKind::config);
    return e.what();
  }
  return "";
}

TEST(Presets, MergeDeepReplaceListsLaterWins) {
  TempDir dir;
  write(dir, "configs/base.yaml", "seeds: [0, 1, 2]\ndata: {source: synthetic, tokens: 32, channels: 16}\n");
  write(dir, "configs/data/wide.yaml", "channels: 64\nmassive: {count: 1, tokens: [0, 1]}\n");
  write(dir, "configs/data/narrow.yaml", "channels: 8\n");
  const std::string file = write(dir, "exp.yaml", std::string("defaults: [base, {data: wide}]\n") +
                                 "seeds: [7]\ndata: {massive: {magnitude: 50}}\n" + kMethods);
  const Experiment ex = load_experiment(file, {});
  const YAML::Node& r = ex.resolved;
  EXPECT_FALSE(r["defaults"]);
  EXPECT_EQ(r["seeds"].size(), 1u);                      // lists are replaced
  EXPECT_EQ(r["seeds"][0].as<int>(), 7);                 // the experiment's keys win
  EXPECT_EQ(r["data"]["source"].as<std::string>(), "synthetic");  // deep merge keeps base keys
  EXPECT_EQ(r["data"]["tokens"].as<int>(), 32);
  EXPECT_EQ(r["data"]["channels"].as<int>(), 64);        // a later fragment wins
  EXPECT_EQ(r["data"]["massive"]["count"].as<int>(), 1);
  EXPECT_EQ(r["data"]["massive"]["magnitude"].as<int>(), 50);
  EXPECT_EQ(ex.sources->at("data.channels").file, (dir.path() / "configs/data/wide.yaml").string());
  EXPECT_EQ(ex.sources->at("seeds").file, file);
}

TEST(Presets, SearchOrderUserFolderEnvThenInstalled) {
  TempDir dir;
  // An installed preset exists (configs/quant/w4a4.yaml in the source tree).
  std::string file = write(dir, "a/b/exp.yaml", std::string("defaults: [{quant: w4a4}]\ndata: {source: synthetic}\n") + kMethods);
  EXPECT_EQ(load_experiment(file, {}).resolved["quant"]["a_bits"].as<int>(), 4);
  TempDir env;
  write(env, "quant/w4a4.yaml", "a_bits: 5\n");
  setenv("SQLAB_CONFIG_PATH", (std::string("/nonexistent:") + env.path().string()).c_str(), 1);
  EXPECT_EQ(load_experiment(file, {}).resolved["quant"]["a_bits"].as<int>(), 5);  // env before installed
  write(dir, "configs/quant/w4a4.yaml", "a_bits: 6\n");                            // a parent folder's configs/
  EXPECT_EQ(load_experiment(file, {}).resolved["quant"]["a_bits"].as<int>(), 6);
  write(dir, "a/b/configs/quant/w4a4.yaml", "a_bits: 7\n");                        // next to the file first
  EXPECT_EQ(load_experiment(file, {}).resolved["quant"]["a_bits"].as<int>(), 7);
  unsetenv("SQLAB_CONFIG_PATH");
}

TEST(Presets, SetSwapsAFragmentAndSweepsExpand) {
  TempDir dir;
  const std::string file = write(dir, "exp.yaml", std::string("defaults: [{quant: w4a4}]\n") +
      "data: {source: synthetic, tokens: 16, channels: 8}\n" + kMethods);
  EXPECT_EQ(load_experiment(file, {"quant=w4a8"}).resolved["quant"]["a_bits"].as<int>(), 8);
  EXPECT_EQ(load_experiment(file, {"quant=w4a8", "quant.a_clip=0.9"}).resolved["quant"]["a_clip"].as<double>(), 0.9);
  const std::string msg = error_of(file, {"quant=w4a9"});
  EXPECT_NE(msg.find("no fragment 'quant/w4a9.yaml'"), std::string::npos) << msg;
  EXPECT_NE(msg.find("w3a3, w4a16, w4a4, w4a8, w8a8"), std::string::npos) << msg;

  const std::string sweep = write(dir, "sweep.yaml", std::string("defaults: [{quant: w4a4}]\n") +
      "data: {source: synthetic, tokens: 16, channels: 8}\n" + kMethods +
      "sweep: {grid: {quant: [w4a4, w4a8, w3a3], data.tokens: [16, 32]}}\n");
  const Experiment ex = load_experiment(sweep, {});
  ASSERT_EQ(ex.runs.size(), 6u);
  std::multiset<int> a_bits;
  for (const auto& run : ex.runs) {
    a_bits.insert(run.config["quant"]["a_bits"].as<int>());
    ASSERT_EQ(run.point.size(), 2u);
    EXPECT_EQ(run.point[0].first, "quant");
  }
  EXPECT_EQ(a_bits, (std::multiset<int>{3, 3, 4, 4, 8, 8}));
}

TEST(Presets, ErrorsNameTheFileChain) {
  TempDir dir;
  write(dir, "configs/a.yaml", "defaults: [b]\nseeds: [1]\n");
  write(dir, "configs/b.yaml", "defaults: [a]\n");
  std::string msg = error_of(write(dir, "cycle.yaml", std::string("defaults: [a]\ndata: {source: synthetic}\n") + kMethods));
  EXPECT_NE(msg.find("cycle in defaults"), std::string::npos) << msg;
  EXPECT_NE(msg.find("cycle.yaml -> "), std::string::npos) << msg;
  EXPECT_NE(msg.find("a.yaml -> "), std::string::npos) << msg;

  msg = error_of(write(dir, "missing.yaml", std::string("defaults: [{data: nope}]\n") + kMethods));
  EXPECT_NE(msg.find("missing.yaml:1:12: defaults: no fragment 'data: nope'"), std::string::npos) << msg;
  EXPECT_NE(msg.find("llama2_7b_like"), std::string::npos) << msg;  // lists what exists

  write(dir, "configs/data/list.yaml", "[1, 2]\n");
  msg = error_of(write(dir, "notmap.yaml", std::string("defaults: [{data: list}]\n") + kMethods));
  EXPECT_NE(msg.find("a fragment must be a mapping"), std::string::npos) << msg;
  EXPECT_NE(msg.find("notmap.yaml -> "), std::string::npos) << msg;

  msg = error_of(write(dir, "badentry.yaml", std::string("defaults: [{data: [x]}]\n") + kMethods));
  EXPECT_NE(msg.find("expected NAME or {GROUP: NAME}"), std::string::npos) << msg;
}

TEST(Presets, KeyErrorsPointIntoTheFragment) {
  TempDir dir;
  write(dir, "configs/quant/broken.yaml", "w_bits: 4\na_bitz: 4\n");
  const std::string msg = error_of(write(dir, "exp.yaml", std::string("defaults: [{quant: broken}]\n") +
                                         "data: {source: synthetic}\n" + kMethods));
  EXPECT_NE(msg.find("configs/quant/broken.yaml:2:"), std::string::npos) << msg;
  EXPECT_NE(msg.find("quant.a_bitz: unknown key"), std::string::npos) << msg;
  const std::string set_msg = error_of(write(dir, "exp2.yaml", std::string("data: {source: synthetic}\n") + kMethods),
                                       {"quant.a_bits=12"});
  EXPECT_NE(set_msg.find("--set quant.a_bits=12"), std::string::npos) << set_msg;
}

TEST(Presets, ShippedPresetsLoad) {
  for (const char* name : {"w4a4", "w4a8", "w8a8", "w3a3", "w4a16"}) {
    const YAML::Node q = load_yaml_file(std::string(SQLAB_SOURCE_DIR) + "/configs/quant/" + name + ".yaml");
    ConfigReader reader(q, name, "quant");
    EXPECT_NO_THROW(parse_quant_config(reader)) << name;
  }
  const YAML::Node d = load_yaml_file(std::string(SQLAB_SOURCE_DIR) + "/configs/data/llama2_7b_like.yaml");
  EXPECT_EQ(d["channels"].as<int>(), 4096);
  EXPECT_EQ(d["massive"]["channels"][0].as<int>(), 1415);
  EXPECT_EQ(d["massive"]["channels"][1].as<int>(), 2533);
}

}  // namespace
}  // namespace sqlab

namespace sqlab {
namespace {

TEST(Presets, ShowPrintsWhereEachKeyComesFrom) {
  TempDir dir;
  write(dir, "configs/data/tiny.yaml", "source: synthetic\ntokens: 16\nchannels: 8\n");
  write(dir, "exp.yaml", std::string("defaults: [{quant: w4a4}, {data: tiny}]\n") + kMethods);
  const testing::CliResult result = testing::run_cli(dir.path(), "show exp.yaml --set quant.a_bits=8");
  ASSERT_EQ(result.code, 0) << result.err;
  const std::string& out = result.out;
  EXPECT_NE(out.find("data.tokens: " + (dir.path() / "configs/data/tiny.yaml").string() + ":2"), std::string::npos) << out;
  EXPECT_NE(out.find("quant.a_bits: exp.yaml: --set quant.a_bits=8"), std::string::npos) << out;
  EXPECT_NE(out.find("quant.w_bits: " + std::string(SQLAB_SOURCE_DIR) + "/configs/quant/w4a4.yaml"), std::string::npos) << out;
}

}  // namespace
}  // namespace sqlab
