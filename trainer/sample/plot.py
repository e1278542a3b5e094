"""A PNG of the motion trajectory against the audio energy, per video frame.

Components: PCA of the motion latents, fitted on the ground truth when there is
one (its axes are the clip's real motion: head sway, mouth opening...; the
generated latents are projected on the same axes, so the plot shows how well
they follow it, and an untrained model's noise cannot take over the axes), else
on the generated latents. PCA was chosen over the 20 motion coefficients
(projection on the decoder's orthonormal direction basis) because it needs no
motion-decoder weights: the plot must exist exactly when rendering is
impossible, and with seeded random weights the basis directions mean nothing.

The component that follows the per-frame audio RMS best is drawn bold and its
correlation with the energy printed, for the ground truth and the generated
latents: the evidence of learning when the rendered video is not a face.

Uses matplotlib's Agg canvas directly (no pyplot global state, no display).
"""
from __future__ import annotations

from pathlib import Path

import numpy as np
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

from float.config import FPS
from shards.files import atomic_write_figure, writing

COLORS = ("tab:blue", "tab:orange", "tab:green", "tab:red", "tab:purple")


def feature_energy(features: np.ndarray, kind: str = "wav2vec2") -> np.ndarray:
    """Stand-in energy when no waveform is at hand, per frame: for log-mel features the root of the
    mean mel power (loudness); otherwise the L2 norm of the centred features (activity)."""
    f = np.asarray(features, np.float64)
    if kind == "mel":
        return np.sqrt(np.exp(f).mean(axis=1))
    return np.linalg.norm(f - f.mean(axis=0, keepdims=True), axis=1)


def pca_components(motion: np.ndarray, count: int = 3, fit_on: np.ndarray | None = None
                   ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(scores (T, k), components (k, D), explained variance ratio (k,)) of ``motion`` (T, D).

    The axes are fitted on ``fit_on`` (default ``motion`` itself); each axis's
    sign is fixed so its largest loading is positive, making plots reproducible.
    """
    data = np.asarray(motion if fit_on is None else fit_on, np.float64)
    mean = data.mean(axis=0)
    _, s, vt = np.linalg.svd(data - mean, full_matrices=False)
    k = min(count, vt.shape[0])
    comps = vt[:k]
    signs = np.sign(comps[np.arange(k), np.abs(comps).argmax(axis=1)])
    comps = comps * signs[:, None]
    var = s**2
    ratio = var[:k] / var.sum() if var.sum() > 0 else np.zeros(k)
    return (np.asarray(motion, np.float64) - mean) @ comps.T, comps, ratio


def _correlation(a: np.ndarray, b: np.ndarray) -> float:
    if len(a) < 2 or a.std() == 0 or b.std() == 0:
        return float("nan")
    return float(np.corrcoef(a, b)[0, 1])


def _panel(ax, t: np.ndarray, scores: np.ndarray, explained: np.ndarray, name: str, fitted: str,
           energy: np.ndarray | None, energy_label: str, component: int) -> None:
    """One panel: the principal components of one set of latents, over the energy shading."""
    for i in range(scores.shape[1]):
        ax.plot(t[: len(scores)], scores[: len(t), i], color=COLORS[i % len(COLORS)],
                lw=2.0 if i == component and energy is not None else 1.2,
                label=f"PC{i + 1} ({100 * explained[i]:.0f}% of {fitted} variance)")
    ax.set_ylabel(f"{name}\nprincipal components")
    ax.legend(loc="upper left", fontsize=7, ncol=scores.shape[1], framealpha=0.6)
    if energy is None:
        ax.set_title(name, fontsize=9)
        return
    corr = _correlation(scores[: len(energy), component], energy[: len(scores)])
    ax2 = ax.twinx()
    ax.set_zorder(ax2.get_zorder() + 1)  # motion lines above the energy shading
    ax.patch.set_visible(False)
    ax2.fill_between(t[: len(energy)], 0, energy, color="grey", alpha=0.25, step="mid")
    ax2.set_ylabel(energy_label, color="grey")
    ax2.set_ylim(bottom=0)
    ax.set_title(f"{name}: PC{component + 1} vs {energy_label} (grey), correlation {corr:+.2f}", fontsize=9)


def plot_motion(path: str | Path, motion: np.ndarray, energy: np.ndarray | None = None,
                target: np.ndarray | None = None, title: str = "", components: int = 3, fps: int = FPS,
                energy_label: str = "audio RMS") -> dict:
    """Write the PNG and return what it shows.

    ``motion`` (T, D) generated latents; ``target`` (T, D) ground truth, drawn in
    its own panel above (each panel has its own scale: an untrained model's
    latents can vary far more than the real ones); ``energy`` (T,) per-frame
    audio energy, shaded behind both. The component that follows the energy
    best (in the ground truth when given) is drawn bold and named.

    Returns {"path", "explained"} and, with energy, "energy_component" (1-based)
    and "corr_energy" (its correlation with the energy in the generated latents);
    with a target also "corr_target_energy" and "corr_target" (generated vs
    ground truth along that component).
    """
    motion = np.asarray(motion, np.float64)
    if motion.ndim != 2 or len(motion) < 2:
        raise ValueError(f"plot_motion: need motion of shape (frames >= 2, dim), got {motion.shape}")
    fit = motion if target is None else np.asarray(target, np.float64)
    fitted = "generated" if target is None else "ground truth"
    scores, _, explained = pca_components(motion, components, fit_on=fit)
    energy = None if energy is None else np.asarray(energy, np.float64)
    t = np.arange(len(motion)) / fps
    info: dict = {"path": str(path), "explained": explained.tolist()}
    reference = scores
    panels = [("generated", scores)]
    if target is not None:
        reference, _, _ = pca_components(target, components, fit_on=fit)
        panels.insert(0, ("ground truth", reference))
    component = 0
    if energy is not None:
        n = min(len(reference), len(energy))
        corrs = [abs(_correlation(reference[:n, i], energy[:n])) for i in range(reference.shape[1])]
        component = int(np.nanargmax(corrs)) if not np.all(np.isnan(corrs)) else 0
        info["energy_component"] = component + 1
        info["corr_energy"] = _correlation(scores[: len(energy), component], energy[: len(scores)])
        if target is not None:
            info["corr_target_energy"] = _correlation(reference[:n, component], energy[:n])
    if target is not None:
        n = min(len(scores), len(reference))
        info["corr_target"] = _correlation(scores[:n, component], reference[:n, component])
    fig = Figure(figsize=(10, 1.0 + 2.8 * len(panels)), dpi=100, layout="constrained")
    FigureCanvasAgg(fig)
    axes = fig.subplots(len(panels), 1, sharex=True, squeeze=False)[:, 0]
    for ax, (name, sc) in zip(axes, panels):
        _panel(ax, t, sc, explained, name, fitted, energy, energy_label, component)
    axes[-1].set_xlabel("time (s)")
    fig.suptitle(title or "motion trajectory")
    with writing(path):
        Path(path).parent.mkdir(parents=True, exist_ok=True)
    atomic_write_figure(path, fig)
    return info
