"""The ``modelrouter export`` and ``modelrouter label`` subcommands."""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import signal
import sys
import time
from collections.abc import Coroutine
from pathlib import Path
from typing import Any

from router.output_paths import unwritable
from router.store.since import SINCE_HELP
from router.store.since import parse_since as parse_since  # the commands' one parser

Subparsers = Any  # argparse's _SubParsersAction is private

EXIT_OK = 0
EXIT_ERROR = 1
EXIT_INTERRUPTED = 130


def _err(message: str) -> int:
    print(f"modelrouter: {message}", file=sys.stderr)
    return EXIT_ERROR


def _add_selection(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--store",
        required=True,
        help="the store: a SQLite file or a postgresql:// URL (the server's store.path / url)",
    )
    parser.add_argument("--since", type=parse_since, help=f"only requests since: {SINCE_HELP}")
    parser.add_argument("--tenant", help="only this tenant's requests")


def _unwritable(out: Path, store: str) -> str | None:
    """Return why ``out`` cannot take the rows (``PATH: reason``), or None if it can."""
    from router.store import is_url

    inputs = []
    # A ~user of no known home is no file to compare with: open_store says so.
    with contextlib.suppress(RuntimeError):
        if not is_url(store):
            inputs.append(("store --store names", Path(store).expanduser()))
    return unwritable([("--out", out)], inputs)


def _open(target: str) -> Any:
    from router.store import StoreError, open_store

    try:
        return open_store(target, migrate=False)
    except StoreError as exc:
        raise SystemExit(_err(str(exc))) from None


# -- export ------------------------------------------------------------------------------


def add_export_parser(subparsers: Subparsers) -> None:
    """Register ``modelrouter export``."""
    parser = subparsers.add_parser(
        "export",
        help="write stored traffic as training rows",
        description="Write one JSONL row per stored request that kept its text "
        "(store.keep_text): 'text' always, 'scores' per tier model where the request has "
        "outcomes (the judge's grades from 'modelrouter label', callers' ratings), with "
        "'weak_model'/'strong_model' naming the pair; the format 'modelrouter train' reads.",
    )
    _add_selection(parser)
    parser.add_argument("--out", type=Path, required=True, help="JSONL file to write")
    parser.add_argument(
        "--config",
        type=Path,
        help="a configuration whose cheapest and strongest tiers' models are the pair a "
        "rating is an outcome for (labelled rows name their own)",
    )
    parser.set_defaults(handler=_run_export)


def _run_export(args: argparse.Namespace) -> int:
    from router.config import ConfigError, load_config
    from router.loop.export import ExportCounts, export_rows
    from router.loop.label import write_rows

    pair = None
    if args.config is not None:
        try:
            config = load_config(args.config)
        except ConfigError as exc:
            return _err(str(exc))
        pair = (config.tiers[0].model, config.tiers[-1].model)
    unwritable = _unwritable(args.out, args.store)
    if unwritable is not None:
        return _err(unwritable)
    store = _open(args.store)
    counts = ExportCounts()
    try:
        write_rows(
            args.out,
            export_rows(store, since=args.since, tenant=args.tenant, pair=pair, counts=counts),
        )
    except OSError as exc:
        return _err(f"{args.out}: {exc.strerror}")
    finally:
        store.close()
    print(
        f"wrote {counts.rows} rows to {args.out}: {counts.with_scores} with outcomes "
        f"({counts.labelled} labelled, {counts.rated} rated)"
        + (
            f"; {counts.without_text} requests kept no text (store.keep_text is off)"
            if counts.without_text
            else ""
        )
    )
    return EXIT_OK


# -- label -------------------------------------------------------------------------------


def add_label_parser(subparsers: Subparsers) -> None:
    """Register ``modelrouter label``."""
    parser = subparsers.add_parser(
        "label",
        help="label stored prompts: answers of the cheapest and strongest tiers, graded",
        description="Take stored prompts (store.keep_text), run each on the cheapest and on "
        "the strongest tier of the configuration, have the judge tier grade both answers "
        "(PASS or FAIL, parsed strictly), and write outcome rows. Every step is saved in "
        "the store as it completes: --resume continues an interrupted run without paying "
        "for a step twice.",
    )
    _add_selection(parser)
    parser.add_argument("--config", type=Path, required=True, help="the service configuration")
    parser.add_argument(
        "--sample", type=int, required=True, metavar="N", help="how many prompts to label"
    )
    parser.add_argument("--judge", required=True, metavar="TIER", help="the tier that grades")
    parser.add_argument("--out", type=Path, required=True, help="JSONL file of outcome rows")
    parser.add_argument("--resume", action="store_true", help="continue the run that writes --out")
    parser.add_argument("--seed", type=int, default=0, help="which prompts the sample takes (0)")
    parser.add_argument(
        "--max-tokens", type=int, default=512, help="answer length limit per tier (512)"
    )
    parser.set_defaults(handler=_run_label)


