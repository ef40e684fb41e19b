"""Which SGLang flags the operator owns, decided by what SGLang's own parser maps an argument to. Pure.

SGLang's parser is argparse over ~560 option strings (engine/sglang_flags.py, generated from the pinned release):
it takes aliases (`--model` = `--model-path`), unambiguous abbreviations (`--mem-frac` = `--mem-fraction-static`)
and `--flag=value`, and the last value wins. So "is this extraArgs item one of ours" is answered by resolving it the
way argparse does, to the ServerArgs field it would set, and comparing fields, not strings.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from kimi_operator.engine.sglang_flags import CANONICAL, OPTIONS, SGLANG_VERSION

# ServerArgs fields the operator sets from the plan (what it renders, and what would contradict it). The contract
# test checks that every field the operator's rendered lines set is here or in TUNABLE_DESTS.
OWNED_DESTS: dict[str, str] = {
    "model_path": "model.repo / model.revision",
    "served_model_name": "model.servedModelName",
    "tp_size": "topology (the planner chooses TP)",
    "pp_size": "engine.pipelineParallel",
    "ep_size": "engine.expertParallel",
    "dp_size": "replicas (each replica is its own pod or group)",
    "attn_dp_size": "engine.dataParallelAttention",
    "enable_dp_attention": "engine.dataParallelAttention",
    "host": "(fixed: 0.0.0.0)",
    "port": "(fixed: 8000, the Service's target)",
    "dist_init_addr": "(set from the LeaderWorkerSet for multi-node replicas)",
    "nnodes": "topology.nodesPerReplica",
    "node_rank": "(set from the LeaderWorkerSet)",
    "dist_timeout": "(set for multi-node replicas)",
    "trust_remote_code": "(always on: K2 ships its tokenizer as remote code)",
    "tool_call_parser": "(fixed: kimi_k2)",
    "reasoning_parser": "(fixed: kimi_k2)",
    "enable_metrics": "(always on: the autoscaler reads them)",
    "enable_metrics_for_all_schedulers": "(on with DP attention)",
    "context_length": "engine.contextLength",
    "mem_fraction_static": "engine.memFractionStaticPercent",
    "kv_cache_dtype": "engine.kvCacheDtype",
    "model_loader_extra_config": "(multithreaded loading)",
    "language_model_only": "engine.languageModelOnly",
    "speculative_algorithm": "engine.speculative",
    "speculative_draft_model_path": "engine.speculative.draftRepo",
    "speculative_num_steps": "engine.speculative.numSteps",
    "speculative_eagle_topk": "engine.speculative.topk",
    "speculative_num_draft_tokens": "engine.speculative.numDraftTokens",
}
# Fields the operator sets by default but a user may tune in extraArgs (the planner reads their values).
TUNABLE_DESTS = frozenset({"chunked_prefill_size", "max_running_requests"})
# Engine environment variables the operator sets (engine/sglang.env): engine.env must not set them (silently
# dropping the user's would hide a mistake; letting theirs win would break the plan).
OWNED_ENV: dict[str, str] = {
    "HF_HUB_OFFLINE": "serving pods never reach the Hub: the weights are on the volume",
    "HF_HOME": "a writable path inside the pod",
    "HF_MODULES_CACHE": "a writable path for the checkpoint's remote code",
    "SGLANG_HEALTH_CHECK_TIMEOUT": "the probes are sized to it",
    "SGLANG_CACHE_DIR": "compiled kernels on the weights volume",
    "SGLANG_USE_AITER": "set on AMD",
    "SGLANG_AITER_HONOR_EXPLICIT_MEM_FRACTION": "set on AMD so the planned memory fraction is the one that runs",
}
# Names that hold credentials: never as plain values in a pod spec.
SECRET_ENV = frozenset({"HF_TOKEN", "HUGGING_FACE_HUB_TOKEN", "HUGGINGFACE_HUB_TOKEN", "HUGGINGFACE_TOKEN"})
SECRET_ENV_SUFFIXES = ("_API_KEY", "_SECRET", "_PASSWORD")


def env_problem(name: str) -> str | None:
    """Why engine.env may not set `name`, or None."""
    if name in OWNED_ENV:
        return f"engine.env: {name} is set by the operator ({OWNED_ENV[name]}); remove it"
    if name in SECRET_ENV:
        return (
            f"engine.env: {name} would put a Hub token into the pod spec in plain text; store it in a Secret and "
            "set model.tokenSecretRef (only the download Job needs it; serving pods run offline)"
        )
    if name.endswith(SECRET_ENV_SUFFIXES):
        return f"engine.env: {name} looks like a credential; plain values are visible to anyone who can read pods"
    return None


REMOVED_FLAGS = {"--enable-ep-moe": "set engine.expertParallel: true"}
_NUMBER = re.compile(r"^-\d+$|^-\d*\.\d+$")


@dataclass(frozen=True)
class Problem:
    """One extraArgs item SGLang would not take as meant, or that would override the plan."""

    item: str
    message: str


def resolve(flag: str) -> tuple[str | None, list[str]]:
    """(dest, matches) as argparse resolves an option string: exact first, else a unique prefix; dest is None when
    `matches` is empty (unknown) or holds several options (ambiguous)."""
    if flag in OPTIONS:
        return OPTIONS[flag], [flag]
    matches = sorted(o for o in OPTIONS if o.startswith(flag))
    return (OPTIONS[matches[0]] if len(matches) == 1 else None), matches


def check_extra_args(args: list[str]) -> list[Problem]:
    """Every problem with engine.extraArgs, in order; empty when SGLang takes each item as an option of its own."""
    problems: list[Problem] = []
    for item in args:
        if item != item.strip():
            problems.append(Problem(item, f"{item!r} has leading or trailing whitespace; remove it"))
            continue
        if not item.startswith("-") or _NUMBER.match(item):
            continue  # a value
        flag = item.split("=", 1)[0]
        if " " in flag:
            problems.append(Problem(item, f"{item!r} holds a flag and a value in one item; give them as two items"))
            continue
        if flag in REMOVED_FLAGS:
            problems.append(Problem(item, f"{flag} was removed from SGLang; {REMOVED_FLAGS[flag]}"))
            continue
        dest, matches = resolve(flag)
        if dest is None and not matches:
            problems.append(Problem(item, f"{flag} is not an option of SGLang {SGLANG_VERSION}"))
        elif dest is None:
            shown = ", ".join(matches[:4]) + (", ..." if len(matches) > 4 else "")
            problems.append(Problem(item, f"{flag} is ambiguous for SGLang {SGLANG_VERSION} (could be {shown})"))
        elif dest in OWNED_DESTS:
            canonical = f" (= {canonical_option(dest)})" if flag != canonical_option(dest) else ""
            hint = OWNED_DESTS[dest]
            how = f" {hint}" if hint.startswith("(") else f" from the plan; use {hint}"
            problems.append(Problem(item, f"{flag}{canonical} is set by the operator{how}"))
    return problems


def canonical_option(dest: str) -> str:
    """The option string sglang's help names a field by (e.g. --mem-fraction-static)."""
    return CANONICAL.get(dest, dest)


