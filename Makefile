# Two commands do everything on a fresh machine with python3 and make: `make demo`, `make test`.
PY ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: demo test bench clean tools

$(STAMP): pyproject.toml
	$(PY) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -e '.[test]'
	touch $(STAMP)

demo: $(STAMP)
	$(BIN)/pbxpipe demo

# promtool (Debian package prometheus) checks the metrics endpoint and the alert rules; amtool
# (prometheus-alertmanager) checks the Alertmanager configuration and its routes; chromium is the
# headless browser the panel page's tests drive (through Playwright, installed by pip).
tools:
	@command -v promtool >/dev/null && command -v amtool >/dev/null && test -x /usr/bin/chromium || \
	  (apt-get update && apt-get install -y --no-install-recommends prometheus prometheus-alertmanager chromium)

test: $(STAMP) tools
	$(BIN)/python -m pytest -q
	$(BIN)/mypy

clean:
	rm -rf $(VENV) .pytest_cache .mypy_cache build *.egg-info data

# Figures, not tests: framing, each stage in process, then through Kafka and end to end (bench/).
bench: $(STAMP)
	$(BIN)/python -m bench --calls 5000 --kafka --rate 500 --seconds 60
