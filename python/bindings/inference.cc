// predict and generate: a loaded (or trained) model at work on texts, the same steps as `deltatune
// predict` (workflow::classify) and `deltatune generate` (workflow::generate_text). Both release the GIL.
#include "common.h"
#include "deltatune/error.h"
#include "deltatune/generate.h"
#include "deltatune/trainer.h"
#include "deltatune/workflow.h"

namespace deltatune::python {
namespace {

// Texts as examples: a string, a (text, text_pair) tuple, or a dict with "text" (and "text_pair",
// "label": echoed as "gold").
std::vector<data::Example> examples_of(py::iterable texts) {
  std::vector<data::Example> out;
  for (py::handle item : texts) {
    data::Example ex;
    ex.origin = "texts[" + std::to_string(out.size()) + "]";
    if (py::isinstance<py::str>(item)) {
      ex.text = item.cast<std::string>();
    } else if (py::isinstance<py::tuple>(item) && py::len(item) == 2) {
      ex.text = item[py::int_(0)].cast<std::string>();
      ex.text_pair = item[py::int_(1)].cast<std::string>();
    } else if (py::isinstance<py::dict>(item)) {
      py::dict d = item.cast<py::dict>();
      if (!d.contains("text")) throw py::value_error(ex.origin + ": a dict needs a 'text'");
      ex.text = d["text"].cast<std::string>();
      if (d.contains("text_pair") && !d["text_pair"].is_none())
        ex.text_pair = d["text_pair"].cast<std::string>();
      if (d.contains("label") && !d["label"].is_none()) ex.label = py::str(d["label"]).cast<std::string>();
    } else {
      throw py::type_error(ex.origin + ": expected a str, a (text, text_pair) tuple or a dict");
    }
    out.push_back(std::move(ex));
  }
  return out;
}

py::list predict(ModelState& s, py::object texts, int64_t batch_size, int64_t max_new_tokens) {
  if (py::isinstance<py::str>(texts)) texts = py::make_tuple(texts);
  std::vector<data::Example> examples = examples_of(texts);
  if (batch_size < 1) throw py::value_error("batch_size must be at least 1");
  std::vector<nlohmann::json> lines;
  s.tokenizer();  // loaded (once) while the GIL serialises callers
  {
    py::gil_scoped_release release;
    if (s.model->training()) s.model->set_training(false);
    if (s.model->head == HeadKind::SequenceClassification) {
      const int64_t max_length = train::effective_max_length(*s.model, s.max_length);
      workflow::classify(*s.model, s.tokenizer(), s.class_names(), std::move(examples), max_length,
                         batch_size, [&](const nlohmann::json& line) { lines.push_back(line); });
    } else if (s.model->head == HeadKind::CausalLM) {
      GenerationOptions options;  // greedy, as `deltatune predict` continues texts
      options.max_new_tokens = max_new_tokens;
      for (const data::Example& ex : examples)
        lines.push_back(
            {{"text", ex.text},
             {"generated", workflow::generate_text(*s.model, s.tokenizer(), ex.text, options).text}});
    } else {
      throw ConfigError("predict needs a classifier or a causal LM; this model's head is " +
                        std::string(head_name(s.model->head)));
    }
  }
  py::list out;
  for (const auto& line : lines) out.append(to_python(line));
  return out;
}

std::string generate_text(ModelState& s, const std::string& prompt, int64_t max_new_tokens, bool do_sample,
                          float temperature, int64_t top_k, float top_p, uint64_t seed,
                          bool return_full_text) {
  if (s.model->head != HeadKind::CausalLM)
    throw ConfigError(std::string("generate needs a causal LM (load_model(..., task='causal-lm')); this "
                                  "model's head is ") +
                      head_name(s.model->head));
  if (max_new_tokens < 1) throw py::value_error("max_new_tokens must be at least 1");
  if (temperature <= 0) throw py::value_error("temperature must be positive");
  if (top_p <= 0 || top_p > 1) throw py::value_error("top_p must be in (0, 1]");
  s.tokenizer();  // loaded (once) while the GIL serialises callers
  py::gil_scoped_release release;
  GenerationOptions options;
  options.max_new_tokens = max_new_tokens;
  options.sample = do_sample;
  options.temperature = temperature;
  options.top_k = top_k;
  options.top_p = top_p;
  options.seed = seed;
  if (s.model->training()) s.model->set_training(false);
  const std::string continuation = workflow::generate_text(*s.model, s.tokenizer(), prompt, options).text;
  return return_full_text ? prompt + continuation : continuation;
}

}  // namespace

void bind_inference(py::module_& m) {
  m.def("predict", &predict, py::arg("model"), py::arg("texts"), py::arg("batch_size") = 64,
        py::arg("max_new_tokens") = 32,
        "A classifier's predictions for texts (str, (text, text_pair) or {'text', ...}): one dict per "
        "text, {'label', 'probabilities': {label: p}} ('gold' when a dict gave a label), as `deltatune "
        "predict` writes them. A causal LM: {'text', 'generated'} (greedy, up to max_new_tokens).");
  m.def("generate", &generate_text, py::arg("model"), py::arg("prompt"), py::arg("max_new_tokens") = 32,
        py::arg("do_sample") = false, py::arg("temperature") = 1.0f, py::arg("top_k") = 0,
        py::arg("top_p") = 1.0f, py::arg("seed") = 0, py::arg("return_full_text") = true,
        "Continues a prompt with a causal LM (a KV cache; greedy unless do_sample), stopping at EOS, "
        "max_new_tokens or the model's context. Returns prompt + continuation (return_full_text=False: "
        "the continuation), as `deltatune generate` prints it.");
}

}  // namespace deltatune::python
