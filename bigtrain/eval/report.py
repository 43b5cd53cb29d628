"""`bigtrain report RUN [RUN ...]`: runs as a table a leaderboard submission can quote.

A run's evaluations are the eval records of its metrics.jsonl (periodic evaluation in training)
and the scores `bigtrain eval --all-checkpoints` stored in RUN/evals/ (bigtrain.eval.sweep).
Each becomes a row: its metrics (every metric key the evaluation has, so new metrics get columns
without a change here) and the protocol fields of PROTOCOL_COLUMNS. Without --all, a run gives
one row, chosen by a rule the row states (`selection`): the lowest FID of the stored checkpoint
scores, else of the training evaluations; without FID, the latest. Rows whose COMPARABLE fields
differ measure different things and are refused, naming the field, unless --force, which keeps
them and names in `differs` the fields that differ from the first row.
"""

from __future__ import annotations

import argparse
import csv
import io
import json
import math
from pathlib import Path
from typing import Optional

from bigtrain.errors import BigtrainError
from bigtrain.eval.provenance import config_sha256
from bigtrain.eval.sweep import stored_scores

# protocol columns: name -> where it is in a result's protocol (side, key[, key]); a "protocol"
# side is the protocol's own top level (the metric settings)
PROTOCOL_COLUMNS = {
    "data": ("generated", "training", "data"),
    "data_sha256": ("generated", "training", "data_sha256"),
    "resolution": ("generated", "image_resolution"),
    "reference": ("reference", "source"),
    "ref_sha256": ("reference", "content_sha256"),
    "ref_split": ("reference", "split"),
    "ref_num_images": ("reference", "num_images"),
    "ref_resize_filter": ("reference", "resize_filter"),
    "ref_xflip": ("reference", "xflip"),
    "num_generated": ("generated", "num_images"),
    "network": ("generated", "network"),
    "weights_sha256": ("generated", "weights_sha256"),
    "resize": ("generated", "resize"),
    "ema": ("generated", "ema"),
    "truncation": ("generated", "truncation"),
    "label_sampling": ("generated", "label_sampling"),
    "seed": ("generated", "seed"),
    "repeats": ("protocol", "repeats"),
    "images_seen": ("generated", "training", "images_seen"),
    "wall_clock_s": ("generated", "training", "wall_clock_s"),
    "train_processes": ("generated", "training", "processes"),
    "train_device": ("generated", "training", "device"),
    "eval_processes": ("evaluation", "processes"),
    "eval_device": ("evaluation", "device"),
    "code_version": ("generated", "training", "code_version"),
    "eval_code_version": ("generated", "code_version"),
    "config_sha256": ("generated", "training", "config_sha256"),
}
# fields that must be equal for two rows to be compared (besides the metric settings): the
# same reference, the same generated count, network, weights, resize, G or G_ema, truncation
# and label sampling
COMPARABLE = (
    "reference", "ref_sha256", "ref_split", "ref_num_images", "ref_resize_filter", "ref_xflip", "resolution",
    "num_generated", "network", "weights_sha256", "resize", "ema", "truncation", "label_sampling", "repeats",
)  # fmt: skip
NOT_METRICS = {"protocol", "warnings", "standing_stats", "checkpoint", "settings", "file", "truncation_curve"}
FORMATS = ("md", "csv", "json")


def add_report_arguments(p: argparse.ArgumentParser) -> None:
    """Arguments of `bigtrain report`."""
    p.add_argument("runs", nargs="+", metavar="RUN", help="run directories")
    p.add_argument("--format", choices=FORMATS, default="md", help="markdown table, CSV or JSON (default: md)")
    p.add_argument("--out", default=None, help="write the table to this file (default: stdout); never overwritten")
    p.add_argument("--all", action="store_true", help="one row per evaluation (checkpoint) instead of one per run")
    p.add_argument("--force", action="store_true", help="tabulate incomparable rows too, naming what differs")
    p.add_argument("--plot", default=None, metavar="FILE.png", help="also plot every metric against kimg (matplotlib)")


