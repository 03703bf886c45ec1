# tcpsched: the front door. `make demo` and `make test` work on a fresh clone with Python 3.11+.
PYTHON ?= python3
VENV   ?= .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.installed
RUN    ?= run
COORDINATORS ?= 3
WORKERS ?= 3
SLOTS  ?= 4
POLICY ?= round-robin
PORT   ?= 7001
HTTP_PORT ?= 8001
PYTEST_ARGS ?=
SEEDS  ?= 1000

.PHONY: install test demo cluster restart stop status console bench chaos soak lint clean

# `make restart w2` (or `make restart NAME=w2`): the word after restart is the member's name.
ifeq (restart,$(firstword $(MAKECMDGOALS)))
  NAME ?= $(word 2,$(MAKECMDGOALS))
  ifneq ($(NAME),)
    $(eval $(NAME):;@:)
  endif
endif

install: $(STAMP)

$(STAMP): setup.cfg pyproject.toml
	@$(PYTHON) -c 'import sys; sys.exit(0 if sys.version_info >= (3, 11) else "tcpsched needs Python 3.11 or newer")'
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --disable-pip-version-check --upgrade pip
	$(PY) -m pip install --quiet --disable-pip-version-check -e '.[test]'
	@# An editable install compiles nothing (installing a wheel does): where bytecode is not
	@# written (PYTHONDONTWRITEBYTECODE), every process would compile all of tcpsched at start.
	$(PY) -m compileall -q tcpsched
	@touch $(STAMP)

test: $(STAMP)
	$(PY) -m ruff check --quiet tcpsched tests scripts
	$(PY) -m pytest -q $(PYTEST_ARGS)

lint: $(STAMP)
	$(PY) -m ruff check tcpsched tests scripts
	$(PY) -m mypy tcpsched

demo: $(STAMP)
	$(PY) scripts/demo.py

cluster: $(STAMP)
	$(PY) scripts/cluster.py start --dir $(RUN) --coordinators $(COORDINATORS) --workers $(WORKERS) --slots $(SLOTS) --policy $(POLICY) --port $(PORT) --http-port $(HTTP_PORT)

restart: $(STAMP)
	@test -n "$(NAME)" || { echo "usage: make restart NAME (a member: c1, w2, ...)" >&2; exit 2; }
	$(PY) scripts/cluster.py restart $(NAME) --dir $(RUN)

stop: $(STAMP)
	$(PY) scripts/cluster.py stop --dir $(RUN)

status: $(STAMP)
	$(PY) scripts/cluster.py status --dir $(RUN)

console: $(STAMP)
	$(PY) -m tcpsched.console --coordinators $$($(PY) scripts/cluster.py addresses --dir $(RUN) --port $(PORT) --coordinators $(COORDINATORS))

# The bench extra (Dask distributed, for --compare dask) is installed here, not by `make install`.
bench: $(STAMP)
	$(PY) -m pip install --quiet --disable-pip-version-check -e '.[test,bench]'
	$(PY) scripts/bench.py --coordinators 1,3 --compare dask --repeat 3
	$(PY) scripts/bench_failover.py
	$(PY) scripts/bench_failover.py --leader
	$(PY) scripts/bench_journal.py --seconds 3
	$(PY) scripts/abuse.py

DURATION ?= 60
chaos: $(STAMP)
	$(PY) scripts/chaos.py --duration $(DURATION)

# The seeded cluster simulation over more seeds than CI runs (tests/sim runs 200).
soak: $(STAMP)
	$(PY) -m tcpsched.testing.sim --seeds $(SEEDS)

clean:
	-$(PY) scripts/cluster.py stop --dir $(RUN) 2>/dev/null
	rm -rf $(VENV) $(RUN) tcpsched-data build dist *.egg-info .pytest_cache .ruff_cache .mypy_cache .hypothesis
	find . -name __pycache__ -type d -prune -exec rm -rf {} +
