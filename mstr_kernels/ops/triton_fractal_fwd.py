"""The fused Triton forward kernel: every level of one tile in one program, output written once.

Per tile: (A) bottom-up, pool level l's windows into level l+1's rows (sums, in scratch);
(B) top-down, level L..2 attention on the pooled means, each level storing
Z_l[j] = GELU(Y_l[j]) + Z_{l+1}[j // p] in scratch; then level 1 on the raw frames adds Z_2 of
each frame's parent and writes out[t] = sum over levels of GELU(Y_l[t // S_l]).
"""
import triton
import triton.language as tl

from .triton_fractal_common import (_gelu, _level_rows, _load_chunk, _load_parent, _pool_level,
                                    _store_chunk, _store_pooled, _tile_coords, _window_softmax)

FWD_REGIONS = tl.constexpr(4)  # scratch regions: pooled q, k, v sums and the top-down sum Z


@triton.jit
def _fwd_level(scr_q, scr_k, scr_v, scr_z, n_t, D, scale, S, RB, RB_UP, n_parent,
               P_WIN: tl.constexpr, BW: tl.constexpr, BP: tl.constexpr, BD: tl.constexpr):
    """Attention of a pooled level (pooling size S, first scratch row RB) storing
    Z = GELU(Y) + Z[parent] (parent rows from RB_UP; none where n_parent is 0)."""
    for w0 in range(0, tl.cdiv(n_t, S * P_WIN), BW):
        w, rows, count = _level_rows(w0, n_t, S, P_WIN, BW, BP)
        inv = (1.0 / tl.maximum(count, 1).to(tl.float32))[:, :, None]
        q3 = _load_chunk(scr_q + RB * D, rows, D, 1, count, D, BD) * inv
        y, m, l = _window_softmax(q3, scr_k + RB * D, D, 1, scr_v + RB * D, D, 1, w, n_t, S,
                                  scale, D, True, P_WIN, BW, BP, BD)
        z = tl.where(count[:, :, None] > 0, _gelu(y), 0.0)
        z += _load_parent(scr_z + RB_UP * D, w, n_parent, S * P_WIN, D, BD)[:, None, :]
        _store_chunk(scr_z + RB * D, rows, D, 1, z, count > 0, D, BD)


@triton.jit
def fractal_fwd_kernel(
        q_ptr, k_ptr, v_ptr, out_ptr, lengths_ptr, scratch_ptr,
        sqb, sqh, sqt, sqd, skb, skh, skt, skd, svb, svh, svt, svd, sob, soh, sot, sod,
        H, T, D, n_tiles, total_tiles, scale,
        HAS_LENGTHS: tl.constexpr, P_WIN: tl.constexpr, LEVELS: tl.constexpr,
        TILE: tl.constexpr, N_ROWS: tl.constexpr,
        BW: tl.constexpr, BW_POOL: tl.constexpr, BP: tl.constexpr, BD: tl.constexpr):
    pid = tl.program_id(0)
    region = N_ROWS * D
    scr_q = scratch_ptr + pid.to(tl.int64) * (FWD_REGIONS * region)
    scr_k = scr_q + region
    scr_v = scr_k + region
    scr_z = scr_v + region

    for tile_id in range(pid, total_tiles, tl.num_programs(0)):
        b, h, t0, n_t = _tile_coords(tile_id, H, n_tiles, T, lengths_ptr, HAS_LENGTHS, TILE)
        q_base = q_ptr + b * sqb + h * sqh + t0.to(tl.int64) * sqt
        k_base = k_ptr + b * skb + h * skh + t0.to(tl.int64) * skt
        v_base = v_ptr + b * svb + h * svh + t0.to(tl.int64) * svt

        if LEVELS > 1:
            # (A) bottom-up pooling: raw frames -> level 2 sums -> ... -> level L sums.
            for w0 in range(0, tl.cdiv(n_t, P_WIN), BW_POOL):
                w, rows, count = _level_rows(w0, n_t, 1, P_WIN, BW_POOL, BP)
                _store_pooled(scr_q, w, _load_chunk(q_base, rows, sqt, sqd, count, D, BD),
                              n_t, P_WIN, D, BD)
                _store_pooled(scr_k, w, _load_chunk(k_base, rows, skt, skd, count, D, BD),
                              n_t, P_WIN, D, BD)
                _store_pooled(scr_v, w, _load_chunk(v_base, rows, svt, svd, count, D, BD),
                              n_t, P_WIN, D, BD)
            tl.debug_barrier()
            # Runtime loops over levels (not unrolled): one copy of the level code keeps
            # registers low. S: pooling size of the level, RB: its first scratch row.
            S = tl.full([], P_WIN, tl.int32)
            RB = tl.full([], 0, tl.int32)
            for _ in range(LEVELS - 2):
                R = TILE // S
                _pool_level(scr_q, n_t, D, S, RB, RB + R, P_WIN, BW_POOL, BP, BD)
                _pool_level(scr_k, n_t, D, S, RB, RB + R, P_WIN, BW_POOL, BP, BD)
                _pool_level(scr_v, n_t, D, S, RB, RB + R, P_WIN, BW_POOL, BP, BD)
                tl.debug_barrier()
                RB += R
                S *= P_WIN
            # (B) top-down attention on pooled levels L..2, accumulating Z in scratch.
            for step in range(LEVELS - 1):
                n_parent = tl.where(step > 0, n_t, 0)  # the top level has no parent
                _fwd_level(scr_q, scr_k, scr_v, scr_z, n_t, D, scale, S, RB, RB + TILE // S,
                           n_parent, P_WIN, BW, BP, BD)
                tl.debug_barrier()
                S = S // P_WIN
                RB -= TILE // S

        # Level 1 on the raw frames; writes every frame of the tile below T once (0 for padding).
        o_base = out_ptr + b * sob + h * soh + t0.to(tl.int64) * sot
        n_frames = tl.minimum(T - t0, TILE)
        for w0 in range(0, tl.cdiv(n_frames, P_WIN), BW):
            w, rows, count = _level_rows(w0, n_t, 1, P_WIN, BW, BP)
            q3 = _load_chunk(q_base, rows, sqt, sqd, count, D, BD)
            y, m, l = _window_softmax(q3, k_base, skt, skd, v_base, svt, svd, w, n_t, 1, scale,
                                      D, False, P_WIN, BW, BP, BD)
            z = _gelu(y)
            if LEVELS > 1:
                z += _load_parent(scr_z, w, n_t, P_WIN, D, BD)[:, None, :]
            z = tl.where(count[:, :, None] > 0, z, 0.0)
            in_seq = (tl.arange(0, BP)[None, :] < P_WIN) & (rows < n_frames)
            _store_chunk(o_base, rows, sot, sod, z, in_seq, D, BD)
        tl.debug_barrier()  # the next tile reuses this program's scratch
