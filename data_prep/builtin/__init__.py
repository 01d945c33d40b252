"""Built-in data that needs no download: procedural shapes, moving-shape clips, bundled images.

`shapes` renders compositional scenes with exact captions, `attributes` reads them back from
pixels (GenEval-style scoring of generated images), `moving_shapes` writes short mp4 clips, and
`natural` wraps the images that ship inside scikit-learn and scikit-image.
"""
