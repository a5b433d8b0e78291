"""Plot the scale rehearsal's result file: wall time and peak RSS against N, per stage, log-log.

Reads the ``--json`` file of ``benchmarks/scale_rehearsal.py`` (e.g. ``docs/results/scale/rehearsal-preliminary.json``)
and draws one PNG with two panels, one line per stage (``extract:<split>``, ``head``, each detector):

* left: the stage's wall time (seconds) against N, with a dotted line of slope 1 (linear growth) through the first
  stage's smallest point for reference;
* right: the stage's peak resident memory (MB; with ``--one-process`` the bench's own per-stage peak, otherwise the
  peak of the stage's process), with the goal of 4 GiB as a dashed line.

N is the run's number of IND training images (the rehearsal scales every split by the same fraction of ImageNet-1K's
counts, so every stage's work is proportional to it). A value of zero cannot be drawn on a log axis and is left out
of its line. The PNG is deterministic for one matplotlib version (no date or software stamp) and records the SHA-256
of the JSON it was drawn from in a ``Source-SHA256`` text chunk, which ``scripts/render_docs_tables.py --check`` reads
to flag a plot that no longer matches its result file.

Usage::

    python scripts/plot_scaling.py [RESULT_JSON] [--out PNG]
    # default: docs/results/scale/rehearsal-preliminary.json -> docs/results/scale/scaling.png
"""

from __future__ import annotations

import argparse
import hashlib
import io
import json
import struct
import sys
import zlib
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
DEFAULT_JSON = ROOT / "docs" / "results" / "scale" / "rehearsal-preliminary.json"
DEFAULT_PNG = ROOT / "docs" / "results" / "scale" / "scaling.png"
#: the issue's memory goal for everything that is streamed (peak RSS at most 4 GiB)
GOAL_MB = 4096.0
#: the keys every stage record must have (``benchmarks/scale_rehearsal.py`` writes them)
STAGE_KEYS = ("stage", "wall_s", "items", "throughput_per_s", "peak_rss_mb", "peak_anon_mb", "disk_bytes", "disk_files")
#: the PNG text chunk that names the digest of the result file
DIGEST_KEY = "Source-SHA256"


class RehearsalFileError(ValueError):
    """The file is not a scale rehearsal's result file (unreadable, not JSON, or a key missing or mistyped)."""


def source_digest(path: str | Path) -> str:
    """SHA-256 (hex) of a file's bytes: what a plot records of the result file it was drawn from.

    Args:
        path: the result file.

    Returns:
        The hex digest.
    """
    return hashlib.sha256(Path(path).read_bytes()).hexdigest()


def load_rehearsal(path: str | Path) -> dict[str, Any]:
    """Read and check a scale rehearsal's result file.

    Args:
        path: the ``--json`` file of ``benchmarks/scale_rehearsal.py``.

    Returns:
        Its contents: ``runs`` (at least one, each with ``scale``, ``sizes`` with ``train`` and ``stages``, each stage
        with :data:`STAGE_KEYS`), ``ratios`` (possibly empty) and the run's description.

    Raises:
        RehearsalFileError: the file cannot be read, is not JSON, or lacks a key; the message names the file and the
            key.
    """
    p = Path(path)
    try:
        doc = json.loads(p.read_text(encoding="utf-8"))
    except OSError as e:
        raise RehearsalFileError(f"{p}: cannot read it ({e.strerror or e}); give the --json file of "
                                 "benchmarks/scale_rehearsal.py") from None
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise RehearsalFileError(f"{p}: not a JSON file ({e}); give the --json file of benchmarks/scale_rehearsal.py") from None

    def need(ok: bool, what: str) -> None:
        if not ok:
            raise RehearsalFileError(f"{p}: {what}; it is not a result file of benchmarks/scale_rehearsal.py --json "
                                     "(rerun the benchmark to write one)")

    need(isinstance(doc, dict), "the top level is not an object")
    runs = doc.get("runs")
    need(isinstance(runs, list) and len(runs) > 0, "no 'runs' list with at least one run")
    for i, run in enumerate(runs):
        need(isinstance(run, dict), f"runs[{i}] is not an object")
        need(_is_num(run.get("scale")), f"runs[{i}] has no numeric 'scale'")
        sizes = run.get("sizes")
        need(isinstance(sizes, dict) and _is_num(sizes.get("train")), f"runs[{i}] has no 'sizes' with 'train'")
        stages = run.get("stages")
        need(isinstance(stages, list) and len(stages) > 0, f"runs[{i}] has no 'stages' list")
        for j, st in enumerate(stages):
            need(isinstance(st, dict), f"runs[{i}].stages[{j}] is not an object")
            for key in STAGE_KEYS:
                need(key in st, f"runs[{i}].stages[{j}] has no '{key}'")
                need(isinstance(st[key], str) if key == "stage" else (_is_num(st[key]) or
                     (key in ("throughput_per_s", "peak_anon_mb") and st[key] is None)),
                     f"runs[{i}].stages[{j}]['{key}'] is {st[key]!r}")
    ratios = doc.get("ratios", [])
    need(isinstance(ratios, list) and all(isinstance(r, dict) and isinstance(r.get("stage"), str) for r in ratios),
         "'ratios' is not a list of objects with 'stage'")
    return dict(doc)


