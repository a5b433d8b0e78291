"""The benchmark runner: extract every split once into the feature cache, fit the IND linear head,
fit and score every detector on the same features, compute the metrics, write the results.

It reads the validated :class:`tagood.bench.schema.BenchConfig`; each split builds its own image source. Before
anything is extracted, every detector checks its options against the IND training split's size
(``Detector.check_data``: e.g. ``knn`` with ``k`` above the number of training images fails at once). The IND
head and its logits come from the same library calls a Python user makes (:func:`tagood.detectors.head.fit_head`,
:func:`tagood.detectors.head.with_head_logits`), so ``tagood.create(m).fit(train, Context(head=head))`` scores
what ``tagood bench`` scores.

Scores follow the project convention (higher = more OOD); metrics are those of
:func:`tagood.metrics.ood_metrics`, reported in percent.

Under torchrun (``torchrun --nproc-per-node N -m tagood bench ...``, :mod:`tagood.runtime.distributed`) every rank
extracts its part of each split into the shared cache, the projector trains with DDP, and every detector's
scores are split across the ranks and gathered in order (:func:`tagood.runtime.distributed.score`), so every rank
holds the same results; only rank 0 writes the run folder (results, scores, ``run.log``, vocabularies). The IND
head and every detector whose fit runs no collective are fitted on rank 0 alone and their fitted state broadcast
(:func:`tagood.detectors.base.fit_once`): the other ranks load of the training split only what the detectors that
fit on every rank read (TagOOD's projector family: tokens, tag maps, labels), never its pooled features for the
head. Each rank records its peak resident memory per stage (``RunState.peak_rss``, logged).
"""

from __future__ import annotations

import logging
import os
import platform
import shlex
import subprocess
import sys
import time
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np

from tagood import detectors as det_registry
from tagood._version import __version__
from tagood.backbones.factory import build_backbone, build_dual_encoder, tagger_context
from tagood.bench.config import check_ind_splits
from tagood.bench.requirements import runnable
from tagood.bench.schema import BenchConfig
from tagood.bench.scores import SCORES_FILE, metric_rows, save_scores
from tagood.cache import CacheReader, heavy_fields
from tagood.core.context import Context
from tagood.core.featureset import FeatureSet
from tagood.data.source import ImageSource
from tagood.errors import ConfigError
from tagood.extract import entry_images, extract_split
from tagood.runtime import distributed, memory, threads

log = logging.getLogger(__name__)

#: Inputs that come straight from the backbone into the cache.
_BACKBONE_FIELDS = ("features", "tokens", "tag_probs", "tag_attention", "block_norms")
_VLM_FIELDS = ("image_embeds", "patch_embeds")


@dataclass
class Split:
    """One split of a benchmark: its source, its cache entry and its feature set."""

    name: str
    source: ImageSource
    reader: CacheReader | None
    features: FeatureSet
    seconds: float = 0.0


@dataclass
class RunState:
    """What a run has built so far (handy for tests and notebooks)."""

    config: BenchConfig
    backbone: Any = None
    splits: dict[str, Split] = field(default_factory=dict)
    context: Context | None = None
    id_accuracy: float | None = None
    timings: dict[str, float] = field(default_factory=dict)
    errors: dict[str, str] = field(default_factory=dict)
    scores: dict[str, dict[str, np.ndarray]] = field(default_factory=dict)
    #: the fitted detectors by method spec
    fitted: dict[str, Any] = field(default_factory=dict)
    #: test-time methods' streams (seed, ratio, order) by method spec
    streams: dict[str, Any] = field(default_factory=dict)
    #: the IND training samples of the vision-language methods (their few-shot picks), dual-encoded
    vlm_train: FeatureSet | None = None
    #: decomposition diagnostics of the tag-based methods (:mod:`tagood.bench.diagnostics`)
    diagnostics: list[dict[str, Any]] = field(default_factory=list)
    #: run-report warnings (logged, in results.json ``meta.warnings`` and in results.md)
    warnings: list[str] = field(default_factory=list)
    #: this rank's peak resident memory (bytes) per stage: ``extract``, ``head``, then each method spec
    #: (:func:`tagood.runtime.memory.peak_rss`, reset before each stage where the platform allows)
    peak_rss: dict[str, int] = field(default_factory=dict)
    #: the bytes this rank read from storage (not the page cache) per stage, where the platform counts them
    #: (:func:`tagood.runtime.memory.storage_reads`); a stage's inputs that outgrow the page cache show here
    storage_read: dict[str, int] = field(default_factory=dict)
    #: the storage-read counter at the start of the current stage
    read_mark: int | None = None
    #: the fields of each split this rank loaded (under torchrun, ranks other than 0 load of the training split only
    #: what the detectors fitting on every rank read)
    loaded_fields: dict[str, list[str]] = field(default_factory=dict)


