"""report.html: one self-contained page to browse a test or prediction run.

The page holds the metrics, the ROC and PRO curves (inline SVG), a table of every image with
thumbnails (the input, the map over it, the predicted region with the true defect outlined;
JPEGs embedded as data URIs, so nothing is fetched) that sorts by any column, and a threshold
slider. Moving the slider re-decides every image in the browser exactly as the package does:
an image is anomalous when its largest region over the threshold has at least `min_area`
pixels. Those largest areas are computed here for every threshold on the slider's grid, and
the page updates the decisions, the confusion counts, TPR, TNR and balanced accuracy live.
"""

from __future__ import annotations

import base64
import html
import io
import json
from pathlib import Path

import numpy as np
from PIL import Image

from anomaly import modeldir
from anomaly.postprocessing import largest_area_table

THUMBNAIL = 128  # pixels, the longer side
STEPS = 101      # thresholds on the slider


def threshold_grid(maps: np.ndarray, threshold: float, steps: int = STEPS) -> np.ndarray:
    """`steps` thresholds from below the lowest image maximum to the highest, the finetuned one included."""
    peaks = maps.reshape(len(maps), -1).max(axis=1)
    low, high = float(min(peaks.min(), threshold)), float(max(peaks.max(), threshold))
    span = (high - low) or 1.0
    grid = np.linspace(low - 0.05 * span, high + 0.05 * span, steps - 1)
    return np.unique(np.append(grid, threshold))


def _jpeg(rgb: np.ndarray) -> str:
    picture = Image.fromarray(np.round(np.clip(rgb, 0, 1) * 255).astype(np.uint8))
    picture.thumbnail((THUMBNAIL, THUMBNAIL))
    buf = io.BytesIO()
    picture.save(buf, format="JPEG", quality=80)
    return "data:image/jpeg;base64," + base64.b64encode(buf.getvalue()).decode("ascii")


def thumbnails(image: np.ndarray, amap: np.ndarray, predicted: np.ndarray, truth: np.ndarray | None,
               bottom: float, top: float, threshold: float) -> list[str]:
    """Data URIs of the input, the map over it and the predicted region (truth outlined)."""
    from anomaly.plots.result import heat_overlay, mask_overlay

    base = np.repeat(image, 3, axis=-1) if image.shape[-1] == 1 else image
    return [_jpeg(base), _jpeg(heat_overlay(base, amap, bottom, top, threshold)),
            _jpeg(mask_overlay(base, predicted, truth))]


def _polyline(x: np.ndarray, y: np.ndarray, x_max: float = 1.0, size: int = 220) -> str:
    keep = x <= x_max + 1e-12
    pts = " ".join(f"{20 + size * a / x_max:.1f},{10 + size * (1 - b):.1f}" for a, b in zip(x[keep], y[keep]))
    return pts


def _curve_svg(title: str, x: np.ndarray, y: np.ndarray, x_label: str, y_label: str, x_max: float = 1.0) -> str:
    return (f'<figure><figcaption>{html.escape(title)}</figcaption><svg width="250" height="260" '
            f'viewBox="0 0 250 260"><rect x="20" y="10" width="220" height="220" fill="none" stroke="#888"/>'
            f'<polyline fill="none" stroke="#c0392b" stroke-width="2" points="{_polyline(x, y, x_max)}"/>'
            f'<text x="130" y="250" text-anchor="middle">{html.escape(x_label)} (0 to {x_max:g})</text>'
            f'<text x="12" y="120" text-anchor="middle" transform="rotate(-90 12 120)">{html.escape(y_label)}'
            f'</text></svg></figure>')


