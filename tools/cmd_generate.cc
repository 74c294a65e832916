// deltatune generate --model DIR [--delta DIR] --prompt STR [--max-new-tokens N] [sampling flags]
#include <cstdio>
#include <filesystem>

#include "command.h"
#include "deltatune/generate.h"
#include "deltatune/tokenizer.h"
#include "model_loading.h"
#include "option_checks.h"

namespace {
void setup(CLI::App& app) {
  auto model_dir = std::make_shared<std::string>(), delta = std::make_shared<std::string>();
  auto prompt = std::make_shared<std::string>();
  auto o = std::make_shared<deltatune::GenerationOptions>();
  auto greedy = std::make_shared<bool>(false);
  app.add_option("--model", *model_dir, "Hugging Face model folder (a decoder: GPT-2, Llama, ...)")->required();
  app.add_option("--delta", *delta, "A delta folder to apply");
  app.add_option("--prompt", *prompt, "The text to continue")->required();
  app.add_option("--max-new-tokens", o->max_new_tokens, "Tokens to generate at most")->default_val(32)->check(CLI::Range(1, 100000));
  app.add_flag("--sample", o->sample, "Sample instead of greedy decoding");
  app.add_flag("--greedy", *greedy, "Greedy decoding (the default)");
  app.add_option("--temperature", o->temperature, "Sampling temperature")
      ->default_val(1.0)
      ->check(deltatune::cli::kPositive);
  app.add_option("--top-k", o->top_k, "Keep the k most likely tokens (0: all)")
      ->default_val(0)
      ->check(deltatune::cli::kNonNegative);
  app.add_option("--top-p", o->top_p, "Nucleus sampling: keep the smallest set with this mass")
      ->default_val(1.0)
      ->check(deltatune::cli::kFraction);
  app.add_option("--seed", o->seed, "Random seed for sampling")->default_val(0);
  app.callback([=] {
    auto loaded = deltatune::cli::load_model(*model_dir, "causal-lm", *delta);
    auto tokenizer = deltatune::Tokenizer::load(*model_dir);
    deltatune::Encoding enc = tokenizer->encode(*prompt, true);
    std::vector<int64_t> ids = enc.ids;
    if (ids.empty()) throw deltatune::cli::ExitError{"the prompt gives no tokens"};
    deltatune::GenerationOptions options = *o;
    if (*greedy) options.sample = false;
    for (int64_t id : loaded.model->config.eos_token_ids) options.eos_ids.push_back(id);
    if (tokenizer->eos_id() >= 0) options.eos_ids.push_back(tokenizer->eos_id());
    std::vector<int64_t> produced;
    std::string shown;
    std::printf("%s", prompt->c_str());
    std::fflush(stdout);
    deltatune::generate(*loaded.model, ids, options, [&](int64_t id) {
      produced.push_back(id);
      // Decode the whole continuation each time so multi-byte characters print once complete.
      std::string text = tokenizer->decode(produced, true);
      if (text.size() > shown.size() && text.compare(0, shown.size(), shown) == 0) {
        std::printf("%s", text.substr(shown.size()).c_str());
        std::fflush(stdout);
        shown = text;
      }
    });
    std::printf("\n");
  });
}
deltatune::cli::Register reg("generate", "Continue a prompt with a decoder model (greedy or sampled, with a KV cache)", setup);
}  // namespace
