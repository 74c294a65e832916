#pragma once
// GGUF v3, llama.cpp's model file: read and written byte for byte as ggml's gguf.cpp and gguf-py do.
//
//   gguf::File f = gguf::read_file("model.gguf");
//   std::string arch = f.string("general.architecture");   // "llama"
//   const gguf::TensorInfo& t = f.tensor("blk.0.attn_q.weight");
//   std::vector<float> w = gguf::dequantize(t);             // any type we know, row-major
//
// Layout (little-endian): "GGUF", uint32 version (3; 2 is read too), uint64 tensor count, uint64
// metadata count; the metadata (string key, uint32 value type, value: scalars, strings as uint64
// length + bytes, arrays as uint32 element type + uint64 count + elements); the tensor infos (name,
// uint32 n_dims, uint64 dims innermost first, uint32 ggml type, uint64 offset into the data section);
// padding to `general.alignment` (default 32); the data section, each tensor at an aligned offset.
// Every malformed file is an IoError "FILE: PROBLEM" (or "FILE: tensor 'NAME': PROBLEM"); sizes are
// checked against the file before anything is allocated.
#include <cstdint>
#include <filesystem>
#include <memory>
#include <optional>
#include <string>
#include <utility>
#include <vector>

namespace deltatune::gguf {

enum class ValueType : uint32_t {
  Uint8 = 0,
  Int8 = 1,
  Uint16 = 2,
  Int16 = 3,
  Uint32 = 4,
  Int32 = 5,
  Float32 = 6,
  Bool = 7,
  String = 8,
  Array = 9,
  Uint64 = 10,
  Int64 = 11,
  Float64 = 12,
};
const char* value_type_name(ValueType t);  // "uint32", "string", ...

// ggml's tensor types (ggml.h's enum ggml_type, the ids a file stores).
enum class GgmlType : uint32_t {
  F32 = 0,
  F16 = 1,
  Q4_0 = 2,
  Q4_1 = 3,
  Q5_0 = 6,
  Q5_1 = 7,
  Q8_0 = 8,
  Q8_1 = 9,
  Q2_K = 10,
  Q3_K = 11,
  Q4_K = 12,
  Q5_K = 13,
  Q6_K = 14,
  Q8_K = 15,
  IQ2_XXS = 16,
  IQ2_XS = 17,
  IQ3_XXS = 18,
  IQ1_S = 19,
  IQ4_NL = 20,
  IQ3_S = 21,
  IQ2_S = 22,
  IQ4_XS = 23,
  I8 = 24,
  I16 = 25,
  I32 = 26,
  I64 = 27,
  F64 = 28,
  IQ1_M = 29,
  BF16 = 30,
  TQ1_0 = 34,
  TQ2_0 = 35,
  MXFP4 = 39,
};
struct TypeTraits {
  const char* name;     // "Q4_K"
  uint32_t block_size;  // elements a block holds (1 for plain types)
  uint32_t type_size;   // bytes a block takes
};
// The traits of a type id, or nullopt when ggml defines no such type (or one since removed).
std::optional<TypeTraits> type_traits(uint32_t id);
const TypeTraits& traits(GgmlType t);
// The type of a name ("q8_0", "F16", case-insensitive), or nullopt.
std::optional<GgmlType> parse_type(const std::string& name);

// One metadata value. Scalars and numeric arrays keep their little-endian bytes as stored (a numeric
// array costs no more memory than its bytes in the file); strings and string arrays are decoded.
struct Value {
  ValueType type = ValueType::Uint8;
  ValueType element_type = ValueType::Uint8;  // arrays
  uint64_t count = 0;                         // array elements
  std::string text;                           // String
  std::vector<std::string> strings;           // Array of String
  std::vector<uint8_t> bytes;                 // scalars and numeric arrays

