"""Numba CUDA kernels for the recurrent and chunked forms (math.md sections 5-7, layout.md).

Inputs are prepared by ``numba_launch``: yq, yk [BH, T, d] = sigma^{1/2} R(mu_t) x_t in float32, v [BH, T, e],
log-gates g [BH, T] (zeros without gating), and the feature table of phi_P on R^d: ``idx`` [D, P] (the
sorted multiset of feature r) and ``coef`` [D] (sqrt(P! / prod_m a_m!)), so that feature r of a unit vector
u is coef[r] * prod_k u[idx[r, k]]; P = p for sympow and 1 for identity (whose table is phi_1 = u). The
features are generated on the fly from the table; phi(K) is never written to global memory.

Every feature is factored as phi(y) = exp(lam) f with f = phi_P(y / |y|) and lam = P log |y| (as
``spec.features.scaled``). The state is kept as exp(M) SZ, SZ [D, e+1] float32 holding (S | z), M a float32
log scale (-inf when empty); partial outputs are (num, den, m) standing for exp(m) (num, den), merged by
their maximum m. Gate sums are segment sums over the gates of their range only (never differences of
long prefix sums) and every exponent is <= 0 after its reference point is subtracted.

Kernels (each built by a cached factory whose arguments are compile-time constants):

- ``recurrent_kernel(P, d, E1, G)``: one block of (E1, G) threads per sequence; token by token the
  query against the decayed state, token t's own term from its score s_tt, and the update
  SZ <- exp(M + g_t - M') SZ + exp(lam_k - M') f_k (v_t | 1).  Decode (T = 1) and prefill.
- chunked, in four kernels:
  1. ``token_stats_kernel(P, d)``: per token lam and 1/|y| of q and k, the in-chunk gate sums from the
     chunk's start (inclusive) and to its end (exclusive); per chunk the state's log scale
     m_c = max_j (lam_j + G_j->end) and its total gate.
  2. ``chunk_states_kernel(P, d, E1, C, R, TPB)``: SZ_c[r, :] = sum_j exp(lam_j + G_j->end - m_c) f_j[r]
     (v_j | 1), one block per (sequence, chunk, tile of R features).
  3. ``scan_kernel()``: S <- exp(ctot) S + S_c in log-scale form, in place: chunk c's slot then holds the
     state entering chunk c; one thread per state entry.
  4. ``output_kernel(P, d, E1, C, R, TPB)``: fused intra-chunk attention (scores s_ij^P exp(G_ij),
     each row stabilised by its log-space max) and the query f_i^T SZ_entering of the state, merged and
     finished: y = N / (Z + eps) (0 where that is 0) or y = N.
"""

from __future__ import annotations

import math
from functools import cache
from typing import Any

import numpy as np
from numba import cuda, float32, int8

NEG_INF = np.float32(-np.inf)
ZERO = np.float32(0.0)
ONE = np.float32(1.0)
EXP_LIMIT = np.float32(88.0)  # exp(88) ~ 1.7e38, the edge of float32

# Slots of the recurrent kernel's shared scalars.
_W_OWN, _W_PAST, _REF, _ALPHA, _BETA, _INV_Q, _INV_K, _M = range(8)


@cuda.jit(device=True)
def finite_or_zero(m: Any) -> Any:
    """m where finite, else 0: the reference point of an exp(x - m)."""
    return m if math.isfinite(m) else ZERO


@cuda.jit(device=True)
def log_norm(x: Any, bh: int, t: int, d: int) -> Any:
    """(log |x|, 1/|x|) of the row x[bh, t, :d]; (-inf, 0) for a zero row. Scaled by max |x_m| first."""
    peak = ZERO
    for m in range(d):
        peak = max(peak, abs(x[bh, t, m]))
    if peak == ZERO:
        return NEG_INF, ZERO
    total = ZERO
    for m in range(d):
        ratio = x[bh, t, m] / peak
        total += ratio * ratio
    norm = peak * math.sqrt(total)
    return math.log(norm), ONE / norm


@cuda.jit(device=True)
def dot(a: Any, b: Any, bh: int, ta: int, tb: int, d: int) -> Any:
    """<a[bh, ta, :], b[bh, tb, :]>."""
    total = ZERO
    for m in range(d):
        total += a[bh, ta, m] * b[bh, tb, m]
    return total


