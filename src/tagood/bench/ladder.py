"""The decomposition ladder (issue 24): where object-level scoring can win on a benchmark whose sources know masks.

One run scores a benchmark (the ``scenes`` one) with a ladder of ways to find and score the object, each a rung:

* **image level**: classic detectors on the whole image's pooled feature and the IND head (MSP, MaxLogit, Energy,
  KNN, Mahalanobis); the best of them by average AUROC is the ladder's *reference*;
* **tokens**: CS (the class-centre score of TagOOD's Table 3, Li et al., ACM MM 2024) on all of the image's tokens
  (``cs[tau=0]``), on the tokens the tags' attention keeps (``cs``, the paper's decomposition), and on the true
  object's tokens (``cs[decompose=oracle]``, a diagnostic that reads ground truth);
* **object crops** (``objects=crop``, beyond the paper; :mod:`tagood.extract.crops`): the box of the kept tokens,
  padded and made square, is cut out of the image and re-encoded by the backbone at its input resolution; every
  image-level detector then runs on the crops with an IND head fitted on the training images' crops (``crop:energy``,
  ...), and CS on the crops' own tokens (``crop:cs``). ``oracle-crop:...`` cuts the true object's box instead
  (for OOD images: what stands in the object's place).

Oracle rungs read the source's ground truth at test time: they are diagnostics, marked ``oracle`` in every row.
The run directory holds the usual results (``results.json`` / ``results.md`` / ``scores.npz``, so
``tagood metrics RUN --compare A B`` works on any two rungs) and ``ladder.json`` / ``ladder.md``: one row per rung
with its average and per-set AUROC / FPR95, the mask IoU of its tokens or box on the IND test images, and its
paired bootstrap difference against the reference (:func:`tagood.bench.intervals.paired_difference`). Scores are
higher = more OOD throughout; nothing is tuned on test or OOD data.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from tagood.bench import runner
from tagood.bench.config import BenchConfig
from tagood.bench.scores import SCORES_FILE, metric_rows, save_scores
from tagood.core.featureset import FeatureSet
from tagood.extract.crops import CropSource, crop_keep, mask_box, square_box, token_box

log = logging.getLogger(__name__)

__all__ = ["IMAGE_METHODS", "LADDER_FILE", "Rung", "choose_localisation", "ladder_markdown", "ladder_note", "ladder_table",
           "run_ladder", "score_crops"]

#: the image-level detectors; the best of them by average AUROC is the reference every rung is compared with
IMAGE_METHODS = ("msp", "maxlogit", "energy", "knn", "mahalanobis")
#: the token-level rungs, in ladder order
TOKEN_METHODS = ("cs[tau=0]", "cs", "cs[decompose=oracle]")
#: the object-level detectors run on crops' own tokens
CROP_OBJECT_METHODS = ("cs[tau=0]", "cs")
LADDER_FILE = "ladder.json"
_LABELS = {
    "cs[tau=0]": "CS on all tokens of the whole image",
    "cs": "CS on the tag-attention tokens (tau 0.5, the paper)",
    "cs[decompose=oracle]": "CS on the true object's tokens (oracle)",
}
_CROP_LABELS = {"cs[tau=0]": "CS on all the crop's tokens", "cs": "CS on the crop's tag-attention tokens"}


@dataclass(frozen=True)
class Rung:
    """One rung of the ladder: the method spec in the run's scores, a label, whether it reads ground truth."""

    method: str
    label: str
    oracle: bool = False
    crop: str | None = None  # "crop" / "oracle-crop" for the object-crop rungs


def _split_sources(state: runner.RunState) -> dict[str, Any]:
    """Each split's image source in feature-row order (a view of the source when the cache dropped a sample)."""
    from tagood.data.subset import SubsetSource

    out: dict[str, Any] = {}
    for name, sp in state.splits.items():
        idx = sp.reader.indices if sp.reader is not None else np.arange(len(sp.source))
        ident = len(idx) == len(sp.source) and np.array_equal(idx, np.arange(len(sp.source)))
        out[name] = sp.source if ident else SubsetSource(sp.source, idx)
    return out


