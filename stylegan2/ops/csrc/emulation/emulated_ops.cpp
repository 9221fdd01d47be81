// The CUDA kernels' own source (../bias_act_kernel.h, ../upfirdn2d_kernel.h) built for the CPU
// execution model of cpu_emulation.h, as a Python extension for the tests
// (stylegan2/ops/emulation.py). bias_act and upfirdn2d take CPU tensors and have the signatures
// of ../ops.cpp; the launch shape (threads per block, block cap) is settable, so that small
// launches exercise the grid-stride loops and the shared-memory load loop.
#include <ATen/Dispatch.h>
#include <ATen/OpMathType.h>
#include <ATen/core/Tensor.h>
#include <ATen/ops/empty.h>
#include <ATen/ops/empty_like.h>
#include <ATen/ops/full.h>
#include <torch/csrc/utils/pybind.h>

#include "cpu_emulation.h"

#include "../bias_act_kernel.h"
#include "../upfirdn2d_kernel.h"

namespace {

stylegan2_ops::LaunchShape g_shape{32, 3};

struct CpuBackend {
  static void check_device(const at::Tensor& x, const char* op) {
    TORCH_CHECK(x.device().is_cpu(), op, ": the CPU emulation takes CPU tensors");
  }

  struct Guard {
    explicit Guard(const at::Tensor&) {}
  };

  static stylegan2_ops::LaunchShape shape() { return g_shape; }

  template <typename Kernel, typename... Args>
  static void launch(Kernel kernel, int64_t blocks, int threads, size_t smem_bytes,
                     Args... args) {
    emulation::launch(kernel, {unsigned(blocks), 1, 1}, {unsigned(threads), 1, 1}, smem_bytes,
                      args...);
  }
};

void set_launch_shape(int threads, int64_t max_blocks) {
  TORCH_CHECK(threads >= 1 && threads <= 1024 && max_blocks >= 1,
              "set_launch_shape: threads must be in [1, 1024] and max_blocks >= 1");
  g_shape = {threads, max_blocks};
}

// Each thread writes its slot, waits at the barrier, then reads its neighbour's slot: right only
// if no thread passes __syncthreads() before all have written. Returns [blocks, threads].
__global__ void neighbour_kernel(int64_t* out) {
  __shared__ int64_t slots[1024];
  const unsigned t = threadIdx.x;
  slots[t] = int64_t(blockIdx.x) * 1000 + t;
  __syncthreads();
  const int64_t neighbour = slots[(t + 1) % blockDim.x];
  __syncthreads();  // nobody overwrites a slot (next block) before its neighbour has read it
  out[blockIdx.x * blockDim.x + t] = neighbour;
}

at::Tensor barrier_selftest(int64_t blocks, int64_t threads) {
  TORCH_CHECK(threads >= 1 && threads <= 1024 && blocks >= 1, "barrier_selftest: bad shape");
  at::Tensor out = at::full({blocks, threads}, -1, at::TensorOptions().dtype(at::kLong));
  emulation::launch(neighbour_kernel, {unsigned(blocks), 1, 1}, {unsigned(threads), 1, 1}, 0,
                    out.mutable_data_ptr<int64_t>());
  return out;
}

}  // namespace

PYBIND11_MODULE(TORCH_EXTENSION_NAME, m) {
  m.def("bias_act", &stylegan2_ops::bias_act_run<CpuBackend>, py::arg("x"), py::arg("b"),
        py::arg("ref"), py::arg("dy"), py::arg("mode"), py::arg("ref_is_x"), py::arg("dim"),
        py::arg("act"), py::arg("alpha"), py::arg("gain"), py::arg("clamp"));
  m.def("upfirdn2d", &stylegan2_ops::upfirdn2d_run<CpuBackend>, py::arg("x"), py::arg("f"),
        py::arg("upx"), py::arg("upy"), py::arg("downx"), py::arg("downy"), py::arg("padx0"),
        py::arg("padx1"), py::arg("pady0"), py::arg("pady1"), py::arg("flip_filter"),
        py::arg("gain"));
  m.def("set_launch_shape", &set_launch_shape, py::arg("threads"), py::arg("max_blocks"));
  m.def("launch_shape", [] { return py::make_tuple(g_shape.threads, g_shape.max_blocks); });
  m.def("grid_stride_fits_int32", &stylegan2_ops::grid_stride_fits_int32, py::arg("n"),
        py::arg("blocks"), py::arg("threads"));
  m.def("upfirdn2d_indices_fit_int32", &stylegan2_ops::upfirdn2d_detail::indices_fit_int32,
        py::arg("x_extent"), py::arg("total"), py::arg("axis_extent"), py::arg("blocks"),
        py::arg("threads"));
  m.def("upfirdn2d_max_taps", [] { return stylegan2_ops::upfirdn2d_detail::kMaxTaps; });
  m.def("barrier_selftest", &barrier_selftest, py::arg("blocks"), py::arg("threads"));
}
