# nodeforge: bootable node images for hybrid Kubernetes clusters.
# `make help` lists the targets. Every target installs what it needs first (`make deps`).

SHELL       := /bin/bash
.SHELLFLAGS := -eu -o pipefail -c
.DEFAULT_GOAL := help

SITE   ?= onprem
VENV   ?= .venv
PYTHON ?= python3
BUILDER := $(VENV)/bin/builder
PYTEST  := $(VENV)/bin/pytest
ARGS   ?=	# extra options for the command, e.g. ARGS='--base-iso ubuntu.iso'
SET    ?=	# profile overrides for render/validate/image, e.g. SET='--set gpu.enabled=true'
DEVICE ?=	# the stick `make flash` writes, e.g. DEVICE=/dev/sdX (see `make devices`)

# System tools (Debian/Ubuntu package names). Always installed with --no-install-recommends:
# wireguard-tools' recommends would pull in a kernel.
APT_PACKAGES := xorriso mtools dosfstools e2fsprogs cpio \
  qemu-system-x86 qemu-utils ovmf grub-pc-bin grub-efi-amd64-bin grub-common busybox-static \
  packer wireguard-tools wireguard-go iproute2 cloud-init shellcheck systemd \
  mmdebstrap dpkg-dev sqlite3 openssl gpg fdisk mount util-linux curl ca-certificates git \
  iptables etcd-server etcd-client

##@ Setup

.PHONY: deps
deps: $(VENV)/.installed .apt-installed ## Install system tools (apt) and the Python venv

.apt-installed: Makefile
	@missing=$$(dpkg-query -W -f='$${Package} $${Status}\n' $(APT_PACKAGES) 2>/dev/null \
	  | awk '$$4 != "installed" {print $$1}'; \
	  for p in $(APT_PACKAGES); do dpkg-query -W $$p >/dev/null 2>&1 || echo $$p; done); \
	missing=$$(echo $$missing | tr ' ' '\n' | sort -u | tr '\n' ' '); \
	if [ -n "$${missing// }" ]; then \
	  echo "installing: $$missing" >&2; \
	  SUDO=$$( [ "$$(id -u)" = 0 ] || echo sudo ); \
	  $$SUDO apt-get update -qq; \
	  DEBIAN_FRONTEND=noninteractive $$SUDO apt-get install -y -qq --no-install-recommends $$missing; \
	fi
	@touch $@

$(VENV)/.installed: pyproject.toml
	@test -x $(VENV)/bin/python || $(PYTHON) -m venv $(VENV)
	$(VENV)/bin/pip install -q --disable-pip-version-check -e '.[test]'
	@touch $@

##@ Build

.PHONY: profiles render validate image ami
profiles: $(VENV)/.installed ## List the site profiles (reads only: no apt check)
	$(BUILDER) profiles

render: deps ## Render the build tree for SITE into build/SITE
	$(BUILDER) render $(SITE) $(SET) $(ARGS)

validate: deps ## Render SITE and check it with the real validators
	$(BUILDER) validate $(SITE) $(SET)

image: validate ## Validate SITE, then build its image (iso, ami or qcow2, as its profile says)
	$(BUILDER) image $(SITE) $(SET) $(ARGS)

ami: deps ## Alias: build the AMI for SITE (default aws)
	$(BUILDER) image $(if $(filter onprem,$(SITE)),aws,$(SITE)) --target ami $(ARGS)

##@ Flash

.PHONY: flash devices bench-flash
flash: deps ## Write the newest dist/SITE ISO to a USB stick, verified (make flash SITE=onprem DEVICE=/dev/sdX)
	$(BUILDER) flash --site $(SITE) $(DEVICE) $(ARGS)

devices: $(VENV)/.installed ## List USB sticks / removable disks and which are safe to flash
	$(BUILDER) devices $(ARGS)

bench-flash: deps ## Benchmark flash throughput vs dd bs=4M conv=fsync (loop device + file)
	$(VENV)/bin/python tests/bench/bench_flash.py $(ARGS)

##@ Test

.PHONY: test test-unit test-integration lint bench bench-hub bench-render bench-validate bench-remaster bench-packer mutation mutation-ci
test: deps lint ## Lint, then every test lane (unit, integration, boot), then mutation-ci
	$(PYTEST) -q --durations=15 tests $(ARGS)
	$(MAKE) --no-print-directory mutation-ci

test-unit: deps ## Unit tests only (no tools, no network, no root)
	$(PYTEST) -q tests/unit $(ARGS)

test-integration: deps ## Integration tests (real tools; some need root)
	$(PYTEST) -q tests/integration $(ARGS)

lint: deps ## ruff (format check + lint), mypy, the import layering contract, module sizes
	$(VENV)/bin/ruff format --check builder tests
	$(VENV)/bin/ruff check builder tests
	$(VENV)/bin/mypy --explicit-package-bases builder tests/support
	$(VENV)/bin/lint-imports --no-cache
	@# modules stay small enough to read (the stdlib-only node agent is one file by design)
	@big=$$(find builder -name '*.py' ! -path builder/node/agent.py -exec wc -l {} + \
	  | awk '$$2 != "total" && $$1 > 600 {print $$2 " (" $$1 " lines)"}'); \
	if [ -n "$$big" ]; then echo "modules over 600 lines:" $$big >&2; exit 1; fi