class ReportBuilder:
    """The page's rows, added batch by batch (a prediction run streams), then written once.

    Args:
        grid: the slider's thresholds (see `threshold_grid`, `grid_around`).
        threshold, min_area: the decision rule; the slider starts at the grid's nearest threshold.
        bottom, top: the colour scale of the map thumbnails.
    """

    def __init__(self, grid: np.ndarray, threshold: float, min_area: int, bottom: float, top: float):
        self.grid, self.threshold, self.min_area = np.asarray(grid, np.float64), float(threshold), int(min_area)
        self.bottom, self.top = bottom, top
        self.start = int(np.argmin(np.abs(self.grid - self.threshold)))
        self.rows: list[str] = []
        self.areas: list[list[int]] = []
        self.labels: list[int] | None = []

    def add(self, names: list[str], scores: np.ndarray, maps: np.ndarray, images: np.ndarray,
            labels: np.ndarray | None = None, masks: np.ndarray | None = None) -> None:
        """Rows for a batch: (N,) scores, (N, H, W) post-processed maps, (N, H, W, C) inputs in [0, 1]."""
        from anomaly.postprocessing import segment

        areas = largest_area_table(maps, self.grid).T  # (N, steps): largest region at each threshold
        predicted = segment(maps, self.threshold, self.min_area)
        if labels is None:
            self.labels = None
        for i, name in enumerate(names):
            k = len(self.areas)
            thumbs = thumbnails(images[i], maps[i], predicted[i], None if masks is None else masks[i],
                                self.bottom, self.top, self.threshold)
            truth = "" if labels is None else ("defective" if labels[i] else "good")
            self.rows.append(f'<tr data-i="{k}"><td>{html.escape(name)}</td><td>{scores[i]:.6g}</td>'
                             f'<td>{truth}</td><td class="decision"></td><td>{int(areas[i, self.start])}</td>'
                             + "".join(f'<td><img src="{t}" alt="" width="{THUMBNAIL}"></td>' for t in thumbs)
                             + "</tr>")
            self.areas.append([int(a) for a in areas[i]])
            if self.labels is not None:
                self.labels.append(int(labels[i]))

    def write(self, path: Path, title: str, metrics: dict | None = None, curves: str = "") -> Path:
        """Write the page at `path`, whole or not at all."""
        shown = {k: v for k, v in (metrics or {}).items()
                 if isinstance(v, (int, float, str)) and not isinstance(v, bool)}
        metric_rows = "".join(f"<tr><th>{html.escape(k)}</th><td>{v:.4g}</td></tr>" if isinstance(v, float)
                              else f"<tr><th>{html.escape(k)}</th><td>{html.escape(str(v))}</td></tr>"
                              for k, v in shown.items())
        data = {"thresholds": [float(t) for t in self.grid], "areas": self.areas, "min_area": self.min_area,
                "labels": self.labels, "start": self.start}
        page = _PAGE.format(title=html.escape(title), metrics=metric_rows, curves=curves, rows="".join(self.rows),
                            steps=len(self.grid) - 1, start=self.start, min_area=self.min_area,
                            data=json.dumps(data, separators=(",", ":")).replace("</", "<\\/"))
        modeldir.write_text(Path(path), page)
        return Path(path)


def grid_around(threshold: float, steps: int = STEPS) -> np.ndarray:
    """Thresholds from 0 (or twice below a negative threshold) to three times it, for a run whose
    maps are not all known in advance (prediction); the threshold itself included."""
    scale = abs(threshold) or 1.0
    low = 0.0 if threshold > 0 else threshold - 2 * scale
    return np.unique(np.append(np.linspace(low, threshold + 2 * scale, steps - 1), threshold))


def write_report(path: Path, title: str, names: list[str], scores: np.ndarray, maps: np.ndarray,
                 images: np.ndarray, threshold: float, min_area: int, labels: np.ndarray | None = None,
                 masks: np.ndarray | None = None, metrics: dict | None = None) -> Path:
    """Write report.html for a whole set at once (a test run), whole or not at all.

    Args:
        path: the file to write.
        title: the page's heading.
        names: the images' names, shown and sorted on.
        scores: (N,) image scores.
        maps: (N, H, W) post-processed maps (the ones decisions are made on).
        images: (N, H, W, C) the inputs in [0, 1] at the maps' size.
        threshold, min_area: the finetuned decision rule: the slider starts at the threshold.
        labels: (N,) 1 for a defective image, when known (test sets): enables the live metrics.
        masks: (N, H, W) true defect masks, when known: outlined, and the PRO curve.
        metrics: figures to show in the metrics table (metrics.json).

    Returns:
        `path`.
    """
    from sklearn.metrics import roc_curve

    from anomaly.metrics import pro_curve

    builder = ReportBuilder(threshold_grid(maps, threshold), threshold, min_area,
                            min(0.0, float(maps.min())), float(np.quantile(maps, 0.999)) or 1.0)
    builder.add(names, scores, maps, images, labels, masks)
    curves = []
    if labels is not None and 0 < int(np.sum(labels)) < len(labels):
        fpr, tpr, _ = roc_curve(labels, scores)
        curves.append(_curve_svg("ROC (images)", fpr, tpr, "false-positive rate", "true-positive rate"))
    if masks is not None and masks.any() and (~masks).any():
        pfpr, pro = pro_curve(masks, maps)
        curves.append(_curve_svg("PRO (regions)", pfpr, pro, "false-positive rate", "per-region overlap", 0.3))
    return builder.write(path, title, metrics, "".join(curves))


