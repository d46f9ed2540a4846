#include "app/merge_command.h"

#include <fmt/format.h>
#include <nlohmann/json.hpp>

#include <filesystem>
#include <fstream>
#include <map>

#include "core/config.h"
#include "core/error.h"
#include "core/recorder.h"
#include "core/summary.h"
#include "core/system.h"

namespace sqlab {
namespace fs = std::filesystem;
namespace {

struct Shard {
  std::string dir;
  YAML::Node config;
  std::string name;
  std::vector<std::string> swept_keys;
  std::vector<SummaryRow> rows;
};

Shard load_shard(const std::string& dir) {
  Shard shard;
  shard.dir = dir;
  const fs::path config = fs::path(dir) / "config.yaml";
  if (!fs::exists(config)) throw config_error(fmt::format("merge: {}: no config.yaml (not a sqlab results directory)", dir));
  shard.config = load_yaml_file(config.string());
  const nlohmann::json summary = read_summary_json(dir);
  shard.rows = rows_from_summary_json(summary);
  shard.name = summary.value("name", "");
  shard.swept_keys = summary.value("swept_keys", std::vector<std::string>{});
  return shard;
}

std::string run_file(const std::string& dir, const std::string& run_id) {
  return (fs::path(dir) / "runs" / (run_id + ".h5")).string();
}

// Copies through a temporary name, so OUT never holds a half-copied run file.
void copy_atomic(const std::string& from, const std::string& to) {
  const std::string tmp = to + ".tmp";
  fs::copy_file(from, tmp, fs::copy_options::overwrite_existing);
  fs::rename(tmp, to);
}

}  // namespace

int command_merge(const std::vector<std::string>& args) {
  if (args.size() < 2 || args[0] == "--help" || args[0] == "-h") {
    fmt::print(args.empty() || args[0].rfind("-", 0) != 0 ? stderr : stdout, "usage: sqlab merge OUT DIR...\n");
    return args.size() >= 1 && (args[0] == "--help" || args[0] == "-h") ? 0 : 2;
  }
  const std::string out = args[0];
  std::vector<Shard> shards;
  for (size_t i = 1; i < args.size(); ++i) shards.push_back(load_shard(args[i]));
  for (size_t i = 1; i < shards.size(); ++i) {
    const auto keys = yaml_differences(shards[0].config, shards[i].config);
    if (!keys.empty())
      throw config_error(fmt::format("merge: {} and {} ran different experiments (they differ in {})", shards[0].dir,
                                     shards[i].dir, fmt::join(keys, ", ")));
  }
  // One row per run id; a complete run wins over a failed one, and two complete
  // copies must hold the same configuration.
  std::map<std::string, std::pair<SummaryRow, std::string>> merged;  // run id -> (row, dir)
  std::vector<std::string> order;
  for (const Shard& shard : shards)
    for (const SummaryRow& row : shard.rows) {
      auto it = merged.find(row.run_id);
      if (it == merged.end()) {
        order.push_back(row.run_id);
        merged[row.run_id] = {row, shard.dir};
      } else if (row.status == "complete" && it->second.first.status == "complete") {
        const std::string a = read_run_summary(run_file(it->second.second, row.run_id)).config_yaml;
        const std::string b = read_run_summary(run_file(shard.dir, row.run_id)).config_yaml;
        if (a != b)
          throw config_error(fmt::format("merge: run {} has different configurations in {} and {}", row.run_id,
                                         it->second.second, shard.dir));
      } else if (row.status == "complete") {
        it->second = {row, shard.dir};
      }
    }
  fs::create_directories(fs::path(out) / "runs");
  std::vector<SummaryRow> rows;
  for (const auto& id : order) {
    const auto& [row, dir] = merged[id];
    if (row.status == "complete") {
      if (!run_file_complete(run_file(dir, id)))
        throw config_error(fmt::format("merge: {}: summary lists {} as complete but its run file is not", dir, id));
      if (!fs::equivalent(fs::path(dir), fs::path(out))) copy_atomic(run_file(dir, id), run_file(out, id));
    }
    rows.push_back(row);
  }
  YAML::Emitter config;
  config << shards[0].config;
  write_file_atomic((fs::path(out) / "config.yaml").string(), std::string(config.c_str()) + "\n");
  write_file_atomic((fs::path(out) / "summary.csv").string(), summary_csv(rows, shards[0].swept_keys));
  write_file_atomic((fs::path(out) / "summary.json").string(),
                    summary_json(shards[0].name, rows, shards[0].swept_keys).dump(2) + "\n");
  int failed = 0;
  for (const auto& row : rows) failed += row.status != "complete";
  fmt::print("merged {} runs ({} failed) from {} directories into {}\n", rows.size(), failed, shards.size(), out);
  return failed ? 1 : 0;
}

}  // namespace sqlab
