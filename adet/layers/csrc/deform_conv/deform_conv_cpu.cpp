// CPU forward of (modulated) deformable convolution: bilinear im2col, then one GEMM
// per convolution group. Registers the op "deform_conv" (backend "cpu", and "cuda" in
// CUDA builds, whose im2col lives in deform_conv_cuda.cu).
#include <torch/extension.h>

#include <ATen/Parallel.h>
#include <pybind11/stl.h>

#include <cmath>

#include "../registry.h"
#include "deform_conv.h"

namespace adet {
namespace {

// Value of the plane `data` (height x width) at the real point (y, x); 0 outside.
template <typename T>
inline T bilinear(const T* data, int64_t height, int64_t width, T y, T x) {
  if (y <= -1 || y >= height || x <= -1 || x >= width) return 0;
  const int64_t y0 = static_cast<int64_t>(std::floor(y));
  const int64_t x0 = static_cast<int64_t>(std::floor(x));
  const T fy = y - y0, fx = x - x0;
  auto at = [&](int64_t yy, int64_t xx) -> T {
    return (yy >= 0 && yy < height && xx >= 0 && xx < width) ? data[yy * width + xx] : T(0);
  };
  return (1 - fy) * (1 - fx) * at(y0, x0) + (1 - fy) * fx * at(y0, x0 + 1) +
         fy * (1 - fx) * at(y0 + 1, x0) + fy * fx * at(y0 + 1, x0 + 1);
}

template <typename T>
void im2col_kernel(const T* input, const T* offset, const T* mask, T* columns, int64_t channels,
                   int64_t height, int64_t width, int64_t kh, int64_t kw, int64_t sh, int64_t sw,
                   int64_t ph, int64_t pw, int64_t dh, int64_t dw, int64_t out_h, int64_t out_w,
                   int64_t deform_groups) {
  const int64_t taps = kh * kw, plane = out_h * out_w;
  const int64_t channels_per_group = channels / deform_groups;
  at::parallel_for(0, channels, 1, [&](int64_t begin, int64_t end) {
    for (int64_t c = begin; c < end; ++c) {
      const int64_t g = c / channels_per_group;
      const T* in_c = input + c * height * width;
      for (int64_t k = 0; k < taps; ++k) {
        const int64_t i = k / kw, j = k % kw;
        const T* dy = offset + ((g * taps + k) * 2) * plane;
        const T* dx = dy + plane;
        const T* m = mask ? mask + (g * taps + k) * plane : nullptr;
        T* col = columns + (c * taps + k) * plane;
        for (int64_t oy = 0; oy < out_h; ++oy) {
          for (int64_t ox = 0; ox < out_w; ++ox) {
            const int64_t p = oy * out_w + ox;
            const T y = static_cast<T>(oy * sh - ph + i * dh) + dy[p];
            const T x = static_cast<T>(ox * sw - pw + j * dw) + dx[p];
            T v = bilinear(in_c, height, width, y, x);
            col[p] = m ? v * m[p] : v;
          }
        }
      }
    }
  });
}

}  // namespace

at::Tensor deform_im2col_cpu(const at::Tensor& input, const at::Tensor& offset,
                             const std::optional<at::Tensor>& mask, int64_t kernel_h,
                             int64_t kernel_w, int64_t stride_h, int64_t stride_w,
                             int64_t pad_h, int64_t pad_w, int64_t dil_h, int64_t dil_w,
                             int64_t out_h, int64_t out_w) {
  // input (C, H, W), offset (2*G*taps, Ho, Wo), mask (G*taps, Ho, Wo): one image, contiguous.
  const int64_t channels = input.size(0), taps = kernel_h * kernel_w;
  const int64_t deform_groups = offset.size(0) / (2 * taps);
  auto columns = at::empty({channels * taps, out_h * out_w}, input.options());
  AT_DISPATCH_FLOATING_TYPES(input.scalar_type(), "deform_im2col_cpu", [&] {
    im2col_kernel<scalar_t>(input.data_ptr<scalar_t>(), offset.data_ptr<scalar_t>(),
                            mask ? mask->data_ptr<scalar_t>() : nullptr,
                            columns.data_ptr<scalar_t>(), channels, input.size(1),
                            input.size(2), kernel_h, kernel_w, stride_h, stride_w, pad_h, pad_w,
                            dil_h, dil_w, out_h, out_w, deform_groups);
  });
  return columns;
}

at::Tensor deform_conv_forward(const at::Tensor& input_, const at::Tensor& offset_,
                               const std::optional<at::Tensor>& mask_, const at::Tensor& weight_,
                               const std::optional<at::Tensor>& bias, int64_t stride_h,
                               int64_t stride_w, int64_t pad_h, int64_t pad_w, int64_t dil_h,
                               int64_t dil_w) {
  TORCH_CHECK(input_.dim() == 4 && offset_.dim() == 4 && weight_.dim() == 4,
              "deform_conv_forward: input, offset and weight must be 4-D");
  const auto input = input_.contiguous(), offset = offset_.contiguous();
  const auto weight = weight_.contiguous();
  std::optional<at::Tensor> mask;
  if (mask_ && mask_->defined()) mask = mask_->contiguous();

  const int64_t batch = input.size(0), channels = input.size(1);
  const int64_t out_channels = weight.size(0), kernel_h = weight.size(2), kernel_w = weight.size(3);
  const int64_t taps = kernel_h * kernel_w;
  const int64_t groups = channels / weight.size(1);
  TORCH_CHECK(groups * weight.size(1) == channels && out_channels % groups == 0,
              "deform_conv_forward: channels do not match the weight's groups");
  const int64_t out_h = (input.size(2) + 2 * pad_h - dil_h * (kernel_h - 1) - 1) / stride_h + 1;
  const int64_t out_w = (input.size(3) + 2 * pad_w - dil_w * (kernel_w - 1) - 1) / stride_w + 1;
  TORCH_CHECK(offset.size(0) == batch && offset.size(1) % (2 * taps) == 0 &&
                  offset.size(2) == out_h && offset.size(3) == out_w,
              "deform_conv_forward: offset must be (N, 2*G*kh*kw, Ho, Wo)");
  const int64_t deform_groups = offset.size(1) / (2 * taps);
  TORCH_CHECK(channels % deform_groups == 0, "deform_conv_forward: C_in % deformable groups != 0");
  if (mask) {
    TORCH_CHECK(mask->size(0) == batch && mask->size(1) == deform_groups * taps &&
                    mask->size(2) == out_h && mask->size(3) == out_w,
                "deform_conv_forward: mask must be (N, G*kh*kw, Ho, Wo)");
  }

  auto output = at::empty({batch, out_channels, out_h, out_w}, input.options());
  const auto w = weight.view({groups, out_channels / groups, -1});
  for (int64_t n = 0; n < batch; ++n) {
    std::optional<at::Tensor> mask_n;
    if (mask) mask_n = (*mask)[n];
    at::Tensor columns;
    if (input.is_cuda()) {
#ifdef WITH_CUDA
      columns = deform_im2col_cuda(input[n], offset[n], mask_n, kernel_h, kernel_w, stride_h,
                                   stride_w, pad_h, pad_w, dil_h, dil_w, out_h, out_w);
#else
      TORCH_CHECK(false, "adet._C was built without CUDA");
#endif
    } else {
      columns = deform_im2col_cpu(input[n], offset[n], mask_n, kernel_h, kernel_w, stride_h,
                                  stride_w, pad_h, pad_w, dil_h, dil_w, out_h, out_w);
    }
    output[n].view({groups, out_channels / groups, out_h * out_w})
        .copy_(at::bmm(w, columns.view({groups, -1, out_h * out_w})));
  }
  if (bias && bias->defined()) output.add_(bias->view({1, -1, 1, 1}));
  return output;
}

}  // namespace adet

ADET_REGISTER_OP("deform_conv", "cpu", [](pybind11::module_& m) {
  m.def("deform_conv_forward", &adet::deform_conv_forward,
        "(modulated) deformable convolution, forward only (no autograd)", pybind11::arg("input"),
        pybind11::arg("offset"), pybind11::arg("mask"), pybind11::arg("weight"),
        pybind11::arg("bias"), pybind11::arg("stride_h"), pybind11::arg("stride_w"),
        pybind11::arg("pad_h"), pybind11::arg("pad_w"), pybind11::arg("dil_h"),
        pybind11::arg("dil_w"));
});

#ifdef WITH_CUDA
ADET_REGISTER_OP("deform_conv", "cuda", nullptr);
#endif
