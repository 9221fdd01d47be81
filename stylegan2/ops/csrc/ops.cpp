// Python bindings of the stylegan2.ops CUDA kernels (bias_act.cu, upfirdn2d.cu).
#include <torch/csrc/utils/pybind.h>

#include "ops.h"

PYBIND11_MODULE(TORCH_EXTENSION_NAME, m) {
  m.def("bias_act", &stylegan2_ops::bias_act,
        "Fused bias + activation (mode 0), its gradient (mode 1) or second derivative (mode 2)",
        py::arg("x"), py::arg("b"), py::arg("ref"), py::arg("dy"), py::arg("mode"),
        py::arg("ref_is_x"), py::arg("dim"), py::arg("act"), py::arg("alpha"), py::arg("gain"),
        py::arg("clamp"));
  m.def("upfirdn2d", &stylegan2_ops::upfirdn2d,
        "Upsample, pad, FIR filter and downsample a [N, C, H, W] tensor",
        py::arg("x"), py::arg("f"), py::arg("upx"), py::arg("upy"), py::arg("downx"),
        py::arg("downy"), py::arg("padx0"), py::arg("padx1"), py::arg("pady0"), py::arg("pady1"),
        py::arg("flip_filter"), py::arg("gain"));
}
