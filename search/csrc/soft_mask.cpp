// SNL's soft-masked ReLU, out = x - alpha * min(x, 0), forward and backward, each in one pass over the batch.
//
// Forward: out = x where x > 0, else x * (1 - alpha). Backward: grad_x = grad where x > 0, else
// grad * (1 - alpha); the mask's gradient -grad * min(x, 0) is summed over the batch as it goes.
// alpha is broadcast to one input (per pixel, per channel, one per layer) and laid out in x's memory
// order here, so the layout is decided in one place: a channels-last batch is walked in NHWC order as
// an NCHW one is in NCHW order, without a copy of the batch.
//
// Both walk blocks of positions with the batch inside, so a block's mask values (and gradient sums)
// stay in L1/L2 while grad, x and the result stream through once, as in ReLU's own kernels. The backward
// takes four images at a time: one load and store of each gradient sum per four images, near ReLU's
// two loads and a store per element (one image at a time it ran at half of ReLU's speed). Blocks are
// independent, so at::parallel_for needs no atomics.
//
// The select on the sign of x must be vectorised: as a scalar branch on random signs it mispredicts
// half the time and runs ~25x slower. GCC's target_clones compiles AVX-512 and AVX2 versions beside
// the portable one and picks at load time, so the build stays portable across a cluster's nodes.
// Without AVX-512's masked operations GCC vectorises the select only under -fno-trapping-math (it
// may not evaluate g * slope where x > 0 otherwise): search/masked_relu.py builds with that flag.
//
// Only the ATen headers the kernels use, and TORCH_LIBRARY operators instead of a pybind11 module:
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

constexpr int64_t kGrain = 2048;   // fewest positions a thread takes
constexpr int64_t kBlock = 16384;  // positions per block: 64 KB of mask values and 64 KB of sums (float)
constexpr int kImages = 4;         // images per pass of the backward

template <typename scalar_t>
SEARCH_VECTOR_CLONES void forward_block(const scalar_t* __restrict__ x, const scalar_t* __restrict__ alpha,
                                        scalar_t* __restrict__ out, int64_t batch, int64_t positions,
                                        int64_t begin, int64_t end) {
  for (int64_t b = 0; b < batch; ++b) {
    const scalar_t* __restrict__ v = x + b * positions;
    scalar_t* __restrict__ o = out + b * positions;
    for (int64_t i = begin; i < end; ++i) {
      o[i] = v[i] > scalar_t(0) ? v[i] : v[i] * (scalar_t(1) - alpha[i]);
    }
  }
}

// grad_x and the mask's gradient sums for images [first, first + Images): one load and store of each
// sum per Images elements.
template <int Images, typename scalar_t>
SEARCH_VECTOR_CLONES void backward_images(const scalar_t* __restrict__ grad, const scalar_t* __restrict__ x,
                                          const scalar_t* __restrict__ alpha, scalar_t* __restrict__ grad_x,
                                          scalar_t* __restrict__ grad_alpha, int64_t first, int64_t positions,
                                          int64_t begin, int64_t end) {
  const scalar_t* __restrict__ g = grad + first * positions;
  const scalar_t* __restrict__ v = x + first * positions;
  scalar_t* __restrict__ out = grad_x + first * positions;
  for (int64_t i = begin; i < end; ++i) {
    const scalar_t slope = scalar_t(1) - alpha[i];
    scalar_t sum = scalar_t(0);
#pragma GCC unroll 4
    for (int image = 0; image < Images; ++image) {
      const int64_t at = image * positions + i;
      out[at] = v[at] > scalar_t(0) ? g[at] : g[at] * slope;
      sum += g[at] * std::min(v[at], scalar_t(0));
    }
    grad_alpha[i] -= sum;
  }
}

// grad_x alone, for a mask that needs no gradient.
template <typename scalar_t>
SEARCH_VECTOR_CLONES void backward_inputs(const scalar_t* __restrict__ grad, const scalar_t* __restrict__ x,
                                          const scalar_t* __restrict__ alpha, scalar_t* __restrict__ grad_x,
                                          int64_t batch, int64_t positions, int64_t begin, int64_t end) {
  for (int64_t b = 0; b < batch; ++b) {
    const scalar_t* __restrict__ g = grad + b * positions;
    const scalar_t* __restrict__ v = x + b * positions;
    scalar_t* __restrict__ out = grad_x + b * positions;
    for (int64_t i = begin; i < end; ++i) {
      out[i] = v[i] > scalar_t(0) ? g[i] : g[i] * (scalar_t(1) - alpha[i]);
    }
  }
}

template <typename scalar_t>
void backward_block(const scalar_t* grad, const scalar_t* x, const scalar_t* alpha, scalar_t* grad_x, scalar_t* grad_alpha,
                    int64_t batch, int64_t positions, int64_t begin, int64_t end) {
  if (grad_alpha == nullptr) {
    backward_inputs<scalar_t>(grad, x, alpha, grad_x, batch, positions, begin, end);
    return;
  }
  int64_t b = 0;
  for (; b + kImages <= batch; b += kImages) {
    backward_images<kImages, scalar_t>(grad, x, alpha, grad_x, grad_alpha, b, positions, begin, end);
  }
  for (; b < batch; ++b) {  // the images left over
    backward_images<1, scalar_t>(grad, x, alpha, grad_x, grad_alpha, b, positions, begin, end);
  }
}

