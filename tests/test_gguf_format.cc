// The GGUF file format (deltatune/gguf.h): what the writer writes reads back value for value; every
// malformed file (the cases issue 19 lists) is refused with an IoError naming the file and the
// problem, never a crash or a huge allocation; the K-quant decoders and the q/k permutation.
#include <gtest/gtest.h>

#include <cmath>
#include <cstring>
#include <fstream>

#include "deltatune/dtype.h"
#include "deltatune/error.h"
#include "deltatune/gguf.h"
#include "deltatune/gguf_model.h"
#include "temp_dir.h"

using namespace deltatune;
using namespace deltatune::gguf;
namespace fs = std::filesystem;

namespace {

// Raw little-endian bytes, for files the writer would never make.
struct Bytes {
  std::string b;
  Bytes& u32(uint32_t v) { return raw(&v, 4); }
  Bytes& u64(uint64_t v) { return raw(&v, 8); }
  Bytes& str(const std::string& s) {
    u64(s.size());
    b += s;
    return *this;
  }
  Bytes& raw(const void* p, size_t n) {
    b.append(static_cast<const char*>(p), n);
    return *this;
  }
  Bytes& pad(size_t alignment) {
    b.resize((b.size() + alignment - 1) / alignment * alignment, '\0');
    return *this;
  }
};

Bytes header(uint64_t tensors, uint64_t kvs, uint32_t version = 3) {
  Bytes h;
  h.b = "GGUF";
  h.u32(version).u64(tensors).u64(kvs);
  return h;
}

// A tensor info: name, dims (innermost first), type, offset.
Bytes& tensor_info(Bytes& b, const std::string& name, std::vector<uint64_t> dims, uint32_t type,
                   uint64_t offset) {
  b.str(name).u32(uint32_t(dims.size()));
  for (uint64_t d : dims) b.u64(d);
  return b.u32(type).u64(offset);
}

fs::path write_bytes(const fs::path& dir, const std::string& bytes, const std::string& name = "bad.gguf") {
  const fs::path file = dir / name;
  std::ofstream(file, std::ios::binary) << bytes;
  return file;
}

// The message of the IoError reading `bytes` gives (a test failure if it gives none).
std::string read_error(const std::string& bytes) {
  const fs::path file = write_bytes(test_support::temp_dir("gguf_bad"), bytes);
  try {
    read_file(file);
  } catch (const IoError& e) {
    const std::string message = e.what();
    EXPECT_EQ(message.rfind(file.string() + ": ", 0), 0u) << message;  // names the file
    return message;
  }
  ADD_FAILURE() << "no error";
  return "";
}

// A valid file: every metadata type, two tensors (F32 [2, 3], Q8_0 [2, 32]).
fs::path write_sample(const fs::path& dir) {
  Writer w;
  w.set("general.architecture", Value::of_string("llama"));
  w.set("u32", Value::of_uint32(7));
  w.set("i32", Value::of_int32(-3));
  w.set("u64", Value::of_uint64(1ull << 40));
  w.set("f32", Value::of_float32(0.5f));
  w.set("yes", Value::of_bool(true));
  w.set("names", Value::of_strings({"a", "", "ccc"}));
  w.set("scores", Value::of_float32s({1.5f, -2.0f}));
  w.set("types", Value::of_int32s({1, 2, 3}));
  const std::vector<float> small = {1, 2, 3, 4, 5, 6};
  w.add_tensor("small", {3, 2}, GgmlType::F32, encode(small.data(), 2, 3, GgmlType::F32));
  std::vector<float> wide(64);
  for (int i = 0; i < 64; ++i) wide[size_t(i)] = float(i % 7) - 3.0f;
  w.add_tensor("wide", {32, 2}, GgmlType::Q8_0, encode(wide.data(), 2, 32, GgmlType::Q8_0));
  const fs::path file = dir / "sample.gguf";
  w.write(file);
  return file;
}

}  // namespace

