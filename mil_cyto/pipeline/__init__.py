"""The training run (``python -m mil_cyto.train``) as a pipeline of named stages.

:func:`mil_cyto.pipeline.run.run_training` calls them in order, each a module with one job:

1. :mod:`~mil_cyto.pipeline.runtime`: threads, seeds, device, torchrun, the run folder;
2. :mod:`~mil_cyto.pipeline.data`: the data folder (or the built-in synthetic set), its
   manifest, cell boxes and patient split; ``config.json`` and ``splits.json``;
3. :mod:`~mil_cyto.pipeline.recipe`: the encoder, tiling and first head the config names;
4. :mod:`~mil_cyto.pipeline.encoder_training`: :mod:`~mil_cyto.pipeline.pretraining`
   (SimCLR) then :mod:`~mil_cyto.pipeline.self_training` (pseudo-label rounds), each kept
   in the run's resume folder (:mod:`~mil_cyto.pipeline.stage_store`) under its fingerprint;
5. :mod:`~mil_cyto.pipeline.features`: the bag store of the encoder's features;
6. :mod:`~mil_cyto.pipeline.heads`: ``--heads`` MIL heads fitted and refitted, their mean;
7. :mod:`~mil_cyto.pipeline.evaluation`: the test photos' predictions, metrics, localization;
8. :mod:`~mil_cyto.pipeline.outputs`: the run folder's model, predictions, attention, report.

:mod:`~mil_cyto.pipeline.timing` times each stage into ``metrics.json``'s ``timing_s``.
This package imports nothing on its own, so that a caller of one stage loads that stage only.
"""
