"""Benchmark configurations: the built-in benchmarks, the ImageNet benchmark and TOML config files, each a
validated :class:`tagood.bench.schema.BenchConfig` (its keys are declared there, once).

A benchmark names an IND train split, an IND test split, one or more OOD sets, a backbone and
the detectors to score. A config file (TOML) looks like::

    name = "my-benchmark"
    methods = ["msp", "energy", "knn", "vim", "tagood"]
    seed = 0
    [backbone]
    name = "efficientnet-lite0"
    [train]
    type = "folder"            # or "list", "fashion_mnist", "mnist5k", "digits", ...
    root = "data/train"        # relative paths are relative to the config file
    per_class = 200            # optional seeded per-class subsample
    [test]
    type = "folder"
    root = "data/val"
    [ood.textures]
    type = "folder"
    root = "data/dtd"
"""

from __future__ import annotations

import copy
import tomllib
from pathlib import Path
from typing import Any

from tagood.bench.methods import CLASSIC, IMAGENET_METHODS, TAGOOD, TAGOOD_SWEEP, VLM, default_methods
from tagood.bench.schema import BenchConfig, validate_config
from tagood.core.validation import suggest
from tagood.data.source import ImageSource
from tagood.errors import ConfigError

__all__ = ["BUILTIN", "CLASSIC", "IMAGENET_METHODS", "KRNFT_PAPER_DEFAULTS", "TAGOOD", "TAGOOD_SWEEP", "VLM",
           "VLM_DEMO_DEFAULTS", "VLM_QUICK_DEFAULTS", "BenchConfig", "ConfigError", "builtin", "check_ind_splits",
           "default_methods", "imagenet", "load_config"]

#: Hyperparameter defaults of the embedded benchmarks (offline dual encoder), set in
#: ``options.method_defaults`` and recorded in results.json (``meta.config.options``); an option
#: in a method spec (``neglabel[n_neg=5000]``) wins. NegLabel, AdaNeg and KR-NFT mine their negative labels
#: from a seeded 5,000-word subset of the ~136k WordNet nouns and adjectives (keeping 1,000, the same 20%
#: share as before) instead of all of them (keeping 10,000); CSP draws 5,000 from its two pools. The first
#: run encodes these prompts with MiniLM (~550 prompts/s on 2 cores, compute-bound: ~9 s per method) instead
#: of 136k (~300 s, measured); later runs read the cache. A CPU time budget, not a tuned value: until
#: 30 Nov 2026 it was 10,000 (keeping 2,000), which made the two first-run encodings ~30 s of a ~165 s demo
#: (issue 13's target is 150 s). For the same reason KR-NFT cuts 16 random-resized crops per few-shot image and
#: takes the top / bottom 4 (the same quarter each as the 32 / 8 / 8 before; the paper's code: 128 / 32 / 32):
#: 1,536 crop forwards instead of 3,072 (about half of its ~20 s). docs/performance.md (the candidate budget) compares the
#: settings
#: on held-out training data (``benchmarks/vlm_budget_heldout.py``) and on both embedded benchmarks. ``preset``
#: names KR-NFT's preset in results.json (a spec's own ``krnft[preset=paper]`` wins; the other values still apply).
VLM_DEMO_DEFAULTS: dict[str, dict[str, Any]] = {
    "neglabel": {"max_candidates": 5000, "n_neg": 1000},
    "csp": {"max_candidates": 5000},  # keeps CSP's 15% of each pool: ~750 labels
    "adaneg": {"max_candidates": 5000, "n_neg": 1000},  # NegLabel's negatives
    "krnft": {"preset": "default", "max_candidates": 5000, "n_neg": 1000, "n_crops": 16, "k_in": 4, "k_out": 4},
}
#: ``--quick`` (CI): smaller still, fewer crops and epochs.
VLM_QUICK_DEFAULTS: dict[str, dict[str, Any]] = {
    "neglabel": {"max_candidates": 2000, "n_neg": 500},
    "csp": {"max_candidates": 2000},
    "adaneg": {"max_candidates": 2000, "n_neg": 500},
    "krnft": {"preset": "default", "max_candidates": 2000, "n_neg": 500, "n_crops": 8, "k_in": 2, "k_out": 2,
              "epochs": 3},
    "locoop": {"epochs": 5},
}


def _fashion(quick: bool) -> BenchConfig:
    n_train, n_test, n_ood = (60, 40, 160) if quick else (200, 50, 300)
    return BenchConfig(
        name="fashion", benchmark="fashion", quick=quick,
        train={"type": "fashion_mnist", "split": "train", "classes": [0, 1, 2, 3, 4, 5], "per_class": n_train},
        test={"type": "fashion_mnist", "split": "test", "classes": [0, 1, 2, 3, 4, 5], "per_class": n_test},
        ood={
            "fashion-near": {"type": "fashion_mnist", "split": "test", "classes": [6, 7, 8, 9], "per_class": n_ood // 4,
                             "relabel": False},
            "mnist": {"type": "mnist5k", "n": n_ood},
            "digits": {"type": "digits", "n": n_ood},
        },
        methods=default_methods(),
        options={"method_defaults": copy.deepcopy(VLM_QUICK_DEFAULTS if quick else VLM_DEMO_DEFAULTS)},
        pseudo_ood={"type": "jigsaw", "of": "train", "n": 120 if quick else 300},
    )


