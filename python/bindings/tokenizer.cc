// deltatune.Tokenizer: a model folder's tokenizer (load_tokenizer), as transformers' is called.
#include "common.h"

namespace deltatune::python {
namespace {

std::shared_ptr<Tokenizer> load_tokenizer(const std::string& dir) {
  require_exists(dir, "tokenizer folder");
  py::gil_scoped_release release;
  return std::shared_ptr<Tokenizer>(Tokenizer::load(dir));
}

py::array rows_array(const std::vector<std::vector<int64_t>>& rows) {
  const size_t width = rows.empty() ? 0 : rows[0].size();
  py::array_t<int64_t> out({rows.size(), width});
  auto view = out.mutable_unchecked<2>();
  for (size_t r = 0; r < rows.size(); ++r)
    for (size_t c = 0; c < width; ++c) view(r, c) = rows[r][c];
  return out;
}

// transformers' tokenizer(texts, padding=True, truncation=..., max_length=...) with numpy arrays.
py::dict call(const Tokenizer& tok, py::object texts, py::object pairs, int64_t max_length, bool padding) {
  std::vector<std::string> firsts, seconds;
  const bool single = py::isinstance<py::str>(texts);
  if (single)
    firsts.push_back(texts.cast<std::string>());
  else
    firsts = texts.cast<std::vector<std::string>>();
  if (!pairs.is_none()) {
    if (py::isinstance<py::str>(pairs))
      seconds.push_back(pairs.cast<std::string>());
    else
      seconds = pairs.cast<std::vector<std::string>>();
    if (seconds.size() != firsts.size()) throw py::value_error("give one text_pair per text");
  }
  if (!padding && firsts.size() > 1)
    throw py::value_error("several texts make one batch only with padding=True");
  BatchEncoding batch;
  {
    py::gil_scoped_release release;
    batch = tok.encode_batch(firsts, seconds.empty() ? nullptr : &seconds, max_length, padding);
  }
  py::dict out;
  out["input_ids"] = rows_array(batch.input_ids);
  out["attention_mask"] = rows_array(batch.attention_mask);
  out["token_type_ids"] = rows_array(batch.token_type_ids);
  return out;
}

}  // namespace

void bind_tokenizer(py::module_& m) {
  py::class_<Tokenizer, std::shared_ptr<Tokenizer>>(
      m, "Tokenizer", "A model folder's tokenizer (WordPiece, byte-level BPE or SentencePiece).")
      .def(
          "encode",
          [](const Tokenizer& t, const std::string& text, py::object pair, bool add_special_tokens) {
            return pair.is_none() ? t.encode(text, add_special_tokens).ids
                                  : t.encode_pair(text, pair.cast<std::string>(), add_special_tokens).ids;
          },
          py::arg("text"), py::arg("text_pair") = py::none(), py::arg("add_special_tokens") = true,
          "Token ids of a text (or a text pair), special tokens added as the checkpoint asks.")
      .def(
          "tokenize",
          [](const Tokenizer& t, const std::string& text) { return t.encode(text, false).tokens; },
          py::arg("text"), "The text's tokens as strings (no special tokens).")
      .def(
          "decode",
          [](const Tokenizer& t, const std::vector<int64_t>& ids, bool skip_special_tokens) {
            return t.decode(ids, skip_special_tokens);
          },
          py::arg("ids"), py::arg("skip_special_tokens") = true, "Ids back to text.")
      .def("__call__", &call, py::arg("texts"), py::arg("text_pair") = py::none(), py::arg("max_length") = 0,
           py::arg("padding") = true,
           "A batch as numpy arrays: {'input_ids', 'attention_mask', 'token_type_ids'} [batch, tokens], "
           "rows padded on the right; max_length > 0 truncates (special tokens included).")
      .def_property_readonly("vocab_size", &Tokenizer::vocab_size, "Entries in the vocabulary.")
      .def_property_readonly("kind", &Tokenizer::kind, "wordpiece, bpe or sentencepiece.")
      .def_property_readonly("pad_token_id", &Tokenizer::pad_id, "-1 when there is none.")
      .def_property_readonly("eos_token_id", &Tokenizer::eos_id, "-1 when there is none.")
      .def_property_readonly("bos_token_id", &Tokenizer::bos_id, "-1 when there is none.")
      .def("token_to_id", &Tokenizer::token_to_id, py::arg("token"), "-1 when not in the vocabulary.")
      .def("id_to_token", &Tokenizer::id_to_token, py::arg("id"), "'' when out of range.")
      .def("__repr__", [](const Tokenizer& t) {
        return "deltatune.Tokenizer(" + t.kind() + ", vocab " + std::to_string(t.vocab_size()) + ")";
      });
  m.def("load_tokenizer", &load_tokenizer, py::arg("path"),
        "The tokenizer of a Hugging Face model folder (tokenizer.json, vocab files or tokenizer.model).");
}

}  // namespace deltatune::python
