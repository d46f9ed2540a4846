// llama_shapes: a whole model's linear sites with a LLaMA's shapes (default LLaMA-2-7B:
// 32 layers, hidden size 4096, MLP size 11008), generated layer by layer and streamed to the
// runner one site at a time (Dataset::site_count / load_site), so the weights (26 GB for 7B
// in float32) are never all in memory at once. For timing and memory studies of a full
// weight-side pass (experiments/bench_llama2_7b_shapes.yaml): the values are synthetic.
//
// Sites, per layer L, in this order: layerL.q, .k, .v (W: dim x dim, kv_dim x dim), .o (dim x
// dim), .gate, .up (hidden x dim), .down (dim x hidden). Each site's X holds `tokens` calibration
// activations of its input: q, k and v share the attention input, gate and up the MLP input
// (generated once and kept while its sites are served); o reads the attention output and down
// the MLP's inner activations (width `hidden`).
//
// Activations: a Gaussian-like bulk (the sum of four uniforms, scaled to unit variance; bounded
// at 3.5 sigma), `massive.count` massive-outlier channels per input width at `massive.tokens`
// (the same channels in every layer, as LLaMA's; at width `dim` they can be given with
// `massive.channels`, e.g. LLaMA-2-7B's [1415, 2533]), and `normal.count` normal-outlier
// channels at `normal.scale` x the bulk with a consistent offset. Weights: the same bulk /
// sqrt(n), each output channel scaled by exp(spread * N(0, 1)).
//
// Speed: LibTorch's randn runs at ~40 M values/s here (one generator, one thread), which would
// take three minutes for 7B's 6.5 G weights. The bulk comes from a counter-based hash instead
// (a row key from splitmix64, then a vectorized 32-bit hash per entry), filled in parallel: the
// same values whatever the thread count.
//
// Stage timing reported per site: "generate" (the weights), "statistics" (the calibration
// activations: the stand-in for running calibration text through the model).
#include <ATen/ATen.h>
#include <ATen/Parallel.h>
#include <fmt/format.h>

#include <chrono>
#include <cmath>
#include <mutex>
#include <string>
#include <vector>

#include "core/config.h"
#include "core/dataset.h"
#include "core/random.h"

namespace sqlab {
namespace {

struct LlamaShapesOptions {
  int64_t layers = 32;
  int64_t dim = 4096;
  int64_t hidden = 11008;
  int64_t kv_dim = 0;  // 0: dim (no grouped-query attention)
  int64_t tokens = 2048;
  std::vector<std::string> projections{"q", "k", "v", "o", "gate", "up", "down"};
  int64_t massive_count = 2;
  std::vector<double> massive_magnitude{2500.0, 1500.0};
  std::vector<int64_t> massive_tokens{0};
  std::vector<int64_t> massive_channels;  // at width dim; empty: random
  int64_t normal_count = 32;
  double normal_scale = 8.0;
  double normal_offset = 1.0;
  double weight_spread = 0.5;
  int64_t seed = -1;
};

const std::vector<std::string> kProjections{"q", "k", "v", "o", "gate", "up", "down"};

double seconds_now() {
  return std::chrono::duration<double>(std::chrono::steady_clock::now().time_since_epoch()).count();
}

inline uint64_t splitmix64(uint64_t z) {
  z += 0x9e3779b97f4a7c15ULL;
  z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ULL;
  z = (z ^ (z >> 27)) * 0x94d049bb133111ebULL;
  return z ^ (z >> 31);
}

// A 32-bit integer hash (lowbias32): 32-bit multiplies, so a row vectorizes.
inline uint32_t hash32(uint32_t x) {
  x ^= x >> 16;
  x *= 0x7feb352dU;
  x ^= x >> 15;
  x *= 0x846ca68bU;
  x ^= x >> 16;
  return x;
}

// One row: entry c = scale * (the sum of four 16-bit uniforms from two hashes of c, centered
// and scaled to unit variance: Irwin-Hall, approximately standard normal). Compiled for
// AVX-512, AVX2 and the baseline (the multiplies vectorize only with SSE4.1 and later).
__attribute__((target_clones("avx512f", "avx2", "default")))
void fill_row(float* row, int64_t cols, uint32_t key_a, uint32_t key_b, float scale) {
  constexpr float kMean = 4.0f * 32767.5f;
  const float factor = scale / 37837.23f;  // sqrt(4 * (65536^2 - 1) / 12)
  for (int64_t c = 0; c < cols; ++c) {
    const uint32_t a = hash32(key_a ^ static_cast<uint32_t>(c)), b = hash32(key_b + static_cast<uint32_t>(c));
    const uint32_t sum = (a & 0xffffU) + (a >> 16) + (b & 0xffffU) + (b >> 16);
    row[c] = (static_cast<float>(static_cast<int32_t>(sum)) - kMean) * factor;
  }
}

// rows x cols float32: entry (r, c) = normal(hash(stream, r, c)) * row_scale[r] (1 without).
at::Tensor hashed_normal(int64_t rows, int64_t cols, uint64_t stream, const std::vector<float>& row_scale = {}) {
  at::Tensor out = at::empty({rows, cols}, at::kFloat);
  float* data = out.data_ptr<float>();
  at::parallel_for(0, rows, 1, [&](int64_t begin, int64_t end) {
    for (int64_t r = begin; r < end; ++r) {
      const uint64_t row_key = splitmix64(stream ^ splitmix64(static_cast<uint64_t>(r)));
      fill_row(data + r * cols, cols, static_cast<uint32_t>(row_key), static_cast<uint32_t>(row_key >> 32),
               row_scale.empty() ? 1.0f : row_scale[r]);
    }
  });
  return out;
}

// What a projection reads: its input group and width.
struct Input {
  std::string group;  // attn_in, attn_out, mlp_in, mlp_act
  int64_t width;
};

class LlamaShapesDataset : public Dataset {
 public:
  explicit LlamaShapesDataset(LlamaShapesOptions o) : o_(std::move(o)) {
    if (o_.kv_dim == 0) o_.kv_dim = o_.dim;
  }

