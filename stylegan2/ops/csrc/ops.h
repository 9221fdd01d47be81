// Host entry points of our CUDA kernels; the semantics are defined by the Python reference ops
// (stylegan2/ops/bias_act.py and upfirdn2d.py). Only light ATen headers are included anywhere:
// <torch/extension.h> would make the build several times slower.
#pragma once
#include <ATen/core/Tensor.h>

namespace stylegan2_ops {

inline bool is_supported_dtype(at::ScalarType t) {
  return t == at::kHalf || t == at::kBFloat16 || t == at::kFloat || t == at::kDouble;
}

// mode 0: clamp(act(x + b) * gain); x is the input.
// mode 1: x * d/dz clamp(act(z) * gain), x an incoming gradient; z = ref + b when ref_is_x,
//         otherwise ref is the forward output y (activations whose derivative follows from y).
// mode 2: x * dy * d2/dz2 clamp(act(z) * gain); dy is the gradient that mode 1 consumed.
// b: empty or 1-D of length x.size(dim); ref, dy: empty or shaped like x. clamp < 0: none.
at::Tensor bias_act(at::Tensor x, at::Tensor b, at::Tensor ref, at::Tensor dy,
                       int64_t mode, bool ref_is_x, int64_t dim, int64_t act, double alpha,
                       double gain, double clamp);

// x [N, C, H, W] (any strides); f [fh, fw]. Returns [N, C, outH, outW] in x's memory format.
at::Tensor upfirdn2d(at::Tensor x, at::Tensor f, int64_t upx, int64_t upy,
                        int64_t downx, int64_t downy, int64_t padx0, int64_t padx1,
                        int64_t pady0, int64_t pady1, bool flip_filter, double gain);

}  // namespace stylegan2_ops
