"""The fused Triton backward kernel: recomputes each tile's forward from q, k, v and writes
dq, dk, dv once per frame, without atomics (deterministic).

Per tile: (A) bottom-up, pool q, k, v and dout into every level's rows (sums, in scratch);
(B) top-down, level L..2: recompute the window attention on the pooled means, take
dY = dG * GELU'(Y) with dG the sum of dout over the row's frames, run the window softmax
backward, turn the gradients of the pooled means into per-frame shares (divide by the counts)
and store A_l[j] = share_l[j] + A_{l+1}[j // p]; then level 1 on the raw frames adds A_2 of each
frame's parent and writes dq, dk, dv.
"""
import triton
import triton.language as tl

from .triton_fractal_common import (_gelu_grad, _level_rows, _load_chunk, _load_parent,
                                    _store_chunk, _load_key, _pool_rows, _tile_coords,
                                    _window_softmax)

BWD_REGIONS = tl.constexpr(7)  # scratch regions: pooled q, k, v, dout sums; top-down sums of dq, dk, dv


@triton.jit
def _window_softmax_bwd(q3, g3, k_base, k_rs, k_cs, v_base, v_rs, v_cs, w, n_t, S, scale, D,
                        POOLED: tl.constexpr, P_WIN: tl.constexpr, BW: tl.constexpr,
                        BP: tl.constexpr, BD: tl.constexpr):
    """Gradients of the query, key and value rows (means when POOLED; dq, dk, dv, each
    [BW, BP, BD]) of one level's windows, given dG = g3, the gradient of GELU(Y) (0 on rows
    without valid frames). Keys and values are read row by row as in _window_softmax."""
    y, m, l = _window_softmax(q3, k_base, k_rs, k_cs, v_base, v_rs, v_cs, w, n_t, S, scale, D,
                              POOLED, P_WIN, BW, BP, BD)
    inv_l = 1.0 / tl.where(l > 0, l, 1.0)
    dy = g3 * _gelu_grad(y)
    delta = tl.sum(dy * y, axis=2)  # sum_i P_ji dP_ji = <dY_j, Y_j>
    sel = tl.arange(0, BP)[None, :, None]
    dq = tl.zeros([BW, BP, BD], tl.float32)
    dk = tl.zeros([BW, BP, BD], tl.float32)
    dv = tl.zeros([BW, BP, BD], tl.float32)
    for i in tl.static_range(P_WIN):
        k_i, key_ok = _load_key(k_base, w, i, k_rs, k_cs, n_t, S, D, POOLED, P_WIN, BP, BD)
        v_i, _ = _load_key(v_base, w, i, v_rs, v_cs, n_t, S, D, POOLED, P_WIN, BP, BD)
        s = tl.sum(q3 * k_i, axis=2) * scale
        s = tl.where(key_ok[:, None], s, float("-inf"))
        prob = tl.exp(s - m) * inv_l  # [BW, BP]: weight of key i for each query of the window
        dprob = tl.sum(dy * v_i, axis=2)
        ds = prob * (dprob - delta) * scale
        dq += ds[:, :, None] * k_i
        # Key i's gradients sum over the window's queries (a reduction across lanes).
        dk = tl.where(sel == i, tl.sum(ds[:, :, None] * q3, axis=1)[:, None, :], dk)
        dv = tl.where(sel == i, tl.sum(prob[:, :, None] * dy, axis=1)[:, None, :], dv)
    return dq, dk, dv


@triton.jit
def _bwd_level(scr_q, scr_k, scr_v, scr_g, scr_aq, scr_ak, scr_av, n_t, D, scale,
               S, RB, RB_UP, n_parent, P_WIN: tl.constexpr, BW: tl.constexpr, BP: tl.constexpr, BD: tl.constexpr):
    """Gradients of a pooled level (pooling size S, first scratch row RB) as per-frame shares,
    plus the levels above: stores A = share + A[parent] for q, k and v (parent rows from RB_UP;
    none where n_parent is 0)."""
    for w0 in range(0, tl.cdiv(n_t, S * P_WIN), BW):
        w, rows, count = _level_rows(w0, n_t, S, P_WIN, BW, BP)
        inv = (1.0 / tl.maximum(count, 1).to(tl.float32))[:, :, None]
        q3 = _load_chunk(scr_q + RB * D, rows, D, 1, count, D, BD) * inv
        g3 = _load_chunk(scr_g + RB * D, rows, D, 1, count, D, BD)
        dq, dk, dv = _window_softmax_bwd(q3, g3, scr_k + RB * D, D, 1, scr_v + RB * D, D, 1,
                                         w, n_t, S, scale, D, True, P_WIN, BW, BP, BD)
        # d(mean)/d(frame) = 1 / count: each frame's share of the row's gradient.
        dq *= inv
        dk *= inv
        dv *= inv
        dq += _load_parent(scr_aq + RB_UP * D, w, n_parent, S * P_WIN, D, BD)[:, None, :]
        dk += _load_parent(scr_ak + RB_UP * D, w, n_parent, S * P_WIN, D, BD)[:, None, :]
        dv += _load_parent(scr_av + RB_UP * D, w, n_parent, S * P_WIN, D, BD)[:, None, :]
        _store_chunk(scr_aq + RB * D, rows, D, 1, dq, count > 0, D, BD)
        _store_chunk(scr_ak + RB * D, rows, D, 1, dk, count > 0, D, BD)
        _store_chunk(scr_av + RB * D, rows, D, 1, dv, count > 0, D, BD)


