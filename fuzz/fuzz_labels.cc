// labels.json, the class names a classifier run saves beside its delta.
#include "deltatune/data.h"
#include "fuzz_input.h"

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  const auto file = fuzz::write(fuzz::fresh_folder() / "labels.json", fuzz::bytes_of(data, size));
  fuzz::refuse_or_read([&] {
    const auto labels = deltatune::data::LabelMap::load(file);
    for (int64_t i = 0; i < int64_t(labels.size()); ++i) (void)labels.name(i);
  });
  return 0;
}
