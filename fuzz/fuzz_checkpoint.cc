// The trainer's checkpoint folder (state.json, params.safetensors, optimizer.safetensors), as --resume
// reads it: a real checkpoint of two parameters and their AdamW state is written once; each input
// replaces one of its three files (the first byte picks which), then the state is read and the tensors
// loaded back into the parameters and the optimizer.
#include <map>
#include <memory>

#include "deltatune/optim.h"
#include "fuzz_input.h"
#include "train/checkpoint.h"

namespace {
namespace fs = std::filesystem;

struct Fixture {
  deltatune::NamedParams params;
  std::unique_ptr<deltatune::AdamW> optimizer;
  fs::path checkpoint;
};

deltatune::NamedParams make_params() {
  deltatune::Tensor w = deltatune::Tensor::full({3, 4}, 0.5f), b = deltatune::Tensor::full({4}, -1.0f);
  w.set_requires_grad(true);
  b.set_requires_grad(true);
  return {{"lora.A", w}, {"head.bias", b}};
}

Fixture& fixture() {
  static Fixture f = [] {
    Fixture x;
    x.params = make_params();
    x.optimizer = std::make_unique<deltatune::AdamW>(x.params, deltatune::AdamWOptions{});
    for (auto& [_, p] : x.params) p.set_grad(deltatune::Tensor::full(p.shape(), 0.25f));
    x.optimizer->step();
    x.checkpoint = fuzz::scratch() / "checkpoint";
    deltatune::train_detail::save_checkpoint(x.checkpoint, x.params, *x.optimizer,
                                             {{"step", 1}, {"epoch", 0}, {"update_in_epoch", 1}});
    return x;
  }();
  return f;
}
}  // namespace

FUZZ_BUILD_BEFORE_FIRST_INPUT(fixture())

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  if (size == 0) return 0;
  Fixture& f = fixture();
  static const char* kFiles[] = {"state.json", "params.safetensors", "optimizer.safetensors"};
  const fs::path dir = fuzz::fresh_folder();
  for (const char* name : kFiles) fs::create_hard_link(f.checkpoint / name, dir / name);
  const fs::path replaced = dir / kFiles[data[0] % 3];
  fs::remove(replaced);
  fuzz::write(replaced, fuzz::bytes_of(data + 1, size - 1));
  fuzz::refuse_or_read([&] {
    const nlohmann::json state = deltatune::train_detail::read_checkpoint_state(dir);
    (void)state.at("step").get<int64_t>();  // what resume reads first, checked by the reader
    deltatune::NamedParams params = make_params();
    deltatune::AdamW optimizer(params, deltatune::AdamWOptions{});
    deltatune::train_detail::load_checkpoint_weights(dir, params, optimizer);
  });
  return 0;
}
