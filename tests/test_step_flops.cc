// step_flops: the analytic count of a step's products, checked against sums worked out by hand.
#include <gtest/gtest.h>

#include "deltatune/step_flops.h"

namespace deltatune {
namespace {

// One BERT block: hidden 4, 2 heads of 2, FFN 8, 2 labels; batch 1 of 3 tokens (N = 3).
ModelConfig tiny_bert() {
  return parse_model_config({{"model_type", "bert"},
                             {"vocab_size", 10},
                             {"hidden_size", 4},
                             {"num_hidden_layers", 1},
                             {"num_attention_heads", 2},
                             {"intermediate_size", 8},
                             {"max_position_embeddings", 8},
                             {"num_labels", 2}},
                            "tiny");
}

StepShape shape(StepKind kind) {
  StepShape s;
  s.kind = kind;
  s.head = HeadKind::SequenceClassification;
  s.batch = 1;
  s.seq = 3;
  s.lora_targets = {"attn.q", "attn.v"};
  s.lora_rank = 1;
  return s;
}

// Forward, in FLOPs (2 per multiply-add): q, k, v, o 4 x 2*3*4*4 = 384; Q K^T and P V 2 x 2*(1*2*3*3*2)
// = 144; up and down 2 x 2*3*4*8 = 384; pooler 2*1*4*4 = 32; classifier 2*1*4*2 = 16.
constexpr double kForward = 384 + 144 + 384 + 32 + 16;  // 960

TEST(StepFlops, ForwardCountsEveryProductOnce) {
  EXPECT_DOUBLE_EQ(step_flops(tiny_bert(), shape(StepKind::Forward)), kForward);
}

TEST(StepFlops, FullTrainingAddsInputAndWeightGradients) {
  // Every linear twice more (816 x 2); attention's dP, dV, dQ, dK 4 x 72.
  EXPECT_DOUBLE_EQ(step_flops(tiny_bert(), shape(StepKind::FullTraining)), kForward + 1632 + 288);
}

TEST(StepFlops, LoraSkipsFrozenWeightGradientsAndTheFirstInput) {
  // Forward: LoRA on q and v, 2 x 2*3*1*(4+4) = 96.
  // Backward: the block's input needs no gradient, so q and v only run their LoRA's d(xA), dB, dA
  // (2 x 2*(12+12+12) = 144), k nothing; attention dP, dV, dQ (3 x 72); o, up, down their input
  // gradients (96 + 2 x 192); pooler its input gradient (32); classifier input and weight gradients
  // (2 x 16).
  const double backward = 144 + 216 + 480 + 32 + 32;
  EXPECT_DOUBLE_EQ(step_flops(tiny_bert(), shape(StepKind::LoraTraining)), kForward + 96 + backward);
}

TEST(StepFlops, CausalLmHeadRunsOnPositionsWithANextToken) {
  ModelConfig c = parse_model_config({{"model_type", "gpt2"},
                                      {"vocab_size", 10},
                                      {"n_embd", 4},
                                      {"n_layer", 1},
                                      {"n_head", 2},
                                      {"n_inner", 8},
                                      {"n_positions", 8}},
                                     "tiny-gpt2");
  StepShape s = shape(StepKind::Forward);
  s.head = HeadKind::CausalLM;
  // c_attn 2*3*4*12 = 288, c_proj 96, attention 144, FFN 384, LM head on 2 positions 2*2*4*10 = 160.
  EXPECT_DOUBLE_EQ(step_flops(c, s), 288 + 96 + 144 + 384 + 160);
}

}  // namespace
}  // namespace deltatune
