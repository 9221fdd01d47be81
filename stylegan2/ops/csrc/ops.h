// Host entry points of our CUDA kernels; the semantics are defined by the Python reference ops
// (stylegan2/ops/bias_act.py and upfirdn2d.py).
#pragma once
#include <torch/types.h>

namespace stylegan2_ops {

// mode 0: clamp(act(x + b) * gain); x is the input.
// mode 1: x * d/dz clamp(act(z) * gain), x an incoming gradient; z = ref + b when ref_is_x,
//         otherwise ref is the forward output y (activations whose derivative follows from y).
// mode 2: x * dy * d2/dz2 clamp(act(z) * gain); dy is the gradient that mode 1 consumed.
// b: empty or 1-D of length x.size(dim); ref, dy: empty or shaped like x. clamp < 0: none.
torch::Tensor bias_act(torch::Tensor x, torch::Tensor b, torch::Tensor ref, torch::Tensor dy,
                       int64_t mode, bool ref_is_x, int64_t dim, int64_t act, double alpha,
                       double gain, double clamp);

// x [N, C, H, W] (any strides); f [fh, fw]. Returns [N, C, outH, outW] in x's memory format.
torch::Tensor upfirdn2d(torch::Tensor x, torch::Tensor f, int64_t upx, int64_t upy,
                        int64_t downx, int64_t downy, int64_t padx0, int64_t padx1,
                        int64_t pady0, int64_t pady1, bool flip_filter, double gain);

}  // namespace stylegan2_ops
