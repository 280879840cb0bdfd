# `make demo` and `make test` each create .venv when it is missing, install
# t2c with the pinned constraints, and run.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed

.PHONY: demo demo-moe test fuzz install clean

$(STAMP): pyproject.toml constraints.txt
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -c constraints.txt -e '.[dev]'
	touch $(STAMP)

install: $(STAMP)

# The example pickles its module, whose class lives in examples/: the repo root
# must be importable to load it, as for any pickled torch module.
demo: $(STAMP)
	$(PY) examples/tiny_moe_transformer.py --out examples/build/tiny_moe.pt
	PYTHONPATH=$(CURDIR) $(VENV)/bin/t2c compile examples/build/tiny_moe.pt --trust-model -O1 -o examples/build/tiny_moe
	PYTHONPATH=$(CURDIR) $(VENV)/bin/t2c inspect examples/build/tiny_moe/model.t2c --format dot -o examples/build/tiny_moe.dot

# The DeepSeekMoE-style decoder: its torch.where / index_add_ expert loop is lifted to one
# experts op (-O1), which sparsify-moe runs on each expert's own tokens; validated against eager.
demo-moe: $(STAMP)
	$(VENV)/bin/t2c compile examples/deepseek_moe.py:build -O1 -o examples/build/deepseek_moe

test: $(STAMP)
	HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1 $(PY) -m pytest -q -p no:cacheprovider tests

# The differential fuzzer at length (tests/fuzz/): fresh random models, pipelines and targets;
# each new failure is shrunk and saved as tests/fuzz/failures/<hash>.json (rerun it with
# `.venv/bin/python tests/fuzz/reproduce.py FILE`). T2C_FUZZ_EXAMPLES sets examples per round.
fuzz: $(STAMP)
	HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1 $(PY) tests/fuzz/reproduce.py --fuzz --examples $${T2C_FUZZ_EXAMPLES:-2000}

clean:
	rm -rf $(VENV) examples/build
