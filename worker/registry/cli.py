"""``python -m worker registry {scan,list,show,pull,convert,verify,gc}``: the operator's view of the registry.

Output goes to stdout (tables or ``--json``), progress bars and errors to stderr; failures exit
non-zero with one clear line.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from tqdm import tqdm

from worker.compatibility import label
from worker.errors import WorkerError
from worker.model_types import MODEL_TYPES, ModelType, ProvisionedModel
from worker.registry.conversions import (
    TARGETS,
    ConversionFailed,
    ConversionResult,
    Target,
    default_target,
    describe_layout,
)
from worker.registry.layouts import ENGINES
from worker.registry.models import LiveEntry
from worker.registry.registry import ModelRegistry
from worker.settings import SettingsError, WorkerSettings

log = logging.getLogger(__name__)


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m worker registry", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)
    sub.add_parser("scan", help="scan the model folders, hashing new or changed files")
    p = sub.add_parser("list", help="list models on the volume and catalogue entries")
    p.add_argument("--json", action="store_true")
    p.add_argument("--kind", choices=MODEL_TYPES)
    p = sub.add_parser("show", help="show one model by any reference form")
    p.add_argument("ref")
    p.add_argument("--kind", choices=MODEL_TYPES)
    p.add_argument("--json", action="store_true")
    p = sub.add_parser(
        "pull", help="download a catalogue entry, civitai:<id>[@<version>] or hf:owner/repo/file"
    )
    p.add_argument("ref")
    p.add_argument("--kind", choices=MODEL_TYPES)
    p = sub.add_parser(
        "convert",
        help="convert once: diffusers folder, diffusers/PEFT LoRA or checkpoint-N -> A1111; "
        "single file -> diffusers folder",
    )
    p.add_argument(
        "src", help="a registry reference, or a path on the volume (a folder converts all below it)"
    )
    p.add_argument("--to", choices=TARGETS, help="a1111 (kohya LoRA / single file) or diffusers (folder)")
    p.add_argument("--kind", choices=MODEL_TYPES)
    p.add_argument("--half", action="store_true", help="store floats as fp16")
    p.add_argument("--force", action="store_true", help="convert again, replacing an earlier output")
    p.add_argument(
        "--base", help="the base checkpoint a LoRA was trained on (its block layout names the keys)"
    )
    p.add_argument("--alpha", type=float, help="LoRA alpha when the training state does not record it")
    p.add_argument(
        "--remove-source",
        action="store_true",
        help="delete each source once converted (image builds: A1111 would list and silently skip it)",
    )
    p.add_argument("--json", action="store_true")
    sub.add_parser("verify", help="re-hash every file and compare with recorded hashes")
    sub.add_parser("gc", help="remove stale partial downloads, forget vanished files, enforce the quota")
    return parser


def _out(text: str) -> None:
    sys.stdout.write(text + "\n")


@contextmanager
def _bar(desc: str, enabled: bool) -> Iterator[Callable[[int], None] | None]:
    if not enabled:
        yield None
        return
    with tqdm(unit="B", unit_scale=True, unit_divisor=1024, desc=desc, file=sys.stderr, leave=False) as bar:

        def update(n: int) -> None:
            bar.update(n)

        yield update


def main(argv: list[str], *, registry: ModelRegistry | None = None) -> int:
    """Run one registry command; returns the process exit status (``registry`` injectable for tests)."""
    args = _parser().parse_args(argv)
    try:
        if registry is None:
            # an operator's pull is bounded by the stall timeout only, not by a job's deadline
            registry = ModelRegistry.from_settings(
                WorkerSettings.from_env(), progress=sys.stderr.isatty(), download_deadline_s=None
            )
        return _run(args, registry)
    except (WorkerError, SettingsError) as exc:
        sys.stderr.write(f"error: {exc}\n")
        return 1
    except OSError as exc:
        sys.stderr.write(f"error: {exc.strerror or exc}: {exc.filename or ''}\n")
        return 1


def _run(args: argparse.Namespace, registry: ModelRegistry) -> int:
    tty = sys.stderr.isatty()
    if args.command == "scan":
        with _bar("hashing", tty) as progress:
            result = registry.scan(progress=progress)
        _out(
            f"{result.total} files: {len(result.added)} added, {len(result.changed)} changed, "
            f"{len(result.removed)} removed, {result.hashed} hashed"
        )
        return 0
    if args.command == "list":
        return _list(registry, args.kind, args.json)
    if args.command == "show":
        return _show(registry, args.ref, args.kind, args.json)
    if args.command == "pull":
        got = _pull(registry, args.ref, args.kind)
        verb = "downloaded" if got.downloaded else "already present:"
        _out(
            f"{verb} {got.facts.kind} {got.facts.file_name} sha256={got.facts.sha256} "
            f"({got.seconds:.1f}s){' ' + '; '.join(got.notes) if got.notes else ''}"
        )
        return 0
    if args.command == "convert":
        return _convert(registry, args, tty)
    if args.command == "verify":
        with _bar("verifying", tty) as progress:
            problems = registry.verify(progress)
        for problem in problems:
            _out(f"PROBLEM {problem.key}: {problem.problem}")
        _out("all files verified" if not problems else f"{len(problems)} problem(s)")
        return 1 if problems else 0
    actions = registry.gc()
    for action in actions:
        _out(action)
    _out(f"{len(actions)} action(s)")
    return 0


def _pull(registry: ModelRegistry, reference: str, kind: ModelType | None) -> ProvisionedModel:
    """Provision ``reference``, its kind taken from the catalogue or Civitai when not given."""
    kind = kind or registry.kind_of(reference)
    result = registry.provision(kind, reference)
    if result is None:
        raise registry.not_found(kind, reference)
    return result


def _convert(registry: ModelRegistry, args: argparse.Namespace, tty: bool) -> int:
    entries = registry.conversion_sources(args.src, args.kind, (Path.cwd(), registry.models_dir))
    single = len(entries) == 1
    results, failures = [], 0
    for entry in entries:
        try:
            result = _convert_one(registry, entry, args, tty, single)
        except WorkerError as exc:
            if single:
                raise
            failures += 1
            sys.stderr.write(f"error: {entry.key}: {exc}\n")
            continue
        if result is not None:
            results.append(result)
    if args.json:
        _out(json.dumps([_conversion_doc(r) for r in results], indent=1))
    if not results and not failures and not single:
        _out(f"nothing to convert below {args.src}")
    return 1 if failures else 0


def _convert_one(
    registry: ModelRegistry, entry: LiveEntry, args: argparse.Namespace, tty: bool, single: bool
) -> ConversionResult | None:
    """Convert one source (None: nothing to do for it); a folder's earlier outputs are skipped."""
    if not entry.usable:
        raise ConversionFailed(f"{entry.kind} {entry.file_name} cannot be converted: {entry.problem}")
    target: Target | None = args.to or default_target(entry)
    if target is None:
        if single:
            _out(f"nothing to convert: {entry.key} ({describe_layout(entry)}) runs on both engines as is")
        return None
    if not single and entry.lineage is not None:
        return None  # an output of an earlier conversion inside the folder
    with _bar(f"converting {entry.file_name}", tty) as progress:
        result = registry.convert(
            entry,
            target,
            half=args.half,
            force=args.force,
            alpha=args.alpha,
            base=args.base,
            progress=progress,
        )
    if not args.json:
        _out(_conversion_line(entry, result))
    if args.remove_source and result.output is not None and result.output.key != entry.key:
        registry.remove(entry)
    return result


