// Device paths (issue #20). `PortableHadamard` runs everywhere: the transform written in
// ATen operations (what a device without sqlab's kernels runs) against the CPU kernel at
// every base order. The `Gpu*` suites (ctest label `gpu`; `ctest -L gpu` runs them alone)
// compare every device path with its CPU result on the same inputs and are skipped, with a
// message, where LibTorch sees no CUDA device (CPU builds, CPU-only machines).
#include <ATen/ATen.h>
#include <gtest/gtest.h>
#include <nlohmann/json.hpp>

#include <filesystem>
#include <string>
#include <vector>

#include "core/random.h"
#include "core/recorder.h"
#include "core/torch_compat.h"
#include "model/checkpoint.h"
#include "quant/gptq.h"
#include "quant/quant.h"
#include "rotations/block_rotation.h"
#include "rotations/dense.h"
#include "rotations/hadamard.h"
#include "rotations/hadamard_matrices.h"
#include "rotations/kronecker.h"
#include "rotations/scaling.h"
#include "tests/test_util.h"

namespace sqlab {
namespace {

// The base orders the issue lists, and the widths of the benchmarks.
const std::vector<int64_t> kBaseOrders = {1, 12, 20, 28, 36, 40, 52, 60, 108, 140, 156, 172};

// max |a - b| / max |b|, in float64.
double relative_error(const at::Tensor& a, const at::Tensor& b) {
  const at::Tensor b64 = b.to(at::kCPU, at::kDouble), a64 = a.to(at::kCPU, at::kDouble);
  return ((a64 - b64).abs().max() / b64.abs().max().clamp_min(1e-300)).item<double>();
}

TEST(PortableHadamard, EqualsTheCpuKernelAtEveryBaseOrder) {
  at::Generator g = make_generator(20, "portable");
  for (const int64_t m : kBaseOrders) {
    for (const int64_t p : {1, 2, 16}) {
      const int64_t n = m * p;
      if (n < 2) continue;
      int64_t split_m = 0, split_p = 0;
      ASSERT_TRUE(hadamard_split(n, &split_m, &split_p)) << n;
      const HadamardRotation plain(n), signed_(n, random_signs(n, g));
      for (const HadamardRotation* r : {&plain, &signed_})
        for (const at::ScalarType dtype : {at::kFloat, at::kDouble}) {
          const at::Tensor x = at::randn({5, n}, g, dtype);
          const double tolerance = dtype == at::kDouble ? 1e-13 : 1e-5;
          EXPECT_LT(relative_error(r->apply_portable(x), r->apply(x)), tolerance) << r->describe();
          EXPECT_LT(relative_error(r->apply_portable(x, true), r->apply_inverse(x)), tolerance) << r->describe();
          EXPECT_EQ(r->apply_portable(x).scalar_type(), dtype);
        }
    }
  }
  // Other dtypes are computed in float32 and cast back, as apply() does.
  const HadamardRotation r(24);
  const at::Tensor x = at::randn({3, 24}, g).to(at::kBFloat16);
  EXPECT_TRUE(at::equal(r.apply_portable(x), r.apply(x)));
}

// Every run file says where it ran and on which LibTorch; `cuda` on a LibTorch without CUDA
// is a configuration error naming the key (exit 2) for site- and model-level runs alike.
TEST(DeviceKeys, RunsRecordTheirDeviceAndCudaNeedsACudaBuild) {
  testing::TempDir dir;
  testing::write_text(dir.file("e.yaml"), "name: d\nseeds: [0]\ndata: {source: synthetic, tokens: 16, channels: 16}\n"
                                          "methods: [{label: id, method: identity}]\n");
  ASSERT_EQ(testing::run_cli(dir.path(), "run e.yaml --out o").code, 0);
  std::vector<std::string> files;
  for (const auto& entry : std::filesystem::directory_iterator(dir.file("o/runs"))) files.push_back(entry.path());
  ASSERT_EQ(files.size(), 1u);
  const RunRecord record = read_run_file(files[0]);
  EXPECT_EQ(record.attributes.at("device"), "cpu");
  EXPECT_EQ(record.attributes.at("libtorch_version"), libtorch_version());
  EXPECT_EQ(record.attributes.count("device_name"), 0u);
  if (cuda_device_count() > 0 || at::hasCUDA()) GTEST_SKIP() << "this LibTorch has CUDA: `cuda` is accepted";
  const testing::CliResult site = testing::run_cli(dir.path(), "run e.yaml --out o2 --set data.device=cuda:1");
  EXPECT_EQ(site.code, 2);
  EXPECT_NE(site.err.find("data.device"), std::string::npos) << site.err;
  testing::write_text(dir.file("m.yaml"), "name: m\nseeds: [0]\nmodel: {path: nowhere.bin, device: cuda}\n"
                                          "eval: {text: eval.ids}\nmethods: [{method: identity}]\n");
  testing::write_text(dir.file("nowhere.bin"), "x");
  testing::write_token_ids(dir.file("eval.ids"), 64, 32, "device/ids");
  const testing::CliResult model = testing::run_cli(dir.path(), "run m.yaml --out o3");
  EXPECT_EQ(model.code, 2);
  EXPECT_NE(model.err.find("model.device"), std::string::npos) << model.err;
}

// ---------------------------------------------------------------------------------------------
// On a CUDA device (skipped without one).

bool cuda_available() { return cuda_device_count() > 0; }
#define SQLAB_REQUIRE_GPU()                                                                  \
  if (!cuda_available())                                                                     \
  GTEST_SKIP() << "no CUDA device visible to this LibTorch (a CPU build or a CPU machine): " \
                  "the device paths are checked where one is (scripts/gpu_check.sh)"

const at::Device kCuda(at::kCUDA, 0);

// Hadamard kernel: every base order x 2^k (with the benchmark widths), float32 / float16 /
// bfloat16, apply and inverse, with and without signs, against the CPU kernel on the same
// values. float32: 2e-6 of the largest output (different summation orders); float16 and
// bfloat16: the CPU result of the same rounded inputs, rounded to the dtype, within 2 ulps.
TEST(GpuHadamard, KernelEqualsTheCpuAtEveryBaseOrderAndDtype) {
  SQLAB_REQUIRE_GPU();
  at::Generator g = make_generator(21, "gpu hadamard");
  std::vector<int64_t> widths = {4096, 11008, 14336, 28672};
  for (const int64_t m : kBaseOrders) widths.push_back(m * 64);
  for (const int64_t n : widths) {
    const HadamardRotation r(n, random_signs(n, g));
    for (const at::ScalarType dtype : {at::kFloat, at::kHalf, at::kBFloat16}) {
      const at::Tensor x = at::randn({33, n}, g).to(dtype);
      const at::Tensor x_cuda = x.to(kCuda);
      for (const bool inverse : {false, true}) {
        const at::Tensor cpu = inverse ? r.apply_inverse(x.to(at::kFloat)) : r.apply(x.to(at::kFloat));
        const at::Tensor gpu = inverse ? r.apply_inverse(x_cuda) : r.apply(x_cuda);
        ASSERT_EQ(gpu.device(), x_cuda.device());
        ASSERT_EQ(gpu.scalar_type(), dtype);
        const double ulp = dtype == at::kFloat ? 2e-6 : dtype == at::kHalf ? 2.0 / 1024 : 2.0 / 128;
        EXPECT_LT(relative_error(gpu, cpu), ulp) << "n " << n << " dtype " << c10::toString(dtype) << " inverse " << inverse;
      }
    }
    // float64 takes the portable path on the device: near-exact.
    const at::Tensor x64 = at::randn({4, n}, g, at::kDouble);
    EXPECT_LT(relative_error(r.apply(x64.to(kCuda)), r.apply(x64)), 1e-12) << n;
  }
}

// Fake quantization kernel: float32 bit for bit against the CPU kernel (same arithmetic),
// float16/bfloat16 against the CPU result of the same values rounded to the dtype.
TEST(GpuFakeQuant, KernelEqualsTheCpu) {
  SQLAB_REQUIRE_GPU();
  at::Generator g = make_generator(22, "gpu quant");
  const at::Tensor x = at::randn({64, 4096}, g) * at::rand({64, 1}, g) * 10;
  for (const bool sym : {true, false})
    for (const Granularity granularity : {Granularity::per_row, Granularity::per_group, Granularity::per_tensor}) {
      QuantSpec spec;
      spec.bits = 4;
      spec.symmetric = sym;
      spec.granularity = granularity;
      spec.group_size = 128;
      spec.clip = 0.9;
      const at::Tensor cpu = fake_quant(x, spec);
      const at::Tensor gpu = fake_quant(x.to(kCuda), spec);
      const double mismatch = (gpu.cpu() != cpu).to(at::kDouble).mean().item<double>();
      if (granularity == Granularity::per_tensor)
        EXPECT_LT(relative_error(gpu, cpu), 1e-6);  // tensor-op path: division, not reciprocal
      else
        EXPECT_EQ(mismatch, 0.0) << "sym " << sym;
      for (const at::ScalarType dtype : {at::kHalf, at::kBFloat16}) {
        if (granularity == Granularity::per_tensor) continue;
        const at::Tensor rounded = x.to(dtype);
        const at::Tensor expected = fake_quant(rounded.to(at::kFloat), spec).to(dtype);
        const at::Tensor got = fake_quant(rounded.to(kCuda), spec);
        ASSERT_EQ(got.scalar_type(), dtype);
        EXPECT_TRUE(at::equal(got.cpu(), expected)) << c10::toString(dtype) << " sym " << sym;
      }
    }
}

// The other rotations keep their parameters on the CPU and copy them to the device once:
// each applied on the device equals the CPU result (float32 GEMMs: 1e-5).
TEST(GpuRotations, EveryRotationTypeOnTheDeviceEqualsTheCpu) {
  SQLAB_REQUIRE_GPU();
  at::Generator g = make_generator(23, "gpu rotations");
  const int64_t n = 96;
  const at::Tensor q = std::get<0>(at::linalg_qr(at::randn({n, n}, g, at::kDouble)));
  const at::Tensor blocks = std::get<0>(at::linalg_qr(at::randn({4, 24, 24}, g, at::kDouble)));
  const DenseRotation dense(q);
  const KroneckerRotation kron(std::get<0>(at::linalg_qr(at::randn({8, 8}, g, at::kDouble))),
                               std::get<0>(at::linalg_qr(at::randn({12, 12}, g, at::kDouble))));
  const BlockDiagonalRotation block(blocks);
  const PermutationRotation perm(at::randperm(n, g, at::kLong));
  const DiagonalScaling scaling(at::rand({n}, g, at::kDouble) + 0.5);
  const at::Tensor x = at::randn({50, n}, g);
  for (const Rotation* r : std::vector<const Rotation*>{&dense, &kron, &block, &perm, &scaling}) {
    EXPECT_LT(relative_error(r->apply(x.to(kCuda)), r->apply(x)), 1e-5) << r->describe();
    EXPECT_LT(relative_error(r->apply_inverse(x.to(kCuda)), r->apply_inverse(x)), 1e-5) << r->describe();
    EXPECT_LT(relative_error(r->fuse_into(x.to(kCuda)), r->fuse_into(x)), 1e-5) << r->describe();
  }
}

// GPTQ in float64 on the device equals the CPU's (same algorithm, tensor operations).
TEST(GpuGptq, EqualsTheCpu) {
  SQLAB_REQUIRE_GPU();
  at::Generator g = make_generator(24, "gpu gptq");
  const at::Tensor x = at::randn({512, 128}, g, at::kDouble);
  const at::Tensor w = at::randn({64, 128}, g, at::kDouble);
  QuantSpec spec;
  GptqOptions options;
  const at::Tensor cpu = gptq_quantize(w, gptq_hessian(x), spec, options);
  const at::Tensor gpu = gptq_quantize(w.to(kCuda), gptq_hessian(x.to(kCuda)), spec, options);
  EXPECT_LT(relative_error(gpu, cpu), 1e-9);
}

// Through the binary: a site-level run and a model-level run (layer by layer) on `cuda`
// give the CPU's metrics (float32 on both; 1e-3 relative), and record the device.
TEST(GpuRuns, SiteAndModelRunsOnCudaMatchTheCpu) {
  SQLAB_REQUIRE_GPU();
  testing::TempDir dir;
  testing::write_text(dir.file("site.yaml"), R"(name: s
seeds: [0]
data: {source: synthetic, tokens: 256, channels: 512, out_features: 256, massive: {count: 2, magnitude: [500, 300], tokens: [0]}}
quant: {w_bits: 4, a_bits: 4}
methods:
  - {label: had, method: hadamard}
  - {label: sq, method: singlequant}
  - {label: gptq, method: hadamard, quant: {w_quantizer: gptq}}
)");
  // The experiment on the CPU and with `device_key=cuda`: `metric` of each of its 3 methods
  // agrees within 1e-3.
  const auto expect_same_on_cuda = [&](const std::string& yaml, const std::string& device_key, const std::string& metric) {
    const testing::CliResult cpu = testing::run_cli(dir.path(), "run " + yaml + " --out cpu_" + yaml + " --json");
    const testing::CliResult gpu =
        testing::run_cli(dir.path(), "run " + yaml + " --out gpu_" + yaml + " --json --set " + device_key + "=cuda");
    ASSERT_EQ(cpu.code, 0) << cpu.err;
    ASSERT_EQ(gpu.code, 0) << gpu.err;
    for (size_t group = 0; group < 3; ++group) {
      const auto value = [&](const std::string& out) {
        return nlohmann::json::parse(out)["groups"][group]["metrics"][metric]["mean"].get<double>();
      };
      EXPECT_NEAR(value(gpu.out), value(cpu.out), 1e-3 * value(cpu.out)) << yaml << " group " << group;
    }
  };
  expect_same_on_cuda("site.yaml", "data.device", "rel_output_error");

  LlamaConfig c;
  c.dim = 64;
  c.hidden_dim = 160;
  c.n_layers = 2;
  c.n_heads = 4;
  c.n_kv_heads = 2;
  c.vocab_size = 96;
  c.max_seq_len = 64;
  c.tied_embeddings = true;
  save_hf(random_llama(c, 12), dir.file("hf"), "BF16", 2);
  testing::write_token_ids(dir.file("eval.ids"), 600, 96, "gpu/ids");
  testing::write_text(dir.file("model.yaml"), R"(name: m
seeds: [0]
model: {path: hf}
eval: {text: eval.ids, max_tokens: 256}
calib: {tokens: 128}
quant: {w_bits: 4, a_bits: 4}
methods:
  - {label: had, method: hadamard}
  - {label: sq, method: singlequant}
  - {label: gptq, method: hadamard, quant: {w_quantizer: gptq, placement: residual}}
)");
  expect_same_on_cuda("model.yaml", "model.device", "ppl");
}

}  // namespace
}  // namespace sqlab
