# Every target creates .venv on first use and installs the project into it.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed-stamp
ARGS ?=

.PHONY: test test-fast demo bench lint clean torchcodec

# Debian/Ubuntu FFmpeg shared libraries torchcodec loads (any of FFmpeg 4-8; these are Debian 12's)
FFMPEG_DEBS ?= libavcodec59 libavformat59 libavutil57 libswscale6 libswresample4 libavdevice59 libavfilter8

$(STAMP): pyproject.toml
	test -d $(VENV) || $(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -e ".[dev,bench]"
	-@$(MAKE) --no-print-directory torchcodec
	touch $(STAMP)

# Optional torchcodec backend: system FFmpeg libraries (apt-get, as root) + the extra. Never fatal: without it the
# torchcodec reader tests skip with the reason and `auto` decodes with PyAV.
torchcodec:
	@if [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then \
		apt-get install -y -qq $(FFMPEG_DEBS) >/dev/null 2>&1 || \
		(apt-get update -qq >/dev/null 2>&1 && apt-get install -y -qq $(FFMPEG_DEBS) >/dev/null 2>&1) || \
		echo "note: could not apt-get install the FFmpeg libraries torchcodec needs"; \
	fi
	@$(BIN)/pip install --quiet -e ".[torchcodec]" || echo "note: torchcodec not installed; video decoding uses PyAV"
	@$(BIN)/python -c "from vidclip.data.readers.torchcodec import torchcodec_status as s; print('torchcodec:', s()[1])"

test: $(STAMP)
	$(BIN)/python -m pytest -q $(ARGS)

test-fast: $(STAMP)
	$(BIN)/python -m pytest -q -m "not slow" $(ARGS)

demo: $(STAMP)
	$(BIN)/vidclip demo $(ARGS)

bench: $(STAMP)
	$(BIN)/python benchmarks/run_all.py $(ARGS)

lint: $(STAMP)
	$(BIN)/ruff check vidclip tools tests benchmarks

clean:
	rm -rf $(VENV) runs demo_runs .pytest_cache
