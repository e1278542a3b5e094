"""Flow Matching Transformer (FMT): the vector field of FLOAT's motion flow.

A DiT-style transformer over the 60-frame window [10 preceding frames, 50
current frames] of motion latents. Conditions (reference motion, audio,
emotion) and the flow time are embedded per frame and modulate every block
through adaLN, frame by frame. Attention is local: a frame sees only frames
within ``attention_window`` of itself (the official ``alignment_mask``).

Module and parameter names follow the official checkpoint (``fmt.*`` keys of
``float.pth``), so its state dict loads as is.
"""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from float.config import FloatConfig

TIME_FREQUENCY_DIM = 256  # width of the sinusoidal flow-time features (as in DiT)


# ---------------------------------------------------------------- fixed tables
def alignment_mask(seq_len: int, window: int) -> Tensor:
    """(seq_len, seq_len) bool, True where attention is BLOCKED: |i - j| > window.

    True-means-blocked is the official buffer's convention, kept so the
    checkpoint's ``alignment_mask`` loads unchanged."""
    idx = torch.arange(seq_len)
    return (idx[:, None] - idx[None, :]).abs() > window


def sinusoid_position_table(seq_len: int, dim: int) -> Tensor:
    """(seq_len, dim) transformer position table: sin on even, cos on odd channels.

    Channel pair (2i, 2i+1) shares the angle pos / 10000^(2i/dim). Computed in
    float64 so the float32 table is the same on every device."""
    pos = torch.arange(seq_len, dtype=torch.float64)[:, None]
    pair = torch.div(torch.arange(dim), 2, rounding_mode="floor").to(torch.float64)
    angle = pos / torch.pow(10000.0, 2.0 * pair / dim)[None, :]
    table = torch.empty(seq_len, dim, dtype=torch.float64)
    table[:, 0::2] = torch.sin(angle[:, 0::2])
    table[:, 1::2] = torch.cos(angle[:, 1::2])
    return table.float()


def timestep_frequencies(t: Tensor, dim: int = TIME_FREQUENCY_DIM, max_period: float = 10000.0) -> Tensor:
    """(N,) flow times -> (N, dim) features [cos(t f_k), sin(t f_k)] (DiT / GLIDE)."""
    half = dim // 2
    freqs = torch.exp(-math.log(max_period) * torch.arange(half, dtype=torch.float32, device=t.device) / half)
    args = t.float()[:, None] * freqs[None, :]
    emb = torch.cat([torch.cos(args), torch.sin(args)], dim=-1)
    if dim % 2:
        emb = F.pad(emb, (0, 1))
    return emb


# ---------------------------------------------------------------- layers
class TimestepEmbedder(nn.Module):
    """Flow time t in [0, 1] -> (N, dim_h) via sinusoid features and an MLP."""

    def __init__(self, dim_h: int, frequency_dim: int = TIME_FREQUENCY_DIM):
        super().__init__()
        self.frequency_dim = frequency_dim
        self.mlp = nn.Sequential(nn.Linear(frequency_dim, dim_h), nn.SiLU(), nn.Linear(dim_h, dim_h))

    def forward(self, t: Tensor) -> Tensor:
        # The frequency features stay float32; autocast decides the MLP's dtype.
        return self.mlp(timestep_frequencies(t, self.frequency_dim))


class SequenceEmbed(nn.Module):
    """Per-frame motion latent -> hidden width (official name ``x_embedder.proj``)."""

    def __init__(self, dim_in: int, dim_h: int):
        super().__init__()
        self.proj = nn.Linear(dim_in, dim_h)

    def forward(self, x: Tensor) -> Tensor:
        return self.proj(x)