TEST(GgufFormat, WrittenFileReadsBackValueForValue) {
  const File f = read_file(write_sample(test_support::temp_dir("gguf_rt")));
  EXPECT_EQ(f.version, 3u);
  EXPECT_EQ(f.alignment, 32u);
  EXPECT_EQ(f.string("general.architecture"), "llama");
  EXPECT_EQ(f.integer("u32"), 7);
  EXPECT_EQ(f.integer("i32"), -3);
  EXPECT_EQ(f.integer("u64"), int64_t(1) << 40);
  EXPECT_EQ(f.number("f32"), 0.5);
  EXPECT_EQ(f.at("yes").as_int(), 1);
  EXPECT_EQ(f.at("names").strings, (std::vector<std::string>{"a", "", "ccc"}));
  EXPECT_EQ(f.at("scores").double_array(), (std::vector<double>{1.5, -2.0}));
  EXPECT_EQ(f.at("types").int_array(), (std::vector<int64_t>{1, 2, 3}));
  EXPECT_EQ(f.metadata.front().first, "general.architecture");  // file order kept
  ASSERT_EQ(f.tensors.size(), 2u);
  const TensorInfo& small = f.tensor("small");
  EXPECT_EQ(small.shape(), (std::vector<int64_t>{2, 3}));
  EXPECT_EQ(dequantize(small), (std::vector<float>{1, 2, 3, 4, 5, 6}));
  EXPECT_EQ(small.offset % 32, 0u);
  const TensorInfo& wide = f.tensor("wide");
  EXPECT_EQ(wide.type, GgmlType::Q8_0);
  EXPECT_EQ(wide.bytes, 2u * 34u);
  EXPECT_EQ(wide.offset % 32, 0u);
  const std::vector<float> values = dequantize(wide);
  for (int i = 0; i < 64; ++i)
    EXPECT_NEAR(values[size_t(i)], float(i % 7) - 3.0f, 0.02f) << i;  // q8_0's step
  EXPECT_EQ(f.at("names").display(), "string[3] [\"a\", \"\", \"ccc\"]");
  EXPECT_THROW(f.string("u32"), IoError);       // a uint32 is not a string
  EXPECT_THROW(f.integer("missing"), IoError);  // absent
}

TEST(GgufFormat, EveryTruncationIsRefusedCleanly) {
  const fs::path dir = test_support::temp_dir("gguf_trunc");
  std::ifstream in(write_sample(dir), std::ios::binary);
  const std::string whole((std::istreambuf_iterator<char>(in)), std::istreambuf_iterator<char>());
  const File f = read_file(dir / "sample.gguf");
  const size_t end = size_t(f.data_offset + f.tensor("wide").offset + f.tensor("wide").bytes);
  for (size_t n = 0; n < end; ++n) {
    const fs::path cut = write_bytes(dir, whole.substr(0, n), "cut.gguf");
    EXPECT_THROW(read_file(cut), IoError) << "prefix of " << n << " bytes";
  }
}

TEST(GgufFormat, WrongMagicAndVersionAreNamed) {
  Bytes b = header(0, 0);
  b.b[3] = 'X';
  EXPECT_NE(read_error(b.b).find("not a GGUF file (magic 'GGUX'"), std::string::npos);
  EXPECT_NE(read_error(header(0, 0, 1).b).find("GGUF version 1 is not supported"), std::string::npos);
  EXPECT_NE(read_error(header(0, 0, 4).b).find("GGUF version 4 is not supported"), std::string::npos);
  EXPECT_NE(read_error("GGUF").find("shorter than the 24-byte GGUF header"), std::string::npos);
}

