// The quantised formats (deltatune/quantize.h) against their definitions, written out again here from
// bitsandbytes' and ggml's sources: known bytes, random blocks, adversarial blocks (all zero, one
// outlier, negatives only), NaN/Inf refused; and ops::quantized_linear (forward and the input's
// gradient) against float32 linear on the dequantised weight, on both backends.
#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <cstdio>
#include <vector>

#include "deltatune/backend.h"
#include "deltatune/error.h"
#include "deltatune/ops.h"
#include "deltatune/quantize.h"
#include "ops/cpu/dequantize.h"

using namespace deltatune;
namespace O = deltatune::ops;

namespace {

const std::vector<QuantFormat>& kFormats = all_quant_formats();

std::vector<float> dequantized(const QuantizedMatrix& q) {
  std::vector<float> out(size_t(q.rows * q.cols));
  q.dequantize_rows(0, q.rows, out.data());
  return out;
}

std::vector<float> random_values(int64_t n, uint64_t seed, float std = 1.0f) {
  Generator gen(seed);
  std::vector<float> v(static_cast<size_t>(n));
  for (float& x : v) x = std * gen.normal();
  return v;
}

// The nearest codebook entry to x (QLoRA's definition of NF4 rounding).
float nearest_nf4(float x) {
  float best = kNf4Codebook[0];
  for (float c : kNf4Codebook)
    if (std::fabs(x - c) < std::fabs(x - best)) best = c;
  return best;
}

// The dynamic map's entry nearest x, by a scan (ties: the first).
float nearest_dynamic(float x) {
  float best = dynamic_map().front();
  for (float c : dynamic_map())
    if (std::fabs(x - c) < std::fabs(x - best)) best = c;
  return best;
}

// nf4-dq's absmax of each block of 64 (the matrix flattened), from QLoRA's double quantisation: the
// absmaxes less their mean, in blocks of 256 scaled by their largest magnitude to the dynamic map.
std::vector<float> double_quantised_absmax(const std::vector<float>& w) {
  std::vector<float> absmax((w.size() + 63) / 64, 0.0f);
  for (size_t i = 0; i < w.size(); ++i) absmax[i / 64] = std::max(absmax[i / 64], std::fabs(w[i]));
  double sum = 0;
  for (float a : absmax) sum += a;
  const float offset = float(sum / double(absmax.size()));
  std::vector<float> out(absmax.size());
  for (size_t b = 0; b < absmax.size(); b += 256) {
    const size_t end = std::min(absmax.size(), b + 256);
    float amax = 0;
    for (size_t i = b; i < end; ++i) amax = std::max(amax, std::fabs(absmax[i] - offset));
    for (size_t i = b; i < end; ++i)
      out[i] =
          (amax == 0 ? nearest_dynamic(0.0f) : nearest_dynamic((absmax[i] - offset) * (1.0f / amax))) * amax +
          offset;
  }
  return out;
}

// Each format's dequantised value of w[i] in a matrix of `cols` columns, from the definitions.
std::vector<float> expected(QuantFormat f, const std::vector<float>& w, int64_t cols) {
  const int64_t n = int64_t(w.size());
  std::vector<float> out(w.size());
  const std::vector<float> dq_absmax =
      f == QuantFormat::NF4DoubleQuant ? double_quantised_absmax(w) : std::vector<float>{};
  auto block_of = [&](int64_t i, int64_t size, bool by_row) {  // [begin, end) of i's block
    const int64_t base = by_row ? (i / cols) * cols : 0, rel = i - base;
    const int64_t begin = base + rel / size * size;
    return std::pair<int64_t, int64_t>{begin, std::min({begin + size, n, by_row ? base + cols : n})};
  };
  for (int64_t i = 0; i < n; ++i) {
    const float x = w[size_t(i)];
    if (f == QuantFormat::NF4) {
      auto [b, e] = block_of(i, 64, false);
      float absmax = 0;
      for (int64_t j = b; j < e; ++j) absmax = std::max(absmax, std::fabs(w[size_t(j)]));
      out[size_t(i)] = absmax == 0 ? 0.0f : nearest_nf4(x * (1.0f / absmax)) * absmax;
    } else if (f == QuantFormat::NF4DoubleQuant) {  // nf4's code, the block's scale double-quantised
      auto [b, e] = block_of(i, 64, false);
      float absmax = 0;
      for (int64_t j = b; j < e; ++j) absmax = std::max(absmax, std::fabs(w[size_t(j)]));
      out[size_t(i)] = absmax == 0 ? 0.0f : nearest_nf4(x * (1.0f / absmax)) * dq_absmax[size_t(i / 64)];
    } else if (f == QuantFormat::Int8) {
      auto [b, e] = block_of(i, cols, true);
      float absmax = 0;
      for (int64_t j = b; j < e; ++j) absmax = std::max(absmax, std::fabs(w[size_t(j)]));
      out[size_t(i)] = absmax == 0 ? 0.0f : std::nearbyint(x * (127.0f / absmax)) * (absmax / 127.0f);
    } else {
      auto [b, e] = block_of(i, 32, true);
      float amax = 0, max = 0;
      for (int64_t j = b; j < e; ++j)
        if (std::fabs(w[size_t(j)]) > amax) amax = std::fabs(w[size_t(j)]), max = w[size_t(j)];
      if (f == QuantFormat::Q8_0) {
        const float d = amax / 127.0f;
        out[size_t(i)] = d == 0 ? 0.0f : std::round(x * (1.0f / d)) * f16_to_f32(f32_to_f16(d));
      } else {
        const float d = max / -8.0f;
        const int q = d == 0 ? 8 : std::min(15, int(x * (1.0f / d) + 8.5f));
        out[size_t(i)] = float(q - 8) * f16_to_f32(f32_to_f16(d));
      }
    }
  }
  return out;
}

void expect_matches_definition(QuantFormat f, const std::vector<float>& w, int64_t rows, int64_t cols) {
  const QuantizedMatrix q = quantize(w.data(), rows, cols, f);
  const std::vector<float> got = dequantized(q), want = expected(f, w, cols);
  for (size_t i = 0; i < w.size(); ++i)
    ASSERT_NEAR(got[i], want[i], 1e-6f * std::fabs(want[i]))
        << quant_format_name(f) << " element " << i << " (" << w[i] << ")";
}

}  // namespace

