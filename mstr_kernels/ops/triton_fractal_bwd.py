"""The fused Triton backward kernel: recomputes each tile's forward from q, k, v and writes
dq, dk, dv once per frame, without atomics (deterministic).

Per tile: (A) bottom-up, pool q, k, v and dout into every level's rows (sums, in scratch);
(B) top-down, level L..2, then level 1 on the raw frames, each in two passes over the level's
rows (row layout, window partners gathered by index):
  query pass: recompute the window attention, dY = dG * GELU'(Y) (dG: the sum of dout over
    the row's frames), the softmax backward for the row as a query -> dq; it leaves dY and the
    softmax statistics (m, 1/l, <dY, Y>) in scratch;
  key pass: each row as a key/value of its window's queries (their dY and statistics read
    back) -> dk, dv.
Gradients of pooled means become per-frame shares (divided by the counts) and accumulate
top-down: A_l[j] = share_l[j] + A_{l+1}[j // p]; level 1 adds A_2 and writes dq, dk, dv.
"""
import triton
import triton.language as tl

from .triton_fractal_common import (_attend_rows, _gelu_grad, _load_rows,
                                    _pool_pyramid, _pool_rows, _row_counts, _store_rows,
                                    _tile_coords)

BWD_REGIONS = tl.constexpr(7)  # pooled q, k, v, dout sums; top-down sums of dq, dk, dv


