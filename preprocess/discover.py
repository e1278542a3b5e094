"""Find the clips of a dataset folder: RAVDESS (folders or the Zenodo zips read in
place) or any folder of talking-head videos.

Nothing is decoded here; discovery only reads names (and zip indexes), so it is
fast and deterministic. Problems found from names alone become `Rejected`
entries; problems inside the media are found later by `prepare_clip`.
"""
from __future__ import annotations

import re
import zipfile
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath

from shards.format import RAVDESS_TO_FLOAT

KINDS = ("auto", "ravdess", "folder")
VOCAL_CHANNELS = ("speech", "song")
VIDEO_EXTENSIONS = (".mp4", ".mkv", ".mov")

# RAVDESS name fields, in file-name order: MM-VV-EE-II-SS-RR-AA.
MODALITIES = {1: "audio-video", 2: "video-only", 3: "audio-only"}
VOCAL_CHANNEL_CODES = {1: "speech", 2: "song"}
INTENSITIES = {1: "normal", 2: "strong"}
RAVDESS_EMOTIONS = RAVDESS_TO_FLOAT  # file-name code -> FLOAT emotion (calm -> neutral)

ZIP_PREFIX = "zip:"
ZIP_SEPARATOR = "::"
_RAVDESS_NAME = re.compile(r"^(\d\d)-(\d\d)-(\d\d)-(\d\d)-(\d\d)-(\d\d)-(\d\d)$")
_ACTOR_DIR = re.compile(r"^Actor_(\d\d)$")
_RAVDESS_ZIP = re.compile(r"^(Video|Audio)_(Speech|Song)_Actors?_[\d-]+\.zip$", re.IGNORECASE)
_UNSAFE_KEY_CHARS = re.compile(r"[^A-Za-z0-9_-]+")


@dataclass(frozen=True)
class ClipSource:
    """One clip to prepare: where its video and audio come from, and its labels."""

    clip_id: str  # stable unique sample key, safe for tar member names (no dots or slashes)
    video: str  # file path, or "zip:/abs/archive.zip::member/path.mp4"
    audio: str | None  # separate audio file or zip member; None: the video's own track
    actor: str  # identity used for splits
    emotion: str | None  # one of EMOTIONS, None when unknown
    # Parsed RAVDESS name fields, {} otherwise. Left out of the hash (a dict has none);
    # the clip_id already identifies the clip.
    fields: dict = field(default_factory=dict, hash=False)


@dataclass(frozen=True)
class Rejected:
    path: str
    reason: str


@dataclass(frozen=True)
class _MediaFile:
    """A file or zip member found while scanning: its path string and its name parts."""

    path: str
    name: PurePosixPath  # file name with its parent folder (the zip member path for zips)


def zip_member_path(archive: Path, member: str) -> str:
    return f"{ZIP_PREFIX}{archive.resolve()}{ZIP_SEPARATOR}{member}"


def split_zip_member_path(path: str) -> tuple[str, str] | None:
    """("archive.zip", "member/name") for a "zip:...::..." path, None for a plain path."""
    if not path.startswith(ZIP_PREFIX):
        return None
    archive, sep, member = path[len(ZIP_PREFIX):].rpartition(ZIP_SEPARATOR)
    if not sep or not archive or not member:
        raise ValueError(f"malformed zip member path {path!r} (expected 'zip:ARCHIVE::MEMBER')")
    return archive, member


