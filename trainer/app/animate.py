"""What the app's "Animate" button does, without Gradio: check the uploads, then `floatctl sample`'s own code.

``animate`` takes the page's inputs and returns the generated video, the motion
plot and one line of status. Every refusal (a non-image, a silent or too short
recording, a file over the size limit, a checkpoint of the wrong kind) comes
back as an ``AnimateResult`` with ``ok=False`` and the reason, so the page shows
it and the server keeps serving. The crop, the audio reading and the sampling
are trainer/sample/command.py's ``run_sample``: the app only chooses its options.
"""
from __future__ import annotations

import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

from float.config import EMOTIONS, SAMPLING_RATE
from trainer.errors import TrainerError
from trainer.sample.command import run_sample
from trainer.sample.media_input import InputError, load_audio, read_image
from trainer.sample.options import SampleOptions

MAX_UPLOAD_MB = 20  # default size limit of one uploaded file
MIN_AUDIO_SECONDS = 0.5  # shorter is not speech to animate (a click, a cut-off recording)
EMOTION_FROM_SPEECH = "from the speech"  # run_sample's default: the speech-emotion model when known, else none
EMOTION_OPTIONS = (EMOTION_FROM_SPEECH, *EMOTIONS, "none")
SOLVERS = ("euler", "midpoint", "rk4")


@dataclass
class AppConfig:
    """What `floatctl app` was started with: the model and the encoders `floatctl sample` would use."""

    checkpoint: Path
    work_dir: Path  # each request writes into its own folder here
    run_dir: Path | None = None
    max_upload_mb: float = MAX_UPLOAD_MB
    wav2vec2: Path | None = None
    ser: Path | None = None
    float_ckpt: Path | None = None
    data_root: str | None = None
    device: str = "auto"
    crop: bool = True
    locked: bool = False  # served beyond this machine: the page cannot change the checkpoint or the run folder


@dataclass
class AnimateResult:
    ok: bool
    message: str
    video: str | None = None
    plot: str | None = None
    details: dict = field(default_factory=dict)


def check_upload(path: str | Path | None, what: str, max_mb: float) -> Path:
    """The uploaded file's path; InputError when nothing was given or it is over the size limit."""
    if path is None or str(path) == "":
        raise InputError(f"no {what} given: upload one" + (" or record from the microphone" if what == "audio"
                                                          else ""))
    path = Path(path)
    if not path.is_file():
        raise InputError(f"{what} {path.name}: the upload is gone (upload it again)")
    size_mb = path.stat().st_size / 2**20
    if size_mb > max_mb:
        raise InputError(f"{what} {path.name}: {size_mb:.1f} MB is over the {max_mb:g} MB limit of this page")
    return path


def check_inputs(image: str | Path | None, audio: str | Path | None, max_mb: float) -> tuple[Path, Path]:
    """Refuse bad uploads before any model is loaded: size, a readable image, long enough speech."""
    image, audio = check_upload(image, "portrait", max_mb), check_upload(audio, "audio", max_mb)
    read_image(image)  # the same reader run_sample uses: names the file and the reason
    seconds = len(load_audio(audio)) / SAMPLING_RATE  # silent, unreadable, NaN: run_sample's own checks
    if seconds < MIN_AUDIO_SECONDS:
        raise InputError(f"audio {audio.name}: {seconds:.2f} s is too short to animate; give at least "
                         f"{MIN_AUDIO_SECONDS:g} s of speech")
    return image, audio


def animate(config: AppConfig, image, audio, emotion: str = EMOTION_FROM_SPEECH, a_cfg: float = 2.0,
            e_cfg: float = 1.0, nfe: int = 10, solver: str = "euler", seed: int = 0,
            checkpoint: str | Path | None = None, log: Callable[[str], None] = lambda line: None
            ) -> AnimateResult:
    """Animate ``image`` with ``audio``: run_sample on a fresh output folder; never raises for bad input."""
    start = time.perf_counter()
    lines: list[str] = []

    def keep(line: str) -> None:
        lines.append(line)
        log(line)

    try:
        image, audio = check_inputs(image, audio, config.max_upload_mb)
        if emotion not in EMOTION_OPTIONS:
            raise InputError(f"unknown emotion {emotion!r}; choose one of {', '.join(EMOTION_OPTIONS)}")
        if solver not in SOLVERS:
            raise InputError(f"unknown solver {solver!r}; choose one of {', '.join(SOLVERS)}")
        if not 1 <= int(nfe) <= 100:
            raise InputError(f"NFE {nfe}: choose 1 to 100 vector-field evaluations")
        out = config.work_dir / f"{time.strftime('%Y%m%d-%H%M%S')}-{uuid.uuid4().hex[:6]}"
        options = SampleOptions(
            Path(checkpoint or config.checkpoint), audio=audio, image=image, out=out, data_root=config.data_root,
            emotion=None if emotion == EMOTION_FROM_SPEECH else emotion, ser=config.ser, wav2vec2=config.wav2vec2,
            float_ckpt=config.float_ckpt, crop=config.crop, a_cfg=float(a_cfg), e_cfg=float(e_cfg), nfe=int(nfe),
            solver=solver, seed=int(seed), device=config.device)
        result = run_sample(options, log=keep)
    except (InputError, TrainerError) as e:
        return AnimateResult(False, f"error: {e}")
    except Exception as e:  # noqa: BLE001 - the page says what broke and keeps serving
        return AnimateResult(False, f"error: unexpected {type(e).__name__}: {e} (see the server's log)")
    video = (result.files.get("video") or [None])[0]
    plot = (result.files.get("plot") or [None])[0]
    item = (result.metrics.get("items") or [{}])[0]
    seconds = time.perf_counter() - start
    parts = [f"done in {seconds:.1f} s: {item.get('frames', 0)} frames "
             f"({item.get('frames', 0) / 25:.2f} s at 25 fps), emotion {item.get('emotion', '?')}, "
             f"NFE {nfe} ({solver}), audio guidance {a_cfg:g}, emotion guidance {e_cfg:g}, seed {seed}"]
    if video is None:
        parts.append("no video: the checkpoint's shards name no motion decoder (see the server's log); "
                     "the motion plot shows what was generated")
    if result.decoder_random and result.rendered:
        parts.append("the motion decoder has SEEDED RANDOM weights (shards made without float.pth): the video "
                     "is not a face, the motion plot is the evidence")
    return AnimateResult(True, ". ".join(parts), video, plot, {"metrics": result.metrics, "log": lines})
