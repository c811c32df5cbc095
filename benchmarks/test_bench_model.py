"""One training step (forward, backward, Adam) of MSTR per backend and of the vanilla
Transformer (pytest-benchmark). Small on CPU; the paper's size (B=32, T=326, F=1024) on CUDA."""
import pytest
import torch
import torch.nn.functional as F

from mstr_kernels.bench.timing import synchronized
from mstr_kernels.models import MSTR, MSTRConfig, VanillaTransformer
from mstr_kernels.models.training_speed import make_adam
from mstr_kernels.ops import available_backends


@pytest.mark.parametrize("name", [f"MSTR[{n}]" for n in available_backends()] + ["vanilla"])
def test_training_step(benchmark, device, require_backend, name):
    backend = name[5:-1] if name.startswith("MSTR[") else "auto"
    if backend != "auto":
        require_backend(backend, device)
    gpu = device.type == "cuda"
    B, T, F_dim, layers, heads = (32, 326, 1024, 4, 16) if gpu else (2, 163, 128, 1, 4)
    cfg = MSTRConfig(feature_dim=F_dim, num_classes=4, num_layers=layers, num_heads=heads, p=3,
                     levels=4, dropout=0.1, backend=backend)
    torch.manual_seed(0)
    model = (MSTR if name != "vanilla" else VanillaTransformer)(cfg).to(device).train()
    opt = make_adam(model.parameters(), 1e-4, device)  # as `mstr train` makes it
    x = torch.randn(B, T, F_dim, device=device)
    lengths = torch.randint(T // 2, T + 1, (B,), device=device)
    labels = torch.randint(0, 4, (B,), device=device)

    def step():
        opt.zero_grad(set_to_none=True)
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=gpu):
            loss = F.cross_entropy(model(x, lengths=lengths), labels)
        loss.backward()
        opt.step()
        return loss.detach()

    benchmark.extra_info.update(B=B, T=T, F=F_dim, layers=layers, device=device.type)
    loss = benchmark(synchronized(step, device))
    assert torch.isfinite(loss)