TEST(GgufFormat, AbsurdCountsAndLengthsAreRefusedBeforeAllocating) {
  EXPECT_NE(read_error(header(0, UINT64_MAX).b).find("metadata count 18446744073709551615 is impossible"),
            std::string::npos);
  EXPECT_NE(read_error(header(UINT64_MAX, 0).b).find("tensor count 18446744073709551615 is impossible"),
            std::string::npos);
  Bytes key = header(0, 1);
  key.u64(uint64_t(1) << 62).pad(64);  // a key claiming 2^62 bytes
  EXPECT_NE(read_error(key.b).find("claims 4611686018427387904 bytes"), std::string::npos);
  Bytes value = header(0, 1);
  value.str("k").u32(uint32_t(ValueType::String)).u64(UINT64_MAX);
  EXPECT_NE(read_error(value.b).find("claims 18446744073709551615 bytes"), std::string::npos);
  Bytes array = header(0, 1);
  array.str("k").u32(uint32_t(ValueType::Array)).u32(uint32_t(ValueType::Uint64)).u64(uint64_t(1) << 60);
  EXPECT_NE(read_error(array.b).find("array of 1152921504606846976 uint64 runs past the end"),
            std::string::npos);
  Bytes strings = header(0, 1);
  strings.str("k").u32(uint32_t(ValueType::Array)).u32(uint32_t(ValueType::String)).u64(uint64_t(1) << 59);
  EXPECT_NE(read_error(strings.b).find("runs past the end"), std::string::npos);
}

TEST(GgufFormat, MalformedMetadataIsNamed) {
  Bytes type = header(0, 1);
  type.str("k").u32(99).u64(0);
  EXPECT_NE(read_error(type.b).find("metadata 'k': unknown value type 99"), std::string::npos);
  Bytes nested = header(0, 1);
  nested.str("k").u32(uint32_t(ValueType::Array)).u32(uint32_t(ValueType::Array)).u64(0);
  EXPECT_NE(read_error(nested.b).find("arrays of arrays are not supported"), std::string::npos);
  Bytes twice = header(0, 2);
  twice.str("k")
      .u32(uint32_t(ValueType::Uint8))
      .raw("\x01", 1)
      .str("k")
      .u32(uint32_t(ValueType::Uint8))
      .raw("\x01", 1);
  EXPECT_NE(read_error(twice.b).find("metadata key 'k' appears twice"), std::string::npos);
  Bytes boolean = header(0, 1);
  boolean.str("k").u32(uint32_t(ValueType::Bool)).raw("\x02", 1).pad(32);
  EXPECT_NE(read_error(boolean.b).find("bool value 2"), std::string::npos);
  Bytes alignment = header(0, 1);
  alignment.str("general.alignment").u32(uint32_t(ValueType::Uint32)).u32(24).pad(32);
  EXPECT_NE(read_error(alignment.b).find("general.alignment 24 is not a power of two"), std::string::npos);
  Bytes alignment_type = header(0, 1);
  alignment_type.str("general.alignment").u32(uint32_t(ValueType::Uint64)).u64(32).pad(32);
  EXPECT_NE(read_error(alignment_type.b).find("general.alignment is a uint64, expected uint32"),
            std::string::npos);
}

TEST(GgufFormat, MalformedTensorInfosAreNamed) {
  const auto one_tensor = [](std::vector<uint64_t> dims, uint32_t type, uint64_t offset, size_t data = 64) {
    Bytes b = header(1, 0);
    tensor_info(b, "t", std::move(dims), type, offset).pad(32);
    b.b.append(data, '\0');
    return b.b;
  };
  EXPECT_NE(read_error(one_tensor({4}, 4, 0)).find("tensor 't': unknown ggml type 4"), std::string::npos);
  EXPECT_NE(read_error(one_tensor({4}, 1000, 0)).find("unknown ggml type 1000"), std::string::npos);
  EXPECT_NE(read_error(one_tensor({1, 1, 1, 1, 1}, 0, 0)).find("5 dimensions (ggml allows at most 4)"),
            std::string::npos);
  EXPECT_NE(read_error(one_tensor({1ull << 40, 1ull << 40}, 0, 0)).find("impossibly large"),
            std::string::npos);
  EXPECT_NE(
      read_error(one_tensor({33}, uint32_t(GgmlType::Q8_0), 0)).find("not a multiple of Q8_0's block of 32"),
      std::string::npos);
  EXPECT_NE(read_error(one_tensor({4}, 0, 8)).find("offset 8 is not a multiple of the alignment 32"),
            std::string::npos);
  EXPECT_NE(
      read_error(one_tensor({4}, 0, 1ull << 20)).find("runs past the end of the data section (64 bytes)"),
      std::string::npos);
  EXPECT_NE(read_error(one_tensor({1ull << 20}, 0, 0)).find("runs past the end of the data section"),
            std::string::npos);

  Bytes overlap = header(2, 0);
  tensor_info(overlap, "a", {16}, 0, 0);
  tensor_info(overlap, "b", {16}, 0, 32).pad(32);
  overlap.b.append(128, '\0');
  EXPECT_NE(read_error(overlap.b).find("tensor 'b': data at offset 32 overlaps tensor 'a' [0, +64)"),
            std::string::npos);
  Bytes twice = header(2, 0);
  tensor_info(twice, "a", {4}, 0, 0);
  tensor_info(twice, "a", {4}, 0, 32).pad(32);
  twice.b.append(64, '\0');
  EXPECT_NE(read_error(twice.b).find("tensor 'a': appears twice"), std::string::npos);
}

