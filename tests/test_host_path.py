"""The op's host path (issue 15): no data-dependent host reads anywhere in a training step, a lean
call path (backend choice cached, no logging on the hot path), and CUDA-graph capture."""
import logging
import sys

import pytest
import torch
import torch.nn.functional as F
from torch._library.custom_ops import OPDEFS
from torch.utils._python_dispatch import TorchDispatchMode

import mstr_kernels
import mstr_kernels.ops.backends as backends
from mstr_kernels import MultiScaleAttention
from mstr_kernels.models import MSTR, MSTRConfig
from mstr_kernels.ops import BACKENDS, available_backends
from parity import qkv_views

# ATen ops that read tensor data on the host (a device sync on a GPU).
HOST_READS = {"aten::_local_scalar_dense", "aten::item", "aten::equal", "aten::is_nonzero"}


class DispatchRecorder(TorchDispatchMode):
    """Records every op dispatched, including the ops dispatched inside the package's own
    registered ops: Python custom-op bodies run with the mode active, and C++ kernels are
    entered below the Python key with the mode active (what they dispatch is seen too)."""

    def __init__(self):
        super().__init__()
        self.ops = []

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        name = func._schema.name
        self.ops.append(name)
        if name.startswith("mstr_kernels::"):
            with self:
                if name in OPDEFS:  # a Python custom op: run its body under the mode
                    return OPDEFS[name]._init_fn(*args, **kwargs)
                keys = torch._C.DispatchKeySet(torch._C.DispatchKey.CPU)
                return func.redispatch(keys, *args, **kwargs)
        return func(*args, **kwargs)

    def host_reads(self):
        return sorted(set(self.ops) & HOST_READS)


def host_path_backends():
    """Backends whose host code is under test here. Triton's interpreter reads its tensors on the
    host by design (it executes the kernel in numpy), so it is not among them; its launcher's
    host path is the CUDA one, exercised by the CUDA-graph test on a GPU."""
    names = [n for n in ("cpu", "reference") if available_backends()[n] is None]
    return ["auto"] + names


@pytest.mark.parametrize("backend", host_path_backends())
def test_training_step_dispatches_no_host_read(backend):
    torch.manual_seed(0)
    model = MSTR(MSTRConfig(feature_dim=16, num_classes=3, num_heads=2, backend=backend))
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-3, fused=True)  # no step.item()
    x = torch.randn(3, 20, 16)
    lengths = torch.tensor([20, 11, 0])
    labels = torch.tensor([0, 2, 1])
    recorder = DispatchRecorder()
    with recorder:
        loss = F.cross_entropy(model(x, lengths=lengths), labels)
        loss.backward()
        optimizer.step()
        optimizer.zero_grad()
    assert "mstr_kernels::fractal_attention_ext_fwd" in recorder.ops or backend == "reference"
    assert any(op.startswith("aten::_fused_adam") for op in recorder.ops)
    assert recorder.host_reads() == []


def test_key_padding_mask_path_dispatches_no_host_read():
    m = MultiScaleAttention(8, 2, p=3, levels=2)
    x = torch.randn(2, 9, 8, requires_grad=True)
    mask = torch.arange(9)[None, :] >= torch.tensor([9, 4])[:, None]
    recorder = DispatchRecorder()
    with recorder:
        m(x, key_padding_mask=mask)[0].sum().backward()
    assert "mstr_kernels::require_all" in recorder.ops
    assert recorder.host_reads() == []


def test_recorder_sees_host_reads_inside_registered_ops():
    """The recorder is not blind: a host read inside the lengths check would be seen."""
    recorder = DispatchRecorder()
    with recorder:
        torch.tensor([3, 1]).max().item()
    assert recorder.host_reads() == ["aten::_local_scalar_dense"]


def test_choice_is_cached_and_the_hot_path_does_not_log(monkeypatch):
    q, k, v = qkv_views(1, 1, 9, 4)
    calls, logged = [], []
    original = backends._select_uncached
    monkeypatch.setattr(backends, "_select_uncached",
                        lambda *a, **kw: calls.append(a) or original(*a, **kw))
    monkeypatch.setattr(backends, "_choices", {})
    monkeypatch.setattr(backends.log, "debug", lambda *a, **kw: logged.append(a))
    lengths = torch.tensor([5])
    mstr_kernels.fractal_attention(q, k, v, p=3, levels=2, lengths=lengths)
    first_logs = len(logged)
    for _ in range(3):
        mstr_kernels.fractal_attention(q, k, v, p=3, levels=2, lengths=lengths)
    assert len(calls) == 1 and len(logged) == first_logs
    # another D, dtype or stride class is decided once more
    mstr_kernels.fractal_attention(q.double(), k.double(), v.double(), p=3, levels=2)
    assert len(calls) == 2


def test_choice_follows_a_replaced_registry_entry(monkeypatch):
    import dataclasses
    q = torch.zeros(1, 1, 4, 4, dtype=torch.float64)
    if available_backends()["cpu"] is not None:
        pytest.skip("the cpu backend is not built: auto picks the reference either way")
    assert backends.select_backend("auto", q, 3, 2).name == "cpu"
    monkeypatch.setitem(BACKENDS, "cpu", dataclasses.replace(BACKENDS["cpu"], max_head_dim=2))
    with pytest.warns(RuntimeWarning, match="falls back"):
        assert backends.select_backend("auto", q, 3, 2).name == "reference"