  bool is_integer() const;  // an integer or bool scalar
  bool is_number() const;   // integer, bool or float scalar
  int64_t as_int() const;   // integer scalars (a uint64 above INT64_MAX: ConfigError)
  double as_double() const;
  // Numeric arrays, element by element; ConfigError for other values.
  std::vector<int64_t> int_array() const;
  std::vector<double> double_array() const;
  // A short display: the value, or an array's type, length and first elements.
  std::string display(size_t max_items = 8) const;

  static Value of_string(std::string s);
  static Value of_uint32(uint32_t v);
  static Value of_int32(int32_t v);
  static Value of_uint64(uint64_t v);
  static Value of_float32(float v);
  static Value of_bool(bool v);
  static Value of_strings(std::vector<std::string> v);
  static Value of_float32s(const std::vector<float>& v);
  static Value of_int32s(const std::vector<int32_t>& v);
};

struct TensorInfo {
  std::string name;
  std::vector<int64_t> dims;  // ggml order: dims[0] is the innermost (a row's length)
  GgmlType type = GgmlType::F32;
  uint64_t offset = 0;            // into the data section
  uint64_t bytes = 0;             // its size in the file
  const uint8_t* data = nullptr;  // into the mapping (valid while the File lives)

  int64_t elements() const;
  // The shape row-major (outermost first), as a Hugging Face tensor of the same data is shaped.
  std::vector<int64_t> shape() const { return {dims.rbegin(), dims.rend()}; }
};

struct File {
  std::filesystem::path path;
  uint32_t version = 3;
  uint64_t alignment = 32;
  uint64_t data_offset = 0;                             // where the data section starts
  std::vector<std::pair<std::string, Value>> metadata;  // in file order
  std::vector<TensorInfo> tensors;                      // in file order
  std::shared_ptr<const void> mapping;                  // keeps `data` pointers valid

  const Value* find(const std::string& key) const;  // nullptr when absent
  const TensorInfo* find_tensor(const std::string& name) const;
  // Typed look-ups; IoError naming the file and key when absent or of another type.
  const Value& at(const std::string& key) const;
  const TensorInfo& tensor(const std::string& name) const;
  std::string string(const std::string& key) const;
  int64_t integer(const std::string& key) const;
  double number(const std::string& key) const;
};

// A listing for people (`deltatune inspect x.gguf`): version, alignment, each metadata key with its
// type and value (arrays by their first `max_items` elements), each tensor with type, shape and offset.
std::string describe(const File& file, size_t max_items = 8);

// Memory-maps and validates `file` (magic, version, every count, length and offset).
File read_file(const std::filesystem::path& file);
// Whether `path` names a GGUF file (a regular file starting with the magic).
bool is_gguf_file(const std::filesystem::path& path);

// A tensor as row-major float32: F32, F16, BF16, F64, Q8_0, Q4_0, Q4_K, Q6_K.
// Other types: IoError naming the tensor and its type.
std::vector<float> dequantize(const TensorInfo& tensor, const std::filesystem::path& file = {});

// A file to write: metadata and tensors in the order added. Tensor bytes are given already encoded
// in their type (encode() below).
class Writer {
 public:
  void set(const std::string& key, Value value);  // replaces an earlier value of the key
  void add_tensor(std::string name, std::vector<int64_t> dims, GgmlType type, std::vector<uint8_t> data);
  // Writes the file atomically (general.alignment as set, else 32).
  void write(const std::filesystem::path& file) const;

 private:
  struct Pending {
    TensorInfo info;
    std::vector<uint8_t> data;
  };
  std::vector<std::pair<std::string, Value>> metadata_;
  std::vector<Pending> tensors_;
};

// Encodes a row-major float32 matrix [rows, cols] as `type`: F32, F16, BF16, Q8_0, Q4_0 (ggml's exact
// bytes; quantised types need cols a multiple of 32). ConfigError otherwise.
std::vector<uint8_t> encode(const float* values, int64_t rows, int64_t cols, GgmlType type);

}  // namespace deltatune::gguf
