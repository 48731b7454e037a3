// Deformable convolution (DCNv1) and modulated deformable convolution (DCNv2), forward.
//
// Same semantics as torchvision.ops.deform_conv2d (the pure path in
// adet/layers/deform_conv.py): offset (N, 2*G*kh*kw, Ho, Wo) ordered
// [group][tap][dy, dx]; mask (N, G*kh*kw, Ho, Wo); bilinear sampling that reads 0
// outside the input. Convolution groups = C_in / weight.size(1).
#pragma once

#include <ATen/ATen.h>

#include <optional>

namespace adet {

// Gathers the bilinear samples of every tap: columns (C_in * kh * kw, Ho * Wo) for
// one image, each sample multiplied by its mask value when mask is given.
at::Tensor deform_im2col_cpu(const at::Tensor& input, const at::Tensor& offset,
                             const std::optional<at::Tensor>& mask, int64_t kernel_h,
                             int64_t kernel_w, int64_t stride_h, int64_t stride_w,
                             int64_t pad_h, int64_t pad_w, int64_t dil_h, int64_t dil_w,
                             int64_t out_h, int64_t out_w);

at::Tensor deform_conv_forward(const at::Tensor& input, const at::Tensor& offset,
                               const std::optional<at::Tensor>& mask, const at::Tensor& weight,
                               const std::optional<at::Tensor>& bias, int64_t stride_h,
                               int64_t stride_w, int64_t pad_h, int64_t pad_w, int64_t dil_h,
                               int64_t dil_w);

#ifdef WITH_CUDA
at::Tensor deform_im2col_cuda(const at::Tensor& input, const at::Tensor& offset,
                              const std::optional<at::Tensor>& mask, int64_t kernel_h,
                              int64_t kernel_w, int64_t stride_h, int64_t stride_w,
                              int64_t pad_h, int64_t pad_w, int64_t dil_h, int64_t dil_w,
                              int64_t out_h, int64_t out_w);
#endif

}  // namespace adet
