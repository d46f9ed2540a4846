// The device group of sqlab_bench (issue #20), registered only where LibTorch sees a CUDA
// device: on an 8192-token block of n channels (n = 4096, 11008, 14336, 28672) in float32,
// float16 and bfloat16,
//   device/copy/DTYPE/n            a device-to-device copy of the block (the reference),
//   device/walsh_hadamard/DTYPE/n  x R for a Hadamard rotation with random signs,
//   device/fake_quant/DTYPE/n      per-token 4-bit asymmetric fake quantization,
// each with bytes per second (the block read once and written once) and x_copy = its time /
// the copy's time in this run. Targets (issue #20; reported, not asserted): Walsh-Hadamard
// within 1.3x the copy, fake quantization within 1.5x. scripts/gpu_check.sh runs it.
#include "bench/device_bench.h"

#include <ATen/ATen.h>
#include <benchmark/benchmark.h>
#include <fmt/format.h>

#include <chrono>
#include <map>
#include <string>
#include <tuple>

#include "core/random.h"
#include "core/system.h"
#include "core/torch_compat.h"
#include "quant/quant.h"
#include "rotations/hadamard.h"

namespace sqlab {
namespace {

constexpr int64_t kDeviceTokens = 8192;
constexpr int kRepeats = 20;  // launches per timed iteration, then one synchronization

double now() { return std::chrono::duration<double>(std::chrono::steady_clock::now().time_since_epoch()).count(); }

std::map<std::tuple<int, int64_t>, double>& copy_seconds() {
  static std::map<std::tuple<int, int64_t>, double> store;
  return store;
}

const at::Tensor& block(at::ScalarType dtype, int64_t n) {
  static std::map<std::tuple<int, int64_t>, at::Tensor> blocks;
  const auto key = std::make_tuple(static_cast<int>(dtype), n);
  auto it = blocks.find(key);
  if (it == blocks.end())
    it = blocks.emplace(key, at::randn({kDeviceTokens, n}, make_generator(2, "bench/device")).to(at::kCUDA, dtype)).first;
  return it->second;
}

// Manual time: kRepeats launches, one synchronization, the mean per launch.
void timed(benchmark::State& state, at::ScalarType dtype, int64_t n, const std::function<void()>& body, bool is_copy) {
  body();
  wait_for_device(at::Device(at::kCUDA));
  double total = 0.0;
  for (auto _ : state) {
    const double start = now();
    for (int i = 0; i < kRepeats; ++i) body();
    wait_for_device(at::Device(at::kCUDA));
    const double seconds = (now() - start) / kRepeats;
    state.SetIterationTime(seconds);
    total += seconds;
  }
  const double per_launch = total / static_cast<double>(state.iterations());
  state.SetBytesProcessed(state.iterations() * 2 * kDeviceTokens * n * static_cast<int64_t>(at::elementSize(dtype)));
  const auto key = std::make_tuple(static_cast<int>(dtype), n);
  if (is_copy) copy_seconds()[key] = per_launch;
  if (copy_seconds().count(key)) state.counters["x_copy"] = per_launch / copy_seconds()[key];
}

}  // namespace

void register_device_benchmarks() {
  if (cuda_device_count() == 0) return;
  for (const at::ScalarType dtype : {at::kFloat, at::kHalf, at::kBFloat16})
    for (const int64_t n : {4096, 11008, 14336, 28672}) {
      const std::string suffix = fmt::format("/{}/{}", c10::toString(dtype), n);
      benchmark::RegisterBenchmark(("device/copy" + suffix).c_str(), [dtype, n](benchmark::State& state) {
        const at::Tensor& x = block(dtype, n);
        at::Tensor y = at::empty_like(x);
        timed(state, dtype, n, [&] { y.copy_(x); }, true);
      })->UseManualTime();
      benchmark::RegisterBenchmark(("device/walsh_hadamard" + suffix).c_str(), [dtype, n](benchmark::State& state) {
        const at::Tensor& x = block(dtype, n);
        const HadamardRotation r(n, random_signs(n, make_generator(3, "bench/signs")));
        timed(state, dtype, n, [&] { benchmark::DoNotOptimize(r.apply(x)); }, false);
      })->UseManualTime();
      benchmark::RegisterBenchmark(("device/fake_quant" + suffix).c_str(), [dtype, n](benchmark::State& state) {
        const at::Tensor& x = block(dtype, n);
        QuantSpec spec;
        spec.symmetric = false;
        timed(state, dtype, n, [&] { benchmark::DoNotOptimize(fake_quant(x, spec)); }, false);
      })->UseManualTime();
    }
}

}  // namespace sqlab
