// A saved delta's config, in our format (delta_config.json) or PEFT's (adapter_config.json; the first
// byte picks), beside a valid tensors file of a LoRA on bert-mini: checked against the model folder,
// peeked, loaded onto the model and detached again.
#include <memory>

#include "deltatune/delta.h"
#include "deltatune/delta_io.h"
#include "deltatune/model.h"
#include "fuzz_input.h"

namespace {
namespace fs = std::filesystem;
const fs::path kModel = fs::path(DELTATUNE_ASSETS) / "models" / "bert-mini";

struct Fixture {
  std::unique_ptr<deltatune::TransformerModel> model;
  fs::path ours, peft;  // folders a real LoRA was saved into, in both formats
};

Fixture& fixture() {
  static Fixture f = [] {
    Fixture x;
    deltatune::LoadOptions load;
    load.verbose = false;
    x.model = deltatune::load_pretrained(kModel, load);
    auto lora =
        deltatune::delta::make_delta({{"method", "lora"}, {"r", 2}, {"targets", {"attn.q", "attn.v"}}});
    lora->attach(*x.model);
    x.ours = fuzz::scratch() / "lora";
    x.peft = fuzz::scratch() / "lora_peft";
    deltatune::delta::save_delta(x.ours, *lora, *x.model);
    deltatune::delta::save_peft(x.peft, *lora, *x.model);
    lora->detach();
    return x;
  }();
  return f;
}
}  // namespace

FUZZ_BUILD_BEFORE_FIRST_INPUT(fixture())

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  if (size == 0) return 0;
  Fixture& f = fixture();
  const bool peft = data[0] & 1;
  const fs::path dir = fuzz::fresh_folder();
  const fs::path tensors = peft ? f.peft / "adapter_model.safetensors" : f.ours / "delta.safetensors";
  // A hard link, not a copy: copy_file's sendfile can fail with EINTR under libFuzzer's timer signal.
  fs::create_hard_link(tensors, dir / tensors.filename());
  fuzz::write(dir / (peft ? "adapter_config.json" : "delta_config.json"), fuzz::bytes_of(data + 1, size - 1));
  fuzz::refuse_or_read([&] {
    deltatune::delta::check_delta_fits(dir, kModel);
    (void)deltatune::delta::peek_delta(dir);
    deltatune::delta::SavedDelta saved = deltatune::delta::load_delta(dir, *f.model);
    if (saved.delta) saved.delta->detach();
  });
  return 0;
}
