#pragma once
// A seeded random generator: the same seed gives the same numbers on every machine.
#include <cstdint>
#include <random>

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

 private:
  std::mt19937_64 engine_;
  bool has_spare_ = false;
  float spare_ = 0;
};

}  // namespace deltatune
