// The small helpers several parts of the library share: the float32 contiguous form kernels read,
// PEFT's module-name suffix rule, and the SVG writer behind both plots.
#include <gtest/gtest.h>

#include "delta/module_names.h"
#include "deltatune/sweep.h"
#include "deltatune/trainer.h"
#include "ops/f32_contiguous.h"
#include "train/svg.h"

using namespace deltatune;

// --- f32_contiguous: one float32, contiguous form for every kernel ---

TEST(F32Contiguous, ConvertsAndKeepsValuesOffTheTape) {
  Tensor bf = Tensor::from_floats({1.5f, -2.0f, 3.25f, 0.0f}, {2, 2}).to(DType::BF16);
  bf.set_requires_grad(true);
  const Tensor c = ops::f32_contiguous(bf);
  EXPECT_EQ(c.dtype(), DType::F32);
  EXPECT_TRUE(c.is_contiguous());
  EXPECT_EQ(c.shape(), (Shape{2, 2}));
  EXPECT_FALSE(c.requires_grad());  // made under NoGradGuard: the calling op records its own backward
  const std::vector<float> want{1.5f, -2.0f, 3.25f, 0.0f};
  EXPECT_EQ(std::vector<float>(c.f32(), c.f32() + 4), want);
}

TEST(F32Contiguous, MakesATransposedViewContiguous) {
  const Tensor t = Tensor::from_floats({1, 2, 3, 4, 5, 6}, {2, 3}).transpose(0, 1);  // [3, 2], strided
  ASSERT_FALSE(t.is_contiguous());
  const Tensor c = ops::f32_contiguous(t);
  EXPECT_TRUE(c.is_contiguous());
  const std::vector<float> want{1, 4, 2, 5, 3, 6};
  EXPECT_EQ(std::vector<float>(c.f32(), c.f32() + 6), want);
}

// --- PEFT's module-name rule ---

TEST(ModuleNames, ExactNameSelects) {
  EXPECT_TRUE(delta::selects_module("layers.0.self_attn.q_proj", "layers.0.self_attn.q_proj"));
  EXPECT_TRUE(delta::selects_module("classifier", "classifier"));
}

TEST(ModuleNames, DottedSuffixOfWholeComponentsSelects) {
  EXPECT_TRUE(delta::selects_module("layers.0.self_attn.q_proj", "q_proj"));
  EXPECT_TRUE(delta::selects_module("layers.0.self_attn.q_proj", "self_attn.q_proj"));
  EXPECT_TRUE(delta::selects_module("layers.0.self_attn.q_proj", "0.self_attn.q_proj"));
}

TEST(ModuleNames, PartialWordsAndOtherPlacesDoNotSelect) {
  EXPECT_FALSE(delta::selects_module("layers.0.self_attn.q_proj", "proj"));  // part of a component
  EXPECT_FALSE(delta::selects_module("layers.0.self_attn.q_proj", "_proj"));
  EXPECT_FALSE(delta::selects_module("layers.0.self_attn.q_proj", ".q_proj"));    // not a whole component
  EXPECT_FALSE(delta::selects_module("layers.0.self_attn.q_proj", "self_attn"));  // a prefix, not a suffix
  EXPECT_FALSE(delta::selects_module("q_proj", "self_attn.q_proj"));              // longer than the path
  EXPECT_FALSE(delta::selects_module("attention.output.dense", "output.dens"));
  EXPECT_FALSE(delta::selects_module("layers.0.mlp.c_fc", ""));
}

TEST(ModuleNames, StripSuffixNeedsSomethingLeft) {
  EXPECT_EQ(delta::strip_suffix("encoder.query.lora_A.weight", ".lora_A.weight"), "encoder.query");
  EXPECT_EQ(delta::strip_suffix("x.base_layer.bias", ".base_layer.bias"), "x");
  EXPECT_EQ(delta::strip_suffix(".bias", ".bias"), std::nullopt);  // nothing before it
  EXPECT_EQ(delta::strip_suffix("dense.weight", ".bias"), std::nullopt);
  EXPECT_EQ(delta::strip_suffix("dense.weight", ""), std::nullopt);  // an empty suffix names nothing
  EXPECT_EQ(delta::strip_suffix("w", "lw"), std::nullopt);
}

// --- the SVG writer both plots use ---

TEST(Svg, EscapesMarkupCharacters) {
  EXPECT_EQ(train::svg::escape("f1 <&> acc"), "f1 &lt;&amp;&gt; acc");
  EXPECT_EQ(train::svg::escape("plain"), "plain");
}

TEST(Svg, WritesElementsWithAttributesInOrder) {
  EXPECT_EQ(train::svg::element("line", {{"x1", "1"}, {"y1", "2.5"}, {"stroke", "#eee"}}),
            "<line x1=\"1\" y1=\"2.5\" stroke=\"#eee\"/>");
  EXPECT_EQ(train::svg::element("text", {{"x", "3"}}, "step"), "<text x=\"3\">step</text>");
  EXPECT_EQ(train::svg::element("text", {{"x", "3"}}, ""), "<text x=\"3\"></text>");  // a body, even empty
  EXPECT_EQ(train::svg::element("rect", {{"x", "0"}}, train::svg::element("title", {}, "a")),
            "<rect x=\"0\"><title>a</title></rect>");
}

TEST(Svg, DocumentFramesTheContent) {
  const std::string doc = train::svg::document(720, 360, "<circle r=\"1\"/>\n");
  EXPECT_EQ(
      doc,
      "<svg xmlns=\"http://www.w3.org/2000/svg\" width=\"720\" height=\"360\" font-family=\"sans-serif\" "
      "font-size=\"11\">\n<rect width=\"100%\" height=\"100%\" fill=\"white\"/>\n<circle "
      "r=\"1\"/>\n</svg>\n");
}

TEST(Svg, TrainingPlotEscapesTheMetricName) {
  std::vector<nlohmann::json> log{{{"type", "eval"}, {"step", 1}, {"loss", 1.0}, {"f1<x>", 0.5}},
                                  {{"type", "eval"}, {"step", 2}, {"loss", 0.5}, {"f1<x>", 0.7}}};
  const std::string plot = train::training_plot_svg(log, "f1<x>");
  EXPECT_NE(plot.find("dev f1&lt;x&gt;"), std::string::npos) << plot;
  EXPECT_EQ(plot.find("f1<x>"), std::string::npos) << plot;
  EXPECT_EQ(plot.rfind("</svg>\n"), plot.size() - 7);
}
