"""One call from images to features: :func:`extract_features` (``tagood.extract_features``).

It builds the image source (an image folder, a list of files, or any :class:`~tagood.data.source.ImageSource`),
builds the backbone (a built-in name such as ``"efficientnet-lite0"``, a spec for RAM / CLIP weights on disk, or a
backbone object), extracts through the resumable feature cache and returns a
:class:`~tagood.core.featureset.FeatureSet` ready for ``det.fit`` / ``det.score``. A second call with the same
images, backbone and fields reads the cache and does no work.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from tagood.backbones.factory import build_backbone
from tagood.cache import STREAM_ABOVE_GB, CacheReader, heavy_fields
from tagood.core.featureset import FeatureSet
from tagood.core.types import Backbone
from tagood.data.folder import FilesSource, FolderSource
from tagood.data.source import ImageSource
from tagood.extract import extract_split

__all__ = ["extract_features", "image_source", "load_split"]

log = logging.getLogger(__name__)


def image_source(images: str | Path | Sequence[str | Path] | ImageSource,
                 classes: Sequence[str] | None = None) -> ImageSource:
    """The image source of ``images``.

    Args:
        images: a folder (``root/<class>/<image>``: labels from the sorted class-folder names; images directly under
            ``root`` are one unlabelled set), a list of image files (unlabelled), or an
            :class:`~tagood.data.source.ImageSource` (returned as is).
        classes: class-folder names in label order, to give a test folder the labels of its training folder
            (default: the sorted sub-folder names).

    Returns:
        The image source.
    """
    if isinstance(images, ImageSource):
        return images
    if isinstance(images, (str, Path)):
        return FolderSource(images, classes=classes)
    return FilesSource([Path(p) for p in images])


def load_split(source: ImageSource, backbone: Backbone, cache: str | Path | None, split: str,
               fields: Sequence[str] | None = None, stream_above_gb: float | None = STREAM_ABOVE_GB,
               batch_size: int = 64, progress: bool = True) -> tuple[CacheReader, FeatureSet]:
    """Extract ``source`` into the feature cache (resumable; a finished entry is read back) and view it as a split.

    Args:
        source: the images.
        backbone: the model that extracts them.
        cache: the feature cache root (``None``: the default root).
        split: the split's name in the cache, in logs and on the FeatureSet.
        fields: what to extract (default: everything the backbone gives).
        stream_above_gb: the heavy fields (tokens, tag maps) of a split larger than this many GiB stay in the
            memory-mapped cache and are read shard by shard (``None``: never stream, ``0``: always).
        batch_size: images per forward pass.
        progress: show a progress bar.

    Returns:
        The cache entry's reader and the split's FeatureSet.
    """
    reader = extract_split(source, backbone, cache, split=split, fields=fields, batch_size=batch_size, progress=progress)
    names = list(fields) if fields is not None else list(backbone.outputs)
    stream = heavy_fields(reader, names, stream_above_gb)
    if stream:
        log.info("%s: %d images, streaming %s from the cache shard by shard", split, len(reader), stream)
    return reader, reader.to_featureset(names, name=split, stream=stream)


def extract_features(images: str | Path | Sequence[str | Path] | ImageSource,
            backbone: str | Mapping[str, Any] | Backbone = "efficientnet-lite0",
            *,
            split: str | None = None,
            cache: str | Path | None = None,
            fields: Sequence[str] | None = None,
            classes: Sequence[str] | None = None,
            device: str = "cpu",
            batch_size: int = 64,
            stream_above_gb: float | None = STREAM_ABOVE_GB,
            progress: bool = True) -> FeatureSet:
    """Extract the features of ``images`` with ``backbone`` into the feature cache and return them.

    Args:
        images: an image folder, a list of image files, or an image source (see :func:`image_source`).
        backbone: ``"efficientnet-lite0"`` (default, offline), ``"efficientnet-lite2"``, a spec such as
            ``{"name": "ram", "checkpoint": "ram_swin_large_14m.pth"}`` or ``{"name": "clip", "path": HF_DIR}``
            (see :func:`tagood.backbones.factory.build_backbone`), or a backbone object.
        split: the name of this split in the cache and in logs (default: the source's name).
        cache: the feature cache root (default ``$TAGOOD_CACHE``, else ``$TAGOOD_HOME/features``, else
            ``~/.cache/tagood/features``).
        fields: what to extract (default: everything the backbone gives: ``logits``, ``features``, ``tokens``,
            ``tag_probs``, ``tag_attention``, ... as it has them).
        classes: class-folder names in label order (see :func:`image_source`).
        device: torch device of the backbone (``"cpu"``, ``"cuda"``, ``"cuda:1"``, ``"mps"``).
        batch_size: images per forward pass.
        stream_above_gb: a split whose token fields would take more than this many GiB is not loaded into memory
            but read from the cache shard by shard (``None``: never stream, ``0``: always).
        progress: show a progress bar.

    Returns:
        The split's :class:`~tagood.core.featureset.FeatureSet` (``labels`` from the class folders, -1 without).
        Note that ``logits`` are the backbone's own (ImageNet's 1000 classes for the built-in taggers); the
        benchmark scores logit-based detectors on the logits of a linear head fitted on your IND training
        features instead: see :func:`tagood.detectors.head.fit_head`.

    Raises:
        tagood.errors.InputError: the folder does not exist, holds no images, or every image fails to decode.

    Example:
        A folder of real photos, one sub-folder per class (crops of scikit-learn's two sample images), through the
        built-in EfficientNet-Lite0:

        >>> import shutil, tempfile
        >>> from pathlib import Path
        >>> from PIL import Image
        >>> from sklearn.datasets import load_sample_image
        >>> import tagood
        >>> tmp = Path(tempfile.mkdtemp())
        >>> for name in ("china", "flower"):
        ...     (tmp / "train" / name).mkdir(parents=True)
        ...     photo = load_sample_image(f"{name}.jpg")
        ...     for i in range(2):
        ...         Image.fromarray(photo[150 * i:150 * i + 224, :224]).save(tmp / "train" / name / f"{i}.png")
        >>> train = tagood.extract_features(tmp / "train", cache=tmp / "cache", progress=False)
        >>> train.features.shape, train.labels.tolist()  # labels from the sorted class folders
        ((4, 1280), [0, 0, 1, 1])
        >>> det = tagood.create("knn[k=1]").fit(train)
        >>> bool((det.score(train) < 0.01).all())  # each training image is its own nearest neighbour
        True
        >>> again = tagood.extract_features(tmp / "train", cache=tmp / "cache", progress=False)  # read from the cache
        >>> bool((again.features == train.features).all())
        True
        >>> shutil.rmtree(tmp)
    """
    src = image_source(images, classes)
    bb = build_backbone({"name": backbone} if isinstance(backbone, str) else backbone, device=device) \
        if isinstance(backbone, (str, Mapping)) else backbone
    return load_split(src, bb, cache, split or src.name or "split", fields, stream_above_gb, batch_size, progress)[1]
