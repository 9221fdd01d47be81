// A CPU execution model of the CUDA built-ins our kernels use, so that the kernel source itself
// (../bias_act_kernel.h, ../upfirdn2d_kernel.h) compiles with the host compiler and runs in the
// CPU test suite. Include this header before the kernel headers.
//
// The model:
// - `__global__`, `__device__`, `__host__` expand to nothing and `__forceinline__` to `inline`:
//   kernels are plain C++ functions.
// - `emulation::launch(kernel, grid, block, smem_bytes, args...)` runs a launch. Blocks run one
//   after another (CUDA guarantees no order between blocks, and our kernels need none); the
//   threads of a block run concurrently, each as a real std::thread, so code between two
//   barriers genuinely interleaves.
// - `threadIdx`, `blockIdx`, `blockDim`, `gridDim` are thread_local: each emulated thread sees
//   its own coordinates.
// - `__syncthreads()` is a real barrier over the block's threads: no thread passes it before
//   every thread of the block that has not yet returned has reached it (a returned thread no
//   longer counts, as on sm_70 and later).
// - Shared memory: `STYLEGAN2_DYNAMIC_SHARED(type, name)` gives each block its own `smem_bytes`
//   buffer, filled with 0xff bytes (NaN for floating types) so that a read of a slot no thread
//   wrote shows up in the results. A static `__shared__` variable becomes a function-local
//   `static`: one copy, used by one block at a time since blocks run one after another and
//   launches are serialised.
// - float16 / bfloat16 are c10::Half / c10::BFloat16, the same types the CUDA build uses: their
//   conversions from and to float round to nearest even, as the device's __float2half_rn and
//   __float2bfloat16_rn do; arithmetic happens in float (at::opmath_type) on both.
// - Math functions (exp, expm1, log1p, tanh) are the host's std:: overloads for float and
//   double. The device's fast float versions may differ in the last bit or two; the emulation
//   checks the kernels' logic (indexing, masks, rounding of stored values, barriers), not the
//   last ulp of the device's libm.
#pragma once
#include <algorithm>
#include <cmath>
#include <condition_variable>
#include <cstddef>
#include <cstdint>
#include <exception>
#include <mutex>
#include <thread>
#include <vector>

#define __global__
#define __device__
#define __host__
#define __forceinline__ inline
#define __shared__ static
#define __align__(n) alignas(n)

using std::exp;
using std::expm1;
using std::log1p;
using std::tanh;

namespace emulation {

struct Dim3 {
  unsigned x = 1, y = 1, z = 1;
};

// Every thread of a block waits here until all threads still running have arrived.
class Barrier {
 public:
  explicit Barrier(int count) : count_(count) {}

  void arrive_and_wait() {
    std::unique_lock<std::mutex> lock(mutex_);
    const uint64_t generation = generation_;
    if (++arrived_ == count_) {
      release();
    } else {
      released_.wait(lock, [&] { return generation != generation_; });
    }
  }

  // A thread that returned from the kernel: the others no longer wait for it.
  void drop() {
    std::lock_guard<std::mutex> lock(mutex_);
    --count_;
    if (arrived_ > 0 && arrived_ == count_) release();
  }

 private:
  void release() {
    arrived_ = 0;
    ++generation_;
    released_.notify_all();
  }

  std::mutex mutex_;
  std::condition_variable released_;
  int count_;
  int arrived_ = 0;
  uint64_t generation_ = 0;
};

inline thread_local Barrier* current_barrier = nullptr;
inline thread_local unsigned char* current_shared = nullptr;

inline std::mutex& launch_mutex() {
  static std::mutex mutex;
  return mutex;
}

}  // namespace emulation

inline thread_local emulation::Dim3 threadIdx, blockIdx, blockDim, gridDim;

inline void __syncthreads() { emulation::current_barrier->arrive_and_wait(); }

#define STYLEGAN2_DYNAMIC_SHARED(type, name) \
  type* name = reinterpret_cast<type*>(emulation::current_shared)

namespace emulation {

// Runs kernel<<<grid, block, smem_bytes>>>(args...) and returns when every thread has finished;
// an exception thrown by a thread is rethrown here.
template <typename Kernel, typename... Args>
void launch(Kernel kernel, Dim3 grid, Dim3 block, size_t smem_bytes, Args... args) {
  const std::lock_guard<std::mutex> one_launch_at_a_time(launch_mutex());
  const int threads = int(block.x * block.y * block.z);
  std::vector<std::max_align_t> shared(smem_bytes / sizeof(std::max_align_t) + 1);
  for (unsigned bz = 0; bz < grid.z; ++bz) {
    for (unsigned by = 0; by < grid.y; ++by) {
      for (unsigned bx = 0; bx < grid.x; ++bx) {
        std::fill_n(reinterpret_cast<unsigned char*>(shared.data()),
                    shared.size() * sizeof(std::max_align_t), 0xff);
        Barrier barrier(threads);
        std::exception_ptr error;
        std::mutex error_mutex;
        std::vector<std::thread> workers;
        workers.reserve(threads);
        for (int t = 0; t < threads; ++t) {
          workers.emplace_back([&, t] {
            threadIdx = {unsigned(t) % block.x, unsigned(t) / block.x % block.y,
                         unsigned(t) / (block.x * block.y)};
            blockIdx = {bx, by, bz};
            blockDim = block;
            gridDim = grid;
            current_barrier = &barrier;
            current_shared = reinterpret_cast<unsigned char*>(shared.data());
            try {
              kernel(args...);
            } catch (...) {
              const std::lock_guard<std::mutex> lock(error_mutex);
              if (!error) error = std::current_exception();
            }
            barrier.drop();
          });
        }
        for (auto& worker : workers) worker.join();
        if (error) std::rethrow_exception(error);
      }
    }
  }
}

}  // namespace emulation