# Mutation testing (issue 18): mutmut 3 mutates the modules listed in pyproject's [tool.mutmut]
# and runs tests/unit against each mutant; tests/MUTATION.md has the scores and the survivors.
MUTANTS ?= builder.hub.tokens.* builder.hub.provider.* builder.site.credentials.* \
  builder.site.render.x_write_tree* builder.site.render.x_render_site* \
  builder.site.render.x_secret_files* builder.site.checks.* builder.flash.flasher.* \
  builder.flash.blockdev.* $(MUTANTS_HUB) $(MUTANTS_AGENT)
# hub: the store (allocation, token use, re-enrollment, revocation), the writer, the api's
# request checks (tunnel/peer, node secret, limits, credentials in the URL) and body checks
MUTANTS_HUB := builder.hub.store.* builder.hub.enroll.* builder.hub.writer.* \
  builder.hub.wire.* builder.hub.api.xǁHubǁ_route* builder.hub.api.xǁHubǁauth_* \
  builder.hub.api.xǁHubǁenroll* builder.hub.api.xǁHubǁtunnel_node* \
  builder.hub.api.xǁHubǁ_join* builder.hub.api.xǁHubǁ_complete*
# the node agent: CA pin, enrollment, join (not its network wait, failover or logging)
MUTANTS_AGENT := builder.node.agent.x_ca_pin_of* builder.node.agent.x_join_configuration* \
  builder.node.agent.x_without_gpu_taints* builder.node.agent.xǁAgentǁcheck_ca* \
  builder.node.agent.xǁAgentǁenroll* builder.node.agent.xǁAgentǁ_retry_after* \
  builder.node.agent.xǁAgentǁcheck_enrollment* builder.node.agent.xǁAgentǁsaved* \
  builder.node.agent.xǁAgentǁtoken* builder.node.agent.xǁAgentǁforget_token* \
  builder.node.agent.xǁAgentǁfetch_join* builder.node.agent.xǁAgentǁjoin* \
  builder.node.agent.xǁAgentǁcomplete*
# CI's fixed budget: these two modules, their mutants run against the test files that exercise
# them (measured: see tests/MUTATION.md, round 4); stopped after MUTATION_CI_TIMEOUT
MUTANTS_CI := builder.hub.tokens.* builder.hub.provider.*
MUTATE_CI := builder/hub/tokens.py builder/hub/provider.py
TESTS_CI := tests/unit/test_hub_tokens.py tests/unit/test_hub_tokens_exact.py \
  tests/unit/test_hub_provider.py tests/unit/test_hub_store.py
MUTATION_CI_TIMEOUT ?= 900
MUTMUT := $(VENV)/bin/python tests/mutation/mutmut_run.py
# mutants run with a private, empty /dev (no block device reachable; see the script); afterwards
# the host's /dev must hold no regular file (one would mean a mutant escaped the sandbox)
SANDBOX := tests/mutation/sandbox.sh
DEV_CHECK := @stray=$$(find /dev -maxdepth 1 -type f); \
  if [ -n "$$stray" ]; then echo "regular files under /dev after the run: $$stray" >&2; exit 1; fi
JOBS ?= 2

mutation: deps ## Mutation testing (slow, ~1 h): per-module score, survivors listed (MUTANTS='pattern …')
	$(SANDBOX) $(MUTMUT) run --max-children $(JOBS) $(foreach m,$(MUTANTS),'$(m)') >/dev/null
	$(DEV_CHECK)
	$(VENV)/bin/python tests/mutation/score.py --min 85 --survivors

mutation-ci: deps ## Mutation testing on a fixed budget (hub tokens + provider, a few minutes): fails under 85%
	@# in a scratch copy of the tree (tracked + new files), so mutants/ of `make mutation` stays
	tmp=$$(mktemp -d); trap 'rm -rf "$$tmp"' EXIT; \
	git ls-files -z -c -o --exclude-standard | tar --null -T - -cf - | tar -C "$$tmp" -xf -; \
	cd "$$tmp"; \
	$(abspath $(VENV))/bin/python tests/mutation/narrow.py pyproject.toml \
	  --mutate $(MUTATE_CI) --tests $(TESTS_CI); \
	timeout $(MUTATION_CI_TIMEOUT) $(SANDBOX) $(abspath $(VENV))/bin/python tests/mutation/mutmut_run.py \
	  run --max-children $(JOBS) $(foreach m,$(MUTANTS_CI),'$(m)') >/dev/null; \
	$(abspath $(VENV))/bin/python tests/mutation/score.py --min 85 --survivors
	$(DEV_CHECK)

