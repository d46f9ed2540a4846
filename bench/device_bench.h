// The device group of sqlab_bench (bench/device_bench.cpp): registered only where LibTorch
// sees a CUDA device.
#pragma once

namespace sqlab {

void register_device_benchmarks();

}  // namespace sqlab
