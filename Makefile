# Two entry points for a fresh machine with only Python:
#   make demo   builds the embedded demo data if missing, reproduces every seed's claim at the quick scale
#   make test   runs the test suite
# Both first install the pinned dependencies into .venv (once; again only when pyproject.toml changes).

PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed-$(shell $(PYTHON) -c "import hashlib;print(hashlib.sha256(open('pyproject.toml','rb').read()).hexdigest()[:12])")
DEMO_DATA := data/demo
DEMO_REPORT := reports/reproduce_quick

.PHONY: venv demo test bench

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --disable-pip-version-check -e '.[test]'
	rm -f $(VENV)/.installed-*
	touch $@

venv: $(STAMP)

$(DEMO_DATA)/brats/name_mapping.csv: | venv
	$(PY) scripts/make_demo_data.py --out_dir $(DEMO_DATA)

demo: venv $(DEMO_DATA)/brats/name_mapping.csv
	$(PY) scripts/reproduce.py --scale quick --data_dir $(DEMO_DATA) --out_dir $(DEMO_REPORT)
	@echo "report: $(DEMO_REPORT)/index.html (one verdict per seed claim; each comparison's report linked)"

test: venv
	$(PY) -m pytest

bench: venv
	$(PY) scripts/bench_seams.py
