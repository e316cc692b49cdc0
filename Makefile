# Two commands, each creating the environment on a fresh machine:
#   make run    the main job: the CPU tutorial training on the embedded data (about 4 minutes);
#               a second `make run` resumes / re-evaluates the same run instead of overwriting it
#   make test   the linter, the formatter check, the whole test suite and every notebook (what CI runs,
#               through .ci/run)
PYTHON ?= python3
VENV := .venv
STAMP := $(VENV)/.installed

.PHONY: run test env format clean

$(STAMP): pyproject.toml constraints-ci.txt
	$(PYTHON) -m venv $(VENV)
	$(VENV)/bin/python -m pip install --quiet -c constraints-ci.txt -e ".[test]"
	touch $(STAMP)

env: $(STAMP)

RUN_DIR ?= runs/tutorial

# a folder holding any run file is resumed (train refuses to overwrite it; see dr.training.train.RUN_RECORD)
run: $(STAMP)
	@resume=; for f in config.json checkpoint.pt train_log.jsonl metrics.json routes.json; do \
		if [ -e "$(RUN_DIR)/$$f" ]; then resume=--resume; fi; \
	done; \
	$(VENV)/bin/python -m dr train --out $(RUN_DIR) $$resume

# the linter and the formatter first (configured in pyproject.toml), then every test and notebook;
# CI=true: the notebooks take their fast_run settings (nbval executes each one at its defaults)
test: $(STAMP)
	$(VENV)/bin/ruff check dr tests data_scripts
	$(VENV)/bin/ruff format --check dr tests data_scripts
	CI=true $(VENV)/bin/python -m pytest -q tests notebooks --nbval-lax

# rewrite the code in the formatter's style and apply the linter's safe fixes
format: $(STAMP)
	$(VENV)/bin/ruff format dr tests data_scripts
	$(VENV)/bin/ruff check --fix dr tests data_scripts

clean:
	rm -rf $(VENV) *.egg-info