@cuda.jit(device=True)
def finish(num: Any, den: Any, ref: Any, eps: Any, normalize: Any) -> Any:
    """y from (num, den) standing for exp(ref) (num, den): N / (Z + eps), 0 where that is 0; or N."""
    if normalize:
        if eps > ZERO:
            den = den + eps * math.exp(min(-ref, EXP_LIMIT))
        return num / den if den > ZERO else ZERO
    if num == ZERO:
        return num
    return num * math.exp(min(ref, EXP_LIMIT))


@cache
def _features(P: int) -> tuple[Any, Any]:
    """Device functions for feature r of phi_P: of a unit vector in shared memory, and of a row of a
    [BH, T, d] array times its inverse norm."""
    PF = np.float32(P)

    @cuda.jit(device=True)
    def of_unit(u: Any, idx: Any, coef: Any, r: int) -> Any:
        f = coef[r]
        for k in range(P):
            f *= u[idx[r, k]]
        return f

    @cuda.jit(device=True)
    def of_row(x: Any, bh: int, t: int, inv: Any, idx: Any, coef: Any, r: int) -> Any:
        f = coef[r]
        for k in range(P):
            f *= x[bh, t, idx[r, k]] * inv
        return f

    @cuda.jit(device=True)
    def log_magnitude(log_abs: Any) -> Any:
        """lam = P log|y| (0 for y = 0, whose features are 0), or P log|s| of a score (-inf for 0)."""
        return PF * log_abs

    return of_unit, of_row, log_magnitude


@cache
def recurrent_kernel(P: int, d: int, E1: int, G: int) -> Any:
    """The recurrent form: grid (BH,), block (E1, G); thread (c, grp) owns column c of the rows
    r = grp, grp + G, ... of SZ. Arguments: yq, yk [BH, T, d]; v [BH, T, E1 - 1]; g [BH, T]; idx, coef;
    state [BH, D, E1] (initial in, final out); scale [BH] (in, out); y [BH, T, E1 - 1]; eps; normalize."""
    of_unit, _, log_magnitude = _features(P)
    e = E1 - 1
    odd = P % 2 == 1
    threads = E1 * G

    def recurrent(yq, yk, v, g, idx, coef, state, scale, y, eps, normalize):
        bh = cuda.blockIdx.x
        c = cuda.threadIdx.x
        grp = cuda.threadIdx.y
        flat = grp * E1 + c
        D = idx.shape[0]
        T = yq.shape[1]
        uq = cuda.shared.array(d, float32)
        uk = cuda.shared.array(d, float32)
        sc = cuda.shared.array(8, float32)
        red = cuda.shared.array((G, E1), float32)
        if flat == 0:
            sc[_M] = scale[bh]
        for t in range(T):
            cuda.syncthreads()
            if flat == 0:
                gate = g[bh, t]
                lq, inv_q = log_norm(yq, bh, t, d)
                lk, inv_k = log_norm(yk, bh, t, d)
                lam_q = log_magnitude(lq) if math.isfinite(lq) else ZERO
                lam_k = log_magnitude(lk) if math.isfinite(lk) else ZERO
                s = dot(yq, yk, bh, t, t, d)
                own = log_magnitude(math.log(abs(s))) if s != ZERO else NEG_INF
                past = lam_q + gate + sc[_M]
                ref = finite_or_zero(max(own, past))
                w_own = math.exp(own - ref)
                if odd and s < ZERO:
                    w_own = -w_own
                decayed = sc[_M] + gate
                new_scale = max(decayed, lam_k)
                ref_state = finite_or_zero(new_scale)
                sc[_W_OWN] = w_own
                sc[_W_PAST] = math.exp(past - ref)
                sc[_REF] = ref
                sc[_ALPHA] = math.exp(decayed - ref_state)
                sc[_BETA] = math.exp(lam_k - ref_state)
                sc[_INV_Q] = inv_q
                sc[_INV_K] = inv_k
                sc[_M] = new_scale
            cuda.syncthreads()
            for m in range(flat, d, threads):
                uq[m] = yq[bh, t, m] * sc[_INV_Q]
                uk[m] = yk[bh, t, m] * sc[_INV_K]
            cuda.syncthreads()
            alpha = sc[_ALPHA]
            beta = sc[_BETA]
            value = v[bh, t, c] if c < e else ONE
            acc = ZERO
            for r in range(grp, D, G):
                fq = of_unit(uq, idx, coef, r)
                fk = of_unit(uk, idx, coef, r)
                old = state[bh, r, c]
                acc += fq * old
                state[bh, r, c] = alpha * old + beta * (fk * value)
            red[grp, c] = acc
            cuda.syncthreads()
            if grp == 0:
                product = ZERO
                for h in range(G):
                    product += red[h, c]
                red[0, c] = sc[_W_OWN] * value + sc[_W_PAST] * product
            cuda.syncthreads()
            if grp == 0 and c < e:
                y[bh, t, c] = finish(red[0, c], red[0, e], sc[_REF], eps, normalize)
        cuda.syncthreads()
        if flat == 0:
            scale[bh] = sc[_M]

    return recurrent


