"""The `kimi-operator` command: run the operator, plan or render a KimiDeployment offline, fetch weights."""

from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path
from typing import Any

import yaml
from pydantic import ValidationError

from kimi_operator import __version__, planner, render
from kimi_operator.api.models import GROUP, KIND, KimiDeploymentSpec
from kimi_operator.config import OperatorConfig

OFFLINE_UID = "00000000-0000-0000-0000-000000000000"


def _load(path: str) -> list[dict[str, Any]]:
    text = sys.stdin.read() if path == "-" else Path(path).read_text()
    docs = [d for d in yaml.safe_load_all(text) if isinstance(d, dict) and d.get("kind") == KIND]
    if not docs:
        raise SystemExit(f"{path}: no {KIND} found")
    return docs


def _spec(doc: dict[str, Any]) -> KimiDeploymentSpec:
    try:
        return KimiDeploymentSpec.model_validate(doc.get("spec") or {})
    except ValidationError as err:
        name = doc.get("metadata", {}).get("name", "?")
        raise SystemExit(f"{KIND} {name}: invalid spec:\n{err}") from err


def _gib(n: int) -> str:
    return f"{n / 1024**3:.1f}"


def plan_table(spec: KimiDeploymentSpec, name: str) -> str:
    try:
        p = planner.plan(spec)
    except planner.PlanError as err:
        return f"{name}: REFUSED ({err.reason}): {err.message}\n"
    lines = [
        f"{name}: {p.repo}@{p.revision} on {p.accelerator} -> {p.summary}",
        f"  served as {p.served_model_name}, image {p.image}",
        f"  context {p.context_length} tokens, KV cache {p.kv_cache_dtype} "
        f"({p.kv_bytes_per_token / 1024:.1f} KiB/token), mem-fraction-static {p.mem_fraction_static_percent}%",
        f"  startup budget {p.startup_budget_seconds // 60} min, weights volume {p.weights_volume_size}",
        "",
        f"  {'nodes':>5} {'gpus':>4} {'tp':>3} {'ep':>3} {'dp':>3} {'weights/GPU':>11} {'KV/GPU':>8} "
        f"{'KV tokens':>10} {'full-ctx seqs':>13}  verdict",
    ]
    for c in p.candidates:
        verdict = "chosen" if c.nodes == p.nodes_per_replica else ("fits" if c.fits else "no: " + c.why_not)
        lines.append(
            f"  {c.nodes:>5} {c.gpus:>4} {c.tp:>3} {c.ep:>3} {c.dp:>3} {_gib(c.weights_bytes_per_gpu) + ' GiB':>11} "
            f"{_gib(max(c.kv_budget_bytes_per_gpu, 0)) + ' GiB':>8} {c.kv_cache_tokens:>10} "
            f"{c.max_full_context_sequences:>13}  {verdict}"
        )
    lines += [f"  note: {n}" for n in p.notes]
    return "\n".join(lines) + "\n"


def cmd_plan(args: argparse.Namespace) -> int:
    refused = False
    for doc in _load(args.file):
        name = doc.get("metadata", {}).get("name", "?")
        out = plan_table(_spec(doc), name)
        refused |= "REFUSED" in out.splitlines()[0]
        sys.stdout.write(out)
    return 1 if refused else 0


def cmd_render(args: argparse.Namespace) -> int:
    config = OperatorConfig.from_env()
    manifests: list[dict[str, Any]] = []
    for doc in _load(args.file):
        meta = doc.get("metadata", {})
        spec = _spec(doc)
        try:
            p = planner.plan(spec)
        except planner.PlanError as err:
            print(f"{meta.get('name')}: REFUSED ({err.reason}): {err.message}", file=sys.stderr)
            return 1
        owner = render.Owner(meta.get("name", "kimi"), meta.get("namespace") or args.namespace, OFFLINE_UID)
        manifests += render.render_all(owner, spec, p, config, weights_ready=not args.before_weights)
    sys.stdout.write(yaml.safe_dump_all(manifests, sort_keys=False))
    return 0


def cmd_run(args: argparse.Namespace) -> int:
    import kopf

    from kimi_operator import handlers  # noqa: F401 - registers the handlers

    kopf.configure(verbose=args.verbose)
    kopf.run(
        clusterwide=not args.namespace,
        namespaces=args.namespace or (),
        standalone=not args.peering,
        peering_name=args.peering or None,
        liveness_endpoint=args.liveness,
    )
    return 0


def cmd_fetch(args: argparse.Namespace) -> int:
    from kimi_operator import fetcher

    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(message)s")
    fetcher.fetch(args.repo, args.revision, args.dest, max_workers=args.workers)
    if args.draft_repo:
        from kimi_operator.engine.sglang import snapshot_path

        fetcher.fetch(args.draft_repo, "main", snapshot_path(args.draft_repo, "main"), max_workers=args.workers)
    return 0


def cmd_crd(_: argparse.Namespace) -> int:
    from kimi_operator.api import crd

    sys.stdout.write(crd.render_crd_yaml())
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="kimi-operator", description=f"kimi-operator {__version__} ({GROUP})")
    sub = parser.add_subparsers(dest="cmd", required=True)
    p = sub.add_parser("plan", help="print the plan (topology, memory, KV cache) for a KimiDeployment file")
    p.add_argument("-f", "--file", required=True, help="YAML with one or more KimiDeployments, or - for stdin")
    p.set_defaults(func=cmd_plan)
    r = sub.add_parser("render", help="print the manifests the operator would apply, offline")
    r.add_argument("-f", "--file", required=True)
    r.add_argument("-n", "--namespace", default="default")
    r.add_argument("--before-weights", action="store_true", help="render the download stage (Job, no GPUs)")
    r.set_defaults(func=cmd_render)
    run = sub.add_parser("run", help="run the operator (kopf) against the current cluster")
    run.add_argument("-n", "--namespace", action="append", help="watch only these namespaces (repeatable)")
    run.add_argument("--peering", default="", help="kopf peering name for HA (needs the KopfPeering CRDs)")
    run.add_argument("--liveness", default="http://0.0.0.0:8081/healthz", help="kopf liveness endpoint")
    run.add_argument("-v", "--verbose", action="store_true")
    run.set_defaults(func=cmd_run)
    f = sub.add_parser("fetch", help="download a checkpoint onto the weights volume (run by the fetch Job)")
    f.add_argument("--repo", required=True)
    f.add_argument("--revision", default="main")
    f.add_argument("--dest", required=True)
    f.add_argument("--draft-repo", default="")
    f.add_argument("--workers", type=int, default=8)
    f.set_defaults(func=cmd_fetch)
    c = sub.add_parser("crd", help="print the KimiDeployment CRD")
    c.set_defaults(func=cmd_crd)
    args = parser.parse_args(argv)
    if args.cmd == "run":
        logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s %(message)s")
    rc: int = args.func(args)
    return rc


if __name__ == "__main__":
    raise SystemExit(main())
