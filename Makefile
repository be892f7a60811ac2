# Every install step lives here: `make demo` and `make test` work from a fresh clone.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed-stamp
DEMO_DIR ?= demo-output

.PHONY: venv demo test test-slow test-vision lint format clean browser java

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	# torch first and pinned: a CPU wheel is on disk on the project's machines; elsewhere pip fetches this release.
	$(BIN)/python -m pip install --quiet torch==2.13.0
	$(BIN)/python -m pip install --quiet -e '.[dev]'
	touch $(STAMP)

venv: $(STAMP)

demo: venv
	$(BIN)/captionkit demo --output $(DEMO_DIR)

# The headless-browser test drives Debian's chromium through Playwright (no browser download): apt needs root or sudo.
SUDO = $(if $(filter 0,$(shell id -u)),,sudo)
browser: venv
	command -v chromium >/dev/null 2>&1 || { $(SUDO) apt-get update -qq && $(SUDO) env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium; }
	$(BIN)/python -m pip install --quiet -e '.[browser]'
	chromium --version

# Java runs pycocoevalcap's PTB tokenizer and METEOR jar, which the evaluation tests compare captionkit with (captionkit
# itself needs Java only for SPICE). Debian's headless JRE, through apt like chromium.
java:
	command -v java >/dev/null 2>&1 || { $(SUDO) apt-get update -qq && $(SUDO) env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq default-jre-headless; }
	java -version 2>&1 | head -n 1

# The fast suite in TEST_WORKERS processes (pytest-xdist; 0 runs it in this one): on 2 cores it takes half the time.
TEST_WORKERS ?= 2
test: venv
	$(BIN)/python -m pytest -q -rs --durations=25 -n $(TEST_WORKERS)

test-slow: venv
	$(BIN)/python -m pytest -q -rs -m slow

# The optional extras timm, torchvision (backbones) and torchao (int8), in their own venv: PyPI's torchvision imports
# only beside the torch release it was built for (with .venv's torch 2.13.0 it fails: "operator torchvision::nms does
# not exist"), timm imports it, and transformers imports torchao in every process once it is installed.
VISION_VENV := .venv-vision
VISION_STAMP := $(VISION_VENV)/.installed-stamp

$(VISION_STAMP): pyproject.toml
	$(PYTHON) -m venv $(VISION_VENV)
	$(VISION_VENV)/bin/python -m pip install --quiet --upgrade pip
	$(VISION_VENV)/bin/python -m pip install --quiet torch==2.14.1 torchvision==0.29.1
	# torch pinned again: pip keeps the pair instead of resolving another torch for captionkit.
	$(VISION_VENV)/bin/python -m pip install --quiet -e '.[dev,timm,torchvision,int8]' torch==2.14.1 torchvision==0.29.1
	touch $(VISION_STAMP)

test-vision: $(VISION_STAMP)
	$(VISION_VENV)/bin/python -m pytest -q -rs -m 'vision or torchao'

lint: venv
	$(BIN)/ruff check src tests benchmarks
	$(BIN)/ruff format --check src tests benchmarks

format: venv
	$(BIN)/ruff format src tests benchmarks
	$(BIN)/ruff check --fix src tests benchmarks

clean:
	rm -rf $(VENV) $(VISION_VENV) $(DEMO_DIR) .pytest_cache .ruff_cache
