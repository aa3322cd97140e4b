"""Instance segmentation: the detection task's heads with prototype masks (:mod:`gmyolo.models.yolo.segment`), their
losses (:mod:`.loss`)."""
