"""Stage-1 pair augmentation (shards/augment.py): one draw for both frames of a pair, exact resume,
the option's errors; and the mel-speech audio features (per-clip standardised log-mel + deltas)."""
from __future__ import annotations

import itertools

import numpy as np
import pytest
import torch

from shards.augment import PairAugment, apply, augment_pairs
from shards.crops import crop_shard_urls
from shards.pairs import make_pair_loader
from crop_factory import make_crop_shards

SIZE = 32


def _frame(seed: int, size: int = SIZE) -> np.ndarray:
    """A frame with structure (a gradient and a bright square), so flips and shifts show."""
    rng = np.random.default_rng(seed)
    y, x = np.mgrid[0:size, 0:size]
    img = np.stack([x * 255 / size, y * 255 / size, np.full((size, size), 90.0)], axis=-1)
    img[4:12, 6:14] = rng.integers(150, 255, 3)
    return img.astype(np.uint8)


def test_parse_names_and_refuses_unknown():
    assert not PairAugment.parse("none").active and not PairAugment.parse("").active
    assert PairAugment.parse("all").names() == ["flip", "colour", "affine"]
    assert PairAugment.parse("flip, affine").names() == ["flip", "affine"]
    with pytest.raises(ValueError, match="unknown transform.*rotate"):
        PairAugment.parse("flip,rotate")


def test_one_draw_moves_both_frames_alike():
    source, driving = _frame(0), _frame(1)
    pairs = [{"key": "k", "source": source, "driving": driving, "source_frame": 0, "driving_frame": 1}] * 20
    out = augment_pairs(pairs, PairAugment.parse("all"), np.random.default_rng(3))
    rng = np.random.default_rng(3)
    spec = PairAugment.parse("all")
    flips = 0
    for pair in out:
        p = spec.draw(rng)  # the same generator, the same order: the very parameters used
        assert np.array_equal(pair["source"], apply(source, p))
        assert np.array_equal(pair["driving"], apply(driving, p))
        flips += p["flip"]
    assert 3 <= flips <= 17  # a fair coin over 20 pairs
    assert not np.array_equal(out[0]["source"], source)  # something changed
    assert np.array_equal(pairs[0]["source"], source)  # the clip's own frames are untouched


def test_flip_mirrors_and_colour_keeps_range():
    frame = _frame(0)
    base = PairAugment().draw(np.random.default_rng(0))
    assert np.array_equal(apply(frame, base), frame)  # nothing on: the frame as it was
    assert np.array_equal(apply(frame, {**base, "flip": True}), frame[:, ::-1])
    bright = apply(frame, {**base, "brightness": 1.25})
    assert bright.dtype == np.uint8 and bright.mean() > frame.mean() + 10
    shifted = apply(frame, {**base, "shift": np.array([0.25, 0.0])})
    assert np.array_equal(shifted[:, 8 + 8], frame[:, 8])  # 25 % of 32 px = 8 px to the right


def test_switching_one_transform_keeps_the_others_draws():
    a = PairAugment.parse("affine").draw(np.random.default_rng(5))
    b = PairAugment.parse("affine,colour").draw(np.random.default_rng(5))
    assert a["scale"] == b["scale"] and np.array_equal(a["shift"], b["shift"])


@pytest.fixture(scope="module")
def crop_dir(tmp_path_factory):
    folder = tmp_path_factory.mktemp("crops")
    make_crop_shards(folder, {"train": 6, "val": 2}, frames=(6, 12), size=SIZE, seed=2, clips_per_shard=2)
    return folder


def _batches(loader, n):
    return list(itertools.islice(iter(loader), n))


