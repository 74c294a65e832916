#include "deltatune/random.h"

#include <cmath>

namespace deltatune {

float Generator::normal() {
  if (has_spare_) {
    has_spare_ = false;
    return spare_;
  }
  float u1;
  do {
    u1 = uniform();
  } while (u1 <= 0.0f);
  float u2 = uniform();
  float radius = std::sqrt(-2.0f * std::log(u1));
  float angle = 6.28318530717958647692f * u2;
  spare_ = radius * std::sin(angle);
  has_spare_ = true;
  return radius * std::cos(angle);
}

}  // namespace deltatune
