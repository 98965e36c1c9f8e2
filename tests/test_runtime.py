"""The compile path must compute what eager computes, see in-place weight updates, and degrade
to eager (never crash) when the backend fails."""

from __future__ import annotations

import pytest
import torch

from hashcondense import runtime
from hashcondense.condense.matching import fresh_network, reinitialise
from hashcondense.hashing import build_hash_method
from hashcondense.hashing.trainer import build_hashing_network, encode_images
from hashcondense.runtime import CompiledModule, inductor_available, resolve_compile

CPU = torch.device("cpu")
needs_inductor = pytest.mark.skipif(not inductor_available(CPU),
                                    reason="torch.compile's CPU backend needs a C++ compiler")


def test_resolve_compile_modes(monkeypatch):
    assert resolve_compile("off", CPU) is False
    with pytest.raises(ValueError, match="compile must be one of"):
        resolve_compile("sometimes", CPU)
    monkeypatch.setattr(runtime.shutil, "which", lambda name: None)
    assert resolve_compile("auto", CPU) is False  # no compiler: auto quietly stays eager
    with pytest.raises(ValueError, match="no C\\+\\+ compiler"):
        resolve_compile("on", CPU)


def test_compiled_module_falls_back_to_eager_on_backend_failure(caplog):
    net = torch.nn.Linear(3, 2)
    wrapped = CompiledModule(net, enabled=False)
    assert not wrapped.compiled

    def broken(*args, **kwargs):
        raise RuntimeError("backend exploded")

    wrapped._compiled = broken
    x = torch.randn(4, 3)
    with caplog.at_level("WARNING"):
        out = wrapped(x)
    assert torch.equal(out, net(x))
    assert not wrapped.compiled
    assert "backend exploded" in caplog.text


def test_reinitialise_reproduces_fresh_network():
    net = fresh_network("convnet3", in_channels=3, resolution=16, seed=1)
    reinitialise(net, "convnet3", in_channels=3, resolution=16, seed=5)
    fresh = fresh_network("convnet3", in_channels=3, resolution=16, seed=5)
    for a, b in zip(net.parameters(), fresh.parameters(), strict=True):
        assert torch.equal(a, b)


@needs_inductor
def test_compiled_forward_tracks_in_place_weight_changes():
    """One compiled module serves every re-initialised / perturbed network of a condensation."""
    net = fresh_network("convnet3", in_channels=3, resolution=16, seed=0).requires_grad_(False)
    compiled = CompiledModule(net, enabled=True)
    x = torch.randn(6, 3, 16, 16)
    with torch.no_grad():
        torch.testing.assert_close(compiled(x), net(x), rtol=1e-4, atol=1e-4)
        reinitialise(net, "convnet3", in_channels=3, resolution=16, seed=9)
        for p in net.parameters():
            p.mul_(1.5)
        torch.testing.assert_close(compiled(x), net(x), rtol=1e-4, atol=1e-4)
    assert compiled.compiled


def test_compiled_module_keeps_compiling_past_dynamo_default_recompile_limit():
    """A grid judges many set sizes in one process; graph 9 onwards once silently ran eager."""
    from torch._dynamo.utils import counters

    class Affine(torch.nn.Module):
        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return 2 * x + 1

    default = torch._dynamo.config.recompile_limit
    before = counters["stats"]["unique_graphs"]
    for rows in range(1, default + 5):  # one fresh module and one new shape each
        x = torch.randn(rows, 3)
        out = CompiledModule(Affine(), enabled=True, backend="eager")(x)
        torch.testing.assert_close(out, 2 * x + 1)
    assert counters["stats"]["unique_graphs"] - before == default + 4
    assert torch._dynamo.config.recompile_limit == default  # the raise is scoped to the calls


@needs_inductor
def test_compiled_encoding_pads_the_last_chunk_and_matches_eager():
    method = build_hash_method("dhd")
    model = build_hashing_network(method, backbone="convnet3", bits=16, num_classes=3,
                                  in_channels=3, resolution=16, seed=0).eval()
    images = torch.randint(0, 256, (7, 3, 16, 16), dtype=torch.uint8)

    def normalize(x):
        return x.float() / 127.5 - 1

    eager = encode_images(model, images, normalize, batch_size=4, precision="fp32")
    fast = encode_images(model, images, normalize, batch_size=4, precision="fp32",
                         compile="on")
    assert fast.shape == (7, 16) and fast.dtype == torch.int8
    # a bit may flip only where the continuous code is ~0; demand near-total agreement
    assert (fast == eager).float().mean() > 0.99


def test_pad_batch_repeats_the_last_sample():
    x = torch.arange(6.0).view(3, 2)
    padded = runtime.pad_batch(x, 5)
    assert padded.shape == (5, 2)
    torch.testing.assert_close(padded[:3], x)
    torch.testing.assert_close(padded[3:], x[-1:].expand(2, 2))
    assert runtime.pad_batch(x, 2) is x


@pytest.mark.parametrize("chunk,pad", [(4, False), (4, True), (64, True), (None, False)])
def test_chunked_forward_equals_one_batch(chunk, pad):
    net = fresh_network("convnet3", in_channels=3, resolution=16, seed=0).eval()
    calls = []

    def forward(x):
        calls.append(x.shape[0])
        return net(x)

    x = torch.randn(10, 3, 16, 16, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        out = runtime.chunked_forward(forward, x, chunk, pad=pad)
        torch.testing.assert_close(out, net(x), rtol=1e-5, atol=1e-5)
    if chunk == 4:  # 10 = 4 + 4 + 2; padding makes the last call full-sized
        assert calls == ([4, 4, 4] if pad else [4, 4, 2])
    else:
        assert calls == [10]



@needs_inductor
@pytest.mark.parametrize("channels_last", [False, True])
def test_fused_instance_norm_matches_group_norm_c_c(channels_last):
    """The fast path's instance norm is inductor's fusion of GroupNorm(C, C) (statistics, affine
    and ReLU in one pass over the activations, bf16 where native): check it against the eager
    fp32 GroupNorm(C, C) it replaces, values and input gradients, at bf16 accuracy."""
    from hashcondense.models.convnet import instance_norm

    torch.manual_seed(0)
    norm = instance_norm(16)
    with torch.no_grad():
        norm.weight.uniform_(0.5, 1.5)
        norm.bias.normal_()
    block = torch.nn.Sequential(norm, torch.nn.ReLU())
    x = torch.randn(4, 16, 8, 8) * 3 + 1
    if channels_last:
        x = x.contiguous(memory_format=torch.channels_last)
    probe = torch.randn(4, 16, 8, 8)
    x_ref, x_fast = x.clone().requires_grad_(True), x.clone().requires_grad_(True)
    ref = block(x_ref)
    (ref * probe).sum().backward()
    fused = CompiledModule(block, enabled=True)
    dtype = runtime.resolve_precision("auto", CPU)
    with runtime.autocast(CPU, dtype):
        out = fused(x_fast)
    (out.float() * probe).sum().backward()
    assert fused.compiled
    tol = 3e-2 if dtype is not None else 1e-4
    torch.testing.assert_close(out.float(), ref, rtol=tol, atol=tol)
    torch.testing.assert_close(x_fast.grad, x_ref.grad, rtol=tol, atol=tol)
