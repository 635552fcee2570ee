"""What a run folder holds besides the model: predictions, attention, plots, report."""

from __future__ import annotations

import csv
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import h5py
import numpy as np
from matplotlib.figure import Figure
from matplotlib.patches import Rectangle

from mil_cyto.calibration import N_BINS, reliability_curve
from mil_cyto.data.manifest import ManifestRow
from mil_cyto.data.tiling import paint_tiles
from mil_cyto.io import atomic_path
from mil_cyto.labels import GRADES
from mil_cyto.metrics import format_table
from mil_cyto.reference import REFERENCE_ROWS
from mil_cyto.training import Predictions


def write_predictions(path: Path, rows: Sequence[ManifestRow], pred: Predictions) -> None:
    """``predictions.csv``: image, patient_id, label, pred, p_normal, p_CIN1, p_CIN2+."""
    with atomic_path(path) as tmp, tmp.open("w", newline="", encoding="utf-8") as handle:
        writer = csv.writer(handle)
        writer.writerow(["image", "patient_id", "label", "pred"] + [f"p_{g}" for g in GRADES])
        for row, p in zip(rows, pred.probs, strict=True):
            writer.writerow(
                [row.image_id, row.patient_id, GRADES[row.label], GRADES[int(p.argmax())]]
                + [f"{v:.6f}" for v in p]
            )


def write_attention(
    path: Path, pred: Predictions, coords: Mapping[str, np.ndarray], sizes: Mapping[str, Any]
) -> None:
    """``attention.h5``: ``/<n>`` groups with ``coords`` (N, 4) x0, y0, x1, y1, ``attention``
    (N,) softmax weights summing to 1, ``scores`` (N,) attention logits; attrs image, size."""
    with atomic_path(path) as tmp, h5py.File(tmp, "w") as handle:
        handle.attrs["classes"] = list(GRADES)
        handle.attrs["coords_format"] = "x0, y0, x1, y1 in photo pixels"
        for i, image_id in enumerate(pred.image_ids):
            group = handle.create_group(f"{i:05d}")
            group.attrs["image"] = image_id
            group.attrs["size_hw"] = tuple(int(v) for v in sizes[image_id])
            group.attrs["label"] = GRADES[int(pred.labels[i])]
            group.attrs["pred"] = GRADES[int(pred.preds[i])]
            group.create_dataset("coords", data=np.asarray(coords[image_id], dtype=np.int32))
            group.create_dataset("attention", data=pred.attention[i].astype(np.float32))
            group.create_dataset("scores", data=pred.scores[i].astype(np.float32))


def save_figure(fig: Figure, path: Path) -> None:
    """Lay out ``fig`` and write it as a PNG atomically (no pyplot, no global backend)."""
    fig.tight_layout()
    with atomic_path(Path(path)) as tmp:
        fig.savefig(tmp, format="png")


def plot_confusion(path: Path, matrix: list[list[int]]) -> None:
    """Confusion matrix PNG: rows truth, columns prediction, counts and row shares."""
    cm = np.asarray(matrix)
    share = cm / np.maximum(cm.sum(axis=1, keepdims=True), 1)
    fig = Figure(figsize=(4.2, 3.8), dpi=120)
    ax = fig.subplots()
    ax.imshow(share, cmap="Blues", vmin=0, vmax=1)
    for i in range(cm.shape[0]):
        for j in range(cm.shape[1]):
            colour = "white" if share[i, j] > 0.5 else "black"
            ax.text(j, i, f"{cm[i, j]}\n{share[i, j]:.0%}", ha="center", va="center", color=colour)
    ax.set_xticks(range(len(GRADES)), GRADES)
    ax.set_yticks(range(len(GRADES)), GRADES)
    ax.set_xlabel("predicted")
    ax.set_ylabel("true (histology)")
    ax.set_title("test photos")
    save_figure(fig, path)


