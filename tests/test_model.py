"""Motion normalisation of the trainable model: the flow is learned on standardised latents."""
import numpy as np
import pytest
import torch

from float.config import get_preset
from float.loss import rectified_flow_loss
from float.model import FloatMotionModel
from float.sampler import generate_motion
from shard_factory import make_shards
from shards.sources import shard_urls
from shards.manifest import read_manifest
from shards.stats import motion_statistics

CFG = get_preset("tiny", dim_w=16, dim_a=16, dim_h=32, depth=1, num_heads=2, audio_input_dim=8)


def make_batch(B=2, scale=0.02, offset=0.3):
    g = torch.Generator().manual_seed(1)
    N, P, D = CFG.num_frames, CFG.num_prev_frames, CFG.dim_w
    return {
        "motion": offset + scale * torch.randn(B, N, D, generator=g),
        "prev_motion": offset + scale * torch.randn(B, P, D, generator=g),
        "prev_mask": torch.tensor([[True] * P, [False] * 3 + [True] * (P - 3)]),
        "audio": torch.randn(B, N, 8, generator=g),
        "prev_audio": torch.randn(B, P, 8, generator=g),
        "ref_motion": offset + scale * torch.randn(B, D, generator=g),
        "emotion": torch.zeros(B, 7),
    }


def test_loss_with_stats_equals_loss_on_standardised_batch():
    torch.manual_seed(0)
    normed = FloatMotionModel(CFG)
    mean, std = torch.full((16,), 0.3), torch.full((16,), 0.02)
    normed.set_motion_stats(mean, std)
    assert normed.normalizes_motion
    raw = FloatMotionModel(CFG)
    raw.load_state_dict({k: v for k, v in normed.state_dict().items() if not k.startswith("motion_")}, strict=False)
    assert not raw.normalizes_motion
    batch = make_batch()
    standard = dict(batch)
    for k in ("motion", "prev_motion", "ref_motion"):
        standard[k] = (batch[k] - 0.3) / 0.02
    standard["prev_motion"] = standard["prev_motion"] * batch["prev_mask"].unsqueeze(-1)  # padding stays zero
    fixed = dict(t=torch.tensor([0.3, 0.8]), noise=torch.randn(2, 50, 16), keep={k: torch.ones(2) for k in ("audio", "ref", "emotion", "prev", "prev_audio")})
    a = rectified_flow_loss(normed, batch, **fixed)
    b = rectified_flow_loss(raw, standard, **fixed)
    for k in a:
        assert torch.allclose(a[k], b[k], atol=1e-5), k


def test_generation_returns_raw_latents():
    torch.manual_seed(0)
    model = FloatMotionModel(CFG).eval()
    model.set_motion_stats(torch.full((16,), 5.0), torch.full((16,), 1e-3))
    out = generate_motion(model, torch.randn(1, 30, 8), wr=torch.full((1, 16), 5.0), we=torch.zeros(1, 7), nfe=2, seed=0)
    # standardised samples of order 1 map back near the data mean with the data's small spread
    assert (out - 5.0).abs().max() < 0.05


def test_bad_stats_are_refused():
    model = FloatMotionModel(CFG)
    with pytest.raises(ValueError, match="shape"):
        model.set_motion_stats(torch.zeros(3), torch.ones(3))
    with pytest.raises(ValueError, match="positive"):
        model.set_motion_stats(torch.zeros(16), torch.zeros(16))


def test_motion_statistics_of_shards(tmp_path):
    make_shards(tmp_path, {"train": 3, "val": 1, "test": 1}, frames=60, dim_w=16, audio_dim=8, seed=0)
    urls = shard_urls(str(tmp_path), "train", read_manifest(tmp_path))
    mean, std, frames = motion_statistics(urls)
    assert frames == 180
    import tarfile

    from shards.format import decode_npy
    rows = []
    for u in urls:
        with tarfile.open(u) as t:
            rows += [decode_npy(t.extractfile(m).read()) for m in t.getmembers() if m.name.endswith(".motion.npy")]
    allm = np.concatenate(rows)
    within = np.concatenate([r - r.mean(0) for r in rows])
    assert np.allclose(mean, allm.mean(0), atol=1e-5)
    assert np.allclose(std, np.sqrt((within**2).mean(0)), atol=1e-5)
    assert (std < allm.std(0)).all()  # the clips' offsets are left out of the spread
    with pytest.raises(ValueError, match="no motion"):
        motion_statistics([])


def test_normalisation_is_chosen_by_the_motion_encoder():
    from trainer.errors import TrainingError
    from trainer.train_fmt import wants_motion_normalization as _wants_motion_normalization

    random = {"encoders": {"motion": {"random": True}}}
    official = {"encoders": {"motion": {"random": False, "source": "float.pth"}}}
    assert _wants_motion_normalization("auto", random) is True
    assert _wants_motion_normalization("auto", official) is False  # real latents stay raw, as the official model
    stage1 = {"encoders": {"motion": {"random": False, "kind": "motion_autoencoder", "source": "s1.pt"}}}
    assert _wants_motion_normalization("auto", stage1) is True  # our own encoder's scale is arbitrary
    assert _wants_motion_normalization("on", official) is True
    assert _wants_motion_normalization("off", random) is False
    with pytest.raises(TrainingError, match="auto, on or off"):
        _wants_motion_normalization("maybe", random)
