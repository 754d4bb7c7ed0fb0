"""streamrec: a streaming-first, real-time two-stage recommender."""

__version__ = "0.1.0"
