// Fused bias + activation + gain + clamp, and its first and second derivatives: the device code
// and the host-side entry, compiled by nvcc (bias_act.cu) and by the host compiler for the CPU
// execution model (emulation/emulated_ops.cpp). Activation indices follow
// ACTIVATIONS[...].cuda_idx in stylegan2/ops/bias_act.py.
//
// Layout: the kernel walks memory linearly, so it accepts any non-overlapping dense tensor
// (contiguous, channels_last, ...) as is: the channel of element i is (i / x.stride(dim)) % C.
// Other inputs are copied to a contiguous tensor first; ref and dy are matched to x's strides.
//
// Backend (CudaBackend in cuda_launch.cuh, CpuBackend in emulation/emulated_ops.cpp) supplies:
//   check_device(x, op)     x is on the backend's device, else TORCH_CHECK fails
//   Guard(x)                RAII device guard
//   shape()                 the LaunchShape
//   launch(kernel, blocks, threads, smem_bytes, args...)
#pragma once
#include <ATen/Dispatch.h>
#include <ATen/OpMathType.h>
#include <ATen/core/Tensor.h>
#include <ATen/ops/empty.h>
#include <ATen/ops/empty_like.h>

#include "kernel_common.h"
#include "ops.h"

namespace stylegan2_ops {
namespace bias_act_detail {

enum Act { kLinear, kRelu, kLrelu, kTanh, kSigmoid, kElu, kSelu, kSoftplus, kSwish, kNumActs };

constexpr double kSeluScale = 1.0507009873554804934193349852946;
constexpr double kSeluAlpha = 1.6732632423543772848170429916717;
constexpr double kSoftplusThreshold = 20.0;  // as torch.nn.functional.softplus

template <typename T>
__device__ __forceinline__ T sigmoid(T z) {
  return T(1) / (T(1) + exp(-z));
}

// Value a = act(z) and derivatives d1 = a'(z), d2 = a''(z), from the pre-activation z.
template <typename T>
__device__ void from_z(int act, T z, T alpha, T& a, T& d1, T& d2) {
  d2 = T(0);
  switch (act) {
    case kLinear: a = z; d1 = T(1); break;
    case kRelu: a = z > T(0) ? z : T(0); d1 = z > T(0) ? T(1) : T(0); break;
    case kLrelu: a = z > T(0) ? z : alpha * z; d1 = z > T(0) ? T(1) : alpha; break;
    case kTanh: a = tanh(z); d1 = T(1) - a * a; d2 = T(-2) * a * d1; break;
    case kSigmoid: a = sigmoid(z); d1 = a * (T(1) - a); d2 = d1 * (T(1) - T(2) * a); break;
    case kElu:
      if (z > T(0)) { a = z; d1 = T(1); }
      else { a = alpha * expm1(z); d1 = d2 = a + alpha; }
      break;
    case kSelu:
      if (z > T(0)) { a = T(kSeluScale) * z; d1 = T(kSeluScale); }
      else { a = T(kSeluScale * kSeluAlpha) * expm1(z); d1 = d2 = a + T(kSeluScale * kSeluAlpha); }
      break;
    case kSoftplus:
      if (z > T(kSoftplusThreshold)) { a = z; d1 = T(1); }
      else { a = log1p(exp(z)); d1 = sigmoid(z); d2 = d1 * (T(1) - d1); }
      break;
    default: {  // kSwish
      T s = sigmoid(z);
      a = z * s;
      d1 = s * (T(1) + z * (T(1) - s));
      d2 = s * (T(1) - s) * (T(2) + z * (T(1) - T(2) * s));
    }
  }
}

// Derivatives from the activation value a (all but swish, whose inverse is not unique).
// Needs alpha >= 0 for lrelu and elu, so that a > 0 exactly when z > 0.
template <typename T>
__device__ void from_a(int act, T a, T alpha, T& d1, T& d2) {
  d2 = T(0);
  switch (act) {
    case kRelu: d1 = a > T(0) ? T(1) : T(0); break;
    case kLrelu: d1 = a > T(0) ? T(1) : alpha; break;
    case kTanh: d1 = T(1) - a * a; d2 = T(-2) * a * d1; break;
    case kSigmoid: d1 = a * (T(1) - a); d2 = d1 * (T(1) - T(2) * a); break;
    case kElu:
      if (a > T(0)) d1 = T(1);
      else d1 = d2 = a + alpha;
      break;
    case kSelu:
      if (a > T(0)) d1 = T(kSeluScale);
      else d1 = d2 = a + T(kSeluScale * kSeluAlpha);
      break;
    case kSoftplus: d1 = -expm1(-a); d2 = d1 * (T(1) - d1); break;
    default: d1 = T(1);  // kLinear
  }
}

template <typename scalar_t, typename index_t>
__global__ void bias_act_kernel(const scalar_t* __restrict__ x, const scalar_t* __restrict__ b,
                                const scalar_t* __restrict__ ref, const scalar_t* __restrict__ dy,
                                scalar_t* __restrict__ out, index_t n, index_t b_stride,
                                index_t b_len, int mode, bool ref_is_x, int act,
                                at::opmath_type<scalar_t> alpha, at::opmath_type<scalar_t> gain,
                                at::opmath_type<scalar_t> clamp) {
  using T = at::opmath_type<scalar_t>;
  for (index_t i = index_t(blockIdx.x) * blockDim.x + threadIdx.x; i < n;
       i += index_t(blockDim.x) * gridDim.x) {
    T bias = b ? T(b[(i / b_stride) % b_len]) : T(0);
    T v = T(x[i]);
    T a, d1, d2;
    if (mode == 0) {
      from_z(act, v + bias, alpha, a, d1, d2);
      T y = a * gain;
      if (clamp >= T(0)) y = y > clamp ? clamp : y < -clamp ? -clamp : y;
      out[i] = scalar_t(y);
      continue;
    }
    // With a clamp, ref is x (the host checks it): y is recomputed in float exactly as the
    // forward computed it before rounding, so the mask passes exactly the elements the forward
    // left unclamped (as torch.clamp's gradient: -clamp < y < clamp). The stored output would
    // not do: in fp16/bf16 a clamped 0.9 is stored as 0.8999 and would pass.
    T y = T(0);
    if (!ref) {  // linear without clamp: constant derivative
      d1 = T(1); d2 = T(0);
    } else if (ref_is_x) {
      from_z(act, T(ref[i]) + bias, alpha, a, d1, d2);
      y = a * gain;
    } else {
      from_a(act, gain != T(0) ? T(ref[i]) / gain : T(0), alpha, d1, d2);
    }
    const bool pass = clamp < T(0) || (y > -clamp && y < clamp);
    T d = mode == 1 ? d1 : d2 * T(dy[i]);
    out[i] = scalar_t(pass ? v * gain * d : T(0));
  }
}

// A tensor with exactly x's sizes and strides holding t's values (t shaped like x).
inline at::Tensor like(const at::Tensor& t, const at::Tensor& x) {
  if (t.strides() == x.strides()) return t;
  return at::empty_like(x).copy_(t);
}

inline void check_optional(const at::Tensor& t, const at::Tensor& x, const char* name) {
  if (t.numel() == 0) return;
  TORCH_CHECK(t.sizes() == x.sizes(), "bias_act: ", name, " must be empty or of x's shape ",
              x.sizes(), ", got ", t.sizes());
  TORCH_CHECK(t.scalar_type() == x.scalar_type(), "bias_act: ", name, " must have x's dtype ",
              x.scalar_type(), ", got ", t.scalar_type());
  TORCH_CHECK(t.device() == x.device(), "bias_act: ", name, " must be on x's device");
}

}  // namespace bias_act_detail

// The entry point of ops.h, for one backend.
template <typename Backend>
at::Tensor bias_act_run(at::Tensor x, at::Tensor b, at::Tensor ref, at::Tensor dy, int64_t mode,
                        bool ref_is_x, int64_t dim, int64_t act, double alpha, double gain,
                        double clamp) {
  using namespace bias_act_detail;
  Backend::check_device(x, "bias_act");
  TORCH_CHECK(is_supported_dtype(x.scalar_type()),
              "bias_act: x must be float16, bfloat16, float32 or float64, got ", x.scalar_type());
  TORCH_CHECK(mode >= 0 && mode <= 2, "bias_act: mode must be 0, 1 or 2, got ", mode);
  TORCH_CHECK(act >= 0 && act < kNumActs, "bias_act: act index out of range: ", act);
  TORCH_CHECK(!(act == kSwish && mode > 0 && !ref_is_x),
              "bias_act: swish derivatives need ref = x (ref_is_x=True)");
  TORCH_CHECK(!(mode > 0 && clamp >= 0 && !ref_is_x),
              "bias_act: derivatives with a clamp need ref = x (ref_is_x=True)");
  if (b.numel() > 0) {
    TORCH_CHECK(dim >= 0 && dim < x.dim(), "bias_act: dim out of range for x of rank ", x.dim(),
                ": ", dim);
    TORCH_CHECK(b.dim() == 1 && b.size(0) == x.size(dim), "bias_act: b must be 1-D of length ",
                x.size(dim), ", got ", b.sizes());
    TORCH_CHECK(b.scalar_type() == x.scalar_type(), "bias_act: b must have x's dtype");
    TORCH_CHECK(b.device() == x.device(), "bias_act: b must be on x's device");
  }
  // An empty x needs no ref: autograd saves empty tensors for an empty batch.
  if (x.numel() == 0) return at::empty_like(x);
  check_optional(ref, x, "ref");
  check_optional(dy, x, "dy");
  TORCH_CHECK(mode == 0 || ref.numel() > 0 || (act == kLinear && clamp < 0),
              "bias_act: mode ", mode, " needs ref for this activation/clamp");
  TORCH_CHECK(mode != 2 || dy.numel() > 0, "bias_act: mode 2 needs dy");
  TORCH_CHECK(!(mode > 0 && ref_is_x && ref.numel() == 0), "bias_act: ref_is_x needs ref");
  const typename Backend::Guard guard(x);

  if (!x.is_non_overlapping_and_dense()) x = x.contiguous();
  if (ref.numel() > 0) ref = like(ref, x);
  if (dy.numel() > 0) dy = like(dy, x);
  b = b.contiguous();
  at::Tensor out = at::empty_like(x);
  const int64_t n = x.numel();

  const LaunchShape shape = Backend::shape();
  const int64_t blocks = grid_blocks(n, shape);
  const int64_t b_stride = b.numel() > 0 ? x.stride(dim) : 1;
  const int64_t b_len = std::max<int64_t>(b.numel(), 1);
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, x.scalar_type(), "bias_act", [&] {
    using T = at::opmath_type<scalar_t>;
    const scalar_t* b_ptr = b.numel() > 0 ? b.const_data_ptr<scalar_t>() : nullptr;
    const scalar_t* ref_ptr = ref.numel() > 0 ? ref.const_data_ptr<scalar_t>() : nullptr;
    const scalar_t* dy_ptr = dy.numel() > 0 ? dy.const_data_ptr<scalar_t>() : nullptr;
    // 32-bit index arithmetic is markedly faster; use it whenever the tensor allows.
    if (grid_stride_fits_int32(n, blocks, shape.threads)) {
      Backend::launch(bias_act_kernel<scalar_t, int32_t>, blocks, shape.threads, 0,
                      x.const_data_ptr<scalar_t>(), b_ptr, ref_ptr, dy_ptr,
                      out.mutable_data_ptr<scalar_t>(), int32_t(n), int32_t(b_stride),
                      int32_t(b_len), int(mode), ref_is_x, int(act), T(alpha), T(gain), T(clamp));
    } else {
      Backend::launch(bias_act_kernel<scalar_t, int64_t>, blocks, shape.threads, 0,
                      x.const_data_ptr<scalar_t>(), b_ptr, ref_ptr, dy_ptr,
                      out.mutable_data_ptr<scalar_t>(), n, b_stride, b_len, int(mode), ref_is_x,
                      int(act), T(alpha), T(gain), T(clamp));
    }
  });
  return out;
}

}  // namespace stylegan2_ops