@pytest.mark.parametrize("backend", host_path_backends())
def test_a_remembered_call_skips_the_checks_but_not_their_refusals(monkeypatch, backend):
    """The hot path: a call whose signature was accepted before runs without check_call and
    without choosing again, and gives the same result; any argument that differs from it in a
    way a check reads (shape, dtype, device, type, registry) goes through the checks again."""
    from mstr_kernels.ops import validation
    monkeypatch.setattr(backends, "_choices", {})
    checked = []
    original = validation.check_call
    monkeypatch.setattr(validation, "check_call", lambda *a: checked.append(a) or original(*a))
    q, k, v = qkv_views(2, 2, 11, 4, torch.float64)
    lengths = torch.tensor([11, 4])
    # levels=1 and scale=1.0: a bool True is equal to both as a dictionary key
    call = dict(p=3, levels=1, scale=1.0, lengths=lengths, backend=backend)
    first = mstr_kernels.fractal_attention(q, k, v, **call)
    again = mstr_kernels.fractal_attention(q, k, v, **call)
    assert len(checked) == 1 and torch.equal(first, again)
    # lengths values are data: still refused on the remembered path, by name
    with pytest.raises(ValueError, match=r"lengths contains 12.*T = 11"):
        mstr_kernels.fractal_attention(q, k, v, **dict(call, lengths=torch.tensor([12, 4])))
    refused = [
        (dict(levels=True), TypeError, "levels must be an int"),
        (dict(scale=True), TypeError, "scale must be a float"),
        (dict(k=k[:, :, :10]), ValueError, r"k.shape=\(2, 2, 10, 4\) must equal"),
        (dict(v=v.float()), TypeError, "v.dtype=torch.float32 must equal"),
        (dict(k=k.to("meta")), ValueError, "k.device=meta must equal"),
        (dict(lengths=lengths.float()), TypeError, "lengths.dtype=torch.float32"),
        (dict(lengths=lengths[:1]), ValueError, r"lengths.shape=\(1,\) must be \(B,\)"),
        (dict(q=q.detach().numpy()), TypeError, "q must be a torch.Tensor"),
    ]
    for change, error, words in refused:
        args = {**call, "q": q, "k": k, "v": v, **change}
        with pytest.raises(error, match=words):
            mstr_kernels.fractal_attention(args.pop("q"), args.pop("k"), args.pop("v"), **args)


def test_a_remembered_call_follows_a_replaced_registry_entry(monkeypatch):
    import dataclasses
    if available_backends()["cpu"] is not None:
        pytest.skip("the cpu backend is not built: auto picks the reference either way")
    q, k, v = qkv_views(1, 1, 9, 4, torch.float64)
    calls = []
    op_module = sys.modules["mstr_kernels.ops.fractal_attention"]
    original = op_module.fractal_attention_reference
    monkeypatch.setattr(op_module, "fractal_attention_reference",
                        lambda *a: calls.append(a) or original(*a))
    for _ in range(2):
        mstr_kernels.fractal_attention(q, k, v, p=3, levels=2)
    assert not calls  # auto ran the cpu backend
    monkeypatch.setattr(backends, "_warned", set())
    monkeypatch.setitem(BACKENDS, "cpu", dataclasses.replace(BACKENDS["cpu"], max_head_dim=2))
    with pytest.warns(RuntimeWarning, match="falls back"):
        mstr_kernels.fractal_attention(q, k, v, p=3, levels=2)
    assert len(calls) == 1  # the same signature, decided again after the registry changed


def test_the_call_memo_stays_bounded(monkeypatch):
    monkeypatch.setattr(backends, "_choices", {})
    monkeypatch.setattr(backends, "_MAX_REMEMBERED", 8)
    for T in range(1, 30):
        q = torch.zeros(1, 1, T, 4)
        mstr_kernels.fractal_attention(q, q, q, p=3, levels=2)
    assert len(backends._choices) <= 8


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU (none visible to torch)")
@pytest.mark.parametrize("backend", ["auto", "cuda", "triton"])
def test_cuda_graph_capture_of_forward_and_backward(backend):
    """MultiScaleAttention's forward and backward captured once and replayed on new inputs give
    the eager results: no host sync, no allocation that differs between replays."""
    why = available_backends()[backend] if backend != "auto" else None
    if why:
        pytest.skip(f"backend {backend!r} unavailable: {why}")
    torch.manual_seed(0)
    module = MultiScaleAttention(64, 4, p=3, levels=2, backend=backend).cuda()
    lengths = torch.tensor([40, 23], device="cuda")
    static_x = torch.randn(2, 40, 64, device="cuda", requires_grad=True)
    side = torch.cuda.Stream()
    side.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(side):  # warm-up outside the capture: kernels compiled, caches filled
        for _ in range(2):
            module(static_x, lengths=lengths)[0].sum().backward()
    torch.cuda.current_stream().wait_stream(side)
    static_x.grad = None  # the captured backward then allocates its .grad from the graph pool
    module.zero_grad(set_to_none=True)
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        static_out = module(static_x, lengths=lengths)[0]
        static_out.sum().backward()
    params = list(module.parameters())
    for seed in (1, 2):
        torch.manual_seed(seed)
        new_x = torch.randn(2, 40, 64, device="cuda")
        with torch.no_grad():
            static_x.copy_(new_x)
        graph.replay()  # the captured backward writes (not adds) the .grad tensors it made
        torch.cuda.synchronize()
        eager_x = new_x.clone().requires_grad_(True)
        out = module(eager_x, lengths=lengths)[0]
        grads = torch.autograd.grad(out.sum(), [eager_x, *params])
        torch.testing.assert_close(static_out, out, rtol=1e-5, atol=1e-5)
        torch.testing.assert_close(static_x.grad, grads[0], rtol=1e-5, atol=1e-5)
        for p, g in zip(params, grads[1:]):
            torch.testing.assert_close(p.grad, g, rtol=1e-4, atol=1e-5)
