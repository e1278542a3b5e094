"""The options of both trainers, each written once: name, default and help live on the dataclass field.

``floatctl train`` and ``floatctl train-motion`` are generated from these
dataclasses (``typer_command``), so a default or a help text has one home.
``CommonSettings`` holds what the FMT trainer and the motion auto-encoder
trainer share (the loop, checkpoints, logging, numerics); each stage adds its own.
"""
from __future__ import annotations

import dataclasses
import inspect
import json
from dataclasses import dataclass, field
from typing import Any, Callable, List, Optional

from float.config import FloatConfig


class SettingsError(ValueError):
    """A bad option value; the message names the option."""


def opt(default: Any, help: str, *decls: str, cli: bool = True, factory: Callable | None = None):
    """A settings field with its command-line help (``decls`` e.g. "--compile" for a flag)."""
    meta = {"help": help, "decls": decls, "cli": cli}
    if factory is not None:
        return field(default_factory=factory, metadata=meta)
    return field(default=default, metadata=meta)


@dataclass
class CommonSettings:
    """Options shared by both training stages; None / -1 mean "pick a default for the device" (printed)."""

    config: Optional[str] = opt(None, "YAML or JSON file of options (names as on the command line, `set:` for "
                                      "model settings); options given on the command line win over it.")
    data_root: List[str] = opt(None, "Shards: a folder holding manifest.json, a folder URL (http/https, s3, gs) or "
                                     "a brace pattern (train-{000000..000009}.tar; the manifest is read beside "
                                     "it). Repeat to mix sets, each with a share of the clips: --data-root "
                                     "a:0.3 --data-root b:0.7 (see shards/mix.py).",
                               factory=lambda: ["data/shards"])
    out: Optional[str] = opt(None, "Run folder (default: runs/<stage>-<preset>).")
    preset: Optional[str] = opt(None, "paper, small or tiny (default: paper on CUDA, tiny on CPU).")
    overrides: dict = opt(None, "Model settings over the preset (--set key=value).", cli=False, factory=dict)
    steps: int = opt(10000, "Optimizer steps to train to (a resumed run continues up to this).")
    batch_size: int = opt(8, "Samples per micro-batch per process (the paper: 8).")
    grad_accum: int = opt(1, "Micro-batches per optimizer step.")
    lr: Optional[float] = opt(None, "Peak learning rate (default: the stage's per-preset rate, printed).")
    weight_decay: float = opt(0.0, "AdamW weight decay.")
    lr_scaling: str = opt("none", "Scale the peak rate (--lr or the default) with the global batch (batch-size x "
                                  "grad-accum x processes) against the paper's batch 8: none, sqrt (x sqrt(global/8)"
                                  ", for Adam) or linear (x global/8); the rate used is printed at the start. A "
                                  "resumed run keeps its rate.")
    warmup: int = opt(-1, "Linear warmup steps (-1: 5% of --steps, at most 1000).")
    schedule: str = opt("constant", "After warmup: constant or cosine (to 10% of --lr).")
    grad_clip: float = opt(1.0, "Clip the gradient norm to this.")
    ema_decay: float = opt(0.9999, "EMA decay (warmed up as (1+n)/(10+n)); the EMA is validated.")
    precision: str = opt("auto", "auto, fp32, bf16 or fp16 (auto: bf16 on CUDA, else fp16 + scaler; fp32 on CPU).")
    compile: bool = opt(False, "torch.compile the model.", "--compile")
    deterministic: bool = opt(False, "Deterministic kernels: a resumed run matches an uninterrupted one.",
                              "--deterministic")
    device: str = opt("auto", "auto, cpu or cuda.")
    num_workers: int = opt(-1, "DataLoader workers per process (-1: 0 on CPU, up to 8 per GPU).")
    seed: int = opt(0, "Seed of the weights, the data stream and every random draw of a step.")
    log_step: int = opt(100, "Log losses, lr, grad norm and throughput every N steps.")
    val_step: int = opt(1000, "Validate every N steps (0: never).")
    sample_step: int = opt(5000, "Save and render samples of val data every N steps (0: never).")
    save_step: int = opt(1000, "Checkpoint every N steps (0: only the final one).")
    keep: int = opt(3, "Periodic checkpoints to keep (0: all).")
    resume: Optional[str] = opt(None, "'auto': newest good checkpoint of --out (fresh if none); or a checkpoint "
                                      "file or run folder (its final checkpoint, else its newest).")
    max_nonfinite: int = opt(20, "Stop after this many non-finite losses in a row (such steps change no weight; "
                                 "the count is read at log steps and before checkpoints, so the run stops at the "
                                 "next of those, never saving past the limit).")
    progress: Optional[bool] = opt(None, "tqdm bar (default: on a terminal).", "--progress/--no-progress")
    tensorboard: bool = opt(True, "Write TensorBoard curves.", cli=False)
    early_stop: int = opt(0, "Stop when the validation score has not improved for this many validations in a "
                             "row (0: never); the best checkpoint is kept as best_step_N.pt and named.")
    wandb: bool = opt(False, "Also log to Weights & Biases (optional package; offline unless WANDB_MODE is set).",
                      "--wandb")
    profile_steps: Optional[str] = opt(None, "Record steps A+1 to B with torch.profiler (A:B, e.g. 20:25): top "
                                             "operators, the device's busy share and a Chrome trace in <run>/profile/.")
    accept_damaged_shards: bool = opt(
        False, "Train on a local shard folder although some shards differ from its manifest (cut short, "
               "replaced): the clips lost are counted and printed. Without it such a folder is refused at start-up.",
        "--accept-damaged-shards")

    def __post_init__(self) -> None:
        # Callers (tests, benchmarks, an older config.json) may give one root as a plain string.
        if isinstance(self.data_root, (str, bytes)) or not isinstance(self.data_root, (list, tuple)):
            self.data_root = [str(self.data_root)]
        else:
            self.data_root = [str(r) for r in self.data_root]


