// Settings files users write by hand (sweep grids, delta configs): the first byte picks YAML or JSON.
#include "deltatune/config_file.h"
#include "fuzz_input.h"

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  if (size == 0) return 0;
  const auto file = fuzz::write(fuzz::fresh_folder() / ((data[0] & 1) ? "run.yaml" : "run.json"),
                                fuzz::bytes_of(data + 1, size - 1));
  fuzz::refuse_or_read([&] { (void)deltatune::read_config_file(file).dump(); });
  return 0;
}
