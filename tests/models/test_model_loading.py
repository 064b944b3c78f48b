"""Weights in the original taming format, served from loopback: download, verify, cache, load, refuse."""

from __future__ import annotations

import contextlib
import hashlib
import io
import os
import pickle
import socket
import sys
import time
import types

import pytest
import torch
import yaml

from tests.helpers.weights_server import WeightServer
from vqclip.errors import ModelError
from vqclip.models import catalog, loader
from vqclip.models.catalog import RemoteFile, VqganSpec
from vqclip.models.checkpoint import load_state_dict
from vqclip.models.download import HubFile
from vqclip.models.loader import load_models
from vqclip.models.presets import models_for_preset
from vqclip.models.spec import ModelSpec
from vqclip.models.vqgan import build_vqgan

TINY = catalog.VQGANS["tiny_f8"].architecture
LIGHTNING_MODULE = "pytorch_lightning.callbacks.model_checkpoint"


def taming_checkpoint(model: torch.nn.Module) -> bytes:
    """A checkpoint shaped like the 2020 taming ones: Lightning keys, losses' weights, callbacks by class."""

    class ModelCheckpoint:
        pass

    ModelCheckpoint.__module__ = LIGHTNING_MODULE
    ModelCheckpoint.__qualname__ = "ModelCheckpoint"
    fake = types.ModuleType(LIGHTNING_MODULE)
    fake.ModelCheckpoint = ModelCheckpoint
    state = dict(model.state_dict())
    state["loss.discriminator.main.0.weight"] = torch.zeros(4, 3, 4, 4)
    checkpoint = {
        "epoch": 3,
        "global_step": 1000,
        "pytorch-lightning_version": "1.0.8",
        "callbacks": {ModelCheckpoint: {"best_model_score": torch.tensor(0.5), "best_model_path": "last.ckpt"}},
        "optimizer_states": [{"state": {}, "param_groups": [{"lr": 4.5e-06}]}],
        "lr_schedulers": [],
        "state_dict": state,
    }
    buffer = io.BytesIO()
    sys.modules[LIGHTNING_MODULE] = fake
    try:
        torch.save(checkpoint, buffer)
    finally:
        del sys.modules[LIGHTNING_MODULE]
    return buffer.getvalue()


def taming_config() -> bytes:
    params = {
        **TINY,
        "lossconfig": {"target": "taming.modules.losses.vqperceptual.VQLPIPSWithDiscriminator", "params": {"disc_start": 10000}},
    }
    return yaml.safe_dump({"model": {"base_learning_rate": 4.5e-06, "target": "taming.models.vqgan.VQModel", "params": params}}).encode()


@pytest.fixture
def served(monkeypatch, settings):
    """A trained-looking tiny VQGAN registered as 'served_f8', its files on a loopback server."""
    with torch.random.fork_rng():
        torch.manual_seed(5)
        reference = build_vqgan(TINY, "taming.models.vqgan.VQModel")
    ckpt, config = taming_checkpoint(reference), taming_config()
    with WeightServer() as server:
        server.files = {"/served.yaml": config, "/mirror/served.ckpt": ckpt}
        spec = VqganSpec(
            "served_f8",
            "test model",
            "taming.models.vqgan.VQModel",
            TINY,
            RemoteFile("served_f8.yaml", (f"{server.url}/served.yaml",)),
            RemoteFile(
                "served_f8.ckpt",
                (f"{server.url}/missing.ckpt", f"{server.url}/mirror/served.ckpt"),
                hashlib.sha256(ckpt).hexdigest(),
            ),
        )
        monkeypatch.setitem(catalog.VQGANS, "served_f8", spec)
        loader.unload_models()
        yield server, reference, spec, settings
        loader.unload_models()


def served_spec() -> ModelSpec:
    return ModelSpec(vqgan="served_f8", guides=(("tiny-clip-a/random", 1.0),), scorer="tiny-clip-b/random")


def test_downloads_verifies_caches_and_loads_original_format(served):
    server, reference, spec, settings = served
    models = load_models(served_spec(), settings, device="cpu")
    for key, value in reference.state_dict().items():
        assert torch.equal(models.vqgan.state_dict()[key], value), key
    assert (settings.vqgan_cache / "served_f8.ckpt").exists()
    assert not list(settings.vqgan_cache.glob("*.part"))
    # the config had no pinned hash: it is recorded and holds for later downloads
    recorded = (settings.vqgan_cache / "served_f8.yaml.sha256").read_text().strip()
    assert recorded == hashlib.sha256(server.files["/served.yaml"]).hexdigest()

    fetched = len(server.requests)
    loader.unload_models()
    load_models(served_spec(), settings, device="cpu")
    assert len(server.requests) == fetched, "a cached model must load without any request"