@dataclass
class TrainSettings(CommonSettings):
    """Every option of ``floatctl train`` (the Flow Matching Transformer and the audio projection)."""

    val_step: int = opt(1000, "Validation loss and generation error every N steps (0: never).")
    sample_step: int = opt(5000, "Save sampled motion of val windows (rendered to video) every N steps (0: never).")
    init: Optional[str] = opt(None, "Official float.pth: start from its fmt.* and audio projection.")
    loss_weights: str = opt("1,1,1", "Weights of the loss terms current,preceding,velocity (0 switches one off).")
    normalize_motion: str = opt(
        "auto", "Standardise motion latents per dimension with train-shard statistics (stored in the "
                "checkpoint): auto = unless the shards' motion encoder is the official float.pth's (random "
                "or stage-1 encoders); on; off (raw latents, as the official model; always off with --init).")
    windows_per_clip: int = opt(4, "Training windows cut from each decoded clip.", cli=False)
    shuffle_buffer: int = opt(64, "Windows in the shuffle buffer.", cli=False)
    window_cut: str = opt("auto", "Where training windows are cut: host (the loader workers batch whole windows), "
                                  "device (the workers ship each batch's clip rows once, audio float16 as stored, "
                                  "and the windows are cut after the copy to the device: fewer bytes to copy) or "
                                  "auto (device on CUDA, host on CPU). The batches are the same either way.")
    val_clips: int = opt(32, "Val clips to validate on (the first of the val split).")
    val_windows_per_clip: int = opt(2, "Windows per val clip.")
    val_batch_size: int = opt(16, "Val batch size.", cli=False)
    val_nfe: int = opt(10, "ODE steps of the generation error and samples.", cli=False)
    sample_count: int = opt(4, "Samples rendered at each --sample-step.", cli=False)


def parse_override(text: str) -> tuple[str, object]:
    """"depth=4" -> ("depth", 4): the value is parsed as JSON when it can be, else kept as a string."""
    if "=" not in text:
        raise SettingsError(f"--set {text!r}: expected KEY=VALUE, e.g. --set depth=4")
    key, value = text.split("=", 1)
    known = {f.name for f in dataclasses.fields(FloatConfig)}
    if key not in known:
        raise SettingsError(f"--set {key}: not a model setting; known: {sorted(known)}")
    try:
        return key, json.loads(value)
    except json.JSONDecodeError:
        return key, value


