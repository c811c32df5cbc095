"""The fused Triton forward kernel: every level of one tile in one program, output written once.

Per tile: (A) bottom-up, pool level l's rows into level l+1's rows (sums, in scratch);
(B) top-down, level L..2 attention on the pooled means, each level storing
Z_l[j] = GELU(Y_l[j]) + Z_{l+1}[j // p] in scratch; then level 1 on the raw frames adds Z_2 of
each frame's parent and writes out[t] = sum over levels of GELU(Y_l[t // S_l]).
With LEVEL1_FIRST, level 1 runs inside (A) instead, chunk by chunk right after the chunk's
frames were pooled (so its gathers hit L1 rather than re-reading the tile from DRAM after the
pooled levels; measured 2.4x the needed DRAM bytes without it), keeps GELU(Y_1) in scratch, and
a last pass writes out = GELU(Y_1) + Z_2[t // p].
Work is in row layout: chunks of BR consecutive rows of a level, window partners gathered.
"""
import triton
import triton.language as tl

from .triton_fractal_common import (_attend_rows, _gelu, _load_rows,
                                    _pool_pyramid, _pool_rows, _row_counts, _store_rows,
                                    _tile_coords)

FWD_REGIONS = tl.constexpr(4)  # scratch regions: pooled q, k, v sums and the top-down sum Z
# (LEVEL1_FIRST adds one region of p**levels rows: GELU(Y_1) of every frame)


@triton.jit
def _fwd_level(scr_q, scr_k, scr_v, scr_z, n_t, D, scale, S, RB, RB_UP, n_parent,
               DS: tl.constexpr, P_WIN: tl.constexpr, BR: tl.constexpr, BD: tl.constexpr,
               GELU_TANH: tl.constexpr):
    """Attention of a pooled level (pooling size S, first scratch row RB) storing
    Z = GELU(Y) + Z[parent] (parent rows from RB_UP; none where n_parent is 0)."""
    for r0 in range(0, tl.cdiv(n_t, S), BR):
        rows = r0 + tl.arange(0, BR)
        count = _row_counts(rows, n_t, S)
        ok = count > 0
        q = _load_rows(scr_q + RB * DS, rows, DS, 1, ok, D, BD)
        q = q * (1.0 / tl.maximum(count, 1).to(tl.float32))[:, None]
        y, m, l = _attend_rows(q, scr_k + RB * DS, DS, 1, scr_v + RB * DS, DS, 1, rows, n_t, S,
                               scale, D, True, P_WIN, BR, BD)
        parent = rows // P_WIN
        z = _gelu(y, GELU_TANH) + _load_rows(scr_z + RB_UP * DS, parent, DS, 1,
                                  parent * (S * P_WIN) < n_parent, D, BD)
        _store_rows(scr_z + RB * DS, rows, DS, 1, z, ok, D, BD)


@triton.jit
def _pool_and_level1(q_base, sqt, sqd, k_base, skt, skd, v_base, svt, svd, scr_q, scr_k, scr_v,
                     scr_g, n_t, D, scale, DS: tl.constexpr, P_WIN: tl.constexpr,
                     BR: tl.constexpr, BD: tl.constexpr, GELU_TANH: tl.constexpr):
    """Level 2's sums of BR rows (frames r*p .. r*p + p - 1), then level 1's attention on those
    BR * p frames (p chunks of BR rows; every window lies inside, so its gathers hit the rows
    just loaded), GELU(Y_1) stored in scratch rows of frames below n_t."""
    for r0 in range(0, tl.cdiv(n_t, P_WIN), BR):
        r = r0 + tl.arange(0, BR)
        sum_q = tl.zeros([BR, BD], tl.float32)
        sum_k = tl.zeros([BR, BD], tl.float32)
        sum_v = tl.zeros([BR, BD], tl.float32)
        for i in tl.static_range(P_WIN):
            frames = r * P_WIN + i
            ok = frames < n_t
            sum_q += _load_rows(q_base, frames, sqt, sqd, ok, D, BD)
            sum_k += _load_rows(k_base, frames, skt, skd, ok, D, BD)
            sum_v += _load_rows(v_base, frames, svt, svd, ok, D, BD)
        row_ok = r * P_WIN < n_t
        _store_rows(scr_q, r, DS, 1, sum_q, row_ok, D, BD)
        _store_rows(scr_k, r, DS, 1, sum_k, row_ok, D, BD)
        _store_rows(scr_v, r, DS, 1, sum_v, row_ok, D, BD)
        for i in tl.static_range(P_WIN):
            rows = r0 * P_WIN + i * BR + tl.arange(0, BR)
            ok = rows < n_t
            q = _load_rows(q_base, rows, sqt, sqd, ok, D, BD)
            y, m, l = _attend_rows(q, k_base, skt, skd, v_base, svt, svd, rows, n_t, 1, scale,
                                   D, False, P_WIN, BR, BD)
            _store_rows(scr_g, rows, DS, 1, _gelu(y, GELU_TANH), ok, D, BD)


