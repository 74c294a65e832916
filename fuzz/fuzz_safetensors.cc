// safetensors files (header JSON, dtypes, shapes, offsets, data): every tensor read back as floats.
#include "deltatune/safetensors.h"
#include "fuzz_input.h"

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  const auto file = fuzz::write(fuzz::fresh_folder() / "model.safetensors", fuzz::bytes_of(data, size));
  fuzz::refuse_or_read([&] {
    deltatune::TensorFile f = deltatune::read_safetensors(file);
    for (auto& [name, t] : f.tensors) (void)t.to_floats();
  });
  return 0;
}
