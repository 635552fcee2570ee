"""The review app's logic, free of Streamlit so it can be tested on its own.

- :mod:`mil_cyto.review.runs`: reading a run folder (predictions, attention, photos, cells).
- :mod:`mil_cyto.review.cases`: the case list (sorting by suspicion or error, filters).
- :mod:`mil_cyto.review.overlay`: attention heatmap overlays, boxes and top-k tile crops.
- :mod:`mil_cyto.review.upload`: checking an uploaded photo and running the model on it.
- :mod:`mil_cyto.review.marks`: reviewer marks keyed by reviewer, saved atomically under a
  cross-process file lock, read back as cells.csv rows.
- :mod:`mil_cyto.review.agreement`: Cohen's kappa between reviewers and against the model.
- :mod:`mil_cyto.review.confine`: the runs root the browser may not leave.
- :mod:`mil_cyto.review.auth`: whether a login is asked (off on localhost), password check.
- :mod:`mil_cyto.review.explain_bridge`: attributions and suspect cells from ``explain``,
  imported lazily so the app works without it.

The Streamlit script is ``app/viewer.py``
(``streamlit run app/viewer.py -- --runs-root RUNS`` or ``-- --run RUN``).
"""
