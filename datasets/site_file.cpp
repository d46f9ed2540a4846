#include "datasets/site_file.h"

#include <ATen/ATen.h>
#include <fmt/format.h>

#include <cmath>
#include <filesystem>

#include "core/error.h"
#include "core/random.h"

namespace sqlab {
namespace {

std::string value_text(double v) {
  if (std::isnan(v)) return "NaN";
  if (std::isinf(v)) return v > 0 ? "+Inf" : "-Inf";
  return fmt::format("{}", v);
}

// Index [row, col] and value of the first entry where `bad` holds, if any.
bool first_bad(const at::Tensor& bad, const at::Tensor& values, int64_t& row, int64_t& col, double& value) {
  if (!bad.any().item<bool>()) return false;
  const int64_t flat = bad.reshape({-1}).nonzero()[0][0].item<int64_t>();
  row = flat / values.size(1);
  col = flat % values.size(1);
  value = values[row][col].item<double>();
  return true;
}

void check_finite(const at::Tensor& t, const std::string& origin, at::ScalarType target) {
  int64_t row = 0, col = 0;
  double value = 0;
  if (first_bad(at::logical_not(at::isfinite(t)), t, row, col, value))
    throw config_error(fmt::format("{}: {} at [{}, {}] (the first non-finite entry; row {} of {}, column {} of {})",
                                   origin, value_text(value), row, col, row, t.size(0), col, t.size(1)));
  if (target == at::kFloat && t.scalar_type() == at::kDouble &&
      first_bad(at::logical_not(at::isfinite(t.to(at::kFloat))), t, row, col, value))
    throw config_error(fmt::format("{}: value {} at [{}, {}] overflows float32 (set data.dtype: float64)", origin,
                                   value_text(value), row, col));
}

}  // namespace

SiteFileOptions parse_site_file_options(ConfigReader& reader) {
  SiteFileOptions o;
  o.tokens = reader.get<int64_t>("tokens", 0);
  if (o.tokens < 0) reader.fail("tokens", fmt::format("must be positive (or 0 for all tokens), got {}", o.tokens));
  o.tokens_where = reader.where("tokens");
  o.random_tokens = reader.choice("token_sample", "first", {"first", "random"}) == "random";
  o.dtype = reader.choice("dtype", "float32", {"float32", "float64"}) == "float64" ? at::kDouble : at::kFloat;
  o.name = reader.get<std::string>("name", "");
  if (reader.has("name") && (o.name.empty() || o.name.find('/') != std::string::npos || o.name == "."))
    reader.fail("name", "must be non-empty, not '.', and contain no '/'");
  return o;
}

std::string require_existing_file(ConfigReader& reader, const std::string& key) {
  const std::string path = reader.existing_path(key);
  std::error_code ec;
  if (std::filesystem::is_directory(path, ec)) reader.fail(key, fmt::format("'{}' is a directory, not a file", path));
  return path;
}

void check_site_shapes(const std::string& site, const std::string& x_origin, const std::vector<int64_t>& x_shape,
                       const std::string& w_origin, const std::vector<int64_t>& w_shape,
                       const SiteFileOptions& options) {
  if (x_shape.size() != 2)
    throw config_error(fmt::format("{}: expected a 2-D matrix (tokens x channels), got shape {}", x_origin,
                                   shape_string(x_shape)));
  if (w_shape.size() != 2)
    throw config_error(fmt::format("{}: expected a 2-D matrix (out_features x channels), got shape {}", w_origin,
                                   shape_string(w_shape)));
  if (x_shape[0] == 0) throw config_error(fmt::format("{}: zero tokens (shape {})", x_origin, shape_string(x_shape)));
  if (x_shape[1] == 0) throw config_error(fmt::format("{}: zero channels (shape {})", x_origin, shape_string(x_shape)));
  if (w_shape[0] == 0) throw config_error(fmt::format("{}: zero rows (shape {})", w_origin, shape_string(w_shape)));
  if (x_shape[1] != w_shape[1])
    throw config_error(fmt::format("X and W of site '{}' disagree on n: {} has {} channels (shape {}) but {} has {} "
                                   "input features (shape {}); W must be out_features x n",
                                   site, x_origin, x_shape[1], shape_string(x_shape), w_origin, w_shape[1],
                                   shape_string(w_shape)));
  if (options.tokens > x_shape[0])
    throw config_error(fmt::format("{}: {} tokens asked for, but {} has only {}", options.tokens_where, options.tokens,
                                   x_origin, x_shape[0]));
}

void check_site_values(const RawSite& site, const SiteFileOptions& options) {
  check_finite(site.X, site.x_origin, options.dtype);
  check_finite(site.W, site.w_origin, options.dtype);
}

Site finish_site(const RawSite& site, const SiteFileOptions& options, uint64_t seed) {
  at::Tensor x = site.X;
  const int64_t total = x.size(0);
  if (options.tokens > 0 && options.tokens < total) {
    if (options.random_tokens) {
      at::Generator gen = make_generator(seed, "token_sample/" + site.name);
      const at::Tensor picked = std::get<0>(at::randperm(total, gen, at::kLong).slice(0, 0, options.tokens).sort());
      x = x.index_select(0, picked);
    } else {
      x = x.slice(0, 0, options.tokens);
    }
  }
  Site result;  // known_outlier_tokens stays empty: a file does not say
  result.name = site.name;
  result.X = x.to(options.dtype).contiguous();
  result.W = site.W.to(options.dtype).contiguous();
  return result;
}

std::string list_names(const std::vector<std::string>& names, size_t limit) {
  if (names.empty()) return "(nothing)";
  std::vector<std::string> shown(names.begin(), names.begin() + std::min(limit, names.size()));
  std::string text = fmt::format("{}", fmt::join(shown, ", "));
  if (names.size() > limit) text += fmt::format(" ... and {} more", names.size() - limit);
  return text;
}

std::string shape_string(const std::vector<int64_t>& shape) { return fmt::format("[{}]", fmt::join(shape, ", ")); }

MultiSiteFileDataset::MultiSiteFileDataset(ConfigReader& reader) {
  path_ = require_existing_file(reader, "path");
  selected_ = reader.get<std::vector<std::string>>("sites", {});
  sites_where_ = reader.where("sites");
  options_ = parse_site_file_options(reader);
}

std::vector<Site> MultiSiteFileDataset::load(uint64_t seed) const {
  std::vector<Site> sites;
  for (const RawSite& raw : read()) sites.push_back(finish_site(raw, options_, seed));
  return sites;
}

void MultiSiteFileDataset::validate() const {
  for (const RawSite& raw : read()) check_site_values(raw, options_);
}

}  // namespace sqlab