def parse_ravdess_name(stem: str) -> dict:
    """The seven RAVDESS fields of a file stem like "01-01-05-01-01-01-12".

    Raises ValueError naming the offending field when the stem is not a RAVDESS name.
    """
    match = _RAVDESS_NAME.match(stem)
    if not match:
        raise ValueError("expected seven two-digit fields MM-VV-EE-II-SS-RR-AA")
    modality, vocal, emotion, intensity, statement, repetition, actor = map(int, match.groups())
    checks = (("modality", modality, MODALITIES), ("vocal channel", vocal, VOCAL_CHANNEL_CODES),
              ("emotion", emotion, RAVDESS_EMOTIONS), ("intensity", intensity, INTENSITIES),
              ("statement", statement, {1, 2}), ("repetition", repetition, {1, 2}))
    for label, value, allowed in checks:
        if value not in allowed:
            raise ValueError(f"{label} code {value:02d} is not one of {sorted(allowed)}")
    if actor < 1:
        raise ValueError("actor code 00 is not a valid actor")
    return {"modality": MODALITIES[modality], "vocal_channel": VOCAL_CHANNEL_CODES[vocal],
            "emotion_code": emotion, "intensity": INTENSITIES[intensity],
            "statement": statement, "repetition": repetition, "actor": actor}


def discover(root: Path, kind: str = "auto", vocal_channels: tuple[str, ...] = VOCAL_CHANNELS,
             speaker_pattern: str | None = None) -> tuple[list[ClipSource], list[Rejected]]:
    """All clips under `root`, sorted by clip_id, and the files rejected by name.

    kind: "ravdess", "folder", or "auto" (RAVDESS when `root` holds Actor_NN folders or
    RAVDESS zips). The speaker (``actor``, what splits go by) of a plain-folder clip: see
    ``speaker_of``. Raises FileNotFoundError / NotADirectoryError / ValueError for a
    missing root, a file given as root, an unknown kind or vocal channel, or a bad pattern.
    """
    root = Path(root)
    if kind not in KINDS:
        raise ValueError(f"unknown dataset kind {kind!r}; expected one of {KINDS}")
    unknown = set(vocal_channels) - set(VOCAL_CHANNELS)
    if unknown:
        raise ValueError(f"unknown vocal channel(s) {sorted(unknown)}; expected some of {VOCAL_CHANNELS}")
    if not root.exists():
        raise FileNotFoundError(f"input folder {root} does not exist")
    if not root.is_dir():
        raise NotADirectoryError(f"input {root} is not a folder")
    if kind == "auto":
        kind = "ravdess" if looks_like_ravdess(root) else "folder"
    pattern = compile_speaker_pattern(speaker_pattern)
    if kind == "ravdess":
        if pattern is not None:
            raise ValueError("--speaker-pattern is for plain folders; RAVDESS actors come from the file names")
        clips, rejected = _discover_ravdess(root, tuple(vocal_channels))
    else:
        clips, rejected = _discover_folder(root, pattern)
    return sorted(clips, key=lambda c: c.clip_id), sorted(rejected, key=lambda r: (r.path, r.reason))


def looks_like_ravdess(root: Path) -> bool:
    return bool(_actor_dirs(root)) or bool(_ravdess_zips(root))


# ---------------------------------------------------------------- RAVDESS


def _actor_dirs(root: Path) -> list[Path]:
    found = [p for p in root.rglob("Actor_*") if p.is_dir() and _ACTOR_DIR.match(p.name)]
    if _ACTOR_DIR.match(root.name):
        found.append(root)
    return sorted(found)


def _ravdess_zips(root: Path) -> list[Path]:
    return sorted(p for p in root.rglob("*") if p.is_file() and _RAVDESS_ZIP.match(p.name))


def _is_hidden(name: str) -> bool:
    # macOS zips carry "__MACOSX/._name.mp4" resource forks: not media, not errors.
    return name.startswith(".") or name.startswith("__MACOSX")


def _unsafe_member_reason(member: str) -> str | None:
    parts = PurePosixPath(member.replace("\\", "/")).parts
    if member.startswith(("/", "\\")) or re.match(r"^[A-Za-z]:", member):
        return "absolute path"
    if ".." in parts:
        return "'..' component"
    return None