def _is_num(x: object) -> bool:
    return isinstance(x, (int, float)) and not isinstance(x, bool)


def series(doc: Mapping[str, Any], key: str) -> dict[str, list[tuple[float, float]]]:
    """Per stage, ``(N, value)`` points of one stage key, by increasing N.

    Args:
        doc: a result file's contents (:func:`load_rehearsal`).
        key: a stage key, e.g. ``"wall_s"`` or ``"peak_anon_mb"``.

    Returns:
        Stage name -> points, stages in the order of their first appearance; N is the run's training images.
    """
    out: dict[str, list[tuple[float, float]]] = {}
    for run in sorted(doc["runs"], key=lambda r: float(r["sizes"]["train"])):
        n = float(run["sizes"]["train"])
        for st in run["stages"]:
            out.setdefault(st["stage"], []).append((n, float(st[key])))
    return out


def _describe(doc: Mapping[str, Any]) -> str:
    parts = [f"width {doc.get('width', '?')}", f"{doc.get('tokens', '?')} tokens", f"{doc.get('tags', '?')} tags"]
    if doc.get("preliminary"):
        parts.append("preliminary (loaded machine)")
    return "Scale rehearsal (synthetic tagger): " + ", ".join(parts)


def draw(doc: Mapping[str, Any], digest: str = "", source: str = "") -> bytes:
    """The PNG of a result file: wall time and peak RSS against N, one line per stage, log-log.

    Args:
        doc: a result file's contents (:func:`load_rehearsal`).
        digest: the result file's SHA-256, recorded in the PNG's ``Source-SHA256`` text chunk.
        source: the result file's path as shown in the PNG's ``Source`` text chunk.

    Returns:
        The PNG's bytes (the same bytes for the same input and matplotlib version).
    """
    import numpy as np
    from matplotlib import colormaps
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure
    from matplotlib.ticker import FixedLocator, FuncFormatter, LogLocator, NullFormatter

    fig = Figure(figsize=(12, 5), dpi=100)
    FigureCanvasAgg(fig)
    ax_t, ax_m = fig.subplots(1, 2)
    times, mems = series(doc, "wall_s"), series(doc, "peak_rss_mb")
    markers = "os^vD<>pPX*h"
    styles = ("-", "--", "-.", ":")
    palette = colormaps["tab20"]
    lines = []
    for i, name in enumerate(times):
        look = {"marker": markers[i % len(markers)], "linestyle": styles[(i // 10) % len(styles)],
                "color": palette(i % 20), "markersize": 4, "linewidth": 1.2}
        for ax, data in ((ax_t, times[name]), (ax_m, mems[name])):
            x = np.array([p[0] for p in data])
            y = np.array([p[1] if p[1] > 0 else np.nan for p in data])  # zero: not drawable on a log axis
            (line,) = ax.plot(x, y, label=name, **look)
        lines.append(line)
    all_n = sorted({p[0] for pts in times.values() for p in pts})
    n0 = all_n[0]
    firsts = [pts[0][1] for pts in times.values() if pts[0][0] == n0 and pts[0][1] > 0]
    t0 = float(np.exp(np.mean(np.log(firsts)))) if firsts else 0.0  # through the stages' geometric mean at the smallest N
    if len(all_n) > 1 and t0 > 0:
        (ref,) = ax_t.plot(all_n, [t0 * n / n0 for n in all_n], color="0.5", linestyle=":", linewidth=1,
                           label="linear (slope 1)")
        lines.append(ref)
    ax_m.axhline(GOAL_MB, color="0.3", linestyle="--", linewidth=1)
    ax_m.text(all_n[0], GOAL_MB, " goal: 4 GiB", va="bottom", ha="left", fontsize=8, color="0.3")
    for ax, ylabel, title in ((ax_t, "wall time (s)", "Time per stage"),
                              (ax_m, "peak RSS (MB)", "Peak resident memory of the stage")):
        ax.set_xscale("log")
        ax.set_yscale("log")
        ax.set_xlabel("N: IND training images")
        ax.set_ylabel(ylabel)
        ax.set_title(title, fontsize=10)
        ax.grid(True, which="both", linewidth=0.3, alpha=0.5)
        ax.xaxis.set_major_locator(FixedLocator(all_n))  # a tick at each N measured, written out in full
        ax.xaxis.set_major_formatter(FuncFormatter(lambda v, _: f"{v:,.0f}"))
        ax.xaxis.set_minor_formatter(NullFormatter())
        ax.yaxis.set_major_locator(LogLocator(base=10, subs=(1.0, 2.0, 5.0)))
        ax.yaxis.set_major_formatter(FuncFormatter(lambda v, _: f"{v:g}"))
        ax.yaxis.set_minor_formatter(NullFormatter())
    ax_m.legend(handles=lines, fontsize=7, loc="upper left", bbox_to_anchor=(1.02, 1.0), frameon=False)
    fig.suptitle(_describe(doc), fontsize=11)
    fig.subplots_adjust(left=0.06, right=0.84, top=0.87, bottom=0.11, wspace=0.25)
    buf = io.BytesIO()
    meta: dict[str, str | None] = {"Software": None}
    if digest:
        meta[DIGEST_KEY] = digest
    if source:
        meta["Source"] = source
    fig.savefig(buf, format="png", metadata=meta)
    return buf.getvalue()


def png_text(path: str | Path) -> dict[str, str]:
    """The ``tEXt`` chunks of a PNG file (keyword -> text).

    Args:
        path: the PNG.

    Returns:
        Its text chunks; empty when it has none.

    Raises:
        RehearsalFileError: the file is not a PNG.
    """
    data = Path(path).read_bytes()
    if data[:8] != b"\x89PNG\r\n\x1a\n":
        raise RehearsalFileError(f"{path}: not a PNG file")
    out: dict[str, str] = {}
    pos = 8
    while pos + 8 <= len(data):
        length, kind = struct.unpack(">I4s", data[pos : pos + 8])
        body = data[pos + 8 : pos + 8 + length]
        if kind == b"tEXt" and b"\0" in body:
            key, _, text = body.partition(b"\0")
            out[key.decode("latin-1")] = text.decode("latin-1")
        elif kind == b"zTXt" and b"\0" in body:
            key, _, rest = body.partition(b"\0")
            out[key.decode("latin-1")] = zlib.decompress(rest[1:]).decode("latin-1")
        elif kind == b"IEND":
            break
        pos += 12 + length
    return out


def _shown(path: Path) -> str:
    try:
        return path.resolve().relative_to(ROOT).as_posix()
    except ValueError:
        return str(path)


def plot(result_json: str | Path, out: str | Path) -> Path:
    """Draw ``result_json`` into the PNG ``out`` (its folder created when missing).

    Args:
        result_json: a scale rehearsal's result file.
        out: the PNG to write.

    Returns:
        ``out`` as a path.

    Raises:
        RehearsalFileError: ``result_json`` is not a rehearsal's result file.
    """
    src, dst = Path(result_json), Path(out)
    doc = load_rehearsal(src)
    png = draw(doc, source_digest(src), _shown(src))
    dst.parent.mkdir(parents=True, exist_ok=True)
    tmp = dst.with_name(dst.name + ".part")
    tmp.write_bytes(png)
    tmp.replace(dst)
    return dst


def main(argv: Sequence[str] | None = None) -> int:
    """Command line: ``plot_scaling.py [RESULT_JSON] [--out PNG]``.

    Args:
        argv: arguments (default ``sys.argv[1:]``).

    Returns:
        0, or 2 when the file is not a rehearsal's result file (one line on stderr).
    """
    ap = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    ap.add_argument("result", nargs="?", default=str(DEFAULT_JSON), help="the rehearsal's --json file "
                    f"(default {_shown(DEFAULT_JSON)})")
    ap.add_argument("--out", default=str(DEFAULT_PNG), help=f"the PNG to write (default {_shown(DEFAULT_PNG)})")
    a = ap.parse_args(argv)
    try:
        path = plot(a.result, a.out)
    except RehearsalFileError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    print(f"wrote {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
