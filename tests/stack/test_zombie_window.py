"""VQCLIP_ZOMBIE_AFTER_S: the window of the stack's zombie-run automation, checked against the 30 s heartbeat."""

from __future__ import annotations

import os
import subprocess
import sys
from datetime import timedelta

import pytest

from vqclip.config import get_config
from vqclip.stack.control import zombie_automation


@pytest.fixture
def zombie_after(monkeypatch: pytest.MonkeyPatch):
    """Set VQCLIP_ZOMBIE_AFTER_S (None: unset) for this process's configuration."""

    def set_window(value: str | None) -> None:
        if value is None:
            monkeypatch.delenv("VQCLIP_ZOMBIE_AFTER_S", raising=False)
        else:
            monkeypatch.setenv("VQCLIP_ZOMBIE_AFTER_S", value)
        get_config.cache_clear()

    yield set_window
    get_config.cache_clear()


@pytest.mark.parametrize(("value", "seconds"), [(None, 75), ("40", 40), ("45.5", 45.5)], ids=["default", "shortest", "fraction"])
def test_the_automation_waits_the_configured_window(zombie_after, value, seconds):
    zombie_after(value)
    automation = zombie_automation()
    assert automation.trigger.posture == "Proactive" and automation.trigger.within == timedelta(seconds=seconds)
    assert f"No heartbeat for {seconds:g} s" in automation.actions[0].message


def test_up_refuses_a_window_shorter_than_a_heartbeat_and_its_slack_before_starting_anything(tmp_path):
    env = {**os.environ, "VQCLIP_ZOMBIE_AFTER_S": "39", "COLUMNS": "250"}
    command = [sys.executable, "-m", "vqclip.cli", "up", "--state-dir", str(tmp_path / "stack")]
    result = subprocess.run(command, env=env, capture_output=True, text=True, timeout=60)
    assert result.returncode == 1, result
    assert "VQCLIP_ZOMBIE_AFTER_S=39 is too short" in result.stderr and "set VQCLIP_ZOMBIE_AFTER_S to 40 or more" in result.stderr
    assert "Traceback" not in result.stderr
    assert not (tmp_path / "stack").exists(), "nothing may start with a bad window"
