"""Shared helpers for parity tests: inputs laid out as a user's model makes them, and errors."""
import torch

from float64_loop import fractal_attention_f64

# SPEC section 1: relative error bounds against float64.
SPEC_BOUND = {torch.float64: 1e-10, torch.float32: 1e-5, torch.float16: 2e-3, torch.bfloat16: 1e-2}


def rel_err(x, ref) -> float:
    x = torch.as_tensor(x, dtype=torch.float64).detach().cpu()
    ref = torch.as_tensor(ref, dtype=torch.float64).detach().cpu()
    return float((x - ref).norm() / ref.norm().clamp_min(1e-300))


def qkv_views(B, H, T, D, dtype=torch.float32, device="cpu", generator=None, layout="projection"):
    """q, k, v as a model makes them: strided views of one (B, T, 3, H, D) projection
    (layout='projection'), or contiguous (B, H, T, D) tensors (layout='contiguous')."""
    if layout == "projection":
        qkv = torch.randn(B, T, 3, H, D, generator=generator, dtype=torch.float64)
        qkv = qkv.to(device=device, dtype=dtype)
        return tuple(qkv[:, :, i].transpose(1, 2) for i in range(3))
    return tuple(torch.randn(B, H, T, D, generator=generator, dtype=torch.float64)
                 .to(device=device, dtype=dtype) for _ in range(3))


def random_lengths(B, T, generator=None, device="cpu"):
    """Lengths covering 0, T and values between (for B >= 3)."""
    lengths = torch.randint(0, T + 1, (B,), generator=generator)
    if B >= 2:
        lengths[0] = T
    if B >= 3:
        lengths[1] = 0
    return lengths.to(device)


def f64_outputs(q, k, v, p, levels, lengths=None, scale=None):
    """The independent loop's output as a float64 CPU tensor."""
    ls = None if lengths is None else lengths.tolist()
    return torch.from_numpy(fractal_attention_f64(q.double().cpu(), k.double().cpu(),
                                                  v.double().cpu(), p, levels, ls, scale))
