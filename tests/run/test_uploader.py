"""Background uploads: bounded, failures surface, nothing is left unfinished when the block ends."""

from __future__ import annotations

import contextvars
import threading
import time

import pytest

from vqclip.run.uploads import BackgroundUploader

RUN = contextvars.ContextVar("RUN", default="none")


def test_submit_waits_while_the_queue_is_full():
    gate = threading.Event()
    finished: list[int] = []

    def upload(number: int) -> None:
        gate.wait(5)
        finished.append(number)

    with BackgroundUploader(limit=2, workers=1) as uploads:
        uploads.submit(upload, 1)
        uploads.submit(upload, 2)
        third = threading.Thread(target=uploads.submit, args=(upload, 3))
        third.start()
        third.join(0.3)
        assert third.is_alive(), "a third upload must wait for a free slot"
        gate.set()
        third.join(5)
        assert not third.is_alive()
    assert sorted(finished) == [1, 2, 3]


def test_leaving_the_block_waits_for_every_upload_and_raises_the_first_failure():
    stored: list[int] = []

    def upload(number: int) -> None:
        time.sleep(0.05)
        if number == 2:
            raise OSError("store unreachable")
        stored.append(number)

    with pytest.raises(OSError, match="store unreachable"):
        with BackgroundUploader(limit=8, workers=2) as uploads:
            for number in range(5):
                uploads.submit(upload, number)
    assert sorted(stored) == [0, 1, 3, 4], "the other uploads still finish"


def test_a_failed_upload_stops_further_submissions():
    with pytest.raises(OSError):
        with BackgroundUploader(limit=4, workers=1) as uploads:
            uploads.submit(lambda: (_ for _ in ()).throw(OSError("denied")))
            deadline = time.monotonic() + 5
            while time.monotonic() < deadline:
                uploads.submit(lambda: None)
                time.sleep(0.01)
            pytest.fail("submit kept accepting work after an upload failed")


def test_an_error_in_the_block_still_lets_queued_uploads_finish():
    stored: list[int] = []
    with pytest.raises(ValueError):
        with BackgroundUploader(limit=4) as uploads:
            uploads.submit(lambda: (time.sleep(0.1), stored.append(1)))
            raise ValueError("generation failed")
    assert stored == [1]


def test_uploads_run_in_the_submitters_context():
    seen: list[str] = []
    RUN.set("run-7")
    with BackgroundUploader(limit=1) as uploads:
        uploads.submit(lambda: seen.append(RUN.get()))
    assert seen == ["run-7"]