def _scan_ravdess_files(root: Path) -> tuple[list[_MediaFile], list[Rejected]]:
    files: list[_MediaFile] = []
    rejected: list[Rejected] = []
    for actor_dir in _actor_dirs(root):
        for path in sorted(actor_dir.iterdir()):
            if path.is_file() and not _is_hidden(path.name) and path.suffix.lower() in (".mp4", ".wav"):
                files.append(_MediaFile(str(path), PurePosixPath(actor_dir.name, path.name)))
    for archive in _ravdess_zips(root):
        try:
            with zipfile.ZipFile(archive) as zf:
                names = zf.namelist()
        except (zipfile.BadZipFile, OSError) as exc:
            rejected.append(Rejected(str(archive), f"cannot read zip archive: {exc}"))
            continue
        for member in sorted(names):
            if member.endswith("/"):
                continue
            location = zip_member_path(archive, member)
            unsafe = _unsafe_member_reason(member)
            if unsafe:
                # Never used, even though we do not extract: the name is hostile.
                rejected.append(Rejected(location, f"zip member name would escape the archive ({unsafe})"))
                continue
            name = PurePosixPath(member)
            if any(_is_hidden(part) for part in name.parts) or name.suffix.lower() not in (".mp4", ".wav"):
                continue
            files.append(_MediaFile(location, name))
    return files, rejected


def _discover_ravdess(root: Path, vocal_channels: tuple[str, ...]) -> tuple[list[ClipSource], list[Rejected]]:
    files, rejected = _scan_ravdess_files(root)
    parsed: list[tuple[_MediaFile, dict]] = []
    for media in files:
        stem, suffix = media.name.stem, media.name.suffix.lower()
        try:
            fields = parse_ravdess_name(stem)
        except ValueError as exc:
            rejected.append(Rejected(media.path, f"name does not parse as RAVDESS MM-VV-EE-II-SS-RR-AA: "
                                                 f"{media.name.name!r}: {exc}"))
            continue
        folder = _ACTOR_DIR.match(media.name.parent.name)
        if folder and int(folder.group(1)) != fields["actor"]:
            rejected.append(Rejected(media.path, f"actor field {fields['actor']:02d} of {media.name.name!r} "
                                                 f"does not match its folder {media.name.parent.name}"))
            continue
        is_audio_only = fields["modality"] == "audio-only"
        if is_audio_only != (suffix == ".wav"):
            rejected.append(Rejected(media.path, f"RAVDESS modality {stem[:2]} ({fields['modality']}) "
                                                 f"does not match the file type {suffix}"))
            continue
        if fields["vocal_channel"] in vocal_channels:
            parsed.append((media, fields))

    # The six fields after the modality identify one recording.
    def recording(stem: str) -> str:
        return stem[3:]

    audio_only = {}
    audio_video = set()
    for media, fields in parsed:
        if fields["modality"] == "audio-only":
            audio_only.setdefault(recording(media.name.stem), media.path)
        elif fields["modality"] == "audio-video":
            audio_video.add(recording(media.name.stem))

    clips: dict[str, ClipSource] = {}
    for media, fields in parsed:
        stem = media.name.stem
        if fields["modality"] == "audio-only":
            continue  # audio only pairs with a video-only clip; alone it is not a clip
        audio = None
        if fields["modality"] == "video-only":
            if recording(stem) in audio_video:
                # RAVDESS ships each recording twice: 01 (with sound) and 02 (the same
                # video, muted). Using both would duplicate the sample.
                continue
            audio = audio_only.get(recording(stem))
            if audio is None:
                rejected.append(Rejected(media.path, f"video-only RAVDESS clip (modality 02) has no "
                                                     f"audio-only file 03-{recording(stem)}.wav to pair with"))
                continue
        if stem in clips:
            rejected.append(Rejected(media.path, f"duplicate clip {stem} (also found at {clips[stem].video})"))
            continue
        clips[stem] = ClipSource(clip_id=stem, video=media.path, audio=audio, actor=f"{fields['actor']:02d}",
                                 emotion=RAVDESS_EMOTIONS[fields["emotion_code"]], fields=fields)
    return list(clips.values()), rejected