def test_an_interrupted_download_resumes_where_it_stopped(served):
    server, _, spec, settings = served
    data = server.files["/mirror/served.ckpt"]
    settings.vqgan_cache.mkdir(parents=True)
    (settings.vqgan_cache / "served_f8.ckpt.part").write_bytes(data[:1000])
    load_models(served_spec(), settings, device="cpu")
    assert ("/mirror/served.ckpt", "bytes=1000-") in server.requests
    assert (settings.vqgan_cache / "served_f8.ckpt").read_bytes() == data


def test_a_corrupted_download_is_rejected_and_leaves_nothing(served):
    server, _, spec, settings = served
    good = server.files["/mirror/served.ckpt"]
    server.files["/mirror/served.ckpt"] = good[:-10] + b"0123456789"
    with pytest.raises(ModelError, match="corrupted download") as error:
        load_models(served_spec(), settings, device="cpu")
    assert str(settings.vqgan_cache / "served_f8.ckpt") in str(error.value)
    leftovers = [p.name for p in settings.vqgan_cache.iterdir() if p.name.startswith("served_f8.ckpt")]
    assert leftovers == ["served_f8.ckpt.lock"]


def _closed_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@pytest.mark.parametrize("how", ["offline-setting", "unreachable-host"])
def test_missing_weights_fail_fast_naming_the_cache_path_and_urls(served, monkeypatch, how):
    _, _, spec, settings = served
    if how == "offline-setting":
        settings = settings.model_copy(update={"offline": True})
    else:
        dead = f"http://127.0.0.1:{_closed_port()}/served.ckpt"
        monkeypatch.setitem(
            catalog.VQGANS, "served_f8", spec.__class__(**{**spec.__dict__, "checkpoint": RemoteFile("served_f8.ckpt", (dead,))})
        )
        settings.vqgan_cache.mkdir(parents=True)
        (settings.vqgan_cache / "served_f8.yaml").write_bytes(b"model: {}")
    started = time.monotonic()
    with pytest.raises(ModelError) as error:
        load_models(served_spec(), settings, device="cpu")
    assert time.monotonic() - started < 5
    message = str(error.value)
    assert str(settings.vqgan_cache / "served_f8.ckpt") in message
    assert "served.ckpt" in message and "vqclip fetch-models served_f8`" in message


def test_pretrained_clip_offline_fails_fast_with_hub_url(settings):
    spec = ModelSpec(vqgan="tiny_f8", guides=(("ViT-B-32/laion2b_s34b_b79k", 1.0),), scorer="tiny-clip-b/random")
    started = time.monotonic()
    with pytest.raises(ModelError) as error:
        load_models(spec, settings.model_copy(update={"offline": True}), device="cpu")
    assert time.monotonic() - started < 5
    assert "huggingface.co/laion/CLIP-ViT-B-32-laion2B-s34B-b79K" in str(error.value)
    assert str(settings.clip_cache) in str(error.value)


@pytest.mark.parametrize("protocol", [2, 4])
def test_a_pickle_that_would_run_code_is_refused(tmp_path, protocol):
    marker = tmp_path / "pwned"

    class Exploit:
        def __reduce__(self):
            return (os.system, (f"touch {marker}",))

    path = tmp_path / "evil.ckpt"
    path.write_bytes(pickle.dumps({"state_dict": {"w": Exploit()}}, protocol=protocol))
    with pytest.warns(UserWarning) if protocol > 2 else contextlib.nullcontext():
        with pytest.raises(ModelError, match="refused to load .*could run code") as error:
            load_state_dict(path)
    if protocol == 2:
        assert "posix.system" in str(error.value)
    assert not marker.exists()


def test_unknown_pretrained_tag_lists_the_known_ones(settings):
    spec = ModelSpec(vqgan="tiny_f8", guides=(("ViT-B-32/not-a-tag", 1.0),), scorer="tiny-clip-b/random")
    with pytest.raises(ModelError, match="laion2b_s34b_b79k"):
        load_models(spec, settings, device="cpu")


