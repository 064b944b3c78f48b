# Two entry points for a fresh machine: `make demo` and `make test` (see README.md).
VENV ?= .venv
PY := $(VENV)/bin/python
PRESET ?= default
export DO_NOT_TRACK := 1
export PREFECT_SERVER_ANALYTICS_ENABLED := false

.PHONY: install demo test test-fast test-slow bench

$(VENV)/.installed: pyproject.toml
	test -x $(PY) || python3 -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -e '.[test]'
	touch $@

install: $(VENV)/.installed

demo: install
	@$(VENV)/bin/vqclip run examples/quickstart.yaml --preset $(PRESET) || { \
	  echo "The demo did not finish. Without internet access, run the same demo on tiny random-weight models:"; \
	  echo "  make demo PRESET=tiny"; exit 1; }

test: install
	$(PY) -m pytest || [ $$? -eq 5 ]  # 5: no tests collected

test-fast: install
	$(PY) -m pytest -m "not slow"

test-slow: install
	$(PY) -m pytest -m slow

bench: install
	$(PY) -m benchmarks.run