def tag_boxes(det: Any, data: FeatureSet, sizes: Sequence[tuple[int, int]], backbone: Any, pad: float, size: int
              ) -> tuple[list[tuple[int, int, int, int] | None], list[Any]]:
    """(square crop boxes, tight token boxes) of each image from a fitted tag-based detector's kept tokens;
    ``sizes`` are the images' ``(width, height)``."""
    mask, _has = det.token_masks(data)
    keep = crop_keep(backbone, size)
    crops: list[tuple[int, int, int, int] | None] = []
    tight: list[Any] = []
    for i in range(len(mask)):
        w, h = sizes[i]
        box = token_box(mask[i], backbone.token_geometry(w, h))
        tight.append(box)
        crops.append(None if box is None else square_box(box, w, h, pad, keep))
    return crops, tight


def oracle_boxes(source: Any, backbone: Any, pad: float, size: int
                 ) -> tuple[list[tuple[int, int, int, int] | None], list[Any]]:
    """(square crop boxes, tight boxes) of what stands in each image's object place (``focus_mask``/``object_mask``)."""
    fn = getattr(source, "focus_mask", None) or source.object_mask
    keep = crop_keep(backbone, size)
    crops: list[tuple[int, int, int, int] | None] = []
    tight: list[Any] = []
    for i in range(len(source)):
        m = fn(i)
        box = None if m is None else mask_box(m)
        tight.append(box)
        crops.append(None if box is None else square_box(box, m.shape[1], m.shape[0], pad, keep))
    return crops, tight


#: the localisation choices tried on held-out IND training images (``tag_maps``, ``tau``)
LOCALISATION_GRID = tuple((m, t) for m in ("all", "top") for t in (0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9))
#: the share of the IND training images held out to choose the localisation
HELDOUT_FRACTION = 0.25


def choose_localisation(det: Any, train: FeatureSet, source: Any, backbone: Any, seed: int = 0
                        ) -> tuple[str, float, list[dict[str, Any]]]:
    """The tag-attention localisation whose box best matches the true object box on held-out IND training images.

    Over :data:`LOCALISATION_GRID` (the union of the kept IND tags' attention or the single most likely tag's,
    and ``tau``), the mean box IoU between the kept tokens' box and the true object's tight box is measured on a
    seeded :data:`HELDOUT_FRACTION` of the training images (ground truth of IND *training* images only; images
    without a kept tag count with their whole-image box, as the crops use them). The vocabulary is ``det``'s.

    Args:
        det: a fitted tag-based detector (its tag rule and vocabulary).
        train: the IND training features (row ``i`` is image ``i`` of ``source``).
        source: the training images' source (``object_mask``).
        backbone: the backbone of the features (``token_geometry``).
        seed: the seed of the held-out draw.
    Returns:
        ``(tag_maps, tau, table)``: the best choice and each choice's ``{"tag_maps", "tau", "box_iou"}``.
    """
    from tagood.detectors.tagood.decompose import token_mask, top_tag

    rng = np.random.default_rng([seed, 24])
    idx = np.sort(rng.choice(len(train), size=max(1, int(round(HELDOUT_FRACTION * len(train)))), replace=False))
    held = train.subset(idx)
    attn, probs = held.tag_attention, held.tag_probs
    assert attn is not None and probs is not None
    keep = det.kept_tags(held)
    truth, geoms = [], []
    for i in idx:
        m = source.object_mask(int(i))
        truth.append(mask_box(m))
        geoms.append(backbone.token_geometry(m.shape[1], m.shape[0]))
    table: list[dict[str, Any]] = []
    for maps_rule, tau in LOCALISATION_GRID:
        k = top_tag(keep, attn, probs) if maps_rule == "top" else keep
        mask, _ = token_mask(attn.maps, k, tau)
        vals = [box_iou(token_box(mask[j], geoms[j]), truth[j]) for j in range(len(idx))]
        got = [v for v in vals if v is not None]
        table.append({"tag_maps": maps_rule, "tau": tau, "box_iou": float(np.mean(got)) if got else 0.0})
    best = max(table, key=lambda r: r["box_iou"])
    log.info("ladder: localisation chosen on %d held-out IND training images: tag_maps=%s, tau=%s (box IoU %.3f)",
             len(idx), best["tag_maps"], best["tau"], best["box_iou"])
    return str(best["tag_maps"]), float(best["tau"]), table


