// Writing a GGUF v3 file as gguf-py's GGUFWriter does: header, metadata, tensor infos, padding to the
// alignment, then each tensor's data padded to the alignment; written atomically.
#include <cstring>

#include "deltatune/atomic_file.h"
#include "deltatune/error.h"
#include "deltatune/gguf.h"
#include "io/gguf_internal.h"

namespace deltatune::gguf {
namespace {

// The bytes of the file before its data section, built in memory.
class Bytes {
 public:
  template <typename T>
  void put(T v) {
    const auto* p = reinterpret_cast<const uint8_t*>(&v);
    out.insert(out.end(), p, p + sizeof(T));
  }
  void put_string(const std::string& s) {
    put<uint64_t>(s.size());
    out.insert(out.end(), s.begin(), s.end());
  }
  void put_value(const Value& v) {
    put<uint32_t>(uint32_t(v.type));
    if (v.type == ValueType::String) {
      put_string(v.text);
    } else if (v.type == ValueType::Array) {
      put<uint32_t>(uint32_t(v.element_type));
      put<uint64_t>(v.count);
      if (v.element_type == ValueType::String)
        for (const std::string& s : v.strings) put_string(s);
      else
        out.insert(out.end(), v.bytes.begin(), v.bytes.end());
    } else {
      out.insert(out.end(), v.bytes.begin(), v.bytes.end());
    }
  }
  std::vector<uint8_t> out;
};

uint64_t padded(uint64_t n, uint64_t alignment) { return (n + alignment - 1) / alignment * alignment; }

}  // namespace

void Writer::set(const std::string& key, Value value) {
  for (auto& [k, v] : metadata_)
    if (k == key) {
      v = std::move(value);
      return;
    }
  metadata_.emplace_back(key, std::move(value));
}

void Writer::add_tensor(std::string name, std::vector<int64_t> dims, GgmlType type,
                        std::vector<uint8_t> data) {
  Pending p;
  p.info.name = std::move(name);
  p.info.dims = std::move(dims);
  p.info.type = type;
  const TypeTraits& t = traits(type);
  const int64_t elements = p.info.elements();
  if (!p.info.dims.empty() && p.info.dims[0] % t.block_size != 0)
    throw ConfigError("gguf: tensor '" + p.info.name + "': row length " + std::to_string(p.info.dims[0]) +
                      " is not a multiple of " + t.name + "'s block of " + std::to_string(t.block_size));
  p.info.bytes = uint64_t(elements) / t.block_size * t.type_size;
  if (data.size() != p.info.bytes)
    throw Error("gguf: tensor '" + p.info.name + "': " + std::to_string(data.size()) + " bytes given, " +
                std::to_string(p.info.bytes) + " expected for " + t.name);
  p.data = std::move(data);
  tensors_.push_back(std::move(p));
}

void Writer::write(const std::filesystem::path& file) const {
  uint64_t alignment = kDefaultAlignment;
  for (const auto& [k, v] : metadata_)
    if (k == "general.alignment") alignment = uint64_t(v.as_int());

  Bytes head;
  head.out.insert(head.out.end(), kMagic, kMagic + 4);
  head.put<uint32_t>(3);
  head.put<uint64_t>(tensors_.size());
  head.put<uint64_t>(metadata_.size());
  for (const auto& [k, v] : metadata_) {
    head.put_string(k);
    head.put_value(v);
  }
  uint64_t offset = 0;
  for (const Pending& p : tensors_) {
    head.put_string(p.info.name);
    head.put<uint32_t>(uint32_t(p.info.dims.size()));
    for (int64_t d : p.info.dims) head.put<uint64_t>(uint64_t(d));
    head.put<uint32_t>(uint32_t(p.info.type));
    head.put<uint64_t>(offset);
    offset = padded(offset + p.info.bytes, alignment);
  }
  head.out.resize(padded(head.out.size(), alignment), 0);

  AtomicFile out(file);
  out.write(head.out.data(), head.out.size());
  const std::vector<uint8_t> zeros(alignment, 0);
  for (const Pending& p : tensors_) {
    out.write(p.data.data(), p.data.size());
    out.write(zeros.data(), padded(p.data.size(), alignment) - p.data.size());
  }
  out.commit();
}

}  // namespace deltatune::gguf
