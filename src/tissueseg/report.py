"""A single self-contained HTML report (figures embedded as data URIs).

The report is assembled section by section from results already on disk, so it can be
rebuilt at any time without recomputing anything::

    rep = Report("tissueseg demo")
    rep.add_class_table("Dataset class proportions", stats_json["classes"], chart_png)
    rep.add_scores("Evaluation", {"full": metrics_full, "weak": metrics_weak})
    rep.write("out/report.html")
"""

from __future__ import annotations

import base64
import html
import math
from collections.abc import Mapping, Sequence
from pathlib import Path

from .io import write_text

_CSS = """
body{font-family:system-ui,-apple-system,Segoe UI,Helvetica,Arial,sans-serif;margin:2rem auto;max-width:1200px;
color:#222;padding:0 1rem}
h1{margin-bottom:.2rem}h2{border-bottom:2px solid #ddd;padding-bottom:.2rem;margin-top:2.2rem}
table{border-collapse:collapse;margin:.6rem 0;font-size:.92rem}
th,td{border:1px solid #ccc;padding:.25rem .55rem;text-align:right}th{background:#f3f3f3}
td.name,th.name{text-align:left}
.sw{display:inline-block;width:.9rem;height:.9rem;border:1px solid #555;vertical-align:middle;margin-right:.4rem}
.grid{display:flex;flex-wrap:wrap;gap:1rem}.grid figure{margin:0;max-width:100%}
figure img{max-width:100%;border:1px solid #ccc}figcaption{font-size:.85rem;color:#555}
.side{display:grid;grid-template-columns:repeat(auto-fit,minmax(420px,1fr));gap:1.2rem}
pre{background:#f6f6f6;padding:.8rem;overflow:auto;font-size:.82rem}
.note{color:#555;font-size:.9rem}
"""


def image_data_uri(path: str | Path) -> str:
    """A PNG/JPEG file as a ``data:`` URI."""
    path = Path(path)
    mime = "image/jpeg" if path.suffix.lower() in (".jpg", ".jpeg") else "image/png"
    return f"data:{mime};base64," + base64.b64encode(path.read_bytes()).decode("ascii")


def _fmt(value: object, digits: int = 3) -> str:
    if isinstance(value, float):
        return "–" if math.isnan(value) else f"{value:.{digits}f}"
    return html.escape(str(value))


def _swatch(color: Sequence[int] | str) -> str:
    hexcol = color if isinstance(color, str) else "#%02x%02x%02x" % tuple(color)
    return f'<span class="sw" style="background:{html.escape(hexcol)}"></span>'


