"""PNG plots of a sweep (matplotlib, Agg backend): ratio per layer, KL/ratio vs coefficient, heatmaps."""
from __future__ import annotations

from pathlib import Path

import numpy as np


def _plt():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _grid(result: dict, key) -> np.ndarray:
    layers, coefs = result["layers"], result["coefs"]
    g = np.full((len(layers), len(coefs)), np.nan)
    for p in result["points"]:
        g[layers.index(p["layer"]), coefs.index(p["coef"])] = key(p)
    return g


def _sets(result: dict) -> list[str]:
    return list(result["source_perplexity"])


def plot_sweep(result: dict, out: Path, chosen: list[int] | None = None, title: str = "") -> list[Path]:
    """Write ratio_by_layer.png, by_coef.png and heatmap.png into ``out``; return their paths."""
    plt = _plt()
    out.mkdir(parents=True, exist_ok=True)
    layers, coefs, sets = result["layers"], result["coefs"], _sets(result)
    has_kl = all("kl" in p for p in result["points"])
    paths = []
    styles = ["-", "--", ":", "-."]
    colors = plt.cm.viridis(np.linspace(0, 0.9, len(coefs)))

    fig, ax = plt.subplots(figsize=(7, 4.5))
    for j, c in enumerate(coefs):
        for s, style in zip(sets, styles):
            ax.plot(layers, _grid(result, lambda p, s=s: p["ratio"][s])[:, j], style, marker="o", ms=3,
                    color=colors[j], label=f"{s}, coef {c:g}")
    ax.axhline(1.0, color="grey", lw=0.8)
    ax.set(xlabel="layer (block)", ylabel="perplexity ratio (steered / source)", yscale="log",
           title=title or "Perplexity ratio per layer")
    ax.legend(fontsize=7, ncol=2)
    paths.append(_save(fig, out / "ratio_by_layer.png"))

    chosen = [l for l in (chosen or layers) if l in layers][:6]
    ncol = 1 + has_kl
    fig, axes = plt.subplots(1, ncol, figsize=(5 * ncol, 4), squeeze=False)
    for layer in chosen:
        i = layers.index(layer)
        for s, style in zip(sets, styles):
            axes[0, 0].plot(coefs, _grid(result, lambda p, s=s: p["ratio"][s])[i], style, marker="o", ms=3,
                            label=f"L{layer} {s}")
        if has_kl:
            axes[0, 1].plot(coefs, _grid(result, lambda p: p["kl"])[i], marker="o", ms=3, label=f"L{layer}")
    axes[0, 0].set(xlabel="coefficient", ylabel="perplexity ratio", yscale="log", title="Perplexity ratio vs coef")
    axes[0, 0].axhline(1.0, color="grey", lw=0.8)
    axes[0, 0].legend(fontsize=7)
    if has_kl:
        axes[0, 1].set(xlabel="coefficient", ylabel="KL(source ‖ steered), nats/token", title="KL vs coefficient")
        axes[0, 1].legend(fontsize=7)
    paths.append(_save(fig, out / "by_coef.png"))

    panels = [(f"log₂ ratio, {s}", _grid(result, lambda p, s=s: np.log2(p["ratio"][s]))) for s in sets]
    if has_kl:
        panels.append(("KL (nats/token)", _grid(result, lambda p: p["kl"])))
    fig, axes = plt.subplots(1, len(panels), figsize=(4.2 * len(panels), 0.35 * len(layers) + 2.5), squeeze=False)
    for ax, (name, g) in zip(axes[0], panels):
        diverging = name.startswith("log")
        lim = np.nanmax(np.abs(g)) or 1.0
        im = ax.imshow(g, aspect="auto", cmap="RdBu_r" if diverging else "magma",
                       vmin=-lim if diverging else None, vmax=lim if diverging else None)
        ax.set_xticks(range(len(coefs)), [f"{c:g}" for c in coefs])
        ax.set_yticks(range(len(layers)), [str(l) for l in layers])
        ax.set(xlabel="coefficient", ylabel="layer", title=name)
        for (r, c), v in np.ndenumerate(g):
            x = im.norm(v)
            dark = abs(x - 0.5) > 0.3 if diverging else x < 0.6
            ax.text(c, r, f"{v:.2g}", ha="center", va="center", fontsize=6, color="white" if dark else "black")
        fig.colorbar(im, ax=ax, shrink=0.8)
    paths.append(_save(fig, out / "heatmap.png"))
    return paths


def _save(fig, path: Path) -> Path:
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    _plt().close(fig)
    return path
