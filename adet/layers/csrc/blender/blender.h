// Fused BlendMask blender: ROIAlign crop of the bases, bilinear resize of the attentions,
// softmax over the bases and their weighted sum, in one pass per output pixel, without
// materialising the (N, K, R, R) crops or resized attentions.
//
//   bases (B, K, H, W), rois (N, 5) = (batch index, x0, y0, x1, y1) in image coordinates,
//   attns (N, K, A, A) logits  ->  out (N, R, R)
//   out[n, p] = sum_k softmax_k(resize(attns[n])[k, p]) * roi_align(bases, rois[n])[k, p]
//
// Same semantics as the pure path in adet/layers/blender_op.py: torchvision's roi_align
// (spatial_scale, sampling_ratio <= 0 meaning adaptive, aligned) and
// F.interpolate(mode="bilinear", align_corners=False).
#pragma once

#include <ATen/ATen.h>

#include <cmath>
#include <vector>

#ifdef __CUDACC__
#define ADET_HD __host__ __device__ inline
#else
#define ADET_HD inline
#endif

namespace adet {
namespace blender {

// Two neighbours on one axis and their weights; both weights are 0 for a sample that
// reads nothing (outside the feature map).
template <typename T>
struct Tap {
  int64_t lo, hi;
  T wlo, whi;
};

// The ROI of one box in feature-map coordinates, as torchvision's roi_align sees it.
template <typename T>
struct RoiGeometry {
  int64_t batch;
  T y0, x0, bin_h, bin_w;
  int64_t grid_h, grid_w;  // samples per bin on each axis
  T inv_count;             // 1 / (samples per bin), the bin average
};

template <typename T>
ADET_HD RoiGeometry<T> roi_geometry(const T* roi, int64_t resolution, T scale,
                                    int64_t sampling_ratio, bool aligned) {
  RoiGeometry<T> g;
  const T offset = aligned ? T(0.5) : T(0);
  g.batch = static_cast<int64_t>(roi[0]);
  g.x0 = roi[1] * scale - offset;
  g.y0 = roi[2] * scale - offset;
  T width = roi[3] * scale - offset - g.x0;
  T height = roi[4] * scale - offset - g.y0;
  if (!aligned) {  // legacy ROIAlign: at least one feature pixel
    width = width > T(1) ? width : T(1);
    height = height > T(1) ? height : T(1);
  }
  g.bin_h = height / static_cast<T>(resolution);
  g.bin_w = width / static_cast<T>(resolution);
  g.grid_h = sampling_ratio > 0 ? sampling_ratio : static_cast<int64_t>(ceil(g.bin_h));
  g.grid_w = sampling_ratio > 0 ? sampling_ratio : static_cast<int64_t>(ceil(g.bin_w));
  const int64_t count = g.grid_h * g.grid_w;
  g.inv_count = T(1) / static_cast<T>(count > 1 ? count : 1);
  return g;
}

// Position of sample i of bin p on an axis that starts at `start` with bins of `bin`.
template <typename T>
ADET_HD T sample_position(T start, T bin, int64_t p, int64_t i, int64_t grid) {
  return start + static_cast<T>(p) * bin +
         (static_cast<T>(i) + T(0.5)) * bin / static_cast<T>(grid);
}

// ROIAlign's bilinear tap at real position v on an axis of `size` pixels: reads nothing
// beyond one pixel outside (weights 0, indices at the near border, so that a ROI's taps
// span no more than its extent), clamps to the border within it.
template <typename T>
ADET_HD Tap<T> roi_tap(T v, int64_t size) {
  if (v < T(-1)) return {0, 0, T(0), T(0)};
  if (v > static_cast<T>(size)) return {size - 1, size - 1, T(0), T(0)};
  if (v <= T(0)) v = T(0);
  int64_t lo = static_cast<int64_t>(v), hi = lo + 1;
  if (lo >= size - 1) {
    lo = hi = size - 1;
    v = static_cast<T>(lo);
  }
  const T l = v - static_cast<T>(lo);
  return {lo, hi, T(1) - l, l};
}

// F.interpolate(bilinear, align_corners=False) tap of output index dst, in_size -> out_size.
template <typename T>
ADET_HD Tap<T> resize_tap(int64_t dst, int64_t in_size, int64_t out_size) {
  const T scale = static_cast<T>(in_size) / static_cast<T>(out_size);
  T src = scale * (static_cast<T>(dst) + T(0.5)) - T(0.5);
  if (src < T(0)) src = T(0);
  const int64_t lo = static_cast<int64_t>(src);
  const int64_t hi = lo < in_size - 1 ? lo + 1 : lo;
  const T l = src - static_cast<T>(lo);
  return {lo, hi, T(1) - l, l};
}

// Bilinear read of a row-major plane of `width` columns.
template <typename T>
ADET_HD T read(const T* plane, int64_t width, const Tap<T>& ty, const Tap<T>& tx) {
  return ty.wlo * (tx.wlo * plane[ty.lo * width + tx.lo] + tx.whi * plane[ty.lo * width + tx.hi]) +
         ty.whi * (tx.wlo * plane[ty.hi * width + tx.lo] + tx.whi * plane[ty.hi * width + tx.hi]);
}

// Adjoint of read: adds g times the weights to the four neighbours (not atomic).
template <typename T>
ADET_HD void scatter(T* plane, int64_t width, const Tap<T>& ty, const Tap<T>& tx, T g) {
  const T gy0 = g * ty.wlo, gy1 = g * ty.whi;
  plane[ty.lo * width + tx.lo] += gy0 * tx.wlo;
  plane[ty.lo * width + tx.hi] += gy0 * tx.whi;
  plane[ty.hi * width + tx.lo] += gy1 * tx.wlo;
  plane[ty.hi * width + tx.hi] += gy1 * tx.whi;
}

}  // namespace blender

// CPU and CUDA entry points (dispatch on the device of bases). rois must have the dtype
// of bases; attns is (N, K, A, A).
at::Tensor blender_forward(const at::Tensor& bases, const at::Tensor& rois, const at::Tensor& attns,
                           int64_t resolution, double spatial_scale, int64_t sampling_ratio,
                           bool aligned);

// Returns {grad_bases, grad_attns} for grad_out (N, R, R).
std::vector<at::Tensor> blender_backward(const at::Tensor& grad_out, const at::Tensor& bases,
                                         const at::Tensor& rois, const at::Tensor& attns,
                                         int64_t resolution, double spatial_scale,
                                         int64_t sampling_ratio, bool aligned);

#ifdef WITH_CUDA
at::Tensor blender_forward_cuda(const at::Tensor& bases, const at::Tensor& rois,
                                const at::Tensor& attns, int64_t resolution, double spatial_scale,
                                int64_t sampling_ratio, bool aligned);

std::vector<at::Tensor> blender_backward_cuda(const at::Tensor& grad_out, const at::Tensor& bases,
                                              const at::Tensor& rois, const at::Tensor& attns,
                                              int64_t resolution, double spatial_scale,
                                              int64_t sampling_ratio, bool aligned);
#endif

}  // namespace adet
