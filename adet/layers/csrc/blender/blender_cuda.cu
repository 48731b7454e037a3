// CUDA kernels of the fused blender (see blender.h); bindings and dispatch are in
// blender_cpu.cpp. One thread per output pixel (ROI, row, column): it reads the K
// attention logits and K ROIAlign samples directly, so no (N, K, R, R) tensor exists.
// The backward recomputes them (cheaper than storing them) and adds its gradients with
// atomics, since ROIs overlap on the bases and pixels share attention cells.
#include <ATen/ATen.h>
#include <ATen/cuda/CUDAContext.h>
#include <c10/cuda/CUDAGuard.h>

#include "blender.h"

namespace adet {
namespace {

using blender::RoiGeometry;
using blender::Tap;

struct Dims {
  int64_t batch, bases, height, width, attn, res, rois;
};

template <typename T>
__device__ inline T attn_logit(const T* attn_n, const Dims& d, int64_t k, int64_t ph, int64_t pw) {
  const Tap<T> ty = blender::resize_tap<T>(ph, d.attn, d.res);
  const Tap<T> tx = blender::resize_tap<T>(pw, d.attn, d.res);
  return blender::read(attn_n + k * d.attn * d.attn, d.attn, ty, tx);
}

// Calls visit(ty, tx) with the bilinear taps of each ROIAlign sample of bin (ph, pw):
// the forward reads through them, the backward scatters through the same ones.
template <typename T, typename Visit>
__device__ inline void for_each_sample(const Dims& d, const RoiGeometry<T>& g, int64_t ph,
                                       int64_t pw, Visit visit) {
  for (int64_t iy = 0; iy < g.grid_h; ++iy) {
    const Tap<T> ty =
        blender::roi_tap(blender::sample_position(g.y0, g.bin_h, ph, iy, g.grid_h), d.height);
    for (int64_t ix = 0; ix < g.grid_w; ++ix) {
      visit(ty, blender::roi_tap(blender::sample_position(g.x0, g.bin_w, pw, ix, g.grid_w), d.width));
    }
  }
}

// Mean of the ROIAlign samples of bin (ph, pw) on one base plane.
template <typename T>
__device__ inline T crop_value(const T* plane, const Dims& d, const RoiGeometry<T>& g, int64_t ph,
                               int64_t pw) {
  T sum = 0;
  for_each_sample(d, g, ph, pw,
                  [&](const Tap<T>& ty, const Tap<T>& tx) { sum += blender::read(plane, d.width, ty, tx); });
  return sum * g.inv_count;
}

template <typename T>
__device__ inline void atomic_scatter(T* plane, int64_t width, const Tap<T>& ty, const Tap<T>& tx,
                                      T g) {
  atomicAdd(plane + ty.lo * width + tx.lo, g * ty.wlo * tx.wlo);
  atomicAdd(plane + ty.lo * width + tx.hi, g * ty.wlo * tx.whi);
  atomicAdd(plane + ty.hi * width + tx.lo, g * ty.whi * tx.wlo);
  atomicAdd(plane + ty.hi * width + tx.hi, g * ty.whi * tx.whi);
}

// The softmax statistics of one pixel: max logit, sum of exp, and the blended value.
template <typename T>
struct Blend {
  T top, total, out;
};

template <typename T>
__device__ inline Blend<T> blend_pixel(const T* image, const T* attn_n, const Dims& d,
                                       const RoiGeometry<T>& g, int64_t ph, int64_t pw) {
  T top = -INFINITY;
  for (int64_t k = 0; k < d.bases; ++k) {
    const T l = attn_logit(attn_n, d, k, ph, pw);
    top = l > top ? l : top;
  }
  T total = 0, acc = 0;
  for (int64_t k = 0; k < d.bases; ++k) {
    const T e = exp(attn_logit(attn_n, d, k, ph, pw) - top);
    total += e;
    acc += e * crop_value(image + k * d.height * d.width, d, g, ph, pw);
  }
  return {top, total, acc / total};
}

template <typename T>
__global__ void forward_kernel(const T* bases, const T* rois, const T* attns, T* out, Dims d,
                               T scale, int64_t sampling_ratio, bool aligned) {
  const int64_t total = d.rois * d.res * d.res;
  for (int64_t i = blockIdx.x * (int64_t)blockDim.x + threadIdx.x; i < total;
       i += (int64_t)blockDim.x * gridDim.x) {
    const int64_t pw = i % d.res, ph = (i / d.res) % d.res, n = i / (d.res * d.res);
    const auto g = blender::roi_geometry<T>(rois + n * 5, d.res, scale, sampling_ratio, aligned);
    if (g.batch < 0 || g.batch >= d.batch) {  // invalid ROI: nothing to read
      out[i] = 0;
      continue;
    }
    const T* image = bases + g.batch * d.bases * d.height * d.width;
    out[i] = blend_pixel(image, attns + n * d.bases * d.attn * d.attn, d, g, ph, pw).out;
  }
}

template <typename T>
__global__ void backward_kernel(const T* grad, const T* bases, const T* rois, const T* attns,
                                T* grad_bases, T* grad_attns, Dims d, T scale,
                                int64_t sampling_ratio, bool aligned) {
  const int64_t total = d.rois * d.res * d.res;
  const int64_t base_plane = d.height * d.width, attn_plane = d.attn * d.attn;
  for (int64_t i = blockIdx.x * (int64_t)blockDim.x + threadIdx.x; i < total;
       i += (int64_t)blockDim.x * gridDim.x) {
    const T gout = grad[i];
    const int64_t pw = i % d.res, ph = (i / d.res) % d.res, n = i / (d.res * d.res);
    const auto g = blender::roi_geometry<T>(rois + n * 5, d.res, scale, sampling_ratio, aligned);
    if (gout == T(0) || g.batch < 0 || g.batch >= d.batch) continue;
    const T* image = bases + g.batch * d.bases * base_plane;
    const T* attn_n = attns + n * d.bases * attn_plane;
    const Blend<T> b = blend_pixel(image, attn_n, d, g, ph, pw);
    const Tap<T> ay = blender::resize_tap<T>(ph, d.attn, d.res);
    const Tap<T> ax = blender::resize_tap<T>(pw, d.attn, d.res);
    for (int64_t k = 0; k < d.bases; ++k) {
      const T s = exp(attn_logit(attn_n, d, k, ph, pw) - b.top) / b.total;
      const T v = crop_value(image + k * base_plane, d, g, ph, pw);
      atomic_scatter(grad_attns + (n * d.bases + k) * attn_plane, d.attn, ay, ax,
                     gout * s * (v - b.out));
      // d out / d bases: the weight s, spread back through ROIAlign's bilinear samples.
      T* plane = grad_bases + (g.batch * d.bases + k) * base_plane;
      const T c = gout * s * g.inv_count;
      for_each_sample(d, g, ph, pw,
                      [&](const Tap<T>& ty, const Tap<T>& tx) { atomic_scatter(plane, d.width, ty, tx, c); });
    }
  }
}

Dims dims_of(const at::Tensor& bases, const at::Tensor& attns, int64_t resolution) {
  return {bases.size(0), bases.size(1), bases.size(2), bases.size(3), attns.size(2), resolution,
          attns.size(0)};
}

int64_t num_blocks(int64_t total, int threads) {
  return std::min<int64_t>((total + threads - 1) / threads, 65535LL * 8);
}

}  // namespace

at::Tensor blender_forward_cuda(const at::Tensor& bases, const at::Tensor& rois,
                                const at::Tensor& attns, int64_t resolution, double spatial_scale,
                                int64_t sampling_ratio, bool aligned) {
  at::cuda::CUDAGuard guard(bases.device());
  auto out = at::empty({rois.size(0), resolution, resolution}, bases.options());
  const int64_t total = out.numel();
  if (total == 0) return out;
  const Dims d = dims_of(bases, attns, resolution);
  const int threads = 256;
  auto stream = at::cuda::getCurrentCUDAStream();
  AT_DISPATCH_FLOATING_TYPES(bases.scalar_type(), "blender_forward_cuda", [&] {
    forward_kernel<scalar_t><<<num_blocks(total, threads), threads, 0, stream>>>(
        bases.data_ptr<scalar_t>(), rois.data_ptr<scalar_t>(), attns.data_ptr<scalar_t>(),
        out.data_ptr<scalar_t>(), d, static_cast<scalar_t>(spatial_scale), sampling_ratio, aligned);
  });
  C10_CUDA_KERNEL_LAUNCH_CHECK();
  return out;
}

std::vector<at::Tensor> blender_backward_cuda(const at::Tensor& grad, const at::Tensor& bases,
                                              const at::Tensor& rois, const at::Tensor& attns,
                                              int64_t resolution, double spatial_scale,
                                              int64_t sampling_ratio, bool aligned) {
  at::cuda::CUDAGuard guard(bases.device());
  auto grad_bases = at::zeros_like(bases);
  auto grad_attns = at::zeros_like(attns);
  const int64_t total = grad.numel();
  if (total == 0) return {grad_bases, grad_attns};
  const Dims d = dims_of(bases, attns, resolution);
  const int threads = 256;
  auto stream = at::cuda::getCurrentCUDAStream();
  AT_DISPATCH_FLOATING_TYPES(bases.scalar_type(), "blender_backward_cuda", [&] {
    backward_kernel<scalar_t><<<num_blocks(total, threads), threads, 0, stream>>>(
        grad.data_ptr<scalar_t>(), bases.data_ptr<scalar_t>(), rois.data_ptr<scalar_t>(),
        attns.data_ptr<scalar_t>(), grad_bases.data_ptr<scalar_t>(),
        grad_attns.data_ptr<scalar_t>(), d, static_cast<scalar_t>(spatial_scale), sampling_ratio,
        aligned);
  });
  C10_CUDA_KERNEL_LAUNCH_CHECK();
  return {grad_bases, grad_attns};
}

}  // namespace adet
