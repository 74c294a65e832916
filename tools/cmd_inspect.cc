// deltatune inspect MODEL_DIR (or --model MODEL_DIR): the architecture summary and the module tree with
// parameter counts. A GGUF file: its metadata and tensors first (then the model, when it is one).
#include <cstdio>

#include "command.h"
#include "deltatune/gguf.h"
#include "deltatune/model.h"
#include "deltatune/visualise.h"
#include "model_loading.h"

namespace {
void setup(CLI::App& app) {
  auto model_dir = std::make_shared<std::string>();
  auto delta_dir = std::make_shared<std::string>();
  auto head = std::make_shared<std::string>();
  // Either form names the folder (not both); the callback checks that one was given.
  auto* positional = app.add_option("model", *model_dir,
                                    "Hugging Face model folder (config.json + safetensors), or a GGUF file");
  auto* flag = app.add_option("--model", *model_dir, "The model folder (same as the positional argument)");
  positional->excludes(flag);
  app.add_option("--delta", *delta_dir, "A delta config (JSON) or a saved delta folder to attach and mark");
  app.add_option("--head", *head,
                 "Task head: causal-lm, masked-lm, sequence-classification, none (default: from config)");
  app.callback([=] {
    if (model_dir->empty())
      throw deltatune::cli::ExitError{"inspect: give the model folder (inspect DIR or --model DIR)"};
    if (deltatune::gguf::is_gguf_file(*model_dir)) {
      const deltatune::gguf::File file = deltatune::gguf::read_file(*model_dir);
      std::printf("%s", deltatune::gguf::describe(file).c_str());
      const deltatune::gguf::Value* type = file.find("general.type");
      // A LoRA adapter, or a file of tensors that names no architecture: no model to show.
      if ((type && type->text == "adapter") || !file.find("general.architecture")) return;
      std::printf("\n");
    }
    deltatune::cli::LoadedModel loaded = deltatune::cli::load_model(*model_dir, *head, *delta_dir);
    auto& model = *loaded.model;
    std::printf("%s\n", deltatune::summary(model.config).c_str());
    std::printf("head: %s, parameters: %s\n\n", deltatune::head_name(model.head),
                deltatune::with_thousands(model.parameter_count()).c_str());
    std::printf("%s", deltatune::module_tree(model, loaded.tree_options).c_str());
    if (!delta_dir->empty()) std::printf("\n%s\n", loaded.trainable_line.c_str());
  });
}
deltatune::cli::Register reg("inspect",
                             "Show a model's architecture and module tree (with a delta's modules marked)",
                             setup);
}  // namespace