def run_report(args: argparse.Namespace) -> int:
    """`bigtrain report`: the table on stdout or --out, the plot in --plot."""
    for path in (args.out, args.plot):
        if path and Path(path).exists():
            raise BigtrainError(f"{path} already exists; refusing to overwrite it")
    if args.plot and Path(args.plot).suffix.lower() != ".png":
        raise BigtrainError(f"--plot {args.plot}: the plot is a PNG file (FILE.png)")
    evaluations = {run: run_evaluations(Path(run)) for run in args.runs}
    rows = []
    for run, found in evaluations.items():
        rows += found if args.all else [select(found)]
    differs = check_comparable(rows, force=args.force)
    if args.force:
        for row, fields in zip(rows, differs):
            row["differs"] = ", ".join(fields)
    text = render(rows, args.format)
    if args.plot:
        from bigtrain.eval.plot import plot_metrics

        plot_metrics(evaluations, Path(args.plot))
    if args.out:
        Path(args.out).parent.mkdir(parents=True, exist_ok=True)
        Path(args.out).write_text(text)
    else:
        print(text, end="")
    return 0


def run_evaluations(run: Path) -> list[dict]:
    """Every evaluation of a run as a row (training's first, by kimg, then the stored scores)."""
    if not run.is_dir():
        raise BigtrainError(f"{run}: run directory not found")
    config = _run_config(run)
    rows = []
    metrics_file = run / "metrics.jsonl"
    if metrics_file.is_file():
        for number, line in enumerate(metrics_file.read_text().splitlines(), 1):
            if '"eval/' not in line:
                continue
            try:
                record = json.loads(line)
            except ValueError:
                raise BigtrainError(f"{metrics_file}:{number}: not a JSON line") from None
            result = {k[len("eval/") :]: v for k, v in record.items() if k.startswith("eval/")}
            generated = (result.get("protocol") or {}).get("generated") or {}
            checkpoint = generated.get("source") if generated.get("source") != "generator" else None  # none saved
            rows.append(_row(run, result, "training", checkpoint, config))
    for score in stored_scores(run):
        results = score.get("truncation_curve") or [score]
        for result in results:
            rows.append(_row(run, result, "eval --all-checkpoints", score.get("checkpoint"), config))
    if not rows:
        raise BigtrainError(
            f"{run}: no evaluation to report (no eval/* in metrics.jsonl, nothing in evals/): run "
            f"`bigtrain eval --run {run} --all-checkpoints` first"
        )
    return rows


def _run_config(run: Path) -> dict:
    path = run / "config.yaml"
    if not path.is_file():
        return {}
    from bigtrain.config_merge import load_yaml

    return load_yaml(path) or {}


def _row(run: Path, result: dict, source: str, checkpoint: Optional[str], config: dict) -> dict:
    protocol = result.get("protocol") or {}
    generated = protocol.get("generated") or {}
    row = {
        "run": run.name,
        "checkpoint": Path(checkpoint).name if checkpoint else None,
        "kimg": generated.get("kimg"),
        "source": source,
    }
    row.update(_metrics(result))
    sides = {"protocol": protocol, **{k: protocol.get(k) or {} for k in ("generated", "reference", "evaluation")}}
    for name, (side, *keys) in PROTOCOL_COLUMNS.items():
        value = sides[side]
        for key in keys:
            value = value.get(key) if isinstance(value, dict) else None
        row[name] = value
    row["ema"] = {True: "G_ema", False: "G"}.get(row["ema"], row["ema"])
    if row["repeats"] is None:
        row["repeats"] = 1  # one evaluation: what bigtrain eval does without repeats
    settings = {k: v for k, v in protocol.items() if k not in ("generated", "reference", "evaluation", "repeats")}
    row["metric_settings"] = json.dumps(settings, sort_keys=True) if settings else None
    data = config.get("data") or {}  # runs evaluated before the protocol held the training record
    row["data"] = row["data"] or data.get("path")
    row["resolution"] = row["resolution"] or data.get("resolution")
    row["config_sha256"] = row["config_sha256"] or (config_sha256(config) if config else None)
    return row


def _metrics(result: dict) -> dict:
    """The metric values of a result, nested ones flattened (`fid.mean`), lists kept."""
    found = {}

    def walk(prefix: str, value) -> None:
        if isinstance(value, dict):
            for k, v in value.items():
                walk(f"{prefix}.{k}", v)
        elif isinstance(value, (int, float, list)) and not isinstance(value, bool):
            found[prefix] = value

    for key, value in result.items():
        if key not in NOT_METRICS:
            walk(key, value)
    return found