def plot_reliability(
    path: Path,
    labels: np.ndarray,
    uncalibrated: np.ndarray,
    calibrated: np.ndarray,
    temperature: float,
    n_bins: int = N_BINS,
) -> None:
    """Reliability diagram PNG of the test photos: accuracy against mean top-class
    confidence in ``n_bins`` equal-width bins, for the probabilities ``(B, C)`` before and
    after dividing the logits by ``temperature`` (marker area ~ photos in the bin), the
    diagonal being perfect calibration; below, how many photos fall in each bin."""
    fig = Figure(figsize=(4.6, 5.4), dpi=120)
    top, bottom = fig.subplots(2, 1, gridspec_kw={"height_ratios": [3, 1]}, sharex=True)
    top.plot([0, 1], [0, 1], ls="--", color="grey", lw=1, label="perfectly calibrated")
    edges = np.linspace(0, 1, n_bins + 1)
    curves = [("uncalibrated", uncalibrated, "tab:red")]
    if temperature != 1.0:
        curves.append((f"temperature {temperature:.2f}", calibrated, "tab:blue"))
    for name, probs, colour in curves:
        if len(probs) == 0:
            continue
        accuracy, confidence, count = reliability_curve(probs, labels, n_bins)
        top.plot(confidence, accuracy, "-", color=colour, lw=1, label=name)
        top.scatter(confidence, accuracy, s=12 + 60 * count / count.max(), color=colour)
        bottom.hist(probs.max(axis=1), bins=edges, color=colour, alpha=0.5, label=name)
    top.set_xlim(0, 1)
    top.set_ylim(0, 1.02)
    top.set_ylabel("accuracy of the top class")
    top.set_title(f"test photos ({len(labels)}); T fitted on validation photos", fontsize=9)
    top.legend(fontsize=7, loc="upper left")
    bottom.set_xlabel("top-class probability")
    bottom.set_ylabel("photos")
    save_figure(fig, path)


def attention_heatmap(
    size_hw: tuple[int, int], coords: np.ndarray, scores: np.ndarray
) -> np.ndarray:
    """Tile scores painted into a ``(H, W)`` map, rank-normalised to [0, 1] (mean where
    tiles overlap, NaN where no tile lies) so a few hot spots stay readable."""
    ranks = np.argsort(np.argsort(scores)) / max(len(scores) - 1, 1)
    return paint_tiles(size_hw, coords, ranks)


def plot_attention_examples(
    path: Path,
    photos: Sequence[tuple[str, np.ndarray, np.ndarray, np.ndarray, np.ndarray]],
) -> None:
    """Side-by-side photo and attention overlay for a few test photos.

    Each item: (title, photo (H, W, 3) uint8, tile coords (N, 4), tile scores (N,),
    atypical boxes (M, 4)). The top-5 tiles are outlined in yellow, annotated atypical cells
    (never used in training) in cyan.
    """
    n = len(photos)
    fig = Figure(figsize=(9, 3.5 * n), dpi=100)
    axes = fig.subplots(n, 2, squeeze=False)
    for (title, photo, coords, scores, boxes), (left, right) in zip(photos, axes, strict=True):
        left.imshow(photo)
        left.set_title(title, fontsize=9)
        right.imshow(photo)
        right.imshow(
            attention_heatmap(photo.shape[:2], coords, scores),
            cmap="inferno",
            alpha=0.55,
            vmin=0,
            vmax=1,
        )
        right.set_title("attention (rank), top-5 tiles yellow, atypical cells cyan", fontsize=8)
        for x0, y0, x1, y1 in coords[np.argsort(scores)[::-1][:5]]:
            right.add_patch(Rectangle((x0, y0), x1 - x0, y1 - y0, fill=False, ec="yellow", lw=1.2))
        for x0, y0, x1, y1 in boxes:
            for ax in (left, right):
                ax.add_patch(Rectangle((x0, y0), x1 - x0, y1 - y0, fill=False, ec="cyan", lw=1))
        for ax in (left, right):
            ax.set_axis_off()
    save_figure(fig, path)


def _fmt(value: float | None) -> str:
    return "-" if value is None else f"{value:.3f}"


def _calibration_lines(cal: dict[str, Any] | None) -> list[str]:
    """report.md's calibration paragraph (nothing for metrics without ``calibration``)."""
    if not cal:
        return []
    if cal["n_val"]:
        how = f"temperature {cal['temperature']:.3f} fitted on {cal['n_val']} {cal['fitted_on']}"
    else:
        how = f"temperature {cal['temperature']:.3f}, {cal['fitted_on']}"
    return [
        "## Calibration of the test probabilities",
        "",
        f"- {how}; the predicted grades are the same with or without it",
        f"- ECE ({cal['n_bins']} equal-width bins of the top-class probability): "
        f"{_fmt(cal['ece'])} (uncalibrated {_fmt(cal['ece_uncalibrated'])}); multiclass Brier "
        f"score (0 best, 2 worst): {_fmt(cal['brier'])} (uncalibrated "
        f"{_fmt(cal['brier_uncalibrated'])})",
        "",
        "![reliability diagram](reliability.png)",
        "",
    ]


