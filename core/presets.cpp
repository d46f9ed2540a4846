#include "core/presets.h"

#include <fmt/format.h>

#include <cstdlib>
#include <filesystem>
#include <set>

#include "core/error.h"

namespace sqlab {
namespace fs = std::filesystem;
namespace {

struct DefaultsEntry {
  std::string group;  // empty: the fragment merges at the root
  std::string name;
  YAML::Mark mark;  // where the entry is written (for errors)
};

std::vector<DefaultsEntry> parse_defaults(const YAML::Node& document, const std::string& file) {
  std::vector<DefaultsEntry> entries;
  if (!document.IsMap() || !document["defaults"]) return entries;
  const YAML::Node list = document["defaults"];
  auto bad = [&](const YAML::Node& node) {
    return config_error(fmt::format("{}:{}: defaults: expected NAME or {{GROUP: NAME}}, got '{}'", file,
                                    node.Mark().line + 1, yaml_to_flow(node)));
  };
  if (!list.IsSequence()) throw bad(list);
  for (const auto& entry : list) {
    if (entry.IsScalar()) {
      entries.push_back({"", entry.Scalar(), entry.Mark()});
    } else if (entry.IsMap() && entry.size() == 1 && entry.begin()->second.IsScalar()) {
      entries.push_back({entry.begin()->first.as<std::string>(), entry.begin()->second.Scalar(), entry.Mark()});
    } else {
      throw bad(entry);
    }
  }
  return entries;
}

std::vector<std::string> available_fragments(const std::string& group, const std::vector<std::string>& search) {
  std::set<std::string> names;
  for (const auto& dir : search) {
    std::error_code ec;
    const fs::path folder = fs::path(dir) / group;
    if (!fs::is_directory(folder, ec)) continue;
    for (const auto& e : fs::directory_iterator(folder, ec))
      if (e.path().extension() == ".yaml") names.insert(e.path().stem().string());
  }
  return {names.begin(), names.end()};
}

std::string chain_text(const std::vector<std::string>& chain) { return fmt::format("{}", fmt::join(chain, " -> ")); }

// "a.yaml -> b.yaml:3:5": the files that led here, with the entry's line in the last one.
std::string entry_location(const std::vector<std::string>& chain, const DefaultsEntry& entry) {
  const YAML::Mark& mark = entry.mark;
  return mark.is_null() ? chain_text(chain)
                        : fmt::format("{}:{}:{}", chain_text(chain), mark.line + 1, mark.column + 1);
}

std::string find_fragment(const DefaultsEntry& entry, const std::vector<std::string>& search,
                          const std::vector<std::string>& chain) {
  const fs::path relative = entry.group.empty() ? fs::path(entry.name + ".yaml")
                                                : fs::path(entry.group) / (entry.name + ".yaml");
  for (const auto& dir : search) {
    std::error_code ec;
    if (fs::is_regular_file(fs::path(dir) / relative, ec)) return (fs::path(dir) / relative).string();
  }
  const std::string label = entry.group.empty() ? entry.name : entry.group + ": " + entry.name;
  std::string message = fmt::format("{}: defaults: no fragment '{}' ({} not found in {})", entry_location(chain, entry),
                                    label, relative.string(), fmt::join(search, ", "));
  if (!entry.group.empty()) {
    const auto names = available_fragments(entry.group, search);
    message += fmt::format("; available for {}: {}", entry.group, names.empty() ? "none" : fmt::format("{}", fmt::join(names, ", ")));
  }
  throw config_error(message);
}

// The node at dotted `prefix` inside `root`, created as a mapping where missing.
YAML::Node node_at(YAML::Node root, const std::string& prefix) {
  YAML::Node node;
  node.reset(root);  // reset, not operator=: assignment would rewrite `root`
  if (prefix.empty()) return node;
  for (const auto& part : split_dotted(prefix)) {
    if (!node[part] || !node[part].IsMap()) node[part] = YAML::Node(YAML::NodeType::Map);
    node.reset(node[part]);
  }
  return node;
}

void resolve_into(const YAML::Node& document, const std::string& file, const std::string& prefix,
                  const std::map<std::string, std::string>& swaps, const std::vector<std::string>& search,
                  std::vector<std::string> chain, ResolvedConfig& out) {
  chain.push_back(file);
  for (DefaultsEntry entry : parse_defaults(document, file)) {
    auto swap = swaps.find(entry.group);
    if (!entry.group.empty() && swap != swaps.end()) entry.name = swap->second;
    const std::string path = find_fragment(entry, search, chain);
    for (const auto& seen : chain)
      if (fs::equivalent(seen, path))
        throw config_error(fmt::format("{}: defaults: cycle in defaults back to {}", entry_location(chain, entry), path));
    const YAML::Node fragment = load_yaml_file(path);
    if (!fragment.IsNull() && !fragment.IsMap())
      throw config_error(fmt::format("{} -> {}: a fragment must be a mapping, got '{}'", chain_text(chain), path,
                                     yaml_to_flow(fragment)));
    const std::string at = entry.group.empty() ? prefix : (prefix.empty() ? entry.group : prefix + "." + entry.group);
    resolve_into(fragment, path, at, {}, search, chain, out);
  }
  YAML::Node own = YAML::Clone(document);
  if (own.IsMap()) own.remove("defaults");
  if (own.IsMap() && own.size() > 0) {
    merge_yaml(node_at(out.node, prefix), own);
    // From the document itself: clones carry no line numbers.
    record_sources(document, file, prefix, out.sources);
    erase_sources(prefix.empty() ? "defaults" : prefix + ".defaults", out.sources);
  }
}

}  // namespace

void merge_yaml(YAML::Node target, const YAML::Node& overlay) {
  for (const auto& item : overlay) {
    const std::string key = item.first.as<std::string>();
    if (target[key] && target[key].IsMap() && item.second.IsMap()) merge_yaml(target[key], item.second);
    else target[key] = YAML::Clone(item.second);
  }
}

std::vector<std::string> preset_search_path(const std::string& experiment_file) {
  std::vector<std::string> dirs;
  auto add = [&](const fs::path& dir) {
    std::error_code ec;
    if (!fs::is_directory(dir, ec)) return;
    const std::string canonical = fs::canonical(dir, ec).string();
    if (std::find(dirs.begin(), dirs.end(), canonical) == dirs.end()) dirs.push_back(canonical);
  };
  for (fs::path dir = fs::absolute(experiment_file).parent_path(); ; dir = dir.parent_path()) {
    add(dir / "configs");
    if (dir == dir.root_path() || dir.empty()) break;
  }
  if (const char* env = std::getenv("SQLAB_CONFIG_PATH")) {
    std::string list = env;
    for (size_t start = 0, colon; start <= list.size(); start = colon + 1) {
      colon = list.find(':', start);
      if (colon == std::string::npos) colon = list.size();
      if (colon > start) add(list.substr(start, colon - start));
    }
  }
  add(fs::path(SQLAB_SOURCE_DIR) / "configs");
  return dirs;
}

std::vector<std::string> preset_groups(const YAML::Node& document, const std::string& file) {
  std::vector<std::string> groups;
  for (const auto& entry : parse_defaults(document, file))
    if (!entry.group.empty()) groups.push_back(entry.group);
  return groups;
}

ResolvedConfig resolve_presets(const YAML::Node& document, const std::string& file,
                               const std::map<std::string, std::string>& swaps) {
  ResolvedConfig out;
  out.node = YAML::Node(YAML::NodeType::Map);
  const auto search = preset_search_path(file);
  for (const auto& [group, name] : swaps) {
    const auto names = available_fragments(group, search);
    if (std::find(names.begin(), names.end(), name) == names.end())
      throw config_error(fmt::format("{}: {}={}: no fragment '{}/{}.yaml' (available: {})", file, group, name, group,
                                     name, names.empty() ? "none" : fmt::format("{}", fmt::join(names, ", "))));
  }
  resolve_into(document, file, "", swaps, search, {}, out);
  return out;
}

}  // namespace sqlab
