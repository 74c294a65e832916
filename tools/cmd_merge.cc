// deltatune merge --model M --delta D --out DIR [--dtype T]: fold a delta (LoRA, DoRA, IA3) into the
// weights, or take a full fine-tune's (or a head's) trained tensors, and write a full checkpoint
// transformers loads: a classifier as ...ForSequenceClassification with its label map. With
// --format gguf (or an --out ending in .gguf): one GGUF model file llama.cpp loads (a causal LM).
#include <cstdio>
#include <filesystem>

#include "command.h"
#include "deltatune/data.h"
#include "deltatune/delta_io.h"
#include "deltatune/error.h"
#include "deltatune/gguf_model.h"
#include "deltatune/loading.h"
#include "deltatune/merge.h"
#include "deltatune/run_folder.h"
#include "deltatune/trainer.h"
#include "model_loading.h"

namespace {
using namespace deltatune;
namespace fs = std::filesystem;
using cli::ExitError;

struct Args {
  std::string model, delta, out, dtype, format, type;
  bool overwrite = false;
};

// The format to write: --format, else gguf for an --out ending in .gguf, else safetensors.
bool writes_gguf(const Args& a) {
  if (a.format.empty()) return fs::path(a.out).extension() == ".gguf";
  if (a.format != "gguf" && a.format != "safetensors")
    throw ExitError{"--format '" + a.format + "' is not supported (safetensors, gguf)"};
  return a.format == "gguf";
}

// A GGUF file's matrix type: --type, default f16 (llama.cpp's converter's).
gguf::GgmlType gguf_type(const Args& a) {
  if (!a.dtype.empty()) throw ExitError{"--dtype is for safetensors; give a GGUF file's type with --type"};
  const std::string name = a.type.empty() ? "f16" : a.type;
  const std::optional<gguf::GgmlType> t = gguf::parse_type(name);
  for (gguf::GgmlType ok : {gguf::GgmlType::F32, gguf::GgmlType::F16, gguf::GgmlType::BF16,
                            gguf::GgmlType::Q8_0, gguf::GgmlType::Q4_0})
    if (t == ok) return ok;
  throw ExitError{"--type '" + name + "' is not supported (f32, f16, bf16, q8_0, q4_0)"};
}

std::optional<DType> parse_dtype(const std::string& name) {
  if (name.empty()) return std::nullopt;
  if (name == "float32") return DType::F32;
  if (name == "float16") return DType::F16;
  if (name == "bfloat16") return DType::BF16;
  throw ExitError{"--dtype '" + name + "' is not supported (float32, float16, bfloat16)"};
}

// A classifier's class names: the labels.json train wrote beside the delta (or in its run folder);
// none for a delta without one (a PEFT adapter), whose checkpoint then names them LABEL_0, ...
std::vector<std::string> delta_labels(const fs::path& delta) {
  fs::path file;
  try {
    file = train::find_labels_file(delta);
  } catch (const IoError&) {
    return {};
  }
  return data::LabelMap::load(file).names();
}

// The base with the delta's head, the delta folded in (or a full / head run's tensors loaded).
std::unique_ptr<TransformerModel> merged_model(const Args& a) {
  if (fs::is_regular_file(a.delta)) {  // a delta config (merged as freshly initialised) or a GGUF adapter
    auto loaded = cli::load_model(a.model, "", a.delta);
    for (auto& d : loaded.deltas) delta::merge_into(*loaded.model, *d);
    return std::move(loaded.model);
  }
  if (!model_exists(a.model))
    throw ExitError{"model folder '" + a.model + "' does not exist or is not a folder (nor a GGUF file)"};
  if (!fs::is_directory(a.delta))
    throw ExitError{"delta '" + a.delta + "' is neither a delta folder nor a config file"};
  LoadRequest request;
  request.model_dir = a.model;
  request.delta = a.delta;
  LoadedModel loaded = load_with_delta(request);
  for (auto& d : loaded.trained.deltas) delta::merge_into(*loaded.model, *d);
  return std::move(loaded.model);
}

void run_gguf(const Args& a) {
  const gguf::GgmlType type = gguf_type(a);  // checked before any work
  if (fs::is_directory(a.out)) throw ExitError{"--out '" + a.out + "' is a folder; name the .gguf file"};
  if (!a.overwrite && fs::exists(a.out))
    throw ExitError{"--out '" + a.out + "' exists; pass --overwrite to replace it"};
  auto model = merged_model(a);
  gguf::write_model(*model, a.model, a.out, type);
  std::printf("merged %s into %s: wrote %s (GGUF, %s)\n", a.delta.c_str(), a.model.c_str(), a.out.c_str(),
              gguf::traits(type).name);
}

void run(const Args& a) {
  if (writes_gguf(a)) return run_gguf(a);
  if (!a.type.empty()) throw ExitError{"--type is for --format gguf; give a checkpoint's dtype with --dtype"};
  delta::CheckpointOptions options;
  options.dtype = parse_dtype(a.dtype);  // checked before any work
  // Before loading anything: an --out that cannot be written, or holds files, is refused up front.
  deltatune::check_writable_folder(a.out, "--out");
  if (!a.overwrite && deltatune::holds_files(a.out))
    throw ExitError{"--out '" + a.out + "' is not empty; pass --overwrite to replace its files"};
  auto model = merged_model(a);
  if (model->head == HeadKind::SequenceClassification) options.labels = delta_labels(a.delta);
  delta::save_checkpoint(*model, a.model, a.out, options);
  std::printf("merged %s into %s: wrote %s\n", a.delta.c_str(), a.model.c_str(), a.out.c_str());
}

void setup(CLI::App& app) {
  auto a = std::make_shared<Args>();
  app.add_option("--model", a->model, "The base model folder (or GGUF file)")->required();
  app.add_option("--delta", a->delta,
                 "The delta folder (ours or PEFT's format; a full or head run's delta/ too)")
      ->required();
  app.add_option("--out,--output", a->out, "Folder to write the merged checkpoint to (or the .gguf file)")
      ->required();
  cli::add_threads_option(app);
  app.add_flag("--overwrite", a->overwrite,
               "Write into a non-empty --out (its checkpoint files are replaced)");
  app.add_option("--dtype", a->dtype, "float32, float16 or bfloat16 (default: the base checkpoint's dtype)");
  app.add_option("--format", a->format,
                 "safetensors (a Hugging Face folder, the default) or gguf (one llama.cpp file; the default "
                 "when --out ends in .gguf)");
  app.add_option("--type", a->type, "A GGUF file's matrix type: f32, f16 (default), bf16, q8_0, q4_0");
  app.callback([a] { run(*a); });
}
deltatune::cli::Register reg(
    "merge",
    "Fold a delta (LoRA, DoRA, IA3; or a full/head run's weights) into the base and write a "
    "full checkpoint",
    setup);
}  // namespace
