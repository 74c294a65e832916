#pragma once
// The reference kernels: plain serial loops, sums in double where it matters, no BLAS, no OpenMP.
// They are the oracle the optimised backends are compared with (tests/test_backend_ops.cc), so they
// favour being obviously right over being fast. One file per family of kernels.
#include "ops/backend.h"

namespace deltatune::ops {

class ReferenceBackend final : public Backend {
 public:
  const char* name() const override;
  void binary(Binary op, const BinaryArgs& args) const override;
  void unary(Unary op, const float* x, float* y, int64_t n, float scalar) const override;
  void unary_backward(Unary op, const float* g, const float* x, const float* y, float* gx,
                      int64_t n) const override;
  void accumulate(float* dst, const float* src, const Shape& shape, const Shape& src_strides,
                  float alpha) const override;
  void masked_scale(const float* x, const uint8_t* keep, float scale, float* y, int64_t n) const override;
  void dropout_mask(Generator& gen, float p, uint8_t* keep, int64_t n) const override;
  void nonzero_mask(const float* x, uint8_t* mask, int64_t n) const override;
  void sum(const float* x, const Shape& shape, const std::vector<bool>& reduce, float* out) const override;
  void softmax(const float* x, float* y, const Lines& lines, bool log) const override;
  void softmax_backward(const float* y, const float* g, float* gx, const Lines& lines,
                        bool log) const override;
  void layer_norm(const NormArgs& args) const override;
  void layer_norm_backward(const NormBackwardArgs& args) const override;
  void rms_norm(const NormArgs& args) const override;
  void rms_norm_backward(const NormBackwardArgs& args) const override;
  void embedding(const EmbeddingArgs& args) const override;
  void embedding_backward(const int64_t* ids, int64_t n, int64_t d, const float* g,
                          float* gweight) const override;
  void rope(const RopeArgs& args) const override;
  void rope_table(const float* positions, int64_t count, const float* inv_freq, int64_t half, float* cos,
                  float* sin) const override;
  void attention(const AttentionArgs& args) const override;
  void attention_backward(const AttentionBackwardArgs& args) const override;
  void hadamard(float* x, int64_t rows, int64_t n) const override;
  void gemm(const GemmArgs& args) const override;
  void gemm_bf16(const GemmBf16Args& args) const override;
  void quantized_gemm(const QuantizedGemmArgs& args) const override;
  void fill_rows(const float* row, float* out, int64_t rows, int64_t cols) const override;
  double cross_entropy(const CrossEntropyArgs& args, float* lse) const override;
  void cross_entropy_backward(const CrossEntropyArgs& args, const float* lse, float scale,
                              float* gx) const override;
  double cross_entropy_rows(const CrossEntropyArgs& args, float* logits, bool gradient,
                            float scale) const override;
  void copy(const StridedView& dst, const StridedView& src) const override;
  void fill(const StridedView& dst, float value) const override;
  void copy_blocks(char* dst, int64_t dst_stride, const char* src, int64_t src_stride, int64_t outer,
                   int64_t block) const override;
  void adamw_update(const AdamWArgs& args) const override;
  void sgd_update(const SgdArgs& args) const override;
  double sum_squares(const float* x, int64_t n) const override;
  void scale_inplace(float* x, int64_t n, float s) const override;
};

}  // namespace deltatune::ops