def test_augmented_stream_resumes_exactly_and_records_the_transforms(crop_dir):
    urls = crop_shard_urls(crop_dir, "train")
    kw = dict(seed=4, shuffle_buffer=8, size=SIZE, pairs_per_clip=3, augment=PairAugment.parse("all"))
    whole = _batches(make_pair_loader(urls, 3, **kw), 10)
    plain = _batches(make_pair_loader(urls, 3, **{**kw, "augment": PairAugment()}), 10)
    assert any(not torch.equal(a["source"], b["source"]) for a, b in zip(whole, plain))
    first = make_pair_loader(urls, 3, **kw)
    head = _batches(first, 4)
    state = first.state_dict()
    assert state["spec"] == ["pairs", 3, SIZE, 0.0, "flip,colour,affine"]
    rest = _batches(make_pair_loader(urls, 3, state=state, **kw), 6)
    for x, y in zip(head + rest, whole):
        assert x["key"] == y["key"] and torch.equal(x["source"], y["source"]) and torch.equal(x["driving"], y["driving"])
    with pytest.raises(ValueError, match="spec"):  # resuming with other transforms is refused
        make_pair_loader(urls, 3, state=state, **{**kw, "augment": PairAugment.parse("flip")})


def test_train_motion_refuses_a_bad_augment_before_any_work(tmp_path, crop_dir):
    from trainer.errors import TrainingError
    from trainer.settings import MotionSettings
    from trainer.train_motion import prepare
    from trainer.distributed import init_distributed

    s = MotionSettings(data_root=[str(crop_dir)], out=str(tmp_path / "run"), augment="flip,blur", steps=1)
    with pytest.raises(TrainingError, match="unknown transform.*blur"):
        prepare(s, init_distributed("cpu"))
    assert not (tmp_path / "run").exists()


def test_mel_speech_features_are_clip_standardised_with_deltas():
    from preprocess.encode import LogMel, speech_features

    t = np.arange(16000 * 2) / 16000
    noise = np.random.default_rng(0).standard_normal(t.size)
    wave = (0.3 * noise * (t > 1.0)).astype(np.float32)  # silence, then a broadband sound in every band
    plain, speech = LogMel()(wave, 50), LogMel(speech=True)(wave, 50)
    assert plain.shape == (50, 80) and speech.shape == (50, 160)
    z = speech[:, :80]
    assert np.allclose(z.mean(0), 0, atol=1e-4)
    assert np.allclose(z.std(0)[z.std(0) > 0.5], 1, atol=1e-3)
    delta = speech[:, 80:]
    onset = np.abs(delta).sum(1)
    assert 23 <= int(onset.argmax()) <= 27  # the deltas peak where the sound starts (frame 25)
    louder = LogMel(speech=True)(wave * 4, 50)
    steady = np.r_[0:22, 28:50]  # away from the onset, where the floor of silence bends the log
    assert np.allclose(louder[steady, :80], z[steady], atol=0.06)  # the recording's loudness is taken out
    assert not np.allclose(LogMel()(wave * 4, 50), plain, atol=1)  # which plain log-mel keeps
    assert LogMel().fingerprint != LogMel(speech=True).fingerprint
    ramp = torch.arange(10.0)[:, None].repeat(1, 2)
    assert torch.allclose(speech_features(ramp)[2:-2, 2:], torch.full((6, 2), 1 / ramp[:, 0].std(unbiased=False)))


