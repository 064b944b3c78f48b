"""Run a module as `python -m MODULE` would and note when its first optimisation step ends.

    python -m benchmarks.first_step FILE MODULE [ARG...]

The orchestration section's probe of fixed cost: the engine logs its first step at debug level
(vqclip.engine.generate); this writes that record's wall-clock time (seconds since the epoch) to
FILE, once, so the harness can subtract the moment it started the process. Nothing else changes:
the probe's handler takes that logger's records off the root logger's handlers.
"""

from __future__ import annotations

import logging
import runpy
import sys
from pathlib import Path

FIRST_STEP = "first optimisation step"


class FirstStepFile(logging.Handler):
    """Writes the creation time of the first FIRST_STEP record it sees to `path`."""

    def __init__(self, path: Path) -> None:
        super().__init__(logging.DEBUG)
        self.path, self.seen = path, False

    def emit(self, record: logging.LogRecord) -> None:
        if not self.seen and record.getMessage().startswith(FIRST_STEP):
            self.seen = True
            self.path.write_text(repr(record.created))


def main() -> None:
    path, module, *args = sys.argv[1:]
    engine_log = logging.getLogger("vqclip.engine.generate")
    engine_log.setLevel(logging.DEBUG)
    engine_log.propagate = False  # its debug lines would otherwise reach the CLI's stderr handler
    engine_log.addHandler(FirstStepFile(Path(path)))
    sys.argv = [module, *args]
    runpy.run_module(module, run_name="__main__", alter_sys=True)


if __name__ == "__main__":
    main()
