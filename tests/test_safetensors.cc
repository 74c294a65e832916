// safetensors reading, writing and checkpoint folders: the mini checkpoints, round trips over every
// dtype and layout, byte-for-byte agreement with files written by Hugging Face's library, sharded
// checkpoints, and a clear IoError for each kind of damaged file.
#include <gtest/gtest.h>
#include <unistd.h>

#include <cmath>
#include <cstdio>
#include <cstring>
#include <fstream>
#include <nlohmann/json.hpp>
#include <sstream>

#include "deltatune/error.h"
#include "deltatune/random.h"
#include "deltatune/safetensors.h"

namespace fs = std::filesystem;
using namespace deltatune;

namespace {

const fs::path kAssets = DELTATUNE_ASSETS;
const fs::path kTestData = DELTATUNE_TEST_DATA;

std::string read_bytes(const fs::path& p) {
  std::ifstream in(p, std::ios::binary);
  std::ostringstream s;
  s << in.rdbuf();
  return s.str();
}

void write_bytes(const fs::path& p, const std::string& bytes) {
  std::ofstream out(p, std::ios::binary);
  out.write(bytes.data(), std::streamsize(bytes.size()));
}

// A safetensors image from a header text and a data section.
std::string file_image(const std::string& header, const std::string& data) {
  uint64_t n = header.size();
  std::string out(reinterpret_cast<const char*>(&n), 8);
  return out + header + data;
}

std::string header_text(const fs::path& p) {
  std::string bytes = read_bytes(p);
  uint64_t n;
  std::memcpy(&n, bytes.data(), 8);
  return bytes.substr(8, n);
}

// Each test writes under its own folder, removed afterwards.
class SafetensorsTest : public ::testing::Test {
 protected:
  void SetUp() override {
    const auto* info = ::testing::UnitTest::GetInstance()->current_test_info();
    dir_ = fs::temp_directory_path() /
           ("deltatune-safetensors-" + std::string(info->name()) + "-" + std::to_string(::getpid()));
    fs::remove_all(dir_);
    fs::create_directories(dir_);
  }
  void TearDown() override { fs::remove_all(dir_); }

  // Reading `image` must fail with an IoError naming the file and containing every fragment.
  void expect_corrupt(const std::string& image, const std::vector<std::string>& fragments) {
    const fs::path p = dir_ / "bad.safetensors";
    write_bytes(p, image);
    try {
      read_safetensors(p);
      ADD_FAILURE() << "no error for " << testing::PrintToString(fragments);
    } catch (const IoError& e) {
      const std::string msg = e.what();
      EXPECT_NE(msg.find(p.string()), std::string::npos) << msg;
      EXPECT_EQ(msg.find('\n'), std::string::npos) << "not one line: " << msg;
      for (const std::string& f : fragments)
        EXPECT_NE(msg.find(f), std::string::npos) << msg << "\nwants: " << f;
    }
  }