def test_balance_actors_draws_each_actor_evenly_and_resumes(tmp_path):
    from shards.pairs import actor_weights

    folder = tmp_path / "crops"
    make_crop_shards(folder, {"train": 6, "val": 1}, frames=8, size=SIZE, seed=1, clips_per_shard=3,
                     actor_fn=lambda split, i: "long" if i < 5 else "short")  # 5 clips against 1
    urls = crop_shard_urls(folder, "train")
    weights = actor_weights(urls)
    assert weights == (("long", pytest.approx(3 / 5)), ("short", pytest.approx(3.0)))
    kw = dict(seed=0, shuffle_buffer=8, size=SIZE, pairs_per_clip=4)

    def short_share(**extra):
        keys = [k for b in _batches(make_pair_loader(urls, 8, **kw, **extra), 60) for k in b["key"]]
        return sum(k == "train-c005" for k in keys) / len(keys)

    assert short_share() < 0.25  # uniform clips: the one-clip actor gets about 1/6 of the pairs
    assert 0.4 < short_share(actor_weights=weights) < 0.6  # balanced: about half
    first = make_pair_loader(urls, 8, **kw, actor_weights=weights)
    whole = _batches(make_pair_loader(urls, 8, **kw, actor_weights=weights), 8)
    head = _batches(first, 3)
    rest = _batches(make_pair_loader(urls, 8, state=first.state_dict(), **kw, actor_weights=weights), 5)
    assert [b["key"] for b in head + rest] == [b["key"] for b in whole]
    with pytest.raises(ValueError, match="spec"):  # a resumed stream must keep its balance
        make_pair_loader(urls, 8, state=first.state_dict(), **kw)


def test_balance_actors_names_a_clip_without_actor(tmp_path):
    from shards.pairs import actor_weights

    make_crop_shards(tmp_path, {"train": 3, "val": 1}, frames=6, size=SIZE, clips_per_shard=3,
                     actor_fn=lambda split, i: None if i == 1 else "a")
    with pytest.raises(ValueError, match="train-c001 has no actor"):
        actor_weights(crop_shard_urls(tmp_path, "train"))


def test_relative_motion_learns_and_generates_the_difference_from_the_reference():
    """relative_motion: the flow's target is (motion - reference) / std, and generation adds the reference back."""
    from float.config import get_preset
    from float.loss import rectified_flow_loss
    from float.model import FloatMotionModel
    from float.sampler import generate_motion

    torch.manual_seed(0)
    cfg = get_preset("tiny", dim_w=8, audio_input_dim=4, dim_h=32, depth=1, num_heads=2, relative_motion=True)
    model = FloatMotionModel(cfg)
    model.set_motion_stats(torch.zeros(8), torch.full((8,), 2.0))
    x, ref = torch.randn(2, 5, 8), torch.randn(2, 8)
    assert torch.allclose(model.motion_to_flow(x, ref), (x - ref[:, None]) / 2)
    assert torch.allclose(model.flow_to_motion(model.motion_to_flow(x, ref), ref), x)
    absolute = FloatMotionModel(cfg.replace(relative_motion=False))
    assert torch.allclose(absolute.motion_to_flow(x, ref), x)  # the official target: the motion itself

    N, P = cfg.num_frames, cfg.num_prev_frames
    batch = {"motion": torch.randn(2, N, 8), "prev_motion": torch.randn(2, P, 8),
             "prev_mask": torch.ones(2, P, dtype=torch.bool), "audio": torch.randn(2, N, 4),
             "prev_audio": torch.randn(2, P, 4), "ref_motion": torch.randn(2, 8), "emotion": torch.zeros(2, 7)}
    shifted = {**batch, "motion": batch["motion"] + 5, "prev_motion": batch["prev_motion"] + 5,
               "ref_motion": batch["ref_motion"] + 5}
    keep = {k: torch.ones(2) for k in ("audio", "ref", "emotion", "prev", "prev_audio")}
    noise = torch.randn(2, N, 8)
    model.set_motion_stats(torch.zeros(8), torch.ones(8))
    model.fmt.requires_grad_(False)
    for p in [*model.fmt.parameters(), *absolute.fmt.parameters()]:  # a zero field: it ignores every condition
        p.requires_grad_(False).zero_()
    a = rectified_flow_loss(model, batch, noise=noise, keep=keep, t=torch.full((2,), 0.5))
    b = rectified_flow_loss(model, shifted, noise=noise, keep=keep, t=torch.full((2,), 0.5))
    assert torch.allclose(a["current"], b["current"])  # a person's offset in the latent space cancels

    out = generate_motion(model, torch.randn(2, N + 7, 4), batch["ref_motion"], torch.zeros(2, 7), nfe=2, seed=3)
    noise_only = generate_motion(absolute, torch.randn(2, N + 7, 4), torch.zeros(2, 8), torch.zeros(2, 7), nfe=2,
                                 seed=3)
    assert torch.allclose(out - batch["ref_motion"][:, None], noise_only, atol=1e-5)  # zero field: noise + reference


