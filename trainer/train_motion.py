"""Stage 1: the LIA-style motion auto-encoder trained on crop shards (``floatctl train-motion``).

A source and a driving frame of one clip; the driving frame is rebuilt from the
source's appearance latent and feature maps, moved by the driving frame's motion.
Losses (float/motion_training.py): L1, a perceptual term (VGG19 from a user file,
or a weight-free structure loss) and, optionally, a StyleGAN2 discriminator's
non-saturating term with lazy R1. The shared loop (trainer/loop.py) brings
checkpoints with exact resume, EMA, AMP, DDP, logs and SIGTERM handling; this
module adds the discriminator's step, held-out PSNR and the sample grids.

The crop shards are found and streamed by the FMT's code: ``--data-root`` is a local
folder, a folder URL or a brace pattern, repeated with weights to mix sets
(trainer/run.py ``read_shard_sets``, shards/mix.py); the pair stream is
TrainWindows's (shards/pairs.py), so mixing, the unreadable-shard rule and exact
resume are the same as the FMT's.
"""
from __future__ import annotations

import dataclasses
from pathlib import Path

import torch
from torch import Tensor

from float.config import FloatConfig, get_preset
from float.discriminator import Discriminator, lazy_r1_weight
from float.model import count_parameters
from float.motion_autoencoder import MotionAutoEncoder
from float.motion_training import (MotionLossWeights, discriminator_losses, generator_losses, prepare_for_training,
                                   to_channels_last)
from float.perceptual import PerceptualWeightsError, build_perceptual
from shards.crops import CROP_MEMBERS, CROP_ONLY_MEMBERS, check_crop_manifest
from shards.errors import ManifestError
from shards.augment import PairAugment
from shards.mix import ShardSets
from shards.pairs import ValPairs, actor_weights, make_pair_loader
from shards.sources import manifest_location, shard_urls
from shards.tar import ShardError, check_local_shards
from trainer import run as setup
from trainer.device_step import keep_fused, optimizer_step
from trainer.distributed import DistInfo, init_distributed, wrap_ddp
from trainer.ema import EMA
from trainer.loop import TrainResult, run_loop
from trainer.media_log import TAG_GRID, MediaLog
from trainer.motion_eval import heldout_psnr, pair_grid, save_pair_grid, to_unit_range
from trainer.errors import TrainingError
from trainer.run import MOTION_KIND, Run, check_local_folders, check_same_shards, read_shard_sets, to_device
from trainer.schedule import resolve_schedule
from trainer.settings import MotionSettings

# From-scratch peak learning rates of the auto-encoder per preset (Adam, betas below).
MOTION_LR = {"paper": 2e-3, "small": 2e-3, "tiny": 2e-3}
BETAS = (0.9, 0.999)  # measured: faster than LIA's (0, 0.99) from the copy-the-source start (README)
D_BETAS = (0.0, 0.99)  # StyleGAN2's, for the discriminator


INIT_TAKES = ("--init takes a stage-1 checkpoint of floatctl train-motion (a .pt file or its run folder) or the "
              "official float.pth")


def load_init_weights(path: str, model: MotionAutoEncoder, log=print) -> str:
    """--init: a stage-1 checkpoint (its EMA weights; a run folder gives its final one) or an official
    float.pth (motion_autoencoder.*); a file of any other kind is refused saying what it is."""
    from float.checkpoint import CheckpointError, official_motion_autoencoder
    from float.checkpoint_names import pick_checkpoint
    from float.motion_checkpoint import load_motion_checkpoint
    from float.safe_load import safe_torch_load, wrong_kind

    try:
        path = str(pick_checkpoint(path, "--init", log))
        found = safe_torch_load(path, label="--init ", mmap=True, takes=INIT_TAKES)  # mapped: a look at the keys
        if isinstance(found, dict) and found.get("kind") == MOTION_KIND:
            source, _, _ = load_motion_checkpoint(path)
            what = "stage-1 checkpoint (EMA weights)"
        elif not isinstance(found, dict) or "kind" in found or "model" in found:  # an FMT checkpoint, ...
            raise wrong_kind(path, found, "--init ", INIT_TAKES)
        else:
            source = official_motion_autoencoder(found, model.size, path)
            what = "official motion_autoencoder.*"
        model.load_state_dict(source.state_dict(), strict=True)
    except CheckpointError as e:
        raise TrainingError(str(e) if str(e).startswith("--init") else f"--init {e}") from None
    except RuntimeError as e:
        raise TrainingError(f"--init {path}: the weights do not fit a {model.size}px auto-encoder of width "
                            f"{model.width} ({str(e).splitlines()[0]}); pick the matching --preset / --set") from None
    return what


