"""The ``relaxrun-gradcheck`` command: method specs, building a method for a problem, the rows, ``main``."""

from __future__ import annotations

import argparse
import dataclasses
import math
import re
import sys
import time
from dataclasses import dataclass
from importlib import resources
from pathlib import Path

import torch
from tqdm.auto import tqdm

from ..checks import ConfigError
from ..config import method_options
from ..methods import available_methods, get_method_class
from ..methods.base import Method
from ..progress import Progress
from .calibration import REF_NAME, REF_NAMES, REF_SCALED_NAME, build_reference, calibration_failures
from .problems import KINDS, PROBLEMS, make_problem
from .report import markdown_table, plot, text_table, update_doc, write_csv
from .enumeration import row_objective
from .statistics import _uses_tau, check_row, expectation_is_isolated

DEFAULT_TAUS = (0.1, 0.5, 1.0)
DEFAULT_VARIANTS = ("relaxed_bernoulli:hard=true", "gumbel_softmax:hard=true", "gumbel_topk:subset_size=1",
                    "reinforce:latent=categorical", "reinforce:samples=3", "vimco:latent=categorical", "rebar:trained=300",
                    "relax:trained=300", "gumbel_rao:samples=1", "reinmax:tau=2.0", "gst:gap_rule=p")


@dataclass
class Spec:
    """A method name with config overrides, ``name[:key=value...]``."""

    label: str
    name: str
    overrides: dict
    #: ``trained=N`` in the spec (not a method option): before the row, N steps of the method's own
    #: control-variate training on the problem (``Method.fit_control``; REBAR, RELAX)
    trained: int = 0

    @classmethod
    def parse(cls, text: str) -> "Spec":
        import yaml

        name, *rest = text.split(":")
        overrides = {}
        for item in rest:
            if "=" not in item:
                raise ValueError(f"method spec {text!r}: expected key=value after ':', got {item!r}")
            k, v = item.split("=", 1)
            overrides[k.strip()] = yaml.safe_load(v)
        trained = overrides.pop("trained", 0)
        if not isinstance(trained, int) or isinstance(trained, bool) or trained < 0:
            raise ValueError(f"method spec {text!r}: trained must be a whole number of steps >= 0, got {trained!r}")
        return cls(text, name.strip(), overrides, trained)


def build(spec: Spec, problem_kind: str, shape: tuple[int, ...], dtype) -> Method:
    """The method of ``spec`` sized for a problem: latent_dim = D; or latent_dim = N, categories = K
    (categorical); or latent_dim = N, support_size = K (count, for a method with that option).

    The options are the method's YAML defaults (:func:`relaxrun.config.method_options`), then the
    spec's overrides, then the problem's sizes. A method whose ``latent`` option switches family
    (``reinforce``) keeps the spec's choice; :func:`law_kind` reads which problems it gets.
    """
    if spec.name in REF_NAMES:
        return build_reference(spec.name, problem_kind, shape, dtype)
    cls = get_method_class(spec.name)
    fields = {f.name for f in dataclasses.fields(cls.Config)}
    unknown = set(spec.overrides) - fields
    if unknown:
        raise ValueError(f"method {spec.name} has no option(s) {', '.join(sorted(unknown))}")
    values = dict(spec.overrides)
    values["latent_dim"] = shape[0]
    if problem_kind == "categorical" and "categories" in fields:
        values["categories"] = shape[1]
    if problem_kind == "count" and "support_size" in fields:
        values["support_size"] = shape[1]
    return cls(_options(cls, spec.name, {k: v for k, v in values.items() if k in fields})).to(dtype)


def _options(cls: type[Method], name: str, values: dict):
    """``method_options(name, **values)``; for a registered method that has no YAML yet (one being
    written), its Config with ``name`` and ``tau`` given (tau only seeds the method's temperature;
    gradcheck passes its own to every call). A ConfigError then (an option with no value) makes
    the method a skipped row, with the reason."""
    if (resources.files("relaxrun.configs") / "method" / f"{name}.yaml").is_file():
        return method_options(name, **values)
    try:
        return cls.Config(**{"name": name, "tau": 1.0, **values})
    except ConfigError as err:
        raise NotImplementedError(f"method {name} has no configs/method/{name}.yaml ({err})") from None


def law_kind(spec: Spec, dtype=torch.float64) -> str:
    """The kind of the method's :meth:`~relaxrun.methods.base.Method.discrete_law`: "bernoulli",
    "categorical" or "count"; raises NotImplementedError (the reason) when there is none."""
    if spec.name in REF_NAMES:
        return "bernoulli"
    m = build(spec, "bernoulli", (3,), dtype)
    return m.discrete_law(torch.zeros(1, m.param_dim, dtype=dtype), 0.5).kind


