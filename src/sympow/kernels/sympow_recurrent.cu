// The recurrent form (math.md section 5) for one token (decode) or many (prefill: the token loop runs
// inside the kernel), following spec/forms.py `recurrent`. With the state kept as exp(M) (S | z):
//
//   past_t  = (f(q_t)^T S, f(q_t)^T z, lam_q + g_t + M)        the query of the state after token t-1
//   own_t   = (w v_t, w, P log|s_tt|), w = sign(s_tt)^P         token t's own term, from its score
//   y_t     = finish(merge(own_t, past_t))
//   M'      = max(M + g_t, lam_k);  (S | z) <- exp(M + g_t - M') (S | z) + exp(lam_k - M') f(k_t) (v_t | 1)
//
// sympow_recurrent_state<T, P>: grid (n_split, B), each block owns rows [r_begin, r_end) of the feature
// axis of one head and reads every state entry once and writes it once per token (query and update
// fused). Its share of past_t is added atomically into partial [B, T, e + 1]; every block follows the same
// log scale M, so the shares are on one scale. Block 0 writes m_past, m_own and w_own [B, T] and M_out.
// sympow_recurrent_output<T>: grid (B * T), merges and finishes y [B, T, e].
//
// Layout: q, k [B, T, d], v [B, T, e] in T; log_gate [B, T], cos_mu, sin_mu [B, T, d/2] float32; S [B, D, e]
// and z [B, D] float32, updated in place (the launcher passes fresh copies); M_in, M_out [B].
#include "sympow_common.cuh"

template <typename T, int P>
__global__ void __launch_bounds__(256) sympow_recurrent_state(
    const T* __restrict__ q, const T* __restrict__ k, const T* __restrict__ v,
    const float* __restrict__ log_gate, const float* __restrict__ cos_mu, const float* __restrict__ sin_mu,
    const unsigned* __restrict__ table, float* __restrict__ S, float* __restrict__ z,
    const float* __restrict__ M_in, float* __restrict__ M_out, float* __restrict__ partial,
    float* __restrict__ m_past, float* __restrict__ m_own, float* __restrict__ w_own, int T_len, int d,
    int e, int D, int rows_per_block, float root_scale, int flags) {
    using namespace sympow;
    SYMPOW_SHARED_FLOATS(shared);
    constexpr int WIDTH = 32 * COL_TILES;
    const int E1 = e + 1;
    float* yq = shared;              // [d]
    float* yk = yq + d;              // [d]
    float* vz = yk + d;              // [WIDTH] (v_t | 1)
    float* sums = vz + WIDTH;        // [WARPS][WIDTH] per-warp shares of past_t
    float* token = sums + WARPS * WIDTH;  // [5] inv_q, lam_q, inv_k, lam_k, g_t

    const int b = blockIdx.y;
    const int r_begin = blockIdx.x * rows_per_block;
    const int r_end = min(D, r_begin + rows_per_block);
    const int tid = threadIdx.x, lane = tid & 31, warp = tid >> 5;
    const int half = d / 2;
    float* S_head = S + (size_t)b * D * e;
    float* z_head = z + (size_t)b * D;
    float M = (flags & HAS_STATE) ? M_in[b] : neg_inf();

    for (int t = 0; t < T_len; ++t) {
        const size_t row = (size_t)b * T_len + t;
        __syncthreads();  // the previous token is done with shared memory
        for (int m = tid; m < d; m += THREADS) {
            const float* c_row = cos_mu + row * half;
            const float* s_row = sin_mu + row * half;
            yq[m] = load_rotated(q + row * d, c_row, s_row, d, m, flags, root_scale);
            yk[m] = load_rotated(k + row * d, c_row, s_row, d, m, flags, root_scale);
        }
        for (int c = tid; c < E1; c += THREADS) vz[c] = c < e ? to_float(v[row * e + c]) : 1.0f;
        __syncthreads();
        if (tid == 0) row_scale<P>(yq, d, &token[0], &token[1]);
        if (tid == 32) row_scale<P>(yk, d, &token[2], &token[3]);
        if (tid == 64) token[4] = (flags & HAS_GATE) ? log_gate[row] : 0.0f;
        if (tid == 96 && blockIdx.x == 0) {
            float s = 0.0f;
            for (int m = 0; m < d; ++m) s += yq[m] * yk[m];
            m_own[row] = P * log_abs(s);
            w_own[row] = s == 0.0f ? 0.0f : ((P & 1) && s < 0.0f ? -1.0f : 1.0f);
        }
        __syncthreads();
        const float inv_q = token[0], lam_q = token[1], inv_k = token[2], lam_k = token[3], g = token[4];
        if (blockIdx.x == 0 && tid == 0) m_past[row] = lam_q + g + M;
        const float decayed = M + g;
        const float scale = fmaxf(decayed, lam_k);
        const float reference = finite_or_zero(scale);
        const float keep = expf(decayed - reference), add = expf(lam_k - reference);

        float acc[COL_TILES];
#pragma unroll
        for (int j = 0; j < COL_TILES; ++j) acc[j] = 0.0f;
        for (int r = r_begin + warp; r < r_end; r += WARPS) {
            const unsigned packed = table[r];
            const float fq = feature<P>(yq, packed, inv_q);
            const float fk = add * feature<P>(yk, packed, inv_k);
#pragma unroll
            for (int j = 0; j < COL_TILES; ++j) {
                const int c = lane + 32 * j;
                if (c < E1) {
                    float* entry = c < e ? S_head + (size_t)r * e + c : z_head + r;
                    const float old = *entry;
                    acc[j] += fq * old;
                    *entry = keep * old + fk * vz[c];
                }
            }
        }
        M = scale;
#pragma unroll
        for (int j = 0; j < COL_TILES; ++j) sums[warp * WIDTH + lane + 32 * j] = acc[j];
        __syncthreads();
        for (int c = tid; c < E1; c += THREADS) {
            float total = 0.0f;
            for (int w = 0; w < WARPS; ++w) total += sums[w * WIDTH + c];
            atomicAdd(partial + row * E1 + c, total);
        }
    }
    if (blockIdx.x == 0 && tid == 0) M_out[b] = M;
}

template <typename T>
__global__ void __launch_bounds__(128) sympow_recurrent_output(
    const T* __restrict__ v, const float* __restrict__ partial, const float* __restrict__ m_past,
    const float* __restrict__ m_own, const float* __restrict__ w_own, T* __restrict__ y, int e, float eps,
    int flags) {
    using namespace sympow;
    const size_t row = blockIdx.x;
    const int E1 = e + 1;
    const float own = m_own[row], past = m_past[row];
    const float reference = finite_or_zero(fmaxf(own, past));
    const float w1 = expf(own - reference) * w_own[row], w2 = expf(past - reference);
    const float den = w1 + w2 * partial[row * E1 + e];
    for (int c = threadIdx.x; c < e; c += blockDim.x) {
        const float num = w1 * to_float(v[row * e + c]) + w2 * partial[row * E1 + c];
        y[row * e + c] = from_float<T>(finish(num, den, reference, flags, eps));
    }
}
