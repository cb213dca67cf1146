// Per-sample Adam step with best-so-far bookkeeping: the formulas of reference.adam_step.
//
// For sample n (row of D latent elements) at step t[n] (1-based, per sample so slots can be refilled):
//   improved    = loss[n] < best_loss[n]          (the loss was measured at the current, pre-update z)
//   best_z[n]   = z[n]        where improved       (copied before the update)
//   best_loss[n]= loss[n]     where improved
//   g = clip(grad, -clip, clip) if has_clip
//   m = b1*m + (1-b1)*g ;  v = b2*v + ((1-b2)*g)*g
//   z = z - (step_size*m) / (sqrt(v)/bias2_sqrt + eps),
//   step_size = fp32(lr / (1 - b1^t)), bias2_sqrt = fp32(sqrt(1 - b2^t))   (bias terms in fp64)
// Every fp32 operation is an explicit _rn intrinsic in the reference's order, so no FMA contraction
// separates the kernel from the NumPy reference.
//
// Launch: grid = N * blocks_per_sample blocks of ADAM_BLOCK threads. With blocks_per_sample == 1 the
// block updates best_loss[n] itself after a barrier (every thread has read the old value by then);
// otherwise best_loss is left alone and genorigin_adam_best_loss, launched next on the same stream,
// updates it -- a block must never see another block's new best_loss.
// Occupancy: the fp64 bias terms (two pow calls) are computed once per block by thread 0 and shared, so the
// element loop alone sets the register count; __launch_bounds__(ADAM_BLOCK, ADAM_MIN_BLOCKS) then fits
// ADAM_MIN_BLOCKS blocks per SM (48 registers on sm_80/sm_90, no spills), as plan.py's ADAM_BLOCKS_PER_SM
// assumes (checked against ptxas by tests/test_kernel_occupancy.py).
#include "common.cuh"

#define ADAM_BLOCK 256
#define ADAM_MIN_BLOCKS 5

namespace genorigin {

// t may be int32 (0), int64 (1), float32 (2) or float64 (3): the inversion loop keeps it as float32.
__device__ __forceinline__ double read_step(const void* t, int t_kind, long long n) {
  switch (t_kind) {
    case 0: return static_cast<double>(static_cast<const int*>(t)[n]);
    case 1: return static_cast<double>(static_cast<const long long*>(t)[n]);
    case 2: return static_cast<double>(static_cast<const float*>(t)[n]);
    default: return static_cast<const double*>(t)[n];
  }
}

}  // namespace genorigin

extern "C" __global__ void __launch_bounds__(ADAM_BLOCK, ADAM_MIN_BLOCKS)
    genorigin_adam(float* __restrict__ z, float* __restrict__ m, float* __restrict__ v,
                   const float* __restrict__ grad, const void* __restrict__ t,
                   const float* __restrict__ loss, float* best_loss, float* __restrict__ best_z,
                   long long d, int blocks_per_sample, int t_kind, double lr, double beta1, double beta2,
                   float eps, float clip, int has_clip, int fuse_best) {
  const long long n = blockIdx.x / blocks_per_sample;
  const int b = static_cast<int>(blockIdx.x - n * blocks_per_sample);
  const float loss_n = loss[n];
  const bool improved = loss_n < best_loss[n];
  __shared__ float bias[2];  // fp32(lr / (1 - b1^t)), fp32(sqrt(1 - b2^t)): one fp64 evaluation per block
  if (threadIdx.x == 0) {
    const double tn = genorigin::read_step(t, t_kind, n);
    bias[0] = static_cast<float>(lr / (1.0 - pow(beta1, tn)));
    bias[1] = static_cast<float>(sqrt(1.0 - pow(beta2, tn)));
  }
  __syncthreads();
  const float step_size = bias[0];
  const float bias2_sqrt = bias[1];
  const float b1 = static_cast<float>(beta1);
  const float b2 = static_cast<float>(beta2);
  const float one_minus_b1 = static_cast<float>(1.0 - beta1);
  const float one_minus_b2 = static_cast<float>(1.0 - beta2);
  const long long base = n * d;
  const long long stride = static_cast<long long>(blocks_per_sample) * blockDim.x;
  for (long long i = base + static_cast<long long>(b) * blockDim.x + threadIdx.x; i < base + d; i += stride) {
    const float zi = z[i];
    float g = grad[i];
    if (improved) best_z[i] = zi;
    if (has_clip) g = g < -clip ? -clip : (g > clip ? clip : g);  // NaN passes, as np.clip
    const float mi = __fadd_rn(__fmul_rn(b1, m[i]), __fmul_rn(one_minus_b1, g));
    const float vi = __fadd_rn(__fmul_rn(b2, v[i]), __fmul_rn(__fmul_rn(one_minus_b2, g), g));
    const float denom = __fadd_rn(__fdiv_rn(__fsqrt_rn(vi), bias2_sqrt), eps);
    m[i] = mi;
    v[i] = vi;
    z[i] = __fsub_rn(zi, __fdiv_rn(__fmul_rn(step_size, mi), denom));
  }
  if (fuse_best) {
    __syncthreads();
    if (threadIdx.x == 0 && improved) best_loss[n] = loss_n;
  }
}

// Follows genorigin_adam when blocks_per_sample > 1: one thread per sample.
extern "C" __global__ void __launch_bounds__(ADAM_BLOCK)
    genorigin_adam_best_loss(const float* __restrict__ loss, float* __restrict__ best_loss, long long n) {
  const long long i = static_cast<long long>(blockIdx.x) * blockDim.x + threadIdx.x;
  if (i < n && loss[i] < best_loss[i]) best_loss[i] = loss[i];
}