def run(specs: list[Spec], problems: list[str], taus: list[float], samples: int, seed: int, level: float,
        alpha: float, chunk: int = 8192, dtype=torch.float64, log=print, progress: bool = False) -> list[dict]:
    """All rows (one per problem x method x tau; tau-free methods once per problem; skips with reasons)."""
    rows = []
    kinds: dict[str, str | Exception] = {}
    for spec in specs:
        try:
            kinds[spec.label] = law_kind(spec, dtype)
        except NotImplementedError as err:
            kinds[spec.label] = err
    # a bar with ETA over the (problem, method) cells on a terminal; the per-row lines go above it
    bar = Progress(len(problems) * len(specs), "gradcheck", "cell", enabled=progress)
    for pname in problems:
        probs = {k: make_problem(pname, k, seed, dtype) for k in KINDS}
        for spec in specs:
            bar.set_postfix(now=f"{pname}/{spec.label}")
            _cell(rows, kinds, probs, pname, spec, taus, samples, seed, level, alpha, chunk, dtype, log)
            bar.update(1)
    bar.close()
    return rows


def _cell(rows, kinds, probs, pname, spec, taus, samples, seed, level, alpha, chunk, dtype, log) -> None:
    """The rows of one (problem, method) cell, appended to ``rows``."""
    kind = kinds[spec.label]
    base = {"problem": pname, "method": spec.label}
    if isinstance(kind, Exception):
        rows.append({**base, "status": "skipped", "reason": _reason(kind), "tau": ""})
        return
    problem = probs[kind]
    base.update(objective=problem.objective, kind=kind)
    try:
        method = build(spec, kind, problem.shape, dtype)
        params = problem.make_params(method.param_dim)
        objective = row_objective(method, problem)
        base["objective"] = objective
        # (whether loss - mean(kl) isolates E_q[f] is structural: checked at the initial control
        # parameters, where a control variate that is 0 at f = 0 makes the draws exactly 0)
        if objective == "expectation" and not expectation_is_isolated(method, problem, params, taus[0]):
            rows.append({**base, "status": "skipped", "tau": "", "reason": (
                "loss - mean(kl) still has a gradient when f = 0 (the loss carries a separate "
                "KL-gradient surrogate), so E_q[f]'s estimator cannot be isolated on this problem")})
            return
        if spec.trained:
            # unbiased estimators with learned control variates: checked after tuning them here
            method.fit_control(params, problem.decode, problem.x, spec.trained)
        tau_list = taus if _uses_tau(method, problem, params) else [None]
        for tau in tau_list:
            t0 = time.perf_counter()
            st = check_row(method, problem, taus[0] if tau is None else tau, samples, seed, level, alpha,
                           chunk, spec.label)
            rows.append({**base, "tau": "" if tau is None else tau, "status": "ok", "reason": "", **st})
            log(f"  {pname:<10} {spec.label:<28} tau={'-' if tau is None else tau:<4} "
                f"rel_err={st['rel_err']:.3g} ({time.perf_counter() - t0:.2f}s)")
    except NotImplementedError as err:
        rows.append({**base, "status": "skipped", "reason": _reason(err), "tau": ""})
    except ConfigError as err:  # the spec's options do not admit the problem's sizes
        rows.append({**base, "status": "skipped", "tau": "",
                     "reason": f"not sized for this problem ({_reason(err)})"})


def _reason(err: Exception) -> str:
    return (str(err) or type(err).__name__).splitlines()[0]


def _float_list(text: str) -> list[float]:
    try:
        vals = [float(v) for v in re.split(r"[,\s]+", text.strip()) if v]
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated numbers, got {text!r}") from None
    if not vals or any(not (v > 0 and math.isfinite(v)) for v in vals):
        raise argparse.ArgumentTypeError(f"temperatures must be finite numbers > 0, got {text!r}")
    return vals


def _positive_int(text: str) -> int:
    try:
        v = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected an integer, got {text!r}") from None
    if v < 2:
        raise argparse.ArgumentTypeError(f"must be at least 2, got {v}")
    return v


