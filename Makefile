# Newcomer entry points. Everything runs on CPU; a GPU is used when present.
PY      := .venv/bin/python
FLOATCTL:= .venv/bin/floatctl
STAMP   := .venv/.installed

# Optional real data and weights: make shards RAVDESS=... FLOAT_CKPT=... WAV2VEC2=... SER=...
RAVDESS ?=
FLOAT_CKPT ?=
WAV2VEC2 ?=
SER ?=

# The official float.pth encodes 512 px crops (paper preset); without it, the tiny CPU preset.
PRESET  ?= $(if $(FLOAT_CKPT),paper,tiny)
# `make demo PRESET=paper` (no FLOAT_CKPT): the paper-size path end to end on a GPU, in folders of its own: crops
# at 512 px, stage 1 trained here (the shipped checkpoint is the tiny one, 128 px), latents, the paper FMT at a
# GPU batch, samples and eval. Every default below that it changes is marked PAPER_DEMO; without it they are
# exactly the tiny demo's.
PAPER_DEMO := $(if $(FLOAT_CKPT),,$(filter paper,$(PRESET)))

SHARDS  ?= $(if $(PAPER_DEMO),data/shards-paper,data/shards)
CROPS   ?= $(SHARDS)-crops
RUN     ?= $(if $(PAPER_DEMO),runs/demo-paper,runs/demo)
STEPS   ?= $(if $(PAPER_DEMO),2000,1000)
# FMT batch and stage-1 batch of the paper demo (the trainers' own defaults otherwise: 8).
BATCH        ?= $(if $(PAPER_DEMO),64)
MOTION_BATCH ?= $(if $(PAPER_DEMO),16)
# Stage 1 (the motion auto-encoder): the checkpoint this repository ships, or STAGE1=train to train it
# here first (`make stage1-asset` rebuilds the shipped one; see the README for its command and time).
STAGE1  ?= $(if $(PAPER_DEMO),train,assets/stage1-tiny.pt)
MOTION_RUN   ?= $(if $(PAPER_DEMO),runs/motion-demo-paper,runs/motion-demo)
MOTION_STEPS ?= $(if $(PAPER_DEMO),300,1500)
STAGE1_CKPT  := $(if $(filter train,$(STAGE1)),$(MOTION_RUN)/stage1.pt,$(STAGE1))
# The FMT's latents: re-encoded from the crop shards with the stage-1 encoder, unless float.pth encoded them.
LATENTS ?= $(if $(FLOAT_CKPT),$(SHARDS),$(if $(PAPER_DEMO),data/shards-paper-stage1,data/shards-stage1))

SHARD_ARGS := --out $(SHARDS) --preset $(PRESET) \
	$(if $(RAVDESS),--ravdess $(RAVDESS)) \
	$(if $(FLOAT_CKPT),--float-ckpt $(FLOAT_CKPT)) \
	$(if $(WAV2VEC2),--wav2vec2 $(WAV2VEC2)) \
	$(if $(SER),--ser $(SER))

.PHONY: install test shards stage1 stage1-asset latents train sample eval demo real bench bench-gpu clean

install: $(STAMP)

$(STAMP): pyproject.toml
	test -x $(PY) || python3 -m venv .venv
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -e '.[test,faces,app]'
	touch $(STAMP)

# The suite's files spread over TEST_WORKERS processes (pytest-xdist; a file's tests stay together, so its
# module fixtures are built once): 5.5 min instead of 9 on a 2-core machine.
TEST_WORKERS ?= 2
test: install
	$(PY) -m pytest -q -n $(TEST_WORKERS) --dist loadfile

shards: install
	$(FLOATCTL) shards $(SHARD_ARGS)
	$(FLOATCTL) inspect $(SHARDS)

# Stage 1 on the crop shards (only with STAGE1=train); `--resume auto` reuses a finished run.
STAGE1_TRAIN := --data-root $(CROPS) --preset $(PRESET) --resume auto --warmup 150 \
	--log-step 50 --val-step 250 --save-step 250 --sample-step 250$(if $(MOTION_BATCH), --batch-size $(MOTION_BATCH))
stage1: shards
ifeq ($(STAGE1),train)
	$(FLOATCTL) train-motion $(STAGE1_TRAIN) --out $(MOTION_RUN) --steps $(MOTION_STEPS)
	$(FLOATCTL) export $(MOTION_RUN) $(STAGE1_CKPT)
else
	@test -f $(STAGE1_CKPT) || (echo "no stage-1 checkpoint $(STAGE1_CKPT): make demo STAGE1=train trains one" && false)
endif

# How the shipped stage-1 checkpoint was made (seed 0; README: time and numbers): 1,500 steps with uniform
# (source, driving) pairs, then to 3,000 with half the pairs hard; the EMA weights stored in float16.
stage1-asset: shards
	$(FLOATCTL) train-motion $(STAGE1_TRAIN) --out runs/motion-asset --seed 0 --steps 1500 --hard-pairs 0
	$(FLOATCTL) train-motion $(STAGE1_TRAIN) --out runs/motion-asset --seed 0 --steps 3000 --hard-pairs 0.5
	$(FLOATCTL) export runs/motion-asset assets/stage1-tiny.pt --half

