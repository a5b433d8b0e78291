"""``tagood cache ls | rm | verify``: manage the entries of the feature cache (see :mod:`tagood.cache`).

* ``ls`` lists the entries under the cache root: split, samples, failures, size, complete or not,
  and a damaged manifest.
* ``rm`` deletes entries while holding their write lock (it refuses while an extraction writes one).
* ``verify`` re-hashes every shard against the SHA-256 in the manifest; ``--repair`` re-extracts
  only the damaged shards of an entry written by ``tagood extract`` (it records how to rebuild its
  source and backbone), and sets a damaged manifest aside. Entries written by other commands are
  repaired by the next run that uses them: every extraction checks its entry and re-extracts
  damaged shards and shards whose files changed.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import typer
from rich.markup import escape
from rich.table import Table

from tagood.cli.common import cli_command, console, fail
from tagood.cli.options import CacheOpt, QuietOpt, VerboseOpt

cache_app = typer.Typer(no_args_is_help=True, help="Manage the feature cache: list, remove and verify entries.")


def _root(cache: Path | None) -> Path:
    from tagood.backbones.home import default_cache_root

    return cache if cache is not None else default_cache_root()


def _entries(root: Path, names: list[str]) -> list[Path]:
    """Entry directories named on the command line (a path, or a directory name under ``root``); all when none."""
    from tagood.cache import MANIFEST, CacheError
    from tagood.cache.admin import entry_dirs

    if not names:
        return entry_dirs(root)
    out = []
    for n in names:
        p = Path(n)
        d = p if (p / MANIFEST).exists() or p.is_absolute() else root / n
        if not (d / MANIFEST).exists() and not list(d.glob("shard-*.safetensors")) and not list(d.glob(f"{MANIFEST}.damaged-*")):
            raise CacheError(f"{d} is not a cache entry (no manifest.json); `tagood cache ls` lists the entries")
        out.append(d)
    return out


def _size(n: int) -> str:
    return f"{n / 2**20:.1f} MiB" if n < 2**30 else f"{n / 2**30:.2f} GiB"


@cache_app.command("ls")
@cli_command()
def ls_cmd(cache: CacheOpt = None, verbose: VerboseOpt = False, quiet: QuietOpt = False) -> None:
    """List the cache entries: split, samples stored / source, failed images, size on disk, state."""
    from tagood.cache import list_entries

    root = _root(cache)
    entries = list_entries(root)
    if not entries:
        console.print(f"no cache entries under {escape(str(root))}")
        return
    t = Table(title=escape(f"feature cache {root}"))
    for col in ("entry", "split", "backbone", "samples", "failed", "size", "state"):
        t.add_column(col, justify="right" if col in ("samples", "failed", "size") else "left")
    total = 0
    for e in entries:
        total += e.nbytes
        state = ("[red]lock file broken[/]" if e.error and e.n_source else
                 "[red]damaged manifest[/]" if e.error and "manifest" in e.error else "[red]unreadable[/]" if e.error
                 else "complete" if e.complete else "[yellow]partial (resumable)[/]")
        t.add_row(escape(e.dir.name), escape(e.split), escape(e.backbone), f"{e.n_samples}/{e.n_source}", str(e.n_failed),
                  _size(e.nbytes), state)
    console.print(t)
    for e in entries:
        if e.error:
            console.print(f"[red]{escape(e.dir.name)}: {escape(e.error)}[/]")
    console.print(f"{len(entries)} entries, {_size(total)}")


@cache_app.command("rm")
@cli_command()
def rm_cmd(
    entries: list[str] = typer.Argument(None, help="Entries to delete (directory names from `tagood cache ls`, or paths)."),
    all_: bool = typer.Option(False, "--all", help="Delete every entry under the cache root."),
    cache: CacheOpt = None,
    verbose: VerboseOpt = False,
    quiet: QuietOpt = False,
) -> None:
    """Delete cache entries (each under its write lock: an entry being extracted is refused, not deleted)."""
    from tagood.cache import remove_entry

    root = _root(cache)
    if not entries and not all_:
        fail("name the entries to delete (see `tagood cache ls`), or pass --all")
    for d in _entries(root, list(entries or [])):
        remove_entry(d, lock_timeout=0)
        console.print(f"removed {escape(str(d))}")


@cache_app.command("verify")
@cli_command()
def verify_cmd(
    entries: list[str] = typer.Argument(None, help="Entries to verify (default: all under the cache root)."),
    repair: bool = typer.Option(False, "--repair", help="Re-extract the damaged shards (entries written by `tagood extract`); "
                                                        "set a damaged manifest aside so the entry is extracted again."),
    device: str = typer.Option("cpu", help="torch device for --repair's re-extraction: cpu, cuda, cuda:0 or mps."),
    cache: CacheOpt = None,
    verbose: VerboseOpt = False,
    quiet: QuietOpt = False,
) -> None:
    """Check every shard of the entries against the SHA-256 in their manifest (exit 1 if damage is left)."""
    from tagood.cache import LOCK_FILE, MANIFEST, CacheError, CacheReader, EntryLock, set_aside_manifest
    from tagood.cache.admin import lock_problem

    root = _root(cache)
    todo = _entries(root, list(entries or []))
    if not todo:
        console.print(f"no cache entries under {escape(str(root))}")
        return
    left = 0
    for d in todo:
        lock_bad = lock_problem(d) if d.is_dir() else None
        if lock_bad:
            console.print(f"[red]{escape(d.name)}: {escape(lock_bad)}[/]")
            if not repair:
                left += 1
                continue
            _remove_lock(d)
            console.print(f"  removed the broken lock {escape(str(d / LOCK_FILE))}")
        try:
            reader = CacheReader(d, check_files=False)
            problems = reader.verify(full=True)
        except OSError as e:  # an unreadable entry: reported, the others are still verified
            console.print(f"[red]{escape(d.name)}: cannot read {escape(str(e.filename or d))} ({escape(str(e.strerror))}); "
                          "make it readable, or remove it with `tagood cache rm`[/]")
            left += 1
            continue
        except CacheError as e:
            if not (d / MANIFEST).exists():
                console.print(f"[yellow]{escape(d.name)}: no manifest (set aside earlier); the next run re-extracts it[/]")
                continue
            console.print(f"[red]{escape(d.name)}: {escape(str(e).split(';')[0])}[/]")
            if repair:
                with EntryLock(d, 0):
                    moved = set_aside_manifest(d)
                console.print(f"  manifest set aside as {escape(moved.name)}; the next run that uses this entry extracts it "
                              "again")
            else:
                left += 1
            continue
        if not problems:
            console.print(f"[green]{escape(d.name)}: ok[/] ({len(reader.manifest.shards)} shards, {len(reader)} samples)")
            continue
        for p in problems:
            console.print(f"[red]{escape(d.name)}/{escape(p.file)}: {escape(p.message)}[/]")
        if not repair:
            left += 1
            continue
        if not _repair_now(d, reader, device, progress=not quiet):
            console.print(f"  [yellow]{len(problems)} damaged shard(s) are re-extracted by the next run that uses this entry "
                          "(this entry was not written by `tagood extract`, so its source is not recorded)[/]")
            left += 1
    if left:
        console.print(f"[red]{left} entr{'y' if left == 1 else 'ies'} damaged[/]" + ("" if repair else "; run with --repair"))
        raise typer.Exit(1)


def _remove_lock(d: Path) -> None:
    """Remove a broken ``.lock`` (a directory, a symbolic link, a FIFO): the next run creates a fresh lock file."""
    import shutil

    from tagood.cache import LOCK_FILE

    p = d / LOCK_FILE
    if p.is_dir() and not p.is_symlink():
        shutil.rmtree(p)
    else:
        p.unlink()


def _repair_now(d: Path, reader: Any, device: str, progress: bool = True) -> bool:
    """Re-extract the damaged shards of an entry that records its recipe (written by `tagood extract`)."""
    from tagood import data
    from tagood.backbones.factory import build_backbone
    from tagood.extract import extract_split

    recipe = reader.manifest.meta.get("recipe")
    if not isinstance(recipe, dict):
        return False
    src = (data.ListFileSource(recipe["list"], recipe["root"]) if recipe.get("list")
           else data.FolderSource(recipe["root"], skip_empty_classes=bool(recipe.get("skip_empty_classes"))))
    bb = build_backbone(recipe["backbone"], device=device)
    fixed = extract_split(src, bb, d.parent, split=recipe["split"], fields=recipe.get("fields"),
                          batch_size=int(recipe.get("batch_size", 64)), progress=progress)
    if fixed.dir != d:
        console.print(f"  [yellow]the source or backbone of {escape(d.name)} changed since it was extracted; a new entry "
                      f"{escape(fixed.dir.name)} was written instead (remove the old one with `tagood cache rm`)[/]")
    else:
        console.print(f"  [green]repaired[/] {escape(d.name)}: damaged shards re-extracted")
    return True
