"""Image sources: folders, list files, packaged offline sets, subsets, jigsaw, cluttered and real-photo scenes."""

from tagood.data.arrays import (
    FASHION_CLASSES,
    ArraySource,
    fashion_mnist,
    mnist5k,
    read_idx,
    sklearn_digits,
)
from tagood.data.clutter import ClutterSource, fashion_clutter_splits
from tagood.data.decode import open_image, to_rgb
from tagood.data.folder import (
    IMAGE_EXTENSIONS,
    FilesSource,
    FolderSource,
    ListFileSource,
)
from tagood.data.jigsaw import JigsawSource
from tagood.data.scenes import SceneSource, scene_splits
from tagood.data.source import DataSourceError, ImageDecodeError, ImageSource, Sample
from tagood.data.stamps import Stamp, read_stamp_list, stamps_root
from tagood.data.subset import (
    SubsetSource,
    select_classes,
    subsample,
    subsample_per_class,
)

__all__ = [
    "FASHION_CLASSES",
    "IMAGE_EXTENSIONS",
    "ArraySource",
    "ClutterSource",
    "DataSourceError",
    "FilesSource",
    "FolderSource",
    "ImageDecodeError",
    "ImageSource",
    "JigsawSource",
    "ListFileSource",
    "Sample",
    "SceneSource",
    "Stamp",
    "SubsetSource",
    "fashion_clutter_splits",
    "fashion_mnist",
    "mnist5k",
    "open_image",
    "read_idx",
    "read_stamp_list",
    "scene_splits",
    "select_classes",
    "sklearn_digits",
    "stamps_root",
    "subsample",
    "subsample_per_class",
    "to_rgb",
]
