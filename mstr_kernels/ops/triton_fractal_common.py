"""Triton device functions shared by the fused forward and backward kernels.

Layout of the work (see benchmarks/NOTES.md, "Triton backend"): a program owns one (batch,
head, tile of p**levels frames) at a time. At level l (pooling size S = p**(l-1)) the tile has
TILE // S pooled rows; windows are groups of p consecutive rows. A chunk is BR consecutive rows
of a level held as a [BR, BD] register tensor (BD = next power of two >= D, masked); a row's
window partners (rows (r // p) * p + i) are gathered by index, so windows of 3 need no padding
to 4. Level l+1's row r is the sum of level l's rows r*p .. r*p+p-1; per-program scratch rows
(global memory, hot in L2) carry these sums from level to level. Sums and valid-frame counts
(not means) travel, so tail groups stay exact.
"""
import triton
import triton.language as tl

INV_SQRT2 = tl.constexpr(0.7071067811865476)
INV_SQRT_2PI = tl.constexpr(0.3989422804014327)
# GELU, tanh form: x * sigmoid(2u), u = sqrt(2/pi) * (x + 0.044715 x^3), evaluated as
# x / (1 + 2^(x * (TANH_A + TANH_B x^2))). Its error against the erf form (below 5e-4 absolute,
# 9e-4 in the derivative, 2.5e-4 of the derivative's norm) is below bfloat16's own rounding but
# not float16's, whose gradients it takes past SPEC's bound, nor float32's: bfloat16 only, an
# exp2 and a division instead of erf's polynomial.
TANH_A = tl.constexpr(-2.0 * 0.7978845608028654 * 1.4426950408889634)
TANH_B = tl.constexpr(-2.0 * 0.7978845608028654 * 1.4426950408889634 * 0.044715)
TANH_DU = tl.constexpr(3.0 * 0.044715)
SQRT_2_OVER_PI = tl.constexpr(0.7978845608028654)


@triton.jit
def _gelu(x, TANH: tl.constexpr):
    if TANH:
        return x / (1.0 + tl.exp2(x * (TANH_A + TANH_B * x * x)))
    else:
        return 0.5 * x * (1.0 + tl.math.erf(x * INV_SQRT2))


@triton.jit
def _gelu_grad(x, TANH: tl.constexpr):
    if TANH:
        # Beyond |x| = 10 the derivative is 0 or 1 in float32; the clamp keeps 0 * inf out.
        x = tl.minimum(tl.maximum(x, -10.0), 10.0)
        x2 = x * x
        sig = 1.0 / (1.0 + tl.exp2(x * (TANH_A + TANH_B * x2)))  # sigmoid(2u)
        return sig * (1.0 + 2.0 * SQRT_2_OVER_PI * x * (1.0 - sig) * (1.0 + TANH_DU * x2))
    else:
        cdf = 0.5 * (1.0 + tl.math.erf(x * INV_SQRT2))
        return cdf + x * INV_SQRT_2PI * tl.exp(-0.5 * x * x)


@triton.jit
def _tile_coords(tile_id, H, n_tiles, T, lengths_ptr, HAS_LENGTHS: tl.constexpr,
                 TILE: tl.constexpr, VARLEN: tl.constexpr):
    """(b, h) as int64, first frame t0, valid frames n_t and frames to write n_frames of tile
    `tile_id`; heads vary fastest so neighbouring programs read neighbouring memory of a (B, T,
    H, D) projection. VARLEN (packed sequences, ops/varlen.py): lengths_ptr is the (2, n_tiles)
    work list of first rows and valid rows, b is 0 and only valid rows are written."""
    h = tile_id % H
    rest = tile_id // H
    if VARLEN:
        b = rest * 0
        t0 = tl.load(lengths_ptr + rest)
        n_t = tl.load(lengths_ptr + n_tiles + rest)
        n_frames = n_t
    else:
        tile = rest % n_tiles
        b = rest // n_tiles
        if HAS_LENGTHS:
            n = tl.load(lengths_ptr + b)
        else:
            n = T
        t0 = tile * TILE
        n_t = tl.minimum(tl.maximum(n - t0, 0), TILE)
        n_frames = tl.minimum(T - t0, TILE)
    return b.to(tl.int64), h.to(tl.int64), t0, n_t, n_frames


@triton.jit
def _load_rows(base, rows, row_stride, col_stride, ok, D, BD: tl.constexpr):
    """[BR, BD] float32 of rows `rows` ([BR] ints); rows where `ok` is False and columns >= D
    are not read (0)."""
    d = tl.arange(0, BD)[None, :]
    offs = rows[:, None].to(tl.int64) * row_stride + d.to(tl.int64) * col_stride
    return tl.load(base + offs, mask=ok[:, None] & (d < D), other=0.0).to(tl.float32)


