# The two front-door commands (see README): `make demo` runs the main job, `make test` runs every test.
BUILD ?= build
JOBS ?= $(shell nproc)
CMAKE_FLAGS ?=
CUDA := $(shell test -x /usr/local/cuda/bin/nvcc && echo ON || echo OFF)
# ccache when the machine has it (a developer's rebuilds); CI machines without it build as usual.
CCACHE := $(shell command -v ccache >/dev/null 2>&1 && echo -DCMAKE_CXX_COMPILER_LAUNCHER=ccache)

.PHONY: setup configure build cli python test demo bench bench-full clean test-sanitize test-tsan fuzz-build fuzz-smoke fuzz \
	test-robust

setup:
	@scripts/setup

configure: setup
	@cmake -S . -B $(BUILD) -G Ninja -DCMAKE_BUILD_TYPE=Release -DDELTATUNE_CUDA=$(CUDA) $(CCACHE) $(CMAKE_FLAGS) >/dev/null

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

# Our training step against the PyTorch peer, like for like (bench/README.md): the mini shapes, quick.
# BENCH_ARGS passes options on to bench/run, e.g. BENCH_ARGS='--precision bf16 --only "bert-mini lora"'.
BENCH_ARGS ?=
bench: build
	@bench/run $(BENCH_ARGS)

# The base shapes (bert-base, gpt2-124m, llama-160m; bench/README.md's "Latest figures"), each pair the
# best of two alternated runs: about 15 minutes on 2 cores, best on an otherwise quiet machine.
bench-full: build
	@bench/run --full --steps 4 --warmup 1 --repeat 2 $(BENCH_ARGS)

# --- robustness (docs/robustness.md) ----------------------------------------------------------
# The sanitized build: clang, ASan + UBSan, libFuzzer coverage (cmake/Sanitizers.cmake).
FUZZ_CONFIGURE = cmake -S . -B build-fuzz -G Ninja -DCMAKE_BUILD_TYPE=RelWithDebInfo -DCMAKE_CXX_COMPILER=clang++ \
	-DDELTATUNE_FUZZ=ON -DDELTATUNE_TESTS=ON -DDELTATUNE_BENCH=OFF -DDELTATUNE_PYTHON=OFF -DDELTATUNE_MPI=OFF \
	-DDELTATUNE_CUDA=OFF $(CCACHE) $(CMAKE_FLAGS) >/dev/null
# The tests under AddressSanitizer + UndefinedBehaviorSanitizer, LeakSanitizer included (any finding
# fails the test). They build in build-fuzz, the one clang build with ASan + UBSan (and libFuzzer's
# coverage hooks, harmless outside fuzzing) that the fuzz targets use too, so its library is built once.
# SANITIZE_TESTS: a ctest -R pattern (default: every test but the installed-package test, whose outside
# project is not instrumented, and the format check). MPI and the Python module are off in this build.
SANITIZE_TESTS ?= .
SANITIZE_ENV = ASAN_OPTIONS=detect_leaks=1:abort_on_error=1:detect_stack_use_after_return=0 \
	UBSAN_OPTIONS=print_stacktrace=1:halt_on_error=1 LSAN_OPTIONS=suppressions=$(CURDIR)/scripts/lsan.supp
test-sanitize: setup
	@$(FUZZ_CONFIGURE)
	@cmake --build build-fuzz -j $(JOBS)
	@cd build-fuzz && $(SANITIZE_ENV) ctest --output-on-failure -j $(JOBS) -R '$(SANITIZE_TESTS)' \
		-E '^(Package|Format)\.'

# ThreadSanitizer over the multi-threaded parts: concurrent forwards on one model, the runtime's threads,
# the kernels' thread pool (OpenMP) under the ops tests, and the server (its HTTP threads, scheduler and
# engine, in the real binary driven over HTTP).
TSAN_TESTS ?= ^(ConcurrentForward|ConcurrentCalls|Runtime|ServeGpt2|ServeBert)
test-tsan: setup
	@cmake -S . -B build-tsan -G Ninja -DCMAKE_BUILD_TYPE=RelWithDebInfo -DDELTATUNE_SANITIZE=thread \
		-DDELTATUNE_BENCH=OFF -DDELTATUNE_PYTHON=OFF -DDELTATUNE_MPI=OFF -DDELTATUNE_CUDA=OFF $(CCACHE) $(CMAKE_FLAGS) >/dev/null
	@cmake --build build-tsan -j $(JOBS) --target deltatune_cli test_concurrent_forward test_runtime test_serve
	@cd build-tsan && TSAN_OPTIONS="halt_on_error=1 suppressions=$(CURDIR)/scripts/tsan.supp" \
		ctest --output-on-failure -j $(JOBS) -R '$(TSAN_TESTS)'

# libFuzzer targets (fuzz/, clang): `fuzz-smoke` runs each a fixed number of times (CI); `fuzz` runs
# campaigns (FUZZ_ARGS, e.g. --runs 1000000 or --seconds 600; see scripts/fuzz --help).
FUZZ_ARGS ?=
fuzz-build: setup
	@$(FUZZ_CONFIGURE)
	@cmake --build build-fuzz -j $(JOBS) --target fuzzers
fuzz-smoke: fuzz-build
	@cd build-fuzz && OMP_NUM_THREADS=1 ctest --output-on-failure -j $(JOBS) -L fuzz
fuzz: fuzz-build
	@scripts/fuzz $(FUZZ_ARGS)

# What CI runs of the above, bounded: one clang build with ASan + UBSan (the fuzz build) gives the fuzz
# smoke runs, the replays of past findings, and these tests under the sanitizers: the kernels and their
# gradients, and every reader of files from outside (the whole suite sanitized: make test-sanitize).
ROBUST_TESTS = backend_ops gradcheck quantize safetensors gguf_format gguf_model hf_config data config_file tokenizer delta_loading \
	kv_cache optimizer concurrent_forward gradient_checkpointing saved_tensors
test-robust: setup
	@$(FUZZ_CONFIGURE)
	@cmake --build build-fuzz -j $(JOBS) --target fuzzers $(addprefix test_,$(ROBUST_TESTS))
	@cd build-fuzz && OMP_NUM_THREADS=1 ctest --output-on-failure -j $(JOBS) -L fuzz
	@cd build-fuzz && for t in $(ROBUST_TESTS); do echo "sanitized: test_$$t"; \
		$(SANITIZE_ENV) tests/test_$$t --gtest_brief=1 || exit 1; done

clean:
	rm -rf $(BUILD) build-tsan build-fuzz
