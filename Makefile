# Two entry points: `make demo` (set up, then run the main job) and `make test` (set up, then
# lint and run the whole suite). Set-up happens once: the stamp file is newer than pyproject.toml.
PYTHON ?= python3
VENV := .venv
STAMP := $(VENV)/.installed

.PHONY: demo test setup lint bench clean reproduce

setup: $(STAMP)

$(STAMP): pyproject.toml
	test -x $(VENV)/bin/python || $(PYTHON) -m venv $(VENV)
	$(VENV)/bin/python -m pip install --quiet --upgrade pip
	$(VENV)/bin/python -m pip install --quiet -e '.[dev]'
	touch $(STAMP)

# The main job: the manifold EM of Figure 3 at quick scale, both E-steps (33 min on 2 cores with no other
# job; far longer when another job shares the cores). It works in results/fig3_quick_run/ and publishes
# results/fig3_quick.* together when it ends; --resume: a second run continues a killed one from
# its last complete EM iteration, or re-reports a finished one.
demo: $(STAMP)
	$(VENV)/bin/python reproduce/fig3.py --quick --resume

# Every quick result of results/ and the seconds-long paper figures, one item after the other
# (over an hour on 2 cores: the README has the measured time); a second run continues the long
# ones where they stopped.
reproduce: $(STAMP)
	$(VENV)/bin/python -m reproduce all

lint: $(STAMP)
	$(VENV)/bin/ruff format --check .
	$(VENV)/bin/ruff check .

test: lint
	$(VENV)/bin/python -m pytest -q

bench: $(STAMP)
	$(VENV)/bin/python -m bench.mmps_cost

clean:
	rm -rf $(VENV) build *.egg-info
