# Two entry points for a fresh machine (see README): `make benchmark` and `make test`.
# Both create .venv on first use and reuse it afterwards (re-installing only when pyproject.toml changes).

PYTHON ?= python3
VENV := .venv
STAMP := $(VENV)/.installed
CORES ?= all

.PHONY: benchmark test lint clean-results

$(STAMP): pyproject.toml
	test -x $(VENV)/bin/python || $(PYTHON) -m venv $(VENV)
	$(VENV)/bin/python -m pip install --quiet -e ".[test]"
	touch $(STAMP)

## Install (once), then run the embedded default benchmark -> reports/index.html
benchmark: $(STAMP)
	$(VENV)/bin/snakemake --cores $(CORES)
	@echo "report: $(CURDIR)/reports/index.html"

## Install (once), then run the test suite (unit tests, Snakemake lint, end-to-end smoke run)
test: $(STAMP)
	$(VENV)/bin/python -m pytest -q

lint: $(STAMP)
	$(VENV)/bin/snakemake --lint

clean-results:
	rm -rf results/*/ reports/index.html logs .snakemake/log
