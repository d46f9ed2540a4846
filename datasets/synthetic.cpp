#include "datasets/synthetic.h"

#include <ATen/ATen.h>
#include <fmt/format.h>

#include <cfloat>
#include <cmath>

#include "core/random.h"

namespace sqlab {
namespace {

// Student-t samples with unit variance (dof > 2), or Gaussian when dof <= 0.
at::Tensor heavy_tailed(int64_t rows, int64_t cols, double dof, at::Generator gen) {
  at::Tensor z = at::randn({rows, cols}, gen, at::kFloat);
  if (dof <= 0) return z;
  // chi2(dof) = 2 Gamma(dof / 2); t = z / sqrt(chi2 / dof).
  const at::Tensor alpha = at::full({rows, cols}, dof / 2.0, at::kFloat);
  const at::Tensor chi2 = 2.0 * at::_standard_gamma(alpha, gen);
  at::Tensor t = z / at::sqrt(chi2 / dof);
  if (dof > 2) t = t * std::sqrt((dof - 2.0) / dof);
  return t;
}

// `count` distinct channels drawn at random, excluding `taken`.
std::vector<int64_t> pick_channels(int64_t count, int64_t n, const std::vector<int64_t>& taken,
                                   at::Generator gen) {
  const at::Tensor order = at::randperm(n, gen, at::kLong);
  std::vector<int64_t> picked;
  for (int64_t i = 0; i < n && static_cast<int64_t>(picked.size()) < count; ++i) {
    const int64_t c = order[i].item<int64_t>();
    if (std::find(taken.begin(), taken.end(), c) == taken.end()) picked.push_back(c);
  }
  return picked;
}

double random_sign(at::Generator gen) {
  return at::rand({1}, gen, at::kDouble).item<double>() < 0.5 ? -1.0 : 1.0;
}

}  // namespace

std::vector<Site> SyntheticDataset::load(uint64_t seed) const {
  const uint64_t data_seed = options_.seed >= 0 ? static_cast<uint64_t>(options_.seed) : seed;
  std::vector<Site> sites;
  for (int64_t s = 0; s < options_.sites; ++s) sites.push_back(make_site(s, data_seed));
  return sites;
}

Site SyntheticDataset::make_site(int64_t index, uint64_t seed) const {
  const auto& o = options_;
  const std::string name = fmt::format("layer{}", index);
  at::Generator gen = make_generator(seed, "synthetic/" + name);
  at::Tensor x = heavy_tailed(o.tokens, o.channels, o.bulk_dof, gen) * o.bulk_scale;

  std::vector<int64_t> massive = o.massive_channels;
  if (massive.empty()) massive = pick_channels(o.massive_count, o.channels, {}, gen);
  for (size_t i = 0; i < massive.size(); ++i) {
    const double magnitude = o.massive_magnitude[std::min(i, o.massive_magnitude.size() - 1)];
    const double value = random_sign(gen) * magnitude;
    for (int64_t t : o.massive_tokens) x[t][massive[i]] = value;
  }

  for (int64_t c : pick_channels(o.normal_count, o.channels, massive, gen)) {
    at::Tensor column = x.select(1, c);
    const double offset = random_sign(gen) * o.normal_offset;
    at::Tensor updated = o.normal_scale * (column + offset);
    for (int64_t t : o.massive_tokens) updated[t] = column[t];  // keep the MO tokens' values
    column.copy_(updated);
  }

  const int64_t out = o.out_features > 0 ? o.out_features : o.channels;
  const at::Tensor row_scale = at::exp(o.weight_spread * at::randn({out, 1}, gen, at::kFloat));
  at::Tensor w = at::randn({out, o.channels}, gen, at::kFloat) * row_scale /
                 std::sqrt(static_cast<double>(o.channels));
  Site site{name, x.contiguous(), w.contiguous(), {}};
  if (!massive.empty()) site.known_outlier_tokens = o.massive_tokens;
  return site;
}

namespace {

void check_indices(ConfigReader& reader, const std::string& key, const std::vector<int64_t>& v,
                   int64_t limit, const char* what) {
  for (int64_t i : v)
    if (i < 0 || i >= limit)
      reader.fail(key, fmt::format("{} {} out of range [0, {})", what, i, limit));
}

// The activations are float32: a value beyond its range would become inf when the data is
// built, so it is a configuration error that names the key, not a run-time failure.
double float32_value(ConfigReader& reader, const std::string& key, double value) {
  if (!(std::abs(value) <= FLT_MAX))
    reader.fail(key, fmt::format("{} does not fit in float32 (largest {:g})", value, FLT_MAX));
  return value;
}

void parse_massive(ConfigReader massive, SyntheticOptions& o) {
  o.massive_count = massive.get<int64_t>("count", o.massive_count);
  if (massive.has("magnitude")) {
    YAML::Node m = massive.raw("magnitude");
    o.massive_magnitude = m.IsSequence() ? massive.get<std::vector<double>>("magnitude", {})
                                         : std::vector<double>{massive.get<double>("magnitude", 0)};
    if (o.massive_magnitude.empty()) massive.fail("magnitude", "must not be empty");
    for (double value : o.massive_magnitude) float32_value(massive, "magnitude", value);
  }
  o.massive_tokens = massive.get<std::vector<int64_t>>("tokens", o.massive_tokens);
  o.massive_channels = massive.get<std::vector<int64_t>>("channels", o.massive_channels);
  if (!o.massive_channels.empty()) {
    if (massive.has("count") && o.massive_count != static_cast<int64_t>(o.massive_channels.size()))
      massive.fail("count", "does not match the number of listed channels");
    o.massive_count = static_cast<int64_t>(o.massive_channels.size());
  }
  if (o.massive_count < 0 || o.massive_count > o.channels)
    massive.fail("count", fmt::format("must be in [0, {}]", o.channels));
  check_indices(massive, "tokens", o.massive_tokens, o.tokens, "token");
  check_indices(massive, "channels", o.massive_channels, o.channels, "channel");
  massive.finish();
}

void parse_normal(ConfigReader normal, SyntheticOptions& o) {
  o.normal_count = normal.get<int64_t>("count", o.normal_count);
  o.normal_scale = float32_value(normal, "scale", normal.get<double>("scale", o.normal_scale));
  o.normal_offset = float32_value(normal, "offset", normal.get<double>("offset", o.normal_offset));
  if (o.normal_count < 0 || o.normal_count + o.massive_count > o.channels)
    normal.fail("count", fmt::format("must be in [0, {}]", o.channels - o.massive_count));
  normal.finish();
}

}  // namespace

SyntheticOptions parse_synthetic_options(ConfigReader& reader) {
  SyntheticOptions o;
  o.tokens = reader.get<int64_t>("tokens", o.tokens);
  o.channels = reader.get<int64_t>("channels", o.channels);
  o.out_features = reader.get<int64_t>("out_features", o.out_features);
  o.sites = reader.get<int64_t>("sites", o.sites);
  if (o.tokens < 1) reader.fail("tokens", "must be positive");
  if (o.channels < 2) reader.fail("channels", "must be at least 2");
  if (o.out_features < 0) reader.fail("out_features", "must be positive (0: same as channels)");
  if (o.sites < 1) reader.fail("sites", "must be positive");
  ConfigReader bulk = reader.child("bulk");
  o.bulk_dof = bulk.get<double>("dof", o.bulk_dof);
  o.bulk_scale = float32_value(bulk, "scale", bulk.get<double>("scale", o.bulk_scale));
  if (o.bulk_dof > 0 && o.bulk_dof <= 2) bulk.fail("dof", "must be > 2 (finite variance) or 0 (Gaussian)");
  bulk.finish();
  parse_massive(reader.child("massive"), o);
  parse_normal(reader.child("normal"), o);
  ConfigReader weight = reader.child("weight");
  o.weight_spread = weight.get<double>("spread", o.weight_spread);
  weight.finish();
  o.seed = reader.get<int64_t>("seed", o.seed);
  return o;
}

void register_synthetic(DatasetRegistry& registry) {
  registry.add("synthetic", "seeded LLaMA-like activations: heavy-tailed bulk, massive and normal outliers",
               [](ConfigReader& options) {
                 return std::make_unique<SyntheticDataset>(parse_synthetic_options(options));
               });
}

}  // namespace sqlab
