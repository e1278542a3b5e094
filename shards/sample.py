"""The shard sample codec: one clip's members built, decoded and checked, all here.

Member names, dtypes and the meta.json keys are in shards/format.py; this module
turns a clip's arrays into those members (``encode_sample``), members back into
a padded clip for training windows (``decode_clip``) and checks a sample against
its manifest (``check_sample``, for ``floatctl inspect``).
"""
from __future__ import annotations

import io
import json
from dataclasses import dataclass

import cv2
import numpy as np

from shards.errors import CorruptSample
from shards.format import (AUDIO, AUDIO_DTYPE, EMOTION, EMOTION_PROBS, EMOTIONS, FORMAT_VERSION, LAMBDAS, META,
                           MOTION, MOTION_DTYPE, REFERENCE, REQUIRED_MEMBERS, REQUIRED_META, decode_npy,
                           encode_json, encode_npy, member_problems)

# The reference JPEG (cropped first frame) is kept at the crop size of the shards (the preset's
# input size: 512 px for the paper, 128 for tiny), never shrunk: held-out sampling and training
# samples render from it, and a downscaled reference made them blurry. REFERENCE_SIZE = None
# means "the frame's own size".
REFERENCE_SIZE = None
REFERENCE_QUALITY = 90
EMOTION_MODES = ("auto", "probs", "label")


# ---------------------------------------------------------------- building a sample
def emotion_one_hot(label: str | None) -> np.ndarray:
    """(7,) float32 one-hot in EMOTIONS order; all zeros when the emotion is unknown."""
    out = np.zeros(len(EMOTIONS), dtype=np.float32)
    if label is not None:
        if label not in EMOTIONS:
            raise ValueError(f"emotion {label!r} is not one of {EMOTIONS}")
        out[EMOTIONS.index(label)] = 1.0
    return out


def reference_jpeg(frame: np.ndarray, size: int | None = REFERENCE_SIZE, quality: int = REFERENCE_QUALITY) -> bytes:
    """JPEG of one RGB uint8 frame at its own size, or resized to ``size`` (INTER_AREA when shrinking);
    fixed quality, so deterministic."""
    if frame.ndim != 3 or frame.shape[2] != 3 or frame.dtype != np.uint8:
        raise ValueError(f"reference frame must be (H,W,3) uint8, got {frame.shape} {frame.dtype}")
    if size is not None and (frame.shape[0] != size or frame.shape[1] != size):
        interp = cv2.INTER_AREA if frame.shape[0] > size else cv2.INTER_CUBIC
        frame = cv2.resize(frame, (size, size), interpolation=interp)
    ok, buf = cv2.imencode(".jpg", cv2.cvtColor(frame, cv2.COLOR_RGB2BGR), [cv2.IMWRITE_JPEG_QUALITY, quality])
    if not ok:
        raise RuntimeError("cv2.imencode failed to write the reference JPEG")
    return buf.tobytes()


def decode_reference(data: bytes | None) -> np.ndarray | None:
    """ref.jpg as (S, S, 3) uint8 RGB; None when absent or not decodable."""
    if not data:
        return None
    image = cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_COLOR)
    return None if image is None else cv2.cvtColor(image, cv2.COLOR_BGR2RGB)


def sample_meta(key: str, split: str, fps: int, n_frames: int, settings_fingerprint: str, **fields) -> dict:
    """meta.json of one sample: the REQUIRED_META keys plus what the writer knows (actor, source...)."""
    return {"key": key, "split": split, "fps": fps, "n_frames": int(n_frames),
            "settings_fingerprint": settings_fingerprint, "format_version": FORMAT_VERSION, **fields}


def encode_sample(meta: dict, motion: np.ndarray, lambdas: np.ndarray, audio: np.ndarray, emotion: str | None,
                  first_frame: np.ndarray, emotion_probs: np.ndarray | None = None) -> dict[str, bytes]:
    """The members of one sample: arrays in their on-disk dtypes, the label one-hot, the reference JPEG."""
    members = {
        MOTION: encode_npy(motion.astype(MOTION_DTYPE)),
        LAMBDAS: encode_npy(lambdas.astype(np.float32)),
        AUDIO: encode_npy(audio.astype(AUDIO_DTYPE)),
        EMOTION: encode_npy(emotion_one_hot(emotion)),
        REFERENCE: reference_jpeg(first_frame),
        META: encode_json(meta),
    }
    if emotion_probs is not None:
        members[EMOTION_PROBS] = encode_npy(emotion_probs.astype(np.float32))
    return members


def read_meta(members: dict[str, bytes]) -> dict:
    """A sample's meta.json as a dict ({} when absent or unreadable)."""
    try:
        meta = json.loads(members.get(META) or b"{}")
    except ValueError:
        return {}
    return meta if isinstance(meta, dict) else {}


