"""Data: decoding, the seed's dataset format at any URI, manifests and augmentation.

``matting_lib.data.augment`` (albumentations, torch) is imported on demand, not here,
so reading data stays light.
"""

from matting_lib.data.dataset import (
    DatasetError,
    Sample,
    ValidationReport,
    clear_cache,
    find_image,
    load_sample,
    read_sample,
    read_split,
    validate_dataset,
)
from matting_lib.data.decode import MAX_PIXELS, ImageDecodeError, decode_image, decode_mask
from matting_lib.data.encode import encode_png
from matting_lib.data.manifest import build_manifest, ensure_manifest, read_manifest

__all__ = [
    "MAX_PIXELS",
    "DatasetError",
    "ImageDecodeError",
    "Sample",
    "ValidationReport",
    "build_manifest",
    "clear_cache",
    "decode_image",
    "decode_mask",
    "encode_png",
    "ensure_manifest",
    "find_image",
    "load_sample",
    "read_manifest",
    "read_sample",
    "read_split",
    "validate_dataset",
]
