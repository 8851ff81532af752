import numpy as np
from PIL import Image

from tissueseg.report import Report
from tissueseg.schemes import bcss5

from .browser import check_in_browser


def _png(path, color):
    Image.fromarray(np.full((40, 60, 3), color, np.uint8)).save(path)
    return path


def _metrics(scheme, iou):
    return {"per_class": {n: {"iou": iou, "dice": 2 * iou / (1 + iou)} for n in scheme.names},
            "miou": iou, "mdice": 2 * iou / (1 + iou), "fwiou": iou, "pixel_accuracy": 0.9}


def test_report_is_self_contained_and_renders_in_a_browser(tmp_path):
    s = bcss5()
    a, b = _png(tmp_path / "a.png", (200, 0, 0)), _png(tmp_path / "b.png", (0, 0, 200))
    rep = Report("test report", "subtitle")
    rep.add_class_table("Classes", [{"name": n, "color": list(c), "pixels": 10 * (i + 1), "proportion": 0.2}
                                    for i, (n, c) in enumerate(zip(s.names, s.colors.tolist()))], chart=a)
    rep.add_figures("Samples", [(a, "first <sample>"), (b, "second"), (tmp_path / "missing.png", "gone")])
    rep.add_scores("Scores", {"full": _metrics(s, 0.9), "weak": _metrics(s, 0.8)}, confusion={"full": a, "weak": b},
                   colors=dict(zip(s.names, s.colors.tolist())))
    rep.add_text("Config", "a: 1\n<b>")
    out = rep.write(tmp_path / "report.html")
    html = out.read_text()
    assert "src=\"file:" not in html and html.count("data:image/png;base64,") == 5
    assert "first &lt;sample&gt;" in html and "&lt;b&gt;" in html  # escaped
    assert "0.900" in html and "0.800" in html
    result = check_in_browser(out, tmp_path / "shot.png")
    assert result == {"n": 5, "bad": []}
    assert (tmp_path / "shot.png").stat().st_size > 1000
