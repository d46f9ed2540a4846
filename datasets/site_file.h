// What the site-file datasets (hdf5, safetensors, npy) share: the common keys
// `tokens`, `token_sample`, `dtype` and `name`, the checks every site passes before a
// run starts (shapes, widths, zero tokens, NaN/Inf with the first index), and the
// final token selection. Errors are config errors (exit 2) naming the file and the
// dataset or tensor ("origin").
#pragma once

#include <ATen/core/Tensor.h>

#include <cstdint>
#include <string>
#include <vector>

#include "core/config.h"
#include "core/dataset.h"
#include "core/site.h"

namespace sqlab {

struct SiteFileOptions {
  int64_t tokens = 0;          // 0: all tokens
  bool random_tokens = false;  // token_sample: random (seeded by the run's seed)
  at::ScalarType dtype = at::kFloat;
  std::string name;            // site name for single-site layouts ("" when not given)
  std::string tokens_where;    // "file:line: data.tokens" for messages
};

// Reads tokens, token_sample, dtype and name.
SiteFileOptions parse_site_file_options(ConfigReader& reader);

// A site's tensors as read from a file: float32, or float64 when the file holds
// float64 (so that overflow into float32 can be reported).
struct RawSite {
  std::string name;
  at::Tensor X, W;
  std::string x_origin, w_origin;  // "FILE: dataset /sites/a/X", "FILE: tensor 'a.X'"
};

// The path of a required file key, checked to exist: "file:line: data.path: no such
// file 'x.h5'" otherwise. Returns the path as written.
std::string require_existing_file(ConfigReader& reader, const std::string& key);

// Shape checks before any data is read: 2-D, non-empty, X and W agree on n, and
// `tokens` does not exceed X's rows.
void check_site_shapes(const std::string& site, const std::string& x_origin, const std::vector<int64_t>& x_shape,
                       const std::string& w_origin, const std::vector<int64_t>& w_shape,
                       const SiteFileOptions& options);

// NaN/Inf check of X and W (first offending index and value), and of their conversion
// to the requested dtype (float64 values that overflow float32).
void check_site_values(const RawSite& site, const SiteFileOptions& options);

// The site of a run: tokens selected (first N, or N random ones in their original
// order, seeded by `seed` and the site name), converted to the requested dtype.
Site finish_site(const RawSite& site, const SiteFileOptions& options, uint64_t seed);

// "a, b, c" (at most `limit` names, then "... and K more"); "(nothing)" when empty.
std::string list_names(const std::vector<std::string>& names, size_t limit = 20);

// "[2, 3]"
std::string shape_string(const std::vector<int64_t>& shape);

// A site file holding one or several named sites (hdf5, safetensors): the keys `path`
// (must exist), `sites` (which named sites; all by default) and the common options; a
// format supplies read(), which checks shapes and returns the selected sites.
class MultiSiteFileDataset : public Dataset {
 public:
  explicit MultiSiteFileDataset(ConfigReader& reader);
  std::vector<Site> load(uint64_t seed) const override;
  void validate() const override;

 protected:
  virtual std::vector<RawSite> read() const = 0;

  std::string path_;
  std::vector<std::string> selected_;  // `sites`; empty: every site in the file
  std::string sites_where_;            // "file:line: data.sites" for messages
  SiteFileOptions options_;
};

}  // namespace sqlab
