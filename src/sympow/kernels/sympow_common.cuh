// Shared device helpers of the sympow CUDA C kernels (math.md, layout.md).
//
// Notation as in src/sympow/spec: y = sigma^{1/2} R(mu) x (the rotated, scaled input), and the stabilised
// features of spec/features.py `scaled`: with |y| the Euclidean norm and u = y / |y|,
//
//     phi_P(y) = exp(lam) f,   lam = P log|y|,   f_r = sqrt(P! / prod_m a_m!) prod_{m<P} u_{i_m(r)},
//
// where feature r is the sorted multiset (i_0 <= ... <= i_{P-1}) of {0..d-1} with multiplicities a_m, in
// the order of itertools.combinations_with_replacement (the order of the State's S rows). The multiset is
// read from a global table of packed indices (8 bits each, d <= 256) and its coefficient is computed from
// the run lengths, so phi(K) is never written to global memory. Where y = 0: f = 0 and lam = 0.
//
// Every partial result is a triple (num, den, m) standing for N = exp(m) num and Z = exp(m) den
// (spec/steps.py); `finite_or_zero(m)` is the reference point of every exp(x - m), so no exp of a
// positive number is ever taken for gating.
#pragma once

#ifndef SYMPOW_HOST_EMULATION
#include <cuda_bf16.h>
#include <cuda_fp16.h>
// All shared memory is dynamic (sized by the launcher in cupy_launch.py), carved into float arrays.
#define SYMPOW_SHARED_FLOATS(name) extern __shared__ float name[]
#endif

