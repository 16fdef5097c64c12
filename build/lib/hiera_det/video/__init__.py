"""Video models in Detectron2: the clip classifier and clip-to-keyframe detector (``meta_arch``), temporal
pooling of clip features (``temporal``), mixup (``mixup``) and classification accuracy (``evaluation``).
The video trunk itself is ``hiera_det.detection.HieraBackbone`` on a ``*_16x224`` architecture."""
