# The two front-door commands (see README): `make demo` runs the main job, `make test` runs every test.
BUILD ?= build
JOBS ?= $(shell nproc)
CMAKE_FLAGS ?=
CUDA := $(shell test -x /usr/local/cuda/bin/nvcc && echo ON || echo OFF)

.PHONY: setup build test demo bench clean

setup:
	@scripts/setup

build: setup
	@cmake -S . -B $(BUILD) -G Ninja -DCMAKE_BUILD_TYPE=Release -DDELTATUNE_CUDA=$(CUDA) $(CMAKE_FLAGS) >/dev/null
	@cmake --build $(BUILD) -j $(JOBS)

test: build
	@cd $(BUILD) && ctest --output-on-failure -j $(JOBS)

demo: build
	@$(BUILD)/deltatune demo

bench: build
	@bench/run

clean:
	rm -rf $(BUILD)
