"""The one recommend pipeline (:mod:`models.recommend.pipeline`) and the model it reads
(:mod:`models.recommend.model`), shared by the server, offline evaluation and the ranker's training."""