TEST(QuantFormats, NamesRoundTripAndUnknownIsRefused) {
  for (QuantFormat f : kFormats) EXPECT_EQ(parse_quant_format(quant_format_name(f)), f);
  EXPECT_FALSE(parse_quant_format("q4_k").has_value());
}

// Bytes worked out by hand from bitsandbytes' dQuantizeNF4 and ggml's quantize_row_q{4,8}_0_ref.
TEST(QuantFormats, KnownBytes) {
  const std::vector<float> nf4_in = {1.0f, -1.0f, 0.0f, 0.5f};
  const QuantizedMatrix nf4 = quantize(nf4_in.data(), 1, 4, QuantFormat::NF4);
  EXPECT_EQ(nf4.data, (std::vector<uint8_t>{0xF0, 0x7C}));  // codes 15, 0, 7, 12: the first high
  EXPECT_EQ(nf4.scales, (std::vector<float>{1.0f}));

  std::vector<float> q4_in(32);
  for (int j = 0; j < 32; ++j) q4_in[size_t(j)] = float(j - 16);
  const QuantizedMatrix q4 = quantize(q4_in.data(), 1, 32, QuantFormat::Q4_0);
  ASSERT_EQ(q4.data.size(), 18u);
  EXPECT_EQ(q4.data[0] | (q4.data[1] << 8), 0x4000);  // d = -16 / -8 = 2 as float16
  EXPECT_EQ(q4.data[2], 0x80);                        // element 0 -> 0 (low), element 16 -> 8 (high)
  EXPECT_EQ(q4.data[17], 0xF8);                       // element 15 (-1) -> 8, element 31 -> min(15, 16)
  EXPECT_EQ(dequantized(q4)[31], 14.0f);

  std::vector<float> q8_in(32, 0.0f);
  q8_in[0] = 127.0f;
  q8_in[1] = -63.5f;
  const QuantizedMatrix q8 = quantize(q8_in.data(), 1, 32, QuantFormat::Q8_0);
  ASSERT_EQ(q8.data.size(), 34u);
  EXPECT_EQ(q8.data[0] | (q8.data[1] << 8), 0x3C00);  // d = 1
  EXPECT_EQ(int8_t(q8.data[2]), 127);
  EXPECT_EQ(int8_t(q8.data[3]), -64);  // roundf: half away from zero
}