@cache
def token_stats_kernel(P: int, d: int) -> Any:
    """Step 0 of the chunked form: one thread per (sequence, chunk). Arguments: yq, yk [BH, T, d];
    g [BH, T]; chunk C; outputs lam_q, inv_q, lam_k, inv_k, from_start, to_end [BH, T]; chunk_scale,
    chunk_total [BH, n]."""
    _, _, log_magnitude = _features(P)

    def token_stats(yq, yk, g, C, lam_q, inv_q, lam_k, inv_k, from_start, to_end, chunk_scale, chunk_total):
        x = cuda.grid(1)
        BH = yq.shape[0]
        T = yq.shape[1]
        n = chunk_scale.shape[1]
        if x >= BH * n:
            return
        bh = x // n
        t0 = (x % n) * C
        t1 = min(T, t0 + C)
        total = ZERO
        for t in range(t0, t1):
            lq, iq = log_norm(yq, bh, t, d)
            lk, ik = log_norm(yk, bh, t, d)
            lam_q[bh, t] = log_magnitude(lq) if math.isfinite(lq) else ZERO
            lam_k[bh, t] = log_magnitude(lk) if math.isfinite(lk) else ZERO
            inv_q[bh, t] = iq
            inv_k[bh, t] = ik
            total += g[bh, t]
            from_start[bh, t] = total
        chunk_total[bh, x % n] = total
        after = ZERO
        best = NEG_INF
        for t in range(t1 - 1, t0 - 1, -1):
            to_end[bh, t] = after
            best = max(best, lam_k[bh, t] + after)
            after += g[bh, t]
        chunk_scale[bh, x % n] = best

    return token_stats


@cache
def chunk_states_kernel(P: int, d: int, E1: int, C: int, R: int, TPB: int) -> Any:
    """Step 2: grid (BH * n * ceil(D / R),) over (sequence, chunk, feature tile), TPB threads.
    Arguments: yk [BH, T, d]; v [BH, T, E1 - 1]; idx, coef; lam_k, inv_k, to_end [BH, T];
    chunk_scale [BH, n]; output states [BH, n, D, E1]."""
    _, of_row, _ = _features(P)
    e = E1 - 1

    def chunk_states(yk, v, idx, coef, lam_k, inv_k, to_end, chunk_scale, states):
        n = states.shape[1]
        T = yk.shape[1]
        D = idx.shape[0]
        tiles = (D + R - 1) // R
        block = cuda.blockIdx.x // tiles
        bh = block // n
        ch = block % n
        r0 = (cuda.blockIdx.x % tiles) * R
        tid = cuda.threadIdx.x
        t0 = ch * C
        cn = min(C, T - t0)
        weight = cuda.shared.array(C, float32)
        fk = cuda.shared.array((C, R), float32)
        ref = finite_or_zero(chunk_scale[bh, ch])
        for j in range(tid, cn, TPB):
            weight[j] = math.exp(lam_k[bh, t0 + j] + to_end[bh, t0 + j] - ref)
        for o in range(tid, cn * R, TPB):
            j = o // R
            r = r0 + o % R
            fk[j, o % R] = of_row(yk, bh, t0 + j, inv_k[bh, t0 + j], idx, coef, r) if r < D else ZERO
        cuda.syncthreads()
        for o in range(tid, R * E1, TPB):
            rr = o // E1
            c = o % E1
            if r0 + rr < D:
                acc = ZERO
                for j in range(cn):
                    value = v[bh, t0 + j, c] if c < e else ONE
                    acc += fk[j, rr] * (weight[j] * value)
                states[bh, ch, r0 + rr, c] = acc

    return chunk_states