def test_conditional_transformer_checkpoints_load_their_first_stage(tmp_path):
    """sflckr-style files: a Net2NetTransformer config whose VQGAN weights sit under `first_stage_model.`."""
    from vqclip.models.vqgan import load_vqgan

    reference = build_vqgan(TINY, "taming.models.vqgan.VQModel")
    state = {f"first_stage_model.{k}": v for k, v in reference.state_dict().items()}
    state["transformer.tok_emb.weight"] = torch.zeros(8, 4)
    torch.save({"state_dict": state}, tmp_path / "sflckr.ckpt")
    config = {
        "model": {
            "target": "taming.models.cond_transformer.Net2NetTransformer",
            "params": {"first_stage_config": {"target": "taming.models.vqgan.VQModel", "params": TINY}},
        }
    }
    (tmp_path / "sflckr.yaml").write_text(yaml.safe_dump(config))
    model = load_vqgan(tmp_path / "sflckr.yaml", tmp_path / "sflckr.ckpt")
    assert torch.equal(model.codebook, reference.codebook)


def test_gumbel_vqgan_builds_with_its_codebook_and_decodes():
    params = {**TINY, "kl_weight": 1e-8}
    model = build_vqgan(params, "taming.models.vqgan.GumbelVQ")
    assert model.codebook.shape == (TINY["n_embed"], TINY["embed_dim"])
    assert "quantize.embed.weight" in model.state_dict() and "quantize.proj.weight" in model.state_dict()
    latents = model.codebook[:16].T.reshape(1, TINY["embed_dim"], 4, 4)
    assert model.decode(latents).shape == (1, 3, 32, 32)


def test_a_checkpoint_that_does_not_match_its_config_is_reported(tmp_path):
    from vqclip.models.vqgan import load_vqgan

    torch.save({"state_dict": {"encoder.conv_in.weight": torch.zeros(1)}}, tmp_path / "x.ckpt")
    (tmp_path / "x.yaml").write_bytes(taming_config())
    with pytest.raises(ModelError, match="does not match"):
        load_vqgan(tmp_path / "x.yaml", tmp_path / "x.ckpt")


def test_concurrent_loads_build_the_models_once(monkeypatch):
    import threading

    built = []
    original = loader.build_vqgan
    monkeypatch.setattr(loader, "build_vqgan", lambda *a, **k: built.append(1) or original(*a, **k))
    loader.unload_models()
    spec, results = models_for_preset("tiny"), []
    preload = loader.preload_models([spec])
    threads = [threading.Thread(target=lambda: results.append(load_models(spec, device="cpu"))) for _ in range(2)]
    for thread in threads:
        thread.start()
    for thread in threads + [preload]:
        thread.join(60)
    assert len(built) == 1, "the preload and both callers share one build"
    assert results[0].vqgan is results[1].vqgan and results[0].guides[0][0] is results[1].guides[0][0]


def test_a_clip_weight_file_loads_exactly_its_weights_and_random_models_stay_random(tmp_path, monkeypatch):
    """Trained CLIPs are built without random initialisation and read through a memory map: every
    weight must still come from the file, and random-weight models built afterwards must not change."""
    import open_clip.factory

    from vqclip.models.clip import _random_clip, build_clip

    random_before = _random_clip("tiny-clip-a").state_dict()
    monkeypatch.setitem(open_clip.factory._MODEL_CONFIGS, "vqclip-test-clip", catalog.TINY_CLIPS["tiny-clip-b"])
    with torch.random.fork_rng():
        torch.manual_seed(11)
        trained = open_clip.create_model("vqclip-test-clip").state_dict()
    path = tmp_path / "weights.bin"
    torch.save(trained, path)
    model = build_clip(f"vqclip-test-clip/{path}", path, torch.device("cpu")).model
    loaded = model.state_dict()
    assert loaded.keys() == trained.keys()
    for key, value in trained.items():
        assert torch.equal(loaded[key], value), key
    random_after = _random_clip("tiny-clip-a").state_dict()
    for key, value in random_before.items():
        assert torch.equal(random_after[key], value), key


