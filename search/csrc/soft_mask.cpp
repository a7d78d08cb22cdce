// Backward of SNL's soft-masked ReLU, out = x - alpha * min(x, 0), in one pass over the batch.
//
// For each element: grad_x = grad where x > 0, else grad * (1 - alpha); the mask's gradient
// -grad * min(x, 0) is summed over the batch as it goes. Blocks of positions are processed with the
// batch inside, so a block's sums stay in L1 while grad, x and grad_x are read or written once, as in
// ReLU's own backward. Blocks are independent, so at::parallel_for needs no atomics.
//
// The select on the sign of x must be vectorised: as a scalar branch on random signs it mispredicts
// half the time and runs ~25x slower. GCC's target_clones compiles AVX-512 and AVX2 versions beside
// the portable one and picks at load time, so the build stays portable across a cluster's nodes.
// Without AVX-512's masked operations GCC vectorises the select only under -fno-trapping-math (it
// may not evaluate g * slope where x > 0 otherwise): search/masked_relu.py builds with that flag.
//
// Only the ATen headers the kernel uses, and a TORCH_LIBRARY operator instead of a pybind11 module:
// with torch/extension.h (all of libtorch's C++ API and pybind11) the build took 52 s here, with these 14 s.
#include <ATen/Dispatch.h>
#include <ATen/Parallel.h>
#include <ATen/core/Tensor.h>
#include <ATen/ops/empty_like.h>
#include <ATen/ops/zeros.h>
#include <torch/library.h>

#include <algorithm>
#include <tuple>

#if defined(__GNUC__) && defined(__x86_64__) && !defined(__clang__)
#define SEARCH_VECTOR_CLONES __attribute__((target_clones("avx512f", "avx2", "default")))
#else
#define SEARCH_VECTOR_CLONES
#endif

namespace {

constexpr int64_t kBlock = 2048;  // positions per block: 8 KB of float sums

template <typename scalar_t>
SEARCH_VECTOR_CLONES void backward_block(const scalar_t* __restrict__ grad, const scalar_t* __restrict__ x,
                                         const scalar_t* __restrict__ slope, scalar_t* __restrict__ grad_x,
                                         scalar_t* __restrict__ grad_alpha, int64_t batch, int64_t positions,
                                         int64_t begin, int64_t end) {
  for (int64_t b = 0; b < batch; ++b) {
    const scalar_t* __restrict__ g = grad + b * positions;
    const scalar_t* __restrict__ v = x + b * positions;
    scalar_t* __restrict__ out = grad_x + b * positions;
    if (grad_alpha != nullptr) {
      for (int64_t i = begin; i < end; ++i) {
        out[i] = v[i] > scalar_t(0) ? g[i] : g[i] * slope[i];
        grad_alpha[i] -= g[i] * std::min(v[i], scalar_t(0));
      }
    } else {
      for (int64_t i = begin; i < end; ++i) {
        out[i] = v[i] > scalar_t(0) ? g[i] : g[i] * slope[i];
      }
    }
  }
}

}  // namespace

// grad, x: (N, ...); slope: 1 - alpha expanded to one input's shape, in x's memory order (H, W, C for
// a channels-last x). Returns grad_x, laid out as x, and the mask's gradient per position of one input
// in that memory order, summed over the batch (an undefined tensor when not wanted).
std::tuple<at::Tensor, at::Tensor> soft_mask_backward(const at::Tensor& grad, const at::Tensor& x,
                                                      const at::Tensor& slope, bool want_alpha) {
  TORCH_CHECK(grad.device().is_cpu() && x.device().is_cpu() && slope.device().is_cpu(), "CPU tensors only");
  TORCH_CHECK(grad.sizes() == x.sizes(), "grad and x differ in shape");
  TORCH_CHECK(grad.scalar_type() == x.scalar_type() && slope.scalar_type() == x.scalar_type(), "dtypes differ");
  TORCH_CHECK(x.dim() >= 1 && x.size(0) > 0, "x must have a non-empty batch dimension");
  // A channels-last batch is walked in its own memory order, and grad_x is made in that layout: a
  // tensor of its own that autograd can add a second gradient into in place (a permuted view of an
  // NHWC result cannot be, and cost an out-of-place add of the whole activation).
  const auto format = x.dim() == 4 && !x.is_contiguous() && x.is_contiguous(at::MemoryFormat::ChannelsLast)
                          ? at::MemoryFormat::ChannelsLast
                          : at::MemoryFormat::Contiguous;
  const at::Tensor g = grad.contiguous(format);
  const at::Tensor v = x.contiguous(format);
  const at::Tensor s = slope.contiguous();
  const int64_t batch = v.size(0);
  const int64_t positions = v.numel() / batch;
  TORCH_CHECK(s.numel() == positions, "slope must have one value per position of one input");
  at::Tensor grad_x = at::empty_like(v);
  at::Tensor grad_alpha = want_alpha ? at::zeros({positions}, v.options()) : at::Tensor();
  AT_DISPATCH_FLOATING_TYPES(v.scalar_type(), "soft_mask_backward", [&] {
    const scalar_t* gp = g.data_ptr<scalar_t>();
    const scalar_t* vp = v.data_ptr<scalar_t>();
    const scalar_t* sp = s.data_ptr<scalar_t>();
    scalar_t* op = grad_x.data_ptr<scalar_t>();
    scalar_t* ap = want_alpha ? grad_alpha.data_ptr<scalar_t>() : nullptr;
    at::parallel_for(0, positions, kBlock, [&](int64_t range_begin, int64_t range_end) {
      for (int64_t begin = range_begin; begin < range_end; begin += kBlock) {
        backward_block<scalar_t>(gp, vp, sp, op, ap, batch, positions, begin, std::min(begin + kBlock, range_end));
      }
    });
  });
  return {grad_x, grad_alpha};
}

// torch.ops.search_soft_mask.soft_mask_backward (the namespace is search/masked_relu.py's _EXTENSION)
TORCH_LIBRARY(search_soft_mask, m) {
  m.def("soft_mask_backward(Tensor grad, Tensor x, Tensor slope, bool want_alpha) -> (Tensor, Tensor)", &soft_mask_backward);
}
