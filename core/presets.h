// Presets (contract.md, "Presets"): an experiment's `defaults:` list names YAML
// fragments, Hydra-style. `{quant: w4a4}` puts quant/w4a4.yaml under `quant`; a
// plain name merges a whole file at the root. Later entries and the experiment's own
// keys win; mappings merge deeply, lists are replaced.
#pragma once

#include <yaml-cpp/yaml.h>

#include <map>
#include <string>
#include <vector>

#include "core/config.h"

namespace sqlab {

struct ResolvedConfig {
  YAML::Node node;    // the merged configuration, without `defaults`
  SourceMap sources;  // which file (and line) each key came from
};

// Folders searched for fragments, in order: `configs/` next to the experiment file or
// in any parent folder of it, the folders of SQLAB_CONFIG_PATH (':'-separated), and
// the presets installed with sqlab.
std::vector<std::string> preset_search_path(const std::string& experiment_file);

// The groups that the document's `defaults:` names ({quant: w4a4} -> "quant").
std::vector<std::string> preset_groups(const YAML::Node& document, const std::string& file);

// Merges the fragments of `document` (from `file`) and then its own keys. `swaps`
// replaces the fragment of a group (--set quant=w4a8, or a sweep over fragments).
ResolvedConfig resolve_presets(const YAML::Node& document, const std::string& file,
                               const std::map<std::string, std::string>& swaps = {});

// Deep merge: mappings merge key by key, anything else in `overlay` replaces.
void merge_yaml(YAML::Node target, const YAML::Node& overlay);

}  // namespace sqlab
