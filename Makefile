# Two entry points for a fresh machine (see README): `make benchmark` and `make test`.
# Both create .venv on first use and reuse it afterwards (re-installing only when pyproject.toml changes).

PYTHON ?= python3
VENV := .venv
STAMP := $(VENV)/.installed
DENSE_STAMP := $(VENV)/.dense-installed
CORES ?= all
# A folder with a prebuilt mmcv wheel (see tools/install_dense.sh); pip's PIP_FIND_LINKS works too.
MMCV_WHEELS ?= $(wildcard ../shared/wheels)

.PHONY: benchmark test lint clean-results dense browser

# Installers are quiet: one line per step, pip's output in .venv/install.log, its end printed on failure.
$(STAMP): pyproject.toml
	@echo "installing the project into $(VENV) (log: $(VENV)/install.log)"
	@test -x $(VENV)/bin/python || $(PYTHON) -m venv $(VENV)
	@$(VENV)/bin/python -m pip install --quiet -e ".[test]" >$(VENV)/install.log 2>&1 \
		|| { tail -n 30 $(VENV)/install.log; echo "pip install failed: see $(VENV)/install.log"; exit 1; }
	@touch $(STAMP)

# The dense-prediction stack (mmcv 2.1.0 with compiled ops, mmdet, mmseg): a prebuilt mmcv wheel when pip
# finds one, else a source build (~14 min on 2 cores).
$(DENSE_STAMP): $(STAMP) tools/install_dense.sh
	@INSTALL_LOG=$(VENV)/install_dense.log tools/install_dense.sh --python $(VENV)/bin/python $(if $(MMCV_WHEELS),--wheels $(MMCV_WHEELS))
	@touch $(DENSE_STAMP)

## Install the dense-prediction stack into .venv (also done by benchmark and test)
dense: $(DENSE_STAMP)

## Install (once), then run the embedded default benchmark -> reports/index.html
benchmark: $(STAMP) $(DENSE_STAMP)
	@$(VENV)/bin/snakemake --cores $(CORES)

## Debian's chromium for the report's browser test (returns at once when it is installed)
browser:
	tools/install_browser.sh

## Install (once), then run the test suite (unit tests, Snakemake lint, end-to-end smoke run, browser check)
## on every core (pytest-xdist, see pyproject.toml). `make -j2 test` (.ci/run) runs chromium's apt install
## beside the pip installs.
test: $(STAMP) $(DENSE_STAMP) browser
	$(VENV)/bin/python -m pytest -q

lint: $(STAMP)
	$(VENV)/bin/snakemake --lint

clean-results:
	rm -rf results/*/ reports/index.html logs .snakemake/log
