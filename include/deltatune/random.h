#pragma once
// A seeded random generator: the same seed gives the same numbers on every machine.
#include <cstdint>
#include <random>
#include <vector>

namespace deltatune {

class Generator {
 public:
  explicit Generator(uint64_t seed = 0) : engine_(seed) {}
  void seed(uint64_t s) { engine_.seed(s); }
  // Uniform in [0, 1), with 24 random bits: the same on every platform, unlike std distributions.
  float uniform() { return float(engine_() >> 40) * (1.0f / 16777216.0f); }
  // Standard normal by Box-Muller (platform independent).
  float normal();
  uint64_t next() { return engine_(); }
  // Uniform integer in [0, n).
  uint64_t below(uint64_t n) { return engine_() % n; }

  // Per-example streams (the trainer's): a draw over a tensor whose leading dimension splits into
  // row_keys().size() equal rows (a batch's examples, [B, ...] or [B * T, ...]) gives row r a stream of
  // its own, seeded by (one draw of this generator, row_keys()[r]). An example's dropout then depends
  // on its key alone, not on which batch or which process carries it, nor on the batch's padded length
  // (a row draws in row-major order, its padding last). Empty: one serial stream, as before.
  void key_rows(std::vector<uint64_t> keys) { row_keys_ = std::move(keys); }
  const std::vector<uint64_t>& row_keys() const { return row_keys_; }

 private:
  std::vector<uint64_t> row_keys_;
  std::mt19937_64 engine_;
  bool has_spare_ = false;
  float spare_ = 0;
};

}  // namespace deltatune
