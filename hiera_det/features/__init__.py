"""Hiera features and predictions for images and video clips, with the Hugging Face processor's preprocessing.

``FeatureExtractor`` is the Python API; ``extract_to_folder`` (behind ``tools/extract_features.py``) runs it
over folders, globs and videos into sharded safetensors with an index, resumably.
"""

from .classnames import IMAGENET_1K, KINETICS_400, class_names
from .extractor import FeatureExtractor, Prediction
from .inputs import ClipSpec, Failure, NoInputsError, discover_inputs, plan_video_clips
from .preprocessing import ClipPreprocessing, ImagePreprocessing, InputError, preprocess_clip, preprocess_image
from .run import RunSummary, extract_to_folder
from .store import FeatureStore, RunMismatchError, load_rows

__all__ = [
    "IMAGENET_1K",
    "KINETICS_400",
    "ClipPreprocessing",
    "ClipSpec",
    "Failure",
    "FeatureExtractor",
    "FeatureStore",
    "ImagePreprocessing",
    "InputError",
    "NoInputsError",
    "Prediction",
    "RunMismatchError",
    "RunSummary",
    "class_names",
    "discover_inputs",
    "extract_to_folder",
    "load_rows",
    "plan_video_clips",
    "preprocess_clip",
    "preprocess_image",
]