  fs::path dir_;
};

void expect_same_tensor(const Tensor& expected, const Tensor& actual) {
  ASSERT_TRUE(actual.defined());
  EXPECT_EQ(actual.dtype(), expected.dtype());
  EXPECT_EQ(actual.shape(), expected.shape());
  if (is_floating(expected.dtype())) {
    EXPECT_EQ(actual.to_floats(), expected.to_floats());
  } else {
    EXPECT_EQ(actual.to_ints(), expected.to_ints());
  }
}

// --- the mini checkpoints ---

TEST_F(SafetensorsTest, ReadsBertMini) {
  TensorFile f = read_safetensors(kAssets / "models/bert-mini/model.safetensors");
  EXPECT_EQ(f.metadata, (std::map<std::string, std::string>{{"format", "pt"}}));
  EXPECT_EQ(f.tensors.size(), 74u);
  for (const auto& [name, t] : f.tensors) EXPECT_EQ(t.dtype(), DType::F16) << name;
  const Tensor& emb = f.tensors.at("bert.embeddings.word_embeddings.weight");
  EXPECT_EQ(emb.shape(), (Shape{8192, 256}));
  EXPECT_TRUE(emb.is_contiguous());
  EXPECT_EQ(f.tensors.at("bert.embeddings.position_embeddings.weight").shape(), (Shape{512, 256}));
  EXPECT_EQ(f.tensors.at("bert.encoder.layer.0.intermediate.dense.weight").shape(), (Shape{1024, 256}));
  // First values, decoded independently with Python's struct module.
  std::vector<float> v = emb.slice(1, 0, 4).select(0, 0).to_floats();
  EXPECT_EQ(v,
            (std::vector<float>{-0.1549072265625f, 0.1260986328125f, -0.134033203125f, 0.0298309326171875f}));
}

TEST_F(SafetensorsTest, ReadsGpt2Mini) {
  auto tensors = load_checkpoint_tensors(kAssets / "models/gpt2-mini");
  EXPECT_EQ(tensors.size(), 52u);
  for (const auto& [name, t] : tensors) EXPECT_EQ(t.dtype(), DType::F16) << name;
  EXPECT_EQ(tensors.at("transformer.wte.weight").shape(), (Shape{8192, 256}));
  EXPECT_EQ(tensors.at("transformer.h.0.attn.c_attn.weight").shape(),
            (Shape{256, 768}));  // Conv1D: [in, out]
  EXPECT_EQ(tensors.at("transformer.h.3.mlp.c_proj.weight").shape(), (Shape{1024, 256}));
  std::vector<float> v = tensors.at("transformer.wte.weight").select(0, 0).slice(0, 0, 4).to_floats();
  EXPECT_EQ(
      v, (std::vector<float>{0.08770751953125f, 0.1063232421875f, -0.049102783203125f, -0.07379150390625f}));
}

TEST_F(SafetensorsTest, ReadsLlamaMini) {
  auto tensors = load_checkpoint_tensors(kAssets / "models/llama-mini");
  EXPECT_EQ(tensors.size(), 39u);
  for (const auto& [name, t] : tensors) EXPECT_EQ(t.dtype(), DType::BF16) << name;
  EXPECT_EQ(tensors.at("model.embed_tokens.weight").shape(), (Shape{8000, 256}));
  EXPECT_EQ(tensors.at("lm_head.weight").shape(), (Shape{8000, 256}));
  EXPECT_EQ(tensors.at("model.layers.0.self_attn.k_proj.weight").shape(),
            (Shape{128, 256}));  // 2 kv heads x 64
  EXPECT_EQ(tensors.at("model.layers.0.mlp.down_proj.weight").shape(), (Shape{256, 704}));
  std::vector<float> v = tensors.at("model.embed_tokens.weight").select(0, 0).slice(0, 0, 4).to_floats();
  EXPECT_EQ(v, (std::vector<float>{-0.027587890625f, -0.00165557861328125f, 0.0267333984375f,
                                   -0.005157470703125f}));
}

TEST_F(SafetensorsTest, TensorsAreViewsThatOutliveTheFileObject) {
  const fs::path source = kAssets / "models/bert-mini/model.safetensors";
  const std::string bytes = read_bytes(source);
  Tensor bias;
  {
    TensorFile f = read_safetensors(source);
    bias = f.tensors.at("bert.embeddings.LayerNorm.bias");
  }
  // The view still reads the mapping: its bytes are the file's bytes at the header's offsets.
  const nlohmann::json header = nlohmann::json::parse(header_text(source));
  const uint64_t begin = header["bert.embeddings.LayerNorm.bias"]["data_offsets"][0];
  const size_t data_start = 8 + header_text(source).size();
  ASSERT_EQ(bias.storage()->bytes, 512u);
  EXPECT_EQ(std::memcmp(bias.storage()->data, bytes.data() + data_start + begin, 512), 0);
  EXPECT_NE(bias.storage()->owner, nullptr);
}

TEST_F(SafetensorsTest, WritingIntoALoadedTensorLeavesTheFileAlone) {
  const fs::path p = dir_ / "w.safetensors";
  write_safetensors(p, {{"w", Tensor::from_floats({1, 2, 3, 4}, {2, 2})}});
  const std::string before = read_bytes(p);
  {
    TensorFile f = read_safetensors(p);
    f.tensors.at("w").fill_(7.0f);  // copy-on-write mapping: no crash, no change on disk
    EXPECT_EQ(f.tensors.at("w").to_floats(), (std::vector<float>{7, 7, 7, 7}));
  }
  EXPECT_EQ(read_bytes(p), before);
}

// The process's resident pages of mapped files (RssFile in /proc/self/status), in KiB.
int64_t resident_file_kib() {
  std::ifstream status("/proc/self/status");
  std::string line;
  while (std::getline(status, line))
    if (line.rfind("RssFile:", 0) == 0) return std::stoll(line.substr(8));
  return -1;
}

// Loading a checkpoint copies (or quantises) each weight, then lets the file's pages of it go:
// they leave the process, the values read back the same (from the file), and a tensor that is not a
// view of a file (a converted copy, our own memory) is left alone.
TEST_F(SafetensorsTest, ReleasedFilePagesLeaveTheProcessAndReadBackTheSame) {
  const fs::path p = dir_ / "big.safetensors";
  Generator gen(3);
  const Tensor written = Tensor::randn({1024, 2048}, gen);  // 8 MiB
  write_safetensors(p, {{"w", written}, {"d", Tensor::from_floats({1, 2, 3}, {3}).to(DType::F16)}});
  TensorFile f = read_safetensors(p);
  const Tensor& w = f.tensors.at("w");
  const int64_t before = resident_file_kib();
  ASSERT_GE(before, 0) << "no RssFile in /proc/self/status";
  EXPECT_EQ(w.to_floats(), written.to_floats());  // touches every page
  const int64_t touched = resident_file_kib();
  release_file_pages(w);
  const int64_t released = resident_file_kib();
  std::printf("RssFile: %lld KiB before, %lld read, %lld released\n", (long long)before, (long long)touched,
              (long long)released);
  EXPECT_GE(touched - released, 7 * 1024);        // nearly all of its 8 MiB
  EXPECT_EQ(w.to_floats(), written.to_floats());  // read again from the file

  const Tensor own = written.clone();
  release_file_pages(own);  // not a view of a file: untouched
  EXPECT_EQ(own.to_floats(), written.to_floats());
  release_file_pages(Tensor());
}

// --- writing ---

TEST_F(SafetensorsTest, RoundTripsEveryDtypeAndLayout) {
  std::map<std::string, Tensor> tensors;
  tensors["f32"] = Tensor::from_floats({1.5f, -2.25f, 3.0f, 1e-30f, 65504.0f, -0.0f}, {2, 3});
  tensors["f16"] = Tensor::from_floats({0.5f, -1.0f, 2.0f, 1024.0f}, {4}).to(DType::F16);
  tensors["bf16"] = Tensor::from_floats({0.1f, 3.0e38f, -7.0f}, {3, 1}).to(DType::BF16);
  tensors["i32"] = Tensor::from_ints({16777217, -2147483647 - 1, 2147483647, 0}, {2, 2}, DType::I32);
  tensors["i64"] = Tensor::from_ints({(int64_t(1) << 53) + 1, INT64_MIN, INT64_MAX}, {3}, DType::I64);
  tensors["scalar"] = Tensor::scalar(42.0f);
  tensors["empty"] = Tensor::zeros({0, 3});
  // Non-contiguous inputs are written in row-major order.
  Tensor base = Tensor::from_floats({0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11}, {3, 4});
  tensors["transposed"] = base.t();
  tensors["strided"] = base.slice(1, 0, 4, 2);
  Tensor ints = Tensor::from_ints({16777217, 2, 3, 16777219, 5, 6}, {2, 3}, DType::I32);
  tensors["i32_transposed"] = ints.t();
  Tensor halves = Tensor::from_floats({1, 2, 3, 4, 5, 6}, {2, 3}).to(DType::BF16);
  tensors["bf16_transposed"] = halves.t();
  ASSERT_FALSE(tensors["transposed"].is_contiguous());

  const std::map<std::string, std::string> metadata = {{"format", "pt"}, {"note", "quote \" and \\ and é"}};
  const fs::path p = dir_ / "all.safetensors";
  write_safetensors(p, tensors, metadata);
  TensorFile back = read_safetensors(p);
  EXPECT_EQ(back.metadata, metadata);
  ASSERT_EQ(back.tensors.size(), tensors.size());
  for (const auto& [name, t] : tensors) {
    SCOPED_TRACE(name);
    expect_same_tensor(t, back.tensors.at(name));
  }
  // Integers beyond float precision survive exactly, whatever the layout.
  const Tensor& i32 = back.tensors.at("i32_transposed");
  EXPECT_EQ(i32.shape(), (Shape{3, 2}));
  EXPECT_EQ(i32.data<int32_t>()[0], 16777217);
  EXPECT_EQ(i32.data<int32_t>()[1], 16777219);
  EXPECT_EQ(back.tensors.at("i64").data<int64_t>()[0], (int64_t(1) << 53) + 1);
  EXPECT_EQ(back.tensors.at("transposed").to_floats(),
            (std::vector<float>{0, 4, 8, 1, 5, 9, 2, 6, 10, 3, 7, 11}));
  EXPECT_EQ(back.tensors.at("strided").to_floats(), (std::vector<float>{0, 2, 4, 6, 8, 10}));
}

// Files written by Hugging Face's library (the assets and golden fixtures) are reproduced byte for byte.
TEST_F(SafetensorsTest, RewritesReferenceFilesByteForByte) {
  std::vector<fs::path> files = {kAssets / "models/bert-mini/model.safetensors",
                                 kAssets / "models/gpt2-mini/model.safetensors",
                                 kAssets / "models/llama-mini/model.safetensors",
                                 kTestData / "golden/bert-mini-base.safetensors",
                                 kTestData / "golden/adapters/llama-lora-all/adapter_model.safetensors",
                                 kTestData / "golden/adapters/gpt2-prompt/adapter_model.safetensors"};
  for (const fs::path& source : files) {
    SCOPED_TRACE(source.string());
    TensorFile f = read_safetensors(source);
    const fs::path copy = dir_ / "copy.safetensors";
    write_safetensors(copy, f.tensors, f.metadata);
    EXPECT_TRUE(read_bytes(copy) == read_bytes(source));
  }
}

// Known answers from the format's reference implementation.
TEST_F(SafetensorsTest, MatchesReferenceSerialisation) {
  const fs::path p = dir_ / "ref.safetensors";
  write_safetensors(p, {});
  EXPECT_EQ(read_bytes(p), file_image("{}      ", ""));

  write_safetensors(p, {}, {{"framework", "pt"}});
  EXPECT_EQ(read_bytes(p), file_image("{\"__metadata__\":{\"framework\":\"pt\"}}     ", ""));

  Tensor t = Tensor::from_floats({0, 1, 2, 3, 4, 5}, {1, 2, 3});
  std::string data(reinterpret_cast<const char*>(t.f32()), 24);
  write_safetensors(p, {{"attn.0", t}});  // 64 bytes: no padding needed
  EXPECT_EQ(read_bytes(p),
            file_image("{\"attn.0\":{\"dtype\":\"F32\",\"shape\":[1,2,3],\"data_offsets\":[0,24]}}", data));
  write_safetensors(p, {{"attn0", t.reshape({1, 1, 2, 3})}});  // 65 bytes: padded to 72
  EXPECT_EQ(
      read_bytes(p),
      file_image("{\"attn0\":{\"dtype\":\"F32\",\"shape\":[1,1,2,3],\"data_offsets\":[0,24]}}       ", data));
}

// Tensors are ordered as the reference writer orders them: wider dtypes first, then by name, so
// every tensor's data stays aligned to its element size.
TEST_F(SafetensorsTest, OrdersMixedDtypesLikeTheReference) {
  std::map<std::string, Tensor> tensors = {
      {"a_f16", Tensor::from_floats({1, 2, 3}, {3}).to(DType::F16)},
      {"b_f32", Tensor::from_floats({1}, {1})},
      {"c_i64", Tensor::from_ints({1, 2}, {2}, DType::I64)},
      {"d_bf16", Tensor::from_floats({1}, {1}).to(DType::BF16)},
      {"e_i32", Tensor::from_ints({1}, {1}, DType::I32)},
      {"a_f32", Tensor::from_floats({1, 2, 3}, {3})},
  };
  const fs::path p = dir_ / "mixed.safetensors";
  write_safetensors(p, tensors, {{"format", "pt"}});
  const std::string header = header_text(p);
  EXPECT_EQ(header.size() % 8, 0u);
  const size_t json_end = header.find_last_not_of(' ') + 1;
  EXPECT_EQ(header.substr(json_end), std::string(header.size() - json_end, ' '));

  const nlohmann::ordered_json parsed = nlohmann::ordered_json::parse(header);
  std::vector<std::string> order;
  for (const auto& [key, value] : parsed.items()) order.push_back(key);
  EXPECT_EQ(order, (std::vector<std::string>{"__metadata__", "c_i64", "a_f32", "b_f32", "e_i32", "d_bf16",
                                             "a_f16"}));
  EXPECT_EQ(parsed["c_i64"]["data_offsets"], nlohmann::ordered_json({0, 16}));
  EXPECT_EQ(parsed["a_f32"]["data_offsets"], nlohmann::ordered_json({16, 28}));
  EXPECT_EQ(parsed["b_f32"]["data_offsets"], nlohmann::ordered_json({28, 32}));
  EXPECT_EQ(parsed["e_i32"]["data_offsets"], nlohmann::ordered_json({32, 36}));
  EXPECT_EQ(parsed["d_bf16"]["data_offsets"], nlohmann::ordered_json({36, 38}));
  EXPECT_EQ(parsed["a_f16"]["data_offsets"], nlohmann::ordered_json({38, 44}));
  EXPECT_EQ(read_bytes(p).size(), 8 + header.size() + 44);
}

TEST_F(SafetensorsTest, WritesAtomically) {
  const fs::path p = dir_ / "model.safetensors";
  write_safetensors(p, {{"x", Tensor::from_floats({1}, {1})}});
  write_safetensors(p, {{"y", Tensor::from_floats({2, 3}, {2})}});  // replaces the old file
  std::vector<std::string> names;
  for (const auto& entry : fs::directory_iterator(dir_)) names.push_back(entry.path().filename().string());
  EXPECT_EQ(names, std::vector<std::string>{"model.safetensors"});  // no temporary left behind
  TensorFile f = read_safetensors(p);
  EXPECT_EQ(f.tensors.count("x"), 0u);
  EXPECT_EQ(f.tensors.at("y").to_floats(), (std::vector<float>{2, 3}));

  // A failed write leaves nothing behind and names the file.
  EXPECT_THROW(write_safetensors(dir_ / "missing/x.safetensors", {}), IoError);
  fs::create_directory(dir_ / "a_folder");
  try {
    write_safetensors(dir_ / "a_folder", {});
    ADD_FAILURE() << "renaming over a folder should fail";
  } catch (const IoError& e) {
    EXPECT_NE(std::string(e.what()).find("a_folder"), std::string::npos) << e.what();
  }
  names.clear();
  for (const auto& entry : fs::directory_iterator(dir_)) names.push_back(entry.path().filename().string());
  std::sort(names.begin(), names.end());
  EXPECT_EQ(names, (std::vector<std::string>{"a_folder", "model.safetensors"}));
}

TEST_F(SafetensorsTest, RejectsReservedNameAndUndefinedTensor) {
  EXPECT_THROW(write_safetensors(dir_ / "x.safetensors", {{"__metadata__", Tensor::scalar(1)}}), IoError);
  EXPECT_THROW(write_safetensors(dir_ / "x.safetensors", {{"t", Tensor()}}), IoError);
  EXPECT_FALSE(fs::exists(dir_ / "x.safetensors"));
}

// --- reading what other writers produce ---

TEST_F(SafetensorsTest, ConvertsF64ToF32) {
  const double values[3] = {1.5, -2.0, 1e-3};
  std::string data(reinterpret_cast<const char*>(values), 24);
  const fs::path p = dir_ / "f64.safetensors";
  write_bytes(p, file_image(R"({"d":{"dtype":"F64","shape":[3],"data_offsets":[0,24]}})", data));
  TensorFile f = read_safetensors(p);
  EXPECT_EQ(f.tensors.at("d").dtype(), DType::F32);
  EXPECT_EQ(f.tensors.at("d").to_floats(), (std::vector<float>{1.5f, -2.0f, 1e-3f}));
}

TEST_F(SafetensorsTest, ReadsUnpaddedHeadersAndGaps) {
  // A header of odd length leaves the F32 data misaligned; a gap of 4 bytes separates the two tensors.
  const float values[3] = {1.0f, 2.0f, 3.0f};
  std::string data(reinterpret_cast<const char*>(values), 4);
  data += std::string(4, '\0') + std::string(reinterpret_cast<const char*>(values + 1), 8);
  std::string header =
      R"({"a":{"dtype":"F32","shape":[1],"data_offsets":[0,4]},"b":{"dtype":"F32","shape":[2],"data_offsets":[8,16]}})";
  if (header.size() % 2 == 0) header += ' ';  // trailing spaces are valid JSON
  ASSERT_NE((8 + header.size()) % 4, 0u);
  const fs::path p = dir_ / "odd.safetensors";
  write_bytes(p, file_image(header, data));
  TensorFile f = read_safetensors(p);
  EXPECT_EQ(f.tensors.at("a").to_floats(), (std::vector<float>{1.0f}));
  EXPECT_EQ(f.tensors.at("b").to_floats(), (std::vector<float>{2.0f, 3.0f}));
  // Misaligned data was copied to aligned memory rather than viewed.
  EXPECT_EQ(reinterpret_cast<uintptr_t>(f.tensors.at("b").data<float>()) % alignof(float), 0u);
}

// --- damaged files ---

TEST_F(SafetensorsTest, RejectsTruncatedFile) {
  expect_corrupt("", {"shorter than the 8-byte header length"});
  expect_corrupt("abc", {"3 bytes", "shorter than the 8-byte header length"});
}

TEST_F(SafetensorsTest, RejectsHeaderPastTheEnd) {
  std::string image = file_image(R"({"a":{"dtype":"F32","shape":[1],"data_offsets":[0,4]}})", "abcd");
  image[0] = char(200);  // header length far beyond the file
  expect_corrupt(image, {"header length", "runs past the end of the file"});
  uint64_t huge = UINT64_MAX;
  std::memcpy(image.data(), &huge, 8);
  expect_corrupt(image, {"runs past the end of the file"});
}

TEST_F(SafetensorsTest, RejectsTruncatedData) {
  // A real checkpoint cut short: its last tensor's offsets now point past the data section.
  std::string bytes = read_bytes(kAssets / "models/bert-mini/model.safetensors");
  bytes.resize(bytes.size() - 100);
  expect_corrupt(bytes, {"tensor '", "run past the end of the data section"});
}

TEST_F(SafetensorsTest, RejectsBadHeaders) {
  expect_corrupt(file_image("{\"a\": garbage", ""), {"header is not valid JSON"});
  expect_corrupt(file_image("\xff\xfe{}", ""), {"header is not valid JSON"});
  expect_corrupt(file_image("[1, 2]  ", ""), {"header is not a JSON object"});
  expect_corrupt(file_image(R"({"__metadata__":{"n":1}})", ""), {"'__metadata__'", "'n'", "not a string"});
  expect_corrupt(file_image(R"({"t":[1]})", ""), {"tensor 't'", "not a JSON object"});
}

TEST_F(SafetensorsTest, RejectsBadEntries) {
  const std::string data(64, '\0');
  expect_corrupt(file_image(R"({"w":{"shape":[2],"data_offsets":[0,8]}})", data),
                 {"tensor 'w'", "missing 'dtype'"});
  expect_corrupt(file_image(R"({"w":{"dtype":"F32","data_offsets":[0,8]}})", data),
                 {"tensor 'w'", "missing 'shape'"});
  expect_corrupt(file_image(R"({"w":{"dtype":"F32","shape":[2]}})", data),
                 {"tensor 'w'", "missing 'data_offsets'"});
  expect_corrupt(file_image(R"({"w":{"dtype":"F32","shape":[2],"data_offsets":[8,0]}})", data),
                 {"tensor 'w'", "[8, 0]", "begin is after end"});
  expect_corrupt(file_image(R"({"w":{"dtype":"F32","shape":[2],"data_offsets":[60,68]}})", data),
                 {"tensor 'w'", "run past the end of the data section (64 bytes)"});
  expect_corrupt(file_image(R"({"w":{"dtype":"F32","shape":[2,3],"data_offsets":[0,20]}})", data),
                 {"tensor 'w'", "byte size 20 does not match shape [2, 3] of F32 (24 bytes)"});
  expect_corrupt(file_image(R"({"w":{"dtype":"F32","shape":[2,-3],"data_offsets":[0,24]}})", data),
                 {"tensor 'w'", "negative size -3"});
  expect_corrupt(file_image(R"({"w":{"dtype":"F32","shape":[2],"data_offsets":[0]}})", data),
                 {"tensor 'w'", "'data_offsets' must be two non-negative integers"});
  expect_corrupt(file_image(R"({"w":{"dtype":"Q4","shape":[2],"data_offsets":[0,8]}})", data),
                 {"tensor 'w'", "unknown dtype 'Q4'"});
  expect_corrupt(file_image(R"({"mask":{"dtype":"BOOL","shape":[2],"data_offsets":[0,2]}})", data),
                 {"tensor 'mask'", "dtype BOOL is not supported"});
  expect_corrupt(file_image(R"({"q":{"dtype":"I8","shape":[2],"data_offsets":[0,2]}})", data),
                 {"tensor 'q'", "dtype I8 is not supported"});
  expect_corrupt(
      file_image(R"({"w":{"dtype":"F32","shape":[4611686018427387904,8],"data_offsets":[0,8]}})", data),
      {"tensor 'w'", "too large"});
}

TEST_F(SafetensorsTest, RejectsOverlappingTensors) {
  const std::string data(32, '\0');
  expect_corrupt(file_image(R"({"a":{"dtype":"F32","shape":[4],"data_offsets":[0,16]},)"
                            R"("b":{"dtype":"F32","shape":[4],"data_offsets":[8,24]}})",
                            data),
                 {"tensor 'b'", "overlap tensor 'a' [0, 16]"});
}

// --- checkpoint folders ---

TEST_F(SafetensorsTest, LoadsShardedCheckpoint) {
  write_safetensors(dir_ / "model-00001-of-00002.safetensors",
                    {{"emb", Tensor::from_floats({1, 2}, {2})}, {"layer.0", Tensor::from_floats({3}, {1})}});
  write_safetensors(dir_ / "model-00002-of-00002.safetensors",
                    {{"layer.1", Tensor::from_ints({4, 5}, {2}, DType::I64)}, {"extra", Tensor::scalar(9)}});
  nlohmann::json index = {{"metadata", {{"total_size", 36}}},
                          {"weight_map",
                           {{"emb", "model-00001-of-00002.safetensors"},
                            {"layer.0", "model-00001-of-00002.safetensors"},
                            {"layer.1", "model-00002-of-00002.safetensors"}}}};
  std::ofstream(dir_ / "model.safetensors.index.json") << index.dump(2);

  for (const fs::path& where : {dir_, dir_ / "model.safetensors.index.json"}) {
    auto tensors = load_checkpoint_tensors(where);
    ASSERT_EQ(tensors.size(), 3u);  // only what the index maps
    EXPECT_EQ(tensors.at("emb").to_floats(), (std::vector<float>{1, 2}));
    EXPECT_EQ(tensors.at("layer.0").to_floats(), (std::vector<float>{3}));
    EXPECT_EQ(tensors.at("layer.1").to_ints(), (std::vector<int64_t>{4, 5}));
  }

  // A direct file path works too.
  EXPECT_EQ(load_checkpoint_tensors(dir_ / "model-00002-of-00002.safetensors").size(), 2u);

  // A tensor the index places in a shard that does not hold it.
  index["weight_map"]["ghost"] = "model-00001-of-00002.safetensors";
  std::ofstream(dir_ / "model.safetensors.index.json") << index.dump(2);
  try {
    load_checkpoint_tensors(dir_);
    ADD_FAILURE() << "no error for a tensor missing from its shard";
  } catch (const IoError& e) {
    EXPECT_NE(std::string(e.what()).find("'ghost'"), std::string::npos) << e.what();
  }

  // A missing shard is named.
  index["weight_map"].erase("ghost");
  std::ofstream(dir_ / "model.safetensors.index.json") << index.dump(2);
  fs::remove(dir_ / "model-00002-of-00002.safetensors");
  try {
    load_checkpoint_tensors(dir_);
    ADD_FAILURE() << "no error for a missing shard";
  } catch (const IoError& e) {
    const std::string msg = e.what();
    EXPECT_NE(msg.find("model.safetensors.index.json"), std::string::npos) << msg;
    EXPECT_NE(msg.find("shard 'model-00002-of-00002.safetensors'"), std::string::npos) << msg;
    EXPECT_NE(msg.find("not found"), std::string::npos) << msg;
  }
}

TEST_F(SafetensorsTest, ReportsMissingCheckpointAndBadIndex) {
  try {
    load_checkpoint_tensors(dir_);
    ADD_FAILURE() << "no error for an empty folder";
  } catch (const IoError& e) {
    EXPECT_NE(std::string(e.what()).find("no model.safetensors or model.safetensors.index.json"),
              std::string::npos)
        << e.what();
  }
  EXPECT_THROW(load_checkpoint_tensors(dir_ / "nothing-here"), IoError);
  std::ofstream(dir_ / "model.safetensors.index.json") << "{\"weight_map\": ";
  EXPECT_THROW(load_checkpoint_tensors(dir_), IoError);
  std::ofstream(dir_ / "model.safetensors.index.json") << "{\"metadata\": {}}";
  try {
    load_checkpoint_tensors(dir_);
    ADD_FAILURE() << "no error for an index without weight_map";
  } catch (const IoError& e) {
    EXPECT_NE(std::string(e.what()).find("'weight_map'"), std::string::npos) << e.what();
  }
}

}  // namespace