def _run_label(args: argparse.Namespace) -> int:
    from router.config import ConfigError, load_config
    from router.loop.label import run_key

    if args.sample < 1:
        return _err("--sample must be at least 1")
    if args.max_tokens < 1:
        return _err("--max-tokens must be at least 1")
    try:
        config = load_config(args.config)
    except ConfigError as exc:
        return _err(str(exc))
    names = [t.name for t in config.tiers]
    if args.judge not in names:
        return _err(f"--judge: unknown tier {args.judge!r} (configured: {', '.join(names)})")
    unwritable = _unwritable(args.out, args.store)
    if unwritable is not None:
        return _err(unwritable)
    if args.out.exists() and not args.resume:
        return _err(f"{args.out} exists: --resume continues its run, or remove it")
    store = _open(args.store)
    try:
        key = run_key(args.out)
        run = store.state(key) if args.resume else None
        if args.resume and not isinstance(run, dict):
            return _err(f"--resume: no labelling run writes {args.out} in {args.store}")
        return asyncio.run(
            _interruptible(_label(args, config, store, key, run, names.index(args.judge)))
        )
    except KeyboardInterrupt:
        print(
            f"\nmodelrouter: interrupted; what was done is saved: run again with --resume "
            f"(--out {args.out})",
            file=sys.stderr,
        )
        return EXIT_INTERRUPTED
    finally:
        store.close()


async def _interruptible(work: Coroutine[Any, Any, int]) -> int:
    """Run ``work``; SIGINT cancels it at once and is raised as KeyboardInterrupt.

    Like ``serve``, the run takes SIGINT even when it inherited it ignored (a background
    job of a script): Python and asyncio.run leave an inherited SIG_IGN in place.
    """
    loop = asyncio.get_running_loop()
    task = asyncio.current_task()
    assert task is not None
    interrupted = False

    def interrupt() -> None:
        nonlocal interrupted
        interrupted = True
        task.cancel()

    loop.add_signal_handler(signal.SIGINT, interrupt)
    try:
        return await work
    except asyncio.CancelledError:
        if interrupted:
            raise KeyboardInterrupt from None
        raise
    finally:
        loop.remove_signal_handler(signal.SIGINT)


async def _label(
    args: argparse.Namespace,
    config: Any,
    store: Any,
    key: str,
    run: dict[str, Any] | None,
    judge_index: int,
) -> int:
    from router.loop.label import (
        LabelError,
        Labeller,
        Progress,
        TierRunner,
        prompts_of,
        sample,
        write_rows,
    )
    from router.store import StateRecord

    prompts, without = prompts_of(store.requests(since=args.since, tenant=args.tenant))
    if run is None:
        chosen = sample(prompts, args.sample, args.seed)
        if not chosen:
            note = f" ({without} kept no text: is store.keep_text on?)" if without else ""
            return _err(f"no stored prompt to label{note}")
        run = {"ids": [p.request_id for p in chosen], "judge": args.judge, "time": time.time()}
        store.write([StateRecord(key, run, time.time())])
    else:
        by_id = {p.request_id: p for p in prompts}
        chosen = [by_id[i] for i in run["ids"] if i in by_id]
    runner = TierRunner(config, args.max_tokens)
    labeller = Labeller(store, runner, judge_index)
    progress = Progress(total=len(chosen))
    print(
        f"labelling {len(chosen)} prompts: {labeller.cheap_model} and {labeller.strong_model}, "
        f"judged by {labeller.judge_model}",
        file=sys.stderr,
    )
    rows = []
    try:
        for prompt in chosen:
            try:
                state = await labeller.label(prompt, progress)
            except LabelError as exc:
                progress.failed += 1
                progress.done += 1
                progress.show(prompt, f"failed: {exc}")
                continue
            progress.done += 1
            grades = [state[f"judge_{side}"]["grade"] for side in ("cheap", "strong")]
            shown = ", ".join(
                f"{side} {'ungraded' if g is None else 'PASS' if g else 'FAIL'}"
                for side, g in zip(("cheap", "strong"), grades, strict=True)
            )
            progress.show(prompt, shown)
            rows.append(labeller.row(prompt, state))
    finally:
        await runner.aclose()
    try:
        written = write_rows(args.out, rows)
    except OSError as exc:
        return _err(
            f"{args.out}: {exc.strerror or exc}; every step is saved in the store: once "
            f"{args.out} can be written, run again with --resume (--out {args.out}) to write "
            "the rows without paying again"
        )
    print(
        f"wrote {written} rows to {args.out}: {progress.paid_steps} calls paid "
        f"(${progress.cost_usd:.4f}), {progress.reused_steps} steps reused from earlier runs, "
        f"{progress.ungraded} answers the judge did not grade"
    )
    if progress.failed:
        return _err(f"{progress.failed} prompts failed; run again with --resume to retry them")
    return EXIT_OK
