"""Explanations of a trained mil-cyto model: which tiles and pixels drove a photo's grade.

Modules (one job each):

- :mod:`explain.maps`: tile scores or per-tile pixel maps -> an ``(H, W)`` heatmap in the
  photo's pixels (overlapping tiles averaged, NaN where no tile lies), rank or min-max
  normalisation for display, PNG overlays.
- :mod:`explain.attributions`: Captum attributions through the whole MIL model for one class
  (``integrated_gradients``, ``saliency``, ``gradient_shap``, ``occlusion``,
  ``layer_gradcam``), plus the model's own ``attention`` and ``instance_head`` scores, at
  pixel level inside the tiles and at tile level (on the tile embeddings fed to the
  aggregator).
- :mod:`explain.detect`: suspect cells from a map: map peaks refined to nuclei found by a
  scikit-image detector, as scored boxes.
- :mod:`explain.froc`: FROC sensitivity at given false positives per image (CAMELYON16
  convention: a detection hits when its point lies in an annotated atypical cell's box).
- :mod:`explain.faithfulness`: deletion and insertion curves over tiles, random control.
- :mod:`explain.run`: all of the above over a run folder's test photos (resumable).
- ``python -m explain --run RUN``: writes ``RUN/explain/`` and ``RUN/localization.json``.

The one call an application needs (e.g. the review app, for one photo on demand)::

    from mil_cyto.checkpoint import load_model
    from explain.attributions import attribute_photo, list_methods

    model, recipe = load_model(run_dir)          # eval mode, CPU
    pixel_map, tile_scores = attribute_photo(
        model, tiles, coords, method="integrated_gradients", target=2, size_hw=(H, W)
    )

- ``tiles``: ``(N, 3, T, T)`` uint8 (as :func:`mil_cyto.data.tiling.tile_photo` returns),
  ``coords``: ``(N, 4)`` int ``x0, y0, x1, y1`` photo pixels, ``target``: class index
  (0 normal, 1 CIN1, 2 CIN2+), ``method``: one of :func:`explain.attributions.list_methods`.
- ``pixel_map``: ``(H, W)`` float32, raw attribution (signed, in logit units for
  integrated gradients / gradient SHAP / occlusion; >= 0 for saliency and Grad-CAM),
  averaged where tiles overlap, NaN outside every tile. Normalise it for display with
  :func:`explain.maps.normalise`.
- ``tile_scores``: ``(N,)`` float32, one score per tile, higher = more evidence for
  ``target`` (attention x N for ``attention``).
- Pixel-level methods need the tile encoder; a features-only model (``model.encoder`` is
  None) raises :class:`mil_cyto.errors.MilCytoError` for them. Models loaded with
  :func:`mil_cyto.checkpoint.load_model` always carry their encoder (frozen runs too).
"""