def _composed(name: str, spec: dict[str, Any], ood: tuple[str, ...], quick: bool) -> BenchConfig:
    """A built-in benchmark whose splits are the parts of one composed data set (``spec["type"]``)."""
    return BenchConfig(
        name=name, benchmark=name, quick=quick,
        train={**spec, "part": "train"},
        test={**spec, "part": "test"},
        ood={s: {**spec, "part": s} for s in ood},
        methods=default_methods(),
        options={"method_defaults": copy.deepcopy(VLM_QUICK_DEFAULTS if quick else VLM_DEMO_DEFAULTS)},
        pseudo_ood={"type": "jigsaw", "of": "train", "n": 120 if quick else 300},
    )


def _fashion_clutter(quick: bool) -> BenchConfig:
    n_train, n_test, n_ood = (60, 40, 160) if quick else (200, 50, 300)
    spec = {"type": "fashion_clutter", "n_train_per_class": n_train, "n_test_per_class": n_test, "n_ood": n_ood}
    return _composed("fashion-clutter", spec, ("clutter-near", "clutter-only"), quick)


def _scenes(quick: bool) -> BenchConfig:
    """Real-photo scenes (issue 10; :func:`tagood.data.scenes.scene_splits`): IND = 6 stamp groups (mammal,
    bird, fish, fruit, musical instrument, vehicle) on photo backgrounds with 1-4 distractors; OOD =
    scene-near (insect / vegetable / flower / tool stamps), scene-clutter (distractors only), scene-far
    (tinted Fashion-MNIST items). Sizes as ``fashion``: 200 train / 50 test per class, 300 per OOD set."""
    n_train, n_test, n_ood = (60, 40, 160) if quick else (200, 50, 300)
    spec = {"type": "scenes", "n_train_per_class": n_train, "n_test_per_class": n_test, "n_ood": n_ood}
    return _composed("scenes", spec, ("scene-near", "scene-clutter", "scene-far"), quick)


#: KR-NFT on ImageNet: its ``paper`` preset (:data:`tagood.detectors.vlm.krnft.PRESETS`): the paper's few-shot
#: setting (4 shots, 128 crops, top / bottom 32) and the public training script where the paper is silent (3 epochs,
#: AdamW lr 1e-5 constant, weight decay 0.01, meta-network hidden 64, its prompts, 10,500 negatives mined by
#: position, crops of the original image with flips, grouped negatives, its loss), its schedule defects fixed.
KRNFT_PAPER_DEFAULTS: dict[str, Any] = {"preset": "paper"}


def imagenet(root: str | Path, backbone: dict[str, Any], train_per_class: int | None = None, quick: bool = False,
             clip: str | Path | None = None) -> BenchConfig:
    """The TagOOD paper's benchmark: IND ImageNet-1K (train -> fit, val -> test); OOD iNaturalist, SUN,
    Places, Textures, OpenImage-O, ImageNet-O and OpenOOD v1.5's near-OOD SSB-hard, NINCO (those present
    under ``root``; see tagood.data.imagenet). ``options.ood_groups`` names the group averages the sets
    allow (OpenOOD v1.5 near / far, MOS 4-set; :func:`tagood.bench.groups.imagenet_groups`).

    The vision-language methods (``VLM``) join when a CLIP is at hand: the tagger itself
    (``backbone = {"name": "clip", ...}``) or ``clip`` (a CLIP directory beside a RAM tagger)."""
    from tagood.data.imagenet import available_ood_sets

    root = Path(root).expanduser().resolve()
    sets = available_ood_sets(root)
    if not sets:
        raise ConfigError(f"no OOD set found under {root}; see `tagood.data.imagenet` for the expected layout")
    train: dict[str, Any] = {"type": "imagenet", "root": str(root), "part": "train"}
    if train_per_class or quick:
        train["per_class"] = int(train_per_class or 2)
    spec = lambda part: {"type": "imagenet", "root": str(root), "part": part}  # noqa: E731
    from tagood.bench.groups import imagenet_groups

    methods: list[str] = list(IMAGENET_METHODS)
    options: dict[str, Any] = {}
    groups = imagenet_groups(sets)
    if groups:
        options["ood_groups"] = groups
    if clip is None and backbone.get("name") == "clip":
        clip = backbone["path"]
    if clip is not None:  # the vision-language methods run on CLIP (paper defaults)
        methods += VLM
        options["dual_encoder"] = {"name": "clip", "path": str(clip)}
        options["method_defaults"] = {"krnft": dict(KRNFT_PAPER_DEFAULTS)}
    return BenchConfig(name="imagenet", train=train, test=spec("val"), ood={s: spec(s) for s in sets},
                       methods=methods, backbone=backbone, batch_size=32, options=options)


