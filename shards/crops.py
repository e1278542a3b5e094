"""Crop shards: the 25 fps face crops and 16 kHz audio of every clip, for stage 1.

The shard stage writes them beside the latent shards, from the very frames the
motion encoder sees, so that a newly trained motion encoder re-encodes latents
without decoding video or detecting faces again, and the motion auto-encoder
trains on (source, driving) frame pairs drawn from them.

One WebDataset sample per clip. Member names and dtypes are defined here and
nowhere else:

- ``jpegs.npy``    (N,) uint8: every frame's JPEG (RGB, quality ``JPEG_QUALITY``)
                   concatenated in frame order;
- ``offsets.npy``  (T+1,) int64: frame ``i`` is ``jpegs[offsets[i]:offsets[i+1]]``,
                   so a reader decodes just the frames it needs;
- ``wave.npy``     (T*640,) float32: mono 16 kHz audio aligned with the frames
                   (float32, not int16, so audio features computed from it are
                   bit-identical to the ones the stage computes from the video);
- ``emotion.npy``  (7,) float32 one-hot, as in the latent shards;
- ``meta.json``    key, actor, split, n_frames, fps, size, sampling_rate, source,
                   sha256, source_fps, crop box, emotion, fields, settings_fingerprint.

The folder's ``manifest.json`` has ``kind: "crops"`` (latent manifests have no
kind or ``kind: "latents"``), its own fingerprint, and ``features.frames`` /
``features.wave`` instead of the latent widths.
"""
from __future__ import annotations

import io
from pathlib import Path

import numpy as np

from float.config import EMOTIONS, FPS, SAMPLES_PER_FRAME, SAMPLING_RATE
from shards.errors import CropSampleError, ManifestError
from shards.format import EMOTION, META, encode_json, encode_npy, member_problems
from shards.manifest import read_manifest

CROPS_KIND = "crops"
LATENTS_KIND = "latents"

JPEGS = "jpegs.npy"
OFFSETS = "offsets.npy"
WAVE = "wave.npy"
CROP_MEMBERS = (JPEGS, OFFSETS, WAVE, EMOTION, META)
CROP_ONLY_MEMBERS = (JPEGS, OFFSETS, WAVE)  # what tells a crop shard from a latent shard

JPEG_QUALITY = 90
WAVE_DTYPE = np.float32
REQUIRED_META = ("key", "actor", "split", "n_frames", "fps", "size", "source", "settings_fingerprint")


def manifest_kind(manifest: dict) -> str:
    """"crops" or "latents" (manifests written before crop shards existed carry no kind)."""
    return manifest.get("kind") or LATENTS_KIND


# ---------------------------------------------------------------- encoding
def encode_jpegs(frames: np.ndarray, quality: int = JPEG_QUALITY) -> tuple[np.ndarray, np.ndarray]:
    """(T,S,S,3) RGB uint8 -> (concatenated JPEG bytes (N,) uint8, offsets (T+1,) int64)."""
    import cv2

    if frames.ndim != 4 or frames.shape[3] != 3 or frames.dtype != np.uint8:
        raise ValueError(f"frames must be (T,S,S,3) uint8 RGB, got {frames.shape} {frames.dtype}")
    parts, offsets = [], [0]
    for frame in frames:
        ok, buf = cv2.imencode(".jpg", cv2.cvtColor(frame, cv2.COLOR_RGB2BGR), [cv2.IMWRITE_JPEG_QUALITY, quality])
        if not ok:
            raise RuntimeError("cv2.imencode failed to write a crop JPEG")
        parts.append(buf.reshape(-1))
        offsets.append(offsets[-1] + buf.size)
    jpegs = np.concatenate(parts) if parts else np.zeros(0, np.uint8)
    return jpegs.astype(np.uint8, copy=False), np.asarray(offsets, np.int64)


def crop_members(frames: np.ndarray, wave: np.ndarray, emotion: np.ndarray, meta: dict,
                 quality: int = JPEG_QUALITY) -> dict[str, bytes]:
    """The members of one crop sample. ``meta`` gets n_frames / size / fps / sampling_rate filled in."""
    if len(wave) != len(frames) * SAMPLES_PER_FRAME:
        raise ValueError(f"audio has {len(wave)} samples for {len(frames)} frames "
                         f"(expected {len(frames) * SAMPLES_PER_FRAME})")
    jpegs, offsets = encode_jpegs(frames, quality)
    meta = dict(meta, n_frames=int(len(frames)), size=int(frames.shape[1]), fps=FPS,
                sampling_rate=SAMPLING_RATE, jpeg_quality=quality)
    return {
        JPEGS: encode_npy(jpegs),
        OFFSETS: encode_npy(offsets),
        WAVE: encode_npy(np.asarray(wave, WAVE_DTYPE)),
        EMOTION: encode_npy(np.asarray(emotion, np.float32)),
        META: encode_json(meta),
    }


