"""Dataset readers and the bundled data generators, one module per dataset family (no Detectron2 catalog
registration here: that is ``hiera_det.data.catalog``)."""
