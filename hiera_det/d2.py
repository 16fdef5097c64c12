"""Registers everything hiera_det adds to Detectron2; import it before building a model from a config.

    import hiera_det.d2  # noqa: F401

* backbones ``build_hiera_backbone``, ``build_hiera_fpn_backbone``, ``build_hiera_retinanet_fpn_backbone``,
  ``build_hiera_video_backbone``, ``build_hiera_video_fpn_backbone`` (``hiera_det.detection.build``);
* ROI heads ``HieraROIHeads`` (``hiera_det.detection.fast_inference``: Detectron2's standard heads with
  top-k batched NMS);
* the mask head ``MaskRCNNGPUTargetsHead`` (``hiera_det.detection.mask_head``: polygon mask targets cut on
  the GPU);
* meta-architectures ``HieraRCNN`` (``hiera_det.detection.fast_inference``: GeneralizedRCNN pasting masks on
  the GPU), ``HieraVideoClassifier``, ``HieraClipDetector`` (``hiera_det.video.meta_arch``),
  ``HieraActionDetector`` (``hiera_det.video.action_detector``) and ``HieraMAE`` (``hiera_det.pretraining``);
* the ``hiera://NAME`` path handler, so that ``MODEL.WEIGHTS`` and every PathManager path take weights names;
* the bundled datasets ``hiera_shapes_{train,val}`` and ``moving_shapes_{cls,kf}_{train,val}``
  (``hiera_det.data.catalog``), registered under ``$DETECTRON2_DATASETS``.
"""

from detectron2.utils.file_io import PathManager

from .checkpoint.path_handler import register_path_handler
from .data.catalog import register_builtin_datasets
from .detection import build as _backbones  # noqa: F401  (registers the backbones)
from .detection import fast_inference as _fast_inference  # noqa: F401  (registers HieraROIHeads, HieraRCNN)
from .detection import mask_head as _mask_head  # noqa: F401  (registers MaskRCNNGPUTargetsHead)
from .detection import proposals as _proposals  # noqa: F401  (registers HieraRPN)
from . import pretraining as _pretraining  # noqa: F401  (registers HieraMAE)
from .video import action_detector as _action_detector  # noqa: F401  (registers HieraActionDetector)
from .video import meta_arch as _meta_architectures  # noqa: F401  (registers the meta-architectures)

register_path_handler(PathManager)
register_builtin_datasets()
