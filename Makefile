# Lantern for Python. `make demo` and `make test` work on a fresh machine:
# they create .venv, install the package with its extras, and run.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
JOBS ?= 2

.PHONY: setup demo test test-sanitized bench fuzz clean

$(VENV)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -e '.[test]'
	touch $@

setup: $(VENV)/.installed

demo: setup
	$(PY) -m lantern demo

test: setup
	$(PY) -m pytest -n $(JOBS) tests

# Only the sanitized part of `make test`: the AD and control-flow tests built with LANTERN_DEBUG=1
# (ASan + UBSan, runtime preloaded) and the checks that the mode catches bad code.
test-sanitized: setup
	$(PY) -m pytest tests/test_sanitized.py

bench: setup
	$(PY) benchmarks/run_all.py

# A byte-level Llama (preset small) trained for a few minutes, then a streamed continuation.
LLAMA_STEPS ?= 600
llama: setup
	$(PY) -m lantern llama-train --steps $(LLAMA_STEPS) --out llama.safetensors --plot llama_loss.png
	$(PY) -m lantern llama-generate llama.safetensors --prompt "The "

# Differential fuzzing (docs/RELIABILITY.md): random NumPy-API programs checked against NumPy (a tenth
# of the batches built with ASan and UBSan), and programs with control flow and gradients checked
# against the interpreter and finite differences; every program is also compiled at -O0 and compared.
# Failures are shrunk and saved to tests/fuzz_regressions (replayed by make test).
FUZZ_COUNT ?= 16000
FUZZ_GRAD_COUNT ?= 4000
FUZZ_SEED ?= 1
FUZZ_SANITIZE ?= 0.1
fuzz: setup
	LANTERN_WERROR=1 nice -n 10 $(PY) -m lantern.fuzz --oracle numpy --count $(FUZZ_COUNT) --seed $(FUZZ_SEED) \
		--jobs $(JOBS) --sanitize-share $(FUZZ_SANITIZE) --save-dir tests/fuzz_regressions
	LANTERN_WERROR=1 nice -n 10 $(PY) -m lantern.fuzz --oracle interpreter --count $(FUZZ_GRAD_COUNT) \
		--seed $(FUZZ_SEED) --jobs $(JOBS) --save-dir tests/fuzz_regressions

clean:
	rm -rf $(VENV) build *.egg-info