  int64_t site_count() const override { return o_.layers * static_cast<int64_t>(o_.projections.size()); }

  std::vector<int64_t> site_widths() const override {
    std::vector<int64_t> widths;
    for (int64_t i = 0; i < site_count(); ++i) widths.push_back(input_of(projection(i)).width);
    return widths;
  }

  // Every site at once: the whole model (26 GB at 7B shapes). The runner streams instead.
  std::vector<Site> load(uint64_t seed) const override {
    std::vector<Site> sites;
    std::map<std::string, double> timing;
    for (int64_t i = 0; i < site_count(); ++i) sites.push_back(load_site(seed, i, timing));
    return sites;
  }

  Site load_site(uint64_t seed, int64_t index, std::map<std::string, double>& timing) const override {
    const uint64_t data_seed = o_.seed >= 0 ? static_cast<uint64_t>(o_.seed) : seed;
    const int64_t layer = index / static_cast<int64_t>(o_.projections.size());
    const std::string& proj = projection(index);
    const Input input = input_of(proj);
    Site site;
    site.name = fmt::format("layer{}.{}", layer, proj);

    double start = seconds_now();
    site.X = activations(data_seed, layer, input);
    timing["statistics"] += seconds_now() - start;

    start = seconds_now();
    site.W = weights(data_seed, site.name, output_features(proj), input.width);
    timing["generate"] += seconds_now() - start;
    if (o_.massive_count > 0) site.known_outlier_tokens = o_.massive_tokens;
    return site;
  }

 private:
  const std::string& projection(int64_t index) const {
    return o_.projections[static_cast<size_t>(index % static_cast<int64_t>(o_.projections.size()))];
  }

  Input input_of(const std::string& proj) const {
    if (proj == "q" || proj == "k" || proj == "v") return {"attn_in", o_.dim};
    if (proj == "o") return {"attn_out", o_.dim};
    if (proj == "gate" || proj == "up") return {"mlp_in", o_.dim};
    return {"mlp_act", o_.hidden};  // down
  }

  int64_t output_features(const std::string& proj) const {
    if (proj == "k" || proj == "v") return o_.kv_dim;
    if (proj == "gate" || proj == "up") return o_.hidden;
    return o_.dim;  // q, o, down
  }

  at::Tensor weights(uint64_t seed, const std::string& name, int64_t rows, int64_t cols) const {
    at::Tensor z = at::randn({rows}, make_generator(seed, "llama_shapes/row_scale/" + name), at::kFloat);
    const at::Tensor scale = at::exp(o_.weight_spread * z) / std::sqrt(static_cast<double>(cols));
    const std::vector<float> row_scale(scale.data_ptr<float>(), scale.data_ptr<float>() + rows);
    return hashed_normal(rows, cols, derive_seed(seed, "llama_shapes/W/" + name), row_scale);
  }

