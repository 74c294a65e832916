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

# The main job: fine-tune bert-mini with LoRA on the built-in sentiment task, test accuracy before and after.
demo: build
	@OMP_WAIT_POLICY=$${OMP_WAIT_POLICY:-passive} $(BUILD)/deltatune train --model assets/models/bert-mini \
		--data assets/tasks/sentiment --method lora --out runs/demo --overwrite

bench: build
	@bench/run

clean:
	rm -rf $(BUILD)
