// deltatune generate --model DIR [--delta DIR] --prompt STR [--max-new-tokens N] [sampling flags]
//                    [--quantize nf4|nf4-dq|int8|q8_0|q4_0]
// The prompt and its continuation go to stdout; the speed (and a context-limit note) to stderr.
#include <cstdio>
#include <filesystem>

#include "command.h"
#include "deltatune/tokenizer.h"
#include "deltatune/workflow.h"
#include "model_loading.h"
#include "option_checks.h"

namespace {
void setup(CLI::App& app) {
  auto model_dir = std::make_shared<std::string>(), delta = std::make_shared<std::string>();
  auto prompt = std::make_shared<std::string>();
  auto o = std::make_shared<deltatune::GenerationOptions>();
  auto greedy = std::make_shared<bool>(false);
  auto quantize = std::make_shared<std::optional<deltatune::QuantFormat>>();
  app.add_option("--model", *model_dir, "Hugging Face model folder (a decoder: GPT-2, Llama, ...)")
      ->required();
  app.add_option("--delta", *delta, "A delta folder to apply");
  app.add_option("--prompt", *prompt, "The text to continue")->required();
  app.add_option("--max-new-tokens", o->max_new_tokens, "Tokens to generate at most")
      ->default_val(32)
      ->check(CLI::Range(1, 100000));
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
  deltatune::cli::add_threads_option(app);
  deltatune::cli::add_quantize_option(app, *quantize);
  app.callback([=] {
    auto loaded = deltatune::cli::load_model(*model_dir, "causal-lm", *delta, *quantize);
    deltatune::use_precision(*loaded.model, false, *quantize, loaded.trained_parameters);
    auto tokenizer = deltatune::Tokenizer::load(*model_dir);
    deltatune::GenerationOptions options = *o;
    if (*greedy) options.sample = false;
    std::printf("%s", prompt->c_str());
    std::fflush(stdout);
    const deltatune::workflow::TextGeneration result = deltatune::workflow::generate_text(
        *loaded.model, *tokenizer, *prompt, options, [](const std::string& piece) {
          std::printf("%s", piece.c_str());
          std::fflush(stdout);
        });
    std::printf("\n");
    std::fflush(stdout);
    if (result.stop == deltatune::StopReason::ContextLimit)
      std::fprintf(stderr, "note: stopped at the model's context limit (%lld positions)\n",
                   static_cast<long long>(loaded.model->config.max_position_embeddings));
    const size_t n = result.ids.size();
    std::fprintf(
        stderr,
        "generated %zu token%s in %.2f s (%.1f tokens/s; the time includes reading the %zu-token prompt)\n",
        n, n == 1 ? "" : "s", result.seconds, result.seconds > 0 ? double(n) / result.seconds : 0.0,
        result.prompt_ids.size());
  });
}
deltatune::cli::Register reg("generate",
                             "Continue a prompt with a decoder model (greedy or sampled, with a KV cache)",
                             setup);
}  // namespace
