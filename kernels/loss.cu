// Per-sample loss and its gradient w.r.t. y in one pass: the formulas of reference.loss_and_grad.
//
//   loss[n] = mean over C·H·W of (y - x)^2  (kind 0, MSE)  or  |y - x|  (kind 1, L1)   -- unweighted
//   gy      = (d * c0) * c1   (MSE, d = y - x, c0 = fp32(2/count))
//           = (sign(d) * c0) * c1   (L1, c0 = fp32(1/count)),   c1 = fp32(weight[n] * scale) or scale
//
// Launch: grid = N * blocks_per_sample blocks of LOSS_BLOCK threads; block (n, b) handles elements
// b*LOSS_BLOCK + tid, stepping by blocks_per_sample*LOSS_BLOCK (4-element vectors where `vec` says the
// pointers and count allow it, single elements otherwise), so y and x are read once and gy written once.
// Reduction: fp32 squares/abs per element, fp64 per-thread accumulation, warp shuffle + shared-memory tree
// per block. With blocks_per_sample == 1 the block writes loss[n]; otherwise it writes its fp64 partial to
// partial[n*blocks_per_sample + b] and genorigin_loss_finalize sums the partials in a fixed order.
// No atomics anywhere: the same launch configuration gives bit-identical results.
// Occupancy: __launch_bounds__(LOSS_BLOCK, LOSS_MIN_BLOCKS) caps registers so that LOSS_MIN_BLOCKS blocks fit
// on one SM (at most 48 registers; none spill on sm_80/sm_90); launch.py sizes grids for that many (plan.py's
// LOSS_BLOCKS_PER_SM, checked against ptxas by tests/test_kernel_occupancy.py).
#include "common.cuh"

#define LOSS_BLOCK 256
#define LOSS_MIN_BLOCKS 5

namespace genorigin {

template <int KIND>
__device__ __forceinline__ float elem_loss(float d) {
  return KIND == 0 ? d * d : fabsf(d);
}

// Two roundings, as the reference does: (d * c0) then (* c1). The _rn intrinsics keep them apart.
template <int KIND>
__device__ __forceinline__ float elem_grad(float d, float c0, float c1) {
  if (KIND == 0) return __fmul_rn(__fmul_rn(d, c0), c1);
  const float s = d > 0.f ? c0 : (d < 0.f ? -c0 : d * 0.f);  // d * 0 keeps NaN (sign(NaN) = NaN)
  return __fmul_rn(s, c1);
}

template <int KIND, class TY, class TX, class TG>
__device__ __forceinline__ double loss_body(const typename TY::storage* __restrict__ y,
                                            const typename TX::storage* __restrict__ x,
                                            typename TG::storage* __restrict__ gy, long long count,
                                            long long first, long long stride, float c0, float c1,
                                            int vec) {
  double acc = 0.0;
  if (vec) {
    const long long nvec = count >> 2;
    for (long long i = first; i < nvec; i += stride) {
      float yv[4], xv[4], g[4];
      TY::load4(y, i, yv);
      TX::load4(x, i, xv);
      float s = 0.f;
#pragma unroll
      for (int k = 0; k < 4; ++k) {
        const float d = yv[k] - xv[k];
        s += elem_loss<KIND>(d);
        g[k] = elem_grad<KIND>(d, c0, c1);
      }
      TG::store4(gy, i, g);
      acc += static_cast<double>(s);
    }
  } else {
    for (long long i = first; i < count; i += stride) {
      const float d = TY::load(y[i]) - TX::load(x[i]);
      gy[i] = TG::store(elem_grad<KIND>(d, c0, c1));
      acc += static_cast<double>(elem_loss<KIND>(d));
    }
  }
  return acc;
}

template <class TY, class TX, class TG>
__device__ __forceinline__ void loss_kernel(const void* y_, const void* x_, void* gy_,
                                            const float* __restrict__ weight, float* __restrict__ loss,
                                            double* __restrict__ partial, long long count,
                                            int blocks_per_sample, int kind, int vec, float c0,
                                            float scale) {
  const long long n = blockIdx.x / blocks_per_sample;
  const int b = static_cast<int>(blockIdx.x - n * blocks_per_sample);
  const long long base = n * count;
  const typename TY::storage* y = static_cast<const typename TY::storage*>(y_) + base;
  const typename TX::storage* x = static_cast<const typename TX::storage*>(x_) + base;
  typename TG::storage* gy = static_cast<typename TG::storage*>(gy_) + base;
  const float c1 = weight != nullptr ? __fmul_rn(weight[n], scale) : scale;
  const long long first = static_cast<long long>(b) * blockDim.x + threadIdx.x;
  const long long stride = static_cast<long long>(blocks_per_sample) * blockDim.x;
  const double acc = kind == 0 ? loss_body<0, TY, TX, TG>(y, x, gy, count, first, stride, c0, c1, vec)
                               : loss_body<1, TY, TX, TG>(y, x, gy, count, first, stride, c0, c1, vec);
  const double total = block_sum(acc);
  if (threadIdx.x == 0) {
    if (blocks_per_sample == 1) {
      loss[n] = static_cast<float>(total / static_cast<double>(count));
    } else {
      partial[blockIdx.x] = total;
    }
  }
}

}  // namespace genorigin

// Kernel names: genorigin_loss_<y dtype>_<x dtype>_<gy dtype>; x and gy are fp32 or y's dtype.
#define GENORIGIN_LOSS_KERNEL(YN, XN, GN, TY, TX, TG)                                                  \
  extern "C" __global__ void __launch_bounds__(LOSS_BLOCK, LOSS_MIN_BLOCKS) genorigin_loss_##YN##_##XN##_##GN( \
      const void* y, const void* x, void* gy, const float* weight, float* loss, double* partial,     \
      long long count, int blocks_per_sample, int kind, int vec, float c0, float scale) {            \
    genorigin::loss_kernel<genorigin::TY, genorigin::TX, genorigin::TG>(                             \
        y, x, gy, weight, loss, partial, count, blocks_per_sample, kind, vec, c0, scale);            \
  }

GENORIGIN_LOSS_KERNEL(f32, f32, f32, F32, F32, F32)
GENORIGIN_LOSS_KERNEL(f16, f32, f32, F16, F32, F32)
GENORIGIN_LOSS_KERNEL(f16, f16, f32, F16, F16, F32)
GENORIGIN_LOSS_KERNEL(f16, f32, f16, F16, F32, F16)
GENORIGIN_LOSS_KERNEL(f16, f16, f16, F16, F16, F16)
GENORIGIN_LOSS_KERNEL(bf16, f32, f32, BF16, F32, F32)
GENORIGIN_LOSS_KERNEL(bf16, bf16, f32, BF16, BF16, F32)
GENORIGIN_LOSS_KERNEL(bf16, f32, bf16, BF16, F32, BF16)
GENORIGIN_LOSS_KERNEL(bf16, bf16, bf16, BF16, BF16, BF16)

// Second pass when blocks_per_sample > 1: one block per sample sums its partials in a fixed order.
extern "C" __global__ void __launch_bounds__(LOSS_BLOCK, LOSS_MIN_BLOCKS)
    genorigin_loss_finalize(const double* __restrict__ partial, float* __restrict__ loss, long long count,
                            int blocks_per_sample) {
  const long long n = blockIdx.x;
  const double* p = partial + n * blocks_per_sample;
  double acc = 0.0;
  for (int j = threadIdx.x; j < blocks_per_sample; j += blockDim.x) acc += p[j];
  const double total = genorigin::block_sum(acc);
  if (threadIdx.x == 0) loss[n] = static_cast<float>(total / static_cast<double>(count));
}
