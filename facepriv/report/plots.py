"""The report's charts, as pure functions over numbers (matplotlib, Agg backend): protection per
judge as written and under each robustness transform (grouped bars), and the PSNR / SSIM
distributions with the run's quality floors. They return PNG bytes; `build` writes them next
to index.html and `html` shows them with <img> tags."""

from __future__ import annotations

import io
from collections.abc import Sequence

DPI = 100
BARS_SIZE = (9.0, 4.2)  # inches: 900 x 420 px
HIST_PANEL = (2.6, 2.8)  # inches per histogram: 260 x 280 px
FLOOR_COLOUR = "#b00020"
QUALITY_LABELS = {"psnr": "photo PSNR (dB)", "ssim": "photo SSIM", "face_psnr": "face PSNR (dB)",
                  "face_ssim": "face SSIM", "face_ssimulacra2": "face SSIMULACRA 2"}


def _pyplot():
    import matplotlib

    matplotlib.use("Agg", force=False)
    import matplotlib.pyplot as plt

    return plt


def _png(fig) -> bytes:
    buf = io.BytesIO()
    try:
        fig.savefig(buf, format="png", dpi=DPI)
    finally:
        _pyplot().close(fig)
    return buf.getvalue()


def stage_label(transform: str) -> str:
    """"jpeg85" -> "JPEG q85", "down0.5" -> "half size"; anything else as it is."""
    if transform.startswith("jpeg") and transform[4:].isdigit():
        return f"JPEG q{transform[4:]}"
    if transform.startswith("down"):
        return "half size" if transform[4:] == "0.5" else f"size x{transform[4:]}"
    return transform


def bar_colour(judge: int, label: str, plt) -> tuple:
    """The judge's pair in tab20: identification dark, verification light."""
    return plt.get_cmap("tab20")((2 * judge + label.endswith("verification")) % 20)


def protection_bars_png(stages: Sequence[str], series: dict[str, Sequence[float | None]], title: str = "") -> bytes:
    """Grouped bars: one group per stage, one bar per series ({"JUDGE kind": rate per stage}),
    its value printed on it; a None rate is drawn as "n/a". BARS_SIZE at DPI."""
    if not stages or not series:
        raise ValueError("protection_bars_png needs at least one stage and one series")
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=BARS_SIZE, layout="constrained")
    width = 0.8 / len(series)
    judges = list(dict.fromkeys(s.rsplit(" ", 1)[0] for s in series))
    for k, (label, rates) in enumerate(series.items()):
        xs = [x - 0.4 + width * (k + 0.5) for x in range(len(stages))]
        colour = bar_colour(judges.index(label.rsplit(" ", 1)[0]), label, plt)
        _bars(ax, xs, rates, width, label, colour, rotate=len(series) > 4)
    ax.set_xticks(range(len(stages)), list(stages))
    ax.set_ylim(0, 1.15)  # room for the values above a full bar
    ax.set_yticks([0, 0.2, 0.4, 0.6, 0.8, 1.0])
    ax.set_ylabel("protected (share of faces)")
    ax.grid(axis="y", alpha=0.3)
    ax.set_title(title, fontsize=10)
    ax.legend(loc="upper left", bbox_to_anchor=(1.01, 1.0), fontsize=8, frameon=False)
    return _png(fig)


def _bars(ax, xs: Sequence[float], rates: Sequence[float | None], width: float, label: str, colour,
          rotate: bool) -> None:
    """One series' bars with their values on top; "n/a" where its rate is None."""
    have = [(x, float(r)) for x, r in zip(xs, rates) if r is not None]
    bars = ax.bar([x for x, _ in have], [r for _, r in have], width * 0.92, label=label, color=colour)
    ax.bar_label(bars, fmt="%.2f", fontsize=7, padding=2, rotation=90 if rotate else 0)
    for x, r in zip(xs, rates):
        if r is None:
            ax.text(x, 0.02, "n/a", ha="center", va="bottom", fontsize=6, color="#666", rotation=90)


def quality_hist_png(values: dict[str, Sequence[float]], floors: dict[str, float] | None = None,
                     title: str = "") -> bytes:
    """One histogram per metric with values (QUALITY_LABELS order), side by side, each floor
    (floors = {metric: value}) a dashed line. HIST_PANEL per histogram at DPI."""
    metrics = [m for m in QUALITY_LABELS if len(values.get(m) or ())]
    if not metrics:
        raise ValueError("quality_hist_png needs at least one metric with values")
    plt = _pyplot()
    floors = floors or {}
    fig, axes = plt.subplots(1, len(metrics), figsize=(HIST_PANEL[0] * len(metrics), HIST_PANEL[1]),
                             layout="constrained", squeeze=False)
    for ax, m in zip(axes[0], metrics):
        v = list(values[m])
        ax.hist(v, bins=min(20, max(5, len(v) // 4)), color="#2b6cb0", edgecolor="white")
        if m in floors:
            f = floors[m]
            ax.axvline(f, color=FLOOR_COLOUR, ls="--", lw=1.5, label=f"floor {f:g}")
            lo, hi = min(min(v), f), max(max(v), f)
            pad = 0.05 * (hi - lo) or 0.5
            ax.set_xlim(lo - pad, hi + pad)
            ax.legend(fontsize=7, loc="upper left")
        ax.set_title(f"{QUALITY_LABELS[m]} (n={len(v)})", fontsize=9)
        ax.set_ylabel("faces" if m.startswith("face_") else "photos", fontsize=8)
        ax.yaxis.get_major_locator().set_params(integer=True)
        ax.tick_params(labelsize=7)
    fig.suptitle(title, fontsize=10)
    return _png(fig)


def describe_protection(stages: Sequence[str], series: dict[str, Sequence[float | None]]) -> str:
    """The bar chart's numbers as one line of text (its alt text)."""
    return "; ".join(f"{label}: " + ", ".join(f"{s} {'n/a' if r is None else f'{r:.2f}'}"
                                              for s, r in zip(stages, rates)) for label, rates in series.items())