def values(args: list[str], dest: str) -> list[str]:
    """The values extraArgs give one ServerArgs field, in order (`--flag v`, `--flag=v`, aliases, abbreviations);
    "" for a flag given without a value. argparse keeps the last."""
    out: list[str] = []
    for i, item in enumerate(args):
        text = item.strip()
        if not text.startswith("--"):
            continue
        flag, eq, value = text.partition("=")
        if resolve(flag)[0] != dest:
            continue
        if eq:
            out.append(value)
        elif i + 1 < len(args) and not args[i + 1].strip().startswith("--"):
            out.append(args[i + 1].strip())
        else:
            out.append("")
    return out


def owned_pattern() -> str:
    """An RE2 pattern matching every extraArgs item that sets an owned field (exact options, aliases, unambiguous
    abbreviations; `=value` or ` value` after it), for the CRD's CEL rule, so the API server refuses it at admission."""
    alternatives: list[str] = []
    for option, dest in OPTIONS.items():
        if dest not in OWNED_DESTS:
            continue
        others = [o for o in OPTIONS if o != option]
        # The shortest prefix no other option string starts with: from there on every prefix means this option.
        k = next(
            (n for n in range(3, len(option) + 1) if not any(o.startswith(option[:n]) for o in others)),
            None,
        )
        # Option strings are [a-z0-9-]: nothing to escape (and a backslash would need escaping again inside CEL).
        assert re.fullmatch(r"--[a-z0-9-]+", option), option
        if k is None:
            alternatives.append(option)
            continue
        nested = ""
        for ch in reversed(option[k:]):
            nested = f"({ch}{nested})?"
        alternatives.append(option[:k] + nested)
    return "^(" + "|".join(sorted(alternatives)) + ")([= ].*)?$"
