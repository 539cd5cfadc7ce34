// A cache of large freed blocks for the ops' outputs, shared by the
// framework bindings (involution_tf.cpp, involution_cpu.cpp).
//
// A training step allocates and frees the same large maps every step.
// glibc's malloc serves blocks above its mmap threshold (32 MiB at most)
// with fresh mappings, so every such output faults its pages in again on
// every step, which costs more than the loops that write it (a 50 MB map:
// about as long as an involution's whole input gradient on two cores).
// Blocks of at least `kMinBytes` that the ops hand out are kept when freed,
// up to `capacity()` bytes in all, and handed out again for a request of
// the same size. The capacity is read once from INVOLUTION_BLOCK_CACHE_MB
// (default 1024; 0 turns the cache off).
//
// Thread-safe; the cache is never destroyed, since framework tensors may
// outlive every other static object.

#pragma once

#include <algorithm>
#include <cstddef>
#include <cstdint>
#include <cstdlib>
#include <iterator>
#include <map>
#include <mutex>
#include <unordered_map>

namespace involution {
namespace cache {

constexpr size_t kMinBytes = size_t(8) << 20;
constexpr size_t kAlignment = 64;

class BlockCache {
 public:
  BlockCache() {
    const char* setting = std::getenv("INVOLUTION_BLOCK_CACHE_MB");
    long long megabytes = 1024;
    if (setting != nullptr && *setting != '\0') {
      char* end = nullptr;
      const long long value = std::strtoll(setting, &end, 10);
      if (end != setting && value >= 0) megabytes = value;
    }
    constexpr long long kMostMegabytes = 1LL << 30;  // a petabyte: past it, << 20 could overflow
    capacity_ = static_cast<size_t>(std::min(megabytes, kMostMegabytes)) << 20;
  }

  size_t capacity() const { return capacity_; }

  // Whether a block of `bytes` goes through the cache.
  bool takes(size_t bytes) const { return capacity_ > 0 && bytes >= kMinBytes; }

  // A 64-byte aligned block of `bytes`, or nullptr where memory is out.
  void* allocate(size_t bytes) {
    {
      std::lock_guard<std::mutex> lock(mutex_);
      auto found = free_.find(bytes);
      if (found != free_.end()) {
        void* block = found->second;
        free_.erase(found);
        kept_ -= bytes;
        sizes_[block] = bytes;
        return block;
      }
    }
    void* block = nullptr;
    if (posix_memalign(&block, kAlignment, bytes == 0 ? kAlignment : bytes) != 0) return nullptr;
    std::lock_guard<std::mutex> lock(mutex_);
    sizes_[block] = bytes;
    return block;
  }

  // Takes back a block from allocate(): kept while the cache has room,
  // else returned to the C library (making room by freeing the largest
  // kept blocks first).
  void release(void* block) {
    if (block == nullptr) return;
    std::lock_guard<std::mutex> lock(mutex_);
    auto entry = sizes_.find(block);
    if (entry == sizes_.end()) return;  // not ours: never happens for the ops' outputs
    const size_t bytes = entry->second;
    sizes_.erase(entry);
    while (kept_ + bytes > capacity_ && !free_.empty()) {
      auto largest = std::prev(free_.end());
      kept_ -= largest->first;
      std::free(largest->second);
      free_.erase(largest);
    }
    if (kept_ + bytes <= capacity_) {
      free_.emplace(bytes, block);
      kept_ += bytes;
    } else {
      std::free(block);
    }
  }

 private:
  std::mutex mutex_;
  std::multimap<size_t, void*> free_;
  std::unordered_map<void*, size_t> sizes_;
  size_t kept_ = 0;
  size_t capacity_ = 0;
};

inline BlockCache& blocks() {
  static BlockCache* cache = new BlockCache();
  return *cache;
}

}  // namespace cache
}  // namespace involution
