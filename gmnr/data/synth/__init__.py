"""Offline demo dataset: procedural 3D heads rendered at known camera poses.

Why it exists: the pipeline (landmarks -> pose estimation -> cropping -> GAN training ->
evaluation) must run end to end without downloading FFHQ, and its pose estimator needs data
whose true camera is known. Each image here is a smooth signed-distance head built around
:data:`gmnr.data.face_layout.MEAN_LANDMARKS_3D` (perturbed per identity), sphere-traced in
torch through the FFHQ/GMPI camera of :mod:`gmnr.render.camera`.

Geometry lives in a *local head frame*: origin at the eye midpoint, axes parallel to the
world axes (x right in a frontal image, y up, z towards a frontal camera), unit = one
inter-ocular distance of the identity. ``world = anchor + IOD * scale * local``. In that frame
the five ground-truth landmarks are placed by construction: eye centres are the iris centres
(front points of the eyeballs), the nose tip is the front point of the nose-tip sphere (the
most forward point of the nose), and the mouth corners are where the lip colour and the dark
mouth line end, at the depth of the skin surface there (measured by tracing the SDF).

Determinism: image ``i`` of ``generate(seed=s)`` depends only on ``(s, i)`` through
``numpy.random.default_rng([s, i])``; all rendering is plain float32 torch on the CPU, so a
re-run with the same thread count writes byte-identical files.

Modules, in dependency order:

* :mod:`~gmnr.data.synth.head`: ``HeadParams`` (one identity) and its landmarks;
* :mod:`~gmnr.data.synth.geometry`: the signed distance function ``HeadSDF``;
* :mod:`~gmnr.data.synth.sampling`: ``sample_head``, a random identity;
* :mod:`~gmnr.data.synth.shading`: materials, painted albedo, lighting, backdrop;
* :mod:`~gmnr.data.synth.tracer`: ``render_head``, the sphere tracer;
* :mod:`~gmnr.data.synth.dataset`: ``generate``, the files on disk, and the camera prior.

The names below are the package's interface (``from gmnr.data import synth; synth.render_head``).
"""
from gmnr.data.synth.dataset import (FFHQ_CAMERA, OUTPUTS, SynthCamera, _legacy_claims, contact_sheet, csv_columns,
                                     generate, render_view, sample_view)
from gmnr.data.synth.geometry import HeadSDF
from gmnr.data.synth.head import HeadParams, _local_landmarks, head_landmarks_3d
from gmnr.data.synth.sampling import sample_head
from gmnr.data.synth.tracer import render_head

# _legacy_claims (for the source stage's pre-flight, gmnr.stages) and _local_landmarks (for the
# tests' on-surface check) are internals that callers outside the package reach through here.
__all__ = ["FFHQ_CAMERA", "OUTPUTS", "HeadParams", "HeadSDF", "SynthCamera", "contact_sheet", "csv_columns",
           "generate", "head_landmarks_3d", "render_head", "render_view", "sample_head", "sample_view"]
