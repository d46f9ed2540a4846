// Standalone timing of the structured rotations (not part of the CMake build; the lead will add
// Google Benchmark later). HadamardRotation::apply / apply_inverse and KroneckerRotation::apply
// (balanced factorization, random orthogonal factors) vs at::Tensor::clone() and a dense GEMM,
// on a 2048 x n float32 block, measurements interleaved in rounds, min / median / max.
//
//   cmake --build build --target sqlab_core
//   g++ -O3 -DNDEBUG -fopenmp -std=c++17 -I. -I/usr/include/torch/csrc/api/include \
//       bench/rotation_apply_timing.cpp build/libsqlab_core.a -ltorch -ltorch_cpu -lc10 -lfmt \
//       -pthread -Wl,--no-as-needed /usr/lib/x86_64-linux-gnu/libtcmalloc_minimal.so.4 \
//       -o /tmp/rotation_apply_timing
//   env -u OPENBLAS_CORETYPE /tmp/rotation_apply_timing [threads=2] [n=4096] [rounds=31]
//
// Note: at::parallel_for is a header template; without -fopenmp on the library's own sources it
// runs serially, whatever at::set_num_threads says.
#include <ATen/ATen.h>
#include <ATen/Parallel.h>
#include <chrono>
#include <cstdio>
#include <algorithm>
#include <vector>
#include <functional>
#include "core/hadamard.h"
#include "core/kronecker.h"
#include "core/random.h"
using namespace sqlab;
std::vector<double> times(const std::function<void()>& f, int reps) {
  std::vector<double> v;
  for (int i = 0; i < reps; i++) {
    auto a = std::chrono::steady_clock::now(); f(); auto b = std::chrono::steady_clock::now();
    v.push_back(std::chrono::duration<double, std::milli>(b - a).count());
  }
  std::sort(v.begin(), v.end());
  return v;
}
int main(int argc, char** argv) {
  const int threads = argc > 1 ? atoi(argv[1]) : 2;
  const int64_t n = argc > 2 ? atoll(argv[2]) : 4096;
  const int reps = argc > 3 ? atoi(argv[3]) : 31;
  at::set_num_threads(threads);
  const int64_t T = 2048;
  const at::Tensor x = at::randn({T, n});
  const HadamardRotation h(n, random_signs(n, make_generator(1, "bench")));
  const auto [n1, n2] = balanced_factorization(n);
  const KroneckerRotation k(random_orthogonal_matrix(n1, make_generator(1, "a")),
                            random_orthogonal_matrix(n2, make_generator(1, "b")));
  const at::Tensor r32 = h.dense().to(at::kFloat);
  for (int i = 0; i < 3; i++) {  // warm up
    x.clone();
    h.apply(x);
    k.apply(x);
  }
  struct Row { const char* name; std::function<void()> f; };
  std::vector<Row> rows = {
      {"clone", [&] { auto y = x.clone(); }},
      {"hadamard.apply", [&] { auto y = h.apply(x); }},
      {"hadamard.apply_inverse", [&] { auto y = h.apply_inverse(x); }},
      {"kronecker.apply", [&] { auto y = k.apply(x); }},
      {"dense matmul", [&] { auto y = at::mm(x, r32); }},
  };
  printf("T=%ld n=%ld threads=%d kronecker %ld x %ld, ms (min / median / max of %d)\n", T, n, threads, n1, n2, reps);
  // interleave the measurements in rounds so that load changes hit all alike
  std::vector<std::vector<double>> all(rows.size());
  for (int round = 0; round < reps; ++round)
    for (size_t i = 0; i < rows.size(); ++i) {
      if (i == 4 && round >= 5) continue;  // dense GEMM is slow; 5 samples
      auto t = times(rows[i].f, 1);
      all[i].push_back(t[0]);
    }
  double clone_med = 0;
  for (size_t i = 0; i < rows.size(); ++i) {
    auto v = all[i]; std::sort(v.begin(), v.end());
    double med = v[v.size() / 2];
    if (i == 0) clone_med = med;
    printf("  %-24s %8.3f %8.3f %8.3f   x%.2f of clone\n", rows[i].name, v.front(), med, v.back(), med / clone_med);
  }
}
