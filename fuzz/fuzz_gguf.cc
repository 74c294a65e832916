// GGUF files (header, metadata of every type, tensor infos, offsets, data): every tensor decoded,
// the model config and the adapter check of deltatune/gguf_model.h and gguf_lora.h, and the tokenizer
// its tokenizer.ggml.* metadata describes (SentencePiece "llama" or byte-level BPE "gpt2"), encoding
// and decoding a text.
#include "deltatune/gguf.h"
#include "deltatune/gguf_lora.h"
#include "deltatune/gguf_model.h"
#include "deltatune/tokenizer.h"
#include "fuzz_input.h"

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  const auto file = fuzz::write(fuzz::fresh_folder() / "model.gguf", fuzz::bytes_of(data, size));
  fuzz::refuse_or_read([&] {
    const deltatune::gguf::File f = deltatune::gguf::read_file(file);
    (void)deltatune::gguf::describe(f);
    for (const auto& t : f.tensors) fuzz::refuse_or_read([&] { (void)deltatune::gguf::dequantize(t, file); });
    fuzz::refuse_or_read([&] { (void)deltatune::gguf::model_config(f); });
    (void)deltatune::gguf::is_gguf_adapter(file);
    fuzz::refuse_or_read([&] {
      const auto tokenizer = deltatune::Tokenizer::load(file);
      (void)tokenizer->decode(tokenizer->encode("Hello world, 12345 <|endoftext|>", true).ids);
    });
  });
  return 0;
}
