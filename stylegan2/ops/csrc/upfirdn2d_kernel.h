// upfirdn2d: zero-insertion upsampling, padding (negative = crop), FIR filtering, downsampling.
// The device code and the host-side entry, compiled by nvcc (upfirdn2d.cu) and by the host
// compiler for the CPU execution model (emulation/emulated_ops.cpp); the Backend interface is
// described in bias_act_kernel.h.
//
// One thread per output sample. Per axis, output m reads the upsampled-and-padded signal at
// m*down + j (j = 0..k-1); only positions that are multiples of `up` hold input samples, so the
// thread loops over exactly those inputs i (i*up = m*down - p0 + j) instead of over all k taps.
//
// Layout: x is read through its strides (any layout, no copy). The output is allocated in x's
// suggested memory format (contiguous or channels_last) and threads are laid out in its memory
// order, so writes are coalesced in both cases.
#pragma once
#include <ATen/Dispatch.h>
#include <ATen/OpMathType.h>
#include <ATen/core/Tensor.h>
#include <ATen/ops/empty.h>
#include <ATen/ops/empty_like.h>

#include <algorithm>
#include <cstdlib>
#include <limits>

#include "kernel_common.h"
#include "ops.h"

namespace stylegan2_ops {
namespace upfirdn2d_detail {

// Filter taps the kernel holds in shared memory: 48 KiB (the default per-block limit) of doubles.
constexpr int64_t kMaxTaps = 48 * 1024 / 8;

template <typename index_t>
struct Params {
  index_t c, in_h, in_w, out_h, out_w;  // sizes
  index_t sn, sc, sh, sw;               // strides of x, in elements
  int fh, fw, upx, upy, downx, downy, padx0, pady0;
  bool flip_filter;
};

template <typename index_t>
__device__ __forceinline__ index_t floor_div(index_t a, index_t b) {  // b > 0
  return a >= 0 ? a / b : -((-a + b - 1) / b);
}

// First and last input index feeding output m along one axis, clipped to the input.
template <typename index_t>
__device__ __forceinline__ void input_range(index_t m, int up, int down, int pad0, int k,
                                            index_t in, index_t& first, index_t& last) {
  const index_t base = m * down - pad0;  // upsampled position of tap j = 0
  first = -floor_div<index_t>(-base, up);           // ceil(base / up)
  last = floor_div<index_t>(base + k - 1, up);
  if (first < 0) first = 0;
  if (last > in - 1) last = in - 1;
}

template <typename scalar_t, typename index_t, bool kChannelsLast>
__global__ void upfirdn2d_kernel(const scalar_t* __restrict__ x,
                                 const at::opmath_type<scalar_t>* __restrict__ f,
                                 scalar_t* __restrict__ y, Params<index_t> p, index_t total) {
  using T = at::opmath_type<scalar_t>;
  STYLEGAN2_DYNAMIC_SHARED(T, filter);  // the filter as a correlation kernel, gain included
  const int taps = p.fh * p.fw;
  for (int t = threadIdx.x; t < taps; t += blockDim.x) {
    filter[t] = p.flip_filter ? f[t] : f[taps - 1 - t];  // reversing both axes = reversing all
  }
  __syncthreads();

  for (index_t idx = index_t(blockIdx.x) * blockDim.x + threadIdx.x; idx < total;
       idx += index_t(blockDim.x) * gridDim.x) {
    index_t rest = idx, n, c, oy, ox;
    if (kChannelsLast) {
      c = rest % p.c; rest /= p.c;
      ox = rest % p.out_w; rest /= p.out_w;
      oy = rest % p.out_h; n = rest / p.out_h;
    } else {
      ox = rest % p.out_w; rest /= p.out_w;
      oy = rest % p.out_h; rest /= p.out_h;
      c = rest % p.c; n = rest / p.c;
    }
    index_t iy0, iy1, ix0, ix1;
    input_range<index_t>(oy, p.upy, p.downy, p.pady0, p.fh, p.in_h, iy0, iy1);
    input_range<index_t>(ox, p.upx, p.downx, p.padx0, p.fw, p.in_w, ix0, ix1);
    const scalar_t* xc = x + n * p.sn + c * p.sc;
    const index_t jy0 = iy0 * p.upy - (oy * p.downy - p.pady0);  // filter row of input row iy0
    const index_t jx0 = ix0 * p.upx - (ox * p.downx - p.padx0);
    T acc = T(0);
    for (index_t iy = iy0, jy = jy0; iy <= iy1; ++iy, jy += p.upy) {
      const scalar_t* row = xc + iy * p.sh;
      const T* frow = filter + jy * p.fw;
      for (index_t ix = ix0, jx = jx0; ix <= ix1; ++ix, jx += p.upx) {
        acc += T(row[ix * p.sw]) * frow[jx];
      }
    }
    y[idx] = scalar_t(acc);
  }
}

// Whether every index the kernel forms fits in int32: output indices (the grid-stride counter
// included), input offsets (at most x's extent) and positions along the upsampled, padded axes.
inline bool indices_fit_int32(int64_t x_extent, int64_t total, int64_t axis_extent,
                              int64_t blocks, int64_t threads) {
  return std::max({x_extent, total, axis_extent}) < std::numeric_limits<int32_t>::max() &&
         grid_stride_fits_int32(total, blocks, threads);
}

template <typename Backend, typename scalar_t, typename index_t>
void launch(const at::Tensor& x, const at::Tensor& f, at::Tensor& y, int64_t upx, int64_t upy,
            int64_t downx, int64_t downy, int64_t padx0, int64_t pady0, bool flip_filter,
            bool channels_last, int64_t blocks, int threads) {
  using T = at::opmath_type<scalar_t>;
  const Params<index_t> p{index_t(x.size(1)), index_t(x.size(2)), index_t(x.size(3)),
                          index_t(y.size(2)), index_t(y.size(3)),
                          index_t(x.stride(0)), index_t(x.stride(1)), index_t(x.stride(2)),
                          index_t(x.stride(3)), int(f.size(0)), int(f.size(1)), int(upx),
                          int(upy), int(downx), int(downy), int(padx0), int(pady0), flip_filter};
  const size_t smem = sizeof(T) * p.fh * p.fw;
  auto kernel = channels_last ? upfirdn2d_kernel<scalar_t, index_t, true>
                              : upfirdn2d_kernel<scalar_t, index_t, false>;
  Backend::launch(kernel, blocks, threads, smem, x.const_data_ptr<scalar_t>(),
                  f.const_data_ptr<T>(), y.mutable_data_ptr<scalar_t>(), p, index_t(y.numel()));
}

}  // namespace upfirdn2d_detail

// The entry point of ops.h, for one backend.
template <typename Backend>
at::Tensor upfirdn2d_run(at::Tensor x, at::Tensor f, int64_t upx, int64_t upy, int64_t downx,
                         int64_t downy, int64_t padx0, int64_t padx1, int64_t pady0,
                         int64_t pady1, bool flip_filter, double gain) {
  using namespace upfirdn2d_detail;
  Backend::check_device(x, "upfirdn2d");
  TORCH_CHECK(x.dim() == 4, "upfirdn2d: x must be rank 4 [N,C,H,W], got ", x.sizes());
  TORCH_CHECK(is_supported_dtype(x.scalar_type()),
              "upfirdn2d: x must be float16, bfloat16, float32 or float64, got ", x.scalar_type());
  TORCH_CHECK(f.dim() == 2 && f.numel() > 0, "upfirdn2d: f must be a non-empty 2-D filter, got ",
              f.sizes());
  TORCH_CHECK(at::isFloatingType(f.scalar_type()), "upfirdn2d: f must be floating point");
  TORCH_CHECK(f.device() == x.device(), "upfirdn2d: f must be on x's device ", x.device(),
              ", got ", f.device());
  TORCH_CHECK(upx >= 1 && upy >= 1 && downx >= 1 && downy >= 1,
              "upfirdn2d: up and down factors must be >= 1");
  TORCH_CHECK(f.numel() <= kMaxTaps, "upfirdn2d: filter too large for the CUDA kernel: ",
              f.sizes());
  const int64_t in_h = x.size(2), in_w = x.size(3), fh = f.size(0), fw = f.size(1);
  const int64_t out_h = (in_h * upy + pady0 + pady1 - fh) / downy + 1;
  const int64_t out_w = (in_w * upx + padx0 + padx1 - fw) / downx + 1;
  TORCH_CHECK(in_h * upy + pady0 + pady1 >= fh && in_w * upx + padx0 + padx1 >= fw,
              "upfirdn2d: output size must be >= 1 (padded input smaller than the filter)");
  const typename Backend::Guard guard(x);

  const bool channels_last = x.suggest_memory_format() == at::MemoryFormat::ChannelsLast;
  at::Tensor y = at::empty({x.size(0), x.size(1), out_h, out_w},
                           x.options().memory_format(channels_last
                                                         ? at::MemoryFormat::ChannelsLast
                                                         : at::MemoryFormat::Contiguous));
  if (y.numel() == 0) return y;

  int64_t x_extent = 1;
  for (int d = 0; d < 4; ++d) x_extent += (x.size(d) - 1) * x.stride(d);
  const int64_t axis_extent =
      std::max(out_h * downy + std::abs(pady0) + fh + in_h * upy,
               out_w * downx + std::abs(padx0) + fw + in_w * upx);
  const LaunchShape shape = Backend::shape();
  const int64_t blocks = grid_blocks(y.numel(), shape);
  // 32-bit index arithmetic is markedly faster; use it when every index fits.
  const bool small = indices_fit_int32(x_extent, y.numel(), axis_extent, blocks, shape.threads);
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, x.scalar_type(), "upfirdn2d", [&] {
    using T = at::opmath_type<scalar_t>;
    // The kernel correlates with f in the accumulation type, gain folded in.
    const at::Tensor fk = f.to(c10::CppTypeToScalarType<T>::value).mul(gain).contiguous();
    if (small) {
      launch<Backend, scalar_t, int32_t>(x, fk, y, upx, upy, downx, downy, padx0, pady0,
                                         flip_filter, channels_last, blocks, shape.threads);
    } else {
      launch<Backend, scalar_t, int64_t>(x, fk, y, upx, upy, downx, downy, padx0, pady0,
                                         flip_filter, channels_last, blocks, shape.threads);
    }
  });
  return y;
}

}  // namespace stylegan2_ops
