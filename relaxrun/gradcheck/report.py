"""Tables (markdown, text), the CSV, the figure and the doc update of a gradcheck run."""

from __future__ import annotations

import csv
import math
from pathlib import Path

from .calibration import REF_SCALED_NAME

COLUMNS = ("problem", "objective", "method", "tau", "kind", "status", "samples", "coords", "exact_norm", "rel_err",
           "bias_lo", "bias_hi", "noise", "cos", "variance", "snr", "t2", "dof", "p_value", "biased", "reason")


def _fmt(v, digits=3) -> str:
    if isinstance(v, float):
        if v == 0:
            return "0"
        if math.isnan(v):
            return "nan"
        return f"{v:.{digits}g}" if 1e-3 <= abs(v) < 1e4 else f"{v:.{max(digits - 1, 1)}e}"
    return str(v)


def markdown_table(rows: list[dict], level: float) -> str:
    head = ["problem", "method", "tau", f"rel. bias [{level:.0%} CI]", "rel. error", "cos", "variance", "SNR",
            "p", "biased"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for r in rows:
        if r["status"] != "ok":
            continue
        tau = "-" if r["tau"] == "" else _fmt(float(r["tau"]), 2)
        lines.append("| " + " | ".join([
            r["problem"], f"`{r['method']}`", tau, f"[{_fmt(r['bias_lo'])}, {_fmt(r['bias_hi'])}]",
            _fmt(r["rel_err"]), _fmt(r["cos"]), _fmt(r["variance"]), _fmt(r["snr"]), _fmt(r["p_value"], 2),
            "**yes**" if r["biased"] else "no"]) + " |")
    skipped = _skipped(rows)
    if skipped:
        lines.append("")
        lines += [f"Skipped `{m}`{where}: {why}.  " for m, where, why in skipped]
    return "\n".join(lines) + "\n"


def _skipped(rows: list[dict]) -> list[tuple[str, str, str]]:
    """(method, " on p1, p2" or "" when skipped on every problem run, reason), one per method and reason."""
    problems = list(dict.fromkeys(r["problem"] for r in rows))
    groups: dict[tuple[str, str], list[str]] = {}
    for r in rows:
        if r["status"] != "ok":
            groups.setdefault((r["method"], r["reason"]), []).append(r["problem"])
    return [(m, "" if len(ps) == len(problems) else " on " + ", ".join(ps), why) for (m, why), ps in groups.items()]


def text_table(rows: list[dict], level: float) -> str:
    head = ("problem", "method", "tau", "rel.bias CI", "rel.err", "cos", "variance", "SNR", "p", "biased")
    body = []
    for r in rows:
        if r["status"] != "ok":
            continue
        tau = "-" if r["tau"] == "" else _fmt(float(r["tau"]), 2)
        body.append((r["problem"], r["method"], tau, f"[{_fmt(r['bias_lo'])}, {_fmt(r['bias_hi'])}]",
                     _fmt(r["rel_err"]), _fmt(r["cos"]), _fmt(r["variance"]), _fmt(r["snr"]),
                     _fmt(r["p_value"], 2), "BIASED" if r["biased"] else "no"))
    widths = [max(len(str(x)) for x in col) for col in zip(head, *body)]
    out = ["  ".join(str(c).ljust(w) for c, w in zip(line, widths)) for line in [head, *body]]
    out += [f"skipped {m}{where}: {why}" for m, where, why in _skipped(rows)]
    out.append(f"(rel. bias CI: {level:.0%} interval for |E g - g*| / |g*|; biased: Hotelling test p below alpha)")
    return "\n".join(out) + "\n"


def write_csv(rows: list[dict], path: Path) -> None:
    with open(path, "w", newline="") as fh:
        w = csv.DictWriter(fh, fieldnames=COLUMNS, extrasaction="ignore")
        w.writeheader()
        for r in rows:
            w.writerow({k: (f"{v:.6g}" if isinstance(v, float) else v) for k, v in r.items()})


def plot(rows: list[dict], path: Path, taus: list[float]) -> None:
    """Relative error of the mean gradient (bars: CI of the bias; hollow: not flagged biased) and
    per-draw variance vs tau, one row of panels per problem; tau-free methods as dashed lines."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    ok = [r for r in rows if r["status"] == "ok" and r["method"] != REF_SCALED_NAME]
    problems = list(dict.fromkeys(r["problem"] for r in ok))
    if not problems:
        return
    methods = list(dict.fromkeys(r["method"] for r in ok))
    colors = {m: plt.cm.tab10(i % 10) for i, m in enumerate(m for m in methods if not m.startswith("ref_"))}
    fig, axes = plt.subplots(len(problems), 2, figsize=(11, 3.3 * len(problems)), squeeze=False)
    x_lo, x_hi = min(taus) / 1.3, max(taus) * 1.3
    for i, pname in enumerate(problems):
        ax_b, ax_v = axes[i]
        prow = [r for r in ok if r["problem"] == pname]
        floor = 0.3 * min([r["rel_err"] for r in prow if r["rel_err"] > 0] or [1e-3])
        for j, m in enumerate(methods):
            rs = [r for r in prow if r["method"] == m]
            if not rs:
                continue
            color = "0.35" if m.startswith("ref_") else colors[m]
            if rs[0]["tau"] == "":
                r = rs[0]
                ls = ":" if m.startswith("ref_") else "--"
                ax_b.hlines(r["rel_err"], x_lo, x_hi, linestyles=ls, colors=[color], label=m)
                ax_v.hlines(r["variance"], x_lo, x_hi, linestyles=ls, colors=[color], label=m)
                continue
            # small horizontal offsets keep the error bars of different methods apart
            t = [float(r["tau"]) * (1 + 0.025 * (j - len(methods) / 2)) for r in rs]
            y = [r["rel_err"] for r in rs]
            lo = [y_ - max(r["bias_lo"], floor) if r["bias_lo"] < y_ else 0.0 for y_, r in zip(y, rs)]
            hi = [max(r["bias_hi"] - y_, 0.0) for y_, r in zip(y, rs)]
            ax_b.plot(t, y, color=color, label=m)
            ax_b.errorbar(t, y, yerr=[lo, hi], fmt="none", ecolor=color, capsize=2, lw=1)
            for tt, yy, r in zip(t, y, rs):
                ax_b.plot([tt], [yy], marker="o", color=color, markerfacecolor=color if r["biased"] else "white")
            ax_v.plot(t, [r["variance"] for r in rs], marker="o", color=color, label=m)
        objective = prow[0]["objective"]
        ax_b.set_title(f"{pname} ({objective}): relative error of the mean gradient", fontsize=9)
        ax_v.set_title(f"{pname}: per-draw gradient variance (mean over coordinates)", fontsize=9)
        ax_b.set_ylim(floor, 2.0 * max(max(r["rel_err"], r["bias_hi"]) for r in prow))
        for ax in (ax_b, ax_v):
            ax.set_xscale("log")
            ax.set_yscale("log")
            ax.set_xlim(x_lo, x_hi)
            ax.set_xlabel("tau")
            ax.set_xticks(taus, [f"{t:g}" for t in taus])
            ax.minorticks_off()
            ax.grid(True, alpha=0.3)
    handles, labels = axes[0][0].get_legend_handles_labels()
    rows_legend = math.ceil(len(labels) / 5)
    fig.legend(handles, labels, loc="lower center", ncol=min(5, len(labels)), fontsize=8)
    fig.text(0.5, 1.0, "gradient vs exact enumeration: bars = CI of |E g - g*| / |g*|, filled = flagged biased, "
             "dashed = tau not used", ha="center", va="top", fontsize=8)
    fig.tight_layout(rect=(0, 0.03 * rows_legend + 0.01, 1, 0.98))
    fig.savefig(path, dpi=110)
    plt.close(fig)


def update_doc(path: Path, table: str) -> None:
    """Replace the text between the gradcheck table markers in ``path`` with ``table``."""
    begin, end = "<!-- gradcheck:table:begin -->", "<!-- gradcheck:table:end -->"
    text = path.read_text()
    if begin not in text or end not in text:
        raise ValueError(f"{path} has no '{begin}' ... '{end}' markers")
    pre, rest = text.split(begin, 1)
    _, post = rest.split(end, 1)
    path.write_text(f"{pre}{begin}\n{table}{end}{post}")


