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

# System packages: open3d's libraries (libgl1, libegl1, libusb-1.0-0, libx11-6), Chromium for the report's
# headless check, and SLURM for tests/test_slurm.py (a single-node cluster that tests/slurm/local_cluster.py
# starts; slurmdbd + MariaDB because sacct needs the accounting database). Best effort: without root or
# apt, the tests that need them are skipped with the reason.
SLURM_PACKAGES := munge slurmctld slurmd slurm-client slurmdbd mariadb-server
system-deps:
	@if [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null && ! command -v chromium >/dev/null; then \
		apt-get update -qq && apt-get install -y -qq chromium libgl1 libegl1 libusb-1.0-0 libx11-6 >/dev/null || true; fi
	@missing=$$(for p in $(SLURM_PACKAGES); do dpkg-query -W -f='$${Status}\n' $$p 2>/dev/null | grep -q 'ok installed' || echo $$p; done); \
	if [ -n "$$missing" ] && [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null; then \
		echo "installing for the SLURM test: $$missing"; \
		{ apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends $$missing >/dev/null; } \
			|| echo "could not install $$missing: tests/test_slurm.py will be skipped"; fi

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
