"""The generated tables of README.md and the docs equal what their sources render (scripts/render_docs_tables.py):
results tables from committed ``results.json`` files, paired comparisons from committed ``scores.npz``, method,
option and config-key tables from the code's one declaration of each. Every registered detector has a section and
an options table on its family's page. The project files that describe it (LICENSE, NOTICE, CITATION.cff,
CHANGELOG.md, CONTRIBUTING.md) are what they claim to be."""

from __future__ import annotations

import importlib.util
import json
import re
import sys
from pathlib import Path
from types import ModuleType

import pytest
import yaml

from tagood import detectors

ROOT = Path(__file__).resolve().parents[1]


def _script() -> ModuleType:
    spec = importlib.util.spec_from_file_location("render_docs_tables", ROOT / "scripts" / "render_docs_tables.py")
    assert spec and spec.loader
    mod = importlib.util.module_from_spec(spec)
    sys.modules["render_docs_tables"] = mod
    spec.loader.exec_module(mod)
    return mod


render = _script()


@pytest.mark.parametrize("path", render.markdown_files(), ids=lambda p: str(p.relative_to(ROOT)))
def test_generated_tables_are_current(path: Path) -> None:
    """Every generated block equals what its source renders now; run the script to regenerate, never edit by hand."""
    _, stale = render.rendered(path)
    assert not stale, (f"stale generated tables in {path.relative_to(ROOT)} (run `python scripts/render_docs_tables.py`): "
                       + ", ".join(f"line {b.line} ({b.kind}: {b.args})" for b in stale))


def test_docs_hold_results_tables_from_files() -> None:
    """The docs show at least one results table, one paired comparison and the diagnostics, each from a results
    file committed under docs/results/ with its command, commit and date."""
    kinds: dict[str, list[str]] = {}
    for f in render.markdown_files():
        for b in render.blocks(f):
            kinds.setdefault(b.kind, []).append(b.args)
    results = kinds.get("results", [])
    assert results and kinds.get("compare") and any("part=diagnostics" in a for a in results), kinds
    for args in results:
        path = ROOT / args.split()[0]
        assert path.is_relative_to(ROOT / "docs" / "results"), f"{args}: results files live under docs/results/"
        src = render.provenance(path, json.loads(path.read_text(encoding="utf-8")))
        assert all(src.values()), f"{path}: the run's command, commit and date must be recorded ({src})"


def test_a_changed_number_is_caught(tmp_path: Path) -> None:
    """The check can fail: a table whose number was edited by hand, or whose results file changed, is stale."""
    src = next(f for f in render.markdown_files() if any(b.kind == "results" for b in render.blocks(f)))
    block = next(b for b in render.blocks(src) if b.kind == "results")
    page = ROOT / "docs" / "_stale_check.md"
    try:
        page.write_text(f"<!-- results: {block.args} -->\n<!-- end results -->\n", encoding="utf-8")
        good, stale = render.rendered(page)
        assert len(stale) == 1  # the empty block is stale; `good` is what it should hold
        page.write_text(good, encoding="utf-8")
        assert render.rendered(page)[1] == []
        edited = re.sub(r"\| (\d+\.\d*)(\d) \|", lambda m: f"| {m[1]}{(int(m[2]) + 1) % 10} |", good, count=1)
        assert edited != good
        page.write_text(edited, encoding="utf-8")
        assert [b.kind for b in render.rendered(page)[1]] == ["results"]
        page.write_text("<!-- results: docs/results/none/results.json -->\n<!-- end results -->\n", encoding="utf-8")
        with pytest.raises(render.RenderError, match="no results file"):
            render.rendered(page)
        page.write_text("<!-- options: knn -->\nno end\n", encoding="utf-8")
        with pytest.raises(render.RenderError, match="has no '<!-- end options -->'"):
            render.blocks(page)
    finally:
        page.unlink(missing_ok=True)


def test_rewrite_mode_regenerates_the_table(tmp_path: Path) -> None:
    """``render_docs_tables.py FILE`` rewrites a stale block in place and then the check passes."""
    page = ROOT / "docs" / "_rewrite_check.md"
    try:
        page.write_text("# x\n\n<!-- options: energy -->\nold text\n<!-- end options -->\n", encoding="utf-8")
        assert render.main([str(page), "--check"]) == 1
        assert render.main([str(page)]) == 0
        text = page.read_text(encoding="utf-8")
        assert "| `temperature` | number > 0 | `1.0` |" in text and "old text" not in text
        assert render.main([str(page), "--check"]) == 0
    finally:
        page.unlink(missing_ok=True)