# ---------------------------------------------------------------- decoding for training
@dataclass
class Clip:
    key: str
    motion: np.ndarray  # (P + T, D) float32, rows [0, P) are zeros
    audio: np.ndarray  # (P + T, A) float32 (float16 when decoded with keep_audio_dtype), rows [0, P) are zeros
    emotion: np.ndarray  # (7,) float32
    num_frames: int  # T
    pad: int  # P


def _npy_into_padded(data: bytes, name: str, pad: int, keep_float16: bool = False) -> np.ndarray:
    """Decode an .npy payload of a 2-D array into a float32 array with ``pad`` zero rows in front.

    Reads the header and views the payload in place, so the only copy is the
    one into the padded float32 array (which also converts float16 audio).
    ``keep_float16``: a float16 payload stays float16 (half the bytes; the
    conversion then happens where the windows are cut, shards/clip_records.py).
    """
    buf = io.BytesIO(data)
    try:
        version = np.lib.format.read_magic(buf)
        if version == (1, 0):
            shape, fortran, dtype = np.lib.format.read_array_header_1_0(buf)
        elif version == (2, 0):
            shape, fortran, dtype = np.lib.format.read_array_header_2_0(buf)
        else:  # rare header versions: let numpy parse them (one extra copy)
            arr = np.load(io.BytesIO(data), allow_pickle=False)
            shape, fortran, dtype = arr.shape, False, arr.dtype
    except Exception as e:  # numpy raises ValueError/SyntaxError/... on garbage headers
        raise CorruptSample(f"{name} is not a valid .npy ({type(e).__name__}: {e})") from e
    if dtype.hasobject or dtype.kind not in "fiu":
        raise CorruptSample(f"{name} has dtype {dtype}, expected a numeric array")
    if len(shape) != 2:
        raise CorruptSample(f"{name} has shape {shape}, expected (frames, features)")
    count = shape[0] * shape[1]
    offset = buf.tell()
    if version not in ((1, 0), (2, 0)):
        src = arr
    else:
        if len(data) - offset < count * dtype.itemsize:
            raise CorruptSample(f"{name} is truncated: {len(data) - offset} data bytes for shape {shape} {dtype}")
        order = "F" if fortran else "C"
        src = np.frombuffer(data, dtype=dtype, count=count, offset=offset).reshape(shape, order=order)
    out = np.empty((pad + shape[0], shape[1]), np.float16 if keep_float16 and dtype == np.float16 else np.float32)
    out[:pad] = 0.0
    out[pad:] = src
    if out.dtype == np.float16:  # NaN and inf are the all-ones exponent (4x faster than a float16 sum)
        bad = bool(((out[pad:].view(np.uint16) & 0x7C00) == 0x7C00).any())
    else:  # one reduction instead of an isfinite mask: NaN/inf anywhere makes the sum non-finite
        bad = not np.isfinite(out[pad:].sum())
    if bad:
        raise CorruptSample(f"{name} holds NaN or infinite values")
    return out


def _small_vector(data: bytes, name: str) -> np.ndarray:
    try:
        arr = np.load(io.BytesIO(data), allow_pickle=False)
    except Exception as e:
        raise CorruptSample(f"{name} is not a valid .npy ({type(e).__name__}: {e})") from e
    if arr.shape != (len(EMOTIONS),) or arr.dtype.kind not in "fiu":
        raise CorruptSample(f"{name} has shape {arr.shape} {arr.dtype}, expected ({len(EMOTIONS)},) numbers")
    arr = arr.astype(np.float32)
    if not np.isfinite(arr).all():
        raise CorruptSample(f"{name} holds NaN or infinite values")
    return arr


def decode_clip(key: str, members: dict[str, bytes], pad: int, emotion: str = "auto",
                motion_dim: int | None = None, audio_dim: int | None = None, keep_audio_dtype: bool = False) -> Clip:
    """Decode one shard sample (member suffix -> bytes) into a padded Clip; CorruptSample if unusable.

    ``keep_audio_dtype``: float16 audio stays float16 (for clip records, shards/clip_records.py);
    otherwise the audio is float32 like the motion.

    ``emotion``: "auto" uses the speech-emotion probabilities when the sample has
    them and the one-hot label otherwise; "probs" requires the probabilities;
    "label" always uses the label.
    """
    if emotion not in EMOTION_MODES:
        raise ValueError(f"emotion must be one of {EMOTION_MODES}, got {emotion!r}")
    wanted = [MOTION, AUDIO, EMOTION_PROBS if emotion == "probs" else EMOTION]
    missing = [m for m in wanted if m not in members]
    if missing:
        raise CorruptSample(f"missing member(s) {missing} (has {sorted(members)})")
    motion = _npy_into_padded(members[MOTION], MOTION, pad)
    audio = _npy_into_padded(members[AUDIO], AUDIO, pad, keep_audio_dtype)
    frames = motion.shape[0] - pad
    if audio.shape[0] - pad != frames:
        raise CorruptSample(f"{AUDIO} has {audio.shape[0] - pad} frames but {MOTION} has {frames}")
    if motion_dim is not None and motion.shape[1] != motion_dim:
        raise CorruptSample(f"{MOTION} is {motion.shape[1]} wide, expected {motion_dim}")
    if audio_dim is not None and audio.shape[1] != audio_dim:
        raise CorruptSample(f"{AUDIO} is {audio.shape[1]} wide, expected {audio_dim}")
    use_probs = emotion == "probs" or (emotion == "auto" and EMOTION_PROBS in members)
    emo_name = EMOTION_PROBS if use_probs else EMOTION
    return Clip(key, motion, audio, _small_vector(members[emo_name], emo_name), frames, pad)