def select(rows: list[dict]) -> dict:
    """The one row of a run: from the stored checkpoint scores if any, else from training's
    evaluations; the lowest FID, else the latest; `selection` says which rule chose it."""
    stored = [r for r in rows if r["source"] != "training"]
    pool = stored or rows
    where = f"{len(pool)} {'checkpoints scored by eval --all-checkpoints' if stored else 'evaluations in training'}"
    scored = [r for r in pool if isinstance(r.get("fid"), (int, float)) and math.isfinite(r["fid"])]
    if scored:
        chosen, rule = min(scored, key=lambda r: r["fid"]), f"lowest fid of {where}"
    else:
        chosen, rule = max(pool, key=lambda r: r["kimg"] or 0), f"latest of {where}"
    return {**chosen, "selection": rule}


def check_comparable(rows: list[dict], force: bool) -> list[list[str]]:
    """Per row, the COMPARABLE fields (and metric settings) that differ from the first row's;
    BigtrainError naming the first such field unless `force`."""
    fields = (*COMPARABLE, "metric_settings")
    first = rows[0]
    differs = [[f for f in fields if row.get(f) != first.get(f)] for row in rows]
    if not force:
        for row, found in zip(rows, differs):
            if found:
                field, more = found[0], ", ".join(found[1:])
                raise BigtrainError(
                    f"not comparable: {field} differs between {_label(first)} ({first.get(field)}) and {_label(row)} "
                    f"({row.get(field)}){f'; so do {more}' if more else ''}. Give --force to tabulate them anyway, "
                    "with what differs named in a 'differs' column"
                )
    return differs


def _label(row: dict) -> str:
    return f"{row['run']}" + (f"/{row['checkpoint']}" if row.get("checkpoint") else f" at {row['kimg']} kimg")


def columns(rows: list[dict]) -> list[str]:
    """Every column, in order: run and checkpoint, metrics, the protocol."""
    head = ["run", "checkpoint", "kimg", "source", "selection"]
    tail = [*PROTOCOL_COLUMNS, "metric_settings", "differs"]
    metrics = []
    for row in rows:
        metrics += [k for k in row if k not in head and k not in tail and k not in metrics]
    return [c for c in head + metrics + tail if any(c in row for row in rows)]


def render(rows: list[dict], fmt: str) -> str:
    """The rows as a markdown table (the fields every row shares listed once below it), CSV or
    JSON (every field of every row)."""
    cols = columns(rows)
    if fmt == "json":
        return json.dumps([{c: row.get(c) for c in cols} for row in rows], indent=1) + "\n"
    if fmt == "csv":
        buffer = io.StringIO()
        writer = csv.writer(buffer, lineterminator="\n")
        writer.writerow(cols)
        for row in rows:
            writer.writerow([_cell(row.get(c), exact=True) for c in cols])
        return buffer.getvalue()
    head = {"run", "checkpoint", "kimg"}
    varying = [c for c in cols if c in head or len({_cell(r.get(c)) for r in rows}) > 1 or c not in PROTOCOL_COLUMNS]
    varying = [c for c in varying if not (c in ("metric_settings", "source", "selection") and _same(rows, c))]
    lines = ["| " + " | ".join(varying) + " |", "|" + "---|" * len(varying)]
    for row in rows:
        lines.append("| " + " | ".join(_cell(row.get(c)).replace("|", "\\|") for c in varying) + " |")
    common = [c for c in cols if c not in varying]
    if common:
        lines += ["", "Protocol of every row:", ""]
        lines += [f"- {c}: {_cell(rows[0].get(c))}" for c in common]
    return "\n".join(lines) + "\n"


def _same(rows: list[dict], column: str) -> bool:
    return len({_cell(r.get(column)) for r in rows}) == 1


def _cell(value, exact: bool = False) -> str:
    """A value as a table shows it: floats to 6 significant digits, all of them when `exact` (CSV)."""
    if value is None:
        return ""
    if isinstance(value, float):
        return repr(value) if exact else f"{value:.6g}"
    if isinstance(value, (list, dict)):
        return json.dumps(value)
    return str(value)