# The FMT's latent shards from the crops, encoded by the stage-1 encoder (no video decoding).
latents: $(if $(FLOAT_CKPT),shards,stage1)
ifeq ($(FLOAT_CKPT),)
	$(FLOATCTL) shards --from-crops $(CROPS) --motion-ckpt $(STAGE1_CKPT) --out $(LATENTS)
	$(FLOATCTL) inspect $(LATENTS)
endif

# A short CPU run of the tiny preset (PRESET=paper: the paper FMT at batch 64 on a GPU); `--resume auto` makes a
# second `make train` continue it.
train: install
	$(FLOATCTL) train --data-root $(LATENTS) --out $(RUN) --steps $(STEPS) --resume auto \
		--log-step 100 --val-step 500 --save-step 500 --sample-step 500$(if $(PAPER_DEMO), --preset paper)$(if $(BATCH), --batch-size $(BATCH))

sample: install
	$(FLOATCTL) sample $(RUN)

# The run's tables and the face metrics of its rendered samples (CSIM, LMD, landmark lip sync...): RUN/eval.md.
eval: install
	$(FLOATCTL) eval $(RUN)

# The end-to-end job on the built-in default: synthetic shards and crops, stage-1 latents, FMT training, samples.
# `make demo PRESET=paper`: the same at 512 px with the paper models, stage 1 trained here (meant for one GPU).
demo: latents train sample eval
	@echo "demo done: metrics in $(RUN)/metrics.jsonl, samples (videos, plots) in $(RUN)/samples/, scores in $(RUN)/eval.md"

# The real-data recipe: both stages on a folder of real talking-head clips (one sub-folder per speaker), the
# speakers VAL_IDS / TEST_IDS held out, ending with `floatctl eval` of the held-out people (README, real data).
# RECIPE=cpu (a 2-core CPU, measured) or gpu (longer and bigger: recipes/real-gpu-*.yaml).
DATA    ?=
VAL_IDS ?=
TEST_IDS?=
RECIPE  ?= cpu
REAL_DATA := data/real-$(RECIPE)
REAL_RUN  := runs/real-$(RECIPE)
REAL_PRESET = $(shell sed -n 's/^preset: *//p' recipes/real-$(RECIPE)-stage1.yaml)
REAL_AUDIO  := --audio-features mel-speech
real: install
	@test -n "$(DATA)" -a -n "$(VAL_IDS)" -a -n "$(TEST_IDS)" || (echo "usage: make real DATA=folder VAL_IDS=a,b TEST_IDS=c,d [RECIPE=cpu|gpu]" && false)
	$(FLOATCTL) shards --input $(DATA) --out $(REAL_DATA)/first-pass --crops --crops-out $(REAL_DATA)/crops \
		--preset $(REAL_PRESET) --segment-seconds 10 --val-ids $(VAL_IDS) --test-ids $(TEST_IDS) $(REAL_AUDIO)
	$(FLOATCTL) train-motion --config recipes/real-$(RECIPE)-stage1.yaml --data-root $(REAL_DATA)/crops \
		--out $(REAL_RUN)/stage1 --resume auto
	$(FLOATCTL) export $(REAL_RUN)/stage1 $(REAL_RUN)/stage1.pt
	$(FLOATCTL) shards --from-crops $(REAL_DATA)/crops --motion-ckpt $(REAL_RUN)/stage1.pt \
		--out $(REAL_DATA)/latents $(REAL_AUDIO) --overwrite
	$(FLOATCTL) train --config recipes/real-$(RECIPE)-fmt.yaml --data-root $(REAL_DATA)/latents \
		--out $(REAL_RUN)/fmt --resume auto
	$(FLOATCTL) sample $(REAL_RUN)/fmt
	$(FLOATCTL) eval $(REAL_RUN)/fmt
	@echo "real recipe done: held-out scores in $(REAL_RUN)/fmt/eval.md, stage 1 in $(REAL_RUN)/stage1/metrics.jsonl"

bench: install
	$(PY) benchmarks/fmt_step.py
	$(PY) benchmarks/shard_stage.py
	$(PY) benchmarks/train_throughput.py
	$(PY) benchmarks/remote_loader.py
	$(PY) benchmarks/stage1.py
	$(PY) benchmarks/pair_loader.py
	$(PY) benchmarks/crop_detectors.py --actors 4

# The real trainers and the sampler on a CUDA GPU against the bare steps and issue 16's targets (meant for < 5 min;
# without a GPU it says so and exits 0). A GPU session runs the CUDA tests and this as one command:
# bash benchmarks/gpu_session.sh
bench-gpu: install
	$(PY) benchmarks/gpu.py

clean:
	rm -rf data runs
