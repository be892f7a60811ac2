"""Images: safe loading (:mod:`captionkit.images.loading`, the one place that opens image bytes) and model
preprocessing (:mod:`captionkit.images.preprocessing`, transformers' image processors in numpy)."""

from captionkit.images.loading import ALLOWED_FORMATS, DEFAULT_LIMITS, ImageLimits, ImageSource, load_image
from captionkit.images.preprocessing import PREPROCESSOR_CONFIG, Preprocessing

__all__ = [
    "ALLOWED_FORMATS",
    "DEFAULT_LIMITS",
    "PREPROCESSOR_CONFIG",
    "ImageLimits",
    "ImageSource",
    "Preprocessing",
    "load_image",
]
