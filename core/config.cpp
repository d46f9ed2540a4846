#include "core/config.h"

#include <fmt/format.h>

#include <algorithm>
#include <cstdint>
#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <map>
#include <sstream>

namespace sqlab {

namespace {

// yaml-cpp accepts a key written twice in one mapping and keeps one of the values, so
// `quant: {a_bits: 4}` followed by `quant: {a_bits: 8}` would run silently with one of
// them (YAML 1.2 forbids duplicate keys). Every key in sqlab's files is a name, so a
// key that is a list or a mapping is an error too. `where` prefixes the message.
void check_mapping_keys(const YAML::Node& node, const std::string& where) {
  if (node.IsSequence()) {
    for (const auto& item : node) check_mapping_keys(item, where);
    return;
  }
  if (!node.IsMap()) return;
  std::map<std::string, YAML::Mark> seen;
  for (const auto& item : node) {
    const YAML::Mark mark = item.first.Mark();
    const std::string at = mark.is_null() ? where : fmt::format("{}:{}:{}", where, mark.line + 1, mark.column + 1);
    if (!item.first.IsScalar())
      throw config_error(fmt::format("{}: a key must be a name, not '{}'", at, yaml_to_flow(item.first)));
    auto [previous, fresh] = seen.emplace(item.first.Scalar(), mark);
    if (!fresh)
      throw config_error(fmt::format("{}: key '{}' appears twice in one mapping{}", at, item.first.Scalar(),
                                     previous->second.is_null() ? std::string()
                                                                : fmt::format(" (first on line {})", previous->second.line + 1)));
    check_mapping_keys(item.second, where);
  }
}

}  // namespace

YAML::Node load_yaml_file(const std::string& path) {
  std::error_code ec;
  if (std::filesystem::is_directory(path, ec))
    throw config_error(fmt::format("{}: is a directory, not a YAML file", path));
  std::ifstream in(path);
  if (!in) throw config_error(fmt::format("{}: cannot open file", path));
  YAML::Node node;
  try {
    node = YAML::Load(in);
  } catch (const YAML::ParserException& e) {
    throw config_error(fmt::format("{}:{}:{}: malformed YAML: {}", path, e.mark.line + 1,
                                   e.mark.column + 1, e.msg));
  } catch (const std::exception& e) {  // a read error (std::ios_base::failure)
    throw config_error(fmt::format("{}: cannot read: {}", path, e.what()));
  }
  check_mapping_keys(node, path);
  return node;
}

YAML::Node parse_yaml_value(const std::string& text, const std::string& origin) {
  YAML::Node node;
  try {
    node = YAML::Load(text);
  } catch (const YAML::ParserException& e) {
    throw config_error(fmt::format("{}: malformed YAML value '{}': {}", origin, text, e.msg));
  }
  check_mapping_keys(node, origin);
  return node;
}

YAML::Node clone_yaml(const YAML::Node& node) { return YAML::Clone(node); }

std::string yaml_to_flow(const YAML::Node& node) {
  if (!node || node.IsNull()) return "null";
  YAML::Emitter out;
  out << YAML::Flow << node;
  return out.c_str();
}

namespace {

void collect_differences(const YAML::Node& a, const YAML::Node& b, const std::string& path,
                         std::vector<std::string>& out) {
  if (a && b && a.IsMap() && b.IsMap()) {
    std::vector<std::string> keys;
    for (const auto& item : a) keys.push_back(item.first.as<std::string>());
    for (const auto& item : b)
      if (!a[item.first.as<std::string>()]) keys.push_back(item.first.as<std::string>());
    for (const auto& key : keys) collect_differences(a[key], b[key], path.empty() ? key : path + "." + key, out);
  } else if (yaml_to_flow(a) != yaml_to_flow(b)) {
    out.push_back(path.empty() ? "(top level)" : path);
  }
}

}  // namespace

std::vector<std::string> yaml_differences(const YAML::Node& a, const YAML::Node& b, const std::string& prefix) {
  std::vector<std::string> out;
  collect_differences(a, b, prefix, out);
  return out;
}

std::vector<std::string> split_dotted(const std::string& dotted) {
  std::vector<std::string> parts;
  size_t start = 0;
  while (true) {
    const size_t dot = dotted.find('.', start);
    parts.push_back(dotted.substr(start, dot == std::string::npos ? std::string::npos : dot - start));
    if (dot == std::string::npos) break;
    start = dot + 1;
  }
  return parts;
}

YAML::Node find_labelled(const YAML::Node& list, const std::string& label) {
  if (!list || !list.IsSequence()) return YAML::Node(YAML::NodeType::Undefined);
  for (const auto& entry : list) {
    if (!entry.IsMap()) continue;
    const YAML::Node name = entry["label"] ? entry["label"] : entry["method"];
    if (name && name.IsScalar() && name.Scalar() == label) return entry;
  }
  const bool is_index = !label.empty() && label.find_first_not_of("0123456789") == std::string::npos;
  if (is_index && std::stoul(label) < list.size()) return list[std::stoul(label)];
  return YAML::Node(YAML::NodeType::Undefined);
}

YAML::Mark locate_key(const YAML::Node& root, const std::string& dotted) {
  // Node::reset, not operator=: assigning to a yaml-cpp node rewrites what it refers to.
  YAML::Node node;
  node.reset(root);
  for (const std::string& part : split_dotted(dotted)) {
    if (!node) return YAML::Mark::null_mark();
    if (node.IsSequence()) node.reset(find_labelled(node, part));
    else if (node.IsMap() && node[part]) node.reset(node[part]);
    else return YAML::Mark::null_mark();
  }
  return node ? node.Mark() : YAML::Mark::null_mark();
}

namespace {

std::string entry_name(const YAML::Node& entry, size_t index) {
  if (entry.IsMap()) {
    const YAML::Node name = entry["label"] ? entry["label"] : entry["method"];
    if (name && name.IsScalar()) return name.Scalar();
  }
  return std::to_string(index);
}

std::string join_key(const std::string& prefix, const std::string& key) {
  return prefix.empty() ? key : prefix + "." + key;
}

std::string format_location(const std::string& file, const YAML::Mark& mark) {
  if (mark.is_null()) return file;
  return fmt::format("{}:{}:{}", file, mark.line + 1, mark.column + 1);
}

}  // namespace

void erase_sources(const std::string& prefix, SourceMap& sources) {
  sources.erase(prefix);
  const std::string below = prefix.empty() ? "" : prefix + ".";
  for (auto it = sources.lower_bound(below); it != sources.end() && it->first.rfind(below, 0) == 0;)
    it = sources.erase(it);
}

void record_sources(const YAML::Node& node, const std::string& file, const std::string& prefix,
                    SourceMap& sources) {
  if (!prefix.empty()) sources[prefix] = KeySource{file, node.Mark()};

  if (node.IsMap()) {
    for (const auto& item : node) {
      const std::string key = join_key(prefix, item.first.as<std::string>());
      // A mapping merges into what was there; anything else replaces it.
      if (!item.second.IsMap()) erase_sources(key, sources);
      record_sources(item.second, file, key, sources);
    }
  } else if (node.IsSequence()) {
    for (size_t i = 0; i < node.size(); ++i)
      record_sources(node[i], file, join_key(prefix, entry_name(node[i], i)), sources);
  }
}

ConfigReader::ConfigReader(YAML::Node node, std::string file, std::string path,
                           std::shared_ptr<const SourceMap> sources)
    : node_(node), file_(std::move(file)), path_(std::move(path)), sources_(std::move(sources)) {
  if (node_ && !node_.IsNull() && !node_.IsMap())
    throw config_error(fmt::format("{}: {}: expected a mapping, got '{}'", location_of(path_, node_),
                                   path_.empty() ? "(top level)" : path_, yaml_to_flow(node_)));
}

std::string ConfigReader::key_path(const std::string& key) const {
  return path_.empty() ? key : path_ + "." + key;
}

bool ConfigReader::has(const std::string& key) const {
  return node_ && node_.IsMap() && node_[key] && !node_[key].IsNull();
}

YAML::Node ConfigReader::lookup(const std::string& key) {
  if (std::find(known_.begin(), known_.end(), key) == known_.end()) known_.push_back(key);
  if (!has(key)) return YAML::Node(YAML::NodeType::Undefined);
  return node_[key];
}

YAML::Node ConfigReader::raw(const std::string& key) { return lookup(key); }

std::string ConfigReader::choice(const std::string& key, const std::string& fallback,
                                 const std::vector<std::string>& choices) {
  std::string value = get<std::string>(key, fallback);
  if (std::find(choices.begin(), choices.end(), value) == choices.end())
    fail(key, fmt::format("unknown value '{}' (valid: {})", value, fmt::join(choices, ", ")));
  return value;
}

ConfigReader ConfigReader::child(const std::string& key) {
  YAML::Node value = lookup(key);
  if (value && !value.IsMap()) fail(key, "expected a mapping, got '" + yaml_to_flow(value) + "'");
  return ConfigReader(value ? value : YAML::Node(), file_, key_path(key), sources_);
}

std::string ConfigReader::location_of(const std::string& full_path, const YAML::Node& node) const {
  if (!sources_) return format_location(file_, node ? node.Mark() : YAML::Mark::null_mark());
  // Nodes copied by sweeps and --set carry zero marks: take file and line from the
  // source map (the key itself, else the nearest enclosing key that has one).
  std::string probe = full_path;
  while (true) {
    auto it = sources_->find(probe);
    if (it != sources_->end()) return format_location(it->second.file, it->second.mark);
    const size_t dot = probe.rfind('.');
    if (probe.empty() || dot == std::string::npos) return file_;
    probe = probe.substr(0, dot);
  }
}

std::string ConfigReader::existing_path(const std::string& key, bool required) {
  const std::string written = required ? require<std::string>(key) : get<std::string>(key, "");
  const std::string path = expand_path_variables(written);
  std::error_code ec;
  if (!path.empty() && !std::filesystem::exists(path, ec)) {
    if (path != written)  // a fetched model that is not there yet
      fail(key, fmt::format("no such file '{}' ({} is the model cache: `make models` or scripts/fetch_models.sh "
                            "fetches the models sqlab uses)",
                            path, model_cache_dir()));
    fail(key, fmt::format("no such file '{}' (relative paths are taken from the current directory, {})", path,
                          std::filesystem::current_path(ec).string()));
  }
  return path;
}

std::string ConfigReader::where(const std::string& key) const {
  const YAML::Node node = has(key) ? node_[key] : node_;
  return location_of(key_path(key), node) + ": " + key_path(key);
}

void ConfigReader::fail(const std::string& key, const std::string& message) const {
  throw config_error(where(key) + ": " + message);
}

void ConfigReader::finish() const {
  if (!node_ || !node_.IsMap()) return;
  for (const auto& item : node_) {
    const std::string key = item.first.as<std::string>();
    if (std::find(known_.begin(), known_.end(), key) != known_.end()) continue;
    std::vector<std::string> valid = known_;
    std::sort(valid.begin(), valid.end());
    fail(key, fmt::format("unknown key (valid here: {})",
                          valid.empty() ? "none" : fmt::format("{}", fmt::join(valid, ", "))));
  }
}

template <> const char* yaml_type_name<int>() { return "an integer"; }
template <> const char* yaml_type_name<int64_t>() { return "an integer"; }
template <> const char* yaml_type_name<uint64_t>() { return "a non-negative integer"; }
template <> const char* yaml_type_name<double>() { return "a number"; }
template <> const char* yaml_type_name<bool>() { return "true or false"; }
template <> const char* yaml_type_name<std::string>() { return "a string"; }
template <> const char* yaml_type_name<std::vector<int64_t>>() { return "a list of integers"; }
template <> const char* yaml_type_name<std::vector<double>>() { return "a list of numbers"; }
template <> const char* yaml_type_name<std::vector<std::string>>() { return "a list of strings"; }

std::string model_cache_dir() {
  const char* models = std::getenv("SQLAB_MODELS");
  if (models && *models) return models;
  const char* home = std::getenv("HOME");
  return std::string(home && *home ? home : ".") + "/.cache/sqlab/models";
}

std::string expand_path_variables(const std::string& path) {
  static const std::string kModels = "${SQLAB_MODELS}";
  const std::string cache = model_cache_dir();
  std::string out = path;
  for (size_t at = out.find(kModels); at != std::string::npos; at = out.find(kModels, at + cache.size()))
    out.replace(at, kModels.size(), cache);
  return out;
}

}  // namespace sqlab