def _chosen_text(training: dict[str, Any], config: dict[str, Any]) -> str:
    """How the reported head was picked: best epoch, then any refit and seed ensemble."""
    chosen = f"epoch {training['best_epoch']} chosen on validation"
    if training.get("refit"):
        refit = training["refit"]
        chosen += (
            f"; the head then trained again for {refit['epochs']} epochs on the "
            f"{refit['photos']} training and validation photos, and kept"
        )
    members = training.get("members", [])
    if members:
        epochs = ", ".join(str(m["best_epoch"]) for m in members)
        chosen += (
            f"; the model is the mean of {len(members)} such heads from seeds "
            f"{', '.join(str(m.get('seed', config['seed'])) for m in members)} (epochs {epochs})"
        )
    return chosen


def _headline_lines(metrics: dict[str, Any], config: dict[str, Any]) -> list[str]:
    """report.md's title, run settings, classification table and reference rows."""
    chosen = _chosen_text(metrics["training"], config)
    lines = [
        "# mil-cyto run report",
        "",
        f"Data: `{config.get('data_resolved')}`; encoder `{config['encoder']}` "
        f"({config['mode']}); aggregator `{config['aggregator']}`; tiles "
        f"{config['tile_size']} px, stride {config['stride']}; seed {config['seed']}.",
        f"Test photos: {metrics['n_test']} (patient-disjoint from train and validation; {chosen}).",
        "",
        "## Classification (one-vs-rest, as in the reference study's Table 4)",
        "",
        format_table(metrics),
        "",
        "Reference rows (whole-image CNNs at 512x512 on the study's own data, not this data):",
        "",
        "| model | acc | mean sens | mean spec |",
        "|---|---|---|---|",
    ]
    for name, row in REFERENCE_ROWS.items():
        lines.append(
            f"| {name} | {_fmt(row.get('accuracy'))} | {_fmt(row['macro_sensitivity'])} | "
            f"{_fmt(row['macro_specificity'])} |"
        )
    return lines + ["", "![confusion matrix](confusion_matrix.png)", ""]


def _localization_lines(loc: dict[str, Any] | None) -> list[str]:
    """report.md's localization paragraph (nothing for metrics without ``localization``)."""
    if not loc:
        return []
    lines = [
        "## Localization from attention (no pixel labels in training)",
        "",
        f"- instance AUROC: {_fmt(loc['instance_auroc'])} over {loc['n_images']} abnormal "
        f"test photos ({loc['n_positive_tiles']} positive / {loc['n_negative_tiles']} "
        f"negative tiles; a tile is positive when it covers >= {loc['min_cover']:.0%} of "
        "an atypical cell's box, thinner contacts are left out)",
        f"- pointing game: {_fmt(loc['pointing_game'])} (top tile touches an atypical cell)",
    ]
    if "tiles" in loc:
        own = loc.get("per_instance", {})
        lines += [
            f"- tiles: the photo's {loc['tiles']}, each scored by the mean of the attention "
            "map over it (instances painted, their mean where they overlap); on the "
            "model's own instances: instance AUROC "
            f"{_fmt(own.get('instance_auroc'))}, pointing game "
            f"{_fmt(own.get('pointing_game'))}",
        ]
    return lines + [
        "",
        "![attention examples](attention_examples.png)",
        "",
    ]


def _timing_lines(timing: dict[str, float]) -> list[str]:
    """report.md's timing list, seconds per stage (nothing when no timing was recorded)."""
    if not timing:
        return []
    return ["## Where the time went (seconds)", ""] + [f"- {k}: {v:.1f}" for k, v in timing.items()]


def render_report(metrics: dict[str, Any], config: dict[str, Any]) -> str:
    """``report.md``: the headline table beside the reference rows, localization, timing."""
    lines = _headline_lines(metrics, config)
    lines += _calibration_lines(metrics.get("calibration"))
    lines += _localization_lines(metrics.get("localization"))
    lines += _timing_lines(metrics.get("timing_s", {}))
    return "\n".join(lines) + "\n"