  // The calibration activations of one input of one layer, kept while its sites are served.
  at::Tensor activations(uint64_t seed, int64_t layer, const Input& input) const {
    const std::string key = fmt::format("{}/{}/{}", seed, layer, input.group);
    std::lock_guard<std::mutex> lock(cache_mutex_);
    if (key == cached_key_) return cached_x_;
    cached_x_ = at::Tensor();  // free the previous input before making the next
    at::Tensor x = hashed_normal(o_.tokens, input.width, derive_seed(seed, "llama_shapes/X/" + key));
    // Outlier channels: the same in every layer for a given width (seeded without the layer).
    at::Generator gen = make_generator(seed, fmt::format("llama_shapes/channels/{}", input.width));
    const at::Tensor order = at::randperm(input.width, gen, at::kLong);
    const int64_t* perm = order.data_ptr<int64_t>();
    std::vector<int64_t> massive = input.width == o_.dim ? o_.massive_channels : std::vector<int64_t>{};
    for (int64_t i = 0; static_cast<int64_t>(massive.size()) < o_.massive_count && i < input.width; ++i)
      massive.push_back(perm[i]);
    at::Tensor signs = at::rand({o_.massive_count + o_.normal_count}, gen, at::kDouble);
    for (size_t i = 0; i < massive.size(); ++i) {
      const double magnitude = o_.massive_magnitude[std::min(i, o_.massive_magnitude.size() - 1)];
      const double value = (signs[i].item<double>() < 0.5 ? -1.0 : 1.0) * magnitude;
      for (int64_t t : o_.massive_tokens) x[t][massive[i]] = value;
    }
    for (int64_t i = 0; i < o_.normal_count; ++i) {
      const int64_t c = perm[(o_.massive_count + i) % input.width];
      const double offset = (signs[o_.massive_count + i].item<double>() < 0.5 ? -1.0 : 1.0) * o_.normal_offset;
      at::Tensor column = x.select(1, c);
      at::Tensor updated = o_.normal_scale * (column + offset);
      for (int64_t t : o_.massive_tokens) updated[t] = column[t];  // keep the massive tokens' values
      column.copy_(updated);
    }
    cached_key_ = key;
    cached_x_ = x;
    return x;
  }

  LlamaShapesOptions o_;
  mutable std::mutex cache_mutex_;
  mutable std::string cached_key_;
  mutable at::Tensor cached_x_;
};

void check_indices(ConfigReader& reader, const std::string& key, const std::vector<int64_t>& v, int64_t limit,
                   const char* what) {
  for (int64_t i : v)
    if (i < 0 || i >= limit) reader.fail(key, fmt::format("{} {} out of range [0, {})", what, i, limit));
}

LlamaShapesOptions parse_options(ConfigReader& reader) {
  LlamaShapesOptions o;
  o.layers = reader.get<int64_t>("layers", o.layers);
  o.dim = reader.get<int64_t>("dim", o.dim);
  o.hidden = reader.get<int64_t>("hidden", o.hidden);
  o.kv_dim = reader.get<int64_t>("kv_dim", o.kv_dim);
  o.tokens = reader.get<int64_t>("tokens", o.tokens);
  for (const char* key : {"layers", "dim", "hidden", "tokens"})
    if (reader.get<int64_t>(key, 1) < 1) reader.fail(key, "must be positive");
  if (o.kv_dim < 0) reader.fail("kv_dim", "must be positive (0: same as dim)");
  o.projections = reader.get<std::vector<std::string>>("projections", o.projections);
  if (o.projections.empty()) reader.fail("projections", "must not be empty");
  for (const std::string& p : o.projections)
    if (std::find(kProjections.begin(), kProjections.end(), p) == kProjections.end())
      reader.fail("projections", fmt::format("unknown projection '{}' (valid: {})", p, fmt::join(kProjections, ", ")));

  ConfigReader massive = reader.child("massive");
  o.massive_count = massive.get<int64_t>("count", o.massive_count);
  o.massive_magnitude = massive.get<std::vector<double>>("magnitude", o.massive_magnitude);
  o.massive_tokens = massive.get<std::vector<int64_t>>("tokens", o.massive_tokens);
  o.massive_channels = massive.get<std::vector<int64_t>>("channels", o.massive_channels);
  if (o.massive_magnitude.empty()) massive.fail("magnitude", "must not be empty");
  if (o.massive_count < 0 || o.massive_count > std::min(o.dim, o.hidden))
    massive.fail("count", fmt::format("must be in [0, {}]", std::min(o.dim, o.hidden)));
  if (static_cast<int64_t>(o.massive_channels.size()) > o.massive_count)
    massive.fail("channels", fmt::format("lists more channels than count ({})", o.massive_count));
  check_indices(massive, "tokens", o.massive_tokens, o.tokens, "token");
  check_indices(massive, "channels", o.massive_channels, o.dim, "channel");
  massive.finish();

  ConfigReader normal = reader.child("normal");
  o.normal_count = normal.get<int64_t>("count", o.normal_count);
  o.normal_scale = normal.get<double>("scale", o.normal_scale);
  o.normal_offset = normal.get<double>("offset", o.normal_offset);
  if (o.normal_count < 0 || o.normal_count + o.massive_count > std::min(o.dim, o.hidden))
    normal.fail("count", fmt::format("must be in [0, {}]", std::min(o.dim, o.hidden) - o.massive_count));
  normal.finish();

  ConfigReader weight = reader.child("weight");
  o.weight_spread = weight.get<double>("spread", o.weight_spread);
  weight.finish();
  o.seed = reader.get<int64_t>("seed", o.seed);
  return o;
}

}  // namespace

void register_llama_shapes_dataset(DatasetRegistry& registry) {
  registry.add("llama_shapes",
               "a whole LLaMA-shaped model's sites (default 7B: 32 layers, 4096, 11008), streamed site by site",
               [](ConfigReader& options) { return std::make_unique<LlamaShapesDataset>(parse_options(options)); });
}

}  // namespace sqlab
