"""The `kimi-operator` command: run the operator, plan or render a KimiDeployment offline, fetch weights."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

import yaml
from pydantic import ValidationError
from pydantic.alias_generators import to_camel

from kimi_operator import __version__, planner, render
from kimi_operator.api import rules
from kimi_operator.api.models import GROUP, KIND, KimiDeploymentSpec
from kimi_operator.config import OperatorConfig
from kimi_operator.engine import llamacpp
from kimi_operator.engine.kinds import FACTS
from kimi_operator.weights import COMMIT_RE

OFFLINE_UID = "00000000-0000-0000-0000-000000000000"


class InputError(Exception):
    """Input the offline commands cannot use; printed as one line per problem, exit 2."""


def _load(path: str) -> list[dict[str, Any]]:
    """The KimiDeployments in a file (or - for stdin), with their metadata checked as the API server would."""
    try:
        text = sys.stdin.read() if path == "-" else Path(path).read_text()
    except OSError as err:
        raise InputError(f"{path}: cannot read it: {err.strerror or err}") from err
    try:
        loaded = list(yaml.safe_load_all(text))
    except yaml.YAMLError as err:
        mark = getattr(err, "problem_mark", None)
        where = f" (line {mark.line + 1}, column {mark.column + 1})" if mark is not None else ""
        problem = getattr(err, "problem", None) or str(err).splitlines()[0]
        raise InputError(f"{path}: not valid YAML{where}: {problem}") from err
    docs = [d for d in loaded if isinstance(d, dict) and d.get("kind") == KIND]
    if not docs:
        raise InputError(f"{path}: no {KIND} found (a document with kind: {KIND})")
    problems = []
    for i, doc in enumerate(docs):
        meta = doc.get("metadata")
        name = meta.get("name") if isinstance(meta, dict) else None
        if not isinstance(meta, dict) or not name:
            problems.append(f"{path}: {KIND} #{i + 1}: metadata.name is missing")
            continue
        why = rules.name_problem(name)
        if why:
            problems.append(f"{KIND} {name}: {why}")
    if problems:
        raise InputError("\n".join(problems))
    return docs


def _field(loc: tuple[int | str, ...]) -> str:
    out = "spec"
    for part in loc:
        out += f"[{part}]" if isinstance(part, int) else f".{to_camel(part) if '_' in part else part}"
    return out


def validation_lines(name: str, err: ValidationError) -> list[str]:
    """One line per problem: `KimiDeployment NAME: spec.path: what is wrong` (no pydantic dump, no link)."""
    lines = []
    for e in err.errors(include_url=False):
        message = str(e["msg"]).removeprefix("Value error, ")
        loc = tuple(p for p in e["loc"] if p not in ("function-after[_cross_field_rules()]",))
        lines += [f"{KIND} {name}: {_field(loc)}: {line}" for line in message.splitlines() if line.strip()]
    return lines


def _spec(doc: dict[str, Any]) -> KimiDeploymentSpec:
    name = doc["metadata"]["name"]
    spec = doc.get("spec")
    if spec is not None and not isinstance(spec, dict):
        raise InputError(f"{KIND} {name}: spec must be a mapping, not {type(spec).__name__}")
    try:
        return KimiDeploymentSpec.model_validate(spec or {})
    except ValidationError as err:
        raise InputError("\n".join(validation_lines(name, err))) from err


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
        f"  context {p.context_length} tokens, KV cache {p.kv_cache_dtype} ({p.kv_bytes_per_token / 1024:.1f} KiB/token"
        + (f", {p.pp} pipeline stages each cache {-(-61 // p.pp)} of 61 layers" if p.pp > 1 else "")
        + ")",
        f"  startup budget {p.startup_budget_seconds // 60} min, weights volume {p.weights_volume_size}",
    ]
    if p.engine == "llamacpp":
        return "\n".join(lines + _budget_lines(p, spec)) + "\n"
    lines += [
        f"  {'gpu-memory-utilization' if p.engine == 'vllm' else 'mem-fraction-static'} {p.mem_fraction_static:.3f}: "
        f"{p.mem_fraction_source}",
        f"  engine ({FACTS[p.engine].display}): "  # type: ignore[index]  # Plan.engine is a Kind
        + " ".join(render.engine_command(p, spec, role="leader" if p.nodes_per_replica > 1 else "single")),
        "",
        f"  {'gpus':>4} {'layout':<28} {'mem-frac':>8} {'weights/GPU':>11} {'KV/GPU':>8} {'KV tokens':>10} "
        f"{'full-ctx seqs':>13}  verdict",
    ]
    for c in p.candidates:
        chosen = (c.nodes, c.gpus) == (p.nodes_per_replica, p.gpus_per_replica)
        verdict = "chosen" if chosen else ("fits" if c.fits else "no: " + c.why_not)
        where = f"{c.nodes} node{'s' if c.nodes > 1 else ''}" if c.gpus >= p.gpus_per_node else "part of a node"
        lines.append(
            f"  {c.gpus:>4} {c.label + ' (' + where + ')':<28} {c.mem_fraction_static:>8.3f} "
            f"{_gib(c.weights_bytes_per_gpu) + ' GiB':>11} {_gib(max(c.kv_budget_bytes_per_gpu, 0)) + ' GiB':>8} "
            f"{c.kv_cache_tokens:>10} {c.max_full_context_sequences:>13}  {verdict}"
        )
    lines += [f"  note: {n}" for n in p.notes]
    return "\n".join(lines) + "\n"


def _budget_lines(p: planner.Plan, spec: KimiDeploymentSpec) -> list[str]:
    """llama.cpp's budget table: each GGUF quantization against this node's RAM and VRAM."""
    cpu, memory_gib = planner.engine_requests(p, None)
    out = [
        f"  pod requests {cpu} CPU, {memory_gib}Gi memory, {p.gpus_per_pod} GPU; "
        f"fetches {', '.join(p.fetch_include)} of {p.repo}",
        "  engine (llama.cpp): llama-server --model <first shard of "
        f"{p.quant}> " + " ".join(llamacpp.server_args(p, spec, cpu=cpu)),
        "",
        f"  {'quant':<12} {'size':>7} {'RAM':>10} {'VRAM':>10} {'experts':<8}  {'speed class':<64} verdict",
    ]
    for r in p.budget:
        verdict = "chosen" if r.quant == p.quant else ("fits" if r.fits else "no: " + r.why_not)
        out.append(
            f"  {r.quant:<12} {r.bytes / 1e9:>5.0f} GB {_gib(r.ram_bytes) + ' GiB':>10} "
            f"{_gib(r.vram_bytes) + ' GiB':>10} {'RAM' if r.experts_on_cpu else 'GPU':<8}  {r.speed_class:<64} "
            f"{verdict}"
        )
    out += [f"  note: {n}" for n in p.notes]
    return out


def cmd_plan(args: argparse.Namespace) -> int:
    refused = False
    for doc in _load(args.file):
        name = doc["metadata"]["name"]
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
        if not args.commit and not COMMIT_RE.match(spec.model.revision):
            print(
                f"{meta.get('name')}: model.revision {spec.model.revision!r} is not pinned here: the operator resolves "
                "it to a commit through the Hub and serves /models/<repo>/<commit>; pass --commit to see exactly that",
                file=sys.stderr,
            )
        p = render.pin(p, spec, config, commit=args.commit or None, draft_commit=args.draft_commit or None)
        manifests += render.render_all(owner, spec, p, config, weights_ready=not args.before_weights)
    sys.stdout.write(yaml.safe_dump_all(manifests, sort_keys=False))
    return 0


def cmd_run(args: argparse.Namespace) -> int:
    import os

    import kopf

    from kimi_operator import handlers  # noqa: F401 - registers the handlers

    if args.leader_election_lease:  # read with the rest of the settings (config.OperatorConfig.from_env)
        os.environ["KIMI_LEADER_ELECTION_LEASE"] = args.leader_election_lease
    if args.leader_election_namespace:
        os.environ["KIMI_LEADER_ELECTION_NAMESPACE"] = args.leader_election_namespace
    kopf.configure(verbose=args.verbose)
    # standalone: kopf's peering stays off; one replica works through our Lease (leader.py), the others stand by
    # with their watches open and write nothing
    kopf.run(
        clusterwide=not args.namespace,
        namespaces=args.namespace or (),
        standalone=True,
        liveness_endpoint=args.liveness,
        # kopf would otherwise make one from the user name, which a uid without a passwd entry (the image's 65532
        # under a random-uid policy) does not have: it crashed the pod. The same identity as the Lease's.
        identity=OperatorConfig.from_env().identity,  # type: ignore[arg-type]  # kopf's Identity: a NewType of str
    )
    return 0


def cmd_fetch(args: argparse.Namespace) -> int:
    from kimi_operator import fetch

    return fetch.main(
        args.repo,
        args.revision,
        args.root,
        concurrency=args.concurrency,
        draft_repo=args.draft_repo,
        draft_revision=args.draft_revision,
        progress_file=args.progress_file,
        progress_interval=args.progress_interval,
        verify=args.verify,
        termination_log=args.termination_log,
        include=tuple(args.include),
    )


def cmd_check_weights(args: argparse.Namespace) -> int:
    """The serving pod's weights-check init container: each snapshot directory holds the fetcher's completion
    manifest and every file it lists at its size (no hashing: seconds, not the minutes 600 GB of sha256 take)."""
    from kimi_operator import weights

    failed = False
    for directory in args.paths:
        problems = weights.validate_manifest(directory)
        if problems:
            failed = True
            shown = "; ".join(problems[:5]) + (f"; and {len(problems) - 5} more" if len(problems) > 5 else "")
            print(
                f"weights-check: {directory} is not a complete snapshot: {shown}. The engine is not started on it: "
                "the operator's fetch Job downloads and verifies it (kubectl describe kimideployment says where "
                "the download is)",
                file=sys.stderr,
            )
            continue
        manifest = weights.read_manifest(directory)
        assert manifest is not None  # validate_manifest found it
        print(
            f"weights-check: {directory}: complete, {len(manifest.files)} files, "
            f"{weights.human_bytes(manifest.total_bytes)}, verified {manifest.completed_at}"
        )
    return 1 if failed else 0


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
    r.add_argument("--commit", default="", help="the commit model.revision resolves to (as the operator pins it)")
    r.add_argument("--draft-commit", default="", help="the commit of the speculative draft model's main branch")
    r.set_defaults(func=cmd_render)
    run = sub.add_parser("run", help="run the operator (kopf) against the current cluster")
    run.add_argument("-n", "--namespace", action="append", help="watch only these namespaces (repeatable)")
    run.add_argument(
        "--leader-election-lease",
        default="",
        help="run several replicas: the one that holds this coordination.k8s.io Lease works, the others stand by "
        "(failover within 17 s; at once on a graceful exit)",
    )
    run.add_argument(
        "--leader-election-namespace", default="", help="the Lease's namespace (default: $POD_NAMESPACE or default)"
    )
    run.add_argument("--liveness", default="http://0.0.0.0:8081/healthz", help="kopf liveness endpoint")
    run.add_argument("-v", "--verbose", action="store_true")
    run.set_defaults(func=cmd_run)
    f = sub.add_parser(
        "fetch",
        help="download a checkpoint onto the weights volume (run by the fetch Job)",
        description="Download repo@revision into ROOT/<repo>/<commit>/, resumable and verified. The Hub token is "
        "read from the HF_TOKEN environment variable only. Exit codes: 0 complete, 1 failure (retry may help), "
        "2 bad request (repo/revision not found, unauthorized), 3 not enough space. docs/weights-cache.md",
    )
    f.add_argument("--repo", required=True, help="Hugging Face repo id, e.g. moonshotai/Kimi-K2.5")
    f.add_argument("--revision", default="main", help="branch, tag or commit (resolved to a commit)")
    f.add_argument("--root", default="/models", help="the weights volume mount (default /models)")
    f.add_argument("--concurrency", type=int, default=8, help="files downloaded in parallel (default 8)")
    f.add_argument("--draft-repo", default="", help="also fetch this speculative-decoding draft model")
    f.add_argument("--draft-revision", default="main")
    f.add_argument(
        "--include",
        action="append",
        default=[],
        metavar="GLOB",
        help="fetch only the files of --repo matching this glob (repeatable; e.g. UD-Q2_K_XL/*.gguf for one GGUF "
        "quantization); default: what serving a safetensors checkpoint needs",
    )
    f.add_argument("--progress-file", default="", help="write the progress record (JSON) to this file")
    f.add_argument(
        "--progress-interval",
        type=float,
        default=10.0,
        help="seconds between progress reports (one 'kimi-fetch-progress {json}' line on stdout each)",
    )
    f.add_argument(
        "--verify",
        choices=["fast", "full"],
        default="fast",
        help="fast: trust files this fetcher verified before if size and mtime are unchanged; full: re-hash all",
    )
    f.add_argument("--termination-log", default="/dev/termination-log", help="where the result JSON goes (k8s)")
    f.set_defaults(func=cmd_fetch)
    w = sub.add_parser(
        "check-weights",
        help="check snapshot directories against their completion manifests (the serving pod's init container)",
        description="Exit 0 when every DIR holds the fetcher's completion manifest and each file it lists at its "
        "size; else print what is missing and exit 1. Reads no file contents (the fetcher hashed them).",
    )
    w.add_argument("paths", nargs="+", metavar="DIR", help="a snapshot directory, e.g. /models/<repo>/<commit>")
    w.set_defaults(func=cmd_check_weights)
    c = sub.add_parser("crd", help="print the KimiDeployment CRD")
    c.set_defaults(func=cmd_crd)
    args = parser.parse_args(argv)
    try:
        rc: int = args.func(args)
    except InputError as err:
        print(str(err), file=sys.stderr)
        return 2
    return rc


if __name__ == "__main__":
    raise SystemExit(main())
