"""Datasets and retrieval protocols: decode once, cache as uint8 tensors, split by seed."""

from .cache import cache_dir
from .protocols import (
    PER_CLASS,
    PROTOCOLS,
    RetrievalSplit,
    SplitIndices,
    load_pools,
    load_split_indices,
    make_split,
    split_from_pools,
    split_per_class,
)
from .sources import (
    SOURCES,
    DataError,
    LabeledImages,
    RestrictedUnpickler,
    concat_images,
    find_source,
    load_digits_source,
    load_source,
    read_cifar10_python,
    read_image_folder,
    resize_images,
    resolve_data_root,
)

__all__ = [
    "PER_CLASS",
    "PROTOCOLS",
    "SOURCES",
    "DataError",
    "LabeledImages",
    "RestrictedUnpickler",
    "RetrievalSplit",
    "SplitIndices",
    "cache_dir",
    "concat_images",
    "find_source",
    "load_digits_source",
    "load_pools",
    "load_source",
    "load_split_indices",
    "make_split",
    "read_cifar10_python",
    "read_image_folder",
    "resize_images",
    "resolve_data_root",
    "split_from_pools",
    "split_per_class",
]
