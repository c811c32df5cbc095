"""Triton device functions shared by the fused forward and backward kernels.

Layout of the work (see benchmarks/NOTES.md, "Triton"): a program owns one (batch, head, tile
of p**levels frames) at a time. At level l (pooling size S = p**(l-1)) the tile has TILE // S
pooled rows, grouped in windows of p rows. A chunk is BW windows held as a [BW, BP, BD]
register tensor (BP = next power of two >= p, BD = next power of two >= D), padded lanes masked.
Level l+1's pooled row w is the sum of level l's window w, so pooling is a reduction over
axis 1 of the chunk; per-program scratch rows (global memory, hot in L2) carry the sums from
level to level. Sums and valid-frame counts (not means) travel, so tail groups stay exact.
"""
import triton
import triton.language as tl

INV_SQRT2 = tl.constexpr(0.7071067811865476)
INV_SQRT_2PI = tl.constexpr(0.3989422804014327)


@triton.jit
def _gelu(x):
    return 0.5 * x * (1.0 + tl.math.erf(x * INV_SQRT2))


@triton.jit
def _gelu_grad(x):
    cdf = 0.5 * (1.0 + tl.math.erf(x * INV_SQRT2))
    return cdf + x * INV_SQRT_2PI * tl.exp(-0.5 * x * x)


@triton.jit
def _level_rows(w0, n_t, S, P_WIN: tl.constexpr, BW: tl.constexpr, BP: tl.constexpr):
    """Chunk of windows [w0, w0 + BW) of one level: window ids [BW], row ids [BW, BP] and the
    number of valid frames pooled in each row [BW, BP] (0 for padding lanes and padded frames)."""
    w = w0 + tl.arange(0, BW)
    i = tl.arange(0, BP)
    rows = w[:, None] * P_WIN + i[None, :]
    count = tl.minimum(tl.maximum(n_t - rows * S, 0), S)
    count = tl.where(i[None, :] < P_WIN, count, 0)
    return w, rows, count


@triton.jit
def _load_chunk(base, rows, row_stride, col_stride, count, D, BD: tl.constexpr):
    """[BW, BP, BD] float32 of rows `rows` (int) of a row-major view; rows with count 0 and
    columns >= D are not read (0)."""
    d = tl.arange(0, BD)
    offs = rows[:, :, None].to(tl.int64) * row_stride + d[None, None, :].to(tl.int64) * col_stride
    mask = (count[:, :, None] > 0) & (d[None, None, :] < D)
    return tl.load(base + offs, mask=mask, other=0.0).to(tl.float32)


@triton.jit
def _store_chunk(base, rows, row_stride, col_stride, value, mask2, D, BD: tl.constexpr):
    d = tl.arange(0, BD)
    offs = rows[:, :, None].to(tl.int64) * row_stride + d[None, None, :].to(tl.int64) * col_stride
    mask = mask2[:, :, None] & (d[None, None, :] < D)
    tl.store(base + offs, value.to(base.dtype.element_ty), mask=mask)


@triton.jit
def _load_parent(base, w, n_t, S_PARENT, D, BD: tl.constexpr):
    """[BW, BD] scratch row w of the next level up (the parent of window w's rows); rows
    without valid frames are not read (0)."""
    d = tl.arange(0, BD)
    mask = ((w * S_PARENT < n_t)[:, None]) & (d[None, :] < D)
    return tl.load(base + w[:, None] * D + d[None, :], mask=mask, other=0.0)


@triton.jit
def _load_key(base, w, i, row_stride, col_stride, n_t, S, D, POOLED: tl.constexpr,
              P_WIN: tl.constexpr, BP: tl.constexpr, BD: tl.constexpr):
    """Row i of every window, repeated over the window's p query lanes: [BW, BP, BD] float32
    (a mean, the row's sum over its count, when POOLED), and whether the row has valid frames
    [BW]. The lanes of a window read the same addresses, which the memory system serves once;
    the result needs no cross-thread movement to meet the queries."""
    row = w * P_WIN + i
    count = tl.minimum(tl.maximum(n_t - row * S, 0), S)
    lane = tl.arange(0, BP)[None, :, None]
    d = tl.arange(0, BD)[None, None, :]
    offs = (row[:, None, None] + lane * 0).to(tl.int64) * row_stride + d.to(tl.int64) * col_stride
    mask = (count[:, None, None] > 0) & (lane < BP) & (d < D)
    x = tl.load(base + offs, mask=mask, other=0.0).to(tl.float32)
    if POOLED:
        x = x * (1.0 / tl.maximum(count, 1).to(tl.float32))[:, None, None]
    return x, count > 0


