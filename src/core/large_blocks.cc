#include "core/large_blocks.h"

#include <sys/mman.h>

#include <algorithm>
#include <mutex>
#include <set>
#include <string>
#include <unordered_map>
#include <utility>

#include "core/fresh_pages.h"
#include "core/sanitized.h"
#include "deltatune/error.h"

namespace deltatune::large_blocks {
namespace {

constexpr size_t kPage = size_t(4) << 10;
constexpr size_t kSegmentBytes = size_t(64) << 20;
constexpr size_t kHugePage = size_t(2) << 20;

size_t round_up(size_t n, size_t to) { return (n + to - 1) / to * to; }

// A run of pages within one segment. The spans of a segment tile it in address order (prev/next);
// a span with neither is a whole segment.
struct Span {
  char* addr;
  size_t size;
  bool free;
  bool zeroed;  // never handed out since mapped
  Span* prev;
  Span* next;
};

struct Pool {
  std::mutex mutex;
  std::set<std::pair<size_t, Span*>> free_by_size;  // best fit: the first at or above a size
  std::unordered_map<void*, Span*> used;
  size_t mapped = 0, in_use = 0, segments = 0;
  size_t whole_free = 0;                  // bytes of segments kept wholly free
  size_t free_limit = size_t(256) << 20;  // at most this many bytes of them

  bool whole(const Span* s) const { return !s->prev && !s->next; }

  void add_free(Span* s) {
    free_by_size.insert({s->size, s});
    if (whole(s)) whole_free += s->size;
  }
  void remove_free(Span* s) {
    free_by_size.erase({s->size, s});
    if (whole(s)) whole_free -= s->size;
  }

  Span* map_segment(size_t size) {
    const size_t bytes = std::max(kSegmentBytes, round_up(size, kHugePage));
    void* p = map_pages(bytes);
    if (!p) return nullptr;
    mapped += bytes;
    ++segments;
    return new Span{static_cast<char*>(p), bytes, true, true, nullptr, nullptr};
  }

  void unmap_segment(Span* s) {
    munmap(s->addr, s->size);
    mapped -= s->size;
    --segments;
    delete s;
  }

  // Wholly free segments past the limit go back to the kernel, the largest first.
  void trim(size_t limit) {
    while (whole_free > limit) {
      Span* largest = nullptr;
      for (auto it = free_by_size.rbegin(); it != free_by_size.rend(); ++it)
        if (whole(it->second)) {
          largest = it->second;
          break;
        }
      if (!largest) return;
      remove_free(largest);
      unmap_segment(largest);
    }
  }
};

Pool& pool() {
  static Pool* p = new Pool;  // never destroyed: tensors may be freed during static destruction
  return *p;
}

}  // namespace

bool pooled() {
#if defined(DELTATUNE_SANITIZED)
  return false;
#else
  return true;
#endif
}

Block take(size_t bytes) {
  Pool& p = pool();
  std::lock_guard<std::mutex> lock(p.mutex);
  const size_t size = round_up(bytes, kPage);
  auto it = p.free_by_size.lower_bound({size, nullptr});
  Span* s = nullptr;
  if (it != p.free_by_size.end()) {
    s = it->second;
    p.remove_free(s);
  } else {
    s = p.map_segment(size);
    if (!s) {  // the kept free segments may be what stands in the way: return them, try once more
      p.trim(0);
      s = p.map_segment(size);
      if (!s) throw Error("out of memory mapping " + std::to_string(bytes) + " bytes");
    }
  }
  if (s->size - size >= kMinBytes) {  // split off the rest when a large block could use it
    Span* rest = new Span{s->addr + size, s->size - size, true, s->zeroed, s, s->next};
    if (s->next) s->next->prev = rest;
    s->next = rest;
    s->size = size;
    p.add_free(rest);
  }
  s->free = false;
  p.used.emplace(s->addr, s);
  p.in_use += s->size;
  return {s->addr, s->zeroed};
}

void give_back(void* data) {
  Pool& p = pool();
  std::lock_guard<std::mutex> lock(p.mutex);
  auto found = p.used.find(data);
  if (found == p.used.end()) return;  // not ours: nothing to do (never happens through Storage)
  Span* s = found->second;
  p.used.erase(found);
  p.in_use -= s->size;
  s->free = true;
  s->zeroed = false;
  if (Span* next = s->next; next && next->free) {  // join the free neighbour after it
    p.remove_free(next);
    s->size += next->size;
    s->next = next->next;
    if (s->next) s->next->prev = s;
    delete next;
  }
  if (Span* prev = s->prev; prev && prev->free) {  // and the one before
    p.remove_free(prev);
    prev->size += s->size;
    prev->next = s->next;
    if (prev->next) prev->next->prev = prev;
    prev->zeroed = false;
    delete s;
    s = prev;
  }
  p.add_free(s);
  p.trim(p.free_limit);
}

PoolStats stats() {
  Pool& p = pool();
  std::lock_guard<std::mutex> lock(p.mutex);
  return {p.mapped, p.in_use, p.segments};
}

void set_free_limit(size_t bytes) {
  Pool& p = pool();
  std::lock_guard<std::mutex> lock(p.mutex);
  p.free_limit = bytes;
  p.trim(bytes);
}

}  // namespace deltatune::large_blocks