TEST(QuantFormats, RandomBlocksMatchTheDefinitions) {
  // 7 x 100: rows no multiple of 32 (padded ggml blocks) and NF4 blocks of 64 across rows.
  const std::vector<float> w = random_values(700, 11, 0.05f);
  for (QuantFormat f : kFormats) expect_matches_definition(f, w, 7, 100);
}

TEST(QuantFormats, AdversarialBlocks) {
  const std::vector<float> zeros(128, 0.0f);
  std::vector<float> outlier = random_values(128, 3, 0.01f);
  outlier[5] = 1000.0f;
  std::vector<float> negatives = random_values(128, 5);
  for (float& x : negatives) x = -std::fabs(x) - 0.01f;
  for (QuantFormat f : kFormats) {
    const QuantizedMatrix z = quantize(zeros.data(), 2, 64, f);
    for (float v : dequantized(z)) EXPECT_EQ(v, 0.0f) << quant_format_name(f);
    for (const auto* w : {&outlier, &negatives}) expect_matches_definition(f, *w, 2, 64);
    // The value of largest magnitude comes back (to float16's precision for ggml's scales).
    EXPECT_NEAR(dequantized(quantize(outlier.data(), 2, 64, f))[5], 1000.0f, 1.0f) << quant_format_name(f);
    const QuantizedMatrix neg = quantize(negatives.data(), 2, 64, f);
    const std::vector<float> back = dequantized(neg);
    for (size_t i = 0; i < back.size(); ++i) EXPECT_LE(back[i], 0.0f) << quant_format_name(f) << " " << i;
  }
}

// The products' tile decoders (AVX-512, AVX2, plain: each the CPU can run) give the definition's bits
// for any tile: whole nf4 blocks and blocks cut by the tile (rows of 100 and 77 values start mid-block
// and, at odd lengths, mid-byte), whole and cut ggml blocks.
TEST(QuantFormats, TileDecodersGiveTheDefinitionsBitsOnEveryInstructionSet) {
  int sets_run = 0;
  for (const char* set : {"avx512", "avx2", "baseline"}) {
    for (const auto& [rows, cols] :
         std::vector<std::pair<int64_t, int64_t>>{{9, 100}, {7, 77}, {3, 256}, {5, 1}}) {
      const std::vector<float> w = random_values(rows * cols, 17 + uint64_t(cols), 0.05f);
      for (QuantFormat f : kFormats) {
        const QuantizedMatrix q = quantize(w.data(), rows, cols, f);
        const std::vector<float> whole = dequantized(q);
        for (int64_t row0 = 0; row0 < rows; ++row0)
          for (int64_t count : {int64_t(1), rows - row0}) {
            std::vector<float> tile(size_t(count * cols), -1.0f);
            if (!O::dequantize_tile_using(set, q, row0, count, tile.data())) continue;
            ++sets_run;
            for (int64_t i = 0; i < count * cols; ++i)
              ASSERT_EQ(tile[size_t(i)], whole[size_t(row0 * cols + i)])
                  << set << " " << quant_format_name(f) << " " << rows << "x" << cols << " rows from " << row0
                  << ", value " << i;
          }
      }
    }
  }
  EXPECT_GT(sets_run, 0);
  EXPECT_TRUE(O::dequantize_tile_using("baseline",
                                       quantize(std::vector<float>(4, 1.0f).data(), 2, 2, QuantFormat::NF4),
                                       0, 2, std::vector<float>(4).data()));
  EXPECT_FALSE(O::dequantize_tile_using("sse9",
                                        quantize(std::vector<float>(4, 1.0f).data(), 2, 2, QuantFormat::NF4),
                                        0, 2, std::vector<float>(4).data()));
  std::printf("tile decoder on this CPU: %s\n", O::dequantize_isa());
}

TEST(QuantFormats, ErrorIsBoundedByHalfAStep) {
  const std::vector<float> w = random_values(64 * 64, 17);
  for (QuantFormat f : {QuantFormat::Int8, QuantFormat::Q8_0}) {
    const std::vector<float> back = dequantized(quantize(w.data(), 64, 64, f));
    for (size_t i = 0; i < w.size(); ++i) EXPECT_LE(std::fabs(back[i] - w[i]), 0.03f) << quant_format_name(f);
  }
}