BUILTIN = {"scenes": _scenes, "fashion": _fashion, "fashion-clutter": _fashion_clutter}


def builtin(name: str, quick: bool = False) -> BenchConfig:
    """A built-in benchmark: ``scenes``, ``fashion`` or ``fashion-clutter`` (``quick`` = a smaller subset for CI)."""
    if name not in BUILTIN:
        raise ConfigError(f"unknown benchmark '{name}'; built-in: {', '.join(sorted(BUILTIN))} "
                          "(or pass a config file to `tagood bench`)")
    return BUILTIN[name](quick)


def load_config(path: str | Path) -> BenchConfig:
    """Read a TOML benchmark config into the validated :class:`~tagood.bench.schema.BenchConfig` the runner reads.

    Relative paths in it are relative to the file; ``name`` defaults to the file's name. ``benchmark = "<built-in>"``
    starts from that built-in benchmark (``quick = true``: its CI-sized variant) and the file's other top-level keys
    replace its keys. The whole config -- every key, every split type with its keys, the backbone, ``pseudo_ood``,
    ``options`` and each method spec with its options -- is checked once, before anything runs: a misspelt key gets
    a "did you mean", a value of the wrong type or out of range one :class:`ConfigError` naming the file and the
    key (never quoting the file's contents).

    Args:
        path: the TOML file.

    Returns:
        The validated config, with ``base_dir`` = the file's folder.

    Raises:
        ConfigError: the file is missing, not TOML, or a key is unknown or invalid.
    """
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"config file {path} does not exist" if not path.exists() else f"config {path} is not a file")
    try:
        d = tomllib.loads(path.read_text(encoding="utf-8"))
    except UnicodeDecodeError:
        raise ConfigError(f"{path}: not a UTF-8 text file; a benchmark config is TOML (see `tagood bench --help`)") from None
    except tomllib.TOMLDecodeError as e:  # its message gives the line and column, not the line's text
        raise ConfigError(f"{path}: invalid TOML: {e}") from e
    if "benchmark" in d:  # `benchmark = "fashion"` starts from a built-in and overrides keys
        name, quick = d["benchmark"], d.get("quick", False)
        if not isinstance(name, str) or name not in BUILTIN:
            hint = suggest(name, BUILTIN) if isinstance(name, str) else ""
            raise ConfigError(f"{path}: key 'benchmark': unknown built-in benchmark{hint}; "
                              f"use one of {', '.join(sorted(BUILTIN))}")
        if not isinstance(quick, bool):
            raise ConfigError(f"{path}: key 'quick' must be true or false")
        d = {**builtin(name, quick=quick).to_json(), **d}
    return validate_config({"name": path.stem, **d}, path)


def check_ind_splits(train: ImageSource, test: ImageSource) -> ImageSource:
    """Check the IND splits of a benchmark before any extraction, and give the test split the train split's labels.

    The train split must hold at least 2 IND classes (with one, the IND head's logits are constant: every logit-based
    score ties and its AUROC is 50). When both splits name their classes (folders), a test class the train split
    lacks is an error naming it; a test folder holding only some of the train classes is relabelled by class name
    (labels are positions in each split's own class list, so ``test/{a,c}`` would have read ``c`` as ``b``).

    Args:
        train: the IND training split's source.
        test: the IND test split's source.

    Returns:
        ``test``, relabelled by class name when its class list differs from the train split's.

    Raises:
        ConfigError: fewer than 2 IND training classes, or a test class the train split lacks.
    """
    from tagood.data import SubsetSource

    labels = sorted({s.label for s in train.samples if s.label >= 0})
    if len(labels) < 2:
        names = train.class_names or []
        which = ", ".join(names[k] for k in labels if k < len(names)) or (str(labels[0]) if labels else "none")
        raise ConfigError(f"the IND training split '{train.name}' has {len(labels)} labelled class ({which}); a benchmark "
                          "needs at least 2 IND classes (its IND head and logit-based scores separate classes): add "
                          "class folders to [train]")
    if not train.class_names or not test.class_names or list(test.class_names) == list(train.class_names):
        return test
    extra = [c for c in test.class_names if c not in train.class_names]
    if extra:
        raise ConfigError(f"the IND test split '{test.name}' has class(es) {', '.join(map(repr, extra[:5]))} that the "
                          f"training split '{train.name}' lacks (it has {', '.join(map(repr, train.class_names[:10]))}"
                          f"{' ...' if len(train.class_names) > 10 else ''}); remove them from [test], add them to "
                          "[train], or list OOD images under [ood.<name>]")
    index = {c: k for k, c in enumerate(train.class_names)}
    relabel = [index[test.class_names[s.label]] if 0 <= s.label < len(test.class_names) else s.label
               for s in test.samples]
    return SubsetSource(test, list(range(len(test))), labels=relabel, class_names=train.class_names, name=test.name)
