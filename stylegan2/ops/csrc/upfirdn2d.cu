// CUDA launcher of upfirdn2d; the kernel and its host-side checks are in upfirdn2d_kernel.h.
#include "upfirdn2d_kernel.h"
#include "cuda_launch.cuh"

namespace stylegan2_ops {

at::Tensor upfirdn2d(at::Tensor x, at::Tensor f, int64_t upx, int64_t upy, int64_t downx,
                     int64_t downy, int64_t padx0, int64_t padx1, int64_t pady0, int64_t pady1,
                     bool flip_filter, double gain) {
  return upfirdn2d_run<CudaBackend>(x, f, upx, upy, downx, downy, padx0, padx1, pady0, pady1,
                                    flip_filter, gain);
}

}  // namespace stylegan2_ops
