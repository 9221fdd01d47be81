// CUDA launcher of bias_act; the kernel and its host-side checks are in bias_act_kernel.h.
#include "bias_act_kernel.h"
#include "cuda_launch.cuh"

namespace stylegan2_ops {

at::Tensor bias_act(at::Tensor x, at::Tensor b, at::Tensor ref, at::Tensor dy, int64_t mode,
                    bool ref_is_x, int64_t dim, int64_t act, double alpha, double gain,
                    double clamp) {
  return bias_act_run<CudaBackend>(x, b, ref, dy, mode, ref_is_x, dim, act, alpha, gain, clamp);
}

}  // namespace stylegan2_ops