// NHWC for a 4-D batch in channels-last memory (and not also NCHW-contiguous, as when C or H*W is 1).
at::MemoryFormat memory_order(const at::Tensor& x) {
  return x.dim() == 4 && !x.is_contiguous() && x.is_contiguous(at::MemoryFormat::ChannelsLast)
             ? at::MemoryFormat::ChannelsLast
             : at::MemoryFormat::Contiguous;
}

// alpha broadcast to one input of x, in x's dtype and memory order: one value per position of an image.
at::Tensor positions_of(const at::Tensor& alpha, const at::Tensor& x, at::MemoryFormat order) {
  at::Tensor one = alpha.to(x.scalar_type()).expand(x.sizes().slice(1));
  return (order == at::MemoryFormat::ChannelsLast ? one.permute({1, 2, 0}) : one).contiguous();
}

void check(const at::Tensor& x, const at::Tensor& alpha) {
  TORCH_CHECK(x.device().is_cpu() && alpha.device().is_cpu(), "CPU tensors only");
  TORCH_CHECK(x.dim() >= 1 && x.size(0) > 0, "x must have a non-empty batch dimension");
}

// Runs body(begin, end) over blocks of positions, spread over threads.
template <typename Body>
void over_blocks(int64_t positions, const Body& body) {
  at::parallel_for(0, positions, kGrain, [&](int64_t range_begin, int64_t range_end) {
    for (int64_t begin = range_begin; begin < range_end; begin += kBlock) {
      body(begin, std::min(begin + kBlock, range_end));
    }
  });
}

}  // namespace

// x: (N, ...); alpha: broadcastable to one input of x. Returns out, laid out as x.
at::Tensor soft_mask_forward(const at::Tensor& x, const at::Tensor& alpha) {
  check(x, alpha);
  const auto order = memory_order(x);
  const at::Tensor v = x.contiguous(order);
  const at::Tensor a = positions_of(alpha, v, order);
  const int64_t batch = v.size(0);
  const int64_t positions = v.numel() / batch;
  at::Tensor out = at::empty_like(v);
  AT_DISPATCH_FLOATING_TYPES(v.scalar_type(), "soft_mask_forward", [&] {
    const scalar_t* vp = v.data_ptr<scalar_t>();
    const scalar_t* ap = a.data_ptr<scalar_t>();
    scalar_t* op = out.data_ptr<scalar_t>();
    over_blocks(positions, [&](int64_t begin, int64_t end) {
      forward_block<scalar_t>(vp, ap, op, batch, positions, begin, end);
    });
  });
  return out;
}

// Returns grad_x, laid out as x, and the mask's gradient in alpha's shape and dtype (an undefined
// tensor when not wanted). grad_x is a tensor of its own, not a permuted view: autograd can add a
// second gradient into it in place (a view of an NHWC result cannot be, and cost an out-of-place add
// of the whole activation).
std::tuple<at::Tensor, at::Tensor> soft_mask_backward(const at::Tensor& grad, const at::Tensor& x,
                                                      const at::Tensor& alpha, bool want_alpha) {
  check(x, alpha);
  TORCH_CHECK(grad.device().is_cpu() && grad.sizes() == x.sizes(), "grad must be a CPU tensor shaped as x");
  TORCH_CHECK(grad.scalar_type() == x.scalar_type(), "grad and x differ in dtype");
  const auto order = memory_order(x);
  const at::Tensor g = grad.contiguous(order);
  const at::Tensor v = x.contiguous(order);
  const at::Tensor a = positions_of(alpha, v, order);
  const int64_t batch = v.size(0);
  const int64_t positions = v.numel() / batch;
  at::Tensor grad_x = at::empty_like(v);
  at::Tensor sums = want_alpha ? at::zeros({positions}, v.options()) : at::Tensor();
  AT_DISPATCH_FLOATING_TYPES(v.scalar_type(), "soft_mask_backward", [&] {
    const scalar_t* gp = g.data_ptr<scalar_t>();
    const scalar_t* vp = v.data_ptr<scalar_t>();
    const scalar_t* ap = a.data_ptr<scalar_t>();
    scalar_t* op = grad_x.data_ptr<scalar_t>();
    scalar_t* sp = want_alpha ? sums.data_ptr<scalar_t>() : nullptr;
    over_blocks(positions, [&](int64_t begin, int64_t end) {
      backward_block<scalar_t>(gp, vp, ap, op, sp, batch, positions, begin, end);
    });
  });
  if (!want_alpha) {
    return {grad_x, at::Tensor()};
  }
  const auto image = v.sizes().slice(1);  // sums per position of one image, in memory order, to alpha's shape
  const at::Tensor per_position = order == at::MemoryFormat::ChannelsLast
                                      ? sums.view({image[1], image[2], image[0]}).permute({2, 0, 1})
                                      : sums.view(image);
  return {grad_x, per_position.unsqueeze(0).sum_to_size(alpha.sizes()).to(alpha.scalar_type())};
}

// torch.ops.search_soft_mask.* (the namespace is search/masked_relu.py's _EXTENSION)
TORCH_LIBRARY(search_soft_mask, m) {
  m.def("soft_mask_forward(Tensor x, Tensor alpha) -> Tensor", &soft_mask_forward);
  m.def("soft_mask_backward(Tensor grad, Tensor x, Tensor alpha, bool want_alpha) -> (Tensor, Tensor)", &soft_mask_backward);
}