class MotionStage:
    """What the shared loop needs to know about stage 1."""

    loss_keys = ("total", "l1", "perceptual", "adversarial", "mouth")
    score_key, score_sign = "psnr", -1.0  # --early-stop watches held-out PSNR (higher is better)

    def __init__(self, run: Run, manifest: dict, perceptual, discriminator, d_train, d_optimizer,
                 val_batches: list[dict]):
        s = run.s
        self.run, self.manifest, self.perceptual = run, manifest, perceptual
        self.discriminator, self.d_train, self.d_optimizer = discriminator, d_train, d_optimizer
        self.val_batches, self.has_val = val_batches, bool(val_batches)
        self.weights = MotionLossWeights(s.l1_weight, s.perceptual_weight, s.adversarial_weight, s.mouth_weight)
        self.before_adversarial = dataclasses.replace(self.weights, adversarial=0.0) \
            if (s.l1_weight or s.perceptual_weight or s.mouth_weight) else self.weights
        self._last: tuple[Tensor, Tensor] | None = None
        self.channels_last = setup.resolve_channels_last(s.channels_last, run.device)
        self.media = MediaLog.of(run.log)  # the grid in TensorBoard / wandb too

    def _adversarial_on(self, step: int) -> bool:
        return self.discriminator is not None and step >= self.run.s.adversarial_start

    def loss(self, train_model, batch: dict, generator: torch.Generator, step: int) -> dict:
        source, driving = to_unit_range(batch["source"]), to_unit_range(batch["driving"])
        if self.channels_last:
            source, driving = to_channels_last(source, driving)
        adversarial = self._adversarial_on(step)
        if self.discriminator is not None:
            self.discriminator.requires_grad_(False)  # the generator step trains the auto-encoder only
        losses, recon = generator_losses(train_model, source, driving, self.perceptual,
                                         self.discriminator if adversarial else None,
                                         self.weights if adversarial else self.before_adversarial)
        self._last = (driving, recon.detach())
        return losses

    def after_step(self, step: int, skip: Tensor | None = None) -> dict:
        """The discriminator's step on the last micro-batch (real driving frames vs reconstructions), every
        --d-every steps; skipped on the device (no host read) when this step or its own loss is non-finite."""
        s = self.run.s
        real_fake, self._last = self._last, None
        d_step = step - s.adversarial_start
        if not self._adversarial_on(step) or real_fake is None or d_step % s.d_every:
            return {}
        self.discriminator.requires_grad_(True)
        r1_weight = lazy_r1_weight(s.r1_gamma, s.r1_every) \
            if s.r1_gamma > 0 and (d_step // s.d_every) % s.r1_every == 0 else 0.0
        self.d_optimizer.zero_grad(set_to_none=True)
        with self.run.autocast():
            out = discriminator_losses(self.d_train, *real_fake, r1_weight)
        out["total"].backward()
        bad = ~torch.isfinite(out["total"])
        optimizer_step(self.d_optimizer, (bad | (skip > 0) if skip is not None else bad).float())
        # x d_every: the loop averages over every step, the discriminator ran on one in d_every
        return {"d_logistic": out["logistic"].float() * s.d_every, "r1": out["r1"].float() * s.d_every}

    @torch.no_grad()
    def evaluate(self, step: int) -> dict:
        """Held-out PSNR of the EMA model's reconstructions and of copying the source frame."""
        mean = heldout_psnr(self.run.ema.shadow, self.val_batches, self.run.autocast)
        metrics = {"psnr": mean["recon"], "psnr_copy_source": mean["copy"], "psnr_gain": mean["recon"] - mean["copy"],
                   "psnr_mouth_gain": mean["mouth"] - mean["mouth_copy"]}
        self.run.log.log(step, metrics, split="val")
        return metrics

    @torch.no_grad()
    def save_samples(self, step: int) -> None:
        batch, count = self.val_batches[0], self.run.s.sample_count
        source, driving = to_unit_range(batch["source"][:count]), to_unit_range(batch["driving"][:count])
        with self.run.autocast():
            recon = self.run.ema.shadow(source, driving).float()
        path = save_pair_grid(self.run.run_dir / "samples" / f"sample_step_{step}.png", source, driving, recon)
        self.run.log.info(f"samples: {path} (rows: source | driving | reconstruction)")
        if self.media is not None:
            self.media.image(TAG_GRID, pair_grid(source, driving, recon), step)

    def checkpoint_extra(self) -> dict:
        extra = {"manifest_fingerprint": self.manifest.get("fingerprint"), "crop_size": self.manifest["input_size"]}
        if self.discriminator is not None:
            extra["discriminator"] = self.discriminator.state_dict()
            extra["d_optimizer"] = self.d_optimizer.state_dict()
        return extra

    def load_extra(self, state: dict, path: Path) -> None:
        if self.discriminator is None:
            return
        if "discriminator" not in state:
            self.run.log.info(f"warning: {path} holds no discriminator: it starts afresh")
            return
        try:
            self.discriminator.load_state_dict(state["discriminator"])
            self.d_optimizer.load_state_dict(state["d_optimizer"])
            keep_fused(self.d_optimizer)
        except (KeyError, RuntimeError, ValueError) as e:
            raise TrainingError(f"checkpoint {path}: cannot restore the discriminator ({e})") from None


def read_crop_sets(s: MotionSettings, warn=print) -> ShardSets:
    """The run's crop-shard sets, read as `floatctl train` reads latent shards (trainer/train_fmt.py,
    shards/mix.py): local folders, folder URLs, brace patterns, several mixed by weight (sets of other
    crop sizes refused with the difference named). Every set's manifest must be a crop manifest; a
    local folder whose shards differ from it is refused unless --accept-damaged-shards."""
    for text in s.data_root:
        if text.startswith("pipe:"):  # floatctl train cannot read one either: no manifest beside it
            raise TrainingError(f"--data-root {text}: a pipe: command has no manifest.json beside it; pass the "
                                f"crop shards' folder, folder URL or brace pattern")
    sets = read_shard_sets(s.data_root)
    for root, manifest in zip(sets.roots, sets.manifests):
        try:
            check_crop_manifest(manifest, root.location, manifest_location(root.location))
        except ManifestError as e:
            raise TrainingError(str(e)) from None
    check_local_folders(sets, s.accept_damaged_shards, warn, CROP_ONLY_MEMBERS)
    return sets


def _train_shards(sets: ShardSets) -> tuple[list[str], dict]:
    """(train shard URLs, the pair stream's mixing arguments); local files checked to be whole tars."""
    try:
        urls, mix = sets.loader_kwargs("train")
        check_local_shards(urls, CROP_MEMBERS)
    except ShardError as e:  # names its file
        raise TrainingError(str(e)) from None
    except (OSError, ValueError) as e:
        raise TrainingError(f"{manifest_location(sets.primary)}: {e}") from None
    return urls, mix


def augment_spec(s: MotionSettings) -> PairAugment:
    try:
        return PairAugment.parse(s.augment)
    except ValueError as e:
        raise TrainingError(str(e)) from None


def _actor_balance(s: MotionSettings, urls: list[str], log) -> tuple:
    """--balance-actors: the actors' weights from the train shards' meta.json (printed), else ()."""
    if not s.balance_actors:
        return ()
    try:
        weights = actor_weights(urls)
    except (OSError, ValueError) as e:
        raise TrainingError(f"--balance-actors: {e}") from None
    log.info("--balance-actors: pairs per clip x " + ", ".join(f"{a} {w:.2f}" for a, w in weights))
    return weights


def _model_config(s: MotionSettings, preset: str, manifest: dict) -> FloatConfig:
    """The preset at the crops' size (the data decides it, as the shards decide the FMT's audio width)."""
    try:
        return get_preset(preset, **{"input_size": int(manifest["input_size"]), **s.overrides})
    except (TypeError, ValueError) as e:
        raise TrainingError(f"model config: {e}") from None


def _val_batches(s: MotionSettings, sets: ShardSets, info: DistInfo, log) -> list[dict]:
    """Val pairs of the first --data-root (mixed sets validate on the first one, as the FMT does)."""
    manifest = sets.manifests[0]
    if not info.is_main or (s.val_step <= 0 and s.sample_step <= 0):
        return []
    batches: list[dict] = []
    if (manifest["splits"].get("val") or {}).get("shards"):
        try:
            val = ValPairs(shard_urls(sets.primary, "val", manifest), s.val_pairs_per_clip, s.val_clips,
                           seed=s.seed, size=int(manifest["input_size"]))
        except (OSError, ValueError) as e:  # a remote val shard that cannot be read: no fixed val set
            raise TrainingError(f"val split of {sets.primary}: {e}") from None
        batches = [to_device(b, info.device) for b in val.batches(s.val_batch_size)]
        if sets.mixed:
            log.info(f"val pairs from the val split of the first --data-root, {sets.primary}")
    if not batches:
        log.info("warning: no val pairs (empty val split): validation and samples are skipped")
    return batches


def prepare(s: MotionSettings, info: DistInfo) -> tuple[Run, MotionStage]:
    setup.check_loop_options(s)
    augment_spec(s)  # a bad --augment is refused before any work
    if s.r1_every < 1 or s.d_every < 1:
        raise TrainingError("--r1-every and --d-every must be at least 1")
    device = info.device
    preset = s.preset or setup.default_preset(device)
    run_dir = Path(s.out or f"runs/motion-{preset}")
    setup.check_out_writable(run_dir, info)
    sets = read_crop_sets(s, print if info.is_main else (lambda message: None))
    manifest = sets.manifest()
    train_urls, mix = _train_shards(sets)
    cfg = _model_config(s, preset, manifest)
    resumed = setup.resume_point(s.resume, run_dir / "checkpoints", MOTION_KIND, info)
    if resumed is not None:
        setup.check_same_config(resumed[1], resumed[0], cfg)
        check_same_shards(resumed[1], resumed[0], manifest)
    try:
        weights = MotionLossWeights(s.l1_weight, s.perceptual_weight, s.adversarial_weight, s.mouth_weight)
        perceptual, perceptual_note = build_perceptual(s.perceptual_weights, device) \
            if weights.perceptual else (None, "perceptual loss off")
    except (PerceptualWeightsError, ValueError) as e:
        raise TrainingError(str(e)) from None
    amp_dtype, use_scaler = setup.configure_numerics(s, device)

    torch.manual_seed(s.seed)  # the same initial weights on every rank
    model = MotionAutoEncoder(cfg.input_size, cfg.dim_w, cfg.dim_m, cfg.ae_width)
    prepare_for_training(model)
    discriminator = Discriminator(cfg.input_size, width=cfg.ae_width) if weights.adversarial else None
    model.to(device)
    if setup.resolve_channels_last(s.channels_last, device):
        to_channels_last(model, *([discriminator] if discriminator is not None else []))
    start_step = int(resumed[1]["step"]) if resumed else 0
    log = setup.open_logger(s, run_dir, info, start_step)
    try:
        if resumed is not None:
            init_note = f"resumed at step {start_step}"
        else:
            init_note = load_init_weights(s.init, model, log.info) if s.init else "from scratch (copy-the-source start)"
        schedule = resolve_schedule(s.lr, s.warmup, resumed[1].get("schedule", {}) if resumed else {}, cfg.name,
                                    s.steps, table=MOTION_LR, lr_factor=setup.lr_factor(s, info))
        ema = EMA(model, s.ema_decay)
        optimizer = setup.make_optimizer(model.parameters(), schedule["lr"], s.weight_decay, BETAS)
        scaler = torch.amp.GradScaler(device.type, enabled=use_scaler)
        d_train, d_optimizer = None, None
        if discriminator is not None:
            discriminator.to(device)
            d_optimizer = setup.make_optimizer(discriminator.parameters(), s.d_lr or schedule["lr"], 0.0, D_BETAS)
            d_train = wrap_ddp(discriminator, info)
        counters, stream_state = setup.saved_counters(resumed), None
        if resumed is not None:
            setup.restore_training_state(resumed[0], resumed[1], model, ema, optimizer, scaler)
            stream_state = setup.saved_stream_state(resumed[1], resumed[0], info, log)
            log.info(f"resumed from {resumed[0]} at step {start_step}")
        train_model = wrap_ddp(model, info)
        if s.compile:
            train_model = torch.compile(train_model)
        num_workers = setup.worker_count(s, device)
        balance = _actor_balance(s, train_urls, log)
        loader = make_pair_loader(train_urls, s.batch_size, num_workers, s.seed, info.rank, info.world_size,
                                  s.pairs_per_clip, pin_memory=device.type == "cuda", size=cfg.input_size,
                                  shuffle_buffer=s.shuffle_buffer, hard_fraction=s.hard_pairs,
                                  augment=augment_spec(s), actor_weights=balance, **mix)
        if stream_state is not None:
            loader.load_state_dict(stream_state, strict=False)
        val_batches = _val_batches(s, sets, info, log)
        resolved = {"preset": preset, "device": str(device), "world_size": info.world_size,
                    "input_size": cfg.input_size, "ae_width": cfg.ae_width, "lr": schedule["lr"],
                    "lr_scaling": setup.describe_lr_scaling(s, info, resumed),
                    "channels_last": setup.resolve_channels_last(s.channels_last, device),
                    "warmup": schedule["warmup"], "init": init_note,
                    "augment": ",".join(augment_spec(s).names()) or "none",
                    "precision": str(amp_dtype).replace("torch.", "") if amp_dtype else "fp32",
                    "num_workers": num_workers, "global_batch": s.batch_size * s.grad_accum * info.world_size,
                    "parameters": count_parameters(model),
                    "discriminator_parameters": count_parameters(discriminator) if discriminator else 0,
                    "train_shards": len(train_urls),
                    "data_roots": " + ".join(r.location + (f" x{r.weight:g}" if r.weight else "") for r in sets.roots),
                    "val_pairs": sum(b["source"].shape[0] for b in val_batches)}
        log.info("floatctl train-motion: " + ", ".join(f"{k} {v}" for k, v in resolved.items()))
        log.info(f"losses: L1 x{s.l1_weight}, mouth-region L1 x{s.mouth_weight}, {perceptual_note} "
                 f"x{s.perceptual_weight}, adversarial "
                 f"x{s.adversarial_weight}" + (f" from step {s.adversarial_start} (R1 gamma {s.r1_gamma} every "
                                               f"{s.r1_every} discriminator steps, a discriminator step every "
                                               f"{s.d_every})" if discriminator else " (no discriminator)"))
        if info.is_main:
            setup.write_run_config(run_dir, {"settings": dataclasses.asdict(s), "resolved": resolved,
                                             "config": cfg.to_dict(), "perceptual": perceptual_note,
                                             "manifest_fingerprint": manifest.get("fingerprint")})
    except BaseException:
        log.close()
        raise
    run = Run(s, info, cfg, MOTION_KIND, run_dir, log, model, train_model, ema, optimizer, scaler, amp_dtype,
              loader, schedule, start_step, counters)
    stage = MotionStage(run, manifest, perceptual, discriminator, d_train, d_optimizer, val_batches)
    if resumed is not None:
        stage.load_extra(resumed[1], resumed[0])
    return run, stage


def train(settings: MotionSettings, info: DistInfo | None = None) -> TrainResult:
    """Train the motion auto-encoder to ``settings.steps`` (or until SIGTERM/SIGINT)."""
    info = info or init_distributed(settings.device)
    run, stage = prepare(settings, info)
    return run_loop(run, stage)
