# The two commands a fresh clone needs: `make demo` and `make test`.
PY ?= python3.11
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: demo test lint typecheck check clean chromium image-tools screenshots bench-fleet fuzz-api agent-wheel server-wheel

$(BIN)/python:
	@command -v $(PY) >/dev/null 2>&1 || { echo "need $(PY) (Python 3.11+) on PATH; set PY=python3.x"; exit 1; }
	$(PY) -m venv $(VENV)

$(STAMP): $(BIN)/python pyproject.toml
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e '.[dev]'
	@touch $(STAMP)

demo: $(STAMP)
	$(BIN)/ota demo $(ARGS)

# The browser tests drive Debian's chromium (never a browser Playwright downloads). Installed
# here only when missing and apt-get is usable as root; otherwise those tests skip (fail in CI).
CHROMIUM := /usr/bin/chromium
chromium:
	@if [ ! -x $(CHROMIUM) ] && [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then \
		echo "installing Debian's chromium for the browser tests (tests/browser)"; \
		{ apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium; } >/dev/null 2>&1 \
			|| echo "could not install chromium: the browser tests will skip (and fail under OTA_REQUIRE_SERVICES=1)"; \
	fi

# The Pi image test (tests/packaging/test_pi_image.py) partitions an image file with sfdisk
# (Debian's fdisk package); installed the same way, skipped without it (failed in CI).
image-tools:
	@if ! command -v sfdisk >/dev/null 2>&1 && [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then \
		echo "installing Debian's fdisk for the Pi image test (tests/packaging)"; \
		{ apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq fdisk e2fsprogs; } >/dev/null 2>&1 \
			|| echo "could not install fdisk: the Pi image test will skip (and fail under OTA_REQUIRE_SERVICES=1)"; \
	fi

# Two pytest-xdist workers: most tests wait on sockets and subprocesses, so two share the two cores
# well; tests/conftest.py keeps each module, and the users of the one Mosquitto, on one worker.
TEST_WORKERS ?= 2

test: $(STAMP) chromium image-tools
	$(BIN)/ruff check .
	$(BIN)/mypy
	$(BIN)/python -m pytest -q -ra -n $(TEST_WORKERS) --dist loadgroup $(PYTEST_ARGS)

# Run the browser tests and refresh the PNGs in docs/screenshots/ (test-artifacts/browser/ always gets them).
screenshots: $(STAMP) chromium
	OTA_UPDATE_SCREENSHOTS=1 $(BIN)/python -m pytest -q tests/browser

# The whole stack with CARS simulated cars and one campaign: bench/out/fleet-$(CARS).{json,md,png}.
CARS ?= 2000
bench-fleet: $(STAMP)
	$(BIN)/ota-bench --cars $(CARS) --json bench/out/fleet-$(CARS).json $(ARGS)

# Schemathesis, every check and phase (stateful included), seeded, against `ota serve` on SQLite and
# PostgreSQL with 200 examples per operation (`make test` runs the same with 15). ARGS="--seed N --examples N".
fuzz-api: $(STAMP)
	$(BIN)/python -m tests.ota_server.schemathesis_serve $(ARGS)

# The car's own wheels (the contract and the agent, none of the server's packages) into dist/:
# what packaging/raspberry-pi/install.sh installs. `server-wheel` adds the server's (the Docker image's).
agent-wheel: $(STAMP)
	$(BIN)/python -m pip wheel --quiet --no-deps -w dist packaging/firmware-bundles packaging/vehicle-agent

server-wheel: $(STAMP)
	$(BIN)/python -m pip wheel --quiet --no-deps -w dist packaging/firmware-bundles packaging/ota-server

lint: $(STAMP)
	$(BIN)/ruff check .

typecheck: $(STAMP)
	$(BIN)/mypy

clean:
	rm -rf $(VENV) var .pytest_cache .mypy_cache .ruff_cache