def _conversion_line(entry: LiveEntry, result: ConversionResult) -> str:
    if result.status == "not needed":
        return f"not needed: {entry.key} ({describe_layout(entry)}) is already usable by {result.target}"
    assert result.output is not None
    out = result.output
    facts = ", ".join(
        f"{k} {out.details[k]}" for k in ("rank", "precision", "step") if out.details.get(k) is not None
    )
    verb = "converted" if result.status == "converted" else "already converted:"
    line = f"{verb} {entry.key} ({describe_layout(entry)}) -> {out.key} sha256={out.short_hash}"
    line += f" ({facts})" if facts else ""
    line += f" in {result.seconds:.1f}s" if result.status == "converted" else ""
    return line + "".join(f"; {note}" for note in result.notes)


def _conversion_doc(result: ConversionResult) -> dict[str, Any]:
    return {
        "source": result.source,
        "target": result.target,
        "status": result.status,
        "seconds": round(result.seconds, 3),
        "notes": list(result.notes),
        "output": result.output.model_dump() if result.output else None,
    }


def _list(registry: ModelRegistry, kind: str | None, as_json: bool) -> int:
    entries = [e for e in registry.entries() if kind is None or e.kind == kind]
    present_ids = {e.registry_id for e in entries if e.registry_id}
    absent = [
        c for c in registry.catalogue.models if c.id not in present_ids and (kind is None or c.kind == kind)
    ]
    if as_json:
        doc = {
            "present": [e.model_dump() for e in entries],
            "catalogue_not_present": [c.model_dump() for c in absent],
        }
        _out(json.dumps(doc, indent=1))
        return 0
    _out(
        f"{'KIND':<10} {'FILE':<48} {'ARCH':<12} {'LAYOUT':<9} {'HASH':<10} {'SIZE':>10} {'USES':>4}  STATUS"
    )
    for e in entries:
        status = "ok" if e.usable else f"UNUSABLE: {e.problem}"
        if e.usable and e.usable_by is not None and len(e.usable_by) < len(ENGINES):
            missing = [engine for engine in ENGINES if engine not in e.usable_by]
            status = f"ok for {', '.join(e.usable_by) or 'no engine'}; convert for {', '.join(missing)}"
        _out(
            f"{e.kind:<10} {e.file_name[:48]:<48} {label(e.architecture):<12} {e.layout or '-':<9} "
            f"{e.short_hash or '-':<10} {_size(e.size):>10} {e.use_count:>4}  {status}"
        )
    for c in absent:
        _out(
            f"{c.kind:<10} {'(' + c.id + ')':<48} {label(c.architecture):<12} {'-':<9} {'-':<10} {'-':>10} "
            f"{'-':>4}  not on volume; source: {c.source.type}"
        )
    return 0


def _show(registry: ModelRegistry, ref: str, kind: ModelType | None, as_json: bool) -> int:
    for candidate in [kind] if kind else list(MODEL_TYPES):
        found = registry.resolve(candidate, ref)
        if found.live is None and found.catalogue is None:
            continue
        doc: dict[str, Any] = {
            "kind": candidate,
            "present": found.live.model_dump() if found.live else None,
            "catalogue": found.catalogue.model_dump() if found.catalogue else None,
        }
        if as_json:
            _out(json.dumps(doc, indent=1))
        else:
            for section in ("present", "catalogue"):
                if doc[section]:
                    _out(f"[{section}]")
                    for key, value in doc[section].items():
                        _out(f"  {key}: {value}")
        return 0
    raise registry.not_found(kind or "checkpoint", ref)


def _size(n: int) -> str:
    size = float(n)
    for unit in ("B", "KiB", "MiB", "GiB"):
        if size < 1024 or unit == "GiB":
            return f"{size:.0f} {unit}" if unit == "B" else f"{size:.1f} {unit}"
        size /= 1024
    return str(n)