bench: deps ## Run every benchmark script in tests/bench (figures and ratios vs baselines)
	@for b in tests/bench/bench_*.py; do echo "== $$b"; $(VENV)/bin/python $$b $(ARGS) || exit 1; done

bench-hub: deps ## Enrollment hub load benchmark: 1,000 enrollments, throughput, p50/p99 (root)
	$(VENV)/bin/python tests/bench/bench_hub.py $(ARGS)
	$(VENV)/bin/python tests/bench/bench_hub_etcd.py  # 3 hubs on a 3-member etcd vs SQLite

bench-render: deps ## Benchmark render + validate for SITE (then bench-validate)
	$(VENV)/bin/python tests/bench/bench_render.py $(SITE)
	$(VENV)/bin/python tests/bench/bench_validate.py $(SITE)

bench-validate: deps ## Benchmark builder validate SITE before/after, cold and unchanged (ARGS='--warm-only'; BEFORE_REV=rev)
	$(VENV)/bin/python tests/bench/bench_validate.py $(SITE) $(ARGS)

bench-remaster: deps ## Benchmark ISO remaster vs cp of the same >= 1 GiB base ISO
	$(VENV)/bin/python tests/bench/bench_remaster.py $(ARGS)

bench-packer: deps ## Benchmark a qcow2 rebuild (same package set: cached layer) vs a bare boot of the base
	$(VENV)/bin/python tests/bench/bench_packer.py $(ARGS)

##@ Boot tests

BOOT_SITES := $(sort $(basename $(notdir $(filter-out profiles/base.yaml,$(wildcard profiles/*.yaml)))))

IMAGE ?=	# a built disk image to boot (dist/SITE/NAME.qcow2|.raw); empty: the stand-in disk
# boot-test options for a site's disk: IMAGE, or the stand-in node disk built by test support
# (tests/support/nodedisk.py prints the options that boot it; --uefi picks its GPT variant)
NODEDISK = $(VENV)/bin/python -m tests.support.nodedisk

.PHONY: boot-test boot-test-all bench-boot bench-firstboot
boot-test: deps ## Boot SITE's node in QEMU with a real hub and check it joins (make boot-test SITE=aws [IMAGE=dist/aws/x.qcow2] ARGS="--nodes 2")
	disk=$(if $(strip $(IMAGE)),"--image $(IMAGE)",$$($(NODEDISK) $(SITE) --args $(filter --uefi,$(ARGS)) $(SET))); \
	eval "$(BUILDER) boot-test $(SITE) $$disk $(SET) $(ARGS)"

boot-test-all: deps ## boot-test every site profile on its stand-in disk, one after the other
	@for s in $(BOOT_SITES); do echo "== boot-test $$s"; \
	  disk=$$($(NODEDISK) $$s --args $(filter --uefi,$(ARGS))); \
	  eval "$(BUILDER) boot-test $$s $$disk $(ARGS)" || exit 1; done

bench-boot: deps ## Benchmark: bare cloud-init boot of the base vs our first boot to "joined"
	$(VENV)/bin/python tests/bench/bench_boot.py $(ARGS)

bench-firstboot: deps ## Benchmark (issue 12): installed disk's first boot to "joined" vs the same disk without our unit (ARGS="--rounds 5 [--iso]"; median of >= 5)
	$(VENV)/bin/python tests/bench/bench_firstboot.py $(ARGS)

##@ Help

.PHONY: help clean
help: ## Show this help (colour only on a terminal and without NO_COLOR)
	@if [ -t 1 ] && [ -z "$${NO_COLOR:-}" ]; then c=$$'\033[36m' b=$$'\033[1m' r=$$'\033[0m'; \
	else c= b= r=; fi; \
	awk -v c="$$c" -v b="$$b" -v r="$$r" 'BEGIN {FS = ":.*##"; \
	    printf "Usage: make <target> [SITE=name] [SET=\x27--set k=v\x27] [ARGS=\x27...\x27] [DEVICE=/dev/sdX]\n"} \
	  /^[a-zA-Z0-9_-]+:.*?##/ { printf "  %s%-18s%s %s\n", c, $$1, r, $$2 } \
	  /^##@/ { printf "\n%s%s%s\n", b, substr($$0, 5), r }' $(MAKEFILE_LIST); \
	printf '\n%sVariables%s\n' "$$b" "$$r"; \
	printf '  %s%-18s%s %s\n' "$$c" "SITE=name" "$$r" "the site profile (default onprem); see make profiles" \
	  "$$c" "SET='--set k=v'" "$$r" "profile overrides for render, validate, image (repeat --set)" \
	  "$$c" "ARGS='...'" "$$r" "extra options for the command, e.g. ARGS='--base-iso ubuntu.iso'" \
	  "$$c" "DEVICE=/dev/sdX" "$$r" "the stick make flash writes (see make devices)" \
	  "$$c" "NO_COLOR=1" "$$r" "no colour in make help (none when piped either)"

clean: ## Remove build/, dist/ and mutants/ (keeps caches and the venv)
	rm -rf build dist mutants
