PYTHON ?= python3.11
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: run test lint typecheck unit bench bench-quick netns-tools browser-tools js-tools clean

$(STAMP): pyproject.toml constraints.txt
	@command -v $(PYTHON) >/dev/null 2>&1 || { echo "need $(PYTHON) on PATH (or: make PYTHON=python3 ...)"; exit 2; }
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	$(BIN)/python -m pip install -q -c constraints.txt -e '.[test]'
	touch $(STAMP)

run: $(STAMP)
	$(BIN)/p2psync run $(ARGS)

lint: $(STAMP)
	$(BIN)/ruff check p2psync tests
	$(BIN)/mypy p2psync

# The fault tests drop packets with iptables inside their own namespaces;
# as root on Debian, fetch it if missing (they skip without it otherwise).
netns-tools:
	@if [ "$$(id -u)" = 0 ] && ! command -v iptables >/dev/null 2>&1 && command -v apt-get >/dev/null 2>&1; then \
		echo "installing iptables for the network-fault tests"; \
		(apt-get install -y -q iptables >/dev/null 2>&1 || \
		 (apt-get update -q >/dev/null 2>&1 && apt-get install -y -q iptables >/dev/null 2>&1)) || \
		echo "iptables unavailable: packet-loss tests will be skipped"; \
	fi

# The dashboard test drives Debian's headless Chromium through its chromedriver
# (Selenium never downloads one); as root on Debian, fetch them if missing
# (the test skips without them otherwise).
browser-tools:
	@if [ "$$(id -u)" = 0 ] && { [ ! -x /usr/bin/chromium ] || [ ! -x /usr/bin/chromedriver ]; } && command -v apt-get >/dev/null 2>&1; then \
		echo "installing chromium and chromium-driver for the dashboard test"; \
		(apt-get install -y -q chromium chromium-driver >/dev/null 2>&1 || \
		 (apt-get update -q >/dev/null 2>&1 && apt-get install -y -q chromium chromium-driver >/dev/null 2>&1)) || \
		echo "chromium unavailable: the dashboard browser test will be skipped"; \
	fi

# The js-libp2p interop test (tests/netns/test_js_libp2p_mdns.py) runs a
# js-libp2p node whose packages tests/netns/js/package-lock.json pins; with
# node and npm on PATH, install them (again only when the lock file changed).
# Never fatal: without them the test installs them itself or skips.
JS_DIR := tests/netns/js
js-tools:
	@if command -v node >/dev/null 2>&1 && command -v npm >/dev/null 2>&1 && \
	   { [ ! -f $(JS_DIR)/node_modules/.package-lock.json ] || \
	     [ $(JS_DIR)/package-lock.json -nt $(JS_DIR)/node_modules/.package-lock.json ]; }; then \
		echo "installing the js-libp2p test node (npm ci in $(JS_DIR))"; \
		npm ci --prefix $(JS_DIR) --no-audit --no-fund >/dev/null 2>&1 || \
		echo "npm ci failed: the js-libp2p mDNS test will install or skip"; \
	fi

test: lint netns-tools browser-tools js-tools
	$(BIN)/python -m pytest -q -p no:cacheprovider $(PYTEST_ARGS)

bench: $(STAMP)
	$(BIN)/python -m benchmarks $(ARGS)

bench-quick: $(STAMP)
	$(BIN)/python -m benchmarks --quick

clean:
	rm -rf $(VENV) build *.egg-info
