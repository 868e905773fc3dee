# vimi: `make run` and `make test` work on a fresh machine with nothing but the repo and Python 3.11.
#
# Two environments (docs/operations.md, "Two environments"):
#   .venv      the project: vimi, dagster, mlflow, torch, ...   (antlr4-python3-runtime 4.13, for dagster)
#   .venv-dvc  the DVC tool                                     (antlr4-python3-runtime 4.9, for dvc's hydra)
# `.venv/bin/dvc` links to the tool, so with .venv on PATH both `vimi` and `dvc` work.
# Each is built once; a stamp file makes a second call install nothing.

SHELL := /bin/bash
.SHELLFLAGS := -eu -o pipefail -c
PYTHON ?= python3.11
PIP_VERSION := 26.3
VENV := .venv
DVC_VENV := .venv-dvc
STAMP := $(VENV)/.vimi-installed
DVC_STAMP := $(DVC_VENV)/.vimi-installed

export PATH := $(CURDIR)/$(VENV)/bin:$(PATH)
export DAGSTER_HOME := $(CURDIR)/.dagster
export MLFLOW_TRACKING_URI ?= sqlite:///$(CURDIR)/mlflow/mlflow.db
# Nothing phones home; no model hub is reachable here.
export DAGSTER_DISABLE_TELEMETRY := 1
export GX_ANALYTICS_ENABLED := false
export MLFLOW_DISABLE_TELEMETRY := true
export DO_NOT_TRACK := true
export HF_HUB_OFFLINE := 1
export TRANSFORMERS_OFFLINE := 1

DAGSTER_PORT ?= 3000
MLFLOW_PORT ?= 5000
SERVE_PORT ?= 5001
PYTEST_ARGS ?=

.PHONY: help setup run test lint ui mlflow-ui serve repro bench lock clean dvc.yaml docs/lineage.svg java

help:
	@echo "make run        set up, then materialize the whole pipeline (tiny profile, CPU)"
	@echo "make test       set up, then lint and run the test suite (slow end-to-end tests included)"
	@echo "make lint       ruff: lint and format check (ruff format . and ruff check --fix . repair most of it)"
	@echo "make ui         Dagster UI on http://127.0.0.1:$(DAGSTER_PORT)"
	@echo "make mlflow-ui  MLflow UI on http://127.0.0.1:$(MLFLOW_PORT) (sqlite store in mlflow/)"
	@echo "make serve      the registry's @champion behind mlflow models serve on http://127.0.0.1:$(SERVE_PORT)"
	@echo "make repro      dvc repro: the same pipeline, driven by DVC (and recorded in Dagster)"
	@echo "make bench      vimi bench memory --json → benchmarks/memory.json"
	@echo "make dvc.yaml   write dvc.yaml (and make docs/lineage.svg the graph's picture) from the step map"

setup: $(STAMP) $(DVC_STAMP)

$(STAMP): pyproject.toml requirements/project-lock.txt
	@command -v $(PYTHON) >/dev/null || { echo "error: $(PYTHON) not found: vimi needs Python 3.11 (make PYTHON=/path/to/python3.11)"; exit 1; }
	@test -x $(VENV)/bin/python || $(PYTHON) -m venv $(VENV)
	$(VENV)/bin/python -m pip install --quiet --disable-pip-version-check pip==$(PIP_VERSION)
	@# torch and torchvision first, alone: they come from local disk here (a CUDA build that runs on CPU).
	$(VENV)/bin/python -m pip install --quiet -c requirements/project-lock.txt torch torchvision
	$(VENV)/bin/python -m pip install --quiet -c requirements/project-lock.txt -e '.[dev]'
	@touch $@

$(DVC_STAMP): requirements/dvc-tool-lock.txt | $(STAMP)
	@test -x $(DVC_VENV)/bin/python || $(PYTHON) -m venv $(DVC_VENV)
	$(DVC_VENV)/bin/python -m pip install --quiet --disable-pip-version-check pip==$(PIP_VERSION)
	$(DVC_VENV)/bin/python -m pip install --quiet -r requirements/dvc-tool-lock.txt
	ln -sf ../../$(DVC_VENV)/bin/dvc $(VENV)/bin/dvc
	@touch $@

