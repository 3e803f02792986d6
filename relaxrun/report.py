"""Sweep summaries: one table (CSV and Markdown) and one plot from folders of finished runs.

    relaxrun-report outputs/multirun/2024-05-01/12-00-00          # rebuild a sweep's summary
    relaxrun-report sweep_a sweep_b outputs/2024-05-02/10-11-12.5  # combine; written to the common parent
    relaxrun-report sweep_a sweep_b -o results/                   # ... or to a folder of your choice

A *run folder* is a folder holding ``metrics.json``, ``error.txt``, ``skipped.txt`` or ``.hydra/config.yaml``; the
given folders are searched for them (a run folder may also be given itself). Three files are
written:

``summary.csv``
    one row per run: its folder, its *setting* (the overrides that identify it, without ``seed``),
    status, method, tau, seed, learning rate, latent size, the final metrics and the training time.
``summary.md``
    a Markdown table, one row per setting, sorted by the test -ELBO (lower is better); runs of the
    same setting with several seeds are aggregated as mean +- sample std over seeds. Failed runs are
    listed below the table with their error.
``summary.png``
    test -ELBO against tau, one line per method (and per other setting), the relaxed objective dashed
    in the same colour; error bars are the std over seeds.

Status of a run: ``ok`` (metrics.json), ``failed`` (error.txt, newer than any metrics.json: the job
raised; the first line of error.txt is the error), ``skipped`` (skipped.txt: a sweep job whose
method does not take the setting, e.g. ReinMax at tau < 1 in ``experiment=compare_all``; listed
apart, not as a failure), ``incomplete`` (none of these: killed, still running or never started).
The setting of a run is read from ``.hydra/overrides.yaml`` with the keys in
``hydra.job.config.override_dirname.exclude_keys`` left out: every override that shapes the run, so
runs of different sweeps combined by ``relaxrun-report`` stay apart. (A sweep's job folder is named
by the swept keys only, e.g. ``method=gst,tau=0.5``.)
"""

from __future__ import annotations

import argparse
import csv
import io
import json
import math
import os
import statistics
import sys
from pathlib import Path
from typing import Any, Iterable

SUMMARY_FILES = ("summary.csv", "summary.md", "summary.png")

COLUMNS = ["run", "setting", "status", "method", "tau", "seed", "lr", "latent", "epochs", "steps",
           "test_neg_elbo", "test_neg_elbo_kind", "test_relaxed_objective", "train_objective", "test_iwae",
           "seconds", "seconds_per_epoch", "device", "error"]
#: metrics aggregated over seeds in summary.md / summary.png
METRICS = ("test_neg_elbo", "test_relaxed_objective", "train_objective", "test_iwae", "seconds_per_epoch")
#: keys the sweep folder names leave out, for runs whose .hydra/hydra.yaml is missing
DEFAULT_EXCLUDE = ("data.root", "data.download", "device", "resume", "trainer.progress", "trainer.threads",
                   "trainer.log_every", "trainer.eval_batch_size", "trainer.images")


class ReportError(RuntimeError):
    """Nothing to summarise (no run folders); the message says where it looked."""


# ------------------------------------------------------------------------------------------------
# finding and reading runs


def is_run_folder(path: Path) -> bool:
    return ((path / "metrics.json").is_file() or (path / "error.txt").is_file() or (path / "skipped.txt").is_file()
            or (path / ".hydra" / "config.yaml").is_file())


def find_runs(folders: Iterable[str | os.PathLike]) -> list[Path]:
    """Run folders in or at ``folders`` (hidden folders and TensorBoard folders are not searched)."""
    found: dict[Path, None] = {}
    for top in folders:
        top = Path(top)
        if not top.is_dir():
            raise ReportError(f"{top} is not a folder")
        stack = [top]
        while stack:
            path = stack.pop()
            if is_run_folder(path):
                found[path.resolve()] = None
                continue  # runs do not nest
            try:
                children = sorted(p for p in path.iterdir() if p.is_dir())
            except OSError:
                continue
            stack.extend(p for p in reversed(children) if not p.name.startswith(".") and p.name != "tb")
    return list(found)


def _load_yaml(path: Path):
    from omegaconf import OmegaConf

    try:
        return OmegaConf.load(path)
    except Exception:
        return None


