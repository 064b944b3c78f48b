"""run_shard without Prefect: every recovery rule of a shard, on a stand-in engine that answers at once."""

from __future__ import annotations

import logging
import threading
import time
from types import SimpleNamespace

import pytest
import torch
from PIL import Image

from vqclip import retry
from vqclip.config import Config
from vqclip.engine.generate import GenerationResult
from vqclip.errors import Interrupted, PermanentStorageError, TransientStorageError
from vqclip.items import GenerationSettings, WorkItem
from vqclip.models.presets import models_for_preset
from vqclip.run import layout, shard
from vqclip.run.state import RunStore
from vqclip.storage.local import LocalStore

RUN = "shard"
OOM = "CUDA out of memory. Tried to allocate 2.00 GiB (injected)"
LOG = logging.getLogger("tests.shard")
CPU = SimpleNamespace(device=torch.device("cpu"))


def make_items(count: int) -> list[WorkItem]:
    settings = GenerationSettings(width=64, height=64, steps=2, cutouts=2)
    return [WorkItem(prompt_id="fox", index=n, prompt="a red fox", seed=n, settings=settings, models=models_for_preset("tiny")) for n in range(count)]


def result(item: WorkItem, error: str | None = None) -> GenerationResult:
    image = None if error else Image.new("RGB", (item.settings.width, item.settings.height), "orange")
    return GenerationResult(item=item, image=image, loss=0.5, similarity={"guide": 0.3}, first_similarity={"guide": 0.1}, seconds=0.01, error=error)


class Engine:
    """Stands in for vqclip.engine.generate.generate; records each batch's items and the settings it ran with."""

    def __init__(self, fail=lambda items, config: None) -> None:
        self.calls: list[tuple[list[WorkItem], Config]] = []
        self.fail = fail

    def __call__(self, items, models, config, images=None, progress=None):
        self.calls.append((items, config))
        return self.fail(items, config) or [result(item) for item in items]

    def sizes(self) -> list[int]:
        return [len(items) for items, _ in self.calls]


@pytest.fixture
def store(tmp_path) -> LocalStore:
    return LocalStore(tmp_path / "store")


@pytest.fixture
def waits(monkeypatch) -> list[float]:
    """The commit retries' waits, recorded instead of slept."""
    waited: list[float] = []
    monkeypatch.setattr(retry.shutdown, "wait", waited.append)
    return waited


def run(items, store, engine, monkeypatch, config: Config | None = None):
    monkeypatch.setattr(shard.engine, "generate", engine)
    return shard.run_shard(items, RunStore(store, RUN), lambda spec: CPU, config or Config(), LOG)


def stored(store, items) -> list[bool]:
    return [RunStore(store, RUN).record(item.item_id) is not None for item in items]


def test_out_of_memory_halves_the_batch_until_it_fits(store, monkeypatch):
    items = make_items(5)

    def tight_memory(batch, config):
        if len(batch) > 1:
            raise torch.OutOfMemoryError(OOM)

    engine = Engine(tight_memory)
    outcome = run(items, store, engine, monkeypatch)
    assert engine.sizes()[:3] == [5, 2, 1] and engine.sizes().count(1) == 5
    assert outcome.failed == {} and sorted(outcome.done) == sorted(i.item_id for i in items)
    assert all(stored(store, items))


def test_a_single_item_out_of_memory_runs_again_with_decoder_checkpointing(store, monkeypatch):
    def fits_checkpointed_only(batch, config):
        if not 0 < config.checkpoint_side <= batch[0].settings.width:
            raise RuntimeError(OOM)  # a backend's out-of-memory, known by its message

    engine = Engine(fits_checkpointed_only)
    outcome = run(make_items(1), store, engine, monkeypatch, Config(checkpoint_side=0))
    assert [(len(items), config.checkpoint_side) for items, config in engine.calls] == [(1, 0), (1, 64)]
    assert outcome.failed == {} and all(stored(store, make_items(1)))


def test_out_of_memory_even_with_checkpointing_is_raised(store, monkeypatch):
    def never_fits(batch, config):
        raise torch.OutOfMemoryError(OOM)

    with pytest.raises(torch.OutOfMemoryError):
        run(make_items(1), store, Engine(never_fits), monkeypatch, Config(checkpoint_side=0))


def test_other_engine_errors_are_not_taken_for_out_of_memory(store, monkeypatch):
    def broken(batch, config):
        raise ValueError("shapes do not match")

    engine = Engine(broken)
    with pytest.raises(ValueError):
        run(make_items(3), store, engine, monkeypatch)
    assert engine.sizes() == [3]