def _needed_fields(dets: list[det_registry.Detector], backbone: Any) -> tuple[list[str], list[str], bool]:
    """(fields every split needs, fields the pseudo-OOD split needs, whether images are needed)."""
    need: set[str] = set()
    pseudo: set[str] = set()
    images = False
    for d in dets:
        req = set(d.requires) | set(d.fit_requires or ())
        for r in req:
            if r == "logits":
                need.add("features")
            elif r == "images":
                images = True
            elif r in _BACKBONE_FIELDS:
                need.add(r)
            elif r in _VLM_FIELDS:
                need.update(("features", "tokens"))
        if "pseudo_ood" in d.context_requires:
            pseudo.update(r for r in d.requires if r in _BACKBONE_FIELDS)
    need.add("features")  # the linear head and the reported IND accuracy
    have = set(backbone.outputs)
    missing = sorted((need | pseudo) - have)
    if missing:
        raise ConfigError(f"backbone {backbone.id} cannot provide {missing}; drop the detectors that need them")
    return sorted(need), sorted(pseudo), images


def _fit_fields(dets: list[det_registry.Detector]) -> set[str]:
    """The cache fields the fits of ``dets`` read from the training split."""
    need: set[str] = set()
    for d in dets:
        for r in set(d.fit_requires if d.fit_requires is not None else d.requires):
            if r == "logits":
                need.add("features")
            elif r in _BACKBONE_FIELDS:
                need.add(r)
            elif r in _VLM_FIELDS:
                need.update(("features", "tokens"))
    return need


def _here(dets: list[det_registry.Detector]) -> list[det_registry.Detector]:
    """The detectors this rank fits itself: all of them on rank 0 (and in a world of 1); on the other ranks of a
    torchrun world only those that fit on every rank (:func:`tagood.detectors.base.fits_once` False)."""
    from tagood.detectors.base import fits_once

    if distributed.world().is_main:
        return dets
    return [d for d in dets if not fits_once(d)]


def _reads(split: str, here: list[det_registry.Detector], what: str) -> bool:
    """Whether this rank's split ``split`` needs input ``what``: always for the scored splits; for the training split
    only when a detector this rank fits reads it at fit."""
    return split != "train" or any(what in (d.fit_requires if d.fit_requires is not None else d.requires) for d in here)


def _mark(state: RunState, stage: str) -> None:
    """Record this rank's peak resident memory and storage reads of ``stage`` and reset the marks for the next one."""
    state.peak_rss[stage] = memory.peak_rss()
    reads = memory.storage_reads()
    if reads is not None and state.read_mark is not None:
        state.storage_read[stage] = reads - state.read_mark
    w = distributed.world()
    log.info("rank %d of %d: peak RSS of %s %.0f MiB%s", w.rank, w.size, stage, state.peak_rss[stage] / 2**20,
             f", read from storage {state.storage_read[stage] / 2**20:.0f} MiB" if stage in state.storage_read else "")
    memory.reset_peak()
    state.read_mark = reads


