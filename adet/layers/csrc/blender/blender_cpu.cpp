// CPU kernels of the fused blender (see blender.h), the device dispatch and the bindings
// of the op "blender" (backend "cpu", and "cuda" in CUDA builds, whose kernels live in
// blender_cuda.cu).
//
// Work is split by ROI (in parallel) and, inside a ROI, done row by row with small
// per-thread buffers of one ROI's size (K x R x R), so that the inner loops run over
// contiguous memory and no (N, K, R, R) tensor is made in the forward. The backward
// computes the attention gradients per ROI (no sharing between ROIs), keeps the bases'
// gradient coefficients (N, K, R, R), and spreads them into the bases per (image, base)
// plane, so that no two threads add into the same plane and the result does not depend
// on the thread count.
#include <torch/extension.h>

#include <ATen/Parallel.h>

#include <algorithm>
#include <cmath>
#include <vector>

#include "../registry.h"
#include "blender.h"

namespace adet {
namespace {

using blender::Tap;

// Sizes shared by every kernel of one call.
struct Dims {
  int64_t batch, bases, height, width, attn, res, rois;
  int64_t base_plane() const { return height * width; }
  int64_t attn_plane() const { return attn * attn; }
  int64_t pixels() const { return res * res; }
};

Dims dims_of(const at::Tensor& bases, const at::Tensor& attns, int64_t resolution) {
  return {bases.size(0), bases.size(1), bases.size(2), bases.size(3), attns.size(2), resolution,
          attns.size(0)};
}

// ROIAlign sample taps of one ROI: ys[ph * gh + iy], xs[pw * gw + ix]; the columns they
// touch are [x_first, x_last].
template <typename T>
struct RoiTaps {
  blender::RoiGeometry<T> g;
  int64_t gh = 0, gw = 0;
  std::vector<Tap<T>> ys, xs;
  int64_t x_first = 0, x_last = -1;
  // Blend each row pair over [x_first, x_last] first, then gather along x: fewer reads
  // than gathering 2 x 2 pixels per sample when the ROI is at most ~2 bins per column wide.
  bool rows_first = false;

  void build(const T* roi, const Dims& d, T scale, int64_t sampling_ratio, bool aligned) {
    g = blender::roi_geometry<T>(roi, d.res, scale, sampling_ratio, aligned);
    gh = std::max<int64_t>(g.grid_h, 0);  // an inverted aligned box has no samples
    gw = std::max<int64_t>(g.grid_w, 0);
    ys.resize(d.res * gh);
    xs.resize(d.res * gw);
    for (int64_t p = 0; p < d.res; ++p) {
      for (int64_t i = 0; i < gh; ++i) {
        const T y = blender::sample_position(g.y0, g.bin_h, p, i, gh);
        ys[p * gh + i] = blender::roi_tap(y, d.height);
      }
      for (int64_t i = 0; i < gw; ++i) {
        const T x = blender::sample_position(g.x0, g.bin_w, p, i, gw);
        xs[p * gw + i] = blender::roi_tap(x, d.width);
      }
    }
    // Sorted for a box of positive width; an inverted box runs backwards: take the extent.
    x_first = d.width;
    x_last = -1;
    for (const auto& t : xs) {
      x_first = std::min(x_first, t.lo);
      x_last = std::max(x_last, t.hi);
    }
    rows_first = !xs.empty() && x_last - x_first + 1 <= 2 * d.res * gw;
  }
};

// Per-thread buffers, sized for one ROI.
template <typename T>
struct Scratch {
  RoiTaps<T> rt;
  std::vector<Tap<T>> attn_taps;  // the resize A -> R: the same for rows, columns and ROIs
  std::vector<T> rows;            // (K, A, R): attentions resized along x
  std::vector<T> weight;          // (K, R, R): resized logits, then softmax weights
  std::vector<T> value;           // (K, R, R) in the backward, (R) in the forward
  std::vector<T> total;           // (R, R)
  std::vector<T> line;            // (W): one blended row pair of a base plane

