// A tokenizer folder made of fuzzed files: the first byte picks which kind (tokenizer.json,
// vocab.txt, vocab.json + merges.txt, tokenizer.model), with or without a tokenizer_config.json; the
// loaded tokenizer then encodes, pairs and decodes a few texts.
#include <fuzzer/FuzzedDataProvider.h>

#include "deltatune/tokenizer.h"
#include "fuzz_input.h"

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  FuzzedDataProvider in(data, size);
  const auto dir = fuzz::fresh_folder();
  const int kind = in.ConsumeIntegralInRange(0, 3);
  if (in.ConsumeBool()) fuzz::write(dir / "tokenizer_config.json", in.ConsumeRandomLengthString(4096));
  switch (kind) {
    case 0:
      fuzz::write(dir / "tokenizer.json", in.ConsumeRemainingBytesAsString());
      break;
    case 1:
      fuzz::write(dir / "vocab.txt", in.ConsumeRemainingBytesAsString());
      break;
    case 2:
      fuzz::write(dir / "vocab.json", in.ConsumeRandomLengthString(1 << 16));
      fuzz::write(dir / "merges.txt", in.ConsumeRemainingBytesAsString());
      break;
    default:
      fuzz::write(dir / "tokenizer.model", in.ConsumeRemainingBytesAsString());
      break;
  }
  fuzz::refuse_or_read([&] {
    auto tok = deltatune::Tokenizer::load(dir);
    const deltatune::Encoding e = tok->encode("Hello, world! Caf\xC3\xA9 \xF0\x9F\x98\x80  tabs\tand 123");
    (void)tok->decode(e.ids);
    (void)tok->encode_pair("a question", "an answer");
    (void)tok->encode_batch({"one", "two three", ""}, nullptr, 8, true);
  });
  return 0;
}
