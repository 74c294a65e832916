// Hugging Face config.json: every architecture field read, checked and summarised.
#include "deltatune/hf_config.h"
#include "fuzz_input.h"

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  const auto file = fuzz::write(fuzz::fresh_folder() / "config.json", fuzz::bytes_of(data, size));
  fuzz::refuse_or_read([&] { (void)deltatune::summary(deltatune::load_model_config(file)); });
  return 0;
}