# ---------------------------------------------------------------- decoding
def npy_view(data: bytes, name: str) -> np.ndarray:
    """A read-only array viewing the .npy payload in place (no copy of the JPEG bytes)."""
    buf = io.BytesIO(data)
    try:
        version = np.lib.format.read_magic(buf)
        read_header = {(1, 0): np.lib.format.read_array_header_1_0,
                       (2, 0): np.lib.format.read_array_header_2_0}.get(version)
        if read_header is None:
            return np.load(io.BytesIO(data), allow_pickle=False)
        shape, fortran, dtype = read_header(buf)
    except Exception as e:  # numpy raises several kinds on garbage headers
        raise CropSampleError(f"{name} is not a valid .npy ({type(e).__name__}: {e})") from e
    if dtype.hasobject:
        raise CropSampleError(f"{name} holds Python objects")
    count = int(np.prod(shape))
    offset = buf.tell()
    if len(data) - offset < count * dtype.itemsize:
        raise CropSampleError(f"{name} is truncated: {len(data) - offset} data bytes for shape {shape} {dtype}")
    return np.frombuffer(data, dtype=dtype, count=count, offset=offset).reshape(shape, order="F" if fortran else "C")


class CropClip:
    """One crop sample, decoded lazily: frames are JPEG-decoded only when asked for."""

    def __init__(self, key: str, members: dict[str, bytes]):
        missing = [m for m in (JPEGS, OFFSETS) if not members.get(m)]
        if missing:
            raise CropSampleError(f"missing member(s) {missing} (has {sorted(k for k, v in members.items() if v)})")
        self.key = key
        self.jpegs = npy_view(members[JPEGS], JPEGS)
        self.offsets = npy_view(members[OFFSETS], OFFSETS)
        if self.jpegs.dtype != np.uint8 or self.jpegs.ndim != 1:
            raise CropSampleError(f"{JPEGS} is {self.jpegs.shape} {self.jpegs.dtype}, expected (N,) uint8")
        o = self.offsets
        if o.dtype.kind not in "iu" or o.ndim != 1 or len(o) < 2:
            raise CropSampleError(f"{OFFSETS} is {o.shape} {o.dtype}, expected (frames+1,) integers")
        if o[0] != 0 or o[-1] != len(self.jpegs) or not (np.diff(o) > 0).all():
            raise CropSampleError(f"{OFFSETS} do not cut {JPEGS} ({len(self.jpegs)} bytes) into frames: "
                                  f"first {o[0]}, last {o[-1]}, increasing {bool((np.diff(o) > 0).all())}")
        self.num_frames = len(o) - 1
        self._members = members

    def frame(self, i: int) -> np.ndarray:
        """Frame ``i`` as (S,S,3) RGB uint8; CropSampleError when its JPEG does not decode."""
        import cv2

        if not 0 <= i < self.num_frames:
            raise IndexError(f"{self.key}: frame {i} of {self.num_frames}")
        data = self.jpegs[int(self.offsets[i]):int(self.offsets[i + 1])]
        img = cv2.imdecode(data, cv2.IMREAD_COLOR)
        if img is None or img.ndim != 3 or img.shape[0] != img.shape[1]:
            raise CropSampleError(f"frame {i} is not a decodable square JPEG")
        return cv2.cvtColor(img, cv2.COLOR_BGR2RGB)

    def frames(self) -> np.ndarray:
        """Every frame, (T,S,S,3) RGB uint8."""
        return np.stack([self.frame(i) for i in range(self.num_frames)])

    def wave(self) -> np.ndarray:
        if not self._members.get(WAVE):
            raise CropSampleError(f"missing member {WAVE}")
        wave = npy_view(self._members[WAVE], WAVE)
        if wave.ndim != 1 or wave.dtype.kind != "f" or len(wave) != self.num_frames * SAMPLES_PER_FRAME:
            raise CropSampleError(f"{WAVE} is {wave.shape} {wave.dtype}, expected "
                                  f"({self.num_frames * SAMPLES_PER_FRAME},) float for {self.num_frames} frames")
        return np.array(wave, np.float32)  # a writable copy: torch refuses read-only arrays

    def emotion(self) -> np.ndarray:
        if not self._members.get(EMOTION):
            raise CropSampleError(f"missing member {EMOTION}")
        arr = npy_view(self._members[EMOTION], EMOTION)
        if arr.shape != (len(EMOTIONS),):
            raise CropSampleError(f"{EMOTION} has shape {arr.shape}, expected ({len(EMOTIONS)},)")
        return np.asarray(arr, np.float32)

    def meta(self) -> dict:
        import json

        try:
            return json.loads(self._members[META])
        except (KeyError, ValueError) as e:
            raise CropSampleError(f"{META} is missing or not JSON ({e!r})") from e


# ---------------------------------------------------------------- the folder
def _refuse_latents(where: str) -> ManifestError:
    return ManifestError(
        f"{where} holds latent shards, not crop shards: write crops with `floatctl shards` (crop shards "
        "go to <out>-crops unless --no-crops; choose the folder with --crops-out) and pass that folder")


def read_crop_manifest(folder: str | Path, name: str = "manifest.json") -> dict:
    """The crop manifest of ``folder``; ManifestError naming the folder when it holds no crop shards."""
    folder = Path(folder)
    if not folder.is_dir():
        raise ManifestError(f"crop shard folder {folder} does not exist (write crops with `floatctl shards`)")
    manifest = read_manifest(folder, name)
    check_crop_manifest(manifest, str(folder), str(folder / name))
    return manifest