def test_every_detector_has_its_docs_section_and_options_table() -> None:
    """Adding a detector means adding its docs row: a ``## name`` section and an options block on its family's page,
    and a row in the overview (``<!-- methods: all -->``) that links to the section."""
    missing = []
    for name in detectors.available():
        page = ROOT / render.FAMILIES[render.family(detectors.get_class(name))][0]
        text = page.read_text(encoding="utf-8")
        if not re.search(rf"^## {re.escape(name)}$", text, re.M):
            missing.append(f"{name}: no section '## {name}' in {page.relative_to(ROOT)}")
        if f"<!-- options: {name} -->" not in text:
            missing.append(f"{name}: no '<!-- options: {name} -->' block in {page.relative_to(ROOT)}")
    assert not missing, "\n".join(missing)
    overview = (ROOT / "docs" / "methods" / "index.md").read_text(encoding="utf-8")
    assert "<!-- methods: all -->" in overview
    rows = render.render_methods("all", ROOT / "docs" / "methods" / "index.md", "test")
    assert all(f"[`{n}`]" in rows for n in detectors.available())


def test_options_table_comes_from_the_declaration() -> None:
    """The options table lists each declared option with its default and range, as ``describe`` gives them."""
    table = render.render_options("knn", ROOT / "docs" / "methods" / "classic.md", "test")
    for o in detectors.describe("knn"):
        assert f"| `{o.name}` |" in table and f"`{o.default_text}`" in table
    assert render.render_options("msp", ROOT / "docs" / "methods" / "classic.md", "test") == "`msp` has no options.\n"


def test_render_script_runs_as_a_command() -> None:
    """``python scripts/render_docs_tables.py --check FILE`` is what a contributor runs: it exits 0 on a current page
    (every page is checked in-process above)."""
    import subprocess

    proc = subprocess.run([sys.executable, str(ROOT / "scripts" / "render_docs_tables.py"), "--check",
                           str(ROOT / "docs" / "methods" / "classic.md")], cwd=ROOT, capture_output=True, text=True,
                          timeout=600, check=False)
    assert proc.returncode == 0 and "0 block(s) stale" in proc.stderr, proc.stdout + proc.stderr


# -- the scale rehearsal's table and plot ------------------------------------------------------------------------
PRELIMINARY = ROOT / "docs" / "results" / "scale" / "rehearsal-preliminary.json"


def test_scaling_table_comes_from_the_rehearsal_file() -> None:
    """The ``scaling`` block has one row per scale and stage with the file's figures and its ratios vs N/10, and the
    scaling guide holds such a block with the plot."""
    doc = json.loads(PRELIMINARY.read_text(encoding="utf-8"))
    body = render.render_scaling(f"{PRELIMINARY.relative_to(ROOT)}", ROOT / "docs" / "guides" / "scaling.md", "test")
    rows = [line for line in body.splitlines() if line.startswith("| 0")]
    assert len(rows) == sum(len(r["stages"]) for r in doc["runs"])
    big = doc["runs"][-1]
    st = next(s for s in big["stages"] if s["stage"] == "extract:train")
    ratio = next(r for r in doc["ratios"] if r["stage"] == "extract:train" and r["scale"] == big["scale"])
    row = next(r for r in rows if r.startswith(f"| {big['scale']:g} | `extract:train` |"))
    cells = [c.strip() for c in row.strip("|").split("|")]
    assert cells[2] == f"{st['items']:,}" and float(cells[3]) == pytest.approx(st["wall_s"], rel=5e-3)
    anon, rss_ratio = st["peak_anon_mb"], ratio.get("rss_ratio")  # None: stages shared a process / not recorded
    assert cells[5] == f"{st['peak_rss_mb']:,.0f}" and cells[6] == ("-" if anon is None else f"{anon:,.0f}")
    assert cells[8] == f"{ratio['time_ratio']:g}" and cells[9] == ("-" if rss_ratio is None else f"{rss_ratio:g}")
    assert all(r.split("|")[-3].strip() == "-" for r in rows if r.startswith(f"| {doc['runs'][0]['scale']:g} |"))
    assert doc["command"] in body and "![" not in body  # no plot= given: no picture
    guide = [b for b in render.blocks(ROOT / "docs" / "guides" / "scaling.md") if b.kind == "scaling"]
    assert len(guide) == 1 and "plot=" in guide[0].args and "](../results/scale/" in guide[0].body


