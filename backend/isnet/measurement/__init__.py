"""Engines measured against each other on the same images: what ``ISNET_ENGINE=auto`` decides by.

Its own package, above :mod:`backend.isnet.engines` and :mod:`backend.isnet.segmenter`: measuring
runs whole segmentations, and the engines never need to know how they are judged.
"""
