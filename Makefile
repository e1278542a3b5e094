# Newcomer entry points. Everything runs on CPU; a GPU is used when present.
PY      := .venv/bin/python
FLOATCTL:= .venv/bin/floatctl
STAMP   := .venv/.installed

SHARDS  ?= data/shards
RUN     ?= runs/demo
STEPS   ?= 1000
# Optional real data and weights: make shards RAVDESS=... FLOAT_CKPT=... WAV2VEC2=... SER=...
RAVDESS ?=
FLOAT_CKPT ?=
WAV2VEC2 ?=
SER ?=

# The official float.pth encodes 512 px crops (paper preset); without it, the tiny CPU preset.
PRESET  ?= $(if $(FLOAT_CKPT),paper,tiny)

SHARD_ARGS := --out $(SHARDS) --preset $(PRESET) \
	$(if $(RAVDESS),--ravdess $(RAVDESS)) \
	$(if $(FLOAT_CKPT),--float-ckpt $(FLOAT_CKPT)) \
	$(if $(WAV2VEC2),--wav2vec2 $(WAV2VEC2)) \
	$(if $(SER),--ser $(SER))

.PHONY: install test shards train sample demo bench clean

install: $(STAMP)

$(STAMP): pyproject.toml
	test -x $(PY) || python3 -m venv .venv
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -e '.[test]'
	touch $(STAMP)

test: install
	$(PY) -m pytest -q

shards: install
	$(FLOATCTL) shards $(SHARD_ARGS)
	$(FLOATCTL) inspect $(SHARDS)

# A short CPU run of the tiny preset; `--resume auto` makes a second `make train` continue it.
train: install
	$(FLOATCTL) train --data-root $(SHARDS) --out $(RUN) --steps $(STEPS) --resume auto \
		--log-step 100 --val-step 500 --save-step 500 --sample-step 500

sample: install
	$(FLOATCTL) sample $(RUN)/checkpoints/final.pt

# The end-to-end job on the built-in default: synthetic shards, training, samples.
demo: shards train sample
	@echo "demo done: metrics in $(RUN)/metrics.jsonl, samples (videos, plots) in $(RUN)/samples/"

bench: install
	$(PY) benchmarks/fmt_step.py
	$(PY) benchmarks/preprocess.py
	$(PY) benchmarks/train_throughput.py
	$(PY) benchmarks/stage1.py

clean:
	rm -rf data runs
