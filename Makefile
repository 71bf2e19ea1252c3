# agentguard developer tasks. `make demo` and `make test` are all a fresh machine needs.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
ADAPTERS := $(wildcard adapters/*/pyproject.toml)

.PHONY: install test lint typecheck contracts pytest demo bench hardening fuzz clean

install: $(STAMP)

$(STAMP): pyproject.toml requirements-dev.txt $(ADAPTERS)
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -r requirements-dev.txt -e '.[telemetry,web,notebook,fast,passkeys]' \
		-e 'adapters/langchain[agents]' -e adapters/mcp
	touch $(STAMP)

lint: install
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

typecheck: install
	$(BIN)/mypy agentguard tests examples benchmarks fuzz $(filter-out %.egg-info,$(wildcard adapters/*/agentguard_*))

contracts: install
	$(BIN)/lint-imports

# Fails when branch coverage drops below fail_under in pyproject's [tool.coverage.report].
# The 30 slowest tests are listed at the end: the suite must stay under 10 minutes.
pytest: install
	$(BIN)/python -m pytest --cov --cov-report=term -q --durations=30

test: npm-deps lint typecheck contracts pytest

# npm MCP servers the MCP proxy tests run, pinned in tests/adapters/mcp/npm/package.json,
# and the OpenID Provider the federation tests run (tests/oidc/package.json);
# fetched here so no timed test downloads anything. Without npm those tests skip loudly.
NPM_TESTS := tests/adapters/mcp/npm tests/oidc
.PHONY: npm-deps
npm-deps:
	@if command -v npm >/dev/null 2>&1; then \
		for dir in $(NPM_TESTS); do \
			(cd $$dir && npm ci --no-audit --no-fund --loglevel=error) || exit 1; \
		done; \
	else \
		echo "npm not found: skipping $(NPM_TESTS) (the npm MCP server tests will be skipped)"; \
	fi

demo: install
	$(BIN)/python examples/demo.py

# The README's approval page screenshots, taken by the page's browser test in real
# Chromium (Debian's /usr/bin/chromium) and written to docs/screenshots/.
.PHONY: screenshots
screenshots: install
	AGENTGUARD_SCREENSHOTS=docs/screenshots $(BIN)/python -m pytest -q -rs -p no:cacheprovider \
		tests/test_web_page.py -k chromium

bench: install
	$(BIN)/python benchmarks/run.py
	$(BIN)/python benchmarks/bench_pg.py

# Long loops: the slow-marked tests (crash loop, 100k-call memory, proxy load) and
# the fuzz modules, whose hypothesis profile runs 10-25x more examples here.
hardening: install
	AGENTGUARD_HARDENING=1 $(BIN)/python -m pytest -q -m slow tests
	AGENTGUARD_HARDENING=1 $(BIN)/python -m pytest -q tests/test_fuzz.py tests/test_fuzz_web.py \
		tests/adapters/mcp/test_fuzz_proxy.py

# atheris is installed here only (not in requirements-dev.txt): it may need clang to build.
FUZZ_TIME ?= 60
FUZZ_HARNESSES := delegation predicate policy
fuzz: install
	@$(BIN)/python -c "import atheris" 2>/dev/null || $(BIN)/python -m pip install --quiet atheris \
	  || { echo "make fuzz: atheris could not be installed. It ships wheels for common Linux"; \
	       echo "platforms; elsewhere it builds from source and needs clang with libFuzzer"; \
	       echo "(see https://github.com/google/atheris#installation)."; exit 1; }
	@for h in $(FUZZ_HARNESSES); do \
	  echo "== fuzz/fuzz_$$h.py for $(FUZZ_TIME) s"; mkdir -p build/fuzz/$$h; \
	  $(BIN)/python fuzz/fuzz_$$h.py -max_total_time=$(FUZZ_TIME) -artifact_prefix=build/fuzz/ \
	    build/fuzz/$$h || exit 1; \
	done

clean:
	rm -rf $(VENV) build .pytest_cache .mypy_cache .ruff_cache .coverage
