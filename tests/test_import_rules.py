"""The import rules of the library by stage (pyproject.toml, [tool.importlinter]) are enforced, not decorative.

`make lint` runs import-linter over the tree; here it runs over a copy of the tree with one rule broken on
purpose, and must fail naming the rule, and over the tree as it is, and must pass. The rule that components
import the library only inside their function bodies (KFP inlines only the body into the compiled YAML) is
one import-linter cannot express: an AST check below covers it.
"""

from __future__ import annotations

import ast
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
LINT_IMPORTS = Path(sys.executable).with_name("lint-imports")
TREE = ("shoprank", "serving", "components", "pipelines", "deploy", "pyproject.toml")


def lint(root: Path, *contracts: str) -> subprocess.CompletedProcess[str]:
    args = [arg for c in contracts for arg in ("--contract", c)]
    return subprocess.run([str(LINT_IMPORTS), "--no-cache", *args], cwd=root, capture_output=True, text=True,
                          timeout=300)


@pytest.fixture
def tree_copy(tmp_path: Path) -> Path:
    for name in TREE:
        src = ROOT / name
        if src.is_dir():
            shutil.copytree(src, tmp_path / name, ignore=shutil.ignore_patterns("__pycache__", "compiled"))
        else:
            shutil.copy(src, tmp_path / name)
    return tmp_path


def test_the_tree_keeps_every_contract():
    result = lint(ROOT)
    assert result.returncode == 0, result.stdout + result.stderr
    assert " broken" not in result.stdout.split("Contracts:")[-1].replace("0 broken", "")


@pytest.mark.parametrize("module, line, contract", [
    ("shoprank/scoring/ranker.py", "import tensorflow", "scoring"),
    ("shoprank/scoring/backends.py", "from shoprank.features import dataset", "scoring"),
    ("shoprank/data/ingest.py", "from shoprank.modeling import train", "stages"),
    ("shoprank/modeling/model.py", "from shoprank.scoring import ranker", "stages"),
    ("shoprank/release/bundle.py", "import numpy", "release"),
    ("shoprank/release/bundle.py", "from shoprank.evaluation import metrics", "release"),
    ("shoprank/config.py", "from shoprank.data import synthetic", "base"),
    ("shoprank/evaluation/metrics.py", "import kserve", "library"),
    ("serving/codec.py", "from shoprank.features import preprocess", "serving"),
    ("serving/model.py", "import tensorflow", "serving"),
    ("pipelines/compile.py", "import shoprank.config", "pipelines"),
    ("deploy/cli.py", "from shoprank.modeling import train", "deploy"),
])
def test_breaking_a_rule_fails_the_lint(tree_copy, module, line, contract):
    assert lint(tree_copy, contract).returncode == 0  # the copy keeps the rule before the edit
    path = tree_copy / module
    path.write_text(path.read_text() + f"\n{line}  # broken on purpose\n")
    result = lint(tree_copy, contract)
    assert result.returncode != 0 and "BROKEN" in result.stdout, result.stdout


def test_components_import_the_library_only_inside_function_bodies():
    for path in sorted((ROOT / "components").glob("*.py")):
        for node in ast.parse(path.read_text()).body:  # module level only
            names = [a.name for a in node.names] if isinstance(node, ast.Import) else (
                [node.module or ""] if isinstance(node, ast.ImportFrom) else [])
            assert not any(n.split(".")[0] in ("shoprank", "serving") for n in names), \
                f"{path.name}: module-level import of {names}: KFP inlines only the function body"