_PAGE = """<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>{title}</title>
<style>
body {{ font-family: sans-serif; margin: 1.5em; }} table {{ border-collapse: collapse; }}
td, th {{ border: 1px solid #ccc; padding: 3px 6px; text-align: left; }}
#images th {{ cursor: pointer; background: #f4f4f4; }} .anomalous {{ color: #c0392b; font-weight: bold; }}
figure {{ display: inline-block; margin: 0 1em 0 0; }} #decision {{ margin: 1em 0; }}
</style></head><body>
<h1>{title}</h1>
<table id="metrics">{metrics}</table>
<div id="curves">{curves}</div>
<div id="decision">
<label>threshold <input type="range" id="threshold" min="0" max="{steps}" step="1" value="{start}"></label>
<output id="threshold-value"></output>, min area <span id="min-area">{min_area}</span> px:
<span id="n-anomalous"></span> anomalous
<table id="confusion"><tr><th>TP</th><th>FP</th><th>TN</th><th>FN</th><th>TPR</th><th>TNR</th>
<th>balanced accuracy</th></tr><tr><td id="tp"></td><td id="fp"></td><td id="tn"></td><td id="fn"></td>
<td id="tpr"></td><td id="tnr"></td><td id="balanced-accuracy"></td></tr></table>
</div>
<table id="images"><thead><tr><th data-type="text">image</th><th data-type="number">score</th>
<th data-type="text">truth</th><th data-type="text">decision</th><th data-type="number">largest region (px)</th>
<th>input</th><th>map</th><th>predicted (truth outlined)</th></tr></thead><tbody>{rows}</tbody></table>
<script>
const DATA = {data};
const slider = document.getElementById("threshold");
const rows = Array.from(document.querySelectorAll("#images tbody tr"));
function fmt(x) {{ return x === null ? "n/a" : x.toFixed(4); }}
function update() {{
  const k = Number(slider.value), need = Math.max(DATA.min_area, 1);
  let tp = 0, fp = 0, tn = 0, fn = 0, flagged = 0;
  for (const row of rows) {{
    const i = Number(row.dataset.i), area = DATA.areas[i][k], yes = area >= need;
    const cell = row.querySelector(".decision");
    cell.textContent = yes ? "anomalous" : "good";
    cell.className = yes ? "decision anomalous" : "decision";
    row.children[4].textContent = area;
    flagged += yes;
    if (DATA.labels) {{
      const truth = DATA.labels[i] === 1;
      if (truth && yes) tp++; else if (truth) fn++; else if (yes) fp++; else tn++;
    }}
  }}
  document.getElementById("threshold-value").textContent = DATA.thresholds[k].toPrecision(6);
  document.getElementById("n-anomalous").textContent = flagged + " of " + rows.length;
  const tpr = tp + fn ? tp / (tp + fn) : null, tnr = tn + fp ? tn / (tn + fp) : null;
  const bal = tpr === null || tnr === null ? null : (tpr + tnr) / 2;
  const shown = DATA.labels ? [tp, fp, tn, fn] : ["n/a", "n/a", "n/a", "n/a"];
  ["tp", "fp", "tn", "fn"].forEach((id, j) => document.getElementById(id).textContent = shown[j]);
  document.getElementById("tpr").textContent = fmt(tpr);
  document.getElementById("tnr").textContent = fmt(tnr);
  document.getElementById("balanced-accuracy").textContent = fmt(bal);
}}
slider.addEventListener("input", update);
document.querySelectorAll("#images th[data-type]").forEach((th, col) => th.addEventListener("click", () => {{
  const body = document.querySelector("#images tbody"), numeric = th.dataset.type === "number";
  const up = th.dataset.order !== "asc";
  th.dataset.order = up ? "asc" : "desc";
  const key = r => numeric ? Number(r.children[col].textContent) : r.children[col].textContent;
  rows.slice().sort((a, b) => (key(a) > key(b) ? 1 : key(a) < key(b) ? -1 : 0) * (up ? 1 : -1))
      .forEach(r => body.appendChild(r));
}}));
update();
</script></body></html>
"""
