"""flux-mini: the procedural scene data set (:mod:`.scenes`) and the training script (:mod:`.train`)."""
