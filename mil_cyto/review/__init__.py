"""The review app's logic, free of Streamlit so it can be tested on its own.

- :mod:`mil_cyto.review.runs`: reading a run folder (predictions, attention, photos, cells).
- :mod:`mil_cyto.review.cases`: the case list (sorting by suspicion or error, filters).
- :mod:`mil_cyto.review.overlay`: attention heatmap overlays, boxes and top-k tile crops.
- :mod:`mil_cyto.review.upload`: checking an uploaded photo and running the model on it.
- :mod:`mil_cyto.review.marks`: reviewer marks, saved atomically, read back as cells.csv rows.
- :mod:`mil_cyto.review.explain_bridge`: attributions and suspect cells from ``explain``,
  imported lazily so the app works without it.

The Streamlit script is ``app/viewer.py`` (``streamlit run app/viewer.py -- --run RUN``).
"""
