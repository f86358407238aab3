"""One-way data flow: production stages never read ground truth; evaluation reads the stores and the truth.

Truths checked:
- no module outside the evaluation package reads the ground-truth readers, except the inputs that stand
  for a person or an outside model (the simulated annotator, simulated 2D maps), the dataset adapter
  that provides the truth, and the label loader of the fully supervised baseline -- and the simulated
  inputs say so in their docstring's first line;
- building the summary imports no stage code (no torch, no spconv, no stage module);
- the schema marks the evaluation-only and runtime-only keys, and production params leave them out.
"""
from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

from lidarlift.config import evaluation_settings, load_config, production_section, scoped_keys

PACKAGE = Path(__file__).resolve().parents[1] / "lidarlift"
#: modules allowed to read ground truth, and why
TRUTH_READERS = {
    "groundtruth.py": "the reader itself",
    "datasets/semantickitti.py": "the SemanticKITTI adapter provides its labels to lidarlift.groundtruth",
    "pseudolabels/annotator.py": "the simulated annotator stands for a person",
    "pseudolabels/simulate2d.py": "simulated 2D maps stand for a 2D model",
    "model/data.py": "the label loader of the fully supervised baseline trains on the dataset's labels",
}


def _imports_groundtruth(path: Path) -> bool:
    tree = ast.parse(path.read_text())
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom):
            mod = node.module or ""
            if mod == "lidarlift.groundtruth" or (mod == "lidarlift" and any(a.name == "groundtruth" for a in node.names)):
                return True
            if node.level and (mod == "groundtruth" or any(a.name == "groundtruth" for a in node.names)):
                return True
        elif isinstance(node, ast.Import) and any(a.name == "lidarlift.groundtruth" for a in node.names):
            return True
    return False


def test_only_evaluation_and_simulated_inputs_read_ground_truth():
    readers = sorted(str(p.relative_to(PACKAGE)) for p in PACKAGE.rglob("*.py") if _imports_groundtruth(p))
    assert readers, "the scan found no reader at all: the test is broken"
    offenders = [r for r in readers if not r.startswith("evaluate/") and r not in TRUTH_READERS]
    assert not offenders, f"production modules read ground truth: {offenders}"
    for name in ("pseudolabels/annotator.py", "pseudolabels/simulate2d.py"):
        first = ast.get_docstring(ast.parse((PACKAGE / name).read_text())).splitlines()[0]
        assert "ground truth" in first, f"{name}: the docstring's first line must say it reads ground truth"


def test_summary_imports_no_stage_code():
    code = ("import sys, lidarlift.summary; bad = [m for m in sys.modules if m in ('torch', 'spconv', 'zarr') or "
            "m.split('.')[:2] in (['lidarlift', s] for s in ('associate', 'presegment', 'superpixels', 'masks', "
            "'pseudolabels', 'model', 'evaluate'))]; print(bad); sys.exit(1 if bad else 0)")
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert proc.returncode == 0, proc.stdout + proc.stderr


def test_scoped_keys_leave_production_params():
    cfg = load_config()
    evaluation, runtime = scoped_keys("evaluation"), scoped_keys("runtime")
    assert {"presegment.split_min_points", "masks.eval_min_area", "pseudolabels.baseline"} <= evaluation
    assert {"train.workers", "masks.encoder_batch", "masks.bf16"} <= runtime
    for key in evaluation | runtime:
        section, rest = key.split(".", 1)
        node = production_section(cfg, section)
        for part in rest.split(".")[:-1]:
            node = node.get(part, {})
        assert rest.split(".")[-1] not in node, key
    ev = evaluation_settings(cfg)
    assert ev["presegment"] == {k: cfg["presegment"][k] for k in ("compare_baseline", "split_min_points", "split_min_share")}
    assert ev["evaluate"] == cfg["evaluate"]
