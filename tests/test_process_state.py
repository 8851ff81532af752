"""Importing tissueseg and calling its functions leave process-wide state alone (PIL's
decompression-bomb guard, matplotlib's backend, logging handlers)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

SRC = Path(__file__).resolve().parents[1] / "src"


def run_python(code: str, **env: str) -> dict:
    """Run ``code`` in a fresh interpreter (tissueseg from this tree); its last stdout line as JSON."""
    environment = {**os.environ, "PYTHONPATH": str(SRC), "OMP_NUM_THREADS": "1", **env}
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=environment)
    assert out.returncode == 0, out.stderr
    return json.loads(out.stdout.strip().splitlines()[-1])


def test_importing_tissueseg_leaves_pil_guard_and_logging_alone():
    state = run_python(
        "import json, logging, PIL.Image as I\n"
        "before = I.MAX_IMAGE_PIXELS\n"
        "import tissueseg, tissueseg.io, tissueseg.batch, tissueseg.cli, tissueseg.manifest\n"
        "print(json.dumps({'before': before, 'after': I.MAX_IMAGE_PIXELS,\n"
        "                  'handlers': len(logging.getLogger('tissueseg').handlers) + len(logging.root.handlers)}))"
    )
    assert state["after"] == state["before"] and state["before"] is not None and state["handlers"] == 0


def test_plots_leave_the_matplotlib_backend_alone(tmp_path):
    state = run_python(
        "import json, matplotlib, numpy as np, pandas as pd\n"
        "from pathlib import Path\n"
        "before = matplotlib.get_backend()\n"
        "from tissueseg.schemes import bcss5\n"
        "from tissueseg.colorize import legend\n"
        "from tissueseg.stats import plot_proportions\n"
        "from tissueseg.metrics import plot_confusion\n"
        "from tissueseg.train import plot_curves\n"
        f"out = Path({str(tmp_path)!r})\n"
        "s = bcss5()\n"
        "legend(s)\n"
        "plot_proportions(np.array([0.5, 0.3, 0.2, 0.0, 0.0]), s, out / 'p.png')\n"
        "plot_confusion(np.eye(5) * 10, s.names, out / 'c.png')\n"
        "history = pd.DataFrame({'step': [1, 2], 'train_loss': [1.0, 0.5], 'val_loss': [None, 0.6],\n"
        "                        'val_miou': [None, 0.4]})\n"
        "plot_curves(history, out / 'curves.png')\n"
        "import sys\n"
        "print(json.dumps({'before': before, 'after': matplotlib.get_backend(), 'pyplot': 'matplotlib.pyplot' in sys.modules}))",
        MPLBACKEND="svg",
    )
    assert state == {"before": "svg", "after": "svg", "pyplot": False}
    assert all((tmp_path / f).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" for f in ("p.png", "c.png", "curves.png"))