def _config(run: Path, metrics: dict | None) -> dict:
    """The run's resolved config: from metrics.json, else .hydra/config.yaml (resolved where possible)."""
    from omegaconf import OmegaConf

    from . import config as _  # noqa: F401  registers the resolvers the method configs use

    if metrics and isinstance(metrics.get("config"), dict):
        return metrics["config"]
    cfg = _load_yaml(run / ".hydra" / "config.yaml")
    if cfg is None:
        return {}
    try:
        return OmegaConf.to_container(cfg, resolve=True)
    except Exception:
        return OmegaConf.to_container(cfg, resolve=False)


def _overrides(run: Path) -> list[tuple[str, str]] | None:
    """Identifying overrides of the run as sorted (key, "key=value") pairs, or None without .hydra/."""
    from omegaconf import OmegaConf

    ov = _load_yaml(run / ".hydra" / "overrides.yaml")
    if ov is None:
        return None
    exclude = set(DEFAULT_EXCLUDE)
    hy = _load_yaml(run / ".hydra" / "hydra.yaml")
    if hy is not None:
        keys = OmegaConf.select(hy, "hydra.job.config.override_dirname.exclude_keys", default=None)
        if keys is not None:
            exclude = set(OmegaConf.to_container(keys))
    items = []
    for line in OmegaConf.to_container(ov):
        line = str(line)
        key = line.split("=", 1)[0].lstrip("+~")
        if key in exclude or key.startswith("hydra.") or key.startswith("hydra/"):
            continue
        items.append((key, line))
    return sorted(items, key=lambda kv: kv[1])


def _get(d: dict, dotted: str, default=None):
    for part in dotted.split("."):
        if not isinstance(d, dict) or part not in d:
            return default
        d = d[part]
    return d


def _latent(cfg: dict) -> str:
    m = cfg.get("method") or {}
    if not isinstance(m, dict) or m.get("latent_dim") is None:
        return ""
    return f"{m['latent_dim']}x{m['categories']}" if m.get("categories") else str(m["latent_dim"])


def _first_line(text: str) -> str:
    for line in text.splitlines():
        if line.strip():
            return line.strip()
    return "(empty error.txt)"


def read_run(run: Path, base: Path) -> dict[str, Any]:
    """One summary row (see COLUMNS) for the run folder ``run``; ``run`` is named relative to ``base``."""
    metrics_path, error_path = run / "metrics.json", run / "error.txt"
    metrics = None
    if metrics_path.is_file():
        try:
            metrics = json.loads(metrics_path.read_text())
        except (OSError, ValueError):
            metrics = None
    failed = error_path.is_file() and (metrics is None or error_path.stat().st_mtime >= metrics_path.stat().st_mtime)
    skipped_path = run / "skipped.txt"
    skipped = not failed and metrics is None and skipped_path.is_file()
    status = "failed" if failed else "ok" if metrics is not None else "skipped" if skipped else "incomplete"
    cfg = _config(run, metrics)
    items = _overrides(run)
    if items is None:  # no .hydra/: the folder name is the best name we have
        setting = run.name
    else:
        setting = ",".join(line for key, line in items if key != "seed")
    row: dict[str, Any] = {c: None for c in COLUMNS}
    row.update(
        run=Path(os.path.relpath(run, base)).as_posix(), setting=setting, status=status,
        method=_get(cfg, "method.name"), tau=_get(cfg, "method.tau", _get(cfg, "tau")), seed=_get(cfg, "seed"),
        lr=_get(cfg, "optim.lr"), latent=_latent(cfg),
    )
    if metrics is not None and status == "ok":
        for key in ("epochs", "steps", "test_neg_elbo", "test_neg_elbo_kind", "test_relaxed_objective",
                    "train_objective", "test_iwae", "seconds", "seconds_per_epoch", "device"):
            row[key] = metrics.get(key)
        row["method"] = metrics.get("method", row["method"])
    if status == "failed":
        try:
            row["error"] = _first_line(error_path.read_text(errors="replace"))
        except OSError as err:
            row["error"] = f"cannot read {error_path}: {err}"
    elif status == "skipped":
        try:
            row["error"] = _first_line(skipped_path.read_text(errors="replace"))
        except OSError as err:
            row["error"] = f"cannot read {skipped_path}: {err}"
    elif status == "incomplete":
        row["error"] = "no metrics.json and no error.txt (killed, still running or not started)"
    return row