# ---------------------------------------------------------------- plain folders


def _clip_key(parts: tuple[str, ...]) -> str:
    key = "__".join(_UNSAFE_KEY_CHARS.sub("_", part).strip("_") or "_" for part in parts)
    return key


def compile_speaker_pattern(pattern: str | None) -> re.Pattern | None:
    """The --speaker-pattern regex, checked: it must compile and have a group (the speaker)."""
    if pattern is None:
        return None
    try:
        compiled = re.compile(pattern)
    except re.error as exc:
        raise ValueError(f"--speaker-pattern {pattern!r} is not a regular expression: {exc}") from None
    if compiled.groups < 1:
        raise ValueError(f"--speaker-pattern {pattern!r} has no group: put the speaker in (...), "
                         r"e.g. '^([^/]+)/' or '(spk\d+)_'")
    return compiled


def speaker_of(relative: PurePosixPath, pattern: re.Pattern | None) -> str | None:
    """The speaker of a clip at ``relative`` (its path under the input folder, with '/').

    The rule (documented in ``floatctl shards --help``):
    - with --speaker-pattern: the first group of the regex searched in the relative path
      (None when it does not match: the clip is rejected, never given a made-up speaker);
    - otherwise: the first folder under the input folder (root/SPEAKER/.../clip.mp4), so all
      clips below one speaker folder, in whatever sub-folders, share a speaker;
    - a clip directly in the input folder: its own file stem (one speaker per file; see
      ``flat_folder_warning``: the split cannot keep one person out of two splits then).
    """
    if pattern is not None:
        match = pattern.search(relative.as_posix())
        return match.group(1) if match and match.group(1) else None
    return relative.parts[0] if len(relative.parts) > 1 else relative.stem


def flat_folder_warning(root: Path, clips: list[ClipSource]) -> str | None:
    """The identity-leak warning for clips whose speaker the folder does not tell (None when none)."""
    loose = [c for c in clips if Path(c.video).parent == Path(root)]
    if not loose:
        return None
    return (f"WARNING: {len(loose)} of {len(clips)} clip(s) sit directly in {root} (e.g. "
            f"{Path(loose[0].video).name}), so their speaker cannot be told: each file is taken as its own "
            f"speaker. If one person appears in several of these files, the split by speaker cannot keep them "
            f"out of val/test (an identity leak that flatters held-out scores). Put each speaker's clips in a "
            f"folder of their own (root/SPEAKER/clip.mp4) or give --speaker-pattern REGEX (first group = speaker).")


def _discover_folder(root: Path, pattern: re.Pattern | None = None) -> tuple[list[ClipSource], list[Rejected]]:
    clips: dict[str, ClipSource] = {}
    rejected: list[Rejected] = []
    videos = sorted(p for p in root.rglob("*")
                    if p.is_file() and p.suffix.lower() in VIDEO_EXTENSIONS and not _is_hidden(p.name))
    for video in videos:
        relative = video.relative_to(root)
        key = _clip_key(relative.with_suffix("").parts)
        if key in clips:
            rejected.append(Rejected(str(video), f"clip key {key!r} collides with {clips[key].video} "
                                                 f"(rename one of them)"))
            continue
        wavs = [video.with_suffix(ext) for ext in (".wav", ".WAV")]
        audio = next((str(w) for w in wavs if w.is_file()), None)
        actor = speaker_of(PurePosixPath(relative.as_posix()), pattern)
        if actor is None:
            rejected.append(Rejected(str(video), f"path {relative.as_posix()!r} does not match --speaker-pattern "
                                                 f"{pattern.pattern!r} (no speaker)"))
            continue
        clips[key] = ClipSource(clip_id=key, video=str(video), audio=audio, actor=actor, emotion=None, fields={})
    return list(clips.values()), rejected
