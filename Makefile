# The two set-up commands: `make demo` and `make test`. Both work on a fresh Debian 12 with python3 and make.
SHELL := /bin/bash
VENV := .venv
PY := $(VENV)/bin/python
SUDO := $(shell [ "$$(id -u)" -eq 0 ] || echo sudo)
# What the tests need from Debian: the real RTSP server (GStreamer), ffmpeg/ffprobe as the peer and judge,
# strace for the write-order proof, iproute2 for network namespaces, Chromium to play the hub console's video.
APT_TEST := ffmpeg strace iproute2 procps python3-gi gir1.2-gst-rtsp-server-1.0 gstreamer1.0-tools \
	gstreamer1.0-plugins-base gstreamer1.0-plugins-good gstreamer1.0-plugins-bad \
	gstreamer1.0-plugins-ugly gstreamer1.0-libav gstreamer1.0-x chromium

.PHONY: demo test lint bench apt-test venv clean

demo: venv
	$(VENV)/bin/edge demo

venv: $(VENV)/.installed

$(VENV)/.installed: pyproject.toml
	@python3 -m venv $(VENV) 2>/dev/null || { $(SUDO) apt-get update -qq && \
		DEBIAN_FRONTEND=noninteractive $(SUDO) apt-get install -y -qq python3-venv && python3 -m venv $(VENV); }
	$(VENV)/bin/pip install -q --upgrade pip
	$(VENV)/bin/pip install -q -e '.[dev]'
	touch $@

apt-test:
	@missing=$$(for p in $(APT_TEST); do dpkg -s $$p >/dev/null 2>&1 || echo $$p; done); \
	if [ -n "$$missing" ]; then \
		echo "installing: $$missing"; \
		$(SUDO) apt-get update -qq && DEBIAN_FRONTEND=noninteractive $(SUDO) apt-get install -y -qq \
			--no-install-recommends $$missing; \
	fi

test: apt-test venv
	$(VENV)/bin/pytest

lint: venv
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .
	$(VENV)/bin/mypy

bench: apt-test venv
	$(PY) bench/record.py
	$(PY) bench/export.py
	$(PY) bench/audit.py
	$(PY) bench/uplink.py

clean:
	rm -rf $(VENV) .pytest_cache .mypy_cache .ruff_cache build *.egg-info