  explicit Scratch(const Dims& d)
      : attn_taps(d.res), rows(d.bases * d.attn * d.res), weight(d.bases * d.pixels()),
        value(d.bases * d.pixels()), total(d.pixels()), line(d.width) {
    for (int64_t p = 0; p < d.res; ++p) attn_taps[p] = blender::resize_tap<T>(p, d.attn, d.res);
  }
};

// weight = bilinear resize (align_corners=False) of the ROI's attentions to R x R:
// along x into `rows`, then along y with contiguous inner loops.
template <typename T>
void resize_attentions(const T* attn_n, const Dims& d, Scratch<T>& s) {
  const auto& taps = s.attn_taps;
  for (int64_t ka = 0; ka < d.bases * d.attn; ++ka) {
    const T* src = attn_n + ka * d.attn;
    T* dst = s.rows.data() + ka * d.res;
    for (int64_t pw = 0; pw < d.res; ++pw)
      dst[pw] = taps[pw].wlo * src[taps[pw].lo] + taps[pw].whi * src[taps[pw].hi];
  }
  for (int64_t k = 0; k < d.bases; ++k) {
    const T* rows_k = s.rows.data() + k * d.attn * d.res;
    for (int64_t ph = 0; ph < d.res; ++ph) {
      const T* r0 = rows_k + taps[ph].lo * d.res;
      const T* r1 = rows_k + taps[ph].hi * d.res;
      const T w0 = taps[ph].wlo, w1 = taps[ph].whi;
      T* dst = s.weight.data() + (k * d.res + ph) * d.res;
      for (int64_t pw = 0; pw < d.res; ++pw) dst[pw] = w0 * r0[pw] + w1 * r1[pw];
    }
  }
}

// weight: logits -> softmax over K at every pixel (max-subtracted, as torch.softmax).
template <typename T>
void softmax_over_bases(const Dims& d, Scratch<T>& s) {
  const int64_t pixels = d.pixels();
  T* w = s.weight.data();
  T* total = s.total.data();
  std::copy(w, w + pixels, total);  // running max first
  for (int64_t k = 1; k < d.bases; ++k)
    for (int64_t p = 0; p < pixels; ++p) total[p] = std::max(total[p], w[k * pixels + p]);
  // Scalar std::exp: calling ATen's vectorised exp_ here, inside parallel_for, made
  // OpenMP threads spin and was many times slower with more than one thread.
  for (int64_t k = 0; k < d.bases; ++k)
    for (int64_t p = 0; p < pixels; ++p) w[k * pixels + p] = std::exp(w[k * pixels + p] - total[p]);
  std::fill(total, total + pixels, T(0));
  for (int64_t k = 0; k < d.bases; ++k)
    for (int64_t p = 0; p < pixels; ++p) total[p] += w[k * pixels + p];
  for (int64_t p = 0; p < pixels; ++p) total[p] = T(1) / total[p];
  for (int64_t k = 0; k < d.bases; ++k)
    for (int64_t p = 0; p < pixels; ++p) w[k * pixels + p] *= total[p];
}

// Row ph of the ROIAlign crop of one base plane: out[pw] = mean of the bin's samples.
template <typename T>
void crop_row(const T* plane, const Dims& d, const RoiTaps<T>& rt, int64_t ph, T* out, T* line) {
  if (rt.rows_first) {
    const int64_t x0 = rt.x_first, len = rt.x_last - rt.x_first + 1;
    std::fill(line, line + len, T(0));
    for (int64_t iy = 0; iy < rt.gh; ++iy) {
      const Tap<T>& ty = rt.ys[ph * rt.gh + iy];
      if (ty.wlo == T(0) && ty.whi == T(0)) continue;  // outside the map: reads nothing
      const T* r0 = plane + ty.lo * d.width + x0;
      const T* r1 = plane + ty.hi * d.width + x0;
      for (int64_t x = 0; x < len; ++x) line[x] += ty.wlo * r0[x] + ty.whi * r1[x];
    }
    for (int64_t pw = 0; pw < d.res; ++pw) {
      T v = 0;
      for (int64_t ix = 0; ix < rt.gw; ++ix) {
        const Tap<T>& tx = rt.xs[pw * rt.gw + ix];
        v += tx.wlo * line[tx.lo - x0] + tx.whi * line[tx.hi - x0];
      }
      out[pw] = v * rt.g.inv_count;
    }
    return;
  }
  std::fill(out, out + d.res, T(0));
  for (int64_t iy = 0; iy < rt.gh; ++iy) {
    const Tap<T>& ty = rt.ys[ph * rt.gh + iy];
    if (ty.wlo == T(0) && ty.whi == T(0)) continue;  // outside the map: reads nothing
    const T* r0 = plane + ty.lo * d.width;
    const T* r1 = plane + ty.hi * d.width;
    for (int64_t pw = 0; pw < d.res; ++pw) {
      T v = 0;
      for (int64_t ix = 0; ix < rt.gw; ++ix) {
        const Tap<T>& tx = rt.xs[pw * rt.gw + ix];
        v += tx.wlo * (ty.wlo * r0[tx.lo] + ty.whi * r1[tx.lo]) +
             tx.whi * (ty.wlo * r0[tx.hi] + ty.whi * r1[tx.hi]);
      }
      out[pw] += v;
    }
  }
  for (int64_t pw = 0; pw < d.res; ++pw) out[pw] *= rt.g.inv_count;
}

// Adjoint of crop_row: adds coef[pw] (already divided by the sample count) to the samples.
template <typename T>
void uncrop_row(T* plane, const Dims& d, const RoiTaps<T>& rt, int64_t ph, const T* coef, T* line) {
  if (rt.rows_first) {
    const int64_t x0 = rt.x_first, len = rt.x_last - rt.x_first + 1;
    std::fill(line, line + len, T(0));
    for (int64_t pw = 0; pw < d.res; ++pw) {
      for (int64_t ix = 0; ix < rt.gw; ++ix) {
        const Tap<T>& tx = rt.xs[pw * rt.gw + ix];
        line[tx.lo - x0] += coef[pw] * tx.wlo;
        line[tx.hi - x0] += coef[pw] * tx.whi;
      }
    }
    for (int64_t iy = 0; iy < rt.gh; ++iy) {
      const Tap<T>& ty = rt.ys[ph * rt.gh + iy];
      if (ty.wlo == T(0) && ty.whi == T(0)) continue;
      T* r0 = plane + ty.lo * d.width + x0;
      T* r1 = plane + ty.hi * d.width + x0;
      // r0 == r1 at the last row: two passes keep the loops free of aliasing
      for (int64_t x = 0; x < len; ++x) r0[x] += ty.wlo * line[x];
      for (int64_t x = 0; x < len; ++x) r1[x] += ty.whi * line[x];
    }
    return;
  }
  for (int64_t iy = 0; iy < rt.gh; ++iy) {
    const Tap<T>& ty = rt.ys[ph * rt.gh + iy];
    if (ty.wlo == T(0) && ty.whi == T(0)) continue;
    T* r0 = plane + ty.lo * d.width;
    T* r1 = plane + ty.hi * d.width;
    for (int64_t pw = 0; pw < d.res; ++pw) {
      const T c0 = coef[pw] * ty.wlo, c1 = coef[pw] * ty.whi;
      for (int64_t ix = 0; ix < rt.gw; ++ix) {
        const Tap<T>& tx = rt.xs[pw * rt.gw + ix];
        r0[tx.lo] += c0 * tx.wlo;
        r0[tx.hi] += c0 * tx.whi;
        r1[tx.lo] += c1 * tx.wlo;
        r1[tx.hi] += c1 * tx.whi;
      }
    }
  }
}

// Adjoint of resize_attentions: grad (K, R, R) -> grad_attn_n (K, A, A), via `rows`.
template <typename T>
void unresize_attentions(const T* grad, const Dims& d, Scratch<T>& s, T* grad_attn_n) {
  const auto& taps = s.attn_taps;
  std::fill(s.rows.begin(), s.rows.end(), T(0));
  for (int64_t k = 0; k < d.bases; ++k) {
    T* rows_k = s.rows.data() + k * d.attn * d.res;
    for (int64_t ph = 0; ph < d.res; ++ph) {
      T* r0 = rows_k + taps[ph].lo * d.res;
      T* r1 = rows_k + taps[ph].hi * d.res;
      const T w0 = taps[ph].wlo, w1 = taps[ph].whi;
      const T* src = grad + (k * d.res + ph) * d.res;
      for (int64_t pw = 0; pw < d.res; ++pw) {
        r0[pw] += w0 * src[pw];
        r1[pw] += w1 * src[pw];
      }
    }
  }
  for (int64_t ka = 0; ka < d.bases * d.attn; ++ka) {
    const T* src = s.rows.data() + ka * d.res;
    T* dst = grad_attn_n + ka * d.attn;
    for (int64_t pw = 0; pw < d.res; ++pw) {
      dst[taps[pw].lo] += taps[pw].wlo * src[pw];
      dst[taps[pw].hi] += taps[pw].whi * src[pw];
    }
  }
}

// Softmax weights of ROI n into s.weight, and its taps into s.rt.
template <typename T>
void prepare_roi(int64_t n, const T* rois, const T* attns, const Dims& d, T scale,
                 int64_t sampling_ratio, bool aligned, Scratch<T>& s) {
  s.rt.build(rois + n * 5, d, scale, sampling_ratio, aligned);
  resize_attentions(attns + n * d.bases * d.attn_plane(), d, s);
  softmax_over_bases(d, s);
}

template <typename T>
void forward_kernel(const T* bases, const T* rois, const T* attns, T* out, const Dims& d, T scale,
                    int64_t sampling_ratio, bool aligned) {
  at::parallel_for(0, d.rois, 1, [&](int64_t begin, int64_t end) {
    Scratch<T> s(d);
    for (int64_t n = begin; n < end; ++n) {
      prepare_roi(n, rois, attns, d, scale, sampling_ratio, aligned, s);
      const T* image = bases + s.rt.g.batch * d.bases * d.base_plane();
      T* out_n = out + n * d.pixels();
      std::fill(out_n, out_n + d.pixels(), T(0));
      for (int64_t ph = 0; ph < d.res; ++ph) {
        T* out_row = out_n + ph * d.res;
        for (int64_t k = 0; k < d.bases; ++k) {
          crop_row(image + k * d.base_plane(), d, s.rt, ph, s.value.data(), s.line.data());
          const T* w = s.weight.data() + (k * d.res + ph) * d.res;
          for (int64_t pw = 0; pw < d.res; ++pw) out_row[pw] += w[pw] * s.value[pw];
        }
      }
    }
  });
}

// Per ROI: d out / d logit_k = s_k (v_k - out) into the ROI's own attention gradient, and
// the bases' coefficients coef[n, k] = grad * s_k / (samples per bin).
template <typename T>
void attn_grad_kernel(const T* grad, const T* bases, const T* rois, const T* attns, T* grad_attns,
                      T* coef, const Dims& d, T scale, int64_t sampling_ratio, bool aligned) {
  const int64_t pixels = d.pixels();
  at::parallel_for(0, d.rois, 1, [&](int64_t begin, int64_t end) {
    Scratch<T> s(d);
    for (int64_t n = begin; n < end; ++n) {
      prepare_roi(n, rois, attns, d, scale, sampling_ratio, aligned, s);
      const T* image = bases + s.rt.g.batch * d.bases * d.base_plane();
      const T* g = grad + n * pixels;
      T* v = s.value.data();
      T* out = s.total.data();  // the forward's output, recomputed
      std::fill(out, out + pixels, T(0));
      for (int64_t k = 0; k < d.bases; ++k) {
        for (int64_t ph = 0; ph < d.res; ++ph) {
          crop_row(image + k * d.base_plane(), d, s.rt, ph, v + (k * d.res + ph) * d.res,
                   s.line.data());
        }
        const T* w = s.weight.data() + k * pixels;
        for (int64_t p = 0; p < pixels; ++p) out[p] += w[p] * v[k * pixels + p];
      }
      T* coef_n = coef + n * d.bases * pixels;
      for (int64_t k = 0; k < d.bases; ++k) {
        const T* w = s.weight.data() + k * pixels;
        T* vk = v + k * pixels;
        for (int64_t p = 0; p < pixels; ++p) {
          const T gw = g[p] * w[p];
          coef_n[k * pixels + p] = gw * s.rt.g.inv_count;
          vk[p] = gw * (vk[p] - out[p]);  // now the gradient of the resized logit
        }
      }
      unresize_attentions(v, d, s, grad_attns + n * d.bases * d.attn_plane());
    }
  });
}

// d out / d bases: coef spread back through ROIAlign's samples. One task per
// (image, base) plane, visiting that image's ROIs in order.
template <typename T>
void base_grad_kernel(const T* coef, const T* rois, T* grad_bases, const Dims& d, T scale,
                      int64_t sampling_ratio, bool aligned) {
  at::parallel_for(0, d.batch * d.bases, 1, [&](int64_t begin, int64_t end) {
    RoiTaps<T> rt;
    std::vector<T> line(d.width);
    for (int64_t task = begin; task < end; ++task) {
      const int64_t b = task / d.bases, k = task % d.bases;
      T* plane = grad_bases + task * d.base_plane();
      for (int64_t n = 0; n < d.rois; ++n) {
        if (static_cast<int64_t>(rois[n * 5]) != b) continue;
        rt.build(rois + n * 5, d, scale, sampling_ratio, aligned);
        const T* coef_nk = coef + (n * d.bases + k) * d.pixels();
        for (int64_t ph = 0; ph < d.res; ++ph) {
          uncrop_row(plane, d, rt, ph, coef_nk + ph * d.res, line.data());
        }
      }
    }
  });
}

void check_inputs(const at::Tensor& bases, const at::Tensor& rois, const at::Tensor& attns,
                  int64_t resolution) {
  TORCH_CHECK(bases.dim() == 4, "blender: bases must be (B, K, H, W)");
  TORCH_CHECK(rois.dim() == 2 && rois.size(1) == 5, "blender: rois must be (N, 5)");
  TORCH_CHECK(attns.dim() == 4 && attns.size(0) == rois.size(0) &&
                  attns.size(1) == bases.size(1) && attns.size(2) == attns.size(3),
              "blender: attns must be (N, K, A, A) with the K of bases and the N of rois");
  TORCH_CHECK(resolution > 0, "blender: resolution must be positive");
  TORCH_CHECK(bases.size(2) > 0 && bases.size(3) > 0 && attns.size(2) > 0,
              "blender: bases and attentions must not be empty maps");
  TORCH_CHECK(rois.scalar_type() == bases.scalar_type() &&
                  attns.scalar_type() == bases.scalar_type(),
              "blender: bases, rois and attns must have the same dtype");
  TORCH_CHECK(rois.device() == bases.device() && attns.device() == bases.device(),
              "blender: bases, rois and attns must be on the same device");
}

// Batch indices out of range would read outside bases: refuse them (CPU only: cheap here).
void check_batch_indices(const at::Tensor& rois, int64_t batch) {
  if (rois.size(0) == 0) return;
  const auto index = rois.select(1, 0);
  TORCH_CHECK(index.min().item<double>() >= 0 && index.max().item<double>() < batch,
              "blender: a ROI's batch index is outside [0, ", batch, ")");
}

at::Tensor forward_cpu(const at::Tensor& bases, const at::Tensor& rois, const at::Tensor& attns,
                       int64_t resolution, double spatial_scale, int64_t sampling_ratio,
                       bool aligned) {
  check_batch_indices(rois, bases.size(0));
  auto out = at::empty({rois.size(0), resolution, resolution}, bases.options());
  if (rois.size(0) == 0) return out;
  const Dims d = dims_of(bases, attns, resolution);
  AT_DISPATCH_FLOATING_TYPES(bases.scalar_type(), "blender_forward_cpu", [&] {
    forward_kernel<scalar_t>(bases.data_ptr<scalar_t>(), rois.data_ptr<scalar_t>(),
                             attns.data_ptr<scalar_t>(), out.data_ptr<scalar_t>(), d,
                             static_cast<scalar_t>(spatial_scale), sampling_ratio, aligned);
  });
  return out;
}

std::vector<at::Tensor> backward_cpu(const at::Tensor& grad, const at::Tensor& bases,
                                     const at::Tensor& rois, const at::Tensor& attns,
                                     int64_t resolution, double spatial_scale,
                                     int64_t sampling_ratio, bool aligned) {
  check_batch_indices(rois, bases.size(0));
  auto grad_bases = at::zeros_like(bases);
  auto grad_attns = at::zeros_like(attns);
  if (rois.size(0) == 0) return {grad_bases, grad_attns};
  const Dims d = dims_of(bases, attns, resolution);
  auto coef = at::empty({d.rois, d.bases, resolution, resolution}, bases.options());
  AT_DISPATCH_FLOATING_TYPES(bases.scalar_type(), "blender_backward_cpu", [&] {
    const auto scale = static_cast<scalar_t>(spatial_scale);
    attn_grad_kernel<scalar_t>(grad.data_ptr<scalar_t>(), bases.data_ptr<scalar_t>(),
                               rois.data_ptr<scalar_t>(), attns.data_ptr<scalar_t>(),
                               grad_attns.data_ptr<scalar_t>(), coef.data_ptr<scalar_t>(), d,
                               scale, sampling_ratio, aligned);
    base_grad_kernel<scalar_t>(coef.data_ptr<scalar_t>(), rois.data_ptr<scalar_t>(),
                               grad_bases.data_ptr<scalar_t>(), d, scale, sampling_ratio, aligned);
  });
  return {grad_bases, grad_attns};
}

}  // namespace

at::Tensor blender_forward(const at::Tensor& bases_, const at::Tensor& rois_,
                           const at::Tensor& attns_, int64_t resolution, double spatial_scale,
                           int64_t sampling_ratio, bool aligned) {
  check_inputs(bases_, rois_, attns_, resolution);
  const auto bases = bases_.contiguous(), rois = rois_.contiguous(), attns = attns_.contiguous();
  if (bases.is_cuda()) {
#ifdef WITH_CUDA
    return blender_forward_cuda(bases, rois, attns, resolution, spatial_scale, sampling_ratio,
                                aligned);
#else
    TORCH_CHECK(false, "adet._C was built without CUDA");
#endif
  }
  return forward_cpu(bases, rois, attns, resolution, spatial_scale, sampling_ratio, aligned);
}

std::vector<at::Tensor> blender_backward(const at::Tensor& grad_, const at::Tensor& bases_,
                                         const at::Tensor& rois_, const at::Tensor& attns_,
                                         int64_t resolution, double spatial_scale,
                                         int64_t sampling_ratio, bool aligned) {
  check_inputs(bases_, rois_, attns_, resolution);
  TORCH_CHECK(grad_.dim() == 3 && grad_.size(0) == rois_.size(0) && grad_.size(1) == resolution &&
                  grad_.size(2) == resolution && grad_.scalar_type() == bases_.scalar_type(),
              "blender_backward: grad_out must be (N, R, R) with the dtype of bases");
  const auto grad = grad_.contiguous(), bases = bases_.contiguous();
  const auto rois = rois_.contiguous(), attns = attns_.contiguous();
  if (bases.is_cuda()) {
#ifdef WITH_CUDA
    return blender_backward_cuda(grad, bases, rois, attns, resolution, spatial_scale,
                                 sampling_ratio, aligned);
#else
    TORCH_CHECK(false, "adet._C was built without CUDA");
#endif
  }
  return backward_cpu(grad, bases, rois, attns, resolution, spatial_scale, sampling_ratio, aligned);
}

}  // namespace adet

ADET_REGISTER_OP("blender", "cpu", [](pybind11::module_& m) {
  namespace py = pybind11;
  m.def("blender_forward", &adet::blender_forward,
        "fused BlendMask blender: (B,K,H,W) bases, (N,5) rois, (N,K,A,A) attns -> (N,R,R)",
        py::arg("bases"), py::arg("rois"), py::arg("attns"), py::arg("resolution"),
        py::arg("spatial_scale"), py::arg("sampling_ratio"), py::arg("aligned"));
  m.def("blender_backward", &adet::blender_backward,
        "gradients of blender_forward: [grad_bases, grad_attns]", py::arg("grad_out"),
        py::arg("bases"), py::arg("rois"), py::arg("attns"), py::arg("resolution"),
        py::arg("spatial_scale"), py::arg("sampling_ratio"), py::arg("aligned"));
});

#ifdef WITH_CUDA
ADET_REGISTER_OP("blender", "cuda", nullptr);
#endif