# ------------------------------------------------------------------------------------------------
# aggregation


def _finite(v) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)


def _mean_std(values: list[float]) -> tuple[float | None, float | None]:
    values = [v for v in values if _finite(v)]
    if not values:
        return None, None
    return statistics.fmean(values), (statistics.stdev(values) if len(values) > 1 else None)


def aggregate(rows: list[dict]) -> list[dict]:
    """One entry per setting, sorted by mean test -ELBO (settings without a finished run last)."""
    groups: dict[str, list[dict]] = {}
    for row in rows:
        groups.setdefault(row["setting"], []).append(row)
    out = []
    for setting, members in groups.items():
        ok = [r for r in members if r["status"] == "ok"]
        g = {"setting": setting, "runs": members, "n": len(members), "n_ok": len(ok),
             "method": members[0]["method"], "tau": members[0]["tau"],
             "seeds": sorted({r["seed"] for r in ok if r["seed"] is not None}),
             "kind": "/".join(sorted({r["test_neg_elbo_kind"] for r in ok if r["test_neg_elbo_kind"]}))}
        for m in METRICS:
            g[m], g[m + "_std"] = _mean_std([r[m] for r in ok])
        out.append(g)

    def order(g):
        v = g["test_neg_elbo"]
        return (v is None, v if v is not None else 0.0, str(g["method"]), _num(g["tau"]), g["setting"])

    return sorted(out, key=order)


def _num(v) -> float:
    return float(v) if _finite(v) else math.inf


# ------------------------------------------------------------------------------------------------
# writing


def _csv_value(v) -> str:
    if v is None:
        return ""
    if isinstance(v, float):
        return repr(v)
    return str(v)


def to_csv(rows: list[dict]) -> str:
    buf = io.StringIO()
    w = csv.writer(buf, lineterminator="\n")
    w.writerow(COLUMNS)
    for row in rows:
        w.writerow([_csv_value(row[c]) for c in COLUMNS])
    return buf.getvalue()


def _fmt(mean, std, spec=".2f") -> str:
    if mean is None:
        return "–"
    return f"{mean:{spec}} ± {std:{spec}}" if std is not None else f"{mean:{spec}}"


def _short_error(text: str, limit: int = 160) -> str:
    return text if len(text) <= limit else text[:limit - 1] + "…"


def _md_cell(text: str) -> str:
    return str(text).replace("|", "\\|").replace("\n", " ")


def _items(setting: str) -> list[str]:
    """Split a setting into its overrides; commas inside [...] or quotes belong to the value."""
    items, depth, quote, cur = [], 0, None, ""
    for ch in setting:
        if quote:
            quote = None if ch == quote else quote
        elif ch in "'\"":
            quote = ch
        elif ch in "[{(":
            depth += 1
        elif ch in "]})":
            depth -= 1
        elif ch == "," and depth == 0:
            items.append(cur)
            cur = ""
            continue
        cur += ch
    if cur:
        items.append(cur)
    return items


def _others(setting: str, common: set[str]) -> str:
    """The overrides of a setting other than method and tau and those shared by every setting."""
    return ",".join(i for i in _items(setting) if i not in common and i.split("=", 1)[0].lstrip("+~")
                    not in ("method", "tau"))