# ---------------------------------------------------------------- checking against the manifest
def _check_array(name: str, data: bytes, dtype: str, ndim: int, width: int | None, where: str,
                 problems: list[str]) -> np.ndarray | None:
    try:
        arr = decode_npy(data)
    except Exception as e:  # np.load raises several kinds on garbage
        problems.append(f"{where}: {name} is not a readable .npy ({type(e).__name__}: {e})")
        return None
    if arr.dtype != np.dtype(dtype):
        problems.append(f"{where}: {name} has dtype {arr.dtype}, manifest says {dtype}")
    if arr.ndim != ndim or (width is not None and arr.shape[-1] != width):
        want = f"(T, {width})" if ndim == 2 else f"({width},)"
        problems.append(f"{where}: {name} has shape {arr.shape}, expected {want}")
        return None
    if not np.isfinite(arr.astype(np.float32)).all():
        problems.append(f"{where}: {name} holds NaN or infinite values")
    return arr


def check_sample(key: str, members: dict[str, bytes], manifest: dict, split: str, where: str) -> tuple[list[str], dict]:
    """Problems of one sample and its parsed meta ({} when unreadable)."""
    feats = manifest["features"]
    want_probs = bool(feats["emotion"].get("probs"))
    required = set(REQUIRED_MEMBERS) | ({EMOTION_PROBS} if want_probs else set())
    problems = member_problems(members, required, where)
    meta: dict = {}
    if META in members:
        try:
            meta = json.loads(members[META])
        except ValueError as e:
            problems.append(f"{where}: {META} is not JSON ({e})")
        else:
            absent = [k for k in REQUIRED_META if k not in meta]
            if absent:
                problems.append(f"{where}: {META} lacks {absent}")
            if meta.get("key", key) != key:
                problems.append(f"{where}: {META} key {meta.get('key')!r} differs from the sample key")
            if meta.get("split", split) != split:
                problems.append(f"{where}: {META} says split {meta.get('split')!r}, shard is {split!r}")
            fp = meta.get("settings_fingerprint")
            if fp is not None and fp != manifest["fingerprint"]:
                problems.append(f"{where}: written with settings fingerprint {fp[:12]}, manifest has "
                                f"{manifest['fingerprint'][:12]}")
    lengths = {}
    for name, feat, ndim in ((MOTION, "motion", 2), (LAMBDAS, "lambdas", 2), (AUDIO, "audio", 2)):
        if name in members:
            spec = feats[feat]
            arr = _check_array(name, members[name], spec.get("dtype", "float32" if feat != "audio" else "float16"),
                               ndim, spec["dim"], where, problems)
            if arr is not None:
                lengths[name] = arr.shape[0]
    for name in (EMOTION, EMOTION_PROBS):
        if name in members:
            arr = _check_array(name, members[name], "float32", 1, feats["emotion"]["dim"], where, problems)
            if arr is None:
                continue
            if name == EMOTION and not (set(np.unique(arr)) <= {0.0, 1.0} and arr.sum() <= 1):
                problems.append(f"{where}: {EMOTION} is not a one-hot (or all-zero) vector: {arr.tolist()}")
            if name == EMOTION_PROBS and (arr.min() < 0 or abs(float(arr.sum()) - 1) > 1e-3):
                problems.append(f"{where}: {EMOTION_PROBS} is not a probability vector (sum {arr.sum():.4f})")
    if lengths:
        if len(set(lengths.values())) > 1:
            problems.append(f"{where}: frame counts disagree: {lengths}")
        t = next(iter(lengths.values()))
        if t < 1:
            problems.append(f"{where}: no frames")
        if meta and meta.get("n_frames") not in (None, t):
            problems.append(f"{where}: {META} n_frames {meta.get('n_frames')} but arrays have {t} frames")
        meta.setdefault("n_frames", t)
    if REFERENCE in members:
        img = cv2.imdecode(np.frombuffer(members[REFERENCE], np.uint8), cv2.IMREAD_COLOR)
        if img is None:
            problems.append(f"{where}: {REFERENCE} is not a decodable JPEG")
    return problems, meta