@triton.jit
def fractal_bwd_kernel(
        do_ptr, q_ptr, k_ptr, v_ptr, dq_ptr, dk_ptr, dv_ptr, lengths_ptr, scratch_ptr,
        sgb, sgh, sgt, sgd, sqb, sqh, sqt, sqd, skb, skh, skt, skd, svb, svh, svt, svd,
        sob, soh, sot, sod,  # dq, dk, dv share one layout (B, T, H, D)
        H, T, D, n_tiles, total_tiles, scale,
        HAS_LENGTHS: tl.constexpr, P_WIN: tl.constexpr, LEVELS: tl.constexpr,
        TILE: tl.constexpr, N_ROWS: tl.constexpr,
        BW: tl.constexpr, BR_POOL: tl.constexpr, BP: tl.constexpr, BD: tl.constexpr):
    pid = tl.program_id(0)
    region = N_ROWS * D
    scr_q = scratch_ptr + pid.to(tl.int64) * (BWD_REGIONS * region)
    scr_k = scr_q + region
    scr_v = scr_k + region
    scr_g = scr_v + region
    scr_aq = scr_g + region
    scr_ak = scr_aq + region
    scr_av = scr_ak + region

    for tile_id in range(pid, total_tiles, tl.num_programs(0)):
        b, h, t0, n_t = _tile_coords(tile_id, H, n_tiles, T, lengths_ptr, HAS_LENGTHS, TILE)
        g_base = do_ptr + b * sgb + h * sgh + t0.to(tl.int64) * sgt
        q_base = q_ptr + b * sqb + h * sqh + t0.to(tl.int64) * sqt
        k_base = k_ptr + b * skb + h * skh + t0.to(tl.int64) * skt
        v_base = v_ptr + b * svb + h * svh + t0.to(tl.int64) * svt

        # (A) bottom-up pooling of q, k, v and dout.
        if LEVELS > 1:
            _pool_rows(q_base, sqt, sqd, scr_q, n_t, 1, D, P_WIN, BR_POOL, BD)
            _pool_rows(k_base, skt, skd, scr_k, n_t, 1, D, P_WIN, BR_POOL, BD)
            _pool_rows(v_base, svt, svd, scr_v, n_t, 1, D, P_WIN, BR_POOL, BD)
            _pool_rows(g_base, sgt, sgd, scr_g, n_t, 1, D, P_WIN, BR_POOL, BD)
            tl.debug_barrier()
            # Runtime loops over levels (not unrolled), as in the forward kernel.
            S = tl.full([], P_WIN, tl.int32)
            RB = tl.full([], 0, tl.int32)
            for _ in range(LEVELS - 2):
                R = TILE // S
                _pool_rows(scr_q + RB * D, D, 1, scr_q + (RB + R) * D, n_t, S, D, P_WIN,
                           BR_POOL, BD)
                _pool_rows(scr_k + RB * D, D, 1, scr_k + (RB + R) * D, n_t, S, D, P_WIN,
                           BR_POOL, BD)
                _pool_rows(scr_v + RB * D, D, 1, scr_v + (RB + R) * D, n_t, S, D, P_WIN,
                           BR_POOL, BD)
                _pool_rows(scr_g + RB * D, D, 1, scr_g + (RB + R) * D, n_t, S, D, P_WIN,
                           BR_POOL, BD)
                tl.debug_barrier()
                RB += R
                S *= P_WIN
            # (B) top-down: each pooled level's gradients, accumulated per row in scratch.
            for step in range(LEVELS - 1):
                n_parent = tl.where(step > 0, n_t, 0)  # the top level has no parent
                _bwd_level(scr_q, scr_k, scr_v, scr_g, scr_aq, scr_ak, scr_av, n_t, D, scale,
                           S, RB, RB + TILE // S, n_parent, P_WIN, BW, BP, BD)
                tl.debug_barrier()
                S = S // P_WIN
                RB -= TILE // S

        # Level 1 on the raw frames; writes every frame of the tile below T once (0 for padding).
        dq_base = dq_ptr + b * sob + h * soh + t0.to(tl.int64) * sot
        dk_base = dk_ptr + b * sob + h * soh + t0.to(tl.int64) * sot
        dv_base = dv_ptr + b * sob + h * soh + t0.to(tl.int64) * sot
        n_frames = tl.minimum(T - t0, TILE)
        for w0 in range(0, tl.cdiv(n_frames, P_WIN), BW):
            w, rows, count = _level_rows(w0, n_t, 1, P_WIN, BW, BP)
            q3 = _load_chunk(q_base, rows, sqt, sqd, count, D, BD)
            g3 = _load_chunk(g_base, rows, sgt, sgd, count, D, BD)
            dq, dk, dv = _window_softmax_bwd(q3, g3, k_base, skt, skd, v_base, svt, svd, w, n_t,
                                             1, scale, D, False, P_WIN, BW, BP, BD)
            if LEVELS > 1:
                dq += _load_parent(scr_aq, w, n_t, P_WIN, D, BD)[:, None, :]
                dk += _load_parent(scr_ak, w, n_t, P_WIN, D, BD)[:, None, :]
                dv += _load_parent(scr_av, w, n_t, P_WIN, D, BD)[:, None, :]
            valid = count[:, :, None] > 0
            in_seq = (tl.arange(0, BP)[None, :] < P_WIN) & (rows < n_frames)
            _store_chunk(dq_base, rows, sot, sod, tl.where(valid, dq, 0.0), in_seq, D, BD)
            _store_chunk(dk_base, rows, sot, sod, tl.where(valid, dk, 0.0), in_seq, D, BD)
            _store_chunk(dv_base, rows, sot, sod, tl.where(valid, dv, 0.0), in_seq, D, BD)
        tl.debug_barrier()  # the next tile reuses this program's scratch
