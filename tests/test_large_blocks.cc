// core/large_blocks.h: tensor storage of 1 MiB and more, kept in mapped segments and reused in place.
// Under the sanitizers the pool is off by design (their checks need malloc's blocks); there these
// tests check that tensors still come and go.
#include <gtest/gtest.h>

#include <cstring>
#include <random>
#include <thread>
#include <vector>

#include "core/large_blocks.h"
#include "deltatune/tensor.h"

using namespace deltatune;
namespace lb = deltatune::large_blocks;

namespace {
constexpr size_t MiB = size_t(1) << 20;

bool pool_is_off_and_tensors_work() {
  if (lb::pooled()) return false;
  Tensor t = Tensor::zeros({4 << 20});
  EXPECT_EQ(t.f32()[123], 0.0f);
  return true;
}
}  // namespace

TEST(LargeBlocks, SplitsOneSegmentAndJoinsItBackWhole) {
  if (pool_is_off_and_tensors_work()) return;
  lb::set_free_limit(0);  // start from no kept segments
  const lb::PoolStats start = lb::stats();
  lb::set_free_limit(size_t(256) << 20);
  std::vector<void*> blocks;
  for (int i = 0; i < 10; ++i) blocks.push_back(lb::take(2 * MiB).data);  // 20 MiB: one 64 MiB segment
  EXPECT_EQ(lb::stats().segments, start.segments + 1);
  EXPECT_EQ(lb::stats().used_bytes, start.used_bytes + 20 * MiB);
  for (int i = 0; i < 10; ++i)  // distinct, adjacent
    for (int j = 0; j < i; ++j)
      EXPECT_GE(std::abs(static_cast<char*>(blocks[i]) - static_cast<char*>(blocks[j])), long(2 * MiB));
  // Given back out of order, the spans join into the whole segment again: one 60 MiB block fits.
  for (int i : {3, 7, 0, 9, 1, 5, 2, 8, 4, 6}) lb::give_back(blocks[size_t(i)]);
  EXPECT_EQ(lb::stats().used_bytes, start.used_bytes);
  void* big = lb::take(60 * MiB).data;
  EXPECT_EQ(lb::stats().segments, start.segments + 1);  // no new mapping
  lb::give_back(big);
  lb::set_free_limit(0);  // the wholly free segment goes back
  EXPECT_EQ(lb::stats().segments, start.segments);
  EXPECT_EQ(lb::stats().mapped_bytes, start.mapped_bytes);
  lb::set_free_limit(size_t(256) << 20);
}

TEST(LargeBlocks, ARepeatedStepMapsNothingNewAfterTheFirst) {
  if (pool_is_off_and_tensors_work()) return;
  std::mt19937 gen(7);
  std::vector<size_t> sizes;
  for (int i = 0; i < 40; ++i) sizes.push_back(MiB + gen() % (24 * MiB));
  auto step = [&] {  // allocate in one order, hold some across, free in another
    std::vector<Tensor> held;
    for (size_t s : sizes) {
      held.push_back(Tensor::empty({int64_t(s / 4)}));
      if (held.size() % 3 == 0) held.erase(held.begin() + long(held.size() / 2));
    }
  };
  step();
  const size_t mapped = lb::stats().mapped_bytes;
  for (int i = 0; i < 20; ++i) step();
  EXPECT_EQ(lb::stats().mapped_bytes, mapped);
}

TEST(LargeBlocks, OnlyNeverUsedMemoryIsMarkedZero) {
  if (pool_is_off_and_tensors_work()) return;
  const lb::Block first = lb::take(100 * MiB);  // its own segment, larger than the usual 64 MiB
  EXPECT_TRUE(first.zeroed);
  std::memset(first.data, 0x5a, 100 * MiB);
  lb::give_back(first.data);
  const lb::Block again = lb::take(100 * MiB);
  EXPECT_FALSE(again.zeroed);
  lb::give_back(again.data);
  // Through tensors: zeros() on a reused block reads zero.
  { Tensor dirty = Tensor::full({8 << 20}, 3.0f); }
  Tensor clean = Tensor::zeros({8 << 20});
  for (int64_t i = 0; i < clean.numel(); i += 4099) ASSERT_EQ(clean.f32()[i], 0.0f) << i;
}

TEST(LargeBlocks, ThreadsTakingAndGivingBackNeverShareABlock) {
  if (pool_is_off_and_tensors_work()) return;
  const size_t used = lb::stats().used_bytes;
  std::vector<std::thread> threads;
  std::vector<int> bad(4, 0);
  for (int t = 0; t < 4; ++t)
    threads.emplace_back([t, &bad] {
      std::mt19937 gen{unsigned(t)};
      std::vector<std::pair<unsigned char*, size_t>> mine;
      for (int i = 0; i < 300; ++i) {
        if (mine.size() < 4 && gen() % 2) {
          const size_t n = MiB + gen() % (8 * MiB);
          auto* p = static_cast<unsigned char*>(lb::take(n).data);
          std::memset(p, t + 1, n);
          mine.emplace_back(p, n);
        } else if (!mine.empty()) {
          auto [p, n] = mine.back();
          mine.pop_back();
          for (size_t k = 0; k < n; k += 4096) bad[size_t(t)] += p[k] != t + 1;
          lb::give_back(p);
        }
      }
      for (auto [p, n] : mine) lb::give_back(p);
    });
  for (auto& th : threads) th.join();
  for (int t = 0; t < 4; ++t) EXPECT_EQ(bad[size_t(t)], 0) << "thread " << t;
  EXPECT_EQ(lb::stats().used_bytes, used);
}
