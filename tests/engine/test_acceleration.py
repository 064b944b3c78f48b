"""The engine's speed switches keep the computation the same: fused decoder, checkpointing, channels-last, compile fallback."""

from __future__ import annotations

import logging

import numpy as np
import pytest
import torch

from tests.helpers.engine import FEW_STEPS, SETTINGS, item, pixels
from vqclip.config import Config
from vqclip.engine.acceleration import Accelerated
from vqclip.engine.generate import generate


@pytest.fixture
def no_compile_state(tiny_models):
    """Forget compiled wrappers and failure marks on the shared tiny models, before and after."""
    modules = [tiny_models.vqgan] + [clip.model for clip, _ in tiny_models.guides]

    def clear():
        for module in modules:
            module.__dict__.pop("_vqclip_compiled", None)
            module.__dict__.pop("_vqclip_compile_failed", None)

    clear()
    yield
    clear()


def taming_decode(vqgan, z):
    return vqgan.decoder(vqgan.post_quant_conv(z))


@pytest.mark.parametrize("checkpointed", [False, True])
def test_the_decoder_matches_taming_in_values_and_gradients(tiny_models, checkpointed):
    vqgan = tiny_models.vqgan
    latents = torch.randn(2, vqgan.codebook.shape[1], 8, 8, generator=torch.Generator().manual_seed(3))
    ours, theirs = latents.clone().requires_grad_(True), latents.clone().requires_grad_(True)
    out = vqgan.decode(ours, checkpointed=checkpointed)
    reference = taming_decode(vqgan, theirs)
    out.square().mean().backward()
    reference.square().mean().backward()
    assert torch.allclose(out, reference, atol=1e-5)
    assert torch.allclose(ours.grad, theirs.grad, atol=1e-6)


def test_checkpointing_applies_from_the_configured_side(tiny_models):
    guides = [clip for clip, _ in tiny_models.guides]
    build = lambda side, setting: Accelerated.build(tiny_models.vqgan, guides, tiny_models.device, Config(checkpoint_side=setting), side)  # noqa: E731
    assert build(512, 512).checkpointed and build(768, 512).checkpointed
    assert not build(256, 512).checkpointed and not build(1024, 0).checkpointed


@pytest.mark.slow
def test_channels_last_and_checkpointing_give_the_same_image(tiny_models):
    batch = [item("a red fox", 7, FEW_STEPS), item("snow", 8, FEW_STEPS)]
    plain = generate(batch, tiny_models, Config(channels_last=False))
    switched = generate(batch, tiny_models, Config(channels_last=True, checkpoint_side=64))
    generate(batch[:1], tiny_models, Config(channels_last=False))  # leave the shared model as the other tests expect
    for a, b in zip(plain, switched):
        assert np.abs(pixels(a) - pixels(b)).max() <= 2


@pytest.mark.slow
def test_a_failing_compile_falls_back_to_eager_with_the_same_result(tiny_models, no_compile_state, monkeypatch, caplog):
    def broken_compile(function):
        def compiled(*args, **kwargs):
            raise RuntimeError("inductor: no C++ compiler found")

        return compiled

    monkeypatch.setattr(torch, "compile", broken_compile)
    vqgan = tiny_models.vqgan
    batch = [item("a castle", 4, SETTINGS.model_copy(update={"steps": 5}))]
    (eager,) = generate(batch, tiny_models, Config())
    with caplog.at_level(logging.WARNING, logger="vqclip.engine.acceleration"):
        (fallback,) = generate(batch, tiny_models, Config(compile=True))
    assert "torch.compile failed (RuntimeError: inductor: no C++ compiler found); running eagerly" in caplog.text
    assert np.abs(pixels(eager) - pixels(fallback)).max() <= 2
    assert fallback.similarity == pytest.approx(eager.similarity, abs=1e-4)
    assert Accelerated.compile_failed(vqgan), "later batches in this process must not try to compile again"
    caplog.clear()
    generate(batch, tiny_models, Config(compile=True))
    assert "torch.compile failed" not in caplog.text


def test_an_out_of_memory_error_under_compile_is_not_taken_for_a_compiler_failure(tiny_models, no_compile_state, monkeypatch):
    def compile_that_runs_out_of_memory(function):
        def compiled(*args, **kwargs):
            raise torch.OutOfMemoryError("CUDA out of memory")

        return compiled

    monkeypatch.setattr(torch, "compile", compile_that_runs_out_of_memory)
    with pytest.raises(torch.OutOfMemoryError):
        generate([item("a castle", 4, SETTINGS.model_copy(update={"steps": 2}))], tiny_models, Config(compile=True))
    assert not Accelerated.compile_failed(tiny_models.vqgan)


@pytest.mark.slow
def test_torch_compile_really_compiles_and_gives_the_same_image(tiny_models, no_compile_state):
    batch = [item("a red fox", 2, SETTINGS.model_copy(update={"steps": 4})), item("snow", 3, SETTINGS.model_copy(update={"steps": 4}))]
    # In fp32: under bf16 (the default on CPUs with native bf16) inductor's fused kernels round differently
    # from eager ones, and the nearest-code snap turns that into different pixels.
    eager = generate(batch, tiny_models, Config(bf16=False))
    compiled = generate(batch, tiny_models, Config(bf16=False, compile=True))
    assert not Accelerated.compile_failed(tiny_models.vqgan), "inductor compiled the decoder and the guide"
    assert "_vqclip_compiled" in tiny_models.vqgan.__dict__
    for a, b in zip(eager, compiled):
        assert np.abs(pixels(a) - pixels(b)).max() <= 2