namespace sympow {

// Bits of the `flags` argument of every kernel (mirrored in cupy_launch.py).
constexpr int HAS_GATE = 1;      // log_gate is given
constexpr int HAS_ROTARY = 2;    // cos_mu / sin_mu are given
constexpr int INTERLEAVED = 4;   // rotary pairs (x_{2m}, x_{2m+1}) instead of (x_m, x_{m+d/2})
constexpr int HAS_STATE = 8;     // an initial state (S, z, log_scale) is given
constexpr int NORMALIZE = 16;    // y = N / (Z + eps) instead of y = N

constexpr int THREADS = 256;        // threads per block of every kernel but the recurrent output
constexpr int WARPS = THREADS / 32;
constexpr int ROWS = 32;            // feature rows per block (states) or per tile (query of the state)
constexpr int COL_TILES = 5;        // columns (v | 1): e + 1 <= 32 * COL_TILES = 160, so e <= 128
constexpr int MAX_CHUNK = 64;       // query rows per block of the output kernel: MAX_CHUNK / WARPS each
constexpr int ROW_SLOTS = MAX_CHUNK / WARPS;
constexpr int STATE_SLOTS = ROWS / WARPS;

__device__ __forceinline__ float neg_inf() { return __int_as_float(0xff800000); }

// m where finite, else 0: the safe reference point of an exp(x - m) (spec/steps.py finite_or_zero).
__device__ __forceinline__ float finite_or_zero(float m) { return isfinite(m) ? m : 0.0f; }

// log|s|, -inf at 0.
__device__ __forceinline__ float log_abs(float s) { return s != 0.0f ? logf(fabsf(s)) : neg_inf(); }

// Loads and stores: half and bfloat16 are widened to float; every sum is accumulated in float32.
__device__ __forceinline__ float to_float(float x) { return x; }
__device__ __forceinline__ float to_float(__half x) { return __half2float(x); }
__device__ __forceinline__ float to_float(__nv_bfloat16 x) { return __bfloat162float(x); }

template <typename T> __device__ __forceinline__ T from_float(float x);
template <> __device__ __forceinline__ float from_float<float>(float x) { return x; }
template <> __device__ __forceinline__ __half from_float<__half>(float x) { return __float2half_rn(x); }
template <> __device__ __forceinline__ __nv_bfloat16 from_float<__nv_bfloat16>(float x) {
    return __float2bfloat16_rn(x);
}

// Element m of sigma^{1/2} R(mu_t) x_t for one token's row x [d] (math.md section 3): the pair of m is
// (x_p, x_{p+d/2}) ("half") or (x_{2p}, x_{2p+1}) ("interleaved"), rotated by mu_{t,p}:
// (a, b) -> (a cos - b sin, a sin + b cos). cos_row and sin_row [d/2] hold cos and sin of mu_t, computed on
// the host from angles accumulated in float64 (spec/rotary.py accumulate_angles).
template <typename T>
__device__ __forceinline__ float load_rotated(const T* __restrict__ row, const float* __restrict__ cos_row,
                                              const float* __restrict__ sin_row, int d, int m, int flags,
                                              float root_scale) {
    if (!(flags & HAS_ROTARY)) return root_scale * to_float(row[m]);
    const int half = d / 2;
    int pair, first, second;
    bool leading;
    if (flags & INTERLEAVED) {
        pair = m >> 1;
        first = 2 * pair;
        second = first + 1;
        leading = (m & 1) == 0;
    } else {
        leading = m < half;
        pair = leading ? m : m - half;
        first = pair;
        second = pair + half;
    }
    const float a = to_float(row[first]), b = to_float(row[second]);
    const float c = cos_row[pair], s = sin_row[pair];
    return root_scale * (leading ? a * c - b * s : a * s + b * c);
}

// (inv, lam) of a row y [d] with 1/|y| and lam = P log|y| as spec/features.py log_norm computes them:
// the norm is taken after dividing by max |y_m| so that it neither overflows nor underflows; y = 0 gives
// inv = 0 (features 0) and lam = 0.
template <int P>
__device__ __forceinline__ void row_scale(const float* y, int d, float* inv, float* lam) {
    float peak = 0.0f;
    for (int m = 0; m < d; ++m) peak = fmaxf(peak, fabsf(y[m]));
    if (peak == 0.0f) {
        *inv = 0.0f;
        *lam = 0.0f;
        return;
    }
    float squares = 0.0f;
    for (int m = 0; m < d; ++m) {
        const float ratio = y[m] / peak;
        squares += ratio * ratio;
    }
    const float norm = sqrtf(squares);
    *inv = (1.0f / peak) / norm;
    *lam = P * (logf(peak) + logf(norm));
}

template <int P> struct Factorial { static constexpr float value = P * Factorial<P - 1>::value; };
template <> struct Factorial<0> { static constexpr float value = 1.0f; };

// f_r of a row y with scale inv = 1/|y|: sqrt(P!/prod a_m!) prod_m (y_{i_m} inv), each factor at most 1.
// `packed` holds the sorted indices i_0 <= ... <= i_{P-1}, 8 bits each, i_0 in the low byte.
template <int P>
__device__ __forceinline__ float feature(const float* y, unsigned packed, float inv) {
    float product = 1.0f;
    float multiplicities = 1.0f;  // prod_m a_m!, built as each run of equal indices grows
    int previous = -1, run = 0;
#pragma unroll
    for (int m = 0; m < P; ++m) {
        const int index = (packed >> (8 * m)) & 0xff;
        product *= y[index] * inv;
        run = index == previous ? run + 1 : 1;
        multiplicities *= run;
        previous = index;
    }
    return sqrtf(Factorial<P>::value / multiplicities) * product;
}

// y from a partial (num, den, m) (spec/steps.py finish): N / (Z + eps), 0 where that denominator is 0,
// with eps acting on the true denominator Z = exp(m) den; or N = exp(m) num unnormalised.
__device__ __forceinline__ float finish(float num, float den, float reference, int flags, float eps) {
    if (flags & NORMALIZE) {
        if (eps > 0.0f) den += eps * expf(-reference);
        return den > 0.0f ? num / den : 0.0f;
    }
    return num == 0.0f ? 0.0f : num * expf(reference);
}

}  // namespace sympow
