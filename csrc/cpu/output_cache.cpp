// The CPU output cache of output_cache.h: a c10::Allocator whose freed blocks wait for reuse.
#include "output_cache.h"

#include <ATen/EmptyTensor.h>
#include <c10/core/Allocator.h>
#include <c10/core/impl/alloc_cpu.h>

#include <cerrno>
#include <cstdlib>
#include <map>
#include <mutex>
#include <string>
#include <unordered_map>
#include <vector>

namespace mstr_kernels {
namespace {

// Smaller buffers stay with the default allocator: glibc's heap already reuses them.
constexpr std::size_t kMinBytes = std::size_t(1) << 20;

std::size_t limit_from_environment() {
  const char* text = std::getenv("MSTR_KERNELS_CPU_CACHE_MB");
  if (text == nullptr || *text == '\0') return std::size_t(1024) << 20;
  char* end = nullptr;
  errno = 0;
  const long long mib = std::strtoll(text, &end, 10);
  TORCH_CHECK_VALUE(errno == 0 && end != text && *end == '\0' && mib >= 0 && mib <= (1LL << 30),
                    "MSTR_KERNELS_CPU_CACHE_MB=", text,
                    " is not a whole number of MiB in 0..2**30 (0 turns the CPU output cache off)");
  return static_cast<std::size_t>(mib) << 20;
}

class CachingCpuAllocator final : public c10::Allocator {
 public:
  // Never destroyed: tensors holding its blocks may outlive static destruction.
  static CachingCpuAllocator& instance() {
    static auto* allocator = new CachingCpuAllocator(limit_from_environment());
    return *allocator;
  }

  std::size_t limit() const { return limit_; }

  c10::DataPtr allocate(std::size_t n) override {
    const c10::Device cpu(c10::kCPU);
    if (n == 0) return {nullptr, nullptr, &release, cpu};
    void* ptr = nullptr;
    std::size_t size = n;
    {
      // Reuse the smallest cached block that fits, wasting at most a quarter of the request.
      std::lock_guard<std::mutex> guard(mutex_);
      auto it = free_.lower_bound(n);
      if (it != free_.end() && it->first <= n + n / 4) {
        ptr = it->second.ptr;
        size = it->first;
        cached_bytes_ -= size;
        free_.erase(it);
        ++hits_;
      } else {
        ++misses_;
      }
    }
    if (ptr == nullptr) ptr = c10::alloc_cpu(n);
    std::lock_guard<std::mutex> guard(mutex_);
    live_.emplace(ptr, size);
    live_bytes_ += size;
    report(ptr, static_cast<int64_t>(size));
    return {ptr, ptr, &release, cpu};
  }

  c10::DeleterFnPtr raw_deleter() const override { return &release; }

  void copy_data(void* dest, const void* src, std::size_t count) const override {
    default_copy_data(dest, src, count);
  }

  CpuOutputCacheStats stats() {
    std::lock_guard<std::mutex> guard(mutex_);
    return {limit_, cached_bytes_, live_bytes_, hits_, misses_};
  }

  std::size_t empty() {
    std::vector<void*> doomed;
    std::size_t bytes = 0;
    {
      std::lock_guard<std::mutex> guard(mutex_);
      for (const auto& entry : free_) doomed.push_back(entry.second.ptr);
      bytes = cached_bytes_;
      free_.clear();
      cached_bytes_ = 0;
    }
    for (void* ptr : doomed) c10::free_cpu(ptr);
    return bytes;
  }

 private:
  struct Block {
    void* ptr;
    uint64_t stamp;  // release order, for evicting the oldest first
  };

  explicit CachingCpuAllocator(std::size_t limit) : limit_(limit) {}

  static void release(void* ptr) {
    if (ptr != nullptr) instance().give_back(ptr);
  }

  void give_back(void* ptr) {
    std::vector<void*> doomed;
    {
      std::lock_guard<std::mutex> guard(mutex_);
      auto it = live_.find(ptr);
      TORCH_INTERNAL_ASSERT(it != live_.end(), "mstr_kernels CPU output cache: unknown block");
      const std::size_t size = it->second;
      live_.erase(it);
      live_bytes_ -= size;
      report(ptr, -static_cast<int64_t>(size));
      if (size > limit_) {
        doomed.push_back(ptr);
      } else {
        while (cached_bytes_ + size > limit_) {
          auto oldest = free_.begin();
          for (auto b = free_.begin(); b != free_.end(); ++b)
            if (b->second.stamp < oldest->second.stamp) oldest = b;
          doomed.push_back(oldest->second.ptr);
          cached_bytes_ -= oldest->first;
          free_.erase(oldest);
        }
        free_.emplace(size, Block{ptr, next_stamp_++});
        cached_bytes_ += size;
      }
    }
    for (void* p : doomed) c10::free_cpu(p);
  }

  // Like the default CPU allocator, so that torch.profiler(profile_memory=True) sees our blocks.
  void report(void* ptr, int64_t delta) const {
    if (c10::memoryProfilingEnabled())
      c10::reportMemoryUsageToProfiler(ptr, delta, live_bytes_, live_bytes_ + cached_bytes_,
                                       c10::Device(c10::kCPU));
  }

  const std::size_t limit_;
  std::mutex mutex_;
  std::multimap<std::size_t, Block> free_;
  std::unordered_map<void*, std::size_t> live_;
  std::size_t cached_bytes_ = 0, live_bytes_ = 0;
  int64_t hits_ = 0, misses_ = 0;
  uint64_t next_stamp_ = 0;
};

}  // namespace

at::Tensor empty_cpu_cached(at::IntArrayRef sizes, at::ScalarType dtype) {
  auto& allocator = CachingCpuAllocator::instance();
  const std::size_t nbytes = static_cast<std::size_t>(c10::multiply_integers(sizes)) *
                             c10::elementSize(dtype);
  if (allocator.limit() == 0 || nbytes < kMinBytes) return at::empty(sizes, at::dtype(dtype));
  return at::detail::empty_generic(sizes, &allocator, c10::DispatchKeySet(c10::DispatchKey::CPU),
                                   dtype, std::nullopt);
}

CpuOutputCacheStats cpu_output_cache_stats() { return CachingCpuAllocator::instance().stats(); }

std::size_t empty_cpu_output_cache() { return CachingCpuAllocator::instance().empty(); }

}  // namespace mstr_kernels
