"""MSTRStream: the estimate after every push equals the offline model on the frames so far."""
import random

import pytest
import torch

from conftest import requires_cuda
from mstr_kernels.models import MSTR, MSTRConfig, MSTRStream, VanillaTransformer

TOLERANCE = {torch.float32: 1e-5, torch.float64: 1e-10}  # relative, SPEC section 3 / issue 16


def make_model(dtype=torch.float32, seed=0, **kw):
    base = dict(feature_dim=16, num_classes=5, num_layers=2, num_heads=2, p=3, levels=2)
    base.update(kw)
    torch.manual_seed(seed)
    model = MSTR(MSTRConfig(**base)).to(dtype).eval()
    with torch.no_grad():  # larger logits, so that a relative error is a strict test
        model.classifier[-1].weight.mul_(10)
    return model


def offline(model, frames):
    with torch.inference_mode():
        return model(frames[None])[0]


def assert_close(got, want, dtype):
    err = float((got.double() - want.double()).norm() / want.double().norm())
    assert err <= TOLERANCE[dtype], err


def random_chunks(rng, total, tile):
    """Chunk sizes summing to `total`: zeros, ones, exact tiles, and long runs mixed."""
    sizes = []
    while sum(sizes) < total:
        kind = rng.random()
        if kind < 0.2:
            size = 0
        elif kind < 0.45:
            size = 1
        elif kind < 0.6:
            size = tile
        elif kind < 0.7:
            size = tile - sum(sizes) % tile  # up to the next tile boundary
        elif kind < 0.8:
            size = rng.randint(2 * tile, 4 * tile)
        else:
            size = rng.randint(2, tile + 2)
        sizes.append(min(size, total - sum(sizes)))
    return sizes


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("backend", ["auto", "reference", "cpu"])
@pytest.mark.parametrize("p, levels", [(3, 2), (2, 3), (4, 1)])
def test_every_chunking_matches_offline(dtype, backend, p, levels):
    model = make_model(dtype, p=p, levels=levels, backend=backend)
    tile = p ** levels
    rng = random.Random(f"{dtype}{backend}{p}{levels}")
    for trial in range(2):
        total = rng.randint(1, 6 * tile)
        x = torch.randn(total, 16, dtype=dtype)
        stream = MSTRStream(model)
        pushed = 0
        for size in random_chunks(rng, total, tile):
            completed = stream.push(x[pushed:pushed + size])
            assert completed == (pushed + size) // tile - pushed // tile
            pushed += size
            assert stream.frames == pushed and stream.open_frames == pushed % tile
            if pushed:
                assert_close(stream.logits(), offline(model, x[:pushed]), dtype)
        assert_close(stream.probs(), torch.softmax(offline(model, x), -1), dtype)


def test_defaults_backend_auto():
    """The path a user gets: the default config (backend='auto'), one frame at a time."""
    torch.manual_seed(1)
    model = MSTR(MSTRConfig(feature_dim=32, num_classes=4, num_layers=1, num_heads=4)).eval()
    assert model.config.backend == "auto"
    x = torch.randn(200, 32)  # two full tiles of 81 and an open one
    stream = MSTRStream(model)
    for t in range(200):
        stream.push(x[t:t + 1])
        if t in (0, 80, 81, 161, 199):
            assert_close(stream.logits(), offline(model, x[:t + 1]), torch.float32)