@triton.jit
def _window_softmax(q3, k_base, k_rs, k_cs, v_base, v_rs, v_cs, w, n_t, S, scale, D,
                    POOLED: tl.constexpr, P_WIN: tl.constexpr, BW: tl.constexpr,
                    BP: tl.constexpr, BD: tl.constexpr):
    """Attention inside each window of p rows: y [BW, BP, BD] and the softmax statistics
    (running max m and sum l, [BW, BP]) the backward needs. Keys and values are read row by row
    from (base, row stride, column stride). Keys without valid frames get no weight; a query
    row whose window has no valid key gets y = 0."""
    m = tl.full([BW, BP], -1e30, tl.float32)  # finite: exp(m - m_new) never sees inf - inf
    l = tl.zeros([BW, BP], tl.float32)
    acc = tl.zeros([BW, BP, BD], tl.float32)
    for i in tl.static_range(P_WIN):
        k_i, key_ok = _load_key(k_base, w, i, k_rs, k_cs, n_t, S, D, POOLED, P_WIN, BP, BD)
        v_i, _ = _load_key(v_base, w, i, v_rs, v_cs, n_t, S, D, POOLED, P_WIN, BP, BD)
        s = tl.sum(q3 * k_i, axis=2) * scale
        s = tl.where(key_ok[:, None], s, float("-inf"))
        m_new = tl.maximum(m, s)
        alpha = tl.exp(m - m_new)
        e = tl.exp(s - m_new)
        l = l * alpha + e
        acc = acc * alpha[:, :, None] + e[:, :, None] * v_i
        m = m_new
    y = acc / tl.where(l > 0, l, 1.0)[:, :, None]
    return y, m, l


@triton.jit
def _tile_coords(tile_id, H, n_tiles, T, lengths_ptr, HAS_LENGTHS: tl.constexpr,
                 TILE: tl.constexpr):
    """(b, h) as int64, first frame t0 (int64) and valid frames n_t of tile `tile_id`; heads vary
    fastest so neighbouring programs read neighbouring memory of a (B, T, H, D) projection."""
    h = tile_id % H
    rest = tile_id // H
    tile = rest % n_tiles
    b = rest // n_tiles
    if HAS_LENGTHS:
        n = tl.load(lengths_ptr + b)
    else:
        n = T
    t0 = tile * TILE
    n_t = tl.minimum(tl.maximum(n - t0, 0), TILE)
    return b.to(tl.int64), h.to(tl.int64), t0, n_t


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
def _pool_rows(src, row_stride, col_stride, dst, n_t, S, D, P_WIN: tl.constexpr,
               BR: tl.constexpr, BD: tl.constexpr):
    """The next level's rows (sums, dst rows of D floats) from a level with pooling size S:
    row r = sum of source rows r*p .. r*p + p - 1 that hold valid frames."""
    for r0 in range(0, tl.cdiv(n_t, S * P_WIN), BR):
        r = r0 + tl.arange(0, BR)
        acc = tl.zeros([BR, BD], tl.float32)
        for i in tl.static_range(P_WIN):
            src_rows = r * P_WIN + i
            acc += _load_rows(src, src_rows, row_stride, col_stride, src_rows * S < n_t, D, BD)
        _store_rows(dst, r, D, 1, acc, r * (S * P_WIN) < n_t, D, BD)


@triton.jit
def _attend_rows(q, k_base, k_rs, k_cs, v_base, v_rs, v_cs, rows, n_t, S, scale, D,
                 POOLED: tl.constexpr, P_WIN: tl.constexpr, BR: tl.constexpr,
                 BD: tl.constexpr):
    """Window attention of query rows `rows` (q: [BR, BD]): each row attends to the p rows of
    its window, gathered by index (means, sums over counts, when POOLED). Returns y [BR, BD]
    and the softmax statistics m, l [BR]. Keys without valid frames get no weight."""
    first = (rows // P_WIN) * P_WIN
    m = tl.full([BR], -1e30, tl.float32)  # finite: exp(m - m_new) never sees inf - inf
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
        alpha = tl.exp(m - m_new)
        e = tl.exp(s - m_new)
        l = l * alpha + e
        acc = acc * alpha[:, None] + e[:, None] * v
        m = m_new
    y = acc / tl.where(l > 0, l, 1.0)[:, None]
    return y, m, l
