"""The readable definition of packed (varlen) fractal attention, in plain PyTorch ops.

The tiles of every sequence (the work list of `varlen_work_list`) are gathered into a padded
batch of (items, H, L, D) with each item's valid frame count as its length, the padded
reference (reference.py) runs on that batch, and each packed row reads its result back. No
Python loop over sequences; autograd is PyTorch's own (the gathers' backward scatters).
"""
from __future__ import annotations

import torch

from .reference import fractal_attention_reference, fractal_attention_reference_backward


def _item_rows(tiles: torch.Tensor, tile_len: int, total: int):
    """rows (items, L): the packed row of each tile frame (clamped into range for the frames
    past a tile's count, which the padded reference masks), and rowmap (total,): where each
    packed row's result lies in the flattened (items * L) batch."""
    starts, counts = tiles[0].long(), tiles[1].long()
    r = torch.arange(tile_len, device=tiles.device)
    frames = starts[:, None] + r
    rows = frames.clamp(max=max(total - 1, 0))
    # Every packed row is the valid frame of exactly one item; invalid frames go to a dump slot.
    dest = torch.where(r < counts[:, None], frames, total).flatten()
    src = torch.arange(dest.numel(), device=tiles.device)
    rowmap = torch.zeros(total + 1, dtype=torch.long, device=tiles.device).scatter_(0, dest, src)
    return rows, rowmap[:total], counts


def _to_items(x: torch.Tensor, rows: torch.Tensor) -> torch.Tensor:
    """(total, H, D) -> (items, H, L, D) view of the gathered (items, L, H, D) rows."""
    return x[rows].transpose(1, 2)


def _from_items(y: torch.Tensor, rowmap: torch.Tensor) -> torch.Tensor:
    """(items, H, L, D) -> the packed (total, H, D) rows, contiguous."""
    n, H, L, D = y.shape
    return y.transpose(1, 2).reshape(n * L, H, D)[rowmap]


def fractal_attention_varlen_reference(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor,
                                       tiles: torch.Tensor, p: int, levels: int, scale: float,
                                       tile_len: int) -> torch.Tensor:
    """q, k, v: (total, H, D); tiles: the (2, items) int32 work list; tile_len: frames gathered
    per item (p**levels, or fewer when no sequence is that long). Returns (total, H, D)."""
    rows, rowmap, counts = _item_rows(tiles, tile_len, q.shape[0])
    out = fractal_attention_reference(_to_items(q, rows), _to_items(k, rows), _to_items(v, rows),
                                      counts, p, levels, scale)
    return _from_items(out, rowmap)


# The fused-backend contract for packed inputs (varlen.py), so the registered custom ops also
# run the reference: used by opcheck and as a template for new backends.
def fractal_attention_varlen_fwd(q, k, v, tiles, p, levels, scale):
    with torch.no_grad():
        return fractal_attention_varlen_reference(q, k, v, tiles, p, levels, scale,
                                                  p ** levels)


def fractal_attention_varlen_bwd(dout, q, k, v, tiles, p, levels, scale):
    rows, rowmap, counts = _item_rows(tiles, p ** levels, q.shape[0])
    with torch.no_grad(), torch.autocast(q.device.type, enabled=False):
        grads = fractal_attention_reference_backward(
            *(_to_items(x, rows) for x in (dout, q, k, v)), counts, p, levels, scale)
    return tuple(_from_items(g, rowmap).to(q.dtype) for g in grads)
