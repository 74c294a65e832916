// deltatune export --format gguf --model BASE --delta DIR --output adapter.gguf: a saved LoRA (ours or
// a PEFT adapter) written as llama.cpp's GGUF LoRA adapter (deltatune/gguf_lora.h).
#include <cstdio>
#include <filesystem>

#include "command.h"
#include "deltatune/error.h"
#include "deltatune/gguf_lora.h"
#include "deltatune/loading.h"

namespace {
using namespace deltatune;
using cli::ExitError;
namespace fs = std::filesystem;

struct Args {
  std::string format, model, delta, output, type = "f32";
};

void run(const Args& a) {
  if (a.format != "gguf") throw ExitError{"--format '" + a.format + "' is not supported (gguf)"};
  const std::optional<gguf::GgmlType> type = gguf::parse_type(a.type);
  if (!type ||
      (*type != gguf::GgmlType::F32 && *type != gguf::GgmlType::F16 && *type != gguf::GgmlType::BF16))
    throw ExitError{"--type '" + a.type + "' is not supported (f32, f16, bf16)"};
  if (!model_exists(a.model))
    throw ExitError{"model folder '" + a.model + "' does not exist or is not a folder (nor a GGUF file)"};
  if (!fs::is_directory(a.delta)) throw ExitError{"delta '" + a.delta + "' is not a delta folder"};
  if (fs::is_directory(a.output))
    throw ExitError{"--output '" + a.output + "' is a folder; name the .gguf file"};
  LoadRequest request;
  request.model_dir = a.model;
  request.delta = a.delta;
  LoadedModel loaded = load_with_delta(request);
  if (loaded.trained.deltas.size() != 1)
    throw ExitError{"delta '" + a.delta + "' is a '" + loaded.trained.method + "' run, not a LoRA"};
  gguf::write_lora_adapter(*loaded.trained.deltas.front(), *loaded.model, a.output, *type);
  std::printf("wrote %s (LoRA adapter for llama.cpp, %s)\n", a.output.c_str(), gguf::traits(*type).name);
  if (!loaded.trained.model_parameters.empty())
    std::printf("note: the delta's own model tensors (its task head) are not part of a GGUF adapter\n");
}

void setup(CLI::App& app) {
  auto a = std::make_shared<Args>();
  app.add_option("--format", a->format, "Format to write: gguf (llama.cpp's LoRA adapter)")->required();
  app.add_option("--model", a->model, "The base model folder (or GGUF file) the delta was trained on")
      ->required();
  app.add_option("--delta", a->delta, "A saved LoRA: what train wrote, or a PEFT adapter folder")->required();
  app.add_option("--output,--out", a->output, "The .gguf file to write")->required();
  app.add_option("--type", a->type, "Type of the LoRA matrices: f32 (default), f16, bf16");
  app.callback([a] { run(*a); });
}
cli::Register reg("export", "Write a saved LoRA as a GGUF adapter (llama.cpp --lora)", setup);
}  // namespace
