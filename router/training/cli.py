"""The ``modelrouter train``, ``eval``, ``calibrate`` and ``route`` subcommands."""

from __future__ import annotations

import argparse
import functools
import importlib.util
import json
import math
import os
import sys
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any

from router.model import ModelError, RouterModel, default_model_path, load_model, save_model
from router.output_paths import unwritable
from router.routing import Router, check_thresholds
from router.training.calibrate import Target
from router.training.data import (
    DEFAULT_STRONG_MODEL,
    DEFAULT_WEAK_MODEL,
    DataError,
    iter_rows,
    read_rows,
)

Subparsers = Any  # argparse's _SubParsersAction is private

EXIT_OK = 0
EXIT_ERROR = 1
EXIT_USAGE = 2
EXIT_INTERRUPTED = 130

# The formats the plots are written in (matplotlib's savefig takes the extension; not
# imported here to check: the command line keeps start-up imports light).
PLOT_SUFFIXES = (".png", ".svg", ".pdf")

Handler = Callable[[argparse.Namespace], int]


def _err(message: str) -> int:
    print(f"modelrouter: {message}", file=sys.stderr)
    return EXIT_ERROR


def _interruptible(run: Handler) -> Handler:
    """Return ``run`` made to exit 130 with one line on Ctrl-C, not a traceback."""

    @functools.wraps(run)
    def handler(args: argparse.Namespace) -> int:
        try:
            return run(args)
        except KeyboardInterrupt:
            print("\nmodelrouter: interrupted", file=sys.stderr)
            return EXIT_INTERRUPTED

    return handler


def _plot_file(path: Path) -> Path:
    """Return the file a plot to ``path`` is written to: savefig adds .png to a bare name."""
    stem = path.name.rstrip(".")
    return path if path.suffix or not stem else path.with_name(stem + ".png")


def _unwritable(
    outputs: Sequence[tuple[str, Path]], inputs: Sequence[tuple[str, Path]]
) -> str | None:
    """Return why an output cannot be written (``PATH: reason``), or None if all can:
    ``router.output_paths.unwritable``, and a plot in a format it can be drawn in."""
    for option, out in outputs:
        if option == "--plot" and out.suffix.lower() not in PLOT_SUFFIXES:
            return (
                f"{out}: cannot plot to a {out.suffix!r} file: "
                f"give a {', '.join(PLOT_SUFFIXES[:-1])} or {PLOT_SUFFIXES[-1]} file name"
            )
    return unwritable(outputs, [(f"{option} file", path) for option, path in inputs])


def _write_failed(path: Path, exc: OSError) -> int:
    return _err(f"{path}: {exc.strerror or exc}")