@triton.jit
def fractal_fwd_kernel(
        q_ptr, k_ptr, v_ptr, out_ptr, lengths_ptr, scratch_ptr,
        sqb, sqh, sqt, sqd, skb, skh, skt, skd, svb, svh, svt, svd, sob, soh, sot, sod,
        H, T, D, n_tiles, total_tiles, scale,
        HAS_LENGTHS: tl.constexpr, P_WIN: tl.constexpr, LEVELS: tl.constexpr,
        TILE: tl.constexpr, N_ROWS: tl.constexpr, DS: tl.constexpr,
        PROGRAM_STRIDE: tl.constexpr, BR: tl.constexpr, BR_LEVEL: tl.constexpr,
        BR_POOL: tl.constexpr, BD: tl.constexpr, LEVEL1_FIRST: tl.constexpr,
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
    scr_z = scr_v + region
    scr_g = scr_z + region  # GELU(Y_1), with LEVEL1_FIRST only

    for tile_id in range(pid, total_tiles, tl.num_programs(0)):
        b, h, t0, n_t, n_frames = _tile_coords(tile_id, H, n_tiles, T, lengths_ptr,
                                                HAS_LENGTHS, TILE, VARLEN)
        q_base = q_ptr + b * sqb + h * sqh + t0.to(tl.int64) * sqt
        k_base = k_ptr + b * skb + h * skh + t0.to(tl.int64) * skt
        v_base = v_ptr + b * svb + h * svh + t0.to(tl.int64) * svt

        if LEVELS > 1:
            # (A) bottom-up pooling: raw frames -> level 2 sums -> ... -> level L sums.
            if LEVEL1_FIRST:
                _pool_and_level1(q_base, sqt, sqd, k_base, skt, skd, v_base, svt, svd, scr_q,
                                 scr_k, scr_v, scr_g, n_t, D, scale, DS, P_WIN, BR, BD, GELU_TANH)
            else:
                _pool_rows(q_base, sqt, sqd, scr_q, DS, n_t, 1, D, P_WIN, BR_POOL, BD)
                _pool_rows(k_base, skt, skd, scr_k, DS, n_t, 1, D, P_WIN, BR_POOL, BD)
                _pool_rows(v_base, svt, svd, scr_v, DS, n_t, 1, D, P_WIN, BR_POOL, BD)
            tl.debug_barrier()
            # S: pooling size of the level, RB: its first scratch row (the top level's here).
            S, RB = _pool_pyramid(scr_q, region, 3, n_t, D, TILE, DS, P_WIN, LEVELS, BR_POOL, BD)
            # (B) top-down attention on pooled levels L..2, accumulating Z in scratch.
            for step in range(LEVELS - 1):
                n_parent = tl.where(step > 0, n_t, 0)  # the top level has no parent
                _fwd_level(scr_q, scr_k, scr_v, scr_z, n_t, D, scale, S, RB, RB + TILE // S,
                           n_parent, DS, P_WIN, BR_LEVEL, BD, GELU_TANH)
                tl.debug_barrier()
                S = S // P_WIN
                RB -= TILE // S

        # Level 1 on the raw frames (or, after LEVEL1_FIRST, its GELU from scratch); writes
        # every frame of the tile below T once (0 for padding).
        o_base = out_ptr + b * sob + h * soh + t0.to(tl.int64) * sot
        for r0 in range(0, n_frames, BR):
            rows = r0 + tl.arange(0, BR)
            ok = rows < n_t
            if LEVEL1_FIRST and LEVELS > 1:
                z = _load_rows(scr_g, rows, DS, 1, ok, D, BD)
            else:
                q = _load_rows(q_base, rows, sqt, sqd, ok, D, BD)
                y, m, l = _attend_rows(q, k_base, skt, skd, v_base, svt, svd, rows, n_t, 1,
                                       scale, D, False, P_WIN, BR, BD)
                z = _gelu(y, GELU_TANH)
            if LEVELS > 1:
                parent = rows // P_WIN
                z += _load_rows(scr_z, parent, DS, 1, ok, D, BD)
            _store_rows(o_base, rows, sot, sod, tl.where(ok[:, None], z, 0.0), rows < n_frames,
                        D, BD)
        tl.debug_barrier()  # the next tile reuses this program's scratch