def test_each_completed_tile_runs_once_and_state_is_one_tile():
    model = make_model(torch.float64, p=2, levels=2)  # tile of 4 frames
    calls = []
    model.input_norm.register_forward_hook(lambda m, inp, out: calls.append(tuple(inp[0].shape)))
    stream = MSTRStream(model, tiles_per_call=3)
    x = torch.randn(103, 16, dtype=torch.float64)
    pushed = 0
    for size in [1, 1, 1, 1, 0, 2, 13, 4, 40, 1, 40]:
        stream.push(x[pushed:pushed + size])
        pushed += size
        stream.logits()
        stream.logits()  # a second call recomputes nothing
        # the stream holds at most one tile of frames and (F,) sums, however long it runs
        held = [v for v in vars(stream).values() if isinstance(v, torch.Tensor)]
        assert all(v.numel() <= 4 * 16 for v in held)
    full = [shape for shape in calls if shape[1] == 4]
    partial = [shape for shape in calls if shape[1] != 4]
    assert sum(n for n, _, _ in full) == stream.tiles_run == 103 // 4  # each tile once
    assert max(n for n, _, _ in full) == 3  # batches of at most tiles_per_call tiles
    assert all(n == 1 and t < 4 for n, t, _ in partial)
    # the open tile is recomputed once per push that changed it, not per logits() call
    assert len(partial) == sum(1 for s, end in zip([1, 1, 1, 1, 0, 2, 13, 4, 40, 1, 40],
                                                   [1, 2, 3, 4, 4, 6, 19, 23, 63, 64, 103])
                               if end % 4)
    assert_close(stream.logits(), offline(model, x), torch.float64)


def test_reset_starts_a_new_utterance():
    model = make_model(torch.float64)
    stream = MSTRStream(model)
    first = torch.randn(20, 16, dtype=torch.float64)
    second = torch.randn(7, 16, dtype=torch.float64)
    stream.push(first)
    stream.reset()
    assert stream.frames == 0 and stream.tiles_run == 0
    with pytest.raises(RuntimeError, match="no frames pushed"):
        stream.logits()
    stream.push(second)
    assert_close(stream.logits(), offline(model, second), torch.float64)


def test_long_stream_float32_stays_within_tolerance():
    """A long stream in one push and in tile-sized pushes: the float64 running sum keeps the
    mean as accurate as the offline float32 mean."""
    model = make_model(torch.float32)
    x = torch.randn(900, 16)
    want = offline(model, x)
    one = MSTRStream(model, tiles_per_call=1000)
    one.push(x)
    assert_close(one.logits(), want, torch.float32)
    tiles = MSTRStream(model)
    for start in range(0, 900, 9):
        tiles.push(x[start:start + 9])
    assert_close(tiles.logits(), want, torch.float32)


def test_refusals_name_the_problem():
    with pytest.raises(ValueError, match="attention='full'.*only MSTR"):
        MSTRStream(VanillaTransformer(MSTRConfig(feature_dim=16, num_classes=2, num_heads=2)))
    with pytest.raises(TypeError, match="got Linear"):
        MSTRStream(torch.nn.Linear(2, 2))
    model = make_model()
    with pytest.raises(ValueError, match="tiles_per_call=0"):
        MSTRStream(model, tiles_per_call=0)
    stream = MSTRStream(model)
    with pytest.raises(ValueError, match="features must be \\(t, feature_dim=16\\), got shape "
                                         "\\(1, 3, 16\\)"):
        stream.push(torch.randn(1, 3, 16))
    with pytest.raises(TypeError, match="features.dtype=torch.float64 must equal the model's "
                                        "dtype torch.float32"):
        stream.push(torch.randn(3, 16, dtype=torch.float64))
    stream.push(torch.randn(3, 16))
    model.train()
    with pytest.raises(ValueError, match="training mode"):
        stream.logits()
    with pytest.raises(ValueError, match="training mode"):
        stream.push(torch.randn(3, 16))


@requires_cuda
@pytest.mark.parametrize("backend", ["auto", "triton", "cuda"])
def test_cuda_stream_matches_offline(backend):
    model = make_model(torch.float32, backend=backend).cuda()
    rng = random.Random(backend)
    x = torch.randn(100, 16, device="cuda")
    stream = MSTRStream(model)
    pushed = 0
    for size in random_chunks(rng, 100, 9):
        stream.push(x[pushed:pushed + size].cpu())  # moved to the model's device
        pushed += size
        if pushed:
            assert_close(stream.logits(), offline(model, x[:pushed]), torch.float32)