TEST(QuantFormats, NonFiniteWeightsAreRefused) {
  std::vector<float> w(12, 0.5f);
  w[6] = std::nanf("");
  for (QuantFormat f : kFormats) {
    try {
      quantize(w.data(), 3, 4, f);
      FAIL() << "a NaN was quantised";
    } catch (const ConfigError& e) {
      EXPECT_NE(std::string(e.what()).find("NaN at row 1, column 2"), std::string::npos) << e.what();
    }
  }
  w[6] = -INFINITY;
  EXPECT_THROW(quantize(w.data(), 3, 4, QuantFormat::NF4), ConfigError);
}

// bitsandbytes' create_dynamic_map(signed=True): 2^i means of linspace(0.1, 1, 2^i + 1) for i = 0..6,
// each times ±10^(i - 6), then 0 and 1.
TEST(QuantFormats, DynamicMapIsBitsandbytes) {
  const std::vector<float>& map = dynamic_map();
  ASSERT_EQ(map.size(), 256u);
  EXPECT_TRUE(std::is_sorted(map.begin(), map.end()));
  EXPECT_EQ(map.back(), 1.0f);
  EXPECT_EQ(std::count(map.begin(), map.end(), 0.0f), 1);
  for (float v : map)  // symmetric but for 1
    if (v != 1.0f) EXPECT_NE(std::find(map.begin(), map.end(), -v), map.end()) << v;
  EXPECT_FLOAT_EQ(*std::upper_bound(map.begin(), map.end(), 0.0f), 0.55e-6f);  // i = 0
  // i = 6: the 64 means of linspace(0.1, 1, 65); the largest is (0.9859375 + 1) / 2.
  EXPECT_FLOAT_EQ(map.front(), -0.99296875f);
  EXPECT_FLOAT_EQ(map[254], 0.99296875f);
}

TEST(QuantFormats, DoubleQuantKeepsNf4CodesAndStoresScalesIn8Bits) {
  const std::vector<float> w = random_values(64 * 600, 23, 0.02f);  // 600 blocks: 3 nested blocks
  const QuantizedMatrix nf4 = quantize(w.data(), 64, 600, QuantFormat::NF4);
  const QuantizedMatrix dq = quantize(w.data(), 64, 600, QuantFormat::NF4DoubleQuant);
  EXPECT_EQ(dq.data, nf4.data);  // the codes come from the true absmax, as bitsandbytes'
  EXPECT_TRUE(dq.scales.empty());
  EXPECT_EQ(dq.scale_codes.size(), 600u);
  EXPECT_EQ(dq.scale_absmax.size(), 3u);
  // Each scale within the dynamic map's step near it (under 1% of the block's spread about the mean).
  for (int64_t b = 0; b < 600; ++b)
    EXPECT_NEAR(dq.nf4_block_scale(b), nf4.scales[size_t(b)], 0.01f * dq.scale_absmax[size_t(b / 256)]) << b;
  expect_matches_definition(QuantFormat::NF4DoubleQuant, w, 64, 600);
}

TEST(QuantFormats, SizesAreTheFormats) {
  const std::vector<float> w = random_values(64 * 128, 2);
  EXPECT_EQ(quantize(w.data(), 64, 128, QuantFormat::NF4).bytes(), 64u * 128 / 2 + 128 * 4);
  EXPECT_EQ(quantize(w.data(), 64, 128, QuantFormat::Int8).bytes(), 64u * 128 + 64 * 4);
  EXPECT_EQ(quantize(w.data(), 64, 128, QuantFormat::Q8_0).bytes(), 64u * 4 * 34);
  EXPECT_EQ(quantize(w.data(), 64, 128, QuantFormat::Q4_0).bytes(), 64u * 4 * 18);
  // 128 blocks: a code each, one nested block's absmax, the mean.
  EXPECT_EQ(quantize(w.data(), 64, 128, QuantFormat::NF4DoubleQuant).bytes(), 64u * 128 / 2 + 128 + 4 + 4);
}

