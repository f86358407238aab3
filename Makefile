# lidarlift: two commands on a fresh machine. `make demo` runs the default DAG; `make test` runs the tests.
PY ?= python3.11
VENV ?= .venv
BIN := $(VENV)/bin
CORES ?= 2
STAMP := $(VENV)/.installed

.PHONY: install system-deps demo test lint report bench clean-results

$(BIN)/python:
	$(PY) -m venv $(VENV)

# Everything pinned in constraints.txt. opencv-contrib goes in last: it and opencv-python-headless
# (pulled by nuscenes-devkit) both write cv2/, and only contrib has cv2.ximgproc (SEEDS).
$(STAMP): $(BIN)/python pyproject.toml constraints.txt
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -q -c constraints.txt torch==2.13.0 torchvision==0.28.0
	$(BIN)/pip install -q -c constraints.txt -e '.[test]'
	$(BIN)/pip install -q --force-reinstall --no-deps -c constraints.txt opencv-contrib-python-headless==4.11.0.86
	$(BIN)/python -c "import cv2; cv2.ximgproc.createSuperpixelSEEDS(64, 64, 3, 16, 2)"
	touch $(STAMP)

# System libraries: open3d's (libgl1, libegl1, libusb-1.0-0, libx11-6) and Chromium for the report's
# headless check. Best effort: without root or apt the Chromium test is skipped with its reason.
system-deps:
	@if [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null && ! command -v chromium >/dev/null; then \
		apt-get update -qq && apt-get install -y -qq chromium libgl1 libegl1 libusb-1.0-0 libx11-6 >/dev/null || true; fi

install: $(STAMP)

demo: $(STAMP)
	$(BIN)/snakemake --profile profiles/default --cores $(CORES)
	$(BIN)/snakemake --profile profiles/default --cores $(CORES) --report report.html
	@echo "Report: report.html (open it in a browser); scoreboard: results/summary.json"

test: $(STAMP) system-deps
	$(BIN)/python -m pytest -q -n 2 tests

# Workflow conventions: snakemake's linter, snakefmt formatting, config/README.md current with the schema.
lint: $(STAMP)
	$(BIN)/snakemake --lint
	$(BIN)/snakefmt --check Snakefile rules/
	$(BIN)/lidarlift config-docs --check

bench: $(STAMP)
	for b in bench/bench_*.py; do $(BIN)/python $$b || exit 1; done

clean-results:
	rm -rf results/* .snakemake
