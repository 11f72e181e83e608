# The two commands of the README: `make demo` and `make test`. Both create or reuse .venv.
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed

.PHONY: demo test bench nano clean

$(STAMP): requirements.in requirements.lock setup.py
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	# torch first and pinned: an unpinned torch pulls the newest CUDA build and GBs of packages.
	$(BIN)/python -m pip install --quiet torch==2.13.0
	$(BIN)/python -m pip install --quiet -c requirements.lock -r requirements.in
	$(BIN)/python -m pip install --quiet --no-deps --no-build-isolation -e .
	touch $@

demo: $(STAMP)
	$(BIN)/python -m sharpdepth_ros.demo --out out/demo

test: $(STAMP)
	$(BIN)/python -m pytest -q test

# Retrains the embedded small models from nothing (72 min measured on 2 idle CPU cores) and writes
# bench/NANO_REPORT.md.
nano: $(STAMP)
	$(BIN)/python train/nano/run_all.py

# Benchmarks print a table and a JSON line each (CPU: small configs; full size on a CUDA GPU). Each
# first says about how long it will take; `make bench QUICK=1` runs each small (a check, not results).
# Times on 2 CPU cores: README ("make bench").
bench: export QUICK := $(QUICK)
bench: $(STAMP)
	$(BIN)/python bench/synthetic.py
	$(BIN)/python bench/pointcloud.py
	$(BIN)/python bench/cpu.py
	$(BIN)/python bench/train_step.py
	$(BIN)/python bench/pipeline.py
	$(BIN)/python bench/vae.py
	$(BIN)/python bench/temporal.py
	$(BIN)/python bench/speed_accuracy.py

clean:
	rm -rf $(VENV) build install log out .pytest_cache
