# Each target sets itself up: `make run` and `make test` work on a fresh clone.
VENV   ?= .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.installed
SUITE  ?= simulations/configs/suite_default.yaml
export HF_HUB_OFFLINE ?= 1
export RAY_TMPDIR ?= /tmp/fedgen-ray
export MPLBACKEND ?= Agg

.PHONY: install run test test-fast compare compare-ci compare-diffusion compare-baselines bench deploy-up deploy-down lint clean

install: $(STAMP)

$(STAMP): pyproject.toml
	test -x $(PY) || python3 -m venv $(VENV)
	$(PY) -m pip install -q -e '.[dev]'
	touch $(STAMP)

run: install   ## the default strategy comparison on the embedded benchmark
	@mkdir -p $(RAY_TMPDIR)
	$(VENV)/bin/fedgen compare $(SUITE) --out runs/compare-default

compare: install   ## make compare SUITE=path/to/suite.yaml
	@mkdir -p $(RAY_TMPDIR)
	$(VENV)/bin/fedgen compare $(SUITE)

compare-ci: install
	@mkdir -p $(RAY_TMPDIR)
	$(VENV)/bin/fedgen compare simulations/configs/suite_ci.yaml --out runs/compare-ci --check
	$(VENV)/bin/fedgen compare simulations/configs/suite_ci_diffusion.yaml --out runs/compare-ci-diffusion --check

compare-diffusion: install   ## federated diffusion on digits, sorted by FID (about 80 min on 2 CPU cores)
	@mkdir -p $(RAY_TMPDIR)
	$(VENV)/bin/fedgen compare simulations/configs/suite_diffusion.yaml --out runs/compare-diffusion

compare-baselines: install   ## FedAvg, FedDyn, SCAFFOLD, MOON, FedAdam over 3 seeds, by domain and Dirichlet(0.1)
	@mkdir -p $(RAY_TMPDIR)
	$(VENV)/bin/fedgen compare simulations/configs/suite_baselines.yaml --out runs/compare-baselines
	$(VENV)/bin/fedgen compare simulations/configs/suite_baselines_dirichlet.yaml --out runs/compare-baselines-dirichlet

bench: install   ## figures into bench/results/<name>.json: make bench [BENCH="overhead scale ..."]
	@mkdir -p $(RAY_TMPDIR)
	$(VENV)/bin/fedgen bench $(BENCH) --out bench/results

test: install
	@mkdir -p $(RAY_TMPDIR)
	$(PY) -m pytest -q --durations=15

test-fast: install   ## everything but the end-to-end Ray runs
	$(PY) -m pytest -q -m "not slow"

NODES ?= 2
deploy-up: install   ## a SuperLink and $(NODES) SuperNodes on this machine, TLS + node authentication
	$(VENV)/bin/fedgen deploy up --nodes $(NODES)

deploy-down:
	$(VENV)/bin/fedgen deploy down

lint: install
	$(VENV)/bin/ruff check .

clean:
	rm -rf runs .pytest_cache