def prepare(cfg: BenchConfig, cache_root: str | Path | None = None, device: str = "cpu", progress: bool = True,
            methods: list[str] | None = None, backbone: Any = None) -> tuple[RunState, list[det_registry.Detector]]:
    """Build sources, detectors and the backbone; extract all splits; fit the head; build the context.

    ``device``: one torch device; under torchrun ``cuda`` means this rank's ``cuda:LOCAL_RANK``
    (:func:`tagood.runtime.distributed.local_device`). Progress is shown by rank 0 only."""
    state = RunState(cfg)
    specs = methods or cfg.methods
    dets = [create_detector(m, cfg) for m in specs]
    dets, left_out = runnable(dets, cfg.options.dual_encoder, _is_vlm)  # an optional package missing: one line, the rest run
    if left_out:
        log.warning(left_out)
        state.warnings.append(left_out)
    device = local_device_of(device)
    progress = progress and distributed.world().is_main
    sources = {name: split.source(cfg.base_dir, cfg.seed, name=name) for name, split in cfg.splits().items()}
    check_data(dets, sources["train"])
    sources["test"] = check_ind_splits(sources["train"], sources["test"])  # 2+ IND classes; test labels by class name
    t0 = time.perf_counter()
    state.backbone = backbone or build_backbone(cfg.backbone_spec(), device=device, base_dir=cfg.base_dir)
    state.timings["load_backbone_s"] = time.perf_counter() - t0
    fields, pseudo_fields, need_images = _needed_fields(dets, state.backbone)
    if pseudo_fields and cfg.pseudo_ood is not None:
        sources["pseudo-ood"] = cfg.pseudo_ood.source(sources[cfg.pseudo_ood.of], cfg.seed)
    here = _here(dets)
    here_fields = _fit_fields(here)  # what this rank's own fits read of the training split
    main = distributed.world().is_main  # rank 0 (or one process) fits the head and loads every field
    memory.reset_peak()
    state.read_mark = memory.storage_reads()

    for name, src in sources.items():
        t = time.perf_counter()
        f = pseudo_fields if name == "pseudo-ood" else fields
        reader = extract_split(src, state.backbone, cache_root, split=f"{cfg.name}-{name}", fields=f,
                               batch_size=cfg.batch_size, progress=progress, shard_size=cfg.options.shard_size)
        if name in ("train", "pseudo-ood") and not main:  # a rank other than 0: its own fits' fields only
            f = [x for x in f if x in here_fields]
            if name == "pseudo-ood" and not any("pseudo_ood" in d.context_requires for d in here):
                f = []
        stream = heavy_fields(reader, f, stream_above_gb(cfg)) if name != "pseudo-ood" else []
        fs = reader.to_featureset(f, name=name, stream=stream)
        state.loaded_fields[name] = list(f)
        if need_images and name != "pseudo-ood" and (main or _reads(name, here, "images")):
            fs.images = entry_images(reader, src, state.backbone)
        # decompose=oracle (a diagnostic): the true object tokens
        if any(getattr(d, "oracle", False) for d in (here if name == "train" else dets)):
            from tagood.bench.diagnostics import with_oracle_tokens

            fs = with_oracle_tokens(fs, src, reader.indices, state.backbone)
        state.splits[name] = Split(name, src, reader, fs, time.perf_counter() - t)
        state.timings[f"extract_{name}_s"] = state.splits[name].seconds
    if not main:
        log.info("rank %d: the IND head and %d of %d detectors are fitted on rank 0 and broadcast; of the training "
                 "split this rank loaded %s", distributed.world().rank, len(dets) - len(here), len(dets),
                 state.loaded_fields["train"] or "only the labels")
    _mark(state, "extract")

    from tagood.detectors.head import Classifier, fit_head, head_accuracy, with_head_logits

    t = time.perf_counter()
    train = state.splits["train"].features
    class_names = sources["train"].class_names
    # fitted once, on rank 0, and broadcast (a LinearHead: two small arrays and the class names)
    head = distributed.broadcast(fit_head(train, class_names, seed=cfg.seed, device=device)
                                 if distributed.world().is_main else None)
    assert head is not None
    state.timings["fit_head_s"] = time.perf_counter() - t
    test = state.splits["test"].features
    assert test.features is not None and test.labels is not None  # "features" is always extracted
    state.id_accuracy = 100.0 * head_accuracy(head, test.features, test.labels)
    log.info("IND accuracy of the linear head: %.2f%%", state.id_accuracy)
    fit_logits, _ = _needs_logits(here)
    _, score_logits = _needs_logits(dets)
    for name, sp in state.splits.items():
        # IND-head logits only where a detector reads them: on ImageNet the train split's would be
        # 1.28M x 1000 float32 (5 GB) that no built-in detector uses
        if (fit_logits if name == "train" else score_logits) and sp.features.features is not None:
            sp.features = with_head_logits(sp.features, head)

    ctx = Context(head=head, class_names=class_names, device=device, seed=cfg.seed, **tagger_context(state.backbone, cache_root))
    if "pseudo-ood" in state.splits:
        ctx.pseudo_ood = state.splits["pseudo-ood"].features
    if need_images:
        ctx.model = Classifier(state.backbone, head, device)
    if any(set(d.requires) & set(_VLM_FIELDS) for d in dets):
        t = time.perf_counter()
        dual_spec = cfg.options.dual_encoder
        if (dual_spec or {}).get("name", "offline") == "offline" and state.backbone.id != "efficientnet-lite0":
            raise ConfigError(f"the offline dual encoder of the vision-language methods reads EfficientNet-Lite0 features, "
                              f"not {state.backbone.id}'s; run those methods with backbone efficientnet-lite0, or give a "
                              f"CLIP dual encoder (options.dual_encoder = {{name = \"clip\", path = ...}})")
        dual = build_dual_encoder(dual_spec, state.backbone, device=device)
        ctx.dual_encoder = dual
        vlm_here = [d for d in here if _is_vlm(d)]
        if vlm_here:  # on a rank other than 0 only for a vision-language method that fits on every rank
            state.vlm_train = _vlm_train(state.splits["train"], [d for d in dets if _is_vlm(d)], cfg.seed)
            dual.attach(state.vlm_train, state.splits["train"].source)
        for name, sp in state.splits.items():
            if name in ("pseudo-ood", "train"):  # the VLM methods train on state.vlm_train
                continue
            dual.attach(sp.features, sp.source)
        state.timings["dual_encoder_s"] = time.perf_counter() - t
    state.context = ctx
    _mark(state, "head")
    return state, dets


