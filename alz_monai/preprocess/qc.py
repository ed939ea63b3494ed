"""Quality control of preprocessed scans: a registration score, a mosaic per scan and an overview of all.

The score is the normalised cross-correlation (Pearson) between the scan and the template inside the template's
brain mask, after registration. Good affine fits of the synthetic raw heads score 0.88-0.92 when the brain is the
template itself and 0.66-0.82 (median 0.77) for the cohort's brains at 4 mm (their own anatomy, atrophy and
noise; 39 of 40 scans, the 40th a failed fit at 0.52); the same scans moved by 5 mm score about 0.55, by 10 mm
about 0.35, because grey matter, white matter and CSF then no longer overlap.
``QC_THRESHOLD`` (0.6) sits between the two: scans below it are flagged for a person to look at. Real scans differ
more from the template than synthetic ones; look at the overview's lowest scores before trusting the default.
"""

from __future__ import annotations

import html
import os
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import pandas as pd

from alz_monai.fileio import atomic_write_text
from alz_monai.preprocess.images import sitk
from alz_monai.preprocess.template import template_in_box

if TYPE_CHECKING:
    import SimpleITK

__all__ = ["QC_THRESHOLD", "passes", "registration_score", "save_mosaic", "write_overview"]

QC_THRESHOLD = 0.6
"""Lowest registration score that passes QC (see the module docstring for how it was chosen)."""
MOSAIC_FRACTIONS = (0.35, 0.5, 0.65)
"""Positions of the slices shown per plane, as fractions of the box."""


def registration_score(image_in_box: SimpleITK.Image, resolution: float) -> float:
    """Normalised cross-correlation of the boxed scan with the template inside the template's brain mask."""
    template, mask = template_in_box(resolution)
    itk = sitk()
    inside = itk.GetArrayViewFromImage(mask) > 0
    scan = itk.GetArrayViewFromImage(image_in_box)[inside].astype(np.float64)
    reference = itk.GetArrayViewFromImage(template)[inside].astype(np.float64)
    if scan.std() == 0:
        return 0.0
    return float(np.corrcoef(scan, reference)[0, 1])


def save_mosaic(image_in_box: SimpleITK.Image, resolution: float, path: str | os.PathLike[str],
                title: str) -> Path:
    """Three slices in each plane of the boxed scan, with the template's brain outline drawn over them."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    from alz_monai.plots import save_figure

    itk = sitk()
    _, mask = template_in_box(resolution)
    volume = itk.GetArrayFromImage(image_in_box).transpose(2, 1, 0)  # (x, y, z) with RAS axes
    outline = itk.GetArrayFromImage(mask).transpose(2, 1, 0)
    shown = {"cmap": "gray", "vmin": 0.0, "vmax": float(np.percentile(volume[outline > 0], 99.5)) or 1.0,
             "origin": "lower", "interpolation": "nearest"}
    figure = Figure(figsize=(6.0, 6.4), dpi=60, layout="constrained")
    FigureCanvasAgg(figure)
    axes = figure.subplots(3, len(MOSAIC_FRACTIONS), squeeze=False)
    for row, axis in zip(axes, (2, 1, 0)):  # axial, coronal, sagittal
        for panel, fraction in zip(row, MOSAIC_FRACTIONS):
            index = int(round(fraction * (volume.shape[axis] - 1)))
            panel.imshow(np.take(volume, index, axis=axis).T, **shown)
            panel.contour(np.take(outline, index, axis=axis).T, levels=[0.5], colors="red", linewidths=0.8)
            panel.set_xticks([])
            panel.set_yticks([])
    figure.suptitle(title, fontsize=9)
    return save_figure(figure, path)


def write_overview(table: pd.DataFrame, out_dir: Path, threshold: float) -> tuple[Path, Path]:
    """``qc_overview.html`` (every scan, worst first, with its mosaic) and ``qc_overview.png`` (all scores)."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    from alz_monai.plots import save_figure

    done = table[table["status"] == "done"].sort_values("qc_score")
    failed = table[table["status"] != "done"]
    rows = [_html_row(row) for row in done.itertuples(index=False)]
    failures = "".join(f"<li>{html.escape(str(row.source))}: {html.escape(str(row.error))}</li>"
                       for row in failed.itertuples(index=False))
    flagged = int((~done["qc_pass"].astype(bool)).sum())
    page = (
        "<!DOCTYPE html><html><head><meta charset='utf-8'><title>alz-monai preprocess QC</title><style>"
        "body{font-family:sans-serif} td{vertical-align:top;padding:4px} .flag{background:#fdd}"
        "img{width:240px}</style></head><body>"
        f"<h1>Preprocessing QC</h1><p>{len(done)} scans preprocessed, {flagged} below the threshold "
        f"{threshold:.2f} (flagged, red), {len(failed)} failed. Each mosaic shows axial, coronal and sagittal "
        "slices of the scan in MNI space with the template's brain outline in red: the outline should follow the "
        "brain's edge.</p>"
        + (f"<h2>Failed</h2><ul>{failures}</ul>" if failures else "")
        + "<table><tr><th>scan</th><th>score</th><th>mosaic</th></tr>" + "".join(rows) + "</table></body></html>"
    )
    html_path = out_dir / "qc_overview.html"
    atomic_write_text(html_path, page)

    figure = Figure(figsize=(7.0, 3.0), dpi=80, layout="constrained")
    FigureCanvasAgg(figure)
    axis = figure.subplots()
    scores = done["qc_score"].to_numpy(dtype=float)
    passing = done["qc_pass"].astype(bool).to_numpy()
    positions = np.arange(len(scores))
    axis.scatter(positions[passing], scores[passing], s=12, color="tab:blue", label="passes")
    axis.scatter(positions[~passing], scores[~passing], s=16, color="tab:red", label="flagged")
    axis.axhline(threshold, color="tab:red", linestyle="--", linewidth=1)
    axis.set_xlabel("scans, worst first")
    axis.set_ylabel("registration score (NCC)")
    axis.set_ylim(min(0.0, float(scores.min(initial=0.0))), 1.0)
    axis.set_title(f"{len(scores)} scans, {int((~passing).sum())} below {threshold:.2f}", fontsize=9)
    axis.legend(loc="lower right", fontsize=8)
    return html_path, save_figure(figure, out_dir / "qc_overview.png")


def _html_row(row: Any) -> str:
    css = "" if row.qc_pass else " class='flag'"
    scan = html.escape(" ".join(filter(None, (str(row.participant_id), str(row.session_id)))))
    return (f"<tr{css}><td>{scan}<br><small>{html.escape(str(row.source))}</small></td>"
            f"<td>{row.qc_score:.3f}</td><td><a href='{html.escape(str(row.qc_mosaic))}'>"
            f"<img src='{html.escape(str(row.qc_mosaic))}' loading='lazy'></a></td></tr>")


def passes(scores: Sequence[float], threshold: float) -> list[bool]:
    """Whether each score passes: at or above the threshold (NaN never passes)."""
    return [bool(score >= threshold) for score in scores]
