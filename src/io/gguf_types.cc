// The tables of the GGUF format: ggml's tensor types (block size, bytes a block) and the metadata
// value types, and the metadata Value's accessors.
#include <algorithm>
#include <cctype>
#include <cstring>
#include <sstream>

#include "deltatune/error.h"
#include "deltatune/gguf.h"
#include "io/gguf_internal.h"

namespace deltatune::gguf {
namespace {

constexpr uint32_t kQK_K = 256;  // a K-quant super-block

struct TypeEntry {
  GgmlType type;
  TypeTraits traits;
};

// gguf-py's GGML_QUANT_SIZES (block size, type size). Ids 4, 5 and 31-33, 36-38 were removed from ggml.
const std::vector<TypeEntry>& type_table() {
  static const std::vector<TypeEntry> table = {
      {GgmlType::F32, {"F32", 1, 4}},
      {GgmlType::F16, {"F16", 1, 2}},
      {GgmlType::Q4_0, {"Q4_0", 32, 2 + 16}},
      {GgmlType::Q4_1, {"Q4_1", 32, 2 + 2 + 16}},
      {GgmlType::Q5_0, {"Q5_0", 32, 2 + 4 + 16}},
      {GgmlType::Q5_1, {"Q5_1", 32, 2 + 2 + 4 + 16}},
      {GgmlType::Q8_0, {"Q8_0", 32, 2 + 32}},
      {GgmlType::Q8_1, {"Q8_1", 32, 4 + 4 + 32}},
      {GgmlType::Q2_K, {"Q2_K", kQK_K, 2 + 2 + kQK_K / 16 + kQK_K / 4}},
      {GgmlType::Q3_K, {"Q3_K", kQK_K, 2 + kQK_K / 4 + kQK_K / 8 + 12}},
      {GgmlType::Q4_K, {"Q4_K", kQK_K, 2 + 2 + kQK_K / 2 + 12}},
      {GgmlType::Q5_K, {"Q5_K", kQK_K, 2 + 2 + kQK_K / 2 + kQK_K / 8 + 12}},
      {GgmlType::Q6_K, {"Q6_K", kQK_K, 2 + kQK_K / 2 + kQK_K / 4 + kQK_K / 16}},
      {GgmlType::Q8_K, {"Q8_K", kQK_K, 4 + kQK_K + kQK_K / 8}},
      {GgmlType::IQ2_XXS, {"IQ2_XXS", kQK_K, 2 + kQK_K / 4}},
      {GgmlType::IQ2_XS, {"IQ2_XS", kQK_K, 2 + kQK_K / 4 + kQK_K / 32}},
      {GgmlType::IQ3_XXS, {"IQ3_XXS", kQK_K, 2 + kQK_K / 4 + kQK_K / 8}},
      {GgmlType::IQ1_S, {"IQ1_S", kQK_K, 2 + kQK_K / 8 + kQK_K / 16}},
      {GgmlType::IQ4_NL, {"IQ4_NL", 32, 2 + 16}},
      {GgmlType::IQ3_S, {"IQ3_S", kQK_K, 2 + kQK_K / 4 + kQK_K / 8 + kQK_K / 32 + 4}},
      {GgmlType::IQ2_S, {"IQ2_S", kQK_K, 2 + kQK_K / 4 + kQK_K / 16}},
      {GgmlType::IQ4_XS, {"IQ4_XS", kQK_K, 2 + 2 + kQK_K / 2 + kQK_K / 64}},
      {GgmlType::I8, {"I8", 1, 1}},
      {GgmlType::I16, {"I16", 1, 2}},
      {GgmlType::I32, {"I32", 1, 4}},
      {GgmlType::I64, {"I64", 1, 8}},
      {GgmlType::F64, {"F64", 1, 8}},
      {GgmlType::IQ1_M, {"IQ1_M", kQK_K, kQK_K / 8 + kQK_K / 16 + kQK_K / 32}},
      {GgmlType::BF16, {"BF16", 1, 2}},
      {GgmlType::TQ1_0, {"TQ1_0", kQK_K, 2 + 4 * 13}},
      {GgmlType::TQ2_0, {"TQ2_0", kQK_K, 2 + 64}},
      {GgmlType::MXFP4, {"MXFP4", 32, 1 + 16}},
  };
  return table;
}

size_t scalar_size(ValueType t) {
  switch (t) {
    case ValueType::Uint8:
    case ValueType::Int8:
    case ValueType::Bool:
      return 1;
    case ValueType::Uint16:
    case ValueType::Int16:
      return 2;
    case ValueType::Uint32:
    case ValueType::Int32:
    case ValueType::Float32:
      return 4;
    case ValueType::Uint64:
    case ValueType::Int64:
    case ValueType::Float64:
      return 8;
    default:
      return 0;
  }
}

template <typename T>
T load(const uint8_t* p) {
  T v;
  std::memcpy(&v, p, sizeof(T));
  return v;
}

// Element i of a scalar (i = 0) or numeric array, as a double or an int64 (exact for integers).
double element_double(ValueType t, const uint8_t* p) {
  switch (t) {
    case ValueType::Float32:
      return load<float>(p);
    case ValueType::Float64:
      return load<double>(p);
    case ValueType::Uint64:
      return double(load<uint64_t>(p));
    default:
      return 0.0;  // integers: the caller uses element_int
  }
}

int64_t element_int(ValueType t, const uint8_t* p) {
  switch (t) {
    case ValueType::Uint8:
    case ValueType::Bool:
      return load<uint8_t>(p);
    case ValueType::Int8:
      return load<int8_t>(p);
    case ValueType::Uint16:
      return load<uint16_t>(p);
    case ValueType::Int16:
      return load<int16_t>(p);
    case ValueType::Uint32:
      return load<uint32_t>(p);
    case ValueType::Int32:
      return load<int32_t>(p);
    case ValueType::Int64:
      return load<int64_t>(p);
    case ValueType::Uint64: {
      const uint64_t v = load<uint64_t>(p);
      if (v > uint64_t(INT64_MAX)) throw ConfigError("uint64 value " + std::to_string(v) + " is too large");
      return int64_t(v);
    }
    default:
      throw ConfigError(std::string("a ") + value_type_name(t) + " is not an integer");
  }
}

bool is_float_type(ValueType t) { return t == ValueType::Float32 || t == ValueType::Float64; }

template <typename T>
Value scalar(ValueType type, T v) {
  Value out;
  out.type = type;
  out.bytes.resize(sizeof(T));
  std::memcpy(out.bytes.data(), &v, sizeof(T));
  return out;
}

template <typename T>
Value numeric_array(ValueType element, const std::vector<T>& v) {
  Value out;
  out.type = ValueType::Array;
  out.element_type = element;
  out.count = v.size();
  out.bytes.resize(v.size() * sizeof(T));
  if (!v.empty()) std::memcpy(out.bytes.data(), v.data(), out.bytes.size());
  return out;
}

}  // namespace

const char* value_type_name(ValueType t) {
  static const char* names[] = {"uint8", "int8",   "uint16", "int16",  "uint32", "int32",  "float32",
                                "bool",  "string", "array",  "uint64", "int64",  "float64"};
  const auto i = uint32_t(t);
  return i < std::size(names) ? names[i] : "unknown";
}

std::optional<TypeTraits> type_traits(uint32_t id) {
  for (const TypeEntry& e : type_table())
    if (uint32_t(e.type) == id) return e.traits;
  return std::nullopt;
}

const TypeTraits& traits(GgmlType t) {
  for (const TypeEntry& e : type_table())
    if (e.type == t) return e.traits;
  throw Error("gguf: no traits for ggml type " + std::to_string(uint32_t(t)));
}

std::optional<GgmlType> parse_type(const std::string& name) {
  std::string upper = name;
  std::transform(upper.begin(), upper.end(), upper.begin(), [](unsigned char c) { return std::toupper(c); });
  for (const TypeEntry& e : type_table())
    if (upper == e.traits.name) return e.type;
  return std::nullopt;
}

bool Value::is_integer() const {
  return type != ValueType::Array && !is_float_type(type) && scalar_size(type);
}
bool Value::is_number() const { return is_integer() || is_float_type(type); }

int64_t Value::as_int() const {
  if (!is_integer()) throw ConfigError(std::string("expected an integer, got a ") + value_type_name(type));
  return element_int(type, bytes.data());
}

double Value::as_double() const {
  if (is_float_type(type)) return element_double(type, bytes.data());
  if (type == ValueType::Uint64) return element_double(type, bytes.data());
  if (is_integer()) return double(as_int());
  throw ConfigError(std::string("expected a number, got a ") + value_type_name(type));
}

std::vector<int64_t> Value::int_array() const {
  if (type != ValueType::Array || is_float_type(element_type) || !scalar_size(element_type))
    throw ConfigError("expected an array of integers");
  std::vector<int64_t> out(count);
  const size_t step = scalar_size(element_type);
  for (uint64_t i = 0; i < count; ++i) out[i] = element_int(element_type, bytes.data() + i * step);
  return out;
}

std::vector<double> Value::double_array() const {
  if (type != ValueType::Array || !scalar_size(element_type))
    throw ConfigError("expected an array of numbers");
  std::vector<double> out(count);
  const size_t step = scalar_size(element_type);
  for (uint64_t i = 0; i < count; ++i) {
    const uint8_t* p = bytes.data() + i * step;
    out[i] = is_float_type(element_type) || element_type == ValueType::Uint64
                 ? element_double(element_type, p)
                 : double(element_int(element_type, p));
  }
  return out;
}

std::string Value::display(size_t max_items) const {
  std::ostringstream out;
  const auto show_scalar = [&](ValueType t, const uint8_t* p) {
    if (t == ValueType::Bool)
      out << (p[0] ? "true" : "false");
    else if (is_float_type(t))
      out << element_double(t, p);
    else if (t == ValueType::Uint64)
      out << load<uint64_t>(p);
    else
      out << element_int(t, p);
  };
  if (type == ValueType::String) {
    out << '"' << (text.size() > 80 ? text.substr(0, 77) + "..." : text) << '"';
  } else if (type == ValueType::Array) {
    out << value_type_name(element_type) << '[' << count << "] [";
    const size_t shown = std::min<uint64_t>(count, max_items);
    for (size_t i = 0; i < shown; ++i) {
      if (i) out << ", ";
      if (element_type == ValueType::String)
        out << '"' << strings[i] << '"';
      else
        show_scalar(element_type, bytes.data() + i * scalar_size(element_type));
    }
    out << (count > shown ? ", ...]" : "]");
  } else {
    show_scalar(type, bytes.data());
  }
  return out.str();
}

Value Value::of_string(std::string s) {
  Value v;
  v.type = ValueType::String;
  v.text = std::move(s);
  return v;
}
Value Value::of_uint32(uint32_t v) { return scalar(ValueType::Uint32, v); }
Value Value::of_int32(int32_t v) { return scalar(ValueType::Int32, v); }
Value Value::of_uint64(uint64_t v) { return scalar(ValueType::Uint64, v); }
Value Value::of_float32(float v) { return scalar(ValueType::Float32, v); }
Value Value::of_bool(bool v) { return scalar(ValueType::Bool, uint8_t(v ? 1 : 0)); }
Value Value::of_strings(std::vector<std::string> v) {
  Value out;
  out.type = ValueType::Array;
  out.element_type = ValueType::String;
  out.count = v.size();
  out.strings = std::move(v);
  return out;
}
Value Value::of_float32s(const std::vector<float>& v) { return numeric_array(ValueType::Float32, v); }
Value Value::of_int32s(const std::vector<int32_t>& v) { return numeric_array(ValueType::Int32, v); }

size_t value_scalar_size(ValueType t) { return scalar_size(t); }

}  // namespace deltatune::gguf