def _needs_logits(dets: list[det_registry.Detector]) -> tuple[bool, bool]:
    """(some detector reads IND-head logits of the training split at fit, some reads them when scoring)."""
    fit = any("logits" in (d.fit_requires if d.fit_requires is not None else d.requires) for d in dets)
    return fit, any("logits" in d.requires for d in dets)


def _is_vlm(d: det_registry.Detector) -> bool:
    return bool(set(d.requires) & set(_VLM_FIELDS))


def _vlm_train(train: Split, vlm: list[det_registry.Detector], seed: int) -> FeatureSet:
    """The IND training samples the vision-language methods use: the union of each method's seeded
    few-shot pick (``shots``/``seed``, as the method itself draws it; one per class for zero-shot
    methods). Only these get a second (dual-encoder) pass, not the whole train split (1.28M on ImageNet)."""
    from tagood.detectors.vlm.base import few_shot_indices

    fs = train.features
    assert fs is not None and fs.labels is not None
    picks = [few_shot_indices(fs.labels, d.shots, getattr(d, "seed", seed)) for d in vlm if hasattr(d, "shots")]
    idx = np.unique(np.concatenate(picks)) if picks else few_shot_indices(fs.labels, 1, seed)
    log.info("vision-language methods train on %d of %d IND training images (their few-shot picks)", len(idx), len(fs))
    return fs.subset(idx)


def create_detector(spec: str, cfg: BenchConfig) -> det_registry.Detector:
    """``create(spec)`` with the benchmark's ``options.method_defaults[name]`` as defaults (the spec's own options win)."""
    base, opts = det_registry.parse_name(spec)
    defaults = cfg.options.method_defaults.get(base, {})
    return det_registry.create(spec, **{k: v for k, v in defaults.items() if k not in opts})


def _ind_counts(train: ImageSource) -> tuple[int, int]:
    """(IND training images, IND classes with a training image) of the train split's source."""
    labels = {s.label for s in train.samples if s.label >= 0}
    return len(train), len(labels)


def check_data(dets: list[det_registry.Detector], train: ImageSource) -> None:
    """Let every detector refuse, before any extraction, options the IND training split cannot satisfy
    (``Detector.check_data(n_train, n_classes)``; e.g. ``knn`` with ``k`` above the training count raises
    :class:`tagood.detectors.options.OptionError`)."""
    n_train, n_classes = _ind_counts(train)
    for d in dets:
        d.check_data(n_train, n_classes)