def read_config_file(path: str, settings_cls: type) -> dict:
    """{field: value} from a YAML / JSON options file; ``set`` (a mapping) becomes ``overrides``."""
    import yaml

    try:
        loaded = yaml.safe_load(open(path).read())  # YAML is a superset of JSON
    except OSError as e:
        raise SettingsError(f"--config {path}: cannot read it ({e.strerror or e})") from None
    except yaml.YAMLError as e:
        raise SettingsError(f"--config {path}: not valid YAML ({e})") from None
    if loaded is None:
        return {}
    if not isinstance(loaded, dict):
        raise SettingsError(f"--config {path}: expected a mapping of option: value, found {type(loaded).__name__}")
    fields = {f.name: f for f in dataclasses.fields(settings_cls) if f.metadata.get("cli", True)}
    values: dict = {}
    for key, value in loaded.items():
        name = str(key).replace("-", "_")
        if name == "set":
            if not isinstance(value, dict):
                raise SettingsError(f"--config {path}: `set` must map model settings to values, e.g. set: {{depth: 4}}")
            for k, v in value.items():
                try:
                    parse_override(f"{k}={json.dumps(v)}")  # refuses unknown model settings by name
                except SettingsError as e:
                    raise SettingsError(f"--config {path}: set: {str(e).removeprefix('--set ')}") from None
            values["overrides"] = dict(value)
        elif name not in fields or name == "config":
            raise SettingsError(f"--config {path}: unknown option {key!r}; known: "
                                f"{sorted(n.replace('_', '-') for n in fields if n != 'config') + ['set']}")
        else:
            values[name] = _coerce(value, fields[name], path)
    return values


def _coerce(value, f: dataclasses.Field, path: str):
    kind = _cli_type(f.type)
    if kind == List[str]:  # one value or a YAML list of them
        items = value if isinstance(value, list) else [value]
        if not items or not all(isinstance(v, (str, int, float)) and not isinstance(v, bool) for v in items):
            raise SettingsError(f"--config {path}: {f.name.replace('_', '-')} must be a string or a list of "
                                f"strings, got {value!r}")
        return [str(v) for v in items]
    base = next((t for t in (bool, int, float, str) if kind in (t, Optional[t])), None)
    if value is None or base is None or isinstance(value, base):
        return value
    if base is float and isinstance(value, int) and not isinstance(value, bool):
        return float(value)
    if base is str and isinstance(value, (int, float)) and not isinstance(value, bool):
        return str(value)
    raise SettingsError(f"--config {path}: {f.name.replace('_', '-')} must be {base.__name__}, got {value!r}")


def typer_command(settings_cls: type, run: Callable[[Any], None], name: str, doc: str) -> Callable:
    """A typer command whose options are ``settings_cls``'s fields (plus ``--set``); calls run(settings).

    Precedence: an option given on the command line, then the --config file, then the default."""
    import typer

    params = [inspect.Parameter("ctx", inspect.Parameter.POSITIONAL_OR_KEYWORD, annotation=typer.Context)]
    for f in dataclasses.fields(settings_cls):
        if not f.metadata.get("cli", True):
            continue
        decls = f.metadata.get("decls", ())
        default = f.default_factory() if f.default is dataclasses.MISSING else f.default
        option = typer.Option(default, *decls, help=f.metadata["help"])
        params.append(inspect.Parameter(f.name, inspect.Parameter.KEYWORD_ONLY, default=option,
                                        annotation=_cli_type(f.type)))
    params.append(inspect.Parameter("set_", inspect.Parameter.KEYWORD_ONLY, annotation=List[str],
                                    default=typer.Option([], "--set", help="Override a model setting, e.g. "
                                                                           "--set depth=4 (repeatable).")))

    def command(ctx, **values) -> None:
        try:
            set_items = values.pop("set_")
            from_file = read_config_file(values["config"], settings_cls) if values.get("config") else {}
            overrides = from_file.pop("overrides", {})
            for key, value in from_file.items():
                if _from_default(ctx, key):
                    values[key] = value
            overrides.update(dict(parse_override(item) for item in set_items))
        except SettingsError as e:
            from trainer.errors import exit_with_error

            exit_with_error(str(e))
            return
        run(settings_cls(**values, overrides=overrides))

    command.__signature__ = inspect.Signature(params)
    command.__doc__ = doc
    command.__name__ = name
    return command


def _from_default(ctx, name: str) -> bool:
    """Whether typer filled ``name`` with its default (the user did not give it on the command line)."""
    source = ctx.get_parameter_source(name)
    return source is None or getattr(source, "name", "") in ("DEFAULT", "DEFAULT_MAP")


_TYPES = {"List[str]": List[str], "str": str, "int": int, "float": float, "bool": bool, "Optional[str]": Optional[str],
          "Optional[int]": Optional[int], "Optional[float]": Optional[float], "Optional[bool]": Optional[bool]}


def _cli_type(annotation) -> Any:
    """The field's type as typer wants it (annotations are strings under ``from __future__``)."""
    return _TYPES[annotation] if isinstance(annotation, str) else annotation


