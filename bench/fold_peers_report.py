"""The results file of :mod:`fold_peers`: the table, the goal check per row, import floors,
load averages, the commands, and where bncheck's time goes (:mod:`fold_profile`)."""

from __future__ import annotations

import json
from dataclasses import asdict
from pathlib import Path

WRONG_ABOVE = 1e-4
#: the goal: bncheck's wall time at most this many times the fastest peer's
GOAL_RATIO = 1.5


def _by_model(results) -> dict[str, list]:
    by_model: dict[str, list] = {}
    for o in results:
        by_model.setdefault(o.model, []).append(o)
    return by_model


def _fastest_peer(outs):
    peers = [o for o in outs if o.tool != "bncheck" and not o.error]
    return min(peers, key=lambda o: o.wall_s) if peers else None


def _least_cpu_peer(outs):
    peers = [o for o in outs if o.tool != "bncheck" and not o.error and o.cpus]
    return min(peers, key=lambda o: o.cpu_s) if peers else None


def _cell(o, fastest: float, least_cpu: float) -> str:
    if o.error:
        return f"failed: {o.error}"
    err = f"{o.max_rel_err:.1e}" if o.max_rel_err is not None else "-"
    wrong = " **wrong**" if o.max_rel_err is not None and o.max_rel_err > WRONG_ABOVE else ""
    return (f"{o.folded}/{o.bn_before} · {err}{wrong} · {o.wall_s:.2f} s wall ({o.wall_s / fastest:.2f}x) · "
            f"{o.cpu_s:.2f} s CPU ({o.cpu_s / least_cpu:.2f}x)")


def goal_rows(results) -> list[dict]:
    """Per model: BN folded by some peer but not by bncheck, wrong results, the time ratio."""
    rows = []
    for model, outs in _by_model(results).items():
        mine = next(o for o in outs if o.tool == "bncheck")
        fastest = _fastest_peer(outs)
        folded = {o.tool: set(o.before) - set(o.left) for o in outs if not o.error}
        peers_fold = set().union(*(f for t, f in folded.items() if t != "bncheck"))
        missed = sorted(peers_fold - folded.get("bncheck", set()))
        wrong = [o.tool for o in outs if o.max_rel_err is not None and o.max_rel_err > WRONG_ABOVE]
        ratio = mine.wall_s / fastest.wall_s if fastest is not None else float("nan")
        least_cpu = _least_cpu_peer(outs)
        cpu_ratio = mine.cpu_s / least_cpu.cpu_s if least_cpu is not None else None
        rows.append({
            "model": model, "bncheck_folded": mine.folded, "best_peer_folded": max(len(f) for t, f in folded.items() if t != "bncheck") if len(folded) > 1 else 0,
            "missed": missed, "only_bncheck": sorted(folded.get("bncheck", set()) - peers_fold), "wrong": wrong,
            "ratio": round(ratio, 3), "fastest_peer": fastest.tool if fastest else None,
            "cpu_ratio": round(cpu_ratio, 3) if cpu_ratio is not None else None,
            "least_cpu_peer": least_cpu.tool if least_cpu else None,
            "meets": not missed and not wrong and not mine.error and ratio <= GOAL_RATIO,
            "meets_on_cpu": not missed and not wrong and not mine.error and cpu_ratio is not None and cpu_ratio <= GOAL_RATIO,
        })
    return rows


def _goal_line(row: dict) -> str:
    on_cpu = row.get("meets_on_cpu")
    if row["meets"] and on_cpu is not False:
        verdict = "meets the goal (wall and CPU)"
    elif row["meets"]:
        verdict = "meets the goal on wall time, **misses it on CPU time**"
    elif on_cpu:
        verdict = "**misses the goal on wall time**, meets it on CPU time"
    else:
        verdict = "**misses the goal** (wall and CPU)"
    parts = [f"folds {row['bncheck_folded']} (best peer {row['best_peer_folded']})"]
    parts.append(f"misses {', '.join(row['missed'])}" if row["missed"] else "misses none a peer folds")
    if row["only_bncheck"]:
        parts.append(f"folds {len(row['only_bncheck'])} no peer folds")
    parts.append(f"wrong: {', '.join(row['wrong'])}" if row["wrong"] else "0 wrong results")
    parts.append(f"{row['ratio']:.2f}x the fastest peer's wall time ({row['fastest_peer']})")
    if row.get("cpu_ratio") is not None:
        parts.append(f"{row['cpu_ratio']:.2f}x the least CPU time of a peer ({row.get('least_cpu_peer')})")
    return f"- {row['model']}: {verdict}: " + "; ".join(parts)