def check_crop_manifest(manifest: dict, root: str, where: str) -> None:
    """ManifestError when the manifest read at ``where`` (the manifest of ``root``: a folder, a
    folder URL or a pattern) does not describe crop shards: latent shards, or frames not JPEG."""
    if manifest_kind(manifest) != CROPS_KIND:
        raise _refuse_latents(root)
    frames = (manifest.get("features") or {}).get("frames") or {}
    if frames.get("size") != manifest["input_size"] or frames.get("format") != "jpeg":
        raise ManifestError(f"{where}: features.frames must give format jpeg and size "
                            f"{manifest['input_size']}, got {frames}")


def crop_shard_urls(folder: str | Path, split: str = "train", manifest: dict | None = None) -> list[str]:
    """Paths of the crop shards of ``split`` listed by the folder's crop manifest (each checked to exist)."""
    folder = Path(folder)
    manifest = manifest if manifest is not None else read_crop_manifest(folder)
    if manifest_kind(manifest) != CROPS_KIND:
        raise _refuse_latents(str(folder))
    names = [s["name"] for s in (manifest["splits"].get(split) or {}).get("shards", [])]
    if not names:
        raise FileNotFoundError(f"{folder / 'manifest.json'}: no {split!r} crop shards listed "
                                f"(clips per split: { {k: v['clips'] for k, v in manifest['splits'].items()} })")
    missing = [n for n in names if not (folder / n).is_file()]
    if missing:
        raise FileNotFoundError(f"{folder}: crop shards listed in manifest.json are missing: {missing[:5]}")
    return [str(folder / n) for n in names]


def crop_features(size: int, quality: int = JPEG_QUALITY) -> dict:
    """The crop manifest's ``features`` entry."""
    return {"frames": {"size": size, "format": "jpeg", "quality": quality, "channels": "RGB",
                       "members": [JPEGS, OFFSETS]},
            "wave": {"dtype": np.dtype(WAVE_DTYPE).name, "sampling_rate": SAMPLING_RATE, "member": WAVE},
            "emotion": {"dim": len(EMOTIONS), "dtype": "float32"}}


def check_crop_sample(key: str, members: dict[str, bytes], manifest: dict, split: str, where: str
                      ) -> tuple[list[str], dict]:
    """Problems of one crop sample (``floatctl inspect``) and its meta ({} when unreadable).

    Checks members, meta, offsets, audio length, the emotion vector, and decodes the first and
    last frame (decoding every frame would make inspect as slow as the shard stage).
    """
    problems = member_problems(members, CROP_MEMBERS, where)
    meta: dict = {}
    try:
        clip = CropClip(key, members)
        meta = clip.meta()
        absent = [k for k in REQUIRED_META if k not in meta]
        if absent:
            problems.append(f"{where}: {META} lacks {absent}")
        for field_, want in (("key", key), ("split", split), ("n_frames", clip.num_frames),
                             ("size", manifest["input_size"]), ("settings_fingerprint", manifest["fingerprint"])):
            if meta.get(field_, want) != want:
                problems.append(f"{where}: {META} {field_} is {meta.get(field_)!r}, expected {want!r}")
        for i in sorted({0, clip.num_frames - 1}):
            img = clip.frame(i)
            if img.shape[0] != manifest["input_size"]:
                problems.append(f"{where}: frame {i} is {img.shape[0]} px, manifest says {manifest['input_size']}")
        wave = clip.wave()
        if not np.isfinite(wave).all():
            problems.append(f"{where}: {WAVE} holds NaN or infinite values")
        emo = clip.emotion()
        if not (set(np.unique(emo)) <= {0.0, 1.0} and emo.sum() <= 1):
            problems.append(f"{where}: {EMOTION} is not a one-hot (or all-zero) vector: {emo.tolist()}")
    except CropSampleError as e:
        problems.append(f"{where}: {e}")
    return problems, meta


def crop_manifest_base(input_size: int, crop: dict, content: dict, settings: dict,
                       created_by: str = "floatctl shards", quality: int = JPEG_QUALITY) -> dict:
    """A crop manifest minus its splits. ``content``: what changes the samples (hashed into the
    fingerprint); ``settings``: the run's options, recorded as they were."""
    from shards.format import FORMAT_VERSION
    from shards.manifest import fingerprint_inputs, settings_fingerprint

    content = dict(content, kind=CROPS_KIND, input_size=input_size, crop=crop, jpeg_quality=quality,
                   wave_dtype=np.dtype(WAVE_DTYPE).name)
    return {
        "kind": CROPS_KIND, "format_version": FORMAT_VERSION, "created_by": created_by,
        "features": crop_features(input_size, quality), "fps": FPS, "sampling_rate": SAMPLING_RATE,
        "input_size": input_size, "encoders": {}, "crop": crop, "settings": settings,
        "fingerprint_inputs": fingerprint_inputs(content, {}),
        "fingerprint": settings_fingerprint(content, {}),
    }
