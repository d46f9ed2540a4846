// The synthetic dataset: shapes, outliers where asked, seeding, option errors.
#include <ATen/ATen.h>
#include <gtest/gtest.h>

#include "core/error.h"
#include "datasets/synthetic.h"

namespace sqlab {
namespace {

SyntheticOptions options() {
  SyntheticOptions o;
  o.tokens = 128;
  o.channels = 256;
  o.out_features = 64;
  o.massive_channels = {17, 200};
  o.massive_count = 2;
  o.massive_magnitude = {1500.0, 800.0};
  o.massive_tokens = {0, 5};
  o.normal_count = 6;
  o.normal_scale = 10.0;
  return o;
}

TEST(Synthetic, ShapesAndMassiveOutliers) {
  const auto sites = SyntheticDataset(options()).load(0);
  ASSERT_EQ(sites.size(), 1u);
  const Site& s = sites[0];
  EXPECT_EQ(s.X.sizes(), (std::vector<int64_t>{128, 256}));
  EXPECT_EQ(s.W.sizes(), (std::vector<int64_t>{64, 256}));
  EXPECT_EQ(s.X.scalar_type(), at::kFloat);
  for (int64_t t : {0, 5}) {
    EXPECT_FLOAT_EQ(std::abs(s.X[t][17].item<float>()), 1500.0f);
    EXPECT_FLOAT_EQ(std::abs(s.X[t][200].item<float>()), 800.0f);
  }
  // Nothing else comes near the massive values.
  at::Tensor rest = s.X.abs().clone();
  rest.index_put_({at::tensor({0, 0, 5, 5}, at::kLong), at::tensor({17, 200, 17, 200}, at::kLong)}, at::zeros({4}));
  EXPECT_LT(rest.max().item<float>(), 200.0f);
}

TEST(Synthetic, NormalOutlierChannelsAreConsistentlyLarge) {
  const Site s = SyntheticDataset(options()).load(1)[0];
  const at::Tensor body = s.X.slice(0, 6);  // tokens without massive outliers
  const at::Tensor channel_rms = body.pow(2).mean(0).sqrt();
  const at::Tensor sorted = std::get<0>(channel_rms.sort(0, true));
  EXPECT_GT(sorted[5].item<float>(), 5.0f);   // six channels about 10x the bulk
  EXPECT_LT(sorted[6].item<float>(), 3.0f);   // then the unit-variance (heavy-tailed) bulk
}

TEST(Synthetic, SeededAndSiteCount) {
  SyntheticOptions o = options();
  o.sites = 3;
  const SyntheticDataset data(o);
  const auto a = data.load(4), b = data.load(4), c = data.load(5);
  ASSERT_EQ(a.size(), 3u);
  EXPECT_EQ(a[2].name, "layer2");
  EXPECT_TRUE(at::equal(a[1].X, b[1].X));
  EXPECT_FALSE(at::equal(a[1].X, c[1].X));
  EXPECT_FALSE(at::equal(a[0].X, a[1].X));
  o.seed = 9;
  EXPECT_TRUE(at::equal(SyntheticDataset(o).load(1)[0].X, SyntheticDataset(o).load(2)[0].X));
}

TEST(Synthetic, OptionErrorsNameTheKey) {
  auto error_of = [](const std::string& yaml) {
    try {
      ConfigReader reader(YAML::Load(yaml), "data.yaml", "data");
      parse_synthetic_options(reader);
      reader.finish();
    } catch (const Error& e) {
      EXPECT_EQ(e.kind(), ErrorKind::config);
      return std::string(e.what());
    }
    return std::string();
  };
  EXPECT_NE(error_of("{channels: 8, massive: {channels: [9]}}").find("data.massive.channels: channel 9 out of range"),
            std::string::npos);
  EXPECT_NE(error_of("{tokens: 4, massive: {tokens: [4]}}").find("data.massive.tokens"), std::string::npos);
  EXPECT_NE(error_of("{bulk: {dof: 1.5}}").find("data.bulk.dof"), std::string::npos);
  EXPECT_NE(error_of("{channels: 8, normal: {count: 9}}").find("data.normal.count"), std::string::npos);
  EXPECT_NE(error_of("{tokenz: 4}").find("data.tokenz: unknown key"), std::string::npos);
}

}  // namespace
}  // namespace sqlab
