# The two front-door commands (see README): `make demo` runs the main job, `make test` runs every test.
BUILD ?= build
JOBS ?= $(shell nproc)
CMAKE_FLAGS ?=
CUDA := $(shell test -x /usr/local/cuda/bin/nvcc && echo ON || echo OFF)

.PHONY: setup configure build cli python test demo bench clean

setup:
	@scripts/setup

configure: setup
	@cmake -S . -B $(BUILD) -G Ninja -DCMAKE_BUILD_TYPE=Release -DDELTATUNE_CUDA=$(CUDA) $(CMAKE_FLAGS) >/dev/null

# Everything: the library, the command, tests and benchmarks.
build: configure
	@cmake --build $(BUILD) -j $(JOBS)

# The command alone (what the main job needs).
cli: configure
	@cmake --build $(BUILD) -j $(JOBS) --target deltatune_cli

# The Python module in place: PYTHONPATH=$(BUILD)/python python3 -c "import deltatune" (README: Python).
python: configure
	@cmake --build $(BUILD) -j $(JOBS) --target deltatune_python deltatune_cli

test: build
	@cd $(BUILD) && ctest --output-on-failure -j $(JOBS)

# The main job: fine-tune bert-mini with LoRA on the built-in sentiment task, test accuracy before and after.
# --overwrite: the demo is meant to be rerun; it replaces its own runs/demo.
demo: cli
	@$(BUILD)/deltatune train --model assets/models/bert-mini \
		--data assets/tasks/sentiment --method lora --out runs/demo --overwrite

bench: build
	@bench/run

clean:
	rm -rf $(BUILD)
