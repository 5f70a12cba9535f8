"""ISNet for Label Studio: an ML backend that pre-annotates images with ISNet brush masks."""

__version__ = "0.1.0"
