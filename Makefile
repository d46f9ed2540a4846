# The two commands of the README: `make run` and `make test`. Both install what is
# missing (scripts/setup.sh), configure and build; then run the quickstart or the tests.
BUILD   ?= build
JOBS    ?= $(shell nproc)
BIN_DIR ?= $(if $(filter 0,$(shell id -u)),/usr/local/bin,$(HOME)/.local/bin)
# OPENBLAS_CORETYPE=Haswell halves f32 matmul speed on this CPU (toolchain.md).
unexport OPENBLAS_CORETYPE

.PHONY: all setup configure build install run test bench clean

all: build

setup:
	@scripts/setup.sh

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

test: install
	cd $(BUILD) && ctest --output-on-failure -j $(JOBS)

clean:
	rm -rf $(BUILD)
