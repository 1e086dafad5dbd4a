PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed
# Exact versions the suite was tested with; pyproject.toml keeps ranges for library users.
LOCK := requirements.lock
PIN := -c $(LOCK) --build-constraint $(LOCK)

.PHONY: demo test test-all bench codegen lock clean

$(STAMP): pyproject.toml $(LOCK)
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip -c $(LOCK)
	$(PY) -m pip install --quiet $(PIN) -e ".[torch,experiments,test]"
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

# Refresh requirements.lock: install the newest versions pyproject.toml allows into a scratch
# venv and pin them. Then run `make test` (it reinstalls from the new lock) before committing.
lock:
	@scratch=$$(mktemp -d) && \
	$(PYTHON) -m venv $$scratch && \
	$$scratch/bin/python -m pip install --quiet --upgrade pip && \
	$$scratch/bin/python -m pip install --quiet -e ".[torch,experiments,test]" && \
	{ sed -n '/^#/p' $(LOCK); $$scratch/bin/python -m pip freeze --all --exclude-editable; } \
	    > $(LOCK).new && \
	mv $(LOCK).new $(LOCK) && rm -rf $$scratch && echo "wrote $(LOCK)"

clean:
	rm -rf $(VENV) runs .pytest_cache .benchmarks
