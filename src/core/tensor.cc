#include "deltatune/tensor.h"

#include <sys/mman.h>

#include <atomic>
#include <cstdlib>
#include <cstring>
#include <sstream>

#include "core/fresh_pages.h"
#include "core/large_blocks.h"
#include "core/strided.h"
#include "deltatune/autograd.h"
#include "deltatune/cuda.h"
#include "deltatune/error.h"
#include "deltatune/memory_stats.h"
#include "deltatune/ops.h"
#include "ops/backend.h"

namespace deltatune {

std::string shape_str(const Shape& s) {
  std::ostringstream out;
  out << '[';
  for (size_t i = 0; i < s.size(); ++i) out << (i ? ", " : "") << s[i];
  out << ']';
  return out.str();
}

int64_t shape_numel(const Shape& s) {
  int64_t n = 1;
  for (int64_t d : s) n *= d;
  return n;
}

Shape contiguous_strides(const Shape& shape) {
  Shape strides(shape.size());
  int64_t stride = 1;
  for (int64_t d = int64_t(shape.size()) - 1; d >= 0; --d) {
    strides[d] = stride;
    stride *= shape[d];
  }
  return strides;
}

int64_t wrap_dim(int64_t d, int64_t rank, const char* op) {
  int64_t wrapped = d < 0 ? d + rank : d;
  if (wrapped < 0 || wrapped >= rank)
    throw ShapeError(std::string(op) + ": dim " + std::to_string(d) + " out of range for rank " +
                     std::to_string(rank));
  return wrapped;
}

namespace {
// Where the large-block pool is off (the sanitizers' builds), blocks this large are mapped directly
// (glibc would mmap them anyway: its mmap threshold cannot exceed 32 MiB), and zeros() skips the
// memset, the kernel's fresh pages being zero already.
constexpr size_t kMappedBytes = size_t(32) << 20;

// GPU memory: cudaMalloc behind the same interface (deltatune/cuda.h; a clear error without CUDA).
std::shared_ptr<Storage> allocate_cuda(size_t bytes) {
  auto storage = std::make_shared<Storage>();
  void* p = cuda::allocate(bytes);
  storage->data = p;
  storage->bytes = bytes;
  storage->device = Device::CUDA;
  storage->owner = std::shared_ptr<void>(p, [](void* q) { cuda::deallocate(q); });
  return storage;
}

// memory_stats.h: relaxed atomics, since a count is read as a figure, never to order other memory.
std::atomic<size_t> g_live_bytes{0}, g_peak_bytes{0};

void count_allocated(size_t bytes) {
  const size_t live = g_live_bytes.fetch_add(bytes, std::memory_order_relaxed) + bytes;
  size_t peak = g_peak_bytes.load(std::memory_order_relaxed);
  while (live > peak && !g_peak_bytes.compare_exchange_weak(peak, live, std::memory_order_relaxed)) {
  }
}
void count_freed(size_t bytes) { g_live_bytes.fetch_sub(bytes, std::memory_order_relaxed); }
}  // namespace

TensorMemory tensor_memory() {
  return {g_live_bytes.load(std::memory_order_relaxed), g_peak_bytes.load(std::memory_order_relaxed)};
}

void reset_tensor_memory_peak() { g_peak_bytes.store(g_live_bytes.load(std::memory_order_relaxed)); }

namespace {
// A Storage owning `bytes` at `data`: counted in tensor_memory() from now until `release` frees it
// with the last user.
template <typename Release>
std::shared_ptr<Storage> counted_storage(void* data, size_t bytes, bool fresh_zeros, Release release) {
  auto storage = std::make_shared<Storage>();
  storage->data = data;
  storage->bytes = bytes;
  storage->fresh_zeros = fresh_zeros;
  count_allocated(bytes);
  storage->owner = std::shared_ptr<void>(data, [bytes, release](void* q) {
    release(q);
    count_freed(bytes);
  });
  return storage;
}
}  // namespace

void* map_pages(size_t bytes) {
  void* p = mmap(nullptr, bytes, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
  if (p == MAP_FAILED) return nullptr;
  madvise(p, bytes, MADV_HUGEPAGE);  // advice only: ignored where huge pages are off
  return p;
}

std::shared_ptr<Storage> map_fresh_pages(size_t bytes) {
  void* p = map_pages(bytes);
  if (!p) throw Error("out of memory mapping " + std::to_string(bytes) + " bytes");
  return counted_storage(p, bytes, /*fresh_zeros=*/true, [bytes](void* q) { munmap(q, bytes); });
}

std::shared_ptr<Storage> Storage::allocate(size_t bytes, Device device) {
  if (device == Device::CUDA) return allocate_cuda(bytes);
  if (bytes >= large_blocks::kMinBytes && large_blocks::pooled()) {  // reused in place (large_blocks.h)
    const large_blocks::Block block = large_blocks::take(bytes);
    return counted_storage(block.data, bytes, block.zeroed, [](void* q) { large_blocks::give_back(q); });
  }
  if (bytes >= kMappedBytes) return map_fresh_pages(bytes);  // the sanitizers' builds
  size_t rounded = (bytes + 63) / 64 * 64;
  void* p = rounded ? std::aligned_alloc(64, rounded) : nullptr;
  if (rounded && !p) throw Error("out of memory allocating " + std::to_string(bytes) + " bytes");
  return counted_storage(p, bytes, /*fresh_zeros=*/false, [](void* q) { std::free(q); });
}

Tensor Tensor::from_storage(std::shared_ptr<Storage> storage, DType dtype, const Shape& shape,
                            int64_t offset) {
  auto impl = std::make_shared<TensorImpl>();
  impl->storage = std::move(storage);
  impl->dtype = dtype;
  impl->shape = shape;
  impl->strides = contiguous_strides(shape);
  impl->offset = offset;
  return Tensor(std::move(impl));
}

Tensor Tensor::empty(const Shape& shape, DType dtype) {
  for (int64_t d : shape)
    if (d < 0) throw ShapeError("empty: negative size in shape " + shape_str(shape));
  return from_storage(Storage::allocate(size_t(shape_numel(shape)) * dtype_size(dtype)), dtype, shape);
}

Tensor Tensor::zeros(const Shape& shape, DType dtype) {
  Tensor t = empty(shape, dtype);
  if (t.numel() && !t.storage()->fresh_zeros) std::memset(t.storage()->data, 0, t.storage()->bytes);
  return t;
}

Tensor Tensor::full(const Shape& shape, float value) {
  Tensor t = empty(shape);
  t.fill_(value);
  return t;
}

Tensor Tensor::ones(const Shape& shape) { return full(shape, 1.0f); }

Tensor Tensor::from_floats(const std::vector<float>& values, const Shape& shape) {
  if (int64_t(values.size()) != shape_numel(shape))
    throw ShapeError("from_floats: " + std::to_string(values.size()) + " values for shape " +
                     shape_str(shape));
  Tensor t = empty(shape);
  if (!values.empty()) std::memcpy(t.f32(), values.data(), values.size() * 4);
  return t;
}

Tensor Tensor::from_ints(const std::vector<int64_t>& values, const Shape& shape, DType dtype) {
  if (int64_t(values.size()) != shape_numel(shape))
    throw ShapeError("from_ints: " + std::to_string(values.size()) + " values for shape " + shape_str(shape));
  Tensor t = empty(shape, dtype);
  for (size_t i = 0; i < values.size(); ++i) {
    if (dtype == DType::I64)
      t.data<int64_t>()[i] = values[i];
    else if (dtype == DType::I32)
      t.data<int32_t>()[i] = int32_t(values[i]);
    else
      detail::store_from_float(t.storage()->data, dtype, int64_t(i), float(values[i]));
  }
  return t;
}

Tensor Tensor::randn(const Shape& shape, Generator& gen, float std) {
  Tensor t = empty(shape);
  float* p = t.f32();
  for (int64_t i = 0, n = t.numel(); i < n; ++i) p[i] = gen.normal() * std;
  return t;
}

Tensor Tensor::uniform(const Shape& shape, Generator& gen, float low, float high) {
  Tensor t = empty(shape);
  float* p = t.f32();
  for (int64_t i = 0, n = t.numel(); i < n; ++i) p[i] = low + (high - low) * gen.uniform();
  return t;
}

Tensor Tensor::arange(int64_t n, DType dtype) {
  std::vector<int64_t> v(static_cast<size_t>(n));
  for (int64_t i = 0; i < n; ++i) v[size_t(i)] = i;
  return from_ints(v, {n}, dtype);
}

int64_t Tensor::size(int64_t d) const { return impl_->shape[size_t(wrap_dim(d, dim(), "size"))]; }

bool Tensor::is_contiguous() const {
  int64_t expected = 1;
  for (int64_t d = dim() - 1; d >= 0; --d) {
    if (impl_->shape[d] == 1) continue;
    if (impl_->strides[d] != expected) return false;
    expected *= impl_->shape[d];
  }
  return true;
}

std::string Tensor::describe() const {
  if (!defined()) return "undefined";
  return std::string(dtype_name(dtype())) + shape_str(shape());
}

float Tensor::item() const {
  if (numel() != 1)
    throw ShapeError("item: tensor " + describe() + " has " + std::to_string(numel()) + " elements");
  return detail::load_as_float(impl_->storage->data, dtype(), offset());
}

std::vector<float> Tensor::to_floats() const {
  std::vector<float> out(static_cast<size_t>(numel()));
  const void* base = impl_->storage->data;
  const DType t = dtype();
  const int64_t off = offset();
  if (t == DType::F32 && is_contiguous()) {
    if (!out.empty()) std::memcpy(out.data(), f32(), out.size() * 4);
    return out;
  }
  detail::for_each_offset(shape(), strides(), [&](int64_t i, int64_t o) {
    out[size_t(i)] = detail::load_as_float(base, t, off + o);
  });
  return out;
}

std::vector<int64_t> Tensor::to_ints() const {
  std::vector<int64_t> out(static_cast<size_t>(numel()));
  const void* base = impl_->storage->data;
  const DType t = dtype();
  const int64_t off = offset();
  detail::for_each_offset(shape(), strides(), [&](int64_t i, int64_t o) {
    if (t == DType::I64)
      out[size_t(i)] = static_cast<const int64_t*>(base)[off + o];
    else if (t == DType::I32)
      out[size_t(i)] = static_cast<const int32_t*>(base)[off + o];
    else
      out[size_t(i)] = int64_t(detail::load_as_float(base, t, off + o));
  });
  return out;
}

namespace {
ops::StridedView view_of(const Tensor& t) {
  return {t.storage()->data, t.dtype(), t.offset(), t.shape(), t.strides()};
}
}  // namespace

void Tensor::copy_(const Tensor& src) {
  if (src.shape() != shape())
    throw ShapeError("copy_: source " + src.describe() + " does not match destination " + describe());
  ops::backend_for("copy_", {this, &src}).copy(view_of(*this), view_of(src));
}

void Tensor::fill_(float value) { ops::backend_for("fill_", {this}).fill(view_of(*this), value); }

Tensor Tensor::contiguous() const { return is_contiguous() ? *this : ops::contiguous(*this); }
Tensor Tensor::clone() const { return ops::contiguous(*this); }
Tensor Tensor::to(DType t) const { return t == dtype() ? *this : ops::cast(*this, t); }
Tensor Tensor::reshape(const Shape& s) const { return ops::reshape(*this, s); }
Tensor Tensor::transpose(int64_t a, int64_t b) const { return ops::transpose(*this, a, b); }
Tensor Tensor::permute(const std::vector<int64_t>& dims) const { return ops::permute(*this, dims); }
Tensor Tensor::slice(int64_t d, int64_t start, int64_t end, int64_t step) const {
  return ops::slice(*this, d, start, end, step);
}
Tensor Tensor::select(int64_t d, int64_t index) const {
  int64_t dd = wrap_dim(d, dim(), "select");
  int64_t n = size(dd);
  if (index < 0) index += n;
  if (index < 0 || index >= n)
    throw ShapeError("select: index " + std::to_string(index) + " out of range for " + describe());
  Shape s = shape();
  s.erase(s.begin() + dd);
  return slice(dd, index, index + 1).reshape(s);
}
Tensor Tensor::unsqueeze(int64_t d) const {
  Shape s = shape();
  int64_t dd = wrap_dim(d, dim() + 1, "unsqueeze");
  s.insert(s.begin() + dd, 1);
  return reshape(s);
}
Tensor Tensor::squeeze(int64_t d) const {
  int64_t dd = wrap_dim(d, dim(), "squeeze");
  if (size(dd) != 1) return *this;
  Shape s = shape();
  s.erase(s.begin() + dd);
  return reshape(s);
}

Tensor& Tensor::set_requires_grad(bool on) {
  if (on && !is_floating(dtype()))
    throw DtypeError("set_requires_grad: only floating tensors can require grad, not " + describe());
  impl_->requires_grad = on;
  if (!on) impl_->grad.reset();
  return *this;
}

Tensor Tensor::grad() const { return impl_->grad ? Tensor(impl_->grad) : Tensor(); }
void Tensor::set_grad(const Tensor& g) {
  impl_->grad = g.defined() ? std::shared_ptr<TensorImpl>(g.impl_) : nullptr;
}
void Tensor::zero_grad() { impl_->grad.reset(); }

Tensor Tensor::detach() const {
  auto impl = std::make_shared<TensorImpl>();
  impl->storage = impl_->storage;
  impl->dtype = impl_->dtype;
  impl->shape = impl_->shape;
  impl->strides = impl_->strides;
  impl->offset = impl_->offset;
  return Tensor(std::move(impl));
}

void Tensor::backward() const {
  if (numel() != 1) throw ShapeError("backward: needs a one-element tensor, got " + describe());
  run_backward(*this, Tensor::ones(shape()));
}
void Tensor::backward(const Tensor& grad_output) const { run_backward(*this, grad_output); }

}  // namespace deltatune
