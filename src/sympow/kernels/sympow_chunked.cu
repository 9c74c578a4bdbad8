// The chunked form (math.md section 6) as two kernels over the four steps of spec/steps.py:
//
//   sympow_chunk_states<T, P>   steps 2 and 3: each chunk's state sum_j exp(lam_j + G_j->end) f_j (v_j | 1)
//                               and the discounted scan across chunks; writes the state entering every
//                               chunk and the final state. Grid (ceil(D / ROWS), B): a block owns ROWS
//                               feature rows of one head and walks the chunks in order, its running state
//                               in registers.
//   sympow_chunk_output<T, P>   steps 1 and 4: intra-chunk attention and the query of the entering state,
//                               merged and finished into y. Grid (n_chunks, B).
//
// Layout (all contiguous, B the flattened batch): q, k [B, T, d] and v [B, T, e] in T (float, __half,
// __nv_bfloat16); log_gate [B, T], cos_mu and sin_mu [B, T, d/2] float32; the state S [B, D, e],
// z [B, D], log scale M [B] float32 with true sums exp(M) (S | z); entering [B, n, D, e + 1] (S | z) and
// entering_scale [B, n]; y [B, T, e] in T. Chunks have C <= MAX_CHUNK tokens, the last may be shorter.
#include "sympow_common.cuh"

// Rows of y in shared memory have stride d + 1 so that threads reading the same column of different rows
// fall in different banks. The shared-memory sizes are computed in cupy_launch.py (*_shared_floats).

