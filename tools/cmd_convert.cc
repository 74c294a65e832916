// deltatune convert --to gguf [--type f16] --model HF_DIR --output FILE.gguf: a Hugging Face
// llama-family folder written as llama.cpp's GGUF model file (deltatune/gguf_model.h).
#include <cstdio>
#include <filesystem>

#include "command.h"
#include "deltatune/gguf_model.h"

namespace {
using namespace deltatune;
using cli::ExitError;
namespace fs = std::filesystem;

struct Args {
  std::string to, type = "f16", model, output;
};

gguf::GgmlType file_type(const std::string& name) {
  const std::optional<gguf::GgmlType> t = gguf::parse_type(name);
  for (gguf::GgmlType ok : {gguf::GgmlType::F32, gguf::GgmlType::F16, gguf::GgmlType::BF16,
                            gguf::GgmlType::Q8_0, gguf::GgmlType::Q4_0})
    if (t == ok) return ok;
  throw ExitError{"--type '" + name + "' is not supported (f32, f16, bf16, q8_0, q4_0)"};
}

void run(const Args& a) {
  if (a.to != "gguf") throw ExitError{"--to '" + a.to + "' is not supported (gguf)"};
  const gguf::GgmlType type = file_type(a.type);
  if (!fs::is_directory(a.model))
    throw ExitError{"model folder '" + a.model + "' does not exist or is not a folder"};
  if (fs::is_directory(a.output))
    throw ExitError{"--output '" + a.output + "' is a folder; name the .gguf file"};
  gguf::convert_model(a.model, a.output, type);
  std::printf("wrote %s (%s, %.2f MB)\n", a.output.c_str(), gguf::traits(type).name,
              double(fs::file_size(a.output)) / 1e6);
}

void setup(CLI::App& app) {
  auto a = std::make_shared<Args>();
  app.add_option("--to", a->to, "Format to write: gguf (llama.cpp's model file)")->required();
  app.add_option("--type", a->type,
                 "Type of the weight matrices: f32, f16 (default), bf16, q8_0, q4_0 (norms stay f32)");
  app.add_option("--model", a->model, "Hugging Face model folder (llama, mistral, qwen2)")->required();
  app.add_option("--output,--out", a->output, "The .gguf file to write")->required();
  app.callback([a] { run(*a); });
}
cli::Register reg("convert", "Write a Hugging Face model folder as a GGUF file (llama.cpp, Ollama)", setup);
}  // namespace
