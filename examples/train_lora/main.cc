// Fine-tunes a BERT classifier with LoRA through deltatune's public headers, then saves the delta.
//
//   train_lora MODEL_DIR TASK_DIR OUT_DIR [STEPS] [EXAMPLES]
//
// MODEL_DIR: a Hugging Face checkpoint folder (assets/models/bert-mini); TASK_DIR: a task folder
// with train.jsonl (assets/tasks/sentiment). OUT_DIR receives delta/ (with labels.json), which
// `deltatune inspect|eval|predict --delta OUT_DIR/delta` read.
#include <cstdio>
#include <exception>
#include <filesystem>
#include <string>
#include <vector>

#include "deltatune/data.h"
#include "deltatune/delta.h"
#include "deltatune/method_presets.h"
#include "deltatune/model.h"
#include "deltatune/tokenizer.h"
#include "deltatune/trainer.h"

namespace dt = deltatune;
namespace fs = std::filesystem;

int main(int argc, char** argv) {
  if (argc < 4 || argc > 6) {
    std::fprintf(stderr, "usage: %s MODEL_DIR TASK_DIR OUT_DIR [STEPS] [EXAMPLES]\n", argv[0]);
    return 2;
  }
  const fs::path model_dir = argv[1], task_dir = argv[2], out_dir = argv[3];
  const int64_t steps = argc > 4 ? std::stoll(argv[4]) : 10;
  const size_t examples = argc > 5 ? std::stoul(argv[5]) : 64;
  try {
    // The task: the first EXAMPLES training examples, their labels numbered.
    std::vector<dt::data::Example> train = dt::data::load_task(task_dir).train;
    if (train.size() > examples) train.resize(examples);
    const dt::data::LabelMap labels = dt::data::LabelMap::from_examples(train);

    // The model with a fresh classification head, and LoRA (the CLI's `--method lora`) attached.
    dt::LoadOptions load;
    load.head = dt::HeadKind::SequenceClassification;
    load.num_labels = labels.size();
    load.verbose = false;
    std::unique_ptr<dt::TransformerModel> model = dt::load_pretrained(model_dir, load);
    const dt::MethodPreset& lora = dt::method_preset("lora");
    std::unique_ptr<dt::delta::Delta> delta = dt::delta::make_delta(lora.delta_config);
    delta->attach(*model);
    const dt::train::TrainTarget target = dt::train::TrainTarget::with_deltas(*model, {delta.get()}, "lora");

    const std::unique_ptr<dt::Tokenizer> tokenizer = dt::Tokenizer::load(model_dir);
    const dt::data::EncodedDataset train_set =
        dt::data::encode(train, *tokenizer, dt::train::effective_max_length(*model, 128));

    dt::train::TrainOptions options;
    options.max_steps = steps;
    options.batch_size = 8;
    options.lr = lora.lr;
    options.run_dir = out_dir;
    options.progress = false;
    const dt::train::TrainResult result = dt::train::Trainer(target, options).train(train_set, nullptr);

    dt::train::save_trained(out_dir / "delta", target);
    labels.save(out_dir / "delta" / "labels.json");
    std::printf("trained %lld steps on %zu examples (%lld of %lld parameters), loss %.4f -> %.4f; saved %s\n",
                (long long)result.steps, train_set.size(), (long long)result.trainable,
                (long long)result.total, result.losses.front(), result.losses.back(),
                (out_dir / "delta").c_str());
    return 0;
  } catch (const std::exception& e) {
    std::fprintf(stderr, "error: %s\n", e.what());
    return 1;
  }
}
