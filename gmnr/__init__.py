"""gmnr: a reproducible pipeline for 3D-aware face GANs (GMNR, GMPI, MVCGAN).

Importing the package imports nothing heavy: torch and TensorFlow must never share a process
in the wrong order (see gmnr.preprocess.landmarks), so each module imports what it needs.
"""
__version__ = "0.1.0"