def _log(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


# The optional dependencies each extra brings (pyproject.toml), by the module they import as.
EXTRAS = {"train": ("scipy", "sklearn"), "plot": ("matplotlib",)}


def missing_extra(command: str, *extras: str) -> int | None:
    """Say which extra to install and return the usage exit code, if its modules are missing."""
    for extra in extras:
        missing = [m for m in EXTRAS[extra] if importlib.util.find_spec(m) is None]
        if missing:
            print(extra_needed(command, extra, missing), file=sys.stderr)
            return EXIT_USAGE
    return None


def extra_needed(command: str, extra: str, missing: list[str]) -> str:
    """Return the one line that names the extra a command needs."""
    return (
        f"modelrouter {command}: needs the {extra!r} extra ({', '.join(missing)} not "
        f"installed): pip install 'modelrouter[{extra}]'"
    )


def _float(text: str) -> float:
    try:
        return float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number") from None


def _fraction(text: str) -> float:
    value = _float(text)
    if not 0.0 <= value <= 1.0:
        raise argparse.ArgumentTypeError(f"{value} is not in [0, 1]")
    return value


def _number(text: str, *, zero: bool) -> float:
    """Parse a finite number above 0 (at least 0 when ``zero``)."""
    value = _float(text)
    if not math.isfinite(value) or value < 0 or (value == 0 and not zero):
        bound = "at least 0" if zero else "above 0"
        raise argparse.ArgumentTypeError(f"{text!r} is not a finite number {bound}")
    return value


def _char_max(text: str) -> int:
    """Parse the longest byte n-gram: an integer from the shortest (3) to MAX_CHAR_GRAM."""
    from router._fastpath_py import MAX_CHAR_GRAM
    from router.training.fit import TrainOptions

    low = TrainOptions().char_min
    if not text.strip().isdigit() or not low <= int(text) <= MAX_CHAR_GRAM:
        raise argparse.ArgumentTypeError(f"{text!r} is not an integer in {low}..{MAX_CHAR_GRAM}")
    return int(text)


def _positive(text: str) -> float:
    return _number(text, zero=False)


def _non_negative(text: str) -> float:
    return _number(text, zero=True)


def _data_file(text: str) -> tuple[Path, float]:
    """Parse ``FILE`` or ``FILE:WEIGHT`` (a positive number; 1 when omitted)."""
    name, sep, weight = text.rpartition(":")
    if sep and name:
        try:
            value = float(weight)
        except ValueError:
            return Path(text), 1.0  # a colon in the file name, not a weight
        if not (value > 0 and value < float("inf")):
            raise argparse.ArgumentTypeError(f"{text!r}: the weight must be a positive number")
        return Path(name), value
    return Path(text), 1.0


def _tier_names(text: str) -> tuple[str, ...]:
    names = tuple(n.strip() for n in text.split(","))
    if not 2 <= len(names) <= 5 or not all(names) or len(set(names)) != len(names):
        raise argparse.ArgumentTypeError("give 2 to 5 distinct comma-separated tier names")
    return names


def _add_model_option(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--model", type=Path, help="model file (default: the shipped model)")


def _add_outcome_options(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--weak-model",
        default=DEFAULT_WEAK_MODEL,
        help="key of the weak (cheap) model in each row's scores",
    )
    parser.add_argument(
        "--strong-model",
        default=DEFAULT_STRONG_MODEL,
        help="key of the strong model in each row's scores",
    )


def _add_target_options(parser: argparse.ArgumentParser, required: bool) -> None:
    group = parser.add_argument_group(
        "operating point",
        "a strong share alone, or any of the promise's bounds (--quality, "
        "--max-hard-on-cheapest, --min-simple-on-cheapest, --max-level-on-cheapest): the most "
        "saving threshold that keeps all but the simple-query share, that one met when they "
        "leave room for it"
        + ("" if required else "; default: all the data can carry (0.98, 0.02, 0.95, 1.5)"),
    )
    group.add_argument(
        "--strong-share",
        type=_fraction,
        metavar="X",
        help="send this share of the queries above the cheapest tier",
    )
    group.add_argument(
        "--quality",
        type=_fraction,
        metavar="Y",
        help="keep this share of the strong model's quality (outcome rows)",
    )
    group.add_argument(
        "--max-hard-on-cheapest",
        type=_fraction,
        metavar="Z",
        help="let at most this share of level 3-4 rows on the cheapest tier",
    )
    group.add_argument(
        "--min-simple-on-cheapest",
        type=_fraction,
        metavar="W",
        help="keep at least this share of level 0 rows on the cheapest tier",
    )
    group.add_argument(
        "--max-level-on-cheapest",
        type=float,
        metavar="L",
        help="keep queries scored at level L or more (0-4; the promise: 1.5) off the "
        "cheapest tier: the threshold is at most the score of that level (the expected "
        "level where the gate is shut, at the median length)",
    )
    parser.add_argument(
        "--top-share",
        type=_fraction,
        default=None,
        help="share of the above-cheapest queries the strongest tier takes (default: the "
        "strongest tier starts at expected level 3.5, or takes 0.2 where the score is not "
        "built on the level)",
    )


def _target(args: argparse.Namespace) -> Target | None:
    values = (args.strong_share, args.quality, args.max_hard_on_cheapest)
    given = (*values, args.min_simple_on_cheapest, args.max_level_on_cheapest)
    if all(v is None for v in given):
        return None
    return Target(*given)


def _load(args: argparse.Namespace) -> RouterModel:
    return load_model(args.model or default_model_path())


# -- train -------------------------------------------------------------------------------


def add_train_parser(subparsers: Subparsers) -> None:
    """Register ``modelrouter train``."""
    from router.training.fit import TrainOptions

    defaults = TrainOptions()
    parser = subparsers.add_parser(
        "train",
        help="fit a routing model on labelled queries",
        description="Fit the level, gain and gate heads on JSONL rows with 'text' and a "
        "'tier' (0-4) and/or weak/strong outcome 'scores', through the serving featurizer; "
        "calibrate the thresholds on out-of-fold scores; write the model file. With --report "
        "or --by-source, first route each source with a model trained without it.",
    )
    parser.add_argument(
        "--data",
        type=_data_file,
        action="append",
        required=True,
        metavar="FILE[:WEIGHT]",
        help="training JSONL file, repeatable: the files' rows are merged; each row of FILE "
        "counts WEIGHT times as much as it would alone (1), on top of the 1/sqrt(rows of its "
        "source) weighting; a row without 'source' takes the file's name as its source",
    )
    parser.add_argument("--out", type=Path, required=True, help="model file to write")
    parser.add_argument(
        "--name", default="model", help="model name (its version is name-<checksum>)"
    )
    parser.add_argument(
        "--cv-folds",
        type=int,
        default=5,
        help="folds for held-out numbers and calibration; 0 or 1: none (5)",
    )
    parser.add_argument(
        "--report",
        type=Path,
        help="write the report as JSON: each source held out first (as --by-source), then "
        "the cross-validated numbers",
    )
    parser.add_argument(
        "--plot",
        type=Path,
        help="draw the cross-validated PGR-versus-strong-share curve to this .png, .svg or "
        ".pdf file (.png added to a name without an extension)",
    )
    parser.add_argument(
        "--by-source",
        action="store_true",
        help="also route each source with a model trained without it (one more fit per source)",
    )
    parser.add_argument(
        "--tiers",
        type=_tier_names,
        default=("cheap", "strong", "expert"),
        help="comma-separated tier names, cheapest first (cheap,strong,expert)",
    )
    parser.add_argument(
        "--rules",
        type=Path,
        help="keyword and phrase rules YAML (default: the shipped router/models/rules.yaml)",
    )
    parser.add_argument(
        "--buckets-log2",
        type=int,
        default=defaults.buckets_log2,
        help=f"hashed feature space size, log2 ({defaults.buckets_log2})",
    )
    parser.add_argument(
        "--char-max",
        type=_char_max,
        default=defaults.char_max,
        help=f"longest byte n-gram hashed, from {defaults.char_min} ({defaults.char_max})",
    )
    parser.add_argument(
        "--gain-alpha",
        type=_positive,
        default=defaults.gain_alpha,
        help=f"ridge penalty of the gain head ({defaults.gain_alpha:g})",
    )
    parser.add_argument(
        "--level-c",
        type=_positive,
        default=defaults.level_c,
        help=f"inverse penalty of the level head ({defaults.level_c:g})",
    )
    parser.add_argument(
        "--gate-c",
        type=_positive,
        default=defaults.gate_c,
        help=f"inverse penalty of the gate head ({defaults.gate_c:g})",
    )
    parser.add_argument(
        "--outcome-spread",
        type=_positive,
        default=defaults.outcome_spread,
        help="levels per standard deviation of the outcome level (the gain head read as a "
        f"level) over the outcome rows ({defaults.outcome_spread:g})",
    )
    parser.add_argument(
        "--length-weight",
        type=_non_negative,
        default=defaults.length_weight,
        help="levels the score adds per e-fold of a query's length in bytes, 0 at the "
        f"training rows' median length; 0 turns the length term off ({defaults.length_weight:g})",
    )
    _add_target_options(parser, required=False)
    _add_outcome_options(parser)
    parser.set_defaults(handler=_interruptible(_run_train))


def _run_train(args: argparse.Namespace) -> int:
    refused = missing_extra("train", "train", *(["plot"] if args.plot else []))
    if refused is not None:
        return refused
    from router.training.fit import TrainOptions
    from router.training.rules import load_rules
    from router.training.train import files_digest, train

    if not 8 <= args.buckets_log2 <= 24:
        return _err("--buckets-log2 must be in 8..24")
    plot = _plot_file(args.plot) if args.plot else None
    outputs = [("--out", args.out), ("--report", args.report), ("--plot", plot)]
    unwritable = _unwritable(
        [(option, path) for option, path in outputs if path is not None],
        [("--data", path) for path, _ in args.data],
    )
    if unwritable is not None:
        return _err(unwritable)
    try:
        rows = [
            row
            for path, weight in args.data
            for row in read_rows(
                path,
                weak_model=args.weak_model,
                strong_model=args.strong_model,
                default_source=path.stem,
                weight=weight,
            )
        ]
        target = _target(args)
        rules = load_rules(args.rules)
    except (DataError, ValueError) as exc:
        return _err(str(exc))
    if not any(r.has_outcome or r.tier is not None for r in rows):
        files = ", ".join(str(path) for path, _ in args.data)
        return _err(f"{files}: no row has outcome 'scores' or a 'tier' to train on")
    options = TrainOptions(
        rules=rules,
        buckets_log2=args.buckets_log2,
        char_max=args.char_max,
        gain_alpha=args.gain_alpha,
        level_c=args.level_c,
        gate_c=args.gate_c,
        outcome_spread=args.outcome_spread,
        length_weight=args.length_weight,
        name=args.name,
    )
    try:
        model, report = train(
            rows,
            options,
            folds=args.cv_folds,
            target=target,
            tier_names=args.tiers,
            top_share=args.top_share,
            log=_log,
            data_digest=files_digest([path for path, _ in args.data]),
            data_weights=[(path.name, weight) for path, weight in args.data],
            by_source=args.by_source or args.report is not None,
        )
    except ValueError as exc:
        return _err(str(exc))
    try:
        model = save_model(model, args.out)
    except OSError as exc:
        return _write_failed(args.out, exc)
    if report is not None:
        from router.training.evaluate import format_report
        from router.training.generalisation import format_generalisation

        if "held_out_sources" in report:
            print(format_generalisation(report["held_out_sources"], args.tiers))
            print()
        if "outcomes" in report:
            print(format_report(report))
        if args.report:
            try:
                args.report.write_text(json.dumps(_without_curves(report), indent=1))
            except OSError as exc:
                return _write_failed(args.report, exc)
        if plot and report.get("outcomes"):
            code = _plot(report, plot)
            if code != EXIT_OK:
                return code
    print(f"wrote {args.out} ({model.version})")
    return EXIT_OK


def _without_curves(report: dict[str, Any]) -> dict[str, Any]:
    out = dict(report)
    groups = report.get("outcomes", [])
    out["outcomes"] = [{k: v for k, v in g.items() if k != "curve"} for g in groups]
    return out


# -- eval --------------------------------------------------------------------------------


def add_eval_parser(subparsers: Subparsers) -> None:
    """Register ``modelrouter eval``."""
    parser = subparsers.add_parser(
        "eval",
        help="measure routing quality and cost on labelled queries",
        description="On rows with weak/strong outcome 'scores': APGR, CPT(50%), CPT(80%), cost "
        "saved at 98% quality, for the model, a random router, always-weak, always-strong and "
        "the oracle, and the numbers at the model's thresholds. On rows with 'tier': the "
        "confusion of levels and the share of level 3-4 rows on the cheapest tier.",
    )
    parser.add_argument("--data", type=Path, required=True, help="labelled JSONL file")
    _add_model_option(parser)
    parser.add_argument(
        "--plot",
        type=Path,
        help="draw the PGR-versus-strong-share curve to this .png, .svg or .pdf file (.png "
        "added to a name without an extension)",
    )
    parser.add_argument("--json", type=Path, help="also write the report as JSON")
    _add_outcome_options(parser)
    parser.set_defaults(handler=_interruptible(_run_eval))


def _run_eval(args: argparse.Namespace) -> int:
    refused = missing_extra("eval", "plot") if args.plot else None
    if refused is not None:
        return refused
    from router.training.evaluate import evaluate, format_report

    plot = _plot_file(args.plot) if args.plot else None
    outputs = [("--json", args.json), ("--plot", plot)]
    unwritable = _unwritable(
        [(option, path) for option, path in outputs if path is not None], [("--data", args.data)]
    )
    if unwritable is not None:
        return _err(unwritable)
    try:
        rows = read_rows(args.data, weak_model=args.weak_model, strong_model=args.strong_model)
        router = Router(_load(args))
    except (DataError, ModelError) as exc:
        return _err(str(exc))
    if not any(r.has_outcome for r in rows) and not any(r.tier is not None for r in rows):
        return _err(f"{args.data}: no row has outcome 'scores' or a 'tier' to evaluate against")
    report, _ = evaluate(router, rows)
    print(format_report(report))
    if args.json:
        try:
            args.json.write_text(json.dumps(_without_curves(report), indent=1))
        except OSError as exc:
            return _write_failed(args.json, exc)
    if plot:
        if not report["outcomes"]:
            return _err("--plot needs rows with outcome scores")
        return _plot(report, plot)
    return EXIT_OK


def _plot(report: dict[str, Any], path: Path) -> int:
    """Draw the curves to ``path`` (with its extension: see _plot_file)."""
    from router.training.evaluate import plot_curves

    try:
        plot_curves(report, path)
    except OSError as exc:
        return _write_failed(path, exc)
    print(f"wrote {path}")
    return EXIT_OK


# -- calibrate ---------------------------------------------------------------------------


def add_calibrate_parser(subparsers: Subparsers) -> None:
    """Register ``modelrouter calibrate``."""
    parser = subparsers.add_parser(
        "calibrate",
        help="set the score thresholds for a cost or quality target",
        description="Score the rows with the model and set the thresholds so that the target "
        "holds on them; write them into a copy of the model (--out) or into a service "
        "configuration's tiers[].min_score (--config; with --model, its model too; the file "
        "is rewritten without comments).",
    )
    parser.add_argument("--data", type=Path, required=True, help="JSONL file to calibrate on")
    _add_model_option(parser)
    where = parser.add_mutually_exclusive_group(required=True)
    where.add_argument("--out", type=Path, help="write the model with the new thresholds here")
    where.add_argument(
        "--config", type=Path, help="write the thresholds into this YAML configuration"
    )
    parser.add_argument(
        "--tiers",
        type=_tier_names,
        help="tier names with --out (default: the model's, or the config's)",
    )
    _add_target_options(parser, required=True)
    _add_outcome_options(parser)
    parser.set_defaults(handler=_interruptible(_run_calibrate))


def _run_calibrate(args: argparse.Namespace) -> int:
    from router.training.evaluate import score_rows
    from router.training.train import calibrate_thresholds

    output = ("--out", args.out) if args.out else ("--config", args.config)
    unwritable = _unwritable([output], [("--data", args.data)])
    if unwritable is not None:
        return _err(unwritable)
    try:
        rows = read_rows(args.data, weak_model=args.weak_model, strong_model=args.strong_model)
        target = _target(args)
        if target is None:
            print(
                "modelrouter calibrate: give a target: --strong-share, or one or more of "
                "--quality, --max-hard-on-cheapest, --min-simple-on-cheapest, "
                "--max-level-on-cheapest",
                file=sys.stderr,
            )
            return EXIT_USAGE
        if args.config:
            # The thresholds must fit the model the configuration serves, not the shipped one.
            model_path, config_data = _read_config_yaml(args.config)
            model = load_model(args.model or model_path)
            tier_names = tuple(t["name"] for t in config_data["tiers"])
        else:
            model, config_data = _load(args), None
            tier_names = args.tiers or model.tier_names
        scores = score_rows(
            Router(model, tier_names=tier_names, thresholds=_placeholder(len(tier_names))), rows
        ).scores
        thresholds = calibrate_thresholds(
            scores, rows, target, len(tier_names), args.top_share, model.score.score_at_level
        )
    except (DataError, ModelError, ValueError, KeyError, TypeError) as exc:
        return _err(str(exc))
    shown = ", ".join(
        f"{name} >= {t:.6f}" for name, t in zip(tier_names[1:], thresholds, strict=True)
    )
    print(f"{target.describe()} on {len(rows)} rows: {shown}")
    note = {"target": target.describe(), "top_share": args.top_share, "on": str(args.data)}
    if args.out:
        try:
            saved = save_model(model.with_operating_point(tier_names, thresholds, note), args.out)
        except OSError as exc:
            return _write_failed(args.out, exc)
        print(f"wrote {args.out} ({saved.version})")
    else:
        assert config_data is not None
        if args.model is not None:
            # The thresholds fit this model: the configuration must serve it.
            config_data["model"] = _config_relative(args.model, args.config)
        try:
            _write_config_thresholds(args.config, config_data, thresholds)
        except OSError as exc:
            return _write_failed(args.config, exc)
        written = "model and tiers[].min_score" if args.model is not None else "tiers[].min_score"
        print(f"wrote {written} into {args.config}")
    return EXIT_OK


def _config_relative(model: Path, config: Path) -> str:
    """Return a model path as a configuration file names it: relative to the file's
    directory when the model lies under it, else absolute."""
    model, base = model.resolve(), config.resolve().parent
    return str(model.relative_to(base)) if model.is_relative_to(base) else str(model)


def _placeholder(n_tiers: int) -> tuple[float, ...]:
    return tuple((i + 1) / n_tiers for i in range(n_tiers - 1))


def _read_config_yaml(path: Path) -> tuple[Path, dict[str, Any]]:
    """Return the model file a configuration serves and its parsed YAML."""
    import yaml

    from router.config import load_config
    from router.loading import config_model_path

    config = load_config(path)  # validates, naming any bad key
    data = yaml.safe_load(path.read_text(encoding="utf-8"))
    assert isinstance(data, dict)
    return config_model_path(config, path.parent), data


def _write_config_thresholds(
    path: Path, data: dict[str, Any] | None, thresholds: tuple[float, ...]
) -> None:
    import yaml

    assert data is not None
    check_thresholds(thresholds, len(data["tiers"]))
    data["tiers"][0].pop("min_score", None)
    for tier, threshold in zip(data["tiers"][1:], thresholds, strict=True):
        tier["min_score"] = round(threshold, 6)
    tmp = path.with_name(path.name + ".tmp")
    try:
        tmp.write_text(yaml.safe_dump(data, sort_keys=False), encoding="utf-8")
        tmp.replace(path)
    finally:
        tmp.unlink(missing_ok=True)  # gone once it replaced the file


# -- route -------------------------------------------------------------------------------


def add_route_parser(subparsers: Subparsers) -> None:
    """Register ``modelrouter route``."""
    parser = subparsers.add_parser(
        "route",
        help="route one query, or a JSONL file of queries",
        description="Print the decision for one query as JSON, or read --input lines with at least "
        '{"id", "text"} and write --output lines {"id", "tier", "tier_index", "score", "levels", '
        '"rules"} in the same order. A malformed input line stops the run with its line and field, '
        "and no output file is left behind.",
    )
    parser.add_argument("query", nargs="?", help="one query to route")
    parser.add_argument("--input", type=Path, help="JSONL file of queries")
    parser.add_argument("--output", type=Path, help="JSONL file of decisions to write")
    _add_model_option(parser)
    parser.set_defaults(handler=_interruptible(_run_route))


def _decisions(router: Router, path: Path) -> Iterator[str]:
    for row in iter_rows(path, labels=False, require_id=True):
        yield json.dumps(router.route(row.text).as_json(row.id), ensure_ascii=False)


def _run_route(args: argparse.Namespace) -> int:
    if (args.query is None) == (args.input is None):
        print(
            "modelrouter route: give either a QUERY or --input FILE (with --output FILE)",
            file=sys.stderr,
        )
        return EXIT_USAGE
    if args.input is not None and args.output is None:
        print("modelrouter route: --input needs --output", file=sys.stderr)
        return EXIT_USAGE
    if args.query is not None and args.output is not None:
        print(
            "modelrouter route: --output goes with --input: one QUERY's decision is printed",
            file=sys.stderr,
        )
        return EXIT_USAGE
    if args.input is not None:
        unwritable = _unwritable([("--output", args.output)], [("--input", args.input)])
        if unwritable is not None:
            return _err(unwritable)
    try:
        router = Router(_load(args))
    except ModelError as exc:
        return _err(str(exc))
    if args.query is not None:
        print(json.dumps(router.route(args.query).as_json(), ensure_ascii=False))
        return EXIT_OK
    tmp = args.output.with_name(f".{args.output.name}.{os.getpid()}.tmp")
    try:
        # An id may hold a lone surrogate (valid JSON escapes, not encodable as UTF-8): it
        # can only sit inside a JSON string, where backslashreplace writes the same escape.
        with tmp.open("w", encoding="utf-8", errors="backslashreplace") as out:
            for line in _decisions(router, args.input):
                out.write(line + "\n")
        tmp.replace(args.output)
    except DataError as exc:
        return _err(str(exc))
    except OSError as exc:
        return _err(f"{args.output}: {exc.strerror}")
    finally:
        tmp.unlink(missing_ok=True)
    return EXIT_OK