def test_a_clip_loading_on_one_thread_changes_no_model_built_on_another(tmp_path, monkeypatch):
    """A trained CLIP is built with its parameters on the meta device while, say, the preload thread runs:
    a random-weight model built meanwhile on another thread keeps its deterministic weights, and the loaded
    model embeds exactly as the saved one (its attention mask is a buffer that no weight file holds)."""
    import threading

    import open_clip.factory

    from vqclip.models.clip import _random_clip, build_clip

    random_before = _random_clip("tiny-clip-a").state_dict()
    monkeypatch.setitem(open_clip.factory._MODEL_CONFIGS, "vqclip-test-clip", catalog.TINY_CLIPS["tiny-clip-b"])
    with torch.random.fork_rng():
        torch.manual_seed(11)
        trained = open_clip.create_model("vqclip-test-clip").eval().requires_grad_(False)
    path = tmp_path / "weights.bin"
    torch.save(trained.state_dict(), path)
    building, go_on = threading.Event(), threading.Event()
    create = open_clip.create_model

    def create_then_wait(*args, **kwargs):
        model = create(*args, **kwargs)
        building.set()
        go_on.wait(60)
        return model

    monkeypatch.setattr(open_clip, "create_model", create_then_wait)
    loaded = []
    loading = threading.Thread(target=lambda: loaded.append(build_clip(f"vqclip-test-clip/{path}", path, torch.device("cpu"))))
    loading.start()
    try:
        assert building.wait(60), "the load never built its model"
        random_meanwhile = _random_clip("tiny-clip-a").state_dict()
    finally:
        go_on.set()
        loading.join(60)
    for key, value in random_before.items():
        assert torch.equal(random_meanwhile[key], value), key
    tokens, images = open_clip.tokenize(["a red fox", "a castle"]), torch.rand(2, 3, 48, 48)
    with torch.no_grad():
        assert torch.equal(loaded[0].model.encode_text(tokens), trained.encode_text(tokens))
        assert torch.equal(loaded[0].model.encode_image(images), trained.encode_image(images))


def test_checkpoints_in_the_legacy_pre_zip_format_still_load(tmp_path):
    reference = build_vqgan(TINY, "taming.models.vqgan.VQModel")
    path = tmp_path / "old.ckpt"
    torch.save({"state_dict": reference.state_dict()}, path, _use_new_zipfile_serialization=False)
    state = load_state_dict(path)
    for key, value in reference.state_dict().items():
        assert torch.equal(state[key], value), key


def fetch(*names: str):
    from typer.testing import CliRunner

    from vqclip.cli.main import app

    return CliRunner().invoke(app, ["fetch-models", *names])


def test_fetch_models_takes_a_vqgan_name(served):
    server, _, spec, settings = served
    done = fetch("served_f8")
    assert done.exit_code == 0, done.output
    assert (settings.vqgan_cache / "served_f8.ckpt").read_bytes() == server.files["/mirror/served.ckpt"]
    assert (settings.vqgan_cache / "served_f8.yaml").exists()


def test_fetch_models_takes_an_open_clip_name_and_a_preset(served, monkeypatch, tmp_path):
    import huggingface_hub.constants

    from vqclip.models.weights import clip_weight_file

    server, _, _, settings = served
    name = "ViT-B-32/laion2b_s34b_b79k"
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_CACHE", str(tmp_path / "empty-hf-cache"))
    monkeypatch.setenv("HF_ENDPOINT", server.url)
    hub = clip_weight_file(name, settings)
    assert isinstance(hub, HubFile) and hub.repo == "laion/CLIP-ViT-B-32-laion2B-s34B-b79K"
    server.files[f"/{hub.repo}/resolve/main/{hub.filename}"] = b"weights"
    done = fetch(name, "tiny")
    assert done.exit_code == 0, done.output
    fetched = hub.cached()
    assert fetched.read_bytes() == b"weights" and fetched.is_relative_to(settings.clip_cache), fetched
    requests = len(server.requests)
    assert clip_weight_file(name, settings) == fetched and len(server.requests) == requests, "cached: no request"


def test_an_unreachable_hub_fails_fast_naming_the_file_and_the_cache(served, monkeypatch, tmp_path):
    import huggingface_hub.constants

    _, _, _, settings = served
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_CACHE", str(tmp_path / "empty-hf-cache"))
    monkeypatch.setenv("HF_ENDPOINT", f"http://127.0.0.1:{_closed_port()}")
    spec = ModelSpec(vqgan="tiny_f8", guides=(("ViT-B-32/laion2b_s34b_b79k", 1.0),), scorer="tiny-clip-b/random")
    started = time.monotonic()
    with pytest.raises(ModelError) as error:
        load_models(spec, settings, device="cpu")
    assert time.monotonic() - started < 5, "huggingface_hub's own retries would take 23 s here"
    message = str(error.value)
    assert "open_clip_pytorch_model.bin of laion/CLIP-ViT-B-32-laion2B-s34B-b79K" in message
    assert str(settings.clip_cache) in message and "ConnectError" in message


def test_fetch_models_refuses_an_unknown_name_naming_what_it_takes(served):
    done = fetch("imagenet_f16_1O24")
    assert done.exit_code == 1
    assert "unknown model 'imagenet_f16_1O24'" in done.output and "imagenet_f16_1024" in done.output
    assert "MODEL/PRETRAINED" in done.output
