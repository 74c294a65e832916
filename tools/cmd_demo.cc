// deltatune demo: the engine end to end in seconds. A two-layer transformer encoder, randomly
// initialised, learns a synthetic task (does token 7 occur in the sequence?) with AdamW; the loss
// printed falls and the accuracy rises. (The real main job is `deltatune train`, see README.)
#include <cstdio>

#include "command.h"
#include "deltatune/autograd.h"
#include "deltatune/model.h"
#include "deltatune/ops.h"
#include "deltatune/optim.h"

namespace {
using namespace deltatune;

struct Batch {
  Tensor ids, labels;
};

Batch synthetic_batch(Generator& gen, int64_t batch, int64_t length, int64_t vocab) {
  std::vector<int64_t> ids(static_cast<size_t>(batch * length)), labels(static_cast<size_t>(batch));
  for (int64_t b = 0; b < batch; ++b) {
    labels[size_t(b)] = int64_t(gen.below(2));
    for (int64_t t = 0; t < length; ++t) {
      int64_t id;
      do id = 8 + int64_t(gen.below(uint64_t(vocab - 8))); while (id == 7);
      ids[size_t(b * length + t)] = id;
    }
    if (labels[size_t(b)]) ids[size_t(b * length + int64_t(gen.below(uint64_t(length))))] = 7;
  }
  return {Tensor::from_ints(ids, {batch, length}), Tensor::from_ints(labels, {batch})};
}

void setup(CLI::App& app) {
  auto steps = std::make_shared<int>(150);
  app.add_option("--steps", *steps, "Training steps")->default_val(150)->check(CLI::Range(1, 100000));
  app.callback([=] {
    ModelConfig config = parse_model_config(
        {{"model_type", "bert"}, {"hidden_size", 64}, {"num_hidden_layers", 2}, {"num_attention_heads", 4},
         {"intermediate_size", 128}, {"vocab_size", 64}, {"max_position_embeddings", 32}, {"type_vocab_size", 1},
         {"hidden_act", "gelu"}, {"num_labels", 2}},
        "demo");
    auto model = build_model(config, HeadKind::SequenceClassification, 0);
    NamedParams params;
    for (auto& [name, t] : model->named_parameters()) params.emplace_back(name, t->set_requires_grad(true));
    AdamWOptions opt;
    opt.lr = 3e-3;
    AdamW optimizer(params, opt);
    Generator gen(42);
    std::printf("demo: a 2-layer transformer learns whether token 7 occurs in a sequence of 12 tokens\n");
    double running = 0, correct = 0, seen = 0;
    for (int step = 1; step <= *steps; ++step) {
      Batch b = synthetic_batch(gen, 32, 12, 64);
      ModelInput in;
      in.input_ids = b.ids;
      Tensor logits = model->forward(in).logits;
      Tensor loss = ops::cross_entropy(logits, b.labels);
      loss.backward();
      optimizer.step();
      optimizer.zero_grad();
      running += loss.item();
      std::vector<float> l = logits.to_floats();
      std::vector<int64_t> y = b.labels.to_ints();
      for (size_t i = 0; i < y.size(); ++i) correct += ((l[2 * i + 1] > l[2 * i]) == (y[i] == 1));
      seen += double(y.size());
      if (step % 25 == 0 || step == *steps) {
        std::printf("step %4d  loss %.4f  accuracy %.1f%%\n", step, running / 25.0, 100.0 * correct / seen);
        running = correct = seen = 0;
      }
    }
  });
}
deltatune::cli::Register reg("demo", "A 10-second end-to-end check of the engine on a synthetic task", setup);
}  // namespace