@cache
def scan_kernel() -> Any:
    """Step 3: one thread per (sequence, state entry). Arguments: states [BH, n, W] (chunk states in,
    entering states out); chunk_scale, chunk_total [BH, n]; sz [BH, W] (initial in, final out);
    scale [BH] initial log scale; outputs entering_scale [BH, n] and final_scale [BH]."""

    def scan(states, chunk_scale, chunk_total, sz, scale, entering_scale, final_scale):
        x = cuda.grid(1)
        BH = states.shape[0]
        n = states.shape[1]
        W = states.shape[2]
        if x >= BH * W:
            return
        bh = x // W
        el = x % W
        current = sz[bh, el]
        log_scale = scale[bh]
        for ch in range(n):
            incoming = states[bh, ch, el]
            states[bh, ch, el] = current
            if el == 0:
                entering_scale[bh, ch] = log_scale
            decayed = log_scale + chunk_total[bh, ch]
            new_scale = max(decayed, chunk_scale[bh, ch])
            ref = finite_or_zero(new_scale)
            current = math.exp(decayed - ref) * current + math.exp(chunk_scale[bh, ch] - ref) * incoming
            log_scale = new_scale
        sz[bh, el] = current
        if el == 0:
            final_scale[bh] = log_scale

    return scan


@cache
def output_kernel(P: int, d: int, E1: int, C: int, R: int, TPB: int) -> Any:
    """Steps 1 and 4 fused: grid (BH * n,), TPB threads; thread tid owns the outputs o = tid + k TPB
    (row o // E1 of the chunk, column o % E1, column E1 - 1 being the denominator). Arguments: yq, yk
    [BH, T, d]; v [BH, T, E1 - 1]; g [BH, T]; idx, coef; lam_q, inv_q, from_start [BH, T]; states
    [BH, n, D, E1] (entering each chunk) with entering_scale [BH, n]; eps; normalize; y [BH, T, E1 - 1]."""
    _, of_row, log_magnitude = _features(P)
    e = E1 - 1
    odd = P % 2 == 1
    K = -(-C * E1 // TPB)

    def output(yq, yk, v, g, idx, coef, lam_q, inv_q, from_start, states, entering_scale, eps, normalize, y):
        n = states.shape[1]
        T = yq.shape[1]
        D = idx.shape[0]
        bh = cuda.blockIdx.x // n
        ch = cuda.blockIdx.x % n
        tid = cuda.threadIdx.x
        t0 = ch * C
        cn = min(C, T - t0)
        weight = cuda.shared.array((C, C), float32)
        negative = cuda.shared.array((C, C), int8)
        fq = cuda.shared.array((C, R), float32)
        row_max = cuda.shared.array(C, float32)
        den = cuda.shared.array(C, float32)
        inter = cuda.local.array(K, float32)
        intra = cuda.local.array(K, float32)

        # 1. intra-chunk scores in log space: P log|s_ij| + sum_{l=j+1..i} g_l, summed directly
        for o in range(tid, cn * cn, TPB):
            i = o // cn
            j = o % cn
            if j > i:
                weight[i, j] = NEG_INF
                continue
            s = dot(yq, yk, bh, t0 + i, t0 + j, d)
            segment = ZERO
            for l in range(j + 1, i + 1):
                segment += g[bh, t0 + l]
            weight[i, j] = segment + log_magnitude(math.log(abs(s))) if s != ZERO else NEG_INF
            negative[i, j] = 1 if odd and s < ZERO else 0
        cuda.syncthreads()
        for i in range(tid, cn, TPB):
            best = NEG_INF
            for j in range(i + 1):
                best = max(best, weight[i, j])
            row_max[i] = best
        cuda.syncthreads()
        for o in range(tid, cn * cn, TPB):
            i = o // cn
            j = o % cn
            w = math.exp(weight[i, j] - finite_or_zero(row_max[i])) if j <= i else ZERO
            weight[i, j] = -w if negative[i, j] == 1 else w
        for k in range(K):
            inter[k] = ZERO
            intra[k] = ZERO
        cuda.syncthreads()

        # 4. the state entering the chunk, queried by f_i generated a tile of R features at a time
        entering = entering_scale[bh, ch]
        if math.isfinite(entering):  # uniform over the block: the syncthreads inside are safe
            for r0 in range(0, D, R):
                for o in range(tid, cn * R, TPB):
                    i = o // R
                    r = r0 + o % R
                    fq[i, o % R] = of_row(yq, bh, t0 + i, inv_q[bh, t0 + i], idx, coef, r) if r < D else ZERO
                cuda.syncthreads()
                width = min(R, D - r0)
                for k in range(K):
                    o = tid + k * TPB
                    if o < cn * E1:
                        i = o // E1
                        c = o % E1
                        acc = ZERO
                        for rr in range(width):
                            acc += fq[i, rr] * states[bh, ch, r0 + rr, c]
                        inter[k] += acc
                cuda.syncthreads()

        # 1 (cont.) and merge: exp(m_intra) intra + exp(m_inter) inter, by their maximum
        for k in range(K):
            o = tid + k * TPB
            if o < cn * E1:
                i = o // E1
                c = o % E1
                acc = ZERO
                for j in range(i + 1):
                    value = v[bh, t0 + j, c] if c < e else ONE
                    acc += weight[i, j] * value
                m_intra = row_max[i]
                m_inter = lam_q[bh, t0 + i] + from_start[bh, t0 + i] + entering
                ref = finite_or_zero(max(m_intra, m_inter))
                total = math.exp(m_intra - ref) * acc + math.exp(m_inter - ref) * inter[k]
                if c == e:
                    den[i] = total
                inter[k] = total
                intra[k] = ref
        cuda.syncthreads()
        for k in range(K):
            o = tid + k * TPB
            if o < cn * E1:
                i = o // E1
                c = o % E1
                if c < e:
                    y[bh, t0 + i, c] = finish(inter[k], den[i], intra[k], eps, normalize)

    return output


def compile_ptx(
    P: int, d: int, e: int, C: int, R: int = 16, TPB: int = 128, cc: tuple[int, int] = (8, 0)
) -> dict[str, str]:
    """PTX of every kernel for one configuration: {name: ptx}. Needs libNVVM, not a GPU.

    numba-cuda compiles a called device function for the current device's compute capability even
    inside ``cuda.compile_ptx``, which therefore fails without a driver; the device lookup is pointed
    at ``cc`` for the duration (the device functions' cached overloads then target ``cc``, so call this
    in a process that launches nothing).
    """
    from numba import boolean, int32, int64
    from numba.cuda import dispatcher

    E1 = e + 1
    a1 = float32[::1]
    a2 = float32[:, ::1]
    a3 = float32[:, :, ::1]
    a4 = float32[:, :, :, ::1]
    table = (int32[:, ::1], float32[::1])
    signatures = {
        "recurrent": (recurrent_kernel(P, d, E1, 2), (a3, a3, a3, a2, *table, a3, a1, a3, float32, boolean)),
        "token_stats": (token_stats_kernel(P, d), (a3, a3, a2, int64, a2, a2, a2, a2, a2, a2, a2, a2)),
        "chunk_states": (chunk_states_kernel(P, d, E1, C, R, TPB), (a3, a3, *table, a2, a2, a2, a2, a4)),
        "scan": (scan_kernel(), (a3, a2, a2, a2, a1, a2, a1)),
        "output": (
            output_kernel(P, d, E1, C, R, TPB),
            (a3, a3, a3, a2, *table, a2, a2, a2, a4, a2, float32, boolean, a3),
        ),
    }

    class _Target:
        compute_capability = cc

    lookup = getattr(dispatcher, "get_current_device", None)
    if lookup is not None:
        dispatcher.get_current_device = _Target
    try:
        return {name: cuda.compile_ptx(fn, sig, cc=cc)[0] for name, (fn, sig) in signatures.items()}
    finally:
        if lookup is not None:
            dispatcher.get_current_device = lookup