def _prob(text: str) -> float:
    v = float(text)
    if not 0 < v < 1:
        raise argparse.ArgumentTypeError(f"must be in (0, 1), got {text!r}")
    return v


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="relaxrun-gradcheck",
        description="Measure every method's gradient bias and variance against exact gradients computed by "
                    "enumerating the discrete latent (Tucker et al. 2017 toy, its vector version, and a small "
                    "VAE-like problem with a fixed random decoder). Writes gradcheck.csv, gradcheck.png and "
                    "gradcheck_table.md to --out and prints the table.",
        epilog="method specs: NAME or NAME:key=value[:key=value], e.g. relaxed_bernoulli:hard=true or "
               "gumbel_softmax:kl=relaxed (latent sizes are set by the problem). Calibration rows "
               f"{REF_NAME} (unbiased) and {REF_SCALED_NAME} (biased) are added unless --no-calibration; "
               "the exit status is 1 when they come out wrong.\n\nexamples:\n"
               "  relaxrun-gradcheck                                   # all methods, tau 0.1 0.5 1\n"
               "  relaxrun-gradcheck --methods hard_concrete straight_through --taus 0.2,0.67 --samples 5000\n"
               "  relaxrun-gradcheck --out docs --doc docs/gradcheck.md   # regenerate the README figure/table",
        formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", default="outputs/gradcheck", type=Path,
                        help="folder for gradcheck.csv, gradcheck.png, gradcheck_table.md (default: %(default)s)")
    parser.add_argument("--methods", nargs="+", metavar="SPEC",
                        help="method specs to check (default: every registered method, plus "
                             + ", ".join(DEFAULT_VARIANTS) + ")")
    parser.add_argument("--problems", nargs="+", choices=PROBLEMS, default=list(PROBLEMS),
                        help="problems to run (default: all)")
    parser.add_argument("--taus", type=_float_list, default=list(DEFAULT_TAUS),
                        help="comma-separated temperatures (default: 0.1,0.5,1); methods whose loss does not "
                             "depend on tau are run once")
    parser.add_argument("--samples", type=_positive_int, default=100000,
                        help="gradient draws S per row (default: %(default)s)")
    parser.add_argument("--seed", type=int, default=0, help="seed of the problems and the draws (default: 0)")
    parser.add_argument("--level", type=_prob, default=0.95, help="confidence level of the bias interval "
                                                                   "(default: %(default)s)")
    parser.add_argument("--alpha", type=_prob, default=1e-3,
                        help="false-alarm rate of the 'biased' test (default: %(default)s)")
    parser.add_argument("--no-calibration", action="store_true", help="leave out the REINFORCE calibration rows")
    parser.add_argument("--chunk", type=_positive_int, default=8192,
                        help="rows per loss call when drawing (memory vs speed; default: %(default)s)")
    parser.add_argument("--doc", type=Path, help="write the markdown table between the "
                                                 "'<!-- gradcheck:table:begin/end -->' markers of this file "
                                                 "(instead of OUT/gradcheck_table.md)")
    parser.add_argument("--quiet", action="store_true", help="no per-row progress lines")
    args = parser.parse_args(argv)

    if args.doc is not None and (not args.doc.is_file() or "<!-- gradcheck:table:begin -->" not in args.doc.read_text()):
        parser.error(f"--doc {args.doc}: not a file with '<!-- gradcheck:table:begin -->' ... "
                     f"'<!-- gradcheck:table:end -->' markers")
    t_start = time.perf_counter()
    texts = args.methods or [*available_methods(),
                             *(v for v in DEFAULT_VARIANTS if v.split(":")[0] in available_methods())]
    try:
        specs = [Spec.parse(t) for t in texts]
        for s in specs:
            if s.name not in REF_NAMES and s.name not in available_methods():
                raise ValueError(f"unknown method {s.name!r}; available: {', '.join(available_methods())}")
            if s.trained and not hasattr(get_method_class(s.name), "fit_control"):
                raise ValueError(f"method spec {s.label!r}: trained=N needs a method with learned control "
                                 f"variates (Method.fit_control); {s.name} has none")
            try:
                law_kind(s)
            except NotImplementedError:
                pass  # reported as skipped, with the reason
            except (ValueError, TypeError) as err:  # a bad option or value in the spec
                raise ValueError(f"method spec {s.label!r}: {err}") from None
    except ValueError as err:
        parser.error(str(err))
    if not args.no_calibration and not any(s.name == REF_NAME for s in specs):
        specs += [Spec(REF_NAME, REF_NAME, {}), Spec(REF_SCALED_NAME, REF_SCALED_NAME, {})]
    torch.set_num_threads(1)  # tiny tensors: extra threads only add contention
    log = (lambda *a, **k: None) if args.quiet else (lambda msg: tqdm.write(msg))  # above a bar, if any
    rows = run(specs, args.problems, args.taus, args.samples, args.seed, args.level, args.alpha, args.chunk,
               log=log, progress=not args.quiet)

    args.out.mkdir(parents=True, exist_ok=True)
    write_csv(rows, args.out / "gradcheck.csv")
    plot(rows, args.out / "gradcheck.png", args.taus)
    table = markdown_table(rows, args.level)
    if args.doc:
        update_doc(args.doc, table)
        table_at = args.doc
    else:
        table_at = args.out / "gradcheck_table.md"
        table_at.write_text(table)
    print(text_table(rows, args.level))
    print(f"wrote {args.out / 'gradcheck.csv'}, {args.out / 'gradcheck.png'} and {table_at} "
          f"in {time.perf_counter() - t_start:.1f}s")
    bad = calibration_failures(rows)
    for msg in bad:
        print(f"relaxrun-gradcheck: calibration failed: {msg}", file=sys.stderr)
    return 1 if bad else 0


def _console() -> None:  # pragma: no cover
    raise SystemExit(main())