def test_a_nan_item_restarts_once_at_half_lr_then_fails_alone_with_the_reason(store, monkeypatch):
    items = make_items(3)
    nan = "loss became non-finite (nan) (injected)"

    def nan_for_seed_1(batch, config):
        return [result(item, nan if item.seed == 1 else None) for item in batch]

    engine = Engine(nan_for_seed_1)
    outcome = run(items, store, engine, monkeypatch)
    assert [[i.settings.lr for i in batch] for batch, _ in engine.calls] == [[0.1, 0.1, 0.1], [0.05]]
    assert outcome.failed == {items[1].item_id: f"{nan} (after a restart at half the learning rate)"}
    assert stored(store, items) == [True, False, True]


def test_a_restart_that_succeeds_is_stored_as_a_second_attempt(store, monkeypatch):
    items = make_items(1)

    def nan_at_full_lr(batch, config):
        return [result(item, "nan" if item.settings.lr == 0.1 else None) for item in batch]

    outcome = run(items, store, Engine(nan_at_full_lr), monkeypatch)
    record = RunStore(store, RUN).record(items[0].item_id)
    assert outcome.failed == {} and record.attempt == 2 and record.lr_used == 0.05
    assert record.settings.lr == 0.1, "the sidecar keeps the item as planned"


def test_transient_storage_errors_are_retried_without_generating_again(store, monkeypatch, waits, flaky_png_writes):
    items, failures = make_items(3), flaky_png_writes
    engine = Engine()
    outcome = run(items, store, engine, monkeypatch)
    assert failures["left"] == 0 and len(waits) == 3 and engine.sizes() == [3]
    assert outcome.failed == {} and all(stored(store, items))


def test_a_storage_outage_longer_than_the_retries_fails_the_shard(store, monkeypatch, waits):
    def down(self, key, data, content_type=None):
        raise TransientStorageError("injected: server down")

    monkeypatch.setattr(LocalStore, "put_bytes", down)
    with pytest.raises(TransientStorageError):
        run(make_items(1), store, Engine(), monkeypatch)
    assert waits == list(retry.COMMIT_DELAYS)


def test_permanent_storage_errors_are_not_retried(store, monkeypatch, waits):
    writes = []

    def refused(self, key, data, content_type=None):
        writes.append(key)
        raise PermanentStorageError("injected: AccessDenied")

    monkeypatch.setattr(LocalStore, "put_bytes", refused)
    with pytest.raises(PermanentStorageError):
        run(make_items(1), store, Engine(), monkeypatch)
    assert len(writes) == 1 and waits == []


def test_batches_commit_on_upload_threads_while_the_next_batch_computes(store, monkeypatch):
    items, original, threads = make_items(5), RunStore.commit, set()

    def record_commit(*args, **kwargs):
        threads.add(threading.current_thread().name)
        return original(*args, **kwargs)

    monkeypatch.setattr(shard, "engine_batch_size", lambda models, todo, config: 2)
    monkeypatch.setattr(RunStore, "commit", record_commit)
    engine = Engine()
    run(items, store, engine, monkeypatch)
    assert engine.sizes() == [2, 2, 1]
    assert threads and all(name.startswith("vqclip-upload") for name in threads)
    assert all(stored(store, items))


def test_a_stop_mid_shard_drains_the_finished_commits_on_the_way_out(store, monkeypatch):
    items, original = make_items(4), RunStore.commit

    def slow_commit(*args, **kwargs):
        time.sleep(0.3)  # still uploading when the stop comes
        return original(*args, **kwargs)

    def stop_in_second_batch(batch, config):
        if batch[0].seed >= 2:
            raise Interrupted("stopped by SIGTERM")  # what the engine's step loop raises once a stop is asked for

    monkeypatch.setattr(shard, "engine_batch_size", lambda models, todo, config: 2)
    monkeypatch.setattr(RunStore, "commit", slow_commit)
    with pytest.raises(Interrupted):
        run(items, store, Engine(stop_in_second_batch), monkeypatch)
    assert stored(store, items) == [True, True, False, False]


def test_a_finished_shard_loads_no_models_and_generates_nothing(store, monkeypatch):
    items = make_items(2)
    run(items, store, Engine(), monkeypatch)
    engine = Engine()
    monkeypatch.setattr(shard.engine, "generate", engine)
    outcome = shard.run_shard(items, RunStore(store, RUN), lambda spec: pytest.fail("a finished shard must not load models"), Config(), LOG)
    assert sorted(outcome.done) == sorted(i.item_id for i in items) and engine.calls == []
    assert store.exists(layout.image_key(RUN, items[0].item_id))