TEST(GgufFormat, UnreadableTypesAreNamedWhenDequantised) {
  Bytes b = header(1, 0);
  tensor_info(b, "t", {32}, uint32_t(GgmlType::Q4_1), 0).pad(32);
  b.b.append(32, '\0');
  const fs::path file = write_bytes(test_support::temp_dir("gguf_q41"), b.b);
  const File f = read_file(file);
  try {
    dequantize(f.tensor("t"), file);
    FAIL() << "no error";
  } catch (const IoError& e) {
    EXPECT_NE(std::string(e.what()).find("tensor 't': type Q4_1 cannot be read"), std::string::npos)
        << e.what();
  }
}

// One 256-value super-block of a K-quant type, as the reader would describe it.
static TensorInfo one_block(const std::string& name, GgmlType type, const uint8_t* block) {
  TensorInfo t;
  t.name = name;
  t.dims = {256};
  t.type = type;
  t.bytes = traits(type).type_size;
  t.data = block;
  return t;
}

// Q4_K: one super-block with chosen 6-bit scales and mins, decoded by the format's definition.
TEST(GgufFormat, Q4KDecodesByItsDefinition) {
  uint8_t block[144] = {};
  const uint16_t d = f32_to_f16(0.5f), dmin = f32_to_f16(0.25f);
  std::memcpy(block, &d, 2);
  std::memcpy(block + 2, &dmin, 2);
  const int scale[8] = {1, 2, 3, 63, 17, 40, 5, 33}, min[8] = {0, 1, 62, 7, 9, 60, 2, 31};
  uint8_t* s = block + 4;  // sub-blocks 0-3 in the low 6 bits; 4-7 split into nibbles and top bits
  for (int j = 0; j < 4; ++j) {
    s[j] = uint8_t(scale[j] | ((scale[j + 4] >> 4) << 6));
    s[j + 4] = uint8_t(min[j] | ((min[j + 4] >> 4) << 6));
    s[j + 8] = uint8_t((scale[j + 4] & 0xF) | ((min[j + 4] & 0xF) << 4));
  }
  for (int i = 0; i < 128; ++i) block[16 + i] = uint8_t((i * 7 + 3) & 0xFF);
  const std::vector<float> y = dequantize(one_block("q4k", GgmlType::Q4_K, block));
  for (int e = 0; e < 256; ++e) {
    const int sub = e / 32, chunk = e / 64, l = e % 32;
    const uint8_t byte = block[16 + chunk * 32 + l];
    const int q = sub % 2 == 0 ? byte & 0xF : byte >> 4;
    EXPECT_FLOAT_EQ(y[size_t(e)], 0.5f * float(scale[sub]) * float(q) - 0.25f * float(min[sub])) << e;
  }
}

