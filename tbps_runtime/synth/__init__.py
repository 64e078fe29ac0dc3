"""Synthetic people and camera footage, drawn without PyTorch: for the tests, the docs, the benchmarks,
the trainer's demo, and an edge box that needs test footage.

``people`` (the palette, :class:`~tbps_runtime.synth.people.Person`, sampling, and the public drawing
API: :class:`~tbps_runtime.synth.people.Frame`, :func:`~tbps_runtime.synth.people.draw_person`,
:func:`~tbps_runtime.synth.people.render`), ``captions`` (the default set's descriptions),
``dataset`` (:func:`~tbps_runtime.synth.dataset.generate`: the default set, CUHK-PEDES layout),
``parts`` (:func:`~tbps_runtime.synth.parts.generate_parts`: the part-sensitive set with twins),
``footage`` (:func:`~tbps_runtime.synth.footage.generate_footage`: videos with ground truth) and
``output`` (where a generator's output goes: written whole, replacing only what it wrote itself).

This module imports nothing, so the command line can read the defaults without loading numpy.
"""

DEFAULT_IDS = 800  # identities of the default dataset that tbps synth and the quickstart make
DEFAULT_PARTS_IDS = 3000  # identities of the part-sensitive set (tbps synth --parts)