def to_markdown(rows: list[dict], groups: list[dict], title: str = "Sweep summary") -> str:
    n_ok = sum(r["status"] == "ok" for r in rows)
    n_failed = sum(r["status"] == "failed" for r in rows)
    n_skip = sum(r["status"] == "skipped" for r in rows)
    n_inc = len(rows) - n_ok - n_failed - n_skip
    counts = f"{len(rows)} runs in {len(groups)} settings: {n_ok} finished, {n_failed} failed"
    counts += f", {n_inc} incomplete" if n_inc else ""
    counts += f", {n_skip} skipped (the method does not take the setting)" if n_skip else ""
    skipped_groups = [g for g in groups if all(r["status"] == "skipped" for r in g["runs"])]
    groups = [g for g in groups if g not in skipped_groups]
    item_sets = [set(_items(g["setting"])) for g in groups]
    common = set.intersection(*item_sets) if len(item_sets) > 1 else set()
    common -= {i for i in common if i.split("=", 1)[0] in ("method", "tau")}
    show_others = any(_others(g["setting"], common) for g in groups)
    show_iwae = any(g["test_iwae"] is not None for g in groups)
    lines = [f"# {title}", "", counts + ".", "",
             "Sorted by the test −ELBO in nats per image (lower is better); its kind says what it is "
             "(discrete: hard samples and the exact KL). With several seeds: mean ± std over seeds.", ""]
    if common:
        lines += ["Common overrides: " + ", ".join(f"`{c}`" for c in sorted(common)), ""]
    head = ["rank", "method", "tau"] + (["overrides"] if show_others else []) + ["runs", "test −ELBO", "kind",
                                                                                "relaxed objective"]
    head += (["IWAE"] if show_iwae else []) + ["train objective", "s/epoch"]
    align = ["---:", "---", "---:"] + (["---"] if show_others else []) + ["---:", "---:", "---", "---:"]
    align += (["---:"] if show_iwae else []) + ["---:", "---:"]
    lines += ["| " + " | ".join(head) + " |", "|" + "|".join(align) + "|"]
    rank = 0
    for g in groups:
        if g["n_ok"]:
            rank += 1
        runs = str(g["n"]) if g["n_ok"] == g["n"] else f"{g['n_ok']}/{g['n']} ok"
        cells = [str(rank) if g["n_ok"] else "–", str(g["method"] or "?"), _tau(g["tau"])]
        if show_others:
            cells.append(f"`{_others(g['setting'], common)}`" if _others(g["setting"], common) else "")
        if g["n_ok"]:
            cells += [runs, _fmt(g["test_neg_elbo"], g["test_neg_elbo_std"]), g["kind"],
                      _fmt(g["test_relaxed_objective"], g["test_relaxed_objective_std"])]
            cells += [_fmt(g["test_iwae"], g["test_iwae_std"])] if show_iwae else []
            cells += [_fmt(g["train_objective"], g["train_objective_std"]),
                      _fmt(g["seconds_per_epoch"], g["seconds_per_epoch_std"], ".3g")]
        else:
            status = "/".join(sorted({r["status"] for r in g["runs"]}))
            cells += [runs, status, "", ""] + ([""] if show_iwae else []) + ["", ""]
        lines.append("| " + " | ".join(_md_cell(c) for c in cells) + " |")
    bad = [r for r in rows if r["status"] not in ("ok", "skipped")]
    if bad:
        lines += ["", "## Runs without results", "", "| run | status | error |", "|---|---|---|"]
        for r in bad:
            lines.append(f"| `{_md_cell(r['run'])}` | {r['status']} | {_md_cell(_short_error(r['error'] or ''))} |")
    skipped = [r for r in rows if r["status"] == "skipped"]
    if skipped:
        lines += ["", "## Skipped jobs", "", "Grid points the method does not take (not failures).", "",
                  "| run | reason |", "|---|---|"]
        for r in skipped:
            lines.append(f"| `{_md_cell(r['run'])}` | {_md_cell(_short_error(r['error'] or ''))} |")
    return "\n".join(lines) + "\n"


def _tau(v) -> str:
    return "?" if v is None else f"{v:g}" if isinstance(v, (int, float)) else str(v)


