// Pieces shared by both kernels and by both ways of compiling them: nvcc (the .cu launchers) and
// the host compiler (emulation/emulated_ops.cpp, the CPU execution model of emulation/
// cpu_emulation.h). Nothing here may depend on the CUDA toolkit.
#pragma once
#include <algorithm>
#include <cstdint>
#include <limits>

// Dynamic shared memory of a block, as a pointer `name` of type `type*`. The CPU execution model
// defines its own version before including this header.
#ifndef STYLEGAN2_DYNAMIC_SHARED
#define STYLEGAN2_DYNAMIC_SHARED(type, name) \
  extern __shared__ __align__(16) unsigned char name##_bytes[]; \
  type* name = reinterpret_cast<type*>(name##_bytes)
#endif

namespace stylegan2_ops {

// Threads per block and the cap on blocks of a grid-stride launch.
struct LaunchShape {
  int threads;
  int64_t max_blocks;
};

inline int64_t grid_blocks(int64_t n, LaunchShape shape) {
  return std::min<int64_t>((n + shape.threads - 1) / shape.threads, shape.max_blocks);
}

// Whether a grid-stride loop over n >= 1 elements with blocks x threads threads may count in
// int32. The counter steps by blocks * threads and is last formed, before the `i < n` test ends
// the loop, as at most (n - 1) + blocks * threads: that must not pass INT32_MAX (a wrapped,
// negative counter would pass the test).
inline bool grid_stride_fits_int32(int64_t n, int64_t blocks, int64_t threads) {
  return n - 1 + blocks * threads <= std::numeric_limits<int32_t>::max();
}

}  // namespace stylegan2_ops
