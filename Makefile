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

# The tiny preset's demo leaves size, steps and cutouts to the preset (seconds per image on 2 cores);
# the quickstart's own 256 px and 100 steps would take minutes on random weights that only make noise.
DEMO_MANIFEST = $(if $(filter tiny,$(PRESET)),examples/quickstart-tiny.yaml,examples/quickstart.yaml)

demo: install
	@$(VENV)/bin/vqclip run $(DEMO_MANIFEST) --preset $(PRESET) || { \
	  echo "The demo did not finish. Without internet access, run the same demo on tiny random-weight models:"; \
	  echo "  make demo PRESET=tiny"; exit 1; }

# Test modules run in parallel, one module per worker process (each worker starts its own Prefect
# API and SeaweedFS), as many workers as cores, at most 4; the longest modules go out first
# (tests/ordering.py), in collection order rather than xdist's order by test count.
PARALLEL := -n auto --maxprocesses 4 --dist loadfile --no-loadscope-reorder

test: install
	$(PY) -m pytest $(PARALLEL) || [ $$? -eq 5 ]  # 5: no tests collected

test-fast: install
	$(PY) -m pytest $(PARALLEL) -m "not slow"

test-slow: install
	$(PY) -m pytest $(PARALLEL) -m slow

bench: install
	$(PY) -m benchmarks.run
