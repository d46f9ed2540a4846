// The stored forms of fitted rotations (rotations/stored_form.h): every rotation type and
// every method's rotation is stored in a known form that rebuilds Rotation::dense(), and an
// exported file rebuilds with numpy alone (analysis/rotations.py, tests/check_exported_rotations.py).
#include <ATen/ATen.h>
#include <fmt/format.h>
#include <gtest/gtest.h>
#include <yaml-cpp/yaml.h>

#include <filesystem>
#include <iostream>
#include <map>
#include <memory>
#include <string>
#include <vector>

#include "core/config.h"
#include "core/method.h"
#include "core/quant_config.h"
#include "core/random.h"
#include "core/recorder.h"
#include "datasets/synthetic.h"
#include "io/safetensors.h"
#include "methods/builtin.h"
#include "rotations/block_rotation.h"
#include "rotations/dense.h"
#include "rotations/hadamard.h"
#include "rotations/kronecker.h"
#include "rotations/scaling.h"
#include "rotations/stored_form.h"
#include "tests/test_util.h"

namespace sqlab {
namespace {

using testing::run_cli;
using testing::TempDir;

class NullLog : public FitLog {
 public:
  void trace(const std::string&, int64_t, double) override {}
  void metric(const std::string&, double) override {}
  void warn(const std::string&) override {}
};

using SharedRotation = std::shared_ptr<const Rotation>;

// One rotation of each type, with the form it must be stored in.
std::vector<std::pair<std::string, SharedRotation>> one_of_each_type() {
  auto g = [](const char* stream) { return make_generator(7, stream); };
  const at::Tensor blocks = at::stack({random_orthogonal_matrix(4, g("b0")), random_orthogonal_matrix(4, g("b1")),
                                       random_orthogonal_matrix(4, g("b2"))});
  return {
      {"dense", std::make_shared<DenseRotation>(random_orthogonal_matrix(24, g("dense")))},
      {"kronecker", std::make_shared<KroneckerRotation>(random_orthogonal_matrix(4, g("r1")),
                                                        random_orthogonal_matrix(6, g("r2")))},
      {"dense", std::make_shared<HadamardRotation>(96, random_signs(96, g("s96")))},
      {"hadamard_compact", std::make_shared<HadamardRotation>(11008, random_signs(11008, g("s11008")))},
      {"block_diagonal", std::make_shared<BlockDiagonalRotation>(blocks)},
      {"permutation", std::make_shared<PermutationRotation>(at::randperm(20, g("perm"), at::kLong))},
      {"transform", std::make_shared<DiagonalScaling>(at::rand({16}, g("scale"), at::kDouble) + 0.5)},
  };
}

// Rows `rows` of the dense matrix, from the rotation's own apply on unit rows.
at::Tensor rows_of(const Rotation& r, const at::Tensor& rows) {
  at::Tensor unit = at::zeros({rows.numel(), r.size()}, at::kDouble);
  unit.index_put_({at::arange(rows.numel(), at::kLong), rows}, 1.0);
  return r.apply(unit).to(at::kDouble);
}

at::Tensor sample_rows(int64_t n) {
  return at::tensor(std::vector<int64_t>{0, 1, n / 3, n / 2, n - 2, n - 1}, at::kLong);
}

TEST(StoredForms, EveryRotationTypeRebuildsFromItsForm) {
  for (const auto& [form, rotation] : one_of_each_type()) {
    SCOPED_TRACE(rotation->describe());
    const auto factors = rotation->factors();
    EXPECT_EQ(stored_form_of(factors).name, form);
    const at::Tensor rows = sample_rows(rotation->size());
    const at::Tensor rebuilt = dense_from_factors(factors).index_select(0, rows);
    EXPECT_LT((rebuilt - rows_of(*rotation, rows)).abs().max().item<double>(), 1e-12);
    if (rotation->size() <= 4096) {
      EXPECT_LT((dense_from_factors(factors) - rotation->dense()).abs().max().item<double>(), 1e-12);
    }
  }
}

TEST(StoredForms, UnknownTensorsAreNamed) {
  try {
    stored_form_of({{"R1", at::eye(2, at::kDouble)}});
    FAIL() << "no error";
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find("[R1]"), std::string::npos) << e.what();
    EXPECT_NE(std::string(e.what()).find("H_base+signs"), std::string::npos) << e.what();
  }
}

// Options that make every registered method build a rotation on a small site.
std::string options_for(const std::string& method) {
  if (method == "compose") return "{steps: [{method: smoothquant}, {method: hadamard}]}";
  if (method == "cayley_sgd") return "{steps: 2}";
  return "{}";
}

Site small_site() {
  SyntheticOptions o;
  o.tokens = 128;
  o.channels = 64;
  o.out_features = 16;
  o.massive_count = 2;
  o.massive_magnitude = {800.0, 400.0};
  o.normal_count = 4;
  return SyntheticDataset(o).load(3).front();
}

std::map<std::string, SharedRotation> every_method_rotation() {
  const Site site = small_site();
  std::map<std::string, SharedRotation> fitted;
  for (const std::string& name : builtin_method_registry().names()) {
    ConfigReader options(YAML::Load(options_for(name)), "test", "methods." + name);
    const auto method = builtin_method_registry().create(name, options);
    NullLog log;
    QuantConfig quant;
    fitted[name] = method->fit(FitContext{site, quant, 5, log});
  }
  return fitted;
}

TEST(StoredForms, EveryMethodsRotationIsInAKnownForm) {
  for (const auto& [name, rotation] : every_method_rotation()) {
    SCOPED_TRACE(name);
    const auto factors = rotation->factors();
    const StoredForm& form = stored_form_of(factors);
    EXPECT_LT((dense_from_factors(factors) - rotation->dense()).abs().max().item<double>(), 1e-12) << form.name;
  }
}

// Writes a run file holding `rotations` and the reference rows of each, as the numpy check reads them.
void write_run(const std::filesystem::path& results, const std::string& run_id,
               const std::map<std::string, SharedRotation>& rotations) {
  RunRecord record;
  record.run_id = record.label = run_id;
  record.method = "mixed";
  std::vector<std::pair<std::string, at::Tensor>> reference;
  for (const auto& [site, rotation] : rotations) {
    record.rotations[site] = rotation->factors();
    const at::Tensor rows = sample_rows(rotation->size());
    reference.emplace_back(site + ".rows", rows.to(at::kDouble));
    reference.emplace_back(site + ".values", rows_of(*rotation, rows));
  }
  std::filesystem::create_directories(results / "runs");
  write_run_file((results / "runs" / (run_id + ".h5")).string(), record);
  write_safetensors((results / (run_id + ".reference.safetensors")).string(), reference, {});
}

std::string numpy_check(const TempDir& dir, const std::string& run_id, const std::string& dense_dir = "") {
  const std::string dense =
      dense_dir.empty() ? "" : fmt::format(" '{}/{}.safetensors'", (dir.path() / dense_dir).string(), run_id);
  const std::string cmd = fmt::format(
      "cd '{0}' && PYTHONPATH='{0}' /usr/bin/python3 tests/check_exported_rotations.py '{1}/out/{2}.safetensors' "
      "'{1}/results/{2}.reference.safetensors'{3} 2>&1; echo \"exit=$?\"",
      SQLAB_SOURCE_DIR, dir.path().string(), run_id, dense);
  return testing::run_capture(cmd);
}

TEST(StoredForms, NumpyRebuildsEveryExportedForm) {
  TempDir dir;
  std::map<std::string, SharedRotation> small, large;
  for (const auto& [name, rotation] : every_method_rotation()) small["method_" + name] = rotation;
  int index = 0;
  for (const auto& [form, rotation] : one_of_each_type())
    (rotation->size() > HadamardRotation::kDenseFactorLimit ? large : small)[fmt::format("{}_{}", form, index++)] =
        rotation;
  ASSERT_EQ(large.size(), 1u);  // the Hadamard rotation at n = 11008, in its compact form
  write_run(dir.path() / "results", "small", small);
  write_run(dir.path() / "results", "large", large);

  const auto exported = run_cli(dir.path(), "export results --out out");
  ASSERT_EQ(exported.code, 0) << exported.err;
  const auto densified = run_cli(dir.path(), "export results --run small --dense --out dense");
  ASSERT_EQ(densified.code, 0) << densified.err;
  EXPECT_NE(densified.err.find("export --dense: kronecker_1.R is 24 x 24 float64"), std::string::npos)
      << densified.err;

  const std::string small_report = numpy_check(dir, "small", "dense");
  std::cout << small_report;
  EXPECT_NE(small_report.find("exit=0"), std::string::npos) << small_report;
  for (const auto& [site, rotation] : small) EXPECT_NE(small_report.find(site + " "), std::string::npos) << site;
  for (const char* form : {"dense", "kronecker", "block_diagonal", "permutation", "transform"})
    EXPECT_NE(small_report.find(std::string(" ") + form + " n="), std::string::npos) << form << "\n" << small_report;
  const std::string large_report = numpy_check(dir, "large");
  EXPECT_NE(large_report.find("hadamard_compact n=11008"), std::string::npos) << large_report;
  EXPECT_NE(large_report.find("exit=0"), std::string::npos) << large_report;
}

}  // namespace
}  // namespace sqlab