def _table(results, tools) -> list[str]:
    lines = ["| model | BN | " + " | ".join(tools) + " |", "|---|---|" + "---|" * len(tools)]
    for model, outs in _by_model(results).items():
        fastest = _fastest_peer(outs)
        base = fastest.wall_s if fastest is not None else float("nan")
        least = _least_cpu_peer(outs)
        cpu_base = least.cpu_s if least is not None else float("nan")
        lines.append(f"| {model} | {outs[0].bn_before} | " + " | ".join(_cell(o, base, cpu_base) for o in outs) + " |")
    return lines


def _cpu_lines(results) -> list[str]:
    lines = []
    for model, outs in _by_model(results).items():
        lines.append(f"- {model}: " + ", ".join(f"{o.tool} {o.cpu_s:.2f} s" for o in outs if o.cpus))
    return lines


def _profile_lines(profiles: dict[str, dict]) -> list[str]:
    if not profiles:
        return []
    stages = list(next(iter(profiles.values())))
    lines = ["| stage (s, under cProfile) | " + " | ".join(profiles) + " |", "|---|" + "---|" * len(profiles)]
    for stage in stages:
        lines.append(f"| {stage} | " + " | ".join(f"{p.get(stage, 0.0):.2f}" for p in profiles.values()) + " |")
    return lines


#: profile stages that are parts of others or spread over them (not in the split)
_NESTED = ("process (profiled)", "fold() in all", "onnxruntime sessions opened (all stages)")


def _misses(results, profiles: dict[str, dict], floors: dict[str, float]) -> list[str]:
    """For every row that misses the goal: its profiled process split into its stages, largest
    first, and the import floors that bound it."""
    lines = []
    for row in goal_rows(results):
        if row["meets"]:
            continue
        prof = profiles.get(row["model"])
        if not prof:
            continue
        total = prof.get("process (profiled)", 0.0) or 1.0
        parts = [(k, v) for k, v in prof.items() if k not in _NESTED and not k.startswith("  ") and v > 0]
        parts.sort(key=lambda kv: -kv[1])
        split = "; ".join(f"{k.strip()} {v:.2f} s ({100 * v / total:.0f}%)" for k, v in parts)
        lines.append(f"- {row['model']} ({row['ratio']:.2f}x): of {total:.2f} s profiled: {split}.")
    if lines and floors:
        bn = next((v for k, v in floors.items() if k.startswith("bncheck")), None)
        opt = next((v for k, v in floors.items() if k.startswith("onnxoptimizer")), None)
        if bn and opt:
            lines.append(f"- Import floor alone: bncheck's CLI with the ONNX backend and onnxruntime {bn:.2f} s against "
                         f"onnxoptimizer's {opt:.2f} s ({bn / opt:.2f}x) before either reads a byte.")
    return lines


#: what the numbers alone do not say (kept with the code that writes the file)
NOTES = [
    "## Reading these numbers",
    "- The machine (2 cores) was shared with other jobs throughout (load averages above, over 2 most",
    "  of the time). Interleaving spreads the load over every tool alike, but under contention a",
    "  process's wall time grows with the CPU it asks for and with how many threads wait for a core",
    "  (bncheck's onnxruntime sessions use both): the CPU ratios are the steadier figure.",
    "- ONNX rows: most of bncheck's time is fixed, before any work. Its import floor is above",
    "  onnxoptimizer's: onnxruntime (onnxoptimizer runs no model), typer and rich, the report and",
    "  rules layers, and `onnx.reference` (the float64 site proofs). bncheck pins typer below 0.29",
    "  (0.29 coerces every option through pydantic, ~0.1 s a command), imports a report section,",
    "  the chart, ranking and progress-line modules only when they are drawn, and leaves out what",
    "  fold does not use (DATA readers, engines, the ONNX runner: tests/cli/test_startup.py keeps",
    "  them out). `bncheck fold` runs numpy's BLAS on the calling thread and lets no OpenMP thread",
    "  spin (bncheck.cli.app.QUIET_THREADS). The work is the per-site float64 proofs, the",
    "  whole-model check on 2 samples (original and folded, onnxruntime without graph",
    "  optimisations), one serialisation shared by onnx.checker, the session and the file, and for",
    "  dynamic inputs the size search. Two threads overlap it (Backend.checks_alongside): the size",
    "  search and the original's run go on while the graph is rewritten, and the site proofs while",
    "  the folded model is verified, so the profile below (main thread only) shows the proofs at",
    "  ~0 s. Verification was not reduced to get here; a model whose every BN is kept and nothing",
    "  is written is not run against itself (crepe).",
    "- crepe: no BN can fold (a ReLU between every conv and its BN, and each BN feeds a zero-padded",
    "  max-pool); every tool leaves all six, bncheck says why per layer and writes no OUT (it would",
    "  be IN again), so its row checks IN.",
    "- Torch rows: bncheck runs with `--no-timing` (the speed-up measurement is on by default for",
    "  PyTorch; it runs both models at least five times and is neither folding nor verifying). Most",
    "  of every torch process is `import torch`, which the peers pay too; bncheck's own extra time is",
    "  the input inference (forward passes at the sizes tried), the whole-model verification (2",
    "  samples, both models), the fx traces and the float64 site proofs. fx.fuse cannot trace CREPE",
    "  (its `if embed:`); fuse_modules, given the conv/BN pairs as registered, fuses across the ReLU:",
    "  a wrong model; bncheck keeps all six BN layers (reason 'fed by relu') and writes nothing.",
    "",
]


