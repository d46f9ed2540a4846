// The streaming data source llama_shapes (datasets/llama_shapes.cpp) and the runner's
// streaming path: shapes, sharing, determinism, planted outliers, per-stage timing,
// record.eval_tokens and data.device.
#include <ATen/ATen.h>
#include <gtest/gtest.h>
#include <yaml-cpp/yaml.h>

#include <map>
#include <string>

#include "core/config.h"
#include "core/recorder.h"
#include "core/registries.h"
#include "datasets/builtin.h"
#include "tests/test_util.h"

namespace sqlab {
namespace {

std::unique_ptr<Dataset> llama_shapes(const std::string& options) {
  static DatasetRegistry registry = [] {
    DatasetRegistry r("dataset");
    register_builtin_datasets(r);
    return r;
  }();
  ConfigReader reader(YAML::Load(options), "test", "data");
  return registry.create("llama_shapes", reader);
}

const char* kSmall = "{layers: 2, dim: 64, hidden: 96, kv_dim: 32, tokens: 40, normal: {count: 4}}";

TEST(LlamaShapes, SitesHaveTheModelsShapesInOrder) {
  const auto data = llama_shapes(kSmall);
  ASSERT_EQ(data->site_count(), 14);
  const std::vector<std::pair<std::string, std::vector<int64_t>>> expected = {
      {"layer1.q", {64, 64}}, {"layer1.k", {32, 64}}, {"layer1.v", {32, 64}}, {"layer1.o", {64, 64}},
      {"layer1.gate", {96, 64}}, {"layer1.up", {96, 64}}, {"layer1.down", {64, 96}}};
  std::map<std::string, double> timing;
  for (size_t i = 0; i < expected.size(); ++i) {
    const Site site = data->load_site(3, 7 + static_cast<int64_t>(i), timing);
    EXPECT_EQ(site.name, expected[i].first);
    EXPECT_EQ(site.W.sizes().vec(), expected[i].second) << site.name;
    EXPECT_EQ(site.X.sizes().vec(), (std::vector<int64_t>{40, site.W.size(1)})) << site.name;
  }
  EXPECT_EQ(data->site_widths(), (std::vector<int64_t>{64, 64, 64, 64, 64, 64, 96, 64, 64, 64, 64, 64, 64, 96}));
  EXPECT_TRUE(timing.count("generate") && timing.count("statistics"));
}

TEST(LlamaShapes, SharedInputsDeterminismAndOutliers) {
  const auto data = llama_shapes(kSmall);
  std::map<std::string, double> timing;
  const Site q = data->load_site(5, 0, timing), k = data->load_site(5, 1, timing), o = data->load_site(5, 3, timing);
  EXPECT_TRUE(at::equal(q.X, k.X));   // q, k, v read the attention input
  EXPECT_FALSE(at::equal(q.X, o.X));  // o reads the attention output
  const Site again = llama_shapes(kSmall)->load_site(5, 0, timing);
  EXPECT_TRUE(at::equal(q.X, again.X));
  EXPECT_TRUE(at::equal(q.W, again.W));
  EXPECT_FALSE(at::equal(q.W, data->load_site(6, 0, timing).W));  // another seed
  // Two massive channels at token 0 (magnitudes 2500, 1500): the largest entries.
  const at::Tensor top = std::get<0>(q.X.abs().reshape({-1}).topk(2));
  EXPECT_FLOAT_EQ(top[0].item<float>(), 2500.0f);
  EXPECT_FLOAT_EQ(top[1].item<float>(), 1500.0f);
  EXPECT_EQ(q.known_outlier_tokens, (std::vector<int64_t>{0}));
  // The bulk is standardized: rows 1.. without the outlier channels have mean ~0, std ~1.
  const at::Tensor bulk = llama_shapes("{layers: 1, dim: 4096, tokens: 64, massive: {count: 0}, normal: {count: 0}}")
                              ->load_site(0, 0, timing).X;
  EXPECT_NEAR(bulk.mean().item<double>(), 0.0, 0.01);
  EXPECT_NEAR(bulk.std().item<double>(), 1.0, 0.01);
}

TEST(LlamaShapes, StreamedRunRecordsStagesMemoryAndSubsetEvaluation) {
  testing::TempDir dir;
  testing::write_text(dir.file("e.yaml"), R"(name: stream
seeds: [0]
data: {source: llama_shapes, layers: 2, dim: 64, hidden: 128, tokens: 48, projections: [q, down]}
methods: [{label: sq, method: singlequant}]
record: {histograms: false, eval_tokens: 16}
)");
  const auto r = testing::run_cli(dir.path(), "run e.yaml --out out");
  ASSERT_EQ(r.code, 0) << r.err;
  const std::string file = (dir.path() / "out" / "runs").string();
  std::string path;
  for (const auto& e : std::filesystem::directory_iterator(file)) path = e.path().string();
  const RunRecord record = read_run_summary(path);
  EXPECT_EQ(record.site_metrics.size(), 4u);  // layer0.q, layer0.down, layer1.q, layer1.down
  for (const char* stage : {"statistics", "generate", "check", "build", "apply", "fuse", "quantize", "metrics",
                            "record", "unattributed", "total"})
    EXPECT_TRUE(record.timing.count(stage)) << stage;
  // Disjoint stages: with `unattributed` they add up to the total.
  double sum = 0.0;
  for (const auto& [stage, seconds] : record.timing)
    if (stage != "total") sum += seconds;
  EXPECT_NEAR(sum, record.timing.at("total"), 1e-9);
  EXPECT_NEAR(record.metrics.at("quantization_pass_seconds"),
              record.timing.at("build") + record.timing.at("fuse") + record.timing.at("quantize"), 1e-9);
  EXPECT_GT(record.metrics.at("peak_rss_mib"), 1.0);
  EXPECT_LT(record.metrics.at("invariance_error"), 1e-5);
  // eval_tokens: 16 of 48 tokens, and the planted outlier token 0 is among them.
  EXPECT_EQ(record.metrics.at("outlier_tokens"), 1.0);
  const auto bad = testing::run_cli(dir.path(), "run e.yaml --out bad --set record.eval_tokens=-1");
  EXPECT_EQ(bad.code, 2);
}

TEST(LlamaShapes, BadKeysAndDevice) {
  EXPECT_THROW(llama_shapes("{projections: [q, attn]}"), Error);
  EXPECT_THROW(llama_shapes("{massive: {tokens: [5000]}}"), Error);
  testing::TempDir dir;
  testing::write_text(dir.file("e.yaml"), "seeds: [0]\ndata: {source: synthetic, tokens: 16, channels: 16}\n"
                                          "methods: [{method: identity}]\n");
  EXPECT_EQ(testing::run_cli(dir.path(), "run e.yaml --out o --set data.device=tpu").code, 2);
  if (!at::hasCUDA()) {  // CPU-only LibTorch (Debian's): a configuration error naming the key
    const auto r = testing::run_cli(dir.path(), "run e.yaml --out o --set data.device=cuda");
    EXPECT_EQ(r.code, 2);
    EXPECT_NE(r.err.find("data.device"), std::string::npos) << r.err;
  }
  EXPECT_EQ(testing::run_cli(dir.path(), "run e.yaml --out o --set data.device=cpu").code, 0);
}

}  // namespace
}  // namespace sqlab