def test_scaling_check_flags_a_stale_table_or_plot(tmp_path: Path) -> None:
    """``--check`` flags the table once the result file changes, and refuses a plot drawn from another version of the
    file, a missing plot and a file that is not a rehearsal's, each naming what to run."""
    plot_scaling = render._plot_scaling()
    res, png = tmp_path / "rehearsal.json", tmp_path / "scaling.png"
    res.write_bytes(PRELIMINARY.read_bytes())
    plot_scaling.plot(res, png)
    page = tmp_path / "page.md"
    page.write_text(f"# s\n\n<!-- scaling: {res} plot={png} -->\n<!-- end scaling -->\n", encoding="utf-8")
    assert render.main([str(page), "--check"]) == 1  # empty block: stale
    assert render.main([str(page)]) == 0 and render.main([str(page), "--check"]) == 0
    assert "](scaling.png)" in page.read_text(encoding="utf-8")
    doc = json.loads(res.read_text(encoding="utf-8"))
    doc["runs"][0]["stages"][0]["wall_s"] += 1.0
    res.write_text(json.dumps(doc, indent=1) + "\n", encoding="utf-8")
    with pytest.raises(render.RenderError, match="not drawn from the current .*run python scripts/plot_scaling.py"):
        render.rendered(page)
    plot_scaling.plot(res, png)  # the plot redrawn: now only the table is stale
    assert [b.kind for b in render.rendered(page)[1]] == ["scaling"]
    assert render.main([str(page), "--check"]) == 1
    png.unlink()
    with pytest.raises(render.RenderError, match="no plot .*run python scripts/plot_scaling.py"):
        render.rendered(page)
    res.write_text(json.dumps({"runs": [{"scale": 0.1, "sizes": {"train": 10}, "stages": [{"stage": "head"}]}]}),
                   encoding="utf-8")
    with pytest.raises(render.RenderError, match=r"stages\[0\] has no 'wall_s'"):
        render.rendered(page)
    res.unlink()
    with pytest.raises(render.RenderError, match="no rehearsal result file"):
        render.rendered(page)

# -- the project files ------------------------------------------------------------------------------------------
def test_license_is_apache_2() -> None:
    text = (ROOT / "LICENSE").read_text(encoding="utf-8")
    assert "Apache License" in text and "Version 2.0, January 2004" in text and "END OF TERMS AND CONDITIONS" in text
    notice = (ROOT / "NOTICE").read_text(encoding="utf-8")
    assert "tuxpaint-stamps-default" in notice and "GPL-2" in notice and "never copied" in notice


def test_citation_cff() -> None:
    """CITATION.cff is valid YAML citing the software and the TagOOD and KR-NFT papers."""
    cff = yaml.safe_load((ROOT / "CITATION.cff").read_text(encoding="utf-8"))
    assert cff["cff-version"] == "1.2.0" and cff["type"] == "software" and cff["authors"] and cff["message"]
    assert cff["license"] == "Apache-2.0"
    titles = {r["title"].split(":")[0] for r in cff["references"]}
    assert {"TagOOD", "Knowledge Regularized Negative Feature Tuning of Vision-Language Models for "
                      "Out-of-Distribution Detection"} <= titles
    for r in cff["references"]:
        assert r["authors"] and r["year"] and r["type"] == "conference-paper"
    from tagood._version import __version__  # the one source of the version (pyproject reads it too)

    assert str(cff["version"]) == __version__


def test_changelog_keeps_a_changelog() -> None:
    text = (ROOT / "CHANGELOG.md").read_text(encoding="utf-8")
    assert text.startswith("# Changelog") and "## [Unreleased]" in text
    versions = re.findall(r"^## \[(\d+\.\d+\.\d+)\] - (\d{4}-\d{2}-\d{2})", text, re.M)
    assert versions, "released versions are '## [X.Y.Z] - YYYY-MM-DD'"
    for heading in re.findall(r"^### (.+)$", text, re.M):
        assert heading in {"Added", "Changed", "Deprecated", "Removed", "Fixed", "Security", "Performance",
                           "Findings recorded with this snapshot"}, heading


def test_images_in_docs_are_small_and_referenced() -> None:
    """The pictures are small PNGs that some page shows (no orphans, nothing large committed)."""
    images = sorted((ROOT / "docs" / "images").glob("*"))
    assert images
    pages = "".join(p.read_text(encoding="utf-8") for p in (ROOT / "docs").rglob("*.md"))
    for img in images:
        assert img.suffix == ".png" and img.stat().st_size < 400_000, f"{img.name}: {img.stat().st_size} bytes"
        assert f"images/{img.name}" in pages, f"{img.name} is shown on no page"