def write_markdown(results, path: Path, *, run: dict, loads: dict, profiles: dict, notes: list[str] | None = None,
                   torch_lines: list[str] | None = None) -> str:
    tools = [o.tool for o in results if o.model == results[0].model]
    table = "\n".join(_table(results, tools))
    kept = [f"- {o.model} / {o.tool}: kept {k}" for o in results for k in o.kept]
    names = {"src": "IN", "out": "OUT", "report": "REPORT"}
    commands = [f"- {tool}: `python {' '.join(a.format(**names) for a in argv)}`" for tool, argv in run["commands"].items()]
    text = "\n".join([
        "# bncheck fold vs onnxslim / onnxoptimizer / onnxsim",
        "",
        "Cells: BN folded/total · max relative error on real-looking inputs (onnxruntime, no graph",
        "optimisations, original vs output) · median wall time of the whole process over "
        f"{run['repeat']} interleaved rounds (ratio to the fastest peer) · median CPU time, user + system, "
        "of the process and its threads (ratio to the peer that used least). Every tool runs its own command "
        "line in a fresh process (commands below). bncheck runs with its defaults: per-site proofs and "
        "whole-model verification on. Peers verify nothing (onnxoptimizer's CLI runs onnx.checker).",
        "",
        table,
        "",
        f"## Goal check (every BN a peer folds, 0 wrong, at most {GOAL_RATIO}x the fastest peer)",
        *(_goal_line(row) for row in goal_rows(results)),
        "",
        "## Commands (each a fresh process; an untimed warm-up run per tool and model first)",
        *commands,
        "",
        "## CPU time (user + sys, median): bncheck's onnxruntime runs use both cores",
        *_cpu_lines(results),
        "",
        "## Import floors (a process that only imports, median, interleaved)",
        *(f"- {label}: {seconds:.2f} s" for label, seconds in run["import_floors_s"].items()),
        "",
        "## Load average (1, 5, 15 min) before and after each model's rounds",
        f"- start: `{run['uptime_start']}`",
        *(f"- {model}: {load['before']} -> {load['after']}" for model, load in loads.items()),
        f"- end: `{run['uptime_end']}`",
        "",
        "## BN left, with reasons",
        *(kept or ["- none"]),
        "",
        *(["## The torch side: bncheck fold STATE_DICT --arch vs torch.fx fuse / fuse_modules (bench/fold_peers_torch.py)",
           "", *([run["torch_note"], ""] if run.get("torch_note") else []), *torch_lines, ""] if torch_lines else []),
        "## Where bncheck's time goes (one more run of each row under cProfile)",
        *_profile_lines(profiles),
        "",
        "Rows that miss the goal, split by stage (the stages above that are not part of another):",
        *(_misses(results, profiles, run.get("import_floors_s", {})) or ["- none"]),
        "",
        *NOTES,
        *(run.get("notes") or []),
        *(notes or []),
        f"Machine: {json.dumps(run['machine'])} (2 CPUs shared with other jobs: compare ratios, not seconds).",
        "",
        "Regenerate: `python bench/fold_peers.py` (see the module docstring).",
        "",
    ])
    path.write_text(text)
    return table


def write_json(results, path: Path, *, run: dict, loads: dict, profiles: dict) -> None:
    data = {
        "results": [asdict(o) | {"folded": o.folded} for o in results],
        "goal": goal_rows(results), "run": run, "loads": loads, "profiles": profiles,
    }
    path.write_text(json.dumps(data, indent=2))