def box_iou(a: Any, b: Any) -> float | None:
    """IoU of two ``(left, top, right, bottom)`` boxes; None when either is missing."""
    if a is None or b is None:
        return None
    iw = max(0.0, min(a[2], b[2]) - max(a[0], b[0]))
    ih = max(0.0, min(a[3], b[3]) - max(a[1], b[1]))
    inter = iw * ih
    union = (a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - inter
    return float(inter / union) if union > 0 else None


def score_crops(kind: str, boxes: Mapping[str, Sequence[Any]], sources: Mapping[str, Any], cfg: BenchConfig,
                 state: runner.RunState, cache_root: str | Path | None, device: str, progress: bool,
                 methods: Sequence[str]) -> dict[str, dict[str, np.ndarray]]:
    """Any detectors on object crops: extract the crops of every split (:class:`tagood.extract.crops.CropSource`,
    cached like any split), fit an IND head on the training crops, fit each detector on the training crops and score
    the test and OOD crops (higher = more OOD).

    Args:
        kind: the crop kind, prefixed to the method specs (``"crop"``, ``"oracle-crop"``, ...).
        boxes: per split (``train``, ``test`` and the OOD sets), one crop box (or None: the whole image) per row.
        sources: per split, its image source in feature-row order.
        cfg: the benchmark (seed, batch size, method defaults, OOD sets).
        state: the run whose backbone encodes the crops.
        cache_root: the feature cache.
        device: the torch device.
        progress: show progress bars.
        methods: detector specs (image-level ones read the crops' head logits; tag-based ones their tokens).
    Returns:
        ``{f"{kind}:{method}": {split: scores}}`` for the test split and the OOD sets.
    """
    from tagood.backbones.factory import tagger_context
    from tagood.core.context import Context
    from tagood.detectors.head import fit_head, head_accuracy, with_head_logits
    from tagood.extract import extract_split

    backbone = state.backbone
    dets = {m: runner.create_detector(m, cfg) for m in methods}
    fields, _pseudo, _images = runner._needed_fields(list(dets.values()), backbone)
    feats: dict[str, FeatureSet] = {}
    for name in ["train", "test", *cfg.ood]:
        src = CropSource(sources[name], list(boxes[name]), name=f"{sources[name].name}-{kind}", what=kind)
        reader = extract_split(src, backbone, cache_root, split=f"{cfg.name}-{kind}-{name}", fields=fields,
                               batch_size=cfg.batch_size, progress=progress)
        feats[name] = reader.to_featureset(fields, name=name)
    head = fit_head(feats["train"], sources["train"].class_names, seed=cfg.seed, device=device)
    test = feats["test"]
    assert test.features is not None and test.labels is not None
    log.info("%s: IND accuracy of the head fitted on training crops: %.2f%%", kind,
             100.0 * head_accuracy(head, test.features, test.labels))
    feats = {k: with_head_logits(v, head) for k, v in feats.items()}
    ctx = Context(head=head, class_names=sources["train"].class_names, device=device, seed=cfg.seed,
                  **tagger_context(backbone, cache_root))
    out: dict[str, dict[str, np.ndarray]] = {}
    for m, d in dets.items():
        d.fit(feats["train"], ctx)
        out[f"{kind}:{m}"] = {name: np.asarray(d.score(feats[name]), np.float64) for name in ["test", *cfg.ood]}
    return out


def run_ladder(cfg: BenchConfig, out_dir: str | Path, cache_root: str | Path | None = None, device: str = "cpu",
               progress: bool = True, backbone: Any = None, n_boot: int = 1000, pad: float = 0.1,
               crop_size: int = 256) -> dict[str, Any]:
    """Run the ladder on a benchmark whose sources know object masks (``scenes``) and write its files.

    Args:
        cfg: the benchmark (its ``methods`` are ignored: the ladder's are :data:`IMAGE_METHODS`,
            :data:`TOKEN_METHODS` and their crop rungs).
        out_dir: the run directory (results.json / .md, scores.npz, ladder.json / ladder.md).
        cache_root: the feature cache (the crops are cached there too).
        device: the torch device.
        progress: show progress bars.
        backbone: a built backbone (default: the config's).
        n_boot: bootstrap replicates of the paired differences.
        pad: padding of a crop box per side, as a fraction of its longer side.
        crop_size: the side of a crop image before the backbone's own preprocessing.
    Returns:
        The ladder document (what ``ladder.json`` holds).
    """
    from tagood.bench.report import writers as report

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    results, state = runner.run(cfg, out_dir=None, cache_root=cache_root, device=device, progress=progress,
                                methods=[*IMAGE_METHODS, *TOKEN_METHODS], backbone=backbone)
    if state.errors:
        log.warning("ladder: methods that failed: %s", state.errors)
    scores: dict[str, dict[str, np.ndarray]] = {m: dict(v) for m, v in state.scores.items()}
    sources = _split_sources(state)
    splits = ["train", "test", *cfg.ood]
    # the localisation chosen on held-out IND training images (their true object boxes), as a token rung and a crop
    maps_rule, tau, loc_table = choose_localisation(state.fitted["cs"], state.splits["train"].features, sources["train"],
                                                    state.backbone, cfg.seed)
    tuned_spec = f"cs[tag_maps={maps_rule},tau={tau}]"
    tuned = runner.create_detector(tuned_spec, cfg)
    tuned.fit(state.splits["train"].features, state.context)
    scores[tuned_spec] = {n: np.asarray(tuned.score(state.splits[n].features), np.float64) for n in ["test", *cfg.ood]}
    from tagood.bench import diagnostics as dg

    tuned_diag = dg.diagnose([(tuned_spec, tuned)], {"test": dg.SplitInput(state.splits["test"].features, sources["test"])},
                             state.backbone)
    state.diagnostics = [*state.diagnostics, *tuned_diag]
    kinds = {"crop": state.fitted["cs"], "crop-tuned": tuned, "oracle-crop": None}
    crop_boxes: dict[str, dict[str, list[Any]]] = {k: {} for k in kinds}
    tight: dict[str, dict[str, list[Any]]] = {k: {} for k in kinds}
    for name in splits:
        src, fs = sources[name], state.splits[name].features
        sizes = [src.load(i).size for i in range(len(src))]  # each image once, for all the crop kinds
        for kind, det in kinds.items():
            crop_boxes[kind][name], tight[kind][name] = (oracle_boxes(src, state.backbone, pad, crop_size) if det is None
                                                         else tag_boxes(det, fs, sizes, state.backbone, pad, crop_size))
    for kind in kinds:
        scores.update(score_crops(kind, crop_boxes[kind], sources, cfg, state, cache_root, device, progress,
                                   [*IMAGE_METHODS, *CROP_OBJECT_METHODS]))
    rows: list[dict[str, Any]] = []
    for m, per in scores.items():
        new = metric_rows(m, per["test"], {k: per[k] for k in cfg.ood})
        if "oracle" in m:
            new = [{**r, "oracle": True} for r in new]
        rows += new
    meta = runner._meta(state)
    meta["ladder"] = {"pad": pad, "crop_size": crop_size, "n_boot": n_boot}
    full = report.build_results(rows, state.id_accuracy, meta, state.diagnostics, cfg.options.ood_groups)
    report.write_all(full, out, title=f"{cfg.name} ladder ({state.backbone.id})")
    save_scores(out / SCORES_FILE, scores, {n: runner._sample_ids(state.splits[n]) for n in ["test", *cfg.ood]})
    iou = {r["method"]: r.get("mask_iou") for r in state.diagnostics if r["split"] == "test"}
    test_truth = [mask_box(m) if m is not None else None
                  for m in (sources["test"].object_mask(i) for i in range(len(sources["test"])))]
    for kind in kinds:
        vals = [box_iou(a, b) for a, b in zip(tight[kind]["test"], test_truth, strict=True)]
        got = [v for v in vals if v is not None]
        iou[kind] = float(np.mean(got)) if got else None
    doc = ladder_table(full, scores, iou, list(cfg.ood), n_boot=n_boot, seed=cfg.seed, tuned=tuned_spec)
    doc["meta"] = {"backbone": state.backbone.id, "benchmark": cfg.name, "seed": cfg.seed, "pad": pad,
                   "crop_size": crop_size, "id_accuracy": state.id_accuracy,
                   "localisation": {"tag_maps": maps_rule, "tau": tau, "heldout_fraction": HELDOUT_FRACTION,
                                    "heldout_box_iou": loc_table}}
    (out / LADDER_FILE).write_text(json.dumps(doc, indent=1))
    (out / "ladder.md").write_text(ladder_markdown(doc))
    return doc


def rungs(methods: Sequence[str], reference: str, tuned: str | None = None) -> list[Rung]:
    """The ladder's rungs in order: the reference, the token rungs (with ``tuned``, the localisation chosen on
    held-out IND training images), then per crop kind the reference detector and the object-level ones on crops
    (rungs whose method has no scores are left out)."""
    out = [Rung(reference, f"{reference} on the whole image (best image-level, the reference)")]
    out += [Rung(m, _LABELS[m], oracle="oracle" in m) for m in TOKEN_METHODS[:2]]
    if tuned:
        out.append(Rung(tuned, "CS on the tag-attention tokens, localisation chosen on held-out IND train"))
    out += [Rung(m, _LABELS[m], oracle="oracle" in m) for m in TOKEN_METHODS[2:]]
    for kind, what in (("crop", "crop of the tag-attention tokens' box"),
                       ("crop-tuned", "crop of the tokens' box, localisation chosen on held-out IND train"),
                       ("oracle-crop", "crop of the true object's box (oracle)")):
        out.append(Rung(f"{kind}:{reference}", f"{reference} of a head fitted on training crops, on the {what}",
                        oracle=kind == "oracle-crop", crop=kind))
        out += [Rung(f"{kind}:{m}", f"{_CROP_LABELS[m]}, on the {what}", oracle=kind == "oracle-crop", crop=kind)
                for m in CROP_OBJECT_METHODS]
    return [r for r in out if r.method in methods]


def ladder_table(results: Mapping[str, Any], scores: Mapping[str, Mapping[str, np.ndarray]],
                 iou: Mapping[str, float | None], ood: Sequence[str], n_boot: int = 1000, seed: int = 0,
                 tuned: str | None = None) -> dict[str, Any]:
    """The ladder document: the reference (the best image-level method by average AUROC) and one row per rung with
    its AUROC / FPR95 per OOD set and on average, its mask IoU on IND test (token IoU for token rungs, box IoU of
    the uncropped object box for crop rungs) and its paired bootstrap difference of AUROC against the reference.

    Args:
        results: the run's results document (rows per method and OOD set, ``"average"`` rows).
        scores: per-sample scores ``{method: {split: scores}}`` (higher = more OOD).
        iou: mask IoU per method spec or crop kind (``"crop"``, ``"oracle-crop"``), None where it does not apply.
        ood: the OOD sets in order.
        n_boot: bootstrap replicates.
        seed: seed of the resampling.
        tuned: the spec of the token rung whose localisation was chosen on held-out IND training images.
    Returns:
        ``{"reference", "sets", "rungs": [{"method", "label", "oracle", "auroc": {set: v}, "fpr95": {...},
        "mask_iou", "diff": {set: {"diff", "low", "high"}}}]}``.
    """
    from tagood.bench.intervals import paired_difference

    by = {(r["method"], r["ood"]): r for r in results["rows"]}
    image = [m for m in IMAGE_METHODS if (m, "average") in by]
    reference = max(image, key=lambda m: by[m, "average"]["auroc"])
    sets = [*ood, "average"]
    out_rows = []
    for rung in rungs(list(scores), reference, tuned):
        row: dict[str, Any] = {"method": rung.method, "label": rung.label, "oracle": rung.oracle,
                               "auroc": {s: by[rung.method, s]["auroc"] for s in sets},
                               "fpr95": {s: by[rung.method, s]["fpr95"] for s in sets},
                               "mask_iou": iou.get(rung.crop) if rung.crop else iou.get(rung.method)}
        if rung.method != reference:
            d = paired_difference(scores[rung.method], scores[reference], n_boot=n_boot, seed=seed)
            row["diff"] = {s: {k: d[s]["auroc"][k] for k in ("diff", "low", "high")} for s in sets}
        out_rows.append(row)
    return {"reference": reference, "sets": sets, "rungs": out_rows}


def ladder_markdown(doc: Mapping[str, Any]) -> str:
    """The ladder table as Markdown: rung, AUROC (average, then per set), average FPR95, mask IoU, and the paired
    AUROC difference against the reference with its 95% interval (average)."""
    sets = [s for s in doc["sets"] if s != "average"]
    head = (["rung", "AUROC avg"] + [f"AUROC {s}" for s in sets] + ["FPR95 avg"] + [f"FPR95 {s}" for s in sets]
            + ["mask IoU", f"Δ AUROC avg vs {doc['reference']} [95% CI]"])
    lines = ["| " + " | ".join(head) + " |", "|" + "|".join(["---"] + ["---:"] * (len(head) - 1)) + "|"]
    for r in doc["rungs"]:
        iou = "–" if r["mask_iou"] is None else f"{100 * r['mask_iou']:.1f}"
        d = r.get("diff", {}).get("average")
        diff = "–" if d is None else f"{d['diff']:+.2f} [{d['low']:+.2f}, {d['high']:+.2f}]"
        cells = ([f"{r['label']} (`{r['method']}`)", f"{r['auroc']['average']:.2f}"] + [f"{r['auroc'][s]:.2f}" for s in sets]
                 + [f"{r['fpr95']['average']:.2f}"] + [f"{r['fpr95'][s]:.2f}" for s in sets] + [iou, diff])
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n\n" + ladder_note(doc) + "\n"


def ladder_note(doc: Mapping[str, Any]) -> str:
    """The ladder's closing note, from its rows: whether a rung that reads no ground truth at test time beats the
    reference on the average AUROC with a paired interval that excludes 0 (and on which sets), else how far the best
    such rung gets as a share of the oracle crop's gain (the reference detector on oracle crops)."""
    ref = doc["reference"]
    plain = [r for r in doc["rungs"] if not r["oracle"] and "diff" in r]
    if not plain:
        return "No rung without ground truth was scored."
    best = max(plain, key=lambda r: r["diff"]["average"]["diff"])
    d = best["diff"]["average"]
    if d["low"] > 0:
        sets = [s for s in doc["sets"] if s != "average" and best["diff"][s]["low"] > 0]
        where = ", ".join(f"`{s}`" for s in sets) if sets else "no single set on its own"
        return (f"**Without ground truth at test time, `{best['method']}` beats `{ref}` on the average AUROC** "
                f"({d['diff']:+.2f} [{d['low']:+.2f}, {d['high']:+.2f}]); its interval excludes 0 on {where}.")
    oracle = next((r for r in doc["rungs"] if r["method"] == f"oracle-crop:{ref}"), None)
    text = (f"No rung without ground truth at test time beats `{ref}` on the average AUROC with an interval that "
            f"excludes 0; the best, `{best['method']}`, differs by {d['diff']:+.2f} [{d['low']:+.2f}, {d['high']:+.2f}]")
    if oracle is not None and oracle["diff"]["average"]["diff"] > 0:
        share = d["diff"] / oracle["diff"]["average"]["diff"]
        text += (f", {100 * share:.0f}% of the oracle crop's gain (`{oracle['method']}`: "
                 f"{oracle['diff']['average']['diff']:+.2f})")
    return text + "."
