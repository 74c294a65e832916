// Reading a GGUF file: the whole file memory-mapped, parsed through one bounds-checked cursor, every
// count and length compared with the bytes left before anything is allocated for it.
#include <fcntl.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <bit>
#include <cerrno>
#include <cstring>
#include <set>

#include "deltatune/error.h"
#include "deltatune/gguf.h"
#include "io/gguf_internal.h"

namespace deltatune::gguf {

static_assert(std::endian::native == std::endian::little, "GGUF I/O assumes a little-endian host");

namespace fs = std::filesystem;

namespace {

constexpr uint32_t kMaxDims = 4;  // GGML_MAX_DIMS
// The smallest a metadata entry and a tensor info can be: they bound the counts a file may claim.
constexpr uint64_t kMinKvBytes = 8 + 4 + 1;
constexpr uint64_t kMinTensorInfoBytes = 8 + 4 + 4 + 8;

[[noreturn]] void fail(const fs::path& file, const std::string& problem) {
  throw IoError(file.string() + ": " + problem);
}
[[noreturn]] void fail_tensor(const fs::path& file, const std::string& name, const std::string& problem) {
  throw IoError(file.string() + ": tensor '" + name + "': " + problem);
}

// Reads little-endian values from [data, data + size), naming what it read when the file ends.
class Cursor {
 public:
  Cursor(const fs::path& file, const uint8_t* data, uint64_t size) : file_(file), data_(data), size_(size) {}

  uint64_t pos() const { return pos_; }
  uint64_t left() const { return size_ - pos_; }

  void need(uint64_t bytes, const std::string& what) const {
    if (bytes > left())
      fail(file_, "truncated: " + what + " needs " + std::to_string(bytes) + " bytes at offset " +
                      std::to_string(pos_) + ", the file has " + std::to_string(left()) + " left");
  }
  template <typename T>
  T read(const std::string& what) {
    need(sizeof(T), what);
    T v;
    std::memcpy(&v, data_ + pos_, sizeof(T));
    pos_ += sizeof(T);
    return v;
  }
  const uint8_t* take(uint64_t bytes, const std::string& what) {
    need(bytes, what);
    const uint8_t* p = data_ + pos_;
    pos_ += bytes;
    return p;
  }
  std::string string(const std::string& what) {
    const uint64_t length = read<uint64_t>(what + "'s length");
    if (length > left())
      fail(file_, what + " at offset " + std::to_string(pos_ - 8) + " claims " + std::to_string(length) +
                      " bytes, more than the " + std::to_string(left()) + " left in the file");
    const uint8_t* p = take(length, what);
    return std::string(reinterpret_cast<const char*>(p), length);
  }