def local_device_of(device: str) -> str:
    """This process's device (``cuda`` -> ``cuda:LOCAL_RANK`` under torchrun), joining the torchrun world's process
    group first when there is one (gloo on CPU, nccl on CUDA)."""
    device = distributed.local_device(device)
    if distributed.world().distributed:
        distributed.init(device)
    return device


def stream_above_gb(cfg: BenchConfig) -> float | None:
    """The config's ``options.stream_above_gb`` in GiB, ``None`` for never (0: always stream)."""
    v = cfg.options.stream_above_gb
    return None if v == "never" else float(v)


def run(cfg: BenchConfig, out_dir: str | Path | None = None, cache_root: str | Path | None = None, device: str = "cpu",
        progress: bool = True, methods: list[str] | None = None, backbone: Any = None) -> tuple[dict[str, Any], RunState]:
    """Run a benchmark end to end; returns ``(results, state)``. With ``out_dir``: writes the result files, every
    log record of the run to ``out_dir/run.log`` (plain lines, :func:`tagood.runtime.logs.run_log`) and the IND
    vocabulary of each tag-based method to ``out_dir/vocabulary-<method>.tsv`` (the format ``vocab=FILE`` reads).
    The run folder is written into a fresh sibling folder and swapped in for ``out_dir`` as a whole at the end
    (:func:`tagood.bench.report.writers.run_folder`): after an error ``out_dir`` is as it was, never a mix of two
    runs; a folder holding files a run does not write is refused before any work.
    Under torchrun only rank 0 writes ``out_dir``; every rank returns the same metric rows (the decomposition
    diagnostics are computed by rank 0 alone)."""
    if out_dir is None or not distributed.world().is_main:
        return _run(cfg, None, cache_root, device, progress, methods, backbone)
    import sys

    from tagood.bench.report.writers import run_folder
    from tagood.runtime.logs import run_log

    with run_folder(out_dir) as stage, run_log(stage / "run.log", fresh=True):
        log.info("tagood %s: %s", __version__, " ".join(sys.argv))
        results, state = _run(cfg, stage, cache_root, device, progress, methods, backbone)
        _write_vocabularies(state, stage)
    return results, state


def _write_vocabularies(state: RunState, out_dir: Path) -> None:
    """``vocabulary-<method>.tsv`` (class, class_name, tag_id, tag_name, frequency) of each fitted tag-based method."""
    from tagood.bench.report.plots import safe_name

    for spec, d in state.fitted.items():
        vocab = getattr(d, "vocab", None)
        if vocab is not None and callable(getattr(vocab, "save", None)):
            p = vocab.save(out_dir / f"vocabulary-{safe_name(spec)}.tsv")
            log.debug("%s: IND vocabulary written to %s", spec, p)


