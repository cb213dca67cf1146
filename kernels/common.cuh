// Shared device helpers for the genorigin kernels.
//
// Header-free on purpose: the same text compiles under nvcc (CI) and NVRTC (run time) without the CUDA
// toolkit headers, so a user needs only the NVRTC wheel, not cuda_fp16.h / cuda_bf16.h on disk.
// fp16 and bf16 are carried as their 16-bit patterns and converted with PTX (fp16) or bit arithmetic (bf16).
#pragma once

namespace genorigin {

struct alignas(16) F32x4 { float a, b, c, d; };
struct alignas(8) U16x4 { unsigned short a, b, c, d; };

// Storage tags: `storage` is what lies in memory; load/store convert to and from the fp32 compute type.
struct F32 {
  typedef float storage;
  static __device__ __forceinline__ float load(float s) { return s; }
  static __device__ __forceinline__ float store(float f) { return f; }
  static __device__ __forceinline__ void load4(const float* p, long long i, float out[4]) {
    const F32x4 v = reinterpret_cast<const F32x4*>(p)[i];
    out[0] = v.a; out[1] = v.b; out[2] = v.c; out[3] = v.d;
  }
  static __device__ __forceinline__ void store4(float* p, long long i, const float in[4]) {
    F32x4 v; v.a = in[0]; v.b = in[1]; v.c = in[2]; v.d = in[3];
    reinterpret_cast<F32x4*>(p)[i] = v;
  }
};

struct F16 {
  typedef unsigned short storage;
  static __device__ __forceinline__ float load(unsigned short h) {
    float f;
    asm("cvt.f32.f16 %0, %1;" : "=f"(f) : "h"(h));
    return f;
  }
  static __device__ __forceinline__ unsigned short store(float f) {
    unsigned short h;
    asm("cvt.rn.f16.f32 %0, %1;" : "=h"(h) : "f"(f));
    return h;
  }
  static __device__ __forceinline__ void load4(const unsigned short* p, long long i, float out[4]) {
    const U16x4 v = reinterpret_cast<const U16x4*>(p)[i];
    out[0] = load(v.a); out[1] = load(v.b); out[2] = load(v.c); out[3] = load(v.d);
  }
  static __device__ __forceinline__ void store4(unsigned short* p, long long i, const float in[4]) {
    U16x4 v; v.a = store(in[0]); v.b = store(in[1]); v.c = store(in[2]); v.d = store(in[3]);
    reinterpret_cast<U16x4*>(p)[i] = v;
  }
};

struct BF16 {
  typedef unsigned short storage;
  static __device__ __forceinline__ float load(unsigned short h) {
    return __uint_as_float(static_cast<unsigned int>(h) << 16);
  }
  // Round to nearest even, NaN -> canonical quiet NaN: the same as torch's float -> bfloat16 cast.
  static __device__ __forceinline__ unsigned short store(float f) {
    const unsigned int u = __float_as_uint(f);
    if ((u & 0x7fffffffu) > 0x7f800000u) return static_cast<unsigned short>(0x7fc0u);
    return static_cast<unsigned short>((u + 0x7fffu + ((u >> 16) & 1u)) >> 16);
  }
  static __device__ __forceinline__ void load4(const unsigned short* p, long long i, float out[4]) {
    const U16x4 v = reinterpret_cast<const U16x4*>(p)[i];
    out[0] = load(v.a); out[1] = load(v.b); out[2] = load(v.c); out[3] = load(v.d);
  }
  static __device__ __forceinline__ void store4(unsigned short* p, long long i, const float in[4]) {
    U16x4 v; v.a = store(in[0]); v.b = store(in[1]); v.c = store(in[2]); v.d = store(in[3]);
    reinterpret_cast<U16x4*>(p)[i] = v;
  }
};

// Fixed-order tree sums: the result depends only on blockDim, never on scheduling (determinism).
__device__ __forceinline__ double warp_sum(double v) {
#pragma unroll
  for (int offset = 16; offset > 0; offset >>= 1) v += __shfl_down_sync(0xffffffffu, v, offset);
  return v;
}

// Sum over the block; the result is valid in thread 0. blockDim.x must be a multiple of 32 (<= 1024).
__device__ __forceinline__ double block_sum(double v) {
  __shared__ double warp_sums[32];
  const int lane = threadIdx.x & 31;
  const int warp = threadIdx.x >> 5;
  v = warp_sum(v);
  if (lane == 0) warp_sums[warp] = v;
  __syncthreads();
  if (warp == 0) {
    const int nwarps = (blockDim.x + 31) >> 5;
    v = lane < nwarps ? warp_sums[lane] : 0.0;
    v = warp_sum(v);
  }
  return v;
}

}  // namespace genorigin
