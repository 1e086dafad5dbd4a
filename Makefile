PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed

.PHONY: demo test test-all bench codegen clean

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -e ".[torch,experiments,test]"
	touch $(STAMP)

demo: $(STAMP)
	$(PY) -m experiments demo

test: $(STAMP)
	$(PY) -m pytest -q

test-all: $(STAMP)
	$(PY) -m pytest -q -m "" --benchmark-disable

bench: $(STAMP)
	$(PY) -m pytest -q -m "" benchmarks --benchmark-enable --benchmark-only -p no:randomly -s

codegen: $(STAMP)
	$(PY) -m ousym codegen

clean:
	rm -rf $(VENV) runs .pytest_cache .benchmarks