def _run(cfg: BenchConfig, out_dir: str | Path | None, cache_root: str | Path | None, device: str,
         progress: bool, methods: list[str] | None, backbone: Any) -> tuple[dict[str, Any], RunState]:
    from tagood.bench.report import writers as report
    from tagood.detectors.base import fit_once

    t_all = time.perf_counter()
    state, dets = prepare(cfg, cache_root, device, progress, methods, backbone)
    ctx = state.context
    assert ctx is not None
    train = state.splits["train"].features
    test = state.splits["test"].features
    rows: list[dict[str, Any]] = []
    for k, d in enumerate(dets, 1):
        spec = getattr(d, "spec", d.name)
        log.info("method %d/%d: %s (fit, then score %d split(s))", k, len(dets), spec, 1 + len(cfg.ood))
        t = time.perf_counter()
        try:
            # rank 0 fits and broadcasts the state, unless the fit runs on every rank (TagOOD's DDP projector)
            fit_once(d, state.vlm_train if _is_vlm(d) and state.vlm_train is not None else train, ctx)
            fit_error = None
        except Exception as e:  # one broken detector must not lose the others' results
            log.exception("detector %s failed", spec)
            fit_error = f"{type(e).__name__}: {e}"
        # every rank skips a detector that failed to fit on any rank (the scoring below gathers across ranks)
        failed = [err for err in distributed.all_gather(fit_error) if err is not None]
        if failed:
            state.errors[spec] = fit_error or f"failed on another rank: {failed[0]}"
            continue
        t_fit = time.perf_counter() - t
        try:
            if getattr(d, "test_time", False):
                per, new_rows = _score_stream(d, spec, state)
            else:  # split across the ranks of a torchrun world, gathered in order (the identity on one process)
                per = {"test": distributed.score(d, test)}
                for name in cfg.ood:
                    per[name] = distributed.score(d, state.splits[name].features)
                new_rows = metric_rows(spec, per["test"], {name: per[name] for name in cfg.ood})
            t_score = time.perf_counter() - t - t_fit
        except Exception as e:  # one broken detector must not lose the others' results
            log.exception("detector %s failed", spec)
            state.errors[spec] = f"{type(e).__name__}: {e}"
            continue
        if getattr(d, "oracle", False):  # a diagnostic that reads ground truth: marked in every report
            new_rows = [{**r, "oracle": True} for r in new_rows]
        if per is not None:
            state.scores[spec] = per
        state.fitted[spec] = d
        state.timings[f"{spec}_fit_s"] = t_fit
        state.timings[f"{spec}_score_s"] = t_score
        rows += new_rows
        log.info("%s done in %.1fs", spec, time.perf_counter() - t)
        _mark(state, spec)
    if distributed.world().is_main:  # the report's diagnostics: rank 0 alone (no collectives inside)
        _diagnose(state, list(state.fitted.items()))
    state.timings["total_s"] = time.perf_counter() - t_all
    results = report.build_results(rows, state.id_accuracy, _meta(state), state.diagnostics, cfg.options.ood_groups)
    if out_dir is not None:
        report.write_all(results, out_dir, title=f"{cfg.name} ({state.backbone.id})")
        save_scores(Path(out_dir) / SCORES_FILE, state.scores, {n: _sample_ids(state.splits[n]) for n in ["test", *cfg.ood]})
    return results, state


def _score_stream(d: det_registry.Detector, spec: str,
                  state: RunState) -> tuple[dict[str, np.ndarray] | None, list[dict[str, Any]]]:
    """A test-time detector (e.g. AdaNeg) scored on one seeded, shuffled stream of the IND test split and the OOD
    sets (:mod:`tagood.bench.stream`; ``options``: ``stream_id_ood_ratio``, default all samples;
    ``stream_mode``, default ``joint``). Returns per-split scores for ``scores.npz`` (``None`` when the stream
    holds a subsample, whose scores would not line up with the splits' sample ids) and its rows, marked
    ``"test_time": True``; the stream's order goes to ``meta.streams``."""
    from tagood.bench.stream import evaluate_stream

    cfg = state.config
    ratio = cfg.options.stream_id_ood_ratio
    sr = evaluate_stream(d, state.splits["test"].features, {n: state.splits[n].features for n in cfg.ood}, seed=cfg.seed,
                         id_ood_ratio=None if ratio is None else float(ratio), batch_size=int(getattr(d, "batch_size", 256)),
                         mode=cfg.options.stream_mode)
    state.streams[spec] = sr.to_json()
    complete = ratio is None and sr.mode == "joint"
    if not complete:
        log.info("%s: stream scores of a subsample / per-set streams are in results.json only, not in scores.npz", spec)
    return (sr.split_scores() if complete else None), [{**r, "test_time": True} for r in sr.rows(spec)]


def _diagnose(state: RunState, fitted: list[tuple[str, det_registry.Detector]]) -> None:
    """Decomposition diagnostics of the fitted tag-based detectors on the scored splits, and the
    no-tag warning (more than 5% of IND test images without a kept tag)."""
    from tagood.bench import diagnostics as dg

    tagged = [(spec, d) for spec, d in fitted if dg.is_tag_based(d)]
    if not tagged:
        return
    t = time.perf_counter()
    scored = [state.splits[n] for n in ["test", *state.config.ood]]
    splits = {sp.name: dg.SplitInput(sp.features, sp.source, sp.reader.indices if sp.reader is not None else None)
              for sp in scored if sp.features is not None}
    try:
        state.diagnostics = dg.diagnose(tagged, splits, state.backbone)
    except Exception as e:  # a diagnostics failure must not lose the run's results
        log.exception("decomposition diagnostics failed")
        state.errors["diagnostics"] = f"{type(e).__name__}: {e}"
        return
    state.timings["diagnostics_s"] = time.perf_counter() - t
    dg.log_summary(state.diagnostics)
    for w in dg.no_tag_warnings(state.diagnostics, {spec: dg.no_tag_rule(d) for spec, d in tagged}):
        log.warning(w)
        state.warnings.append(w)