@dataclass
class MotionSettings(CommonSettings):
    """Every option of ``floatctl train-motion`` (stage 1: the LIA-style motion auto-encoder)."""

    data_root: List[str] = opt(None, "Crop shards (written by `floatctl shards`): a folder holding manifest.json, "
                                     "a folder URL (http/https, s3, gs) or a brace pattern (train-{000000..000009}"
                                     ".tar; the manifest is read beside it). Repeat to mix sets of the same crop "
                                     "size by share of clips: --data-root a:0.3 --data-root b:0.7 (val pairs come "
                                     "from the first).",
                               factory=lambda: ["data/crops"])
    out: Optional[str] = opt(None, "Run folder (default: runs/motion-<preset>).")
    lr: Optional[float] = opt(None, "Peak learning rate of the auto-encoder (default per preset, printed).")
    ema_decay: float = opt(0.999, "EMA decay of the auto-encoder weights (validated, rendered, exported).")
    grad_clip: float = opt(10.0, "Clip the auto-encoder's gradient norm to this.")
    val_step: int = opt(500, "Held-out PSNR (reconstruction vs copying the source frame) every N steps (0: never).")
    sample_step: int = opt(500, "PNG grid source | driving | reconstruction of val pairs every N steps (0: never).")
    save_step: int = opt(500, "Checkpoint every N steps (0: only the final one).")
    l1_weight: float = opt(1.0, "Weight of the L1 reconstruction loss (0: off).")
    perceptual_weight: float = opt(1.0, "Weight of the perceptual loss (0: off).")
    adversarial_weight: float = opt(0.0, "Weight of the adversarial loss (0: off, no discriminator).")
    mouth_weight: float = opt(0.0, "Weight of an extra L1 on the mouth region of the crop (float/motion_training.py "
                                   "MOUTH_BOX; 0: off). Teaches the mouth that the whole-frame L1 hardly sees.")
    perceptual_weights: Optional[str] = opt(
        None, "VGG19 state dict (torchvision names) for the perceptual loss; without one a weight-free "
              "structure loss (multi-scale L1 + image gradients) stands in, and the run says so.")
    d_lr: Optional[float] = opt(None, "Discriminator learning rate (default: the auto-encoder's).")
    r1_gamma: float = opt(10.0, "R1 penalty weight gamma of the discriminator (0: off).")
    r1_every: int = opt(16, "Apply R1 every N discriminator steps (StyleGAN2's lazy regularisation).")
    d_every: int = opt(1, "A discriminator step every N auto-encoder steps (1: every step); its schedule is a "
                          "function of the step, so a resumed run keeps it.")
    channels_last: Optional[bool] = opt(None, "Channels-last (NHWC) memory format for the auto-encoder, the "
                                              "discriminator and their images (default: on CUDA, where "
                                              "cuDNN's tensor-core convolutions want it; off elsewhere).",
                                        "--channels-last/--no-channels-last")
    adversarial_start: int = opt(0, "Steps before the adversarial term and the discriminator start.")
    pairs_per_clip: int = opt(8, "(source, driving) pairs drawn from each decoded clip.")
    hard_pairs: float = opt(0.5, "Share of pairs whose driving frame is the one of 8 candidates farthest from the "
                                 "source (measured: a closed mouth learns to open only with them; 0: all uniform).")
    augment: str = opt("none", "Transforms shared by a pair's source and driving frame, comma-separated: flip, "
                               "colour, affine (scale and shift); 'all' or 'none'. They show the model more faces "
                               "than a few people give (shards/augment.py).")
    balance_actors: bool = opt(False, "Draw every actor's (speaker's) pairs evenly, whatever their footage: a "
                                      "clip's pairs are scaled by clips / actors / its actor's clips.",
                               "--balance-actors")
    init: Optional[str] = opt(None, "Start from an official float.pth's motion_autoencoder.* (full width) or a "
                                    "stage-1 checkpoint's EMA weights (a file, or a run folder: its final "
                                    "checkpoint, else its newest).")
    shuffle_buffer: int = opt(256, "Pairs in the shuffle buffer.", cli=False)
    val_clips: int = opt(16, "Val clips to validate on (the first of the val split).")
    val_pairs_per_clip: int = opt(4, "(source, driving) pairs per val clip (a few held-out people need more).")
    val_batch_size: int = opt(16, "Val batch size.", cli=False)
    sample_count: int = opt(6, "Pairs in each sample grid.", cli=False)
