# The two commands of the README:  `make book`  and  `make test`.
# Both create the project-local virtual environment .venv on first use and reuse it afterwards.

PYTHON ?= python3.11
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
# torch-scatter/torch-cluster are optional (the package falls back on pure torch) and never compiled by the setup:
# it installs them only from prebuilt wheels, found in PIP_FIND_LINKS, WHEELHOUSE or PYG_INDEX. `make pyg` compiles them.
WHEELHOUSE ?= ../shared/wheelhouse
# PyG's wheel index for the installed torch ({torch} becomes e.g. 2.13.0+cpu or 2.14.0+cu130); PYG_INDEX= skips it.
PYG_INDEX ?= https://data.pyg.org/whl/torch-{torch}.html
PYG_TIMEOUT ?= 10
# make colab-check: a fresh venv that plays Colab, with pip's torch (not ours) and Colab's preinstalled packages.
COLAB_VENV ?= _build/colab-venv
COLAB_TORCH ?= torch==2.14.1
COLAB_PREINSTALLED ?= numpy matplotlib ipykernel
COLAB_CHAPTERS ?= tutorials/01_irreps.ipynb tutorials/09_score_model.ipynb
ifneq ($(wildcard $(WHEELHOUSE)/*.whl),)
ifeq ($(findstring $(abspath $(WHEELHOUSE)),$(PIP_FIND_LINKS)),)
export PIP_FIND_LINKS := $(strip $(PIP_FIND_LINKS) $(abspath $(WHEELHOUSE)))
endif
endif
NBVAL := -p no:cacheprovider --nbval-lax --nbval-current-env --nbval-sanitize-with tests/nbval_sanitize.cfg --nbval-cell-timeout=600
NOTEBOOKS ?= $(sort $(wildcard tutorials/[0-9][0-9]_*.py))

.PHONY: book test test-slow test-torch gpu-check execute venv browser clean pyg pyg-wheels colab-check pretrained pretrained-samples

book: $(STAMP)  ## build the book into _build/html (offline, warnings are errors)
	$(BIN)/jupyter-book build . --warningiserror --keep-going
	@echo "The book is at $(abspath _build/html/index.html)"

test: $(STAMP) browser  ## unit tests, notebook checks, nbval over every chapter, the book build
	@$(BIN)/python -m pytest tests tutorials tpconv_lite --doctest-modules --ignore-glob="tutorials/*.py" $(NBVAL); status=$$?; \
	if [ $$status -eq 5 ]; then echo "pytest collected no tests: treated as a failure"; exit 1; fi; exit $$status

test-slow: $(STAMP)  ## the long checks marked slow (training runs, the torchrun restart test)
	$(BIN)/python -m pytest tests -m slow

test-torch: $(STAMP)  ## unit tests and nbval over every chapter again, torch-scatter/torch-cluster hidden: pure torch
	@PYTHONPATH=$(abspath tests/without_pyg)$${PYTHONPATH:+:$$PYTHONPATH} TPCONV_GRAPH_BACKEND=torch \
	  $(BIN)/python -m pytest tests tutorials $(NBVAL) \
	  --ignore=tests/test_book.py --ignore=tests/test_browser.py; status=$$?; \
	if [ $$status -eq 5 ]; then echo "pytest collected no tests: treated as a failure"; exit 1; fi; exit $$status

gpu-check: $(STAMP)  ## on a CUDA machine: nbval over every chapter, then the benchmark on the GPU (fails without one)
	@$(BIN)/python -c "import sys, torch; sys.exit(None if torch.cuda.is_available() else \
	  f'make gpu-check needs a CUDA GPU, and torch {torch.__version__} sees none (torch.cuda.is_available() is False)')"
	$(BIN)/python -m pytest tutorials --ignore-glob="tutorials/*.py" $(NBVAL) --durations=0
	$(BIN)/python -m tpconv_lite.bench --quick --device cuda --no-progress

execute: $(STAMP)  ## regenerate each chapter's .ipynb from its .py and run it top to bottom in a clean kernel
	@for py in $(NOTEBOOKS); do \
	  nb=$${py%.py}.ipynb; start=$$(date +%s); \
	  $(BIN)/jupytext --quiet --to ipynb --output $$nb $$py && \
	  log=$$(mktemp); \
	  (cd tutorials && ../$(BIN)/jupyter execute --inplace --timeout=600 $$(basename $$nb) 2>$$log) || \
	    { cat $$log; rm -f $$log; exit 1; }; rm -f $$log; \
	  echo "executed $$nb in $$(( $$(date +%s) - start )) s"; \
	done

venv: $(STAMP)

browser:  ## Debian's chromium and chromedriver for tests/test_browser.py (installed when missing and run as root)
	@if ! command -v chromium >/dev/null || ! command -v chromedriver >/dev/null; then \
	  if [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null; then \
	    apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium chromium-driver >/dev/null; \
	  else echo "chromium/chromedriver missing and not root: tests/test_browser.py will be skipped"; fi; \
	fi

$(STAMP): pyproject.toml constraints.txt
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade "pip>=24" "setuptools>=68" wheel
	$(BIN)/python -m pip install --quiet -c constraints.txt torch==2.13.0
	$(BIN)/python -m pip install --quiet -c constraints.txt -e ".[book,test]"
	@$(MAKE) --no-print-directory pyg-wheels
	touch $(STAMP)

pyg-wheels:  ## torch-scatter/torch-cluster from prebuilt wheels that import with the installed torch, else nothing
	@torch=$$($(BIN)/python -c "import torch; print(torch.__version__)"); \
	tag=$$($(BIN)/python -c "import torch; v = torch.__version__.split('+')[0].split('.'); \
	  print('.'.join(v[:2]) + '.0+' + ('cu' + torch.version.cuda.replace('.', '') if torch.version.cuda else 'cpu'))"); \
	index=$$(echo "$(PYG_INDEX)" | sed "s/{torch}/$$tag/"); \
	if $(BIN)/python -m pip install --quiet --only-binary=:all: -c constraints.txt --retries 0 --timeout $(PYG_TIMEOUT) \
	     $${index:+--find-links "$$index"} torch-scatter torch-cluster >/dev/null 2>&1 \
	   && $(BIN)/python -c "import torch_scatter, torch_cluster" >/dev/null 2>&1; then \
	  echo "torch-scatter and torch-cluster: prebuilt wheels installed (torch $$torch)"; \
	else \
	  $(BIN)/python -m pip uninstall --quiet --yes torch-scatter torch-cluster >/dev/null 2>&1; \
	  echo "No prebuilt torch-scatter/torch-cluster wheels match torch $$torch: tpconv_lite runs on pure torch" \
	       "(same results; 'make pyg' compiles them, about 20 minutes on 2 cores)."; \
	fi

pyg: $(STAMP)  ## compile torch-scatter and torch-cluster from source on purpose (about 20 minutes on 2 cores)
	$(BIN)/python -m pip install -c constraints.txt --no-build-isolation torch-scatter torch-cluster
	$(BIN)/python -c "import torch_scatter, torch_cluster; print('torch-scatter', torch_scatter.__version__, 'torch-cluster', torch_cluster.__version__)"

colab-check: $(COLAB_VENV)/.colab-torch  ## the Colab path: COLAB_TORCH in its own venv, the chapters' own install cell, nbval on COLAB_CHAPTERS
	@$(COLAB_VENV)/bin/python -m pip uninstall --quiet --yes tpconv_lite e3nn torch-scatter torch-cluster pytest nbval 2>/dev/null; \
	start=$$(date +%s); env -u PIP_FIND_LINKS -u PYTHONPATH TPCONV_LITE_SOURCE=file://$(abspath .) \
	  $(COLAB_VENV)/bin/python tests/colab_cell.py $(firstword $(COLAB_CHAPTERS)) && \
	echo "colab-check: the Colab cell ran in $$(( $$(date +%s) - start )) s"
	$(COLAB_VENV)/bin/python -m pip install --quiet pytest nbval  # the checking tools, not part of the Colab setup
	@start=$$(date +%s); (cd $(COLAB_VENV) && env -u PYTHONPATH bin/python -c \
	  "import tpconv_lite, torch; print('colab-check: tpconv_lite from', tpconv_lite.__file__, 'on torch', torch.__version__)"); \
	env -u PYTHONPATH $(COLAB_VENV)/bin/python -m pytest $(NBVAL) $(COLAB_CHAPTERS) && \
	echo "colab-check: nbval on $(COLAB_CHAPTERS) passed in $$(( $$(date +%s) - start )) s"

# The venv that plays Colab, made once (about 5 minutes, 5.7 GB): `rm -rf $(COLAB_VENV)` starts over.
$(COLAB_VENV)/.colab-torch:
	@start=$$(date +%s); rm -rf $(COLAB_VENV) && $(PYTHON) -m venv $(COLAB_VENV) && \
	env -u PIP_FIND_LINKS $(COLAB_VENV)/bin/python -m pip install --quiet "$(COLAB_TORCH)" $(COLAB_PREINSTALLED) && \
	echo "colab-check: $$($(COLAB_VENV)/bin/python -c 'import torch; print("torch", torch.__version__, "CUDA", torch.version.cuda)')" \
	  "and $(COLAB_PREINSTALLED) installed in $$(( $$(date +%s) - start )) s; venv $$(du -sm $(COLAB_VENV) | cut -f1) MB"
	touch $@

# The pretrained model of tpconv_lite/assets (its README): about 85 minutes on 2 CPU cores. The run checkpoints every
# 500 steps, so an interrupted `make pretrained` carries on where it stopped.
PRETRAINED_RUN ?= _build/pretrained
PRETRAINED_TRAIN := --preset small --steps 20000 --crop 0 --train-skew -5 --train-tmin 0.002 \
	--train-band-tmin 0.002 --train-band-tmax 10 --train-band-weight 0.5 --lr 1e-3 --lr-start 0.1 \
	--warmup-dur 200 --constant-dur 6000 --decay-dur 7800 --lr-end 0.1 --threads 2 --no-activation-checkpointing \
	--ckpt-every 500 --eval-every 1000 --eval-chains 10 --no-progress --seed 0

pretrained: $(STAMP)  ## train the pretrained model (about 85 minutes on 2 cores) and copy it and its log into tpconv_lite/assets
	$(BIN)/python -m tpconv_lite.train --out $(PRETRAINED_RUN) $(PRETRAINED_TRAIN) --resume
	cp $(PRETRAINED_RUN)/checkpoint.pt tpconv_lite/assets/pretrained.pt
	cp $(PRETRAINED_RUN)/log.jsonl tpconv_lite/assets/pretrained_log.jsonl

pretrained-samples: $(STAMP)  ## the pretrained model's held-out samples in tpconv_lite/assets (about 2.5 minutes)
	rm -rf tpconv_lite/assets/pretrained_samples
	$(BIN)/torchrun --standalone --nproc_per_node 2 -m tpconv_lite.sample --test --alpha 0.5 --beta 16 --inf-step 1.4 \
	  --alpha-window 1 2 16 --alpha-window 2 inf 0 --threads 1 --no-progress --out tpconv_lite/assets/pretrained_samples

clean:
	rm -rf _build $(VENV)
