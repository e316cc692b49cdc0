# Two commands, each creating the environment on a fresh machine:
#   make run    the main job: the CPU tutorial training on the embedded data (about 4 minutes);
#               a second `make run` resumes / re-evaluates the same run instead of overwriting it
#   make test   the whole test suite and every notebook (what CI runs, through .ci/run)
PYTHON ?= python3
VENV := .venv
STAMP := $(VENV)/.installed

.PHONY: run test env clean

$(STAMP): pyproject.toml constraints-ci.txt
	$(PYTHON) -m venv $(VENV)
	$(VENV)/bin/python -m pip install --quiet -c constraints-ci.txt -e ".[test]"
	touch $(STAMP)

env: $(STAMP)

RUN_DIR ?= runs/tutorial

run: $(STAMP)
	@if [ -f $(RUN_DIR)/checkpoint.pt ]; then \
		$(VENV)/bin/python -m dr train --out $(RUN_DIR) --resume; \
	else \
		$(VENV)/bin/python -m dr train --out $(RUN_DIR); \
	fi

# CI=true: the notebooks take their fast_run settings (nbval executes each one at its defaults)
test: $(STAMP)
	CI=true $(VENV)/bin/python -m pytest -q tests notebooks --nbval-lax

clean:
	rm -rf $(VENV) *.egg-info