def _goal_doc(rss_big: float, time_big: float) -> dict:
    def run(scale: float, wall: float, rss: float) -> dict:
        st = {"stage": "knn", "wall_s": wall, "items": 10, "throughput_per_s": 1.0, "peak_rss_mb": rss,
              "peak_anon_mb": None, "disk_bytes": 1, "disk_files": 1}
        return {"scale": scale, "sizes": {"train": int(scale * 1000)}, "stages": [st]}

    return {"runs": [run(0.1, 1.0, 100.0), run(1.0, time_big, rss_big)],
            "ratios": [{"stage": "knn", "scale": 1.0, "vs_scale": 0.1, "time_ratio": time_big, "rss_ratio": rss_big / 100}]}


@pytest.mark.parametrize("rss,t,want", [(4000.0, 12.0, ("met", "met")), (5000.0, 12.0, ("**missed**", "met")),
                                        (100.0, 100.0, ("met", "**missed**"))])
def test_scaling_goals_table_judges_each_stage(tmp_path: Path, rss: float, t: float, want: tuple[str, str]) -> None:
    """The goals table under the scaling table: peak RSS against 4 GiB, time ratio against 15 (1.5x linear)."""
    res = tmp_path / "r.json"
    res.write_text(json.dumps(_goal_doc(rss, t)), encoding="utf-8")
    body = render.render_scaling(str(res), tmp_path / "p.md", "p.md:1")
    (row,) = [line for line in body.splitlines() if line.startswith("| `knn` |")]
    cells = [c.strip() for c in row.strip("|").split("|")]
    assert (cells[2], cells[4]) == want


@pytest.mark.parametrize("kind", ["peers", "torchrun-memory", "extract-throughput"])
def test_result_renderers_name_a_file_that_is_not_theirs(tmp_path: Path, kind: str) -> None:
    """A missing or foreign result file is a RenderError naming the file and the benchmark that writes it."""
    fn = render.RENDERERS[kind]
    bad = tmp_path / "bad.json"
    bad.write_text('{"rows": 1}', encoding="utf-8")
    for arg in (str(bad), str(tmp_path / "missing.json")):
        with pytest.raises(render.RenderError, match=r"bad\.json|missing\.json") as e:
            fn(arg, tmp_path / "p.md", "p.md:1")
        assert "benchmarks/" in str(e.value)


def test_peers_and_extract_tables_come_from_their_files(tmp_path: Path) -> None:
    """The figures of the rendered tables are the file's: ratio, times, the check verdict, the smallest pair."""
    peers = {"command": "python benchmarks/peers.py", "date": "2026-12-06", "threads": 2, "repeats": 3,
             "machine": {"cpus": 2, "processor": "x"},
             "shapes": {"n_train": 50000, "dim": 1280, "classes": 100, "n_eval": 20000, "k": 50, "metrics_n": 10},
             "rows": [{"pair": "vim", "peer": "pytorch-ood 0.4.0", "ours_s": 2.0, "peer_s": 3.0, "ratio": 1.5,
                       "ok": True, "check": "fine"},
                      {"pair": "msp", "peer": "pytorch-ood 0.4.0", "ours_s": 0.004, "peer_s": 0.003, "ratio": 0.75,
                       "ok": False, "check": "off"}],
             "smallest": {"pair": "msp", "ratio": 0.75}}
    f = tmp_path / "peers.json"
    f.write_text(json.dumps(peers), encoding="utf-8")
    body = render.render_peers(str(f), tmp_path / "p.md", "p.md:1")
    assert "| `vim` | pytorch-ood 0.4.0 | 2 | 3 | 1.50x | ok: fine |" in body
    assert "| `msp` | pytorch-ood 0.4.0 | 0.004 | 0.003 | 0.75x | FAILED: off |" in body
    assert "Smallest ratio: **0.75x** (`msp`)" in body
    ext = {"command": "c", "date": "d", "machine": {"cpus": 2}, "images": 64, "batch_size": 16, "workers": 2,
           "repeats": 1, "backbone": "near-free", "decode": "processes",
           "images_per_s": {"processes": {"decode_alone": 200.0, "pipeline": 190.0}},
           "pipeline_vs_decode_alone": 0.95}
    f = tmp_path / "ext.json"
    f.write_text(json.dumps(ext), encoding="utf-8")
    body = render.render_extract_throughput(str(f), tmp_path / "p.md", "p.md:1")
    assert "| processes | 200.0 | 190.0 | 0.95 |" in body and "= **0.95**" in body
