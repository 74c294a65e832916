#include "deltatune/safetensors.h"

#include <fcntl.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <bit>
#include <cerrno>
#include <cstring>
#include <fstream>
#include <nlohmann/json.hpp>
#include <optional>
#include <sstream>
#include <string_view>
#include <vector>

#include "core/strided.h"
#include "deltatune/atomic_file.h"
#include "deltatune/error.h"
#include "deltatune/json_file.h"

namespace deltatune {

// The format stores numbers little-endian; we map the bytes as they are.
static_assert(std::endian::native == std::endian::little, "safetensors I/O assumes a little-endian host");

namespace fs = std::filesystem;

namespace {

// Every dtype the format defines, with its element size, so that sizes can be validated and an
// unsupported dtype named precisely. `rank` is its position in the Rust library's Dtype enum, which
// orders tensors in written files (widest first).
struct FileDtype {
  const char* name;
  size_t size;
  int rank;
  std::optional<DType> ours;  // how we hold it as-is, if we can
};

const std::vector<FileDtype>& file_dtypes() {
  static const std::vector<FileDtype> table = {
      {"BOOL", 1, 0, std::nullopt},    {"U8", 1, 1, std::nullopt},      {"I8", 1, 2, std::nullopt},
      {"F8_E5M2", 1, 3, std::nullopt}, {"F8_E4M3", 1, 4, std::nullopt}, {"I16", 2, 5, std::nullopt},
      {"U16", 2, 6, std::nullopt},     {"F16", 2, 7, DType::F16},       {"BF16", 2, 8, DType::BF16},
      {"I32", 4, 9, DType::I32},       {"U32", 4, 10, std::nullopt},    {"F32", 4, 11, DType::F32},
      {"F64", 8, 12, std::nullopt},    {"I64", 8, 13, DType::I64},      {"U64", 8, 14, std::nullopt},
      {"F8_E8M0", 1, 4, std::nullopt},  // newer files; named so that the error says "not supported"
  };
  return table;
}

// F64 is the one foreign dtype we accept: read as F32, which is what the engine computes in anyway.
bool is_f64(const FileDtype& d) { return std::string_view(d.name) == "F64"; }

const FileDtype* find_file_dtype(const std::string& name) {
  for (const FileDtype& d : file_dtypes())
    if (name == d.name) return &d;
  return nullptr;
}

const FileDtype& file_dtype_of(DType t) {
  for (const FileDtype& d : file_dtypes())
    if (d.ours == t) return d;
  throw Error(std::string("safetensors: no file dtype for ") + dtype_name(t));
}

std::string errno_text() { return std::strerror(errno); }

[[noreturn]] void fail(const fs::path& file, const std::string& problem) {
  throw IoError(file.string() + ": " + problem);
}
[[noreturn]] void fail_tensor(const fs::path& file, const std::string& name, const std::string& problem) {
  throw IoError(file.string() + ": tensor '" + name + "': " + problem);
}

// A read-only file descriptor closed on scope exit.
struct Fd {
  int fd = -1;
  ~Fd() {
    if (fd >= 0) ::close(fd);
  }
};

// Unmaps a file mapping; its type also marks a storage as a view of one (release_file_pages).
struct FileMapping {
  size_t size;
  void operator()(void* p) const { ::munmap(p, size); }
};

// The whole file mapped privately. Copy-on-write rather than read-only, because tensors are mutable
// handles here (fill_, copy_, merging a delta in place): a write must not crash, nor reach the file.
std::shared_ptr<void> map_file(const fs::path& file, size_t& size_out) {
  Fd f{::open(file.c_str(), O_RDONLY | O_CLOEXEC)};
  if (f.fd < 0) fail(file, "cannot open: " + errno_text());
  struct stat st {};
  if (::fstat(f.fd, &st) != 0) fail(file, "cannot stat: " + errno_text());
  if (!S_ISREG(st.st_mode)) fail(file, "not a regular file");
  const size_t size = size_t(st.st_size);
  if (size < 8)
    fail(file, "file is " + std::to_string(size) + " bytes, shorter than the 8-byte header length");
  void* addr = ::mmap(nullptr, size, PROT_READ | PROT_WRITE, MAP_PRIVATE, f.fd, 0);
  if (addr == MAP_FAILED) fail(file, "cannot memory-map: " + errno_text());
  size_out = size;
  return std::shared_ptr<void>(addr, FileMapping{size});
}

// A non-negative integer from the header, or nullopt when the value is anything else.
std::optional<uint64_t> as_index(const nlohmann::json& v) {
  if (v.is_number_unsigned()) return v.get<uint64_t>();
  if (v.is_number_integer() && v.get<int64_t>() >= 0) return uint64_t(v.get<int64_t>());
  return std::nullopt;
}

std::string offsets_str(uint64_t begin, uint64_t end) {
  std::ostringstream out;
  out << '[' << begin << ", " << end << ']';
  return out.str();
}

// One tensor's header entry, validated against the data section.
struct Entry {
  std::string name;
  const FileDtype* dtype = nullptr;
  Shape shape;
  uint64_t begin = 0, end = 0;
};

Entry parse_entry(const fs::path& file, const std::string& name, const nlohmann::json& info,
                  uint64_t data_size) {
  Entry e;
  e.name = name;
  if (!info.is_object()) fail_tensor(file, name, "header entry is not a JSON object");
  for (const char* key : {"dtype", "shape", "data_offsets"})
    if (!info.contains(key)) fail_tensor(file, name, std::string("missing '") + key + "'");

  const nlohmann::json& dtype = info["dtype"];
  if (!dtype.is_string()) fail_tensor(file, name, "'dtype' is not a string");
  e.dtype = find_file_dtype(dtype.get<std::string>());
  if (!e.dtype) fail_tensor(file, name, "unknown dtype '" + dtype.get<std::string>() + "'");
  if (!e.dtype->ours && !is_f64(*e.dtype))
    fail_tensor(file, name,
                std::string("dtype ") + e.dtype->name +
                    " is not supported (supported: F32, F16, BF16, I32, I64; F64 is read as F32)");

  const nlohmann::json& shape = info["shape"];
  if (!shape.is_array()) fail_tensor(file, name, "'shape' is not a list");
  uint64_t numel = 1;
  bool overflow = false;
  for (const nlohmann::json& d : shape) {
    if (d.is_number_integer() && !d.is_number_unsigned() && d.get<int64_t>() < 0)
      fail_tensor(file, name, "negative size " + std::to_string(d.get<int64_t>()) + " in 'shape'");
    std::optional<uint64_t> size = as_index(d);
    if (!size || *size > uint64_t(INT64_MAX))
      fail_tensor(file, name, "'shape' holds " + d.dump() + ", not a size");
    e.shape.push_back(int64_t(*size));
    if (*size != 0 && numel > UINT64_MAX / *size) overflow = true;
    numel *= *size;
  }

  const nlohmann::json& offsets = info["data_offsets"];
  std::optional<uint64_t> begin, end;
  if (offsets.is_array() && offsets.size() == 2) {
    begin = as_index(offsets[0]);
    end = as_index(offsets[1]);
  }
  if (!begin || !end)
    fail_tensor(file, name, "'data_offsets' must be two non-negative integers, got " + offsets.dump());
  e.begin = *begin;
  e.end = *end;
  if (e.begin > e.end)
    fail_tensor(file, name, "data_offsets " + offsets_str(e.begin, e.end) + ": begin is after end");
  if (e.end > data_size)
    fail_tensor(file, name,
                "data_offsets " + offsets_str(e.begin, e.end) + " run past the end of the data section (" +
                    std::to_string(data_size) + " bytes)");
  if (overflow || numel > UINT64_MAX / e.dtype->size)
    fail_tensor(file, name, "shape " + shape_str(e.shape) + " is too large");
  const uint64_t expected = numel * e.dtype->size;
  if (e.end - e.begin != expected)
    fail_tensor(file, name,
                "byte size " + std::to_string(e.end - e.begin) + " does not match shape " +
                    shape_str(e.shape) + " of " + e.dtype->name + " (" + std::to_string(expected) +
                    " bytes)");
  return e;
}

// Tensors may leave gaps (other writers align data), but no two may share bytes. Sorted by begin,
// any overlap shows between neighbours: a tensor that overlaps a later one overlaps its successor.
void check_overlaps(const fs::path& file, std::vector<const Entry*> entries) {
  std::erase_if(entries, [](const Entry* e) { return e->begin == e->end; });
  std::sort(entries.begin(), entries.end(),
            [](const Entry* a, const Entry* b) { return a->begin < b->begin; });
  for (size_t i = 1; i < entries.size(); ++i) {
    const Entry& prev = *entries[i - 1];
    const Entry& cur = *entries[i];
    if (cur.begin < prev.end)
      fail_tensor(file, cur.name,
                  "data_offsets " + offsets_str(cur.begin, cur.end) + " overlap tensor '" + prev.name + "' " +
                      offsets_str(prev.begin, prev.end));
  }
}

Tensor make_tensor(const Entry& e, char* data_section, const std::shared_ptr<void>& mapping) {
  char* bytes = data_section + e.begin;
  const size_t nbytes = size_t(e.end - e.begin);
  if (is_f64(*e.dtype)) {  // converted: a copy
    Tensor t = Tensor::empty(e.shape, DType::F32);
    float* out = t.f32();
    for (size_t i = 0; i < nbytes / 8; ++i) {
      double v;
      std::memcpy(&v, bytes + i * 8, 8);  // the source may be unaligned
      out[i] = float(v);
    }
    return t;
  }
  const DType dtype = *e.dtype->ours;
  if (reinterpret_cast<uintptr_t>(bytes) % dtype_size(dtype) != 0) {
    // Loads through a misaligned pointer are undefined behaviour; such files are rare, so copy.
    Tensor t = Tensor::empty(e.shape, dtype);
    if (nbytes) std::memcpy(t.storage()->data, bytes, nbytes);
    return t;
  }
  auto storage = std::make_shared<Storage>();
  storage->data = bytes;
  storage->bytes = nbytes;
  storage->owner = mapping;  // keeps the whole mapping alive while this tensor lives
  return Tensor::from_storage(std::move(storage), dtype, e.shape);
}

std::map<std::string, Tensor> load_sharded(const fs::path& index_file) {
  const nlohmann::json index = read_json_file(index_file);
  if (!index.is_object() || !index.contains("weight_map") || !index["weight_map"].is_object())
    fail(index_file, "missing the 'weight_map' object");
  // shard file -> the tensor names the index places in it
  std::map<std::string, std::vector<std::string>> names_by_shard;
  for (const auto& [name, shard] : index["weight_map"].items()) {
    if (!shard.is_string()) fail(index_file, "weight_map entry for '" + name + "' is not a file name");
    names_by_shard[shard.get<std::string>()].push_back(name);
  }
  // Check every shard before reading any, so a missing one is reported at once.
  const fs::path folder = index_file.parent_path();
  for (const auto& [shard, names] : names_by_shard) {
    std::error_code ec;
    if (!fs::is_regular_file(folder / shard, ec))
      fail(index_file, "shard '" + shard + "' (holding tensor '" + names.front() + "') not found in " +
                           (folder.empty() ? fs::path(".") : folder).string());
  }
  std::map<std::string, Tensor> tensors;
  for (const auto& [shard, names] : names_by_shard) {
    TensorFile part = read_safetensors(folder / shard);
    for (const std::string& name : names) {
      auto it = part.tensors.find(name);
      if (it == part.tensors.end())
        fail(index_file, "tensor '" + name + "' is mapped to shard '" + shard + "', which does not hold it");
      tensors.emplace(name, std::move(it->second));
    }
  }
  return tensors;
}

// --- writing ---

template <size_t kSize>
void gather_elements(const Tensor& t, char* out) {
  const char* base = static_cast<const char*>(t.storage()->data) + t.offset() * int64_t(kSize);
  detail::for_each_offset(t.shape(), t.strides(), [&](int64_t i, int64_t o) {
    std::memcpy(out + i * int64_t(kSize), base + o * int64_t(kSize), kSize);
  });
}

// A strided tensor's elements in row-major order, byte for byte (no conversion through float).
std::vector<char> gather_bytes(const Tensor& t) {
  std::vector<char> out(size_t(t.numel()) * dtype_size(t.dtype()));
  switch (dtype_size(t.dtype())) {
    case 2:
      gather_elements<2>(t, out.data());
      break;
    case 4:
      gather_elements<4>(t, out.data());
      break;
    case 8:
      gather_elements<8>(t, out.data());
      break;
    default:
      throw Error("safetensors: unexpected element size");
  }
  return out;
}

}  // namespace

TensorFile read_safetensors(const fs::path& file) {
  size_t file_size = 0;
  std::shared_ptr<void> mapping = map_file(file, file_size);
  char* base = static_cast<char*>(mapping.get());

  uint64_t header_size;
  std::memcpy(&header_size, base, 8);
  if (header_size > file_size - 8)
    fail(file, "header length " + std::to_string(header_size) + " runs past the end of the file (" +
                   std::to_string(file_size) + " bytes)");
  nlohmann::json header;
  try {
    header = nlohmann::json::parse(base + 8, base + 8 + header_size);
  } catch (const nlohmann::json::exception& e) {  // parse_error, or out_of_range for a huge number
    fail(file, std::string("header is not valid JSON: ") + e.what());
  }
  if (!header.is_object()) fail(file, "header is not a JSON object");

  char* data_section = base + 8 + header_size;
  const uint64_t data_size = file_size - 8 - header_size;

  TensorFile result;
  std::vector<Entry> entries;
  entries.reserve(header.size());
  for (const auto& [key, value] : header.items()) {
    if (key == "__metadata__") {
      if (!value.is_object()) fail(file, "'__metadata__' is not a JSON object");
      for (const auto& [mkey, mvalue] : value.items()) {
        if (!mvalue.is_string()) fail(file, "'__metadata__' value for '" + mkey + "' is not a string");
        result.metadata.emplace(mkey, mvalue.get<std::string>());
      }
      continue;
    }
    entries.push_back(parse_entry(file, key, value, data_size));
  }
  std::vector<const Entry*> views;
  for (const Entry& e : entries) views.push_back(&e);
  check_overlaps(file, std::move(views));

  for (const Entry& e : entries) result.tensors.emplace(e.name, make_tensor(e, data_section, mapping));
  return result;
}

std::map<std::string, Tensor> load_checkpoint_tensors(const fs::path& dir_or_file) {
  std::error_code ec;
  if (fs::is_directory(dir_or_file, ec)) {
    const fs::path single = dir_or_file / "model.safetensors";
    const fs::path index = dir_or_file / "model.safetensors.index.json";
    if (fs::exists(single, ec)) return read_safetensors(single).tensors;
    if (fs::exists(index, ec)) return load_sharded(index);
    std::string hint;
    if (fs::exists(dir_or_file / "pytorch_model.bin", ec))
      hint = " (it has pytorch_model.bin: only safetensors checkpoints are read; convert it first)";
    fail(dir_or_file, "no model.safetensors or model.safetensors.index.json" + hint);
  }
  if (!fs::exists(dir_or_file, ec)) fail(dir_or_file, "no such file or folder");
  if (dir_or_file.filename().string().ends_with(".index.json")) return load_sharded(dir_or_file);
  return read_safetensors(dir_or_file).tensors;
}

void release_file_pages(const Tensor& t) {
  if (!t.defined() || !t.storage() || !std::get_deleter<FileMapping>(t.storage()->owner)) return;
  // The whole pages inside the tensor's bytes: a page it shares with a neighbour stays.
  const uintptr_t page = uintptr_t(::sysconf(_SC_PAGESIZE));
  const auto begin = reinterpret_cast<uintptr_t>(t.storage()->data);
  const uintptr_t first = (begin + page - 1) / page * page, last = (begin + t.storage()->bytes) / page * page;
  if (last > first) ::madvise(reinterpret_cast<void*>(first), last - first, MADV_DONTNEED);
}

void write_safetensors(const fs::path& file, const std::map<std::string, Tensor>& tensors,
                       const std::map<std::string, std::string>& metadata) {
  struct Item {
    const std::string* name;
    const Tensor* tensor;
    const FileDtype* dtype;
  };
  std::vector<Item> items;
  items.reserve(tensors.size());
  for (const auto& [name, t] : tensors) {
    if (name == "__metadata__") fail(file, "'__metadata__' cannot name a tensor");
    if (!t.defined()) fail_tensor(file, name, "tensor is undefined");
    if (t.device() != Device::CPU)
      fail_tensor(file, name,
                  std::string("tensor is on ") + device_name(t.device()) + "; move it to the CPU first");
    items.push_back({&name, &t, &file_dtype_of(t.dtype())});
  }
  // The reference writer's order: dtype rank descending (so every tensor stays aligned), then name.
  std::stable_sort(items.begin(), items.end(),
                   [](const Item& a, const Item& b) { return a.dtype->rank > b.dtype->rank; });

  // ordered_json keeps insertion order, and its compact dump matches serde_json's byte for byte.
  nlohmann::ordered_json header = nlohmann::ordered_json::object();
  if (!metadata.empty()) {
    nlohmann::ordered_json meta = nlohmann::ordered_json::object();
    for (const auto& [k, v] : metadata) meta[k] = v;
    header["__metadata__"] = std::move(meta);
  }
  uint64_t offset = 0;
  for (const Item& item : items) {
    const uint64_t nbytes = uint64_t(item.tensor->numel()) * item.dtype->size;
    nlohmann::ordered_json info = nlohmann::ordered_json::object();
    info["dtype"] = item.dtype->name;
    info["shape"] = item.tensor->shape();
    info["data_offsets"] = {offset, offset + nbytes};
    header[*item.name] = std::move(info);
    offset += nbytes;
  }
  std::string header_text;
  try {
    header_text = header.dump();
  } catch (const nlohmann::json::type_error&) {
    fail(file, "a tensor name or metadata entry is not valid UTF-8");
  }
  header_text.append((8 - header_text.size() % 8) % 8, ' ');
  const uint64_t header_size = header_text.size();

  AtomicFile out(file);
  out.write(&header_size, 8);
  out.write(header_text.data(), header_text.size());
  for (const Item& item : items) {
    const Tensor& t = *item.tensor;
    if (t.numel() == 0) continue;
    if (t.is_contiguous()) {
      const char* data = static_cast<const char*>(t.storage()->data) + t.offset() * int64_t(item.dtype->size);
      out.write(data, size_t(t.numel()) * item.dtype->size);
    } else {
      std::vector<char> bytes = gather_bytes(t);
      out.write(bytes.data(), bytes.size());
    }
  }
  out.commit();
}

}  // namespace deltatune
