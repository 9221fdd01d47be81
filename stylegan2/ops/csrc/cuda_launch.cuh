// The CUDA backend of the kernel headers (bias_act_kernel.h, upfirdn2d_kernel.h): real launches on
// the current stream of x's device. Included by the .cu launchers only.
#pragma once
#include <ATen/core/Tensor.h>
#include <c10/cuda/CUDAException.h>
#include <c10/cuda/CUDAGuard.h>
#include <c10/cuda/CUDAStream.h>

#include "kernel_common.h"

namespace stylegan2_ops {

struct CudaBackend {
  static void check_device(const at::Tensor& x, const char* op) {
    TORCH_CHECK(x.is_cuda(), op, ": x must be a CUDA tensor");
  }

  struct Guard {
    explicit Guard(const at::Tensor& x) : guard(x.device()) {}
    at::cuda::OptionalCUDAGuard guard;
  };

  static LaunchShape shape() { return {256, 65536}; }

  template <typename Kernel, typename... Args>
  static void launch(Kernel kernel, int64_t blocks, int threads, size_t smem_bytes,
                     Args... args) {
    kernel<<<unsigned(blocks), threads, smem_bytes, c10::cuda::getCurrentCUDAStream()>>>(args...);
    C10_CUDA_KERNEL_LAUNCH_CHECK();
  }
};

}  // namespace stylegan2_ops
