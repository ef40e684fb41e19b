"""`kimi-operator plan/render` on bad input: one clear line per problem, a non-zero exit, never a traceback."""

from __future__ import annotations

from pathlib import Path

import pytest

from kimi_operator import cli

GOOD = "kind: KimiDeployment\nmetadata: {name: ok}\nspec: {}\n"
BAD: dict[str, tuple[str, list[str]]] = {
    "yaml syntax error": ("kind: KimiDeployment\nmetadata: {name: a\n", ["not valid YAML (line 3, column 1)"]),
    "metadata null": ("kind: KimiDeployment\nmetadata: null\n", ["metadata.name is missing"]),
    "no KimiDeployment": ("kind: ConfigMap\nmetadata: {name: a}\n", ["no KimiDeployment found"]),
    "dotted name": ("kind: KimiDeployment\nmetadata: {name: my.model}\n", ["DNS-1035 label of at most 49"]),
    "name too long for -headless": (f"kind: KimiDeployment\nmetadata: {{name: {'a' * 50}}}\n", ["at most 49"]),
    "spec not a mapping": ("kind: KimiDeployment\nmetadata: {name: a}\nspec: [1]\n", ["spec must be a mapping"]),
    "wrong type": ("kind: KimiDeployment\nmetadata: {name: a}\nspec: {replicas: many}\n", ["spec.replicas: "]),
    "cross-field rule the API server has": (
        "kind: KimiDeployment\nmetadata: {name: a}\nspec: {autoscaling: {minReplicas: 3, maxReplicas: 2}}\n",
        ["spec.autoscaling: autoscaling: minReplicas must not exceed maxReplicas"],
    ),
    "two problems, two lines": (
        'kind: KimiDeployment\nmetadata: {name: a}\nspec: {engine: {extraArgs: ["--mem-frac=0.9", "--tp 4"]}}\n',
        ["spec.engine.extraArgs: --mem-frac (= --mem-fraction-static) is set", "holds a flag and a value in one item"],
    ),
}


@pytest.mark.parametrize("command", ["plan", "render"])
@pytest.mark.parametrize("case", sorted(BAD))
def test_bad_input_is_one_line_per_problem_and_exit_2(
    case: str, command: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    text, expected = BAD[case]
    path = tmp_path / "kd.yaml"
    path.write_text(text)
    assert cli.main([command, "-f", str(path)]) == 2
    err = capsys.readouterr().err
    assert "Traceback" not in err
    lines = err.strip().splitlines()
    assert len(lines) == len(expected), lines
    for line, want in zip(lines, expected, strict=True):
        assert want in line


def test_a_missing_file_is_one_line(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert cli.main(["plan", "-f", str(tmp_path / "nope.yaml")]) == 2
    assert capsys.readouterr().err.strip() == f"{tmp_path / 'nope.yaml'}: cannot read it: No such file or directory"


def test_a_plan_the_planner_refuses_exits_1_and_a_good_one_0(tmp_path: Path) -> None:
    path = tmp_path / "kd.yaml"
    path.write_text(GOOD)
    assert cli.main(["plan", "-f", str(path)]) == 0
    path.write_text(
        "kind: KimiDeployment\nmetadata: {name: a}\nspec: {topology: {accelerator: H100, nodesPerReplica: 1}}\n"
    )
    assert cli.main(["plan", "-f", str(path)]) == 1
