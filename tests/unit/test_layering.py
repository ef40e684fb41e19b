"""The import contracts in pyproject.toml ([tool.importlinter], run by `make lint`) do fail on a layering violation.

`make lint` proves the real tree keeps them; this proves they are not vacuous: a copy of the package with a few
wrong imports added breaks exactly the contracts that describe them.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
PACKAGE = ROOT / "operator" / "kimi_operator"
LINT_IMPORTS = Path(sys.executable).with_name("lint-imports")

# module (relative to the package) -> the import added to it, the contracts it must break
VIOLATIONS = {
    "planner.py": ("import kopf", ["kopf is imported only by", "The decision is pure"]),
    "gateway.py": ("from kimi_operator import render", ["Layers:"]),  # a lower layer importing a higher one
    "kube.py": ("from kimi_operator import controller", ["Layers:"]),
    "hub.py": ("from kimi_operator import kube", ["Layers:", "kube.py is used only by"]),  # siblings
    "engine/flags.py": ("import kubernetes", ["Only kube.py talks to the API server", "The decision is pure"]),
    "reconcile/diff.py": ("from kimi_operator import controller", ["Layers:"]),  # inside the decision package
}


def _lint(tree: Path) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "PYTHONPATH": str(tree)}  # this copy, not the checkout the venv points at
    return subprocess.run(
        [str(LINT_IMPORTS), "--config", str(ROOT / "pyproject.toml"), "--no-cache", "--no-logo"],
        cwd=tree,
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


def test_the_import_contracts_break_on_wrong_imports(tmp_path: Path) -> None:
    copy = tmp_path / "kimi_operator"
    shutil.copytree(PACKAGE, copy, ignore=shutil.ignore_patterns("__pycache__", "templates"))
    for module, (line, _) in VIOLATIONS.items():
        path = copy / module
        path.write_text(path.read_text() + f"\n{line}  # injected by test_layering\n")

    result = _lint(tmp_path)
    out = " ".join((result.stdout + result.stderr).split())  # rich wraps long lines
    assert result.returncode == 1, out
    summary = out.split("Contracts:")[0]  # "<contract name> KEPT|BROKEN" per contract, then the count
    verdicts = {
        contract: m[1] if (m := re.search(re.escape(contract) + r".*?(KEPT|BROKEN)", summary)) else None
        for _, contracts in VIOLATIONS.values()
        for contract in contracts
    }
    assert verdicts == dict.fromkeys(verdicts, "BROKEN"), out
    assert re.search(r"Only the resolver and the fetcher talk to the Hugging Face Hub KEPT", summary), out
    assert "Contracts: 1 kept, 5 broken." in out
    for module, (line, _) in VIOLATIONS.items():  # each injected import is in the report, with its line
        importer = "kimi_operator." + module.removesuffix(".py").replace("/", ".")
        imported = line.split()[-1] if line.startswith("import") else ".".join(line.split()[1::2])
        assert f"{importer} -> {imported}" in out, (module, out)
