// Text generation as a front end runs it (see include/deltatune/workflow.h): the prompt encoded, the
// stop ids gathered, the continuation decoded and streamed in printable pieces. `deltatune generate`,
// `deltatune predict` on a causal-LM delta and every later front end come through here.
#include <chrono>

#include "deltatune/error.h"
#include "deltatune/workflow.h"

namespace deltatune::workflow {
namespace {

// Hands on what `text` (the continuation so far) adds to what was already handed on. Until the end a
// text ending in U+FFFD waits: the rest of a multi-byte character's bytes may still come.
class TextStream {
 public:
  explicit TextStream(const std::function<void(const std::string&)>& sink) : sink_(sink) {}
  void update(const std::string& text, bool last) {
    if (!sink_) return;
    if (!last && text.ends_with("\xEF\xBF\xBD")) return;
    if (text.size() <= shown_ || text.compare(0, shown_, text_shown_) != 0) return;
    sink_(text.substr(shown_));
    text_shown_ = text;
    shown_ = text.size();
  }

 private:
  const std::function<void(const std::string&)>& sink_;
  std::string text_shown_;
  size_t shown_ = 0;
};

void add_stop_id(std::vector<int64_t>& ids, int64_t id) {
  if (id >= 0 && std::find(ids.begin(), ids.end(), id) == ids.end()) ids.push_back(id);
}

}  // namespace

void add_model_stop_ids(GenerationOptions& options, const TransformerModel& model,
                        const Tokenizer& tokenizer) {
  for (int64_t id : model.config.eos_token_ids) add_stop_id(options.eos_ids, id);
  add_stop_id(options.eos_ids, tokenizer.eos_id());
}

TextGeneration generate_text(TransformerModel& model, const Tokenizer& tokenizer, const std::string& prompt,
                             GenerationOptions options,
                             const std::function<void(const std::string&)>& on_text) {
  TextGeneration out;
  out.prompt_ids = tokenizer.encode(prompt, true).ids;
  if (out.prompt_ids.empty()) throw ConfigError("generate: the prompt gives no tokens");
  add_model_stop_ids(options, model, tokenizer);
  TextStream stream(on_text);
  std::vector<int64_t> produced;
  const auto start = std::chrono::steady_clock::now();
  const Generation g = generate_with_stop(model, out.prompt_ids, options, [&](int64_t id) {
    produced.push_back(id);
    if (on_text) stream.update(tokenizer.decode_continuation(out.prompt_ids, produced), false);
  });
  out.seconds = std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
  out.ids = g.ids;
  out.stop = g.stop;
  out.text = tokenizer.decode_continuation(out.prompt_ids, out.ids);
  stream.update(out.text, true);
  return out;
}

TextGeneration generate_text(const GenerateRequest& r,
                             const std::function<void(const std::string&)>& on_text) {
  LoadRequest load;
  load.model_dir = r.model_dir;
  load.delta = r.delta;
  load.head = HeadKind::CausalLM;
  load.tokenizer = true;
  load.quantize = r.quantize;
  LoadedModel m = load_with_delta(load);
  use_precision(*m.model, r.bf16, r.quantize, m.trained.model_parameters);
  return generate_text(*m.model, *m.tokenizer, r.prompt, r.options, on_text);
}

}  // namespace deltatune::workflow
