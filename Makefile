# Two commands, each creating the environment on a fresh machine:
#   make run    the main job on the embedded default (for now: the Layer16 architecture summary)
#   make test   the whole test suite (what CI runs, through .ci/run)
PYTHON ?= python3
VENV := .venv
STAMP := $(VENV)/.installed

.PHONY: run test env clean

$(STAMP): pyproject.toml constraints-ci.txt
	$(PYTHON) -m venv $(VENV)
	$(VENV)/bin/python -m pip install --quiet -c constraints-ci.txt -e ".[test]"
	touch $(STAMP)

env: $(STAMP)

run: $(STAMP)
	$(VENV)/bin/python -m dr info --preset paper-l16

test: $(STAMP)
	$(VENV)/bin/python -m pytest -q tests

clean:
	rm -rf $(VENV) *.egg-info