def _sample_ids(sp: Split) -> list[str] | None:
    """The samples' file paths (or source identifiers), in the split's order."""
    if sp.features is not None and sp.features.paths is not None:
        return list(sp.features.paths)
    if sp.reader is not None:
        samples = sp.source.samples
        return [samples[int(i)].ident for i in sp.reader.indices]
    return None


def _versions() -> dict[str, str]:
    import importlib.metadata as md

    out = {"tagood": __version__, "python": platform.python_version()}
    for pkg in ("torch", "numpy", "onnxruntime", "safetensors", "transformers", "scikit-learn"):
        try:
            out[pkg] = md.version(pkg)
        except md.PackageNotFoundError:
            pass
    return out


def _command() -> str:
    """The command line of this run, as a user would type it (``tagood demo ...`` under the ``tagood`` command)."""
    argv = list(sys.argv)
    if argv and (Path(argv[0]).name == "tagood" or argv[0].endswith(("tagood/__main__.py", "tagood/cli/main.py"))):
        argv[0] = "tagood"
    return shlex.join(argv)


def _source_commit() -> str | None:
    """The git commit of the tagood source that ran (``+dirty`` with uncommitted changes), or None outside a git
    checkout (an installed wheel)."""
    src = Path(__file__).resolve().parents[1]
    try:
        head = subprocess.run(["git", "-C", str(src), "rev-parse", "HEAD"], capture_output=True, text=True,
                              timeout=10, check=True).stdout.strip()
        dirty = subprocess.run(["git", "-C", str(src), "status", "--porcelain", "--untracked-files=no", "--", "."],
                               capture_output=True, text=True, timeout=10, check=True).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return None
    return head + ("+dirty" if dirty else "") if head else None


def _meta(state: RunState) -> dict[str, Any]:
    bb = state.backbone
    return {
        "benchmark": state.config.name,
        # where the numbers come from: the docs' tables name them
        "command": _command(),
        "commit": _source_commit(),
        "date": datetime.now(UTC).isoformat(timespec="seconds"),
        "config": state.config.to_json(),
        "versions": _versions(),
        "backbone": {"id": bb.id, "weights_hash": bb.weights_hash, "transform": bb.transform_id},
        "timings": {k: round(v, 3) for k, v in state.timings.items()},
        # this process's peak resident memory per stage (extract, head, each method), MiB
        "peak_rss_mb": {k: round(v / 2**20, 1) for k, v in state.peak_rss.items()},
        # what each stage read from storage (page-cache hits excluded), MiB; empty where the platform does not count
        "storage_read_mb": {k: round(v / 2**20, 1) for k, v in state.storage_read.items()},
        "sizes": {n: len(sp.features) for n, sp in state.splits.items() if sp.features is not None},
        "failed_images": {n: sp.reader.failed for n, sp in state.splits.items() if sp.reader is not None and sp.reader.failed},
        "errors": state.errors,
        "streams": state.streams,
        "warnings": state.warnings,
        "streamed": {n: sorted(sp.features.streamed) for n, sp in state.splits.items()
                     if sp.features is not None and sp.features.streamed},
        "metric_conventions": {
            "fpr95": "FPR of OOD at 95% TPR of IND (IND positive; TagOOD/MCM/KNN papers)",
            "fpr95_ood_pos": "FPR of IND at 95% TPR of OOD (OOD positive; OpenOOD v1.5)",
            "score_sign": "higher = more OOD",
            "diagnostics": "fractions in [0, 1]; mask metrics micro-averaged over images with a kept tag and an object "
                           "token (see tagood.bench.diagnostics)",
        },
        "platform": platform.platform(),
        # CPU threads of this run, OpenMP's wait policy and the busy-machine probe (PASSIVE waits when busy):
        # float rounding depends on the thread budget
        "threads": {"budget": threads.budget(), "omp_wait_policy": os.environ.get("OMP_WAIT_POLICY", "default"),
                    "machine_busy": threads.machine_busy()},
    }
