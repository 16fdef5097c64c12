"""Datasets and data loading: readers and generators (``datasets/``), the catalog that registers and checks
them (``catalog``), image and video reading (``image_io``, ``video_io``), and the mappers."""
