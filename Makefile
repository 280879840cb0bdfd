# `make demo` and `make test` each create .venv when it is missing, install
# t2c with the pinned constraints, and run.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed

.PHONY: demo test install clean

$(STAMP): pyproject.toml constraints.txt
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -c constraints.txt -e '.[dev]'
	touch $(STAMP)

install: $(STAMP)

demo: $(STAMP)
	$(PY) examples/tiny_moe_transformer.py --out examples/build/tiny_moe.pt
	$(VENV)/bin/t2c inspect examples/build/tiny_moe.pt --trust-model

test: $(STAMP)
	HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1 $(PY) -m pytest -q -p no:cacheprovider tests

clean:
	rm -rf $(VENV) examples/build