@triton.jit
def _store_rows(base, rows, row_stride, col_stride, value, ok, D, BD: tl.constexpr):
    d = tl.arange(0, BD)[None, :]
    offs = rows[:, None].to(tl.int64) * row_stride + d.to(tl.int64) * col_stride
    tl.store(base + offs, value.to(base.dtype.element_ty), mask=ok[:, None] & (d < D))


@triton.jit
def _row_counts(rows, n_t, S):
    """Valid frames pooled in each row of a level with pooling size S."""
    return tl.minimum(tl.maximum(n_t - rows * S, 0), S)


@triton.jit
def _pool_rows(src, row_stride, col_stride, dst, DS: tl.constexpr, n_t, S, D,
               P_WIN: tl.constexpr, BR: tl.constexpr, BD: tl.constexpr):
    """The next level's rows (sums; dst rows DS floats apart) from a level with pooling size S:
    row r = sum of source rows r*p .. r*p + p - 1 that hold valid frames."""
    for r0 in range(0, tl.cdiv(n_t, S * P_WIN), BR):
        r = r0 + tl.arange(0, BR)
        acc = tl.zeros([BR, BD], tl.float32)
        for i in tl.static_range(P_WIN):
            src_rows = r * P_WIN + i
            acc += _load_rows(src, src_rows, row_stride, col_stride, src_rows * S < n_t, D, BD)
        _store_rows(dst, r, DS, 1, acc, r * (S * P_WIN) < n_t, D, BD)


@triton.jit
def _pool_pyramid(scr, region, N_REGIONS: tl.constexpr, n_t, D, TILE: tl.constexpr,
                  DS: tl.constexpr, P_WIN: tl.constexpr, LEVELS: tl.constexpr,
                  BR: tl.constexpr, BD: tl.constexpr):
    """Levels 3..L's sums from level 2's, in each of N_REGIONS consecutive scratch regions
    (`region` floats apart: pooled q, k, v[, dout]); level l's rows follow level l-1's. Returns
    (S, RB) of the top level: its pooling size and first scratch row. A run-time loop over
    levels (not unrolled): one copy of the pooling code keeps registers low."""
    S = tl.full([], P_WIN, tl.int32)
    RB = tl.full([], 0, tl.int32)
    for _ in range(LEVELS - 2):
        R = TILE // S
        for i in tl.static_range(N_REGIONS):
            base = scr + i * region
            _pool_rows(base + RB * DS, DS, 1, base + (RB + R) * DS, DS, n_t, S, D, P_WIN, BR, BD)
        tl.debug_barrier()
        RB += R
        S *= P_WIN
    return S, RB


@triton.jit
def _attend_rows(q, k_base, k_rs, k_cs, v_base, v_rs, v_cs, rows, n_t, S, scale, D,
                 POOLED: tl.constexpr, P_WIN: tl.constexpr, BR: tl.constexpr,
                 BD: tl.constexpr):
    """Window attention of query rows `rows` (q: [BR, BD]): each row attends to the p rows of
    its window, gathered by index (means, sums over counts, when POOLED). Returns y [BR, BD]
    and the softmax statistics m, l [BR]. Keys without valid frames get no weight."""
    first = (rows // P_WIN) * P_WIN
    # From -inf (a finite start would swallow windows whose scores all lie below it).
    m = tl.full([BR], float("-inf"), tl.float32)
    l = tl.zeros([BR], tl.float32)
    acc = tl.zeros([BR, BD], tl.float32)
    for i in tl.static_range(P_WIN):
        key_rows = first + i
        key_count = _row_counts(key_rows, n_t, S)
        key_ok = key_count > 0
        k = _load_rows(k_base, key_rows, k_rs, k_cs, key_ok, D, BD)
        v = _load_rows(v_base, key_rows, v_rs, v_cs, key_ok, D, BD)
        if POOLED:
            inv = (1.0 / tl.maximum(key_count, 1).to(tl.float32))[:, None]
            k = k * inv
            v = v * inv
        s = tl.where(key_ok, tl.sum(q * k, axis=1) * scale, float("-inf"))
        m_new = tl.maximum(m, s)
        # -inf while no key has a finite score: subtract 0 there, not -inf (NaN from -inf - -inf)
        m_sub = tl.where(m_new == float("-inf"), 0.0, m_new)
        alpha = tl.exp(m - m_sub)
        e = tl.exp(s - m_sub)
        l = l * alpha + e
        acc = acc * alpha[:, None] + e[:, None] * v
        m = m_new
    y = acc / tl.where(l > 0, l, 1.0)[:, None]
    # Rows without a finite score (no valid key, or scores all -inf from overflow) get weights
    # 0 (y = 0, as SDPA); m = 0 there keeps the backward's exp(s - m) at 0, not NaN.
    return y, tl.where(m == float("-inf"), 0.0, m), l