 private:
  const fs::path& file_;
  const uint8_t* data_;
  uint64_t size_;
  uint64_t pos_ = 0;
};

// A read-only file descriptor closed on scope exit.
struct Fd {
  int fd = -1;
  ~Fd() {
    if (fd >= 0) ::close(fd);
  }
};

// The file mapped privately (copy-on-write, as safetensors: a write into a view never reaches the file).
std::shared_ptr<const void> map_file(const fs::path& file, uint64_t& size_out) {
  Fd f{::open(file.c_str(), O_RDONLY | O_CLOEXEC)};
  if (f.fd < 0) fail(file, std::string("cannot open: ") + std::strerror(errno));
  struct stat st {};
  if (::fstat(f.fd, &st) != 0) fail(file, std::string("cannot stat: ") + std::strerror(errno));
  if (!S_ISREG(st.st_mode)) fail(file, "not a regular file");
  const size_t size = size_t(st.st_size);
  if (size < 24)
    fail(file, "file is " + std::to_string(size) + " bytes, shorter than the 24-byte GGUF header");
  void* addr = ::mmap(nullptr, size, PROT_READ | PROT_WRITE, MAP_PRIVATE, f.fd, 0);
  if (addr == MAP_FAILED) fail(file, std::string("cannot memory-map: ") + std::strerror(errno));
  size_out = size;
  return std::shared_ptr<const void>(addr, [size](const void* p) { ::munmap(const_cast<void*>(p), size); });
}

ValueType value_type(Cursor& in, const fs::path& file, const std::string& key, bool element) {
  const uint32_t id = in.read<uint32_t>("the value type of '" + key + "'");
  if (id > uint32_t(ValueType::Float64))
    fail(file,
         "metadata '" + key + "': unknown value type " + std::to_string(id) + (element ? " in array" : ""));
  return ValueType(id);
}

Value read_array(Cursor& in, const fs::path& file, const std::string& key) {
  Value v;
  v.type = ValueType::Array;
  v.element_type = value_type(in, file, key, true);
  if (v.element_type == ValueType::Array)
    fail(file, "metadata '" + key + "': arrays of arrays are not supported");
  v.count = in.read<uint64_t>("the length of array '" + key + "'");
  // Every element takes at least its scalar size (a string its 8-byte length): bound the count first.
  const uint64_t min_element = v.element_type == ValueType::String ? 8 : value_scalar_size(v.element_type);
  if (v.count > in.left() / min_element)
    fail(file, "metadata '" + key + "': array of " + std::to_string(v.count) + " " +
                   value_type_name(v.element_type) + " runs past the end of the file (" +
                   std::to_string(in.left()) + " bytes left)");
  if (v.element_type == ValueType::String) {
    v.strings.reserve(v.count);
    for (uint64_t i = 0; i < v.count; ++i)
      v.strings.push_back(in.string("element " + std::to_string(i) + " of '" + key + "'"));
  } else {
    const uint64_t bytes = v.count * min_element;
    const uint8_t* p = in.take(bytes, "array '" + key + "'");
    v.bytes.assign(p, p + bytes);
  }
  return v;
}

Value read_value(Cursor& in, const fs::path& file, const std::string& key) {
  const ValueType type = value_type(in, file, key, false);
  if (type == ValueType::Array) return read_array(in, file, key);
  Value v;
  v.type = type;
  if (type == ValueType::String) {
    v.text = in.string("the value of '" + key + "'");
  } else {
    const size_t size = value_scalar_size(type);
    const uint8_t* p = in.take(size, "the value of '" + key + "'");
    v.bytes.assign(p, p + size);
    if (type == ValueType::Bool && p[0] > 1)
      fail(file, "metadata '" + key + "': bool value " + std::to_string(p[0]) + " is neither 0 nor 1");
  }
  return v;
}

void read_metadata(Cursor& in, File& f, uint64_t count) {
  if (count > in.left() / kMinKvBytes)
    fail(f.path, "metadata count " + std::to_string(count) + " is impossible in a file of this size");
  std::set<std::string> seen;
  for (uint64_t i = 0; i < count; ++i) {
    std::string key = in.string("metadata key " + std::to_string(i));
    if (!seen.insert(key).second) fail(f.path, "metadata key '" + key + "' appears twice");
    Value v = read_value(in, f.path, key);
    f.metadata.emplace_back(std::move(key), std::move(v));
  }
}

uint64_t alignment_of(const File& f) {
  const Value* v = f.find("general.alignment");
  if (!v) return kDefaultAlignment;
  if (v->type != ValueType::Uint32)
    fail(f.path, std::string("general.alignment is a ") + value_type_name(v->type) + ", expected uint32");
  const uint64_t a = uint64_t(v->as_int());
  if (a == 0 || (a & (a - 1)) != 0)
    fail(f.path, "general.alignment " + std::to_string(a) + " is not a power of two");
  return a;
}

TensorInfo read_tensor_info(Cursor& in, const File& f, uint64_t index) {
  TensorInfo t;
  t.name = in.string("the name of tensor " + std::to_string(index));
  const uint32_t n_dims = in.read<uint32_t>("the dimension count of '" + t.name + "'");
  if (n_dims > kMaxDims)
    fail_tensor(f.path, t.name, std::to_string(n_dims) + " dimensions (ggml allows at most 4)");
  uint64_t elements = 1;
  for (uint32_t d = 0; d < n_dims; ++d) {
    const uint64_t size = in.read<uint64_t>("a dimension of '" + t.name + "'");
    if (size > uint64_t(INT64_MAX) || (size != 0 && elements > uint64_t(INT64_MAX) / size))
      fail_tensor(f.path, t.name, "dimension " + std::to_string(size) + " makes the tensor impossibly large");
    elements *= size;
    t.dims.push_back(int64_t(size));
  }
  const uint32_t type_id = in.read<uint32_t>("the type of '" + t.name + "'");
  const std::optional<TypeTraits> traits = type_traits(type_id);
  if (!traits) fail_tensor(f.path, t.name, "unknown ggml type " + std::to_string(type_id));
  t.type = GgmlType(type_id);
  t.offset = in.read<uint64_t>("the offset of '" + t.name + "'");
  const uint64_t row = t.dims.empty() ? 1 : uint64_t(t.dims[0]);
  if (row % traits->block_size != 0)
    fail_tensor(f.path, t.name,
                "row length " + std::to_string(row) + " is not a multiple of " + traits->name +
                    "'s block of " + std::to_string(traits->block_size));
  // Blocks times their size can pass 2^64 (2^62 float32 elements wrap to 0 bytes, which would pass the
  // bounds check below): refused first.
  const uint64_t blocks = elements / traits->block_size;
  if (blocks > uint64_t(INT64_MAX) / traits->type_size)
    fail_tensor(f.path, t.name, std::to_string(elements) + " elements make the tensor impossibly large");
  t.bytes = blocks * traits->type_size;
  if (t.offset % f.alignment != 0)
    fail_tensor(f.path, t.name,
                "offset " + std::to_string(t.offset) + " is not a multiple of the alignment " +
                    std::to_string(f.alignment));
  return t;
}

// Tensors may leave gaps, never share bytes; sorted by offset, an overlap shows between neighbours.
void check_layout(const File& f, uint64_t data_size) {
  std::vector<const TensorInfo*> sorted;
  for (const TensorInfo& t : f.tensors) {
    if (t.offset > data_size || t.bytes > data_size - t.offset)
      fail_tensor(f.path, t.name,
                  "data [" + std::to_string(t.offset) + ", +" + std::to_string(t.bytes) +
                      ") runs past the end of the data section (" + std::to_string(data_size) + " bytes)");
    if (t.bytes) sorted.push_back(&t);
  }
  std::sort(sorted.begin(), sorted.end(), [](auto* a, auto* b) { return a->offset < b->offset; });
  for (size_t i = 1; i < sorted.size(); ++i)
    if (sorted[i]->offset < sorted[i - 1]->offset + sorted[i - 1]->bytes)
      fail_tensor(f.path, sorted[i]->name,
                  "data at offset " + std::to_string(sorted[i]->offset) + " overlaps tensor '" +
                      sorted[i - 1]->name + "' [" + std::to_string(sorted[i - 1]->offset) + ", +" +
                      std::to_string(sorted[i - 1]->bytes) + ")");
}

}  // namespace

File read_file(const fs::path& file) {
  File f;
  f.path = file;
  uint64_t size = 0;
  f.mapping = map_file(file, size);
  const auto* bytes = static_cast<const uint8_t*>(f.mapping.get());
  Cursor in(file, bytes, size);

  const uint8_t* magic = in.take(4, "the magic");
  if (std::memcmp(magic, kMagic, 4) != 0) {
    std::string shown;
    for (int i = 0; i < 4; ++i) shown += std::isprint(magic[i]) ? char(magic[i]) : '?';
    fail(file, "not a GGUF file (magic '" + shown + "', expected 'GGUF')");
  }
  f.version = in.read<uint32_t>("the version");
  if (f.version != 2 && f.version != 3)
    fail(file, "GGUF version " + std::to_string(f.version) + " is not supported (versions 2 and 3 are)");
  const uint64_t tensor_count = in.read<uint64_t>("the tensor count");
  const uint64_t kv_count = in.read<uint64_t>("the metadata count");
  read_metadata(in, f, kv_count);
  f.alignment = alignment_of(f);

  if (tensor_count > in.left() / kMinTensorInfoBytes)
    fail(file, "tensor count " + std::to_string(tensor_count) + " is impossible in a file of this size");
  std::set<std::string> names;
  for (uint64_t i = 0; i < tensor_count; ++i) {
    TensorInfo t = read_tensor_info(in, f, i);
    if (!names.insert(t.name).second) fail_tensor(file, t.name, "appears twice");
    f.tensors.push_back(std::move(t));
  }

  const uint64_t padding = (f.alignment - in.pos() % f.alignment) % f.alignment;
  f.data_offset = in.pos() + std::min(padding, in.left());
  const uint64_t data_size = size - f.data_offset;
  check_layout(f, data_size);
  for (TensorInfo& t : f.tensors) t.data = bytes + f.data_offset + t.offset;
  return f;
}

bool is_gguf_file(const fs::path& path) {
  std::error_code ec;
  if (!fs::is_regular_file(path, ec)) return false;
  Fd f{::open(path.c_str(), O_RDONLY | O_CLOEXEC)};
  char magic[4] = {};
  return f.fd >= 0 && ::read(f.fd, magic, 4) == 4 && std::memcmp(magic, kMagic, 4) == 0;
}

int64_t TensorInfo::elements() const {
  int64_t n = 1;
  for (int64_t d : dims) n *= d;
  return n;
}

const Value* File::find(const std::string& key) const {
  for (const auto& [k, v] : metadata)
    if (k == key) return &v;
  return nullptr;
}

const TensorInfo* File::find_tensor(const std::string& name) const {
  for (const TensorInfo& t : tensors)
    if (t.name == name) return &t;
  return nullptr;
}

const Value& File::at(const std::string& key) const {
  const Value* v = find(key);
  if (!v) fail(path, "metadata '" + key + "' is missing");
  return *v;
}

const TensorInfo& File::tensor(const std::string& name) const {
  const TensorInfo* t = find_tensor(name);
  if (!t) fail(path, "tensor '" + name + "' is missing");
  return *t;
}

std::string File::string(const std::string& key) const {
  const Value& v = at(key);
  if (v.type != ValueType::String)
    fail(path, "metadata '" + key + "' is a " + value_type_name(v.type) + ", expected a string");
  return v.text;
}

int64_t File::integer(const std::string& key) const {
  const Value& v = at(key);
  try {
    return v.as_int();
  } catch (const ConfigError& e) {
    fail(path, "metadata '" + key + "': " + e.what());
  }
}

double File::number(const std::string& key) const {
  const Value& v = at(key);
  try {
    return v.as_double();
  } catch (const ConfigError& e) {
    fail(path, "metadata '" + key + "': " + e.what());
  }
}

}  // namespace deltatune::gguf
