// Dataset `safetensors`: sites from a safetensors file (contract.md, "Site files"):
// tensors `X` (T x n) and `W` (C_out x n) for one site, or `NAME.X` and `NAME.W` for
// several (`sites: [NAME, ...]` selects; NAME may itself contain dots). F16, BF16,
// F32 and F64 are read; other tensors in the file are ignored. The header is checked
// by the project's one safetensors reader (io/safetensors.h).
#include <ATen/ATen.h>
#include <fmt/format.h>

#include <algorithm>
#include <memory>
#include <set>

#include "core/dataset.h"
#include "core/error.h"
#include "datasets/site_file.h"
#include "io/safetensors.h"

namespace sqlab {
namespace {

bool ends_with(const std::string& s, const std::string& suffix) {
  return s.size() > suffix.size() && s.compare(s.size() - suffix.size(), suffix.size(), suffix) == 0;
}

class SafetensorsDataset : public MultiSiteFileDataset {
 public:
  using MultiSiteFileDataset::MultiSiteFileDataset;

 private:
  // (site name, tensor-name prefix: "" or "NAME.")
  std::vector<std::pair<std::string, std::string>> layout(const SafetensorsFile& file) const {
    const bool root = file.contains("X") || file.contains("W");
    std::vector<std::string> grouped;  // NAME of every NAME.X / NAME.W, in file order
    for (const std::string& name : file.names())
      if (ends_with(name, ".X") || ends_with(name, ".W")) {
        const std::string site = name.substr(0, name.size() - 2);
        if (std::find(grouped.begin(), grouped.end(), site) == grouped.end()) grouped.push_back(site);
      }
    if (root && !grouped.empty())
      throw config_error(fmt::format("{}: holds both a single site (X, W) and named sites (NAME.X, NAME.W: {}); keep "
                                     "one layout", path_, list_names(grouped)));
    if (!root && grouped.empty())
      throw config_error(fmt::format("{}: no site found: expected tensors X and W, or NAME.X and NAME.W; the file "
                                     "holds: {}", path_, list_names(file.names())));
    if (root) {
      if (!selected_.empty())
        throw config_error(fmt::format("{}: `sites` selects among NAME.X / NAME.W, but {} holds one site (X, W)",
                                       sites_where_, path_));
      return {{options_.name.empty() ? "site" : options_.name, ""}};
    }
    if (!options_.name.empty())
      throw config_error(fmt::format("{}: `name` is for a single site (X, W); named sites keep their names", path_));
    std::vector<std::pair<std::string, std::string>> result;
    for (const std::string& name : selected_.empty() ? grouped : selected_) {
      if (std::find(grouped.begin(), grouped.end(), name) == grouped.end())
        throw config_error(fmt::format("{}: site '{}' not found in {} (sites present: {})", sites_where_, name, path_,
                                       list_names(grouped)));
      result.emplace_back(name, name + ".");
    }
    return result;
  }

  const SafetensorsEntry& entry(const SafetensorsFile& file, const std::string& name) const {
    const SafetensorsEntry* e = file.find(name);
    if (!e)
      throw config_error(fmt::format("{}: tensor '{}' is missing (the file holds: {})", path_, name,
                                     list_names(file.names())));
    if (e->dtype != "F16" && e->dtype != "BF16" && e->dtype != "F32" && e->dtype != "F64")
      throw config_error(fmt::format("{}: tensor '{}': unsupported dtype {} (supported: F16, BF16, F32, F64)", path_,
                                     name, e->dtype));
    return *e;
  }

  std::vector<RawSite> read() const override {
    const SafetensorsFile file(path_);
    std::vector<RawSite> sites;
    for (const auto& [name, prefix] : layout(file)) {
      const SafetensorsEntry& x = entry(file, prefix + "X");
      const SafetensorsEntry& w = entry(file, prefix + "W");
      RawSite raw{name, {}, {}, fmt::format("{}: tensor '{}'", path_, x.name), fmt::format("{}: tensor '{}'", path_, w.name)};
      check_site_shapes(name, raw.x_origin, x.shape, raw.w_origin, w.shape, options_);
      raw.X = file.tensor(x.name, x.dtype == "F64" ? at::kDouble : at::kFloat);
      raw.W = file.tensor(w.name, w.dtype == "F64" ? at::kDouble : at::kFloat);
      sites.push_back(std::move(raw));
    }
    return sites;
  }

};

}  // namespace

void register_safetensors_dataset(DatasetRegistry& registry) {
  registry.add("safetensors", "site file in safetensors: X and W, or NAME.X and NAME.W (F16/BF16/F32/F64); path, "
                              "sites, tokens, token_sample, dtype",
               [](ConfigReader& options) { return std::make_unique<SafetensorsDataset>(options); });
}

}  // namespace sqlab
