// CUDA bilinear im2col of (modulated) deformable convolution; the GEMM and the bindings
// are in deform_conv_cpu.cpp (deform_conv_forward dispatches on the input's device).
#include <ATen/ATen.h>
#include <ATen/cuda/CUDAContext.h>
#include <c10/cuda/CUDAGuard.h>

#include "deform_conv.h"

namespace adet {
namespace {

template <typename T>
__device__ inline T bilinear(const T* data, int64_t height, int64_t width, T y, T x) {
  if (y <= -1 || y >= height || x <= -1 || x >= width) return 0;
  const int64_t y0 = static_cast<int64_t>(floor(y));
  const int64_t x0 = static_cast<int64_t>(floor(x));
  const T fy = y - y0, fx = x - x0;
  T v00 = 0, v01 = 0, v10 = 0, v11 = 0;
  if (y0 >= 0 && x0 >= 0) v00 = data[y0 * width + x0];
  if (y0 >= 0 && x0 + 1 < width) v01 = data[y0 * width + x0 + 1];
  if (y0 + 1 < height && x0 >= 0) v10 = data[(y0 + 1) * width + x0];
  if (y0 + 1 < height && x0 + 1 < width) v11 = data[(y0 + 1) * width + x0 + 1];
  return (1 - fy) * (1 - fx) * v00 + (1 - fy) * fx * v01 + fy * (1 - fx) * v10 + fy * fx * v11;
}

// One thread per (channel, tap, output position).
template <typename T>
__global__ void im2col_kernel(int64_t total, const T* input, const T* offset, const T* mask,
                              T* columns, int64_t channels, int64_t height, int64_t width,
                              int64_t kh, int64_t kw, int64_t sh, int64_t sw, int64_t ph,
                              int64_t pw, int64_t dh, int64_t dw, int64_t out_h, int64_t out_w,
                              int64_t deform_groups) {
  const int64_t taps = kh * kw, plane = out_h * out_w;
  for (int64_t index = blockIdx.x * (int64_t)blockDim.x + threadIdx.x; index < total;
       index += (int64_t)blockDim.x * gridDim.x) {
    const int64_t p = index % plane;
    const int64_t k = (index / plane) % taps;
    const int64_t c = index / (plane * taps);
    const int64_t g = c / (channels / deform_groups);
    const int64_t oy = p / out_w, ox = p % out_w;
    const T* dy = offset + ((g * taps + k) * 2) * plane;
    const T y = static_cast<T>(oy * sh - ph + (k / kw) * dh) + dy[p];
    const T x = static_cast<T>(ox * sw - pw + (k % kw) * dw) + dy[plane + p];
    T v = bilinear(input + c * height * width, height, width, y, x);
    if (mask != nullptr) v *= mask[(g * taps + k) * plane + p];
    columns[index] = v;  // columns is (C * taps, Ho * Wo): index = (c * taps + k) * plane + p
  }
}

}  // namespace

at::Tensor deform_im2col_cuda(const at::Tensor& input, const at::Tensor& offset,
                              const std::optional<at::Tensor>& mask, int64_t kernel_h,
                              int64_t kernel_w, int64_t stride_h, int64_t stride_w,
                              int64_t pad_h, int64_t pad_w, int64_t dil_h, int64_t dil_w,
                              int64_t out_h, int64_t out_w) {
  at::cuda::CUDAGuard guard(input.device());
  const int64_t channels = input.size(0), taps = kernel_h * kernel_w;
  const int64_t deform_groups = offset.size(0) / (2 * taps);
  auto columns = at::empty({channels * taps, out_h * out_w}, input.options());
  const int64_t total = columns.numel();
  if (total == 0) return columns;
  const int threads = 256;
  const int64_t blocks = std::min<int64_t>((total + threads - 1) / threads, 65535 * 8);
  auto stream = at::cuda::getCurrentCUDAStream();
  AT_DISPATCH_FLOATING_TYPES_AND_HALF(input.scalar_type(), "deform_im2col_cuda", [&] {
    im2col_kernel<scalar_t><<<blocks, threads, 0, stream>>>(
        total, input.data_ptr<scalar_t>(), offset.data_ptr<scalar_t>(),
        mask ? mask->data_ptr<scalar_t>() : nullptr, columns.data_ptr<scalar_t>(), channels,
        input.size(1), input.size(2), kernel_h, kernel_w, stride_h, stride_w, pad_h, pad_w, dil_h,
        dil_w, out_h, out_w, deform_groups);
  });
  C10_CUDA_KERNEL_LAUNCH_CHECK();
  return columns;
}

}  // namespace adet
