# `make demo` and `make test` are the two commands a newcomer types (see README.md).
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed

.PHONY: install demo test test-fast bench clean

install: $(STAMP)

$(STAMP): pyproject.toml scripts/install.sh
	test -x $(PY) || python3 -m venv $(VENV)
	PYTHON=$(PY) bash scripts/install.sh --dev
	touch $(STAMP)

demo: install
	$(VENV)/bin/explainrec demo

test: install
	$(PY) -m pytest -q

test-fast: install
	$(PY) -m pytest -q -m "not embedded and not realdata"

bench: install
	$(PY) benchmarks/run_all.py

clean:
	rm -rf $(VENV) .pytest_cache
