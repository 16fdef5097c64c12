"""Class names of the Hiera classifiers: ImageNet-1k for the image models, Kinetics-400 for the video ones.

Both lists ship with torchvision (no download): the ``categories`` of its ImageNet-1k and Kinetics-400
weights. Their order is the one the Hiera heads use:

* ImageNet-1k in the standard index order (0 "tench" ... 999 "toilet tissue"), the order of the
  ILSVRC-2012 synset ids that the official Hiera, timm and the Hugging Face ``id2label`` share;
* Kinetics-400 in alphabetical order (0 "abseiling" ... 399 "zumba"), the index order of the Kinetics-400
  label files PySlowFast and the official video Hiera were trained with. ``kinetics_400`` checks that the
  list is sorted, so a torchvision that ever changed it would be caught.
"""

from __future__ import annotations

from functools import lru_cache

IMAGENET_1K = "imagenet-1k"
KINETICS_400 = "kinetics-400"
CLASS_LISTS = (IMAGENET_1K, KINETICS_400)


@lru_cache(maxsize=None)
def class_names(dataset: str) -> tuple[str, ...]:
    """The class names of ``"imagenet-1k"`` (1000) or ``"kinetics-400"`` (400), in head index order."""
    if dataset == IMAGENET_1K:
        from torchvision.models import ResNet50_Weights

        names = tuple(ResNet50_Weights.IMAGENET1K_V1.meta["categories"])
        expected = 1000
    elif dataset == KINETICS_400:
        from torchvision.models.video import R3D_18_Weights

        names = tuple(R3D_18_Weights.KINETICS400_V1.meta["categories"])
        expected = 400
        if list(names) != sorted(names):
            raise RuntimeError("torchvision's Kinetics-400 class list is not in alphabetical order any more; "
                               "the Hiera heads index the alphabetical list")
    else:
        raise ValueError(f"unknown class list {dataset!r}; choose one of {', '.join(CLASS_LISTS)} or pass "
                         f"class_names=[...] yourself")
    if len(names) != expected:
        raise RuntimeError(f"torchvision's {dataset} list has {len(names)} names, expected {expected}")
    return names


def default_class_list(num_classes: int, video: bool) -> str | None:
    """The list that fits a head: Kinetics-400 for a 400-way video head, ImageNet-1k for a 1000-way image
    head, else None (the caller then needs its own names)."""
    if video and num_classes == 400:
        return KINETICS_400
    if not video and num_classes == 1000:
        return IMAGENET_1K
    return None