class Report:
    """Collects sections and writes one HTML file."""

    def __init__(self, title: str, subtitle: str = ""):
        self.title = title
        self.subtitle = subtitle
        self.parts: list[str] = []

    def heading(self, text: str, note: str = "") -> None:
        self.parts.append(f"<h2>{html.escape(text)}</h2>")
        if note:
            self.parts.append(f'<p class="note">{html.escape(note)}</p>')

    def figure(self, path: str | Path, caption: str = "", width: int | None = None) -> str:
        style = f' style="width:{width}px"' if width else ""
        cap = f"<figcaption>{html.escape(caption)}</figcaption>" if caption else ""
        return f'<figure><img src="{image_data_uri(path)}" alt="{html.escape(caption)}"{style}>{cap}</figure>'

    def add_figures(self, title: str, figures: Sequence[tuple[str | Path, str]], width: int | None = None,
                    note: str = "") -> None:
        """A heading and a wrapping grid of ``(image path, caption)``; missing files are left out."""
        self.heading(title, note)
        items = [self.figure(p, c, width) for p, c in figures if Path(p).is_file()]
        self.parts.append('<div class="grid">' + "".join(items) + "</div>")

    def add_class_table(self, title: str, classes: Sequence[Mapping], chart: str | Path | None = None,
                        note: str = "") -> None:
        """Class proportions: rows with ``name``, ``color``, ``pixels``, ``proportion`` (+ optional weights)."""
        self.heading(title, note)
        extra = [k for k in ("images", "weight_inverse", "weight_median") if classes and k in classes[0]]
        head = "".join(f"<th>{html.escape(k.replace('_', ' '))}</th>" for k in extra)
        rows = []
        for c in classes:
            cells = "".join(f"<td>{_fmt(c[k])}</td>" for k in extra)
            prop = c.get("proportion", float("nan"))
            rows.append(
                f'<tr><td class="name">{_swatch(c["color"])}{html.escape(str(c["name"]))}</td>'
                f"<td>{int(c['pixels']):,}</td><td>{_fmt(100 * prop, 2)}%</td>{cells}</tr>"
            )
        table = (f'<table><tr><th class="name">class</th><th>pixels</th><th>proportion</th>{head}</tr>'
                 + "".join(rows) + "</table>")
        chart_html = self.figure(chart, "class proportions") if chart and Path(chart).is_file() else ""
        self.parts.append(f'<div class="side"><div>{table}</div><div>{chart_html}</div></div>')

    def add_scores(self, title: str, results: Mapping[str, Mapping], confusion: Mapping[str, str | Path] | None = None,
                   colors: Mapping[str, Sequence[int]] | None = None, note: str = "") -> None:
        """Per-class IoU/Dice of several models side by side, plus their summary metrics and confusion matrices.

        ``results[model]`` is a metrics dict as written by :func:`tissueseg.metrics.scores`
        (``per_class`` mapping class -> {iou, dice, ...}; ``miou``, ``mdice``, ``fwiou``, ``pixel_accuracy``).
        """
        self.heading(title, note)
        models = list(results)
        names: list[str] = []
        for m in models:
            names += [n for n in results[m]["per_class"] if n not in names]
        head = "".join(f"<th>{html.escape(m)} IoU</th><th>{html.escape(m)} Dice</th>" for m in models)
        rows = []
        for n in names:
            sw = _swatch(colors[n]) if colors and n in colors else ""
            cells = ""
            for m in models:
                pc = results[m]["per_class"].get(n, {})
                cells += f"<td>{_fmt(pc.get('iou', float('nan')))}</td><td>{_fmt(pc.get('dice', float('nan')))}</td>"
            rows.append(f'<tr><td class="name">{sw}{html.escape(n)}</td>{cells}</tr>')
        for key, label in (("miou", "mean IoU"), ("mdice", "mean Dice"), ("fwiou", "frequency-weighted IoU"),
                           ("pixel_accuracy", "pixel accuracy")):
            cells = "".join(f'<td colspan="2">{_fmt(results[m].get(key, float("nan")))}</td>' for m in models)
            rows.append(f'<tr><th class="name">{label}</th>{cells}</tr>')
        self.parts.append(f'<table><tr><th class="name">class</th>{head}</tr>{"".join(rows)}</table>')
        if confusion:
            figs = [self.figure(p, f"confusion matrix: {m}") for m, p in confusion.items() if Path(p).is_file()]
            self.parts.append('<div class="side">' + "".join(figs) + "</div>")

    def add_table(self, title: str, rows: Sequence[Mapping], note: str = "") -> None:
        """A plain table from a list of dicts (same keys)."""
        self.heading(title, note)
        if not rows:
            self.parts.append("<p>(none)</p>")
            return
        keys = list(rows[0])
        head = "".join(f"<th>{html.escape(str(k))}</th>" for k in keys)
        body = "".join("<tr>" + "".join(f"<td>{_fmt(r.get(k, ''))}</td>" for k in keys) + "</tr>" for r in rows)
        self.parts.append(f"<table><tr>{head}</tr>{body}</table>")

    def add_text(self, title: str, text: str, note: str = "") -> None:
        """Preformatted text (a config file, versions)."""
        self.heading(title, note)
        self.parts.append(f"<pre>{html.escape(text)}</pre>")

    def render(self) -> str:
        sub = f"<p class='note'>{html.escape(self.subtitle)}</p>" if self.subtitle else ""
        return (
            "<!DOCTYPE html><html lang='en'><head><meta charset='utf-8'>"
            f"<meta name='viewport' content='width=device-width,initial-scale=1'><title>{html.escape(self.title)}</title>"
            f"<style>{_CSS}</style></head><body><h1>{html.escape(self.title)}</h1>{sub}"
            + "\n".join(self.parts) + "</body></html>\n"
        )

    def write(self, path: str | Path) -> Path:
        return write_text(path, self.render())
