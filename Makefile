# Two commands do all set-up on a fresh machine:
#   make serve   installs into .venv and runs the server on the defaults
#   make test    installs into .venv (and the system packages the client tests use) and runs the tests
VENV ?= .venv
PY := $(VENV)/bin/python

.PHONY: serve test install system-deps bench bench-serve clean

$(VENV)/.installed: pyproject.toml
	python3 -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	# Prefer the CPU build of torch (a bare requirement may pull a multi-GB CUDA build).
	$(PY) -c "import torch" 2>/dev/null || $(PY) -m pip install --quiet "torch==2.13.0" || $(PY) -m pip install --quiet "torch>=2.4"
	$(PY) -m pip install --quiet -e ".[test]"
	touch $@

install: $(VENV)/.installed

serve: install
	$(VENV)/bin/tileserver serve

system-deps:
	bash scripts/install-system-deps.sh

test: install system-deps
	$(PY) -m pytest

bench: install
	$(PY) bench/speed.py

bench-serve: install  # needs nginx and wrk (apt-get install nginx wrk)
	$(PY) bench/serve.py

clean:
	rm -rf $(VENV) build .pytest_cache
