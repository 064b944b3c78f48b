"""`vqclip run / validate / show` as a user runs them: exit codes, messages, resume after a kill."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest
from typer.testing import CliRunner

from tests.helpers.manifests import BAD
from tests.helpers.processes import kill_once_stored
from tests.helpers.runs import TINY_RUN, files_under
from vqclip.cli.main import app
from vqclip.config import get_config
from vqclip.manifest import load_manifest_file


def vqclip(*args: str, **kwargs) -> subprocess.Popen:
    return subprocess.Popen(
        [sys.executable, "-m", "vqclip.cli", *args],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        start_new_session=True,  # the ephemeral Prefect server is a child: kill the whole group
        **kwargs,
    )


def finish(process: subprocess.Popen, timeout: float = 300) -> tuple[int, str, str]:
    out, err = process.communicate(timeout=timeout)
    return process.returncode, out, err


@pytest.mark.parametrize(("name", "content", "expected", "limits"), BAD)
def test_bad_manifests_exit_1_naming_the_place_and_write_nothing(folder, monkeypatch, name, content, expected, limits):
    path = folder / name
    path.write_bytes(content if isinstance(content, bytes) else content.encode())
    for field, value in limits.items():
        monkeypatch.setenv(f"VQCLIP_{field.upper()}", str(value))
    get_config.cache_clear()
    out = folder / "out"
    try:
        result = CliRunner().invoke(app, ["run", str(path), "--storage", str(out)])
    finally:
        get_config.cache_clear()
    assert result.exit_code == 1, result.output
    assert expected in " ".join(result.output.split()), result.output
    assert "Traceback" not in result.output
    assert files_under(out) == []


def test_validate_prints_the_plan_and_exit_codes(tmp_path):
    good = tmp_path / "good.yaml"
    good.write_text(TINY_RUN.format(steps=3, n=2))
    result = CliRunner().invoke(app, ["validate", str(good)])
    assert result.exit_code == 0, result.output
    assert "2 images, 2 shards, 6 optimisation steps" in " ".join(result.output.split())
    bad = tmp_path / "bad.yaml"
    bad.write_text("prompts:\n  - text: 'a fox |'\n")
    result = CliRunner().invoke(app, ["validate", str(bad)])
    assert result.exit_code == 1 and "bad.yaml:2: prompts[0].text" in " ".join(result.output.split())


def test_show_of_a_missing_run_says_so(tmp_path):
    result = CliRunner().invoke(app, ["show", "nope", "--storage", str(tmp_path)])
    assert result.exit_code == 1 and "no run 'nope'" in result.output


@pytest.mark.slow
def test_a_killed_run_resumes_with_exactly_the_missing_items(tmp_path):
    """SIGKILL mid-run, then `vqclip run --run-id` again: every item once, finished ones untouched."""
    manifest = tmp_path / "kill.yaml"
    manifest.write_text(TINY_RUN.format(steps=40, n=6))
    out = tmp_path / "out"
    items_dir = out / "runs" / "k1" / "items"
    planned = {item.item_id for item in load_manifest_file(manifest).plan()}

    first = vqclip("run", str(manifest), "--storage", str(out), "--run-id", "k1")
    kill_once_stored(first, items_dir, "*.json", 2, "item")
    before = {p.name: p.read_bytes() for p in items_dir.glob("*.png") if (items_dir / (p.stem + ".json")).exists()}
    assert 2 <= len(before) < len(planned)

    code, stdout, stderr = finish(vqclip("run", str(manifest), "--storage", str(out), "--run-id", "k1"))
    assert code == 0, stderr
    assert "all 6 images done" in stdout
    pngs = {p.stem for p in items_dir.glob("*.png")}
    sidecars = {p.stem for p in items_dir.glob("*.json")}
    assert pngs == sidecars == planned
    assert [p for p in files_under(out) if ".vqclip-tmp-" in p.name] == []
    for name, data in before.items():
        assert (items_dir / name).read_bytes() == data, "a finished image must not be generated again"

    code, stdout, _ = finish(vqclip("show", "k1", "--storage", str(out), env={**os.environ, "COLUMNS": "200"}))
    assert code == 0 and "run k1: 6 done" in stdout and "fox" in stdout


def test_run_and_validate_of_a_bad_manifest_through_a_real_process(tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text("defaults:\n  steps: many\nprompts:\n  - text: a fox\n    colour: red\n")
    out = tmp_path / "out"
    for command in (["run", str(bad), "--storage", str(out)], ["validate", str(bad)]):
        code, stdout, stderr = finish(vqclip(*command), timeout=120)
        assert code == 1, (stdout, stderr)
        message = " ".join(stderr.split())
        assert "bad.yaml:2: defaults.steps" in message and "bad.yaml:5: prompts[0].colour: unknown field" in message
        assert "Traceback" not in stderr
    assert files_under(out) == []