// Forward and input gradient equal float32 linear on the dequantised weight, on both backends,
// with a weight of several dequantised tiles (2048 columns: 32 rows a tile).
TEST(QuantizedLinear, MatchesFloatLinearOnTheDequantisedWeight) {
  const int64_t out = 80, in = 2048;
  const std::vector<float> wv = random_values(out * in, 23, 0.02f);
  for (QuantFormat f : kFormats)
    for (O::BackendKind kind : {O::BackendKind::Cpu, O::BackendKind::Reference}) {
      O::ScopedBackend use(kind);
      auto q = std::make_shared<const QuantizedMatrix>(quantize(wv.data(), out, in, f));
      const Tensor w = Tensor::from_floats(dequantized(*q), {out, in});
      Generator gen(5);
      Tensor x = Tensor::randn({2, 3, in}, gen).set_requires_grad(true);
      Tensor bias = Tensor::randn({out}, gen).set_requires_grad(true);
      Tensor xr = x.detach().set_requires_grad(true), br = bias.detach().set_requires_grad(true);
      const Tensor g = Tensor::randn({2, 3, out}, gen);
      Tensor y = O::quantized_linear(x, q, bias), yr = O::linear(xr, w, br);
      O::sum_all(O::mul(y, g)).backward();
      O::sum_all(O::mul(yr, g)).backward();
      const auto a = y.to_floats(), b = yr.to_floats();
      for (size_t i = 0; i < a.size(); ++i)
        ASSERT_NEAR(a[i], b[i], 1e-4f) << quant_format_name(f) << " y " << i;
      const auto ga = x.grad().to_floats(), gb = xr.grad().to_floats();
      for (size_t i = 0; i < ga.size(); ++i)
        ASSERT_NEAR(ga[i], gb[i], 1e-4f) << quant_format_name(f) << " gx " << i;
      const auto gba = bias.grad().to_floats(), gbb = br.grad().to_floats();
      for (size_t i = 0; i < gba.size(); ++i) ASSERT_NEAR(gba[i], gbb[i], 1e-5f);
    }
}

// --bf16 with a quantised base (QLoRA's bfloat16 compute): the tiles go to the AVX-512 BF16 kernel, as
// a float weight of that size would through ops::linear. Forward and input gradient match linear on the
// dequantised weight at the same precision (both round the weight and the input to bfloat16, sum in
// float32), and differ from the float32 products (the kernel really ran). 300 x 700: several tiles.
TEST(QuantizedLinear, Bf16PrecisionRunsTheTilesOnTheBf16Kernel) {
  if (!O::bf16_linear_available()) GTEST_SKIP() << "this CPU has no AVX-512 BF16";
  const int64_t out = 300, in = 700;
  const std::vector<float> wv = random_values(out * in, 29, 0.02f);
  auto q = std::make_shared<const QuantizedMatrix>(quantize(wv.data(), out, in, QuantFormat::NF4));
  const Tensor w = Tensor::from_floats(dequantized(*q), {out, in});
  Generator gen(6);
  const Tensor x0 = Tensor::randn({5, in}, gen), g = Tensor::randn({5, out}, gen);
  auto run = [&](O::MatmulPrecision precision, bool quantised) {
    O::set_matmul_precision(precision);
    Tensor x = x0.detach().set_requires_grad(true);
    Tensor y = quantised ? O::quantized_linear(x, q) : O::linear(x, w);
    O::sum_all(O::mul(y, g)).backward();
    O::set_matmul_precision(O::MatmulPrecision::Exact);
    std::vector<float> all = y.to_floats(), gx = x.grad().to_floats();
    all.insert(all.end(), gx.begin(), gx.end());
    return all;
  };
  const std::vector<float> mine = run(O::MatmulPrecision::Bf16, true),
                           linear = run(O::MatmulPrecision::Bf16, false),
                           exact = run(O::MatmulPrecision::Exact, true);
  float largest = 0, from_exact = 0;
  for (size_t i = 0; i < mine.size(); ++i) {
    largest = std::max(largest, std::fabs(exact[i]));
    ASSERT_NEAR(mine[i], linear[i], 1e-4f * (1 + std::fabs(linear[i]))) << i;
    from_exact = std::max(from_exact, std::fabs(mine[i] - exact[i]));
  }
  EXPECT_GT(from_exact, 1e-4f * largest);  // the inputs were rounded to bfloat16
  EXPECT_LT(from_exact, 2e-2f * largest);
}

TEST(QuantizedLinear, RefusesAMismatchedInput) {
  const std::vector<float> wv = random_values(8 * 32, 1);
  auto q = std::make_shared<const QuantizedMatrix>(quantize(wv.data(), 8, 32, QuantFormat::Q8_0));
  EXPECT_THROW(O::quantized_linear(Tensor::zeros({2, 31}), q), ShapeError);
  EXPECT_THROW(O::quantized_linear(Tensor::zeros({2, 32}), q, Tensor::zeros({7})), ShapeError);
}
