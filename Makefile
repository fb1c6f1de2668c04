# Text Manager: `make demo` runs the product, `make test` runs every test.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed

.PHONY: demo test smoke bench-recipients bench-sender venv clean

$(STAMP): pyproject.toml
	@test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -e '.[test]'
	@touch $(STAMP)

venv: $(STAMP)

demo: $(STAMP)
	$(PY) -m local

test: $(STAMP)
	$(PY) -m pytest

smoke: $(STAMP)
	$(PY) -m local.smoke

bench-recipients: $(STAMP)
	$(PY) -m bench.recipients

bench-sender: $(STAMP)
	$(PY) -m bench.sender

clean:
	rm -rf $(VENV) .pytest_cache