class Attention(nn.Module):
    """Multi-head self-attention with a boolean allow-mask, via the fused SDPA kernel."""

    def __init__(self, dim: int, num_heads: int):
        super().__init__()
        if dim % num_heads:
            raise ValueError(f"float/fmt.py: dim_h={dim} is not divisible by num_heads={num_heads}")
        self.num_heads = num_heads
        self.qkv = nn.Linear(dim, 3 * dim)
        self.proj = nn.Linear(dim, dim)

    def forward(self, x: Tensor, allowed: Tensor) -> Tensor:
        b, n, c = x.shape
        qkv = self.qkv(x).reshape(b, n, 3, self.num_heads, c // self.num_heads).permute(2, 0, 3, 1, 4)
        q, k, v = qkv.unbind(0)  # each (B, heads, N, head_dim)
        out = F.scaled_dot_product_attention(q, k, v, attn_mask=allowed)
        return self.proj(out.transpose(1, 2).reshape(b, n, c))


class Mlp(nn.Module):
    """fc1 -> GELU(tanh) -> fc2, the DiT feed-forward."""

    def __init__(self, dim: int, hidden: int):
        super().__init__()
        self.fc1 = nn.Linear(dim, hidden)
        self.act = nn.GELU(approximate="tanh")
        self.fc2 = nn.Linear(hidden, dim)

    def forward(self, x: Tensor) -> Tensor:
        return self.fc2(self.act(self.fc1(x)))


def modulate(x: Tensor, shift: Tensor, scale: Tensor) -> Tensor:
    # shift / scale are per frame (B, L, D), not per sample as in DiT.
    return x * (1 + scale) + shift


class FMTBlock(nn.Module):
    """DiT block with frame-wise adaLN-Zero modulation and local attention."""

    def __init__(self, dim_h: int, num_heads: int, mlp_ratio: float):
        super().__init__()
        self.norm1 = nn.LayerNorm(dim_h, elementwise_affine=False, eps=1e-6)
        self.attn = Attention(dim_h, num_heads)
        self.norm2 = nn.LayerNorm(dim_h, elementwise_affine=False, eps=1e-6)
        self.mlp = Mlp(dim_h, int(dim_h * mlp_ratio))
        self.adaLN_modulation = nn.Sequential(nn.SiLU(), nn.Linear(dim_h, 6 * dim_h))

    def forward(self, x: Tensor, c: Tensor, allowed: Tensor) -> Tensor:
        shift_a, scale_a, gate_a, shift_m, scale_m, gate_m = self.adaLN_modulation(c).chunk(6, dim=-1)
        x = x + gate_a * self.attn(modulate(self.norm1(x), shift_a, scale_a), allowed)
        x = x + gate_m * self.mlp(modulate(self.norm2(x), shift_m, scale_m))
        return x


class Decoder(nn.Module):
    """Final layer: frame-wise modulated LayerNorm, then a linear map to dim_w."""

    def __init__(self, dim_h: int, dim_out: int):
        super().__init__()
        self.norm_final = nn.LayerNorm(dim_h, elementwise_affine=False, eps=1e-6)
        self.adaLN_modulation = nn.Sequential(nn.SiLU(), nn.Linear(dim_h, 2 * dim_h))
        self.linear = nn.Linear(dim_h, dim_out)

    def forward(self, x: Tensor, c: Tensor) -> Tensor:
        shift, scale = self.adaLN_modulation(c).chunk(2, dim=-1)
        return self.linear(modulate(self.norm_final(x), shift, scale))


# ---------------------------------------------------------------- the model
# The conditions dropped for classifier-free guidance, in the order their keep masks are drawn.
CONDITIONS = ("audio", "ref", "emotion", "prev", "prev_audio")


def condition_dropout_rates(cfg: FloatConfig) -> dict[str, float]:
    """As the official FMT trains: audio, reference and emotion with ``cfg.*_dropout``; preceding
    motion and preceding audio each with ``cfg.prev_dropout``."""
    return {"audio": cfg.audio_dropout, "ref": cfg.ref_dropout, "emotion": cfg.emotion_dropout,
            "prev": cfg.prev_dropout, "prev_audio": cfg.prev_dropout}


def sample_condition_keep(cfg: FloatConfig, batch_size: int, device, generator=None) -> dict[str, Tensor]:
    """Per-sample keep masks (float 0/1, shape (B,)) for each of CONDITIONS, drawn independently.

    The one place condition dropout is drawn (the loss applies the masks). Dropping
    the audio zeroes the current audio only, which is what the unconditional pass
    of the guidance feeds (it keeps the preceding audio). One draw per sample and
    condition, always in CONDITIONS order, so a seeded run is reproducible.
    """
    rates = condition_dropout_rates(cfg)
    draw_device = generator.device if generator is not None else device
    u = torch.rand(len(CONDITIONS), batch_size, device=draw_device, generator=generator).to(device)
    return {name: (u[i] >= rates[name]).float() for i, name in enumerate(CONDITIONS)}


def keep_all_conditions(batch_size: int, device) -> dict[str, Tensor]:
    """Keep masks that drop nothing (validation, deterministic losses)."""
    return {name: torch.ones(batch_size, device=device) for name in CONDITIONS}


class FlowMatchingTransformer(nn.Module):
    """Predicts the flow vector field for all 60 positions of a window."""

    def __init__(self, cfg: FloatConfig):
        super().__init__()
        self.cfg = cfg
        self.num_frames = cfg.num_frames
        self.num_prev_frames = cfg.num_prev_frames
        seq_len = cfg.seq_len
        dim_h = cfg.dim_h

        self.x_embedder = SequenceEmbed(cfg.dim_w, dim_h)
        # Fixed table, but a (frozen) Parameter because the checkpoint stores it as one.
        self.pos_embed = nn.Parameter(sinusoid_position_table(seq_len, dim_h)[None], requires_grad=False)
        self.t_embedder = TimestepEmbedder(dim_h)
        self.c_embedder = nn.Linear(cfg.dim_w + cfg.dim_a + cfg.dim_e, dim_h)
        self.blocks = nn.ModuleList(FMTBlock(dim_h, cfg.num_heads, cfg.mlp_ratio) for _ in range(cfg.depth))
        self.decoder = Decoder(dim_h, cfg.dim_w)
        self.register_buffer("alignment_mask", alignment_mask(seq_len, cfg.attention_window))
        self.initialize_weights()

    def initialize_weights(self) -> None:
        """DiT initialisation: xavier linears, small time MLP, zeroed adaLN and output (adaLN-Zero)."""
        for m in self.modules():
            if isinstance(m, nn.Linear):
                nn.init.xavier_uniform_(m.weight)
                nn.init.zeros_(m.bias)
        nn.init.normal_(self.t_embedder.mlp[0].weight, std=0.02)
        nn.init.normal_(self.t_embedder.mlp[2].weight, std=0.02)
        zeroed = [b.adaLN_modulation[-1] for b in self.blocks]
        zeroed += [self.decoder.adaLN_modulation[-1], self.decoder.linear]
        for layer in zeroed:
            nn.init.zeros_(layer.weight)
            nn.init.zeros_(layer.bias)

    # -- inputs
    def _check_inputs(self, t: Tensor, x: Tensor, wa: Tensor, wr: Tensor, we: Tensor,
                      prev_x: Tensor, prev_wa: Tensor) -> tuple[Tensor, Tensor]:
        """Validate shapes; return t as (B or 1,) and we as (B, 1, dim_e)."""
        cfg = self.cfg
        b = x.shape[0]
        expected = {
            "x": (x, (b, self.num_frames, cfg.dim_w)),
            "wa": (wa, (b, self.num_frames, cfg.dim_a)),
            "wr": (wr, (b, cfg.dim_w)),
            "prev_x": (prev_x, (b, self.num_prev_frames, cfg.dim_w)),
            "prev_wa": (prev_wa, (b, self.num_prev_frames, cfg.dim_a)),
        }
        for name, (tensor, shape) in expected.items():
            if tuple(tensor.shape) != shape:
                raise ValueError(f"float/fmt.py: {name} has shape {tuple(tensor.shape)}, expected {shape}")
        if we.dim() == 2:
            we = we.unsqueeze(1)
        if tuple(we.shape) != (b, 1, cfg.dim_e):
            raise ValueError(f"float/fmt.py: we has shape {tuple(we.shape)}, expected ({b}, {cfg.dim_e}) "
                             f"or ({b}, 1, {cfg.dim_e})")
        t = t.reshape(-1)
        if t.shape[0] not in (1, b):
            raise ValueError(f"float/fmt.py: t has {t.shape[0]} values, expected 1 or the batch size {b}")
        return t, we

    # -- forward passes
    def forward(self, t: Tensor, x: Tensor, wa: Tensor, wr: Tensor, we: Tensor, prev_x: Tensor,
                prev_wa: Tensor) -> Tensor:
        """Vector field for [prev_x, x]: returns (B, num_prev_frames + num_frames, dim_w).

        t (B,) or (1,) flow time in [0, 1]; x (B, 50, dim_w) noisy motion;
        wa (B, 50, dim_a) audio; wr (B, dim_w) reference motion; we (B, 7) or
        (B, 1, 7) emotion; prev_x (B, 10, dim_w), prev_wa (B, 10, dim_a) the
        preceding frames. Nothing is dropped here: training's condition dropout is drawn by
        ``sample_condition_keep`` and applied by float/loss.py, guidance's by ``forward_with_cfv``."""
        t, we = self._check_inputs(t, x, wa, wr, we, prev_x, prev_wa)

        tokens = self.x_embedder(torch.cat([prev_x, x], dim=1)) + self.pos_embed
        audio = torch.cat([prev_wa, wa], dim=1)
        frames = audio.shape[1]
        # Per-frame condition: [reference, audio, emotion] -> dim_h, plus the flow time.
        cond = torch.cat([wr[:, None].expand(-1, frames, -1), audio, we.expand(-1, frames, -1)], dim=-1)
        c = self.c_embedder(cond) + self.t_embedder(t)[:, None]

        allowed = ~self.alignment_mask
        for block in self.blocks:
            tokens = block(tokens, c, allowed)
        return self.decoder(tokens, c)

    @torch.no_grad()
    def forward_with_cfv(self, t: Tensor, x: Tensor, wa: Tensor, wr: Tensor, we: Tensor, prev_x: Tensor,
                         prev_wa: Tensor, a_cfg_scale: float = 2.0, r_cfg_scale: float = 1.0,
                         e_cfg_scale: float = 1.0) -> Tensor:
        """Incremental classifier-free vector field, without random dropout.

        uncond + a * (audio_only - uncond) + e * (all - audio_only), where
        uncond drops the current audio and the emotion, audio_only drops the
        emotion; both keep the reference motion and the preceding frames
        (prev_x and prev_wa), as the official sampler does. r_cfg_scale is
        accepted for API compatibility; like the official code it has no
        effect. With all scales 1 this is the plain conditional forward."""
        if a_cfg_scale == 1.0 and r_cfg_scale == 1.0 and e_cfg_scale == 1.0:
            return self.forward(t, x, wa, wr, we, prev_x, prev_wa)
        _, we = self._check_inputs(t, x, wa, wr, we, prev_x, prev_wa)
        no_wa, no_we = torch.zeros_like(wa), torch.zeros_like(we)

        def three(a: Tensor, b: Tensor, c: Tensor) -> Tensor:
            return torch.cat([a, b, c], dim=0)

        # Batch order: uncond, all conditions, audio only.
        t3 = t.reshape(-1)
        t3 = t3 if t3.shape[0] == 1 else three(t3, t3, t3)
        out = self.forward(t3, three(x, x, x), three(no_wa, wa, wa), three(wr, wr, wr),
                           three(no_we, we, no_we), three(prev_x, prev_x, prev_x),
                           three(prev_wa, prev_wa, prev_wa))
        uncond, cond_all, audio_only = out.chunk(3, dim=0)
        return uncond + a_cfg_scale * (audio_only - uncond) + e_cfg_scale * (cond_all - audio_only)
