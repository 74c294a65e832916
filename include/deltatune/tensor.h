#pragma once
// Tensor: a strided view over shared storage, with a dtype, a device tag and autograd state.
// Copies are cheap (a shared handle). Views (reshape, transpose, permute, slice) share storage and,
// like every op, are recorded for backward when an input requires grad (ops.h).
#include <cstdint>
#include <functional>
#include <initializer_list>
#include <memory>
#include <string>
#include <vector>

#include "deltatune/dtype.h"
#include "deltatune/random.h"

namespace deltatune {

using Shape = std::vector<int64_t>;
std::string shape_str(const Shape& s);  // "[2, 3]"
int64_t shape_numel(const Shape& s);

// Bytes that a tensor views: owned memory, or a region another owner keeps alive (an mmap'ed file).
struct Storage {
  void* data = nullptr;
  size_t bytes = 0;
  Device device = Device::CPU;
  std::shared_ptr<void> owner;  // frees the memory when the last user goes
  bool fresh_zeros = false;     // freshly mapped pages, known to read as zero (allocate sets it)
  static std::shared_ptr<Storage> allocate(size_t bytes, Device device = Device::CPU);
};

struct Node;     // autograd.h
struct Rebuild;  // autograd.h: how a cheap op's output is rebuilt for the backward

struct TensorImpl {
  std::shared_ptr<Storage> storage;
  DType dtype = DType::F32;
  Shape shape;
  Shape strides;       // in elements
  int64_t offset = 0;  // in elements
  bool requires_grad = false;
  std::shared_ptr<TensorImpl> grad;  // leaves only; created on first accumulation
  std::shared_ptr<Node> grad_fn;     // the op that produced this tensor, when recorded
  std::shared_ptr<Rebuild> rebuild;  // set by an activation or norm when recorded (see SavedTensor)
};

class Tensor {
 public:
  Tensor() = default;
  explicit Tensor(std::shared_ptr<TensorImpl> impl) : impl_(std::move(impl)) {}

  // --- construction ---
  static Tensor empty(const Shape& shape, DType dtype = DType::F32);
  static Tensor zeros(const Shape& shape, DType dtype = DType::F32);
  static Tensor ones(const Shape& shape);
  static Tensor full(const Shape& shape, float value);
  static Tensor scalar(float value) { return full({}, value); }
  static Tensor from_floats(const std::vector<float>& values, const Shape& shape);
  static Tensor from_ints(const std::vector<int64_t>& values, const Shape& shape, DType dtype = DType::I64);
  static Tensor randn(const Shape& shape, Generator& gen, float std = 1.0f);
  static Tensor uniform(const Shape& shape, Generator& gen, float low, float high);
  static Tensor arange(int64_t n, DType dtype = DType::I64);
  // A tensor over existing storage (e.g. a memory-mapped file); no copy.
  static Tensor from_storage(std::shared_ptr<Storage> storage, DType dtype, const Shape& shape,
                             int64_t offset = 0);

  // --- metadata ---
  bool defined() const { return impl_ != nullptr; }
  const Shape& shape() const { return impl_->shape; }
  const Shape& strides() const { return impl_->strides; }
  int64_t dim() const { return int64_t(impl_->shape.size()); }
  int64_t size(int64_t d) const;  // negative d counts from the end
  int64_t numel() const { return shape_numel(impl_->shape); }
  int64_t offset() const { return impl_->offset; }
  DType dtype() const { return impl_->dtype; }
  Device device() const { return impl_->storage->device; }
  bool is_contiguous() const;
  const std::shared_ptr<Storage>& storage() const { return impl_->storage; }
  TensorImpl* impl() const { return impl_.get(); }
  std::string describe() const;  // "float32[2, 3]"

  // --- data access (CPU) ---
  template <class T>
  T* data() {
    return static_cast<T*>(impl_->storage->data) + impl_->offset;
  }
  template <class T>
  const T* data() const {
    return static_cast<const T*>(impl_->storage->data) + impl_->offset;
  }
  float* f32() { return data<float>(); }
  const float* f32() const { return data<float>(); }
  float item() const;                    // a one-element tensor's value as float
  std::vector<float> to_floats() const;  // any dtype, any layout, row-major
  std::vector<int64_t> to_ints() const;  // integer or floating, row-major

  // --- copies and conversions (not recorded unless noted) ---
  Tensor contiguous() const;     // recorded: self if already contiguous
  Tensor clone() const;          // recorded: a contiguous copy
  Tensor to(DType dtype) const;  // recorded for floating targets: self if same dtype
  Tensor float32() const { return to(DType::F32); }
  void copy_(const Tensor& src);  // in place, same shape, any dtypes; not recorded
  void fill_(float value);        // in place; not recorded

  // --- views (recorded, see ops.h) ---
  Tensor reshape(const Shape& shape) const;
  Tensor view(const Shape& shape) const { return reshape(shape); }
  Tensor transpose(int64_t d0, int64_t d1) const;
  Tensor t() const { return transpose(-2, -1); }
  Tensor permute(const std::vector<int64_t>& dims) const;
  Tensor slice(int64_t dim, int64_t start, int64_t end, int64_t step = 1) const;
  Tensor select(int64_t dim, int64_t index) const;  // removes dim
  Tensor unsqueeze(int64_t dim) const;
  Tensor squeeze(int64_t dim) const;

  // --- autograd ---
  bool requires_grad() const { return impl_->requires_grad; }
  Tensor& set_requires_grad(bool on = true);
  Tensor grad() const;  // undefined until a backward reached this leaf
  void set_grad(const Tensor& g);
  void zero_grad();  // frees the gradient buffer
  bool is_leaf() const { return impl_->grad_fn == nullptr; }
  const std::shared_ptr<Node>& grad_fn() const { return impl_->grad_fn; }
  void backward() const;  // from a one-element tensor
  void backward(const Tensor& grad_output) const;
  Tensor detach() const;  // shares storage, not recorded

  bool same(const Tensor& o) const { return impl_ == o.impl_; }
  // True when this handle is the only one on its TensorImpl and that impl the only user of its
  // storage: nothing else can observe an in-place change (autograd adopts such buffers, no copy).
  bool uniquely_owned() const {
    return impl_ && impl_.use_count() == 1 && impl_->storage && impl_->storage.use_count() == 1;
  }

 private:
  std::shared_ptr<TensorImpl> impl_;
};

// Normalises a possibly negative dim against a rank, or throws ShapeError naming the op.
int64_t wrap_dim(int64_t d, int64_t rank, const char* op);
Shape contiguous_strides(const Shape& shape);

}  // namespace deltatune
