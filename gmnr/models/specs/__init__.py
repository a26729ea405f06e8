"""One module per model family, each holding its :class:`gmnr.models.registry.ModelSpec` as ``SPEC``."""