template <typename T, int P>
__global__ void __launch_bounds__(256) sympow_chunk_states(
    const T* __restrict__ k, const T* __restrict__ v, const float* __restrict__ log_gate,
    const float* __restrict__ cos_mu, const float* __restrict__ sin_mu, const unsigned* __restrict__ table,
    const float* __restrict__ S_in, const float* __restrict__ z_in, const float* __restrict__ M_in,
    float* __restrict__ entering, float* __restrict__ entering_scale, float* __restrict__ S_out,
    float* __restrict__ z_out, float* __restrict__ M_out, int T_len, int d, int e, int D, int C,
    int n_chunks, float root_scale, int flags) {
    using namespace sympow;
    SYMPOW_SHARED_FLOATS(shared);
    const int E1 = e + 1, DP = d + 1;
    float* Y = shared;          // [C][DP] the chunk's keys y_j
    float* WV = Y + C * DP;     // [C][E1] exp(lam_j + G_j->end - m) (v_j | 1)
    float* F = WV + C * E1;     // [C][ROWS] features f_j of this block's rows
    float* g = F + C * ROWS;    // [C] log-gates (0 past T)
    float* inv = g + C;         // [C] 1 / |y_j|
    float* lam = inv + C;       // [C] P log |y_j|
    float* weight = lam + C;    // [C]
    float* chunk = weight + C;  // [2] the chunk's total gate and its log scale m

    const int b = blockIdx.y, r0 = blockIdx.x * ROWS;
    const int tid = threadIdx.x, lane = tid & 31, warp = tid >> 5;
    const size_t head = (size_t)b * T_len;
    const int half = d / 2;

    // The running state exp(M) SZ of rows r0 + warp + WARPS * i, columns lane + 32 * j.
    float run[STATE_SLOTS][COL_TILES];
    float M = (flags & HAS_STATE) ? M_in[b] : neg_inf();
#pragma unroll
    for (int i = 0; i < STATE_SLOTS; ++i) {
        const int r = r0 + warp + WARPS * i;
#pragma unroll
        for (int j = 0; j < COL_TILES; ++j) {
            const int c = lane + 32 * j;
            float value = 0.0f;
            if ((flags & HAS_STATE) && r < D && c < E1)
                value = c < e ? S_in[((size_t)b * D + r) * e + c] : z_in[(size_t)b * D + r];
            run[i][j] = value;
        }
    }

    for (int n = 0; n < n_chunks; ++n) {
        const int t0 = n * C;
        const int valid = min(C, T_len - t0);
        __syncthreads();  // the previous chunk is done with shared memory
        for (int idx = tid; idx < C * d; idx += THREADS) {
            const int j = idx / d, m = idx - (idx / d) * d;
            float value = 0.0f;
            if (j < valid) {
                const size_t token = head + t0 + j;
                value = load_rotated(k + token * d, cos_mu + token * half, sin_mu + token * half, d, m,
                                     flags, root_scale);
            }
            Y[j * DP + m] = value;
        }
        for (int idx = tid; idx < C * E1; idx += THREADS) {
            const int j = idx / E1, c = idx - (idx / E1) * E1;
            float value = 0.0f;
            if (j < valid) value = c < e ? to_float(v[(head + t0 + j) * e + c]) : 1.0f;
            WV[idx] = value;
        }
        for (int j = tid; j < C; j += THREADS)
            g[j] = ((flags & HAS_GATE) && j < valid) ? log_gate[head + t0 + j] : 0.0f;
        __syncthreads();
        for (int j = tid; j < C; j += THREADS) row_scale<P>(Y + j * DP, d, &inv[j], &lam[j]);
        __syncthreads();
        if (tid == 0) {
            // Step 2's weights: G_j->end = sum_{l>j} g_l summed directly from the chunk's end (spec
            // suffix_sums), m the largest lam_j + G_j->end; padding keys get weight 0.
            float to_end = 0.0f, m = neg_inf();
            for (int j = valid - 1; j >= 0; --j) {
                weight[j] = lam[j] + to_end;
                m = fmaxf(m, weight[j]);
                to_end += g[j];
            }
            const float reference = finite_or_zero(m);
            for (int j = 0; j < C; ++j) weight[j] = j < valid ? expf(weight[j] - reference) : 0.0f;
            chunk[0] = to_end;  // the sum of every gate of the chunk
            chunk[1] = m;
        }
        __syncthreads();
        for (int idx = tid; idx < C * E1; idx += THREADS) WV[idx] *= weight[idx / E1];
        for (int idx = tid; idx < C * ROWS; idx += THREADS) {
            const int j = idx / ROWS, r = r0 + (idx - (idx / ROWS) * ROWS);
            F[idx] = (j < valid && r < D) ? feature<P>(Y + j * DP, table[r], inv[j]) : 0.0f;
        }
        __syncthreads();

        // Step 2: this chunk's state, rows of this block: sum_j f_j[r] WV_j.
        float acc[STATE_SLOTS][COL_TILES];
#pragma unroll
        for (int i = 0; i < STATE_SLOTS; ++i)
#pragma unroll
            for (int j = 0; j < COL_TILES; ++j) acc[i][j] = 0.0f;
        for (int key = 0; key < valid; ++key) {
#pragma unroll
            for (int i = 0; i < STATE_SLOTS; ++i) {
                const float f = F[key * ROWS + warp + WARPS * i];
#pragma unroll
                for (int j = 0; j < COL_TILES; ++j) {
                    const int c = lane + 32 * j;
                    if (c < E1) acc[i][j] += f * WV[key * E1 + c];
                }
            }
        }

        // Step 3: record the state entering chunk n, then S <- exp(decay) S + S_chunk in log scale:
        // M <- max(M + decay, m), both terms weighted by exp(. - M_new) <= 1.
        const size_t base = ((size_t)b * n_chunks + n) * D;
#pragma unroll
        for (int i = 0; i < STATE_SLOTS; ++i) {
            const int r = r0 + warp + WARPS * i;
#pragma unroll
            for (int j = 0; j < COL_TILES; ++j) {
                const int c = lane + 32 * j;
                if (r < D && c < E1) entering[(base + r) * E1 + c] = run[i][j];
            }
        }
        if (blockIdx.x == 0 && tid == 0) entering_scale[(size_t)b * n_chunks + n] = M;
        const float decayed = M + chunk[0], m = chunk[1];
        const float scale = fmaxf(decayed, m);
        const float reference = finite_or_zero(scale);
        const float keep = expf(decayed - reference), add = expf(m - reference);
#pragma unroll
        for (int i = 0; i < STATE_SLOTS; ++i)
#pragma unroll
            for (int j = 0; j < COL_TILES; ++j) run[i][j] = keep * run[i][j] + add * acc[i][j];
        M = scale;
    }

#pragma unroll
    for (int i = 0; i < STATE_SLOTS; ++i) {
        const int r = r0 + warp + WARPS * i;
#pragma unroll
        for (int j = 0; j < COL_TILES; ++j) {
            const int c = lane + 32 * j;
            if (r < D && c < e) S_out[((size_t)b * D + r) * e + c] = run[i][j];
            if (r < D && c == e) z_out[(size_t)b * D + r] = run[i][j];
        }
    }
    if (blockIdx.x == 0 && tid == 0) M_out[b] = M;
}

