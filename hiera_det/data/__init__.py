"""Datasets and data loading.

Bundled image data: ``shapes`` generates "hiera_shapes" (COCO instance segmentation made from a seed;
``python -m hiera_det.data.shapes``) and ``builtin`` registers the bundled datasets with Detectron2 (it
runs at ``import hiera_det``). This file imports none of the modules: ``shapes`` needs only numpy, OpenCV and
pycocotools.
"""