// Q6_K: 6-bit codes split into ql/qh, sixteen int8 scales.
TEST(GgufFormat, Q6KDecodesByItsDefinition) {
  uint8_t block[210] = {};
  int codes[256];
  for (int e = 0; e < 256; ++e) codes[e] = (e * 37 + 11) % 64;
  // Element n*128 + k*32 + l (k = 0..3) keeps its low nibble in ql[n*64 + (k%2)*32 + l] (k >= 2: high
  // nibble) and its top two bits in qh[n*32 + l] at bit 2k.
  for (int n = 0; n < 2; ++n)
    for (int k = 0; k < 4; ++k)
      for (int l = 0; l < 32; ++l) {
        const int c = codes[n * 128 + k * 32 + l];
        block[n * 64 + (k % 2) * 32 + l] |= uint8_t((c & 0xF) << (k >= 2 ? 4 : 0));
        block[128 + n * 32 + l] |= uint8_t((c >> 4) << (2 * k));
      }
  const int8_t scales[16] = {1, -2, 3, -4, 5, 6, -7, 8, 127, -128, 11, 12, 13, 14, 15, 16};
  std::memcpy(block + 192, scales, 16);
  const uint16_t d = f32_to_f16(0.125f);
  std::memcpy(block + 208, &d, 2);
  const std::vector<float> y = dequantize(one_block("q6k", GgmlType::Q6_K, block));
  for (int e = 0; e < 256; ++e)
    EXPECT_FLOAT_EQ(y[size_t(e)], 0.125f * float(scales[e / 16]) * float(codes[e] - 32)) << e;
}

TEST(GgufFormat, TypeTableMatchesGgml) {
  EXPECT_EQ(traits(GgmlType::Q4_K).type_size, 144u);
  EXPECT_EQ(traits(GgmlType::Q6_K).type_size, 210u);
  EXPECT_EQ(traits(GgmlType::Q8_0).type_size, 34u);
  EXPECT_EQ(traits(GgmlType::Q4_0).type_size, 18u);
  EXPECT_EQ(traits(GgmlType::BF16).type_size, 2u);
  EXPECT_FALSE(type_traits(4).has_value());  // Q4_2, removed from ggml
  EXPECT_EQ(parse_type("q8_0"), GgmlType::Q8_0);
  EXPECT_FALSE(parse_type("q9_9").has_value());
}

// convert_hf_to_gguf's permute: reshape(heads, 2, half, cols).swapaxes(1, 2).
TEST(GgufFormat, PermutationInterleavesTheRotaryHalvesPerHead) {
  const int64_t heads = 2, rows = 8;  // 4 rows a head: halves {0, 1} and {2, 3}
  std::vector<uint8_t> data(rows);
  for (int64_t r = 0; r < rows; ++r) data[size_t(r)] = uint8_t(r);
  const std::vector<uint8_t> permuted = permute_rows(data.data(), rows, 1, heads, false);
  EXPECT_EQ(permuted, (std::vector<uint8_t>{0, 2, 1, 3, 4, 6, 5, 7}));
  EXPECT_EQ(permute_rows(permuted.data(), rows, 1, heads, true), data);
}

TEST(GgufFormat, TensorNamesMapBothWays) {
  EXPECT_EQ(gguf_tensor_name("model.layers.3.self_attn.q_proj.weight"), "blk.3.attn_q.weight");
  EXPECT_EQ(gguf_tensor_name("model.layers.10.mlp.down_proj.weight"), "blk.10.ffn_down.weight");
  EXPECT_EQ(gguf_tensor_name("model.embed_tokens.weight"), "token_embd.weight");
  EXPECT_EQ(gguf_tensor_name("lm_head.weight"), "output.weight");
  EXPECT_EQ(gguf_tensor_name("model.layers.0.self_attn.k_proj.bias"), "blk.0.attn_k.bias");
  EXPECT_FALSE(gguf_tensor_name("model.layers.0.self_attn.rotary_emb.inv_freq").has_value());
  EXPECT_EQ(hf_tensor_name("blk.2.ffn_norm.weight"), "model.layers.2.post_attention_layernorm.weight");
  EXPECT_EQ(hf_tensor_name("output_norm.weight"), "model.norm.weight");
  EXPECT_FALSE(hf_tensor_name("blk.0.attn_qkv.weight").has_value());
}