run: setup
	dagster asset materialize -m orchestration.definitions --select '*'
	@echo
	@vimi status
	@echo "Browse it: make ui (Dagster) · make mlflow-ui (MLflow)"

# The UI tests drive a real headless Chromium: Debian's package (as root, the way CI runs).
CHROMIUM := /usr/bin/chromium
$(CHROMIUM):
	@if [ "$$(id -u)" != 0 ] || ! command -v apt-get >/dev/null; then \
	  echo "error: the UI tests need Chromium at $(CHROMIUM): install Debian's chromium package (apt-get install chromium)"; exit 1; fi
	apt-get update -qq
	DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends chromium >/dev/null

test: lint $(CHROMIUM)
	python -m pytest $(PYTEST_ARGS)

lint: setup
	ruff check .
	ruff format --check .

ui: setup
	dagster dev -m orchestration.definitions -h 127.0.0.1 -p $(DAGSTER_PORT)

mlflow-ui: setup
	@mkdir -p mlflow/artifacts
	mlflow ui --backend-store-uri $(MLFLOW_TRACKING_URI) --default-artifact-root $(CURDIR)/mlflow/artifacts \
		--host 127.0.0.1 --port $(MLFLOW_PORT)

serve: setup
	mlflow models serve -m models:/vimi-video-generator@champion --env-manager local -h 127.0.0.1 -p $(SERVE_PORT)

# dvc repro, then the stages it ran recorded in Dagster (orchestration/dvc_record.py): one record for both.
repro: setup
	dvc repro
	python -m orchestration.dvc_record sync

# dvc.yaml and the lineage picture follow from the step map; a test checks the committed files are current.
dvc.yaml: setup
	vimi dvc-yaml

docs/lineage.svg: setup
	vimi lineage-svg

bench: setup
	vimi bench memory --json

# vimi's Java classes for Lucene (the batch searcher and indexer) ship compiled as package data: a user
# needs no JDK. Rebuild the jar after editing a source; Debian's JDK 17 compiles them
# (`apt-get install openjdk-17-jdk-headless`), Anserini's Java 21+ runtime runs them.
JAVA_SRC := $(wildcard vimi/retrieval/java/io/vimi/retrieval/*.java)
LUCENE_JAR := vimi/retrieval/vimi-lucene.jar
java: $(LUCENE_JAR)

$(LUCENE_JAR): $(JAVA_SRC) | setup
	rm -rf build/java && mkdir -p build/java/io/vimi/retrieval
	javac --release 17 -Xlint:all -Werror -d build/java \
	  -cp "$$($(VENV)/bin/python -c 'from vimi.retrieval.java import anserini_jar; print(anserini_jar())')" $(JAVA_SRC)
	for src in $(JAVA_SRC); do sha256sum $$src | cut -d' ' -f1 > build/java/io/vimi/retrieval/$$(basename $$src).sha256; done
	jar --create --file $@ --date 2026-01-01T00:00:00Z -C build/java .

# Refresh the whole-tree pins after changing pyproject.toml's dependencies.
lock: setup
	{ echo "# Whole-tree pins of the project environment (.venv), from 'make lock'. Used as pip constraints."; \
	  $(VENV)/bin/pip freeze --exclude-editable | grep -v '^-e'; } > requirements/project-lock.txt
	{ echo "# Whole-tree pins of the DVC tool environment (.venv-dvc), from 'make lock'. DVC's hydra needs"; \
	  echo "# antlr4-python3-runtime 4.9.x, dagster 4.13.x: the two cannot share one environment."; \
	  $(DVC_VENV)/bin/pip freeze; } > requirements/dvc-tool-lock.txt

clean:
	rm -rf data/world data/*.lance data/bm25 reports/validation reports/*.json