template <typename T, int P>
__global__ void __launch_bounds__(256) sympow_chunk_output(
    const T* __restrict__ q, const T* __restrict__ k, const T* __restrict__ v,
    const float* __restrict__ log_gate, const float* __restrict__ cos_mu, const float* __restrict__ sin_mu,
    const unsigned* __restrict__ table, const float* __restrict__ entering,
    const float* __restrict__ entering_scale, T* __restrict__ y, int T_len, int d, int e, int D, int C,
    int n_chunks, float root_scale, float eps, int flags) {
    using namespace sympow;
    SYMPOW_SHARED_FLOATS(shared);
    const int E1 = e + 1, CP = C + 1, DP = d + 1;
    float* Yq = shared;              // [C][DP] the chunk's queries
    float* V = Yq + C * DP;          // [C][E1] (v_j | 1)
    float* g = V + C * E1;           // [C]
    float* inv = g + C;              // [C] 1 / |yq_i|
    float* reference = inv + C;      // [C] the row's reference point finite_or_zero(max(m_intra, m_inter))
    float* inter = reference + C;    // [C] exp(m_inter - reference)
    float* den = inter + C;          // [C]
    float* lam = den + C;            // [C]
    float* region = lam + C;         // reused: Yk, scores, weights (step 1); then Fq, Z (step 4)
    float* Yk = region;              // [C][DP]
    float* scores = Yk + C * DP;     // [C][CP]
    float* E = scores + C * CP;      // [C][CP] log-weights, then weights
    float* Fq = region;              // [C][ROWS] exp(m_inter - reference) f_i, this tile's rows
    float* Z = Fq + C * ROWS;        // [ROWS][E1] the entering state, this tile's rows

    const int n = blockIdx.x, b = blockIdx.y;
    const int tid = threadIdx.x, lane = tid & 31, warp = tid >> 5;
    const int t0 = n * C, valid = min(C, T_len - t0);
    const size_t head = (size_t)b * T_len;
    const int half = d / 2;
    const float M = entering_scale[(size_t)b * n_chunks + n];

    for (int idx = tid; idx < C * d; idx += THREADS) {
        const int j = idx / d, m = idx - (idx / d) * d;
        float qm = 0.0f, km = 0.0f;
        if (j < valid) {
            const size_t token = head + t0 + j;
            const float* c_row = cos_mu + token * half;
            const float* s_row = sin_mu + token * half;
            qm = load_rotated(q + token * d, c_row, s_row, d, m, flags, root_scale);
            km = load_rotated(k + token * d, c_row, s_row, d, m, flags, root_scale);
        }
        Yq[j * DP + m] = qm;
        Yk[j * DP + m] = km;
    }
    for (int idx = tid; idx < C * E1; idx += THREADS) {
        const int j = idx / E1, c = idx - (idx / E1) * E1;
        float value = 0.0f;
        if (j < valid) value = c < e ? to_float(v[(head + t0 + j) * e + c]) : 1.0f;
        V[idx] = value;
    }
    for (int j = tid; j < C; j += THREADS)
        g[j] = ((flags & HAS_GATE) && j < valid) ? log_gate[head + t0 + j] : 0.0f;
    __syncthreads();

    // Step 1: scores s_ij = <yq_i, yk_j> for j <= i.
    for (int j = tid; j < C; j += THREADS) row_scale<P>(Yq + j * DP, d, &inv[j], &lam[j]);
    for (int idx = tid; idx < C * C; idx += THREADS) {
        const int i = idx / C, j = idx - (idx / C) * C;
        if (j <= i && i < valid) {
            float s = 0.0f;
            for (int m = 0; m < d; ++m) s += Yq[i * DP + m] * Yk[j * DP + m];
            scores[i * CP + j] = s;
        }
    }
    __syncthreads();
    // Log-weights G_ij + P log|s_ij|, G_ij = sum_{l=j+1..i} g_l summed down each column (Mamba-2's
    // segsum, spec/weights.py segment_sums): never the difference of two prefix sums.
    for (int j = tid; j < valid; j += THREADS) {
        float G = 0.0f;
        for (int i = j; i < valid; ++i) {
            if (i > j) G += g[i];
            E[i * CP + j] = G + P * log_abs(scores[i * CP + j]);
        }
    }
    __syncthreads();
    // Per row: m_intra = max_j, m_inter = lam_i + sum_{l<=i} g_l + M (the entering state's scale), and the
    // common reference point of both (spec/steps.py merge).
    for (int i = tid; i < valid; i += THREADS) {
        float m_intra = neg_inf(), from_start = 0.0f;
        for (int j = 0; j <= i; ++j) {
            m_intra = fmaxf(m_intra, E[i * CP + j]);
            from_start += g[j];
        }
        const float m_inter = lam[i] + from_start + M;
        const float r = finite_or_zero(fmaxf(m_intra, m_inter));
        reference[i] = r;
        inter[i] = expf(m_inter - r);
    }
    __syncthreads();
    for (int idx = tid; idx < C * C; idx += THREADS) {
        const int i = idx / C, j = idx - (idx / C) * C;
        if (j <= i && i < valid) {
            float w = expf(E[i * CP + j] - reference[i]);
            if ((P & 1) && scores[i * CP + j] < 0.0f) w = -w;
            E[i * CP + j] = w;
        }
    }
    __syncthreads();

    // acc[i][c] over rows i = warp + WARPS * s and columns c = lane + 32 * t of (num | den).
    float acc[ROW_SLOTS][COL_TILES];
#pragma unroll
    for (int s = 0; s < ROW_SLOTS; ++s)
#pragma unroll
        for (int t = 0; t < COL_TILES; ++t) acc[s][t] = 0.0f;
    for (int key = 0; key < valid; ++key) {
#pragma unroll
        for (int s = 0; s < ROW_SLOTS; ++s) {
            const int i = warp + WARPS * s;
            const float w = (i < valid && key <= i) ? E[i * CP + key] : 0.0f;
#pragma unroll
            for (int t = 0; t < COL_TILES; ++t) {
                const int c = lane + 32 * t;
                if (c < E1) acc[s][t] += w * V[key * E1 + c];
            }
        }
    }

    // Step 4: f_i^T (S | z) of the entering state, ROWS feature rows at a time; skipped when it is empty.
    if (isfinite(M)) {
        const size_t base = ((size_t)b * n_chunks + n) * D;
        for (int r0 = 0; r0 < D; r0 += ROWS) {
            __syncthreads();  // the region is free (step 1, or the previous tile, is done with it)
            for (int idx = tid; idx < C * ROWS; idx += THREADS) {
                const int i = idx / ROWS, r = r0 + (idx - (idx / ROWS) * ROWS);
                Fq[idx] = (i < valid && r < D) ? inter[i] * feature<P>(Yq + i * DP, table[r], inv[i]) : 0.0f;
            }
            for (int idx = tid; idx < ROWS * E1; idx += THREADS) {
                const int rr = idx / E1, c = idx - (idx / E1) * E1;
                const int r = r0 + rr;
                Z[idx] = r < D ? entering[(base + r) * E1 + c] : 0.0f;
            }
            __syncthreads();
            for (int rr = 0; rr < ROWS; ++rr) {
#pragma unroll
                for (int s = 0; s < ROW_SLOTS; ++s) {
                    const int i = warp + WARPS * s;
                    const float f = i < C ? Fq[i * ROWS + rr] : 0.0f;
#pragma unroll
                    for (int t = 0; t < COL_TILES; ++t) {
                        const int c = lane + 32 * t;
                        if (c < E1) acc[s][t] += f * Z[rr * E1 + c];
                    }
                }
            }
        }
    }

#pragma unroll
    for (int s = 0; s < ROW_SLOTS; ++s) {
        const int i = warp + WARPS * s;
#pragma unroll
        for (int t = 0; t < COL_TILES; ++t)
            if (i < valid && lane + 32 * t == e) den[i] = acc[s][t];
    }
    __syncthreads();
#pragma unroll
    for (int s = 0; s < ROW_SLOTS; ++s) {
        const int i = warp + WARPS * s;
#pragma unroll
        for (int t = 0; t < COL_TILES; ++t) {
            const int c = lane + 32 * t;
            if (i < valid && c < e)
                y[(head + t0 + i) * e + c] = from_float<T>(finish(acc[s][t], den[i], reference[i], flags, eps));
        }
    }
}