@triton.jit
def _query_pass(q_src, q_rs, q_cs, k_src, k_rs, k_cs, v_src, v_rs, v_cs, g_src, g_rs, g_cs,
                dst, dst_rs, dst_cs, parent, n_parent, scr_dy, scr_stats, n_rows, n_t, S, D,
                scale, POOLED: tl.constexpr, TILE: tl.constexpr, DS: tl.constexpr,
                P_WIN: tl.constexpr, BR: tl.constexpr, BD: tl.constexpr,
                GELU_TANH: tl.constexpr):
    """dq of rows [0, n_rows) of one level (as frame shares, plus the parent's), stored at dst
    (0 on rows without valid frames); dY and the softmax statistics go to scratch."""
    for r0 in range(0, n_rows, BR):
        rows = r0 + tl.arange(0, BR)
        count = _row_counts(rows, n_t, S)
        ok = count > 0
        inv_count = (1.0 / tl.maximum(count, 1).to(tl.float32))[:, None]
        q = _load_rows(q_src, rows, q_rs, q_cs, ok, D, BD)
        if POOLED:
            q = q * inv_count
        g = _load_rows(g_src, rows, g_rs, g_cs, ok, D, BD)
        y, m, l = _attend_rows(q, k_src, k_rs, k_cs, v_src, v_rs, v_cs, rows, n_t, S, scale, D,
                               POOLED, P_WIN, BR, BD)
        inv_l = 1.0 / tl.where(l > 0, l, 1.0)
        dy = g * _gelu_grad(y, GELU_TANH)  # 0 on rows without valid frames (g is)
        delta = tl.sum(dy * y, axis=1)  # sum_i P_i dP_i = <dY, Y>
        first = (rows // P_WIN) * P_WIN
        dq = tl.zeros([BR, BD], tl.float32)
        for i in tl.static_range(P_WIN):
            key_rows = first + i
            key_count = _row_counts(key_rows, n_t, S)
            key_ok = key_count > 0
            k = _load_rows(k_src, key_rows, k_rs, k_cs, key_ok, D, BD)
            v = _load_rows(v_src, key_rows, v_rs, v_cs, key_ok, D, BD)
            if POOLED:
                inv = (1.0 / tl.maximum(key_count, 1).to(tl.float32))[:, None]
                k = k * inv
                v = v * inv
            s = tl.where(key_ok, tl.sum(q * k, axis=1) * scale, float("-inf"))
            prob = tl.exp(s - m) * inv_l
            ds = prob * (tl.sum(dy * v, axis=1) - delta) * scale
            dq += ds[:, None] * k
        _store_rows(scr_dy, rows, DS, 1, dy, ok, D, BD)
        tl.store(scr_stats + rows, m, mask=ok)
        tl.store(scr_stats + TILE + rows, inv_l, mask=ok)
        tl.store(scr_stats + 2 * TILE + rows, delta, mask=ok)
        if POOLED:
            dq = dq * inv_count
        dq += _load_rows(parent, rows // P_WIN, DS, 1, (rows // P_WIN) * (S * P_WIN) < n_parent,
                         D, BD)
        _store_rows(dst, rows, dst_rs, dst_cs, tl.where(ok[:, None], dq, 0.0), rows < n_rows,
                    D, BD)


@triton.jit
def _key_pass(q_src, q_rs, q_cs, k_src, k_rs, k_cs, v_src, v_rs, v_cs, dk_dst, dv_dst,
              dst_rs, dst_cs, parent_k, parent_v, n_parent, scr_dy, scr_stats, n_rows, n_t, S,
              D, scale, POOLED: tl.constexpr, TILE: tl.constexpr, DS: tl.constexpr,
              P_WIN: tl.constexpr, BR: tl.constexpr, BD: tl.constexpr):
    """dk, dv of rows [0, n_rows) of one level: each row as the key and value of its window's
    queries, whose dY and softmax statistics the query pass left in scratch."""
    for r0 in range(0, n_rows, BR):
        rows = r0 + tl.arange(0, BR)
        count = _row_counts(rows, n_t, S)
        ok = count > 0
        inv_count = (1.0 / tl.maximum(count, 1).to(tl.float32))[:, None]
        k = _load_rows(k_src, rows, k_rs, k_cs, ok, D, BD)
        v = _load_rows(v_src, rows, v_rs, v_cs, ok, D, BD)
        if POOLED:
            k = k * inv_count
            v = v * inv_count
        first = (rows // P_WIN) * P_WIN
        dk = tl.zeros([BR, BD], tl.float32)
        dv = tl.zeros([BR, BD], tl.float32)
        for j in tl.static_range(P_WIN):
            q_rows = first + j
            q_count = _row_counts(q_rows, n_t, S)
            q_ok = (q_count > 0) & ok
            q = _load_rows(q_src, q_rows, q_rs, q_cs, q_ok, D, BD)
            if POOLED:
                q = q * (1.0 / tl.maximum(q_count, 1).to(tl.float32))[:, None]
            dy = _load_rows(scr_dy, q_rows, DS, 1, q_ok, D, BD)
            m = tl.load(scr_stats + q_rows, mask=q_ok, other=0.0)
            inv_l = tl.load(scr_stats + TILE + q_rows, mask=q_ok, other=0.0)
            delta = tl.load(scr_stats + 2 * TILE + q_rows, mask=q_ok, other=0.0)
            s = tl.sum(q * k, axis=1) * scale
            prob = tl.where(q_ok, tl.exp(s - m) * inv_l, 0.0)
            ds = prob * (tl.sum(dy * v, axis=1) - delta) * scale
            dk += ds[:, None] * q
            dv += prob[:, None] * dy
        if POOLED:
            dk = dk * inv_count
            dv = dv * inv_count
        parent_ok = (rows // P_WIN) * (S * P_WIN) < n_parent
        dk += _load_rows(parent_k, rows // P_WIN, DS, 1, parent_ok, D, BD)
        dv += _load_rows(parent_v, rows // P_WIN, DS, 1, parent_ok, D, BD)
        _store_rows(dk_dst, rows, dst_rs, dst_cs, tl.where(ok[:, None], dk, 0.0),
                    rows < n_rows, D, BD)
        _store_rows(dv_dst, rows, dst_rs, dst_cs, tl.where(ok[:, None], dv, 0.0),
                    rows < n_rows, D, BD)


@triton.jit
def fractal_bwd_kernel(
        do_ptr, q_ptr, k_ptr, v_ptr, dq_ptr, dk_ptr, dv_ptr, lengths_ptr, scratch_ptr,
        sgb, sgh, sgt, sgd, sqb, sqh, sqt, sqd, skb, skh, skt, skd, svb, svh, svt, svd,
        sob, soh, sot, sod,  # dq, dk, dv share one layout (B, T, H, D)
        H, T, D, n_tiles, total_tiles, scale,
        HAS_LENGTHS: tl.constexpr, P_WIN: tl.constexpr, LEVELS: tl.constexpr,
        TILE: tl.constexpr, N_ROWS: tl.constexpr, DS: tl.constexpr,
        PROGRAM_STRIDE: tl.constexpr, BR: tl.constexpr, BR_LEVEL: tl.constexpr,
        BR_POOL: tl.constexpr, BD: tl.constexpr,
        VARLEN: tl.constexpr = False):
    # GELU takes its tanh form for bfloat16 only, whose own rounding (2**-9) exceeds that form's
    # error; float16's gradients would not stay within SPEC section 1. Formed here, not in a
    # helper: Triton 3.6 (torch 2.11) returns a helper's value as a tensor, which `if` cannot
    # branch on.
    GELU_TANH: tl.constexpr = q_ptr.dtype.element_ty.is_bf16()
    pid = tl.program_id(0)
    region = N_ROWS * DS
    scr_q = scratch_ptr + pid.to(tl.int64) * PROGRAM_STRIDE
    scr_k = scr_q + region
    scr_v = scr_k + region
    scr_g = scr_v + region
    scr_aq = scr_g + region
    scr_ak = scr_aq + region
    scr_av = scr_ak + region
    scr_dy = scr_av + region  # TILE rows: dY of the level in progress
    scr_stats = scr_dy + TILE * DS  # 3 x TILE: m, 1/l, <dY, Y> of the level in progress

    for tile_id in range(pid, total_tiles, tl.num_programs(0)):
        b, h, t0, n_t, n_frames = _tile_coords(tile_id, H, n_tiles, T, lengths_ptr,
                                                HAS_LENGTHS, TILE, VARLEN)
        g_base = do_ptr + b * sgb + h * sgh + t0.to(tl.int64) * sgt
        q_base = q_ptr + b * sqb + h * sqh + t0.to(tl.int64) * sqt
        k_base = k_ptr + b * skb + h * skh + t0.to(tl.int64) * skt
        v_base = v_ptr + b * svb + h * svh + t0.to(tl.int64) * svt

        if LEVELS > 1:
            # (A) bottom-up pooling of q, k, v and dout.
            _pool_rows(q_base, sqt, sqd, scr_q, DS, n_t, 1, D, P_WIN, BR_POOL, BD)
            _pool_rows(k_base, skt, skd, scr_k, DS, n_t, 1, D, P_WIN, BR_POOL, BD)
            _pool_rows(v_base, svt, svd, scr_v, DS, n_t, 1, D, P_WIN, BR_POOL, BD)
            _pool_rows(g_base, sgt, sgd, scr_g, DS, n_t, 1, D, P_WIN, BR_POOL, BD)
            tl.debug_barrier()
            S, RB = _pool_pyramid(scr_q, region, 4, n_t, D, TILE, DS, P_WIN, LEVELS, BR_POOL, BD)
            # (B) top-down over the pooled levels L..2.
            for step in range(LEVELS - 1):
                n_parent = tl.where(step > 0, n_t, 0)  # the top level has no parent
                RB_UP = RB + TILE // S
                n_rows = tl.cdiv(n_t, S)
                _query_pass(scr_q + RB * DS, DS, 1, scr_k + RB * DS, DS, 1, scr_v + RB * DS, DS, 1,
                            scr_g + RB * DS, DS, 1, scr_aq + RB * DS, DS, 1, scr_aq + RB_UP * DS,
                            n_parent, scr_dy, scr_stats, n_rows, n_t, S, D, scale, True, TILE,
                            DS, P_WIN, BR_LEVEL, BD, GELU_TANH)
                tl.debug_barrier()
                _key_pass(scr_q + RB * DS, DS, 1, scr_k + RB * DS, DS, 1, scr_v + RB * DS, DS, 1,
                          scr_ak + RB * DS, scr_av + RB * DS, DS, 1, scr_ak + RB_UP * DS,
                          scr_av + RB_UP * DS, n_parent, scr_dy, scr_stats, n_rows, n_t, S, D,
                          scale, True, TILE, DS, P_WIN, BR_LEVEL, BD)
                tl.debug_barrier()
                S = S // P_WIN
                RB -= TILE // S

        # Level 1 on the raw frames; writes every frame of the tile below T once (0 for padding).
        n_parent = tl.where(LEVELS > 1, n_t, 0)  # levels == 1: no parent
        o_off = b * sob + h * soh + t0.to(tl.int64) * sot
        _query_pass(q_base, sqt, sqd, k_base, skt, skd, v_base, svt, svd, g_base, sgt, sgd,
                    dq_ptr + o_off, sot, sod, scr_aq, n_parent, scr_dy, scr_stats, n_frames,
                    n_t, 1, D, scale, False, TILE, DS, P_WIN, BR, BD, GELU_TANH)
        tl.debug_barrier()
        _key_pass(q_base, sqt, sqd, k_base, skt, skd, v_base, svt, svd, dk_ptr + o_off,
                  dv_ptr + o_off, sot, sod, scr_ak, scr_av, n_parent, scr_dy, scr_stats,
                  n_frames, n_t, 1, D, scale, False, TILE, DS, P_WIN, BR, BD)
        tl.debug_barrier()  # the next tile reuses this program's scratch
