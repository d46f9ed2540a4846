// Reading YAML configuration with precise errors: every read goes through a
// ConfigReader, which knows the file, the key path and the line of each value, and
// remembers which keys were read so that leftover (unknown) keys are errors.
#pragma once

#include <yaml-cpp/yaml.h>

#include <cstdint>
#include <map>
#include <memory>
#include <string>
#include <vector>

#include "core/error.h"

namespace sqlab {

// Parses a YAML file; syntax errors become config errors with file:line:col.
YAML::Node load_yaml_file(const std::string& path);
// Parses a YAML string (for --set values and sweep values).
YAML::Node parse_yaml_value(const std::string& text, const std::string& origin);
// Deep copy (yaml-cpp nodes share storage on assignment).
YAML::Node clone_yaml(const YAML::Node& node);
// One-line flow-style text of a node: "4", "[32, 32]", "{a: 1}".
std::string yaml_to_flow(const YAML::Node& node);
// Dotted paths at which two YAML trees differ (mappings compared key by key).
std::vector<std::string> yaml_differences(const YAML::Node& a, const YAML::Node& b, const std::string& prefix = "");
// Splits "a.b.c" into its parts.
std::vector<std::string> split_dotted(const std::string& dotted);
// The element of a `methods:` list with this label (or index); null if none.
YAML::Node find_labelled(const YAML::Node& list, const std::string& label);
// Where `dotted` (e.g. "methods.art.outlier_threshold") stands in `root`; a null
// mark if it does not.
YAML::Mark locate_key(const YAML::Node& root, const std::string& dotted);

// Where each key of a resolved configuration was written: dotted key path (list
// entries by label) -> file and position. Presets merge several files into one
// configuration; errors must still name the file and line a key came from.
struct KeySource {
  std::string file;
  YAML::Mark mark;
};
using SourceMap = std::map<std::string, KeySource>;

// Records every key path of `node` (placed at `prefix`) as coming from `file`,
// replacing what earlier files said about those paths and below them.
void record_sources(const YAML::Node& node, const std::string& file, const std::string& prefix,
                    SourceMap& sources);
// Forgets `prefix` and everything below it.
void erase_sources(const std::string& prefix, SourceMap& sources);

class ConfigReader {
 public:
  // `node` must be a mapping or null (treated as empty). `path` is the dotted key
  // path of this mapping inside `file` ("" at the root). Nodes copied by sweeps and
  // --set have no line numbers; `sources` supplies file and line for keys that were
  // written in a file (without it, the nodes' own marks are used).
  ConfigReader(YAML::Node node, std::string file, std::string path,
               std::shared_ptr<const SourceMap> sources = nullptr);

  bool has(const std::string& key) const;

  template <class T>
  T get(const std::string& key, const T& fallback) {
    YAML::Node value = lookup(key);
    return value ? convert<T>(key, value) : fallback;
  }

  template <class T>
  T require(const std::string& key) {
    YAML::Node value = lookup(key);
    if (!value) fail(key, "required key is missing");
    return convert<T>(key, value);
  }

  // A file or directory path that must exist ("" when absent and not `required`); relative
  // paths are taken from the current directory, and the error says so. `${SQLAB_MODELS}`
  // is the model cache (core/system.h).
  std::string existing_path(const std::string& key, bool required = true);

  // A string that must be one of `choices`; the error lists them.
  std::string choice(const std::string& key, const std::string& fallback,
                     const std::vector<std::string>& choices);

  // A nested mapping (empty if absent); wrong type is an error.
  ConfigReader child(const std::string& key);
  // The raw node (marks the key as known); null if absent.
  YAML::Node raw(const std::string& key);

  // Throws for every key that nobody asked about, listing the known ones.
  void finish() const;

  // "file:line:col: path.key" for messages.
  std::string where(const std::string& key) const;
  [[noreturn]] void fail(const std::string& key, const std::string& message) const;

  const std::string& file() const { return file_; }
  const std::string& path() const { return path_; }
  std::string key_path(const std::string& key) const;

 private:
  YAML::Node lookup(const std::string& key);
  // "file:line:col" of a dotted path (just "file" when unknown).
  std::string location_of(const std::string& full_path, const YAML::Node& node) const;
  template <class T>
  T convert(const std::string& key, const YAML::Node& value) const;

  YAML::Node node_;
  std::string file_;
  std::string path_;
  std::shared_ptr<const SourceMap> sources_;
  std::vector<std::string> known_;
};

// Human name of a C++ type for "expected ..." messages.
template <class T>
const char* yaml_type_name();
template <> const char* yaml_type_name<int>();
template <> const char* yaml_type_name<int64_t>();
template <> const char* yaml_type_name<uint64_t>();
template <> const char* yaml_type_name<double>();
template <> const char* yaml_type_name<bool>();
template <> const char* yaml_type_name<std::string>();
template <> const char* yaml_type_name<std::vector<int64_t>>();
template <> const char* yaml_type_name<std::vector<double>>();
template <> const char* yaml_type_name<std::vector<std::string>>();

template <class T>
T ConfigReader::convert(const std::string& key, const YAML::Node& value) const {
  try {
    return value.as<T>();
  } catch (const YAML::Exception&) {
    fail(key, std::string("expected ") + yaml_type_name<T>() + ", got '" +
                  yaml_to_flow(value) + "'");
  }
}

// The cache of real models that scripts/fetch_models.sh (`make models`) fills:
// $SQLAB_MODELS, else ~/.cache/sqlab/models. Never inside the repository.
std::string model_cache_dir();

// A path from a config with `${SQLAB_MODELS}` replaced by model_cache_dir(), so
// experiments name a fetched model without knowing where the cache is.
std::string expand_path_variables(const std::string& path);

}  // namespace sqlab