def plot(groups: list[dict], path: Path) -> None:
    """test -ELBO against tau, one line per method (and other overrides); relaxed objective dashed."""
    import matplotlib

    matplotlib.use("Agg", force=False)
    import matplotlib.pyplot as plt
    from matplotlib.lines import Line2D

    lines: dict[str, list[dict]] = {}
    items = [set(_items(g["setting"])) for g in groups]
    common = set.intersection(*items) if len(items) > 1 else set()
    for g in groups:
        if g["test_neg_elbo"] is None or not _finite(g["tau"]):
            continue
        others = _others(g["setting"], common)
        label = str(g["method"]) + (f" ({others})" if others else "")
        lines.setdefault(label, []).append(g)
    fig, ax = plt.subplots(figsize=(9, 4.8), dpi=120)
    taus = sorted({g["tau"] for pts in lines.values() for g in pts})
    for i, (label, pts) in enumerate(sorted(lines.items())):
        pts = sorted(pts, key=lambda g: g["tau"])
        x = [g["tau"] for g in pts]
        color = f"C{i % 10}"
        ax.errorbar(x, [g["test_neg_elbo"] for g in pts], yerr=[g["test_neg_elbo_std"] or 0 for g in pts],
                    color=color, marker="o", capsize=3, label=label)
        rel = [(g["tau"], g["test_relaxed_objective"], g["test_relaxed_objective_std"] or 0) for g in pts
               if g["test_relaxed_objective"] is not None]
        if rel:
            ax.errorbar([t for t, _, _ in rel], [v for _, v, _ in rel], yerr=[s for _, _, s in rel], color=color,
                        marker="x", linestyle="--", capsize=3, alpha=0.8)
    if taus and min(taus) > 0 and max(taus) / min(taus) > 4:
        ax.set_xscale("log")
    if taus:
        ax.set_xticks(taus)
        ax.set_xticklabels([f"{t:g}" for t in taus])
        ax.minorticks_off()
    ax.set_xlabel("tau")
    ax.set_ylabel("nats per image (lower is better)")
    ax.set_title("test −ELBO (solid) and relaxed objective (dashed) against tau")
    ax.grid(alpha=0.3)
    if lines:
        handles, labels = ax.get_legend_handles_labels()
        handles += [Line2D([], [], color="gray", linestyle="-", marker="o"),
                    Line2D([], [], color="gray", linestyle="--", marker="x")]
        labels += ["test −ELBO", "relaxed objective"]
        ax.legend(handles, labels, fontsize=8, loc="upper left", bbox_to_anchor=(1.01, 1.0))
    else:
        ax.text(0.5, 0.5, "no finished runs", ha="center", va="center", transform=ax.transAxes)
    fig.tight_layout()
    tmp = path.with_name(path.name + ".tmp.png")
    fig.savefig(tmp)
    plt.close(fig)
    os.replace(tmp, path)


def _write_text(path: Path, text: str) -> None:
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(text, encoding="utf-8")
    os.replace(tmp, path)


def write_summary(folders: Iterable[str | os.PathLike], out: str | os.PathLike | None = None,
                  title: str | None = None) -> tuple[list[dict], list[dict], dict[str, Path]]:
    """Find the runs under ``folders``, write summary.csv/md/png into ``out``; returns (rows, groups, paths).

    ``out`` defaults to the folder when one is given, else to the folders' common parent.
    """
    folders = [Path(f) for f in folders]
    if not folders:
        raise ReportError("no folder given")
    runs = find_runs(folders)
    if not runs:
        raise ReportError("no run folders (with metrics.json, error.txt or .hydra/config.yaml) under "
                          + ", ".join(map(str, folders)))
    if out is None:
        out = folders[0] if len(folders) == 1 else Path(os.path.commonpath([f.resolve() for f in folders]))
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    base = out.resolve()
    rows = [read_run(r, base) for r in runs]
    rows.sort(key=lambda r: (str(r["method"]), _num(r["tau"]), r["setting"], _num(r["seed"]), r["run"]))
    groups = aggregate(rows)
    paths = {name: out / name for name in SUMMARY_FILES}
    _write_text(paths["summary.csv"], to_csv(rows))
    _write_text(paths["summary.md"], to_markdown(rows, groups, title or "Sweep summary"))
    plot(groups, paths["summary.png"])
    return rows, groups, paths


def main(argv: list[str] | None = None) -> None:
    """Console script ``relaxrun-report``."""
    parser = argparse.ArgumentParser(
        prog="relaxrun-report",
        description="Write summary.csv, summary.md and summary.png for the runs found under the given "
                    "folders (sweep folders, single run folders, or any folder holding them).")
    parser.add_argument("folders", nargs="+", help="folders to search for runs")
    parser.add_argument("-o", "--out", help="where to write the summary (default: the folder, or the common "
                                            "parent of several folders)")
    parser.add_argument("-q", "--quiet", action="store_true", help="do not print the table")
    args = parser.parse_args(argv)
    try:
        rows, groups, paths = write_summary(args.folders, args.out)
    except ReportError as err:
        print(f"relaxrun-report: error: {err}", file=sys.stderr)
        raise SystemExit(1)
    if not args.quiet:
        print(paths["summary.md"].read_text(encoding="utf-8"))
    print(f"relaxrun-report: {len(rows)} runs; wrote " + ", ".join(str(p) for p in paths.values()))


if __name__ == "__main__":
    main()
