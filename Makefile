# mailasync: one task runner for learners, instructors and CI.
#   make lab     set up, find a broker, start JupyterLab on 127.0.0.1 in notebooks/
#   make test    set up, find a broker, run lint, tests and every notebook (nbval)
#   make inbox / make worker / make app    the article's terminals, one each
#   make flower  Celery's live monitor on 127.0.0.1:5555
#   make dead-letters / make replay    the mails that failed for good; send them again
#   make bench   the benchmarks (not part of make test)
#   make mutants   remove each guarantee in a copy: a named test must fail (not in make test)
#   make notebooks   re-run every notebook in place, for committing its outputs

PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
PY := $(BIN)/python
JUPYTER_PORT ?= 8888
FLOWER_PORT ?= 5555
INBOX_DIR ?= inbox
# Notebooks run in notebooks/ and import the kit's modules from the repository root.
export PYTHONPATH := $(CURDIR)$(if $(PYTHONPATH),:$(PYTHONPATH))
# Jupyter refuses to run as root unless told (CI and containers run as root).
ALLOW_ROOT := $(if $(filter 0,$(shell id -u)),--allow-root)
# Every recipe line that talks to Celery first picks a broker (RabbitMQ, else embedded).
WITH_BROKER := eval "$$($(PY) -m kit.broker)" &&
# pytest exits 5 when a stage collects nothing (e.g. no browser): say so, don't fail.
define pytest_stage
	$(WITH_BROKER) $(BIN)/pytest $(1); rc=$$?; \
	if [ $$rc -eq 5 ]; then echo "make: no tests collected for: $(1)"; rc=0; fi; exit $$rc
endef

.PHONY: setup lab test test-unit test-notebooks notebooks lint inbox worker app flower dead-letters replay bench mutants clean

setup: $(VENV)/.installed

$(VENV)/.installed: requirements.txt
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --disable-pip-version-check -r requirements.txt
	touch $@

lab: setup
	@echo "JupyterLab: open the http://127.0.0.1:$(JUPYTER_PORT)/lab?token=... URL printed below."
	$(WITH_BROKER) exec $(BIN)/jupyter lab --no-browser --ip=127.0.0.1 --port=$(JUPYTER_PORT) \
		--ServerApp.root_dir=notebooks $(ALLOW_ROOT)

test: setup lint test-unit test-notebooks

lint: setup
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/actionlint .github/workflows/*.yml

test-unit: setup
	$(call pytest_stage,tests)

test-notebooks: setup
	$(call pytest_stage,--nbval-lax --nbval-current-env --nbval-sanitize-with notebooks/sanitize.cfg -p no:python notebooks)

# Re-run every notebook in place for committing (solution cells saved without outputs).
notebooks: setup
	$(WITH_BROKER) $(PY) -m kit.lab.publish notebooks/*.ipynb

inbox: setup
	$(PY) -m kit.inbox --host 127.0.0.1 --port 8025 --dir $(INBOX_DIR)

worker: setup
	$(WITH_BROKER) exec $(BIN)/celery -A mailasync worker --loglevel=INFO

app: setup
	$(WITH_BROKER) exec $(PY) app.py

flower: setup
	$(WITH_BROKER) exec $(BIN)/celery -A mailasync flower --address=127.0.0.1 --port=$(FLOWER_PORT)

dead-letters: setup
	$(WITH_BROKER) $(PY) -m kit.dead_letters

# make replay (all of them), or make replay TASKS='<task id> ...'
replay: setup
	$(WITH_BROKER) $(PY) -m kit.dead_letters --replay $(TASKS)

bench: setup
	$(WITH_BROKER) $(PY) -m bench

# make mutants (all of them), or make mutants MUTANTS='ledger-sent json-only'
mutants: setup
	$(WITH_BROKER) $(PY) tests/mutants.py $(MUTANTS)

clean:
	rm -rf .mailasync .pytest_cache .ruff_cache
