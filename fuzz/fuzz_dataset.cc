// Task files as users bring them: the first byte picks JSONL, CSV or TSV; the examples are read (text,
// pair, label fields), labelled and K-shot sampled.
#include "deltatune/data.h"
#include "fuzz_input.h"

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  if (size == 0) return 0;
  static const char* kExtensions[] = {".jsonl", ".csv", ".tsv"};
  const auto file = fuzz::write(fuzz::fresh_folder() / (std::string("train") + kExtensions[data[0] % 3]),
                                fuzz::bytes_of(data + 1, size - 1));
  fuzz::refuse_or_read([&] {
    std::vector<deltatune::data::Example> examples = deltatune::data::read_examples(file, {}, data[0] & 4);
    if (data[0] & 4) return;
    const auto labels = deltatune::data::LabelMap::from_examples(examples);
    deltatune::data::assign_labels(examples, labels);
    (void)deltatune::data::few_shot(examples, 2, 1);
  });
  return 0;
}
