# Every target installs what is missing first (a .venv with Python 3.12+ and the pinned packages).
VENV := .venv
PY := $(VENV)/bin/python
export MUJOCO_GL ?= egl
# Test processes: two fit these 2-core machines (TEST_WORKERS=0 runs everything in one process).
TEST_WORKERS ?= 2

.PHONY: install demo test bench lint proto clean

install:
	@bash scripts/bootstrap.sh

demo: install
	$(VENV)/bin/fleetloop demo

test: install
	$(PY) -m ruff check .
	$(PY) -m pytest -q -p no:cacheprovider -n $(TEST_WORKERS) --dist worksteal

bench: install
	$(PY) -m bench.run

lint: install
	$(PY) -m ruff check . && $(PY) -m ruff format --check .

proto: install
	$(PY) -m grpc_tools.protoc -I . --python_out=. --grpc_python_out=. --pyi_out=. protocol/tunnel.proto

clean:
	rm -rf runs .pytest_cache
