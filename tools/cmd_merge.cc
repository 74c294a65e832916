// deltatune merge --model M --delta D --out DIR: fold a LoRA (or DoRA) delta into the weights and
// write a full checkpoint transformers loads.
#include <cstdio>

#include "command.h"
#include "deltatune/merge.h"
#include "model_loading.h"

namespace {
void setup(CLI::App& app) {
  auto model_dir = std::make_shared<std::string>(), delta = std::make_shared<std::string>(), out = std::make_shared<std::string>();
  app.add_option("--model", *model_dir, "The base model folder")->required();
  app.add_option("--delta", *delta, "The delta folder (ours or PEFT's format)")->required();
  app.add_option("--out,--output", *out, "Folder to write the merged checkpoint to (float32 safetensors)")->required();
  deltatune::cli::add_threads_option(app);
  app.callback([=] {
    auto loaded = deltatune::cli::load_model(*model_dir, "", *delta);
    for (auto& d : loaded.deltas) deltatune::delta::merge_into(*loaded.model, *d);
    deltatune::delta::save_checkpoint(*loaded.model, *model_dir, *out);
    std::printf("merged %s into %s: wrote %s\n", delta->c_str(), model_dir->c_str(), out->c_str());
  });
}
deltatune::cli::Register reg("merge", "Fold a LoRA/DoRA delta into the base weights and write a full checkpoint", setup);
}  // namespace