def test_mouth_weight_adds_an_l1_on_the_mouth_region_only():
    from float.motion_training import MOUTH_BOX, MotionLossWeights, generator_losses, mouth_l1

    class Fixed(torch.nn.Module):  # "reconstructs" a fixed image whatever the input
        def __init__(self, image):
            super().__init__()
            self.image = image

        def forward(self, source, driving):
            return self.image.expand_as(driving)

    driving = torch.zeros(2, 3, 40, 40)
    in_mouth, outside = driving.clone(), driving.clone()
    in_mouth[..., int(0.6 * 40), int(0.5 * 40)] = 1.0  # one pixel inside MOUTH_BOX
    outside[..., 2, 2] = 1.0  # one pixel by the top-left corner
    assert MOUTH_BOX[0] < 0.5 < MOUTH_BOX[1] and MOUTH_BOX[2] < 0.6 < MOUTH_BOX[3]
    assert mouth_l1(in_mouth, driving) > 0 and mouth_l1(outside, driving) == 0
    weights = MotionLossWeights(l1=1.0, perceptual=0.0, adversarial=0.0, mouth=4.0)
    a, _ = generator_losses(Fixed(in_mouth[:1]), driving, driving, weights=weights)
    b, _ = generator_losses(Fixed(outside[:1]), driving, driving, weights=weights)
    assert torch.isclose(a["l1"], b["l1"])  # the whole-frame L1 cannot tell the two apart
    assert a["total"] > b["total"] and torch.isclose(a["total"], a["l1"] + 4.0 * a["mouth"])
    with pytest.raises(ValueError, match="mouth"):
        MotionLossWeights(mouth=-1.0)


def test_stage1_heldout_scores_a_split_against_copying_the_source(crop_dir):
    import importlib.util
    from pathlib import Path

    path = Path(__file__).resolve().parents[1] / "benchmarks" / "stage1_heldout.py"
    spec = importlib.util.spec_from_file_location("stage1_heldout", path)
    bench = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(bench)

    class Copy(torch.nn.Module):  # rebuilds the driving frame as the source frame: no gain by definition
        size = SIZE

        def forward(self, source, driving):
            return source

    class Perfect(Copy):  # rebuilds it exactly
        def forward(self, source, driving):
            return driving

    copy, perfect = bench.score(Copy(), crop_dir, "val", pairs=3), bench.score(Perfect(), crop_dir, "val", pairs=3)
    assert copy["pairs"] == perfect["pairs"] == 2 * 3
    assert copy["gain"] == 0 and copy["mouth_gain"] == 0 and copy["psnr"] == copy["copy"] < 60
    assert perfect["gain"] > 30 and perfect["mouth_gain"] > 30


def test_a_manifest_with_an_unknown_log_mel_variant_is_refused_by_name():
    from preprocess.encode import EncoderSetupError, LogMel
    from preprocess.manifest_encoders import build_audio_encoder

    speech = LogMel(speech=True)
    manifest = {"features": {"audio": {"kind": "mel", "dim": 160, "variant": "clip-norm+delta"}},
                "encoders": {"audio": {"kind": "mel", "fingerprint": speech.fingerprint}}}
    assert build_audio_encoder(manifest).audio.speech  # the sampler rebuilds the shards' own features
    manifest["features"]["audio"]["variant"] = "pcen"
    with pytest.raises(EncoderSetupError, match="unknown log-mel variant 'pcen'"):
        build_audio_encoder(manifest)
