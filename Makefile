# The two commands of the README:  `make book`  and  `make test`.
# Both create the project-local virtual environment .venv on first use and reuse it afterwards.

PYTHON ?= python3.11
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
# Prebuilt torch-scatter/torch-cluster wheels, when the folder exists (pip otherwise compiles them from source).
WHEELHOUSE ?= ../shared/wheelhouse
ifneq ($(wildcard $(WHEELHOUSE)/*.whl),)
ifeq ($(findstring $(abspath $(WHEELHOUSE)),$(PIP_FIND_LINKS)),)
export PIP_FIND_LINKS := $(strip $(PIP_FIND_LINKS) $(abspath $(WHEELHOUSE)))
endif
endif
NBVAL := -p no:cacheprovider --nbval-lax --nbval-current-env --nbval-sanitize-with tests/nbval_sanitize.cfg --nbval-cell-timeout=600
NOTEBOOKS ?= $(sort $(wildcard tutorials/[0-9][0-9]_*.py))

.PHONY: book test execute venv browser clean

book: $(STAMP)  ## build the book into _build/html (offline, warnings are errors)
	$(BIN)/jupyter-book build . --warningiserror --keep-going
	@echo "The book is at $(abspath _build/html/index.html)"

test: $(STAMP) browser  ## unit tests, notebook checks, nbval over every chapter, the book build
	@$(BIN)/python -m pytest tests tutorials tpconv_lite --doctest-modules --ignore-glob="tutorials/*.py" $(NBVAL); status=$$?; \
	if [ $$status -eq 5 ]; then echo "pytest collected no tests: treated as a failure"; exit 1; fi; exit $$status

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
	$(BIN)/python -m pip install --quiet -c constraints.txt --no-build-isolation torch-scatter torch-cluster
	$(BIN)/python -m pip install --quiet -c constraints.txt -e ".[book,test,pyg]"
	touch $(STAMP)

clean:
	rm -rf _build $(VENV)
