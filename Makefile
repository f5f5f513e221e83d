# Shop mesh: make run | make run-cluster | make test | make gen | make sdk | make web | make lint | make buf-breaking | make bench | make load | make lock | make check-web
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: install web-deps web check-web lock run run-cluster test gen sdk lint check-gen buf-lint buf-breaking bench load token clean

$(STAMP): pyproject.toml requirements.lock
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -c requirements.lock -e '.[dev,bench]'
	touch $(STAMP)

install: $(STAMP)

## lock: re-pin every installed package (after changing pyproject.toml's pins)
lock:
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet -e '.[dev,bench]'
	{ echo "# Every package of the dev environment, pinned: 'make lock' rewrites it."; \
	  echo "# 'make install' uses it as pip constraints, so every machine gets the same set."; \
	  $(BIN)/pip freeze --exclude-editable; } > requirements.lock

## run: every service on embedded defaults (SQLite files in ./var, no broker)
run: $(STAMP)
	$(BIN)/python scripts/run_mesh.py

## run-cluster: 2 replicas of every service and 2 gateways on PostgreSQL (PG_URL) and NATS (BROKER_URL)
run-cluster: $(STAMP)
	$(BIN)/python scripts/run_mesh.py --cluster

## test: the whole suite (PostgreSQL / NATS tests run when they answer on 127.0.0.1)
test: $(STAMP)
	$(BIN)/python -m pytest $(PYTEST_ARGS)

## web-deps: the console's npm packages (web/node_modules, from web/package-lock.json)
WEB_STAMP := web/node_modules/.installed
$(WEB_STAMP): web/package.json web/package-lock.json
	cd web && npm ci --no-audit --no-fund --loglevel=error
	touch $(WEB_STAMP)

web-deps: $(WEB_STAMP)

## web: the console (web/) built into gateway/console: vue-tsc type check, then vite build
web: $(WEB_STAMP)
	cd web && npm run build --silent

## check-web: fail if gateway/console differs from what `make web` builds (commit the bundle)
check-web: web
	@git add -N gateway/console >/dev/null 2>&1 || true
	@git diff --exit-code --stat -- gateway/console || \
		(echo "the console bundle is stale: run 'make web' and commit gateway/console/" >&2; exit 1)

## browser-deps: the browser test's Debian chromium (installed if /usr/bin/chromium is
## missing; needs root) and its npm packages (tests/browser/node_modules, from the lock)
BROWSER_STAMP := tests/browser/node_modules/.installed
$(BROWSER_STAMP): tests/browser/package.json tests/browser/package-lock.json
	cd tests/browser && npm ci --no-audit --no-fund --loglevel=error
	touch $(BROWSER_STAMP)

.PHONY: browser-deps
browser-deps: $(BROWSER_STAMP)
	@test -x /usr/bin/chromium || { apt-get update -qq && apt-get install -y -qq chromium; }

## gen: regenerate gen/, web/src/gen (and the vendored third-party protos) from proto/
gen: $(STAMP) $(WEB_STAMP)
	$(BIN)/python scripts/protogen.py vendor
	$(BIN)/python scripts/protogen.py gen

## check-gen: fail if gen/, web/src/gen or third_party/ differ from what `make gen` makes
check-gen: gen
	@git add -N gen web/src/gen third_party >/dev/null 2>&1 || true
	@git diff --exit-code --stat -- gen web/src/gen third_party || \
		(echo "generated code is stale: run 'make gen' and commit gen/ and web/src/gen/" >&2; exit 1)

## sdk: the client libraries in sdk/out/: a Python wheel and an npm tarball, one version
## taken from the contracts (sdk/versions.json; `python scripts/sdk.py bump` records new
## contracts, SDK_ARGS=--dev builds unrecorded ones)
sdk: $(STAMP) $(WEB_STAMP)
	$(BIN)/python scripts/sdk.py build $(SDK_ARGS)

## lint: ruff, mypy and buf lint
lint: $(STAMP) buf-lint
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/mypy

buf-lint: $(STAMP)
	$(BIN)/python scripts/protogen.py image $(VENV)/image.binpb
	$(BIN)/buf lint $(VENV)/image.binpb

## buf-breaking: compare proto/ with AGAINST (a git ref, default: the previous commit)
AGAINST ?= HEAD~1
buf-breaking: $(STAMP)
	bash scripts/buf_breaking.sh $(AGAINST)

## bench: both tiers against a bare grpc.aio baseline and a FastAPI peer (a few minutes)
bench: $(STAMP)
	@command -v wrk >/dev/null && command -v h2load >/dev/null || \
		{ apt-get update -qq && apt-get install -y -qq wrk nghttp2-client; }
	$(BIN)/python -m bench.run $(BENCH_ARGS)

## token: a development token (make run's key): make -s token USER_ID=usr_... [ROLES=admin] [TTL=3600]
TTL ?= 3600
token: $(STAMP)
	@test -n "$(USER_ID)" || { echo "usage: make -s token USER_ID=usr_... [ROLES=admin] [TTL=seconds]" >&2; exit 2; }
	@$(BIN)/python -m services.common.auth token --user "$(USER_ID)" --roles "$(ROLES)" --ttl "$(TTL)"

## load: the traffic mix against a running mesh (make run first); LOAD_ARGS="--rate 50"
load: $(STAMP)
	$(BIN)/python -m bench.loadgen $(LOAD_ARGS)

clean:
	rm -rf $(VENV) var .pytest_cache .mypy_cache .ruff_cache

## deploy-check: hadolint the Dockerfile, render and validate deploy/k8s (no cluster, no Docker)
.PHONY: deploy-check
deploy-check: $(STAMP)
	$(BIN)/hadolint Dockerfile
	$(BIN)/python -m pytest tests/deploy -q
