"""Instance-level learning on cached features: gradient boosting on labelled instances, the
photo's grade from a logistic regression on pooled instance probabilities.

Two ways to label the instances, one classifier (scikit-learn's
:class:`~sklearn.ensemble.HistGradientBoostingClassifier`, cheap and strong on hand-made
cell features such as the ``morphometry`` encoder's):

- ``sil_gbm``, single-instance learning: every instance takes its photo's grade
  (:func:`copied_labels`);
- ``pseudo_gbm``: the instances a MIL attention head picks, labelled as self-training labels
  them (:func:`mil_cyto.refine.pseudo_labels`: every instance of a normal photo normal, the
  ``top_k`` of an abnormal photo by the head's grade evidence its grade, the rest left out;
  :func:`attention_labels`).

The photo's grade: each photo's instance class probabilities ``(N, C)`` are summarised by
their max, top-3 mean and mean per class (``3 C`` numbers, :func:`photo_summary`), and a
logistic regression maps them to the grade. It is fitted out of fold: the training photos
are cut into ``inner_folds`` patient-disjoint groups stratified by grade
(:class:`~sklearn.model_selection.StratifiedGroupKFold`), each group's instances are scored
by a classifier fitted on the other groups, so the
regression learns from scores of photos the classifier never saw, as the test photos will
be. The instance classifier finally used is fitted on every training photo.
Instance scores for localization: ``P(not normal)`` per instance.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np
from sklearn.ensemble import HistGradientBoostingClassifier
from sklearn.linear_model import LogisticRegression
from sklearn.model_selection import StratifiedGroupKFold
from sklearn.pipeline import Pipeline, make_pipeline
from sklearn.preprocessing import StandardScaler

from mil_cyto.refine import PseudoLabels, grade_evidence, pseudo_labels
from mil_cyto.training import FeatureBag, Predictions

UNLABELLED = -1
"""An instance label that leaves the instance out of the classifier's training."""


@dataclass
class InstanceConfig:
    """The gradient-boosting classifier (``max_iter`` trees of at most ``max_leaf_nodes``
    leaves, ``learning_rate``, class-balanced sample weights), ``top`` instances averaged in
    the summary's top-k statistic, ``inner_folds`` photo groups for the out-of-fold
    regression, ``max_per_photo`` instances per photo drawn for training (0 = all; keeps a
    photo with hundreds of nuclei from outweighing the rest) and the ``seed``."""

    max_iter: int = 100
    learning_rate: float = 0.1
    max_leaf_nodes: int = 15
    l2_regularization: float = 1.0
    top: int = 3
    inner_folds: int = 3
    max_per_photo: int = 0
    seed: int = 0


def copied_labels(bags: Sequence[FeatureBag]) -> list[np.ndarray]:
    """Single-instance labels: per photo, its grade on every instance ``(N_i,)`` int64."""
    return [np.full(len(b.features), int(b.label), np.int64) for b in bags]


def labels_from_pseudo(pseudo: PseudoLabels, sizes: Sequence[int]) -> list[np.ndarray]:
    """:class:`~mil_cyto.refine.PseudoLabels` back to per-photo arrays ``(N_i,)``: the
    pseudo-grade where an instance was labelled, :data:`UNLABELLED` elsewhere."""
    out = [np.full(n, UNLABELLED, np.int64) for n in sizes]
    for photo, instance, label in zip(
        pseudo.photo, pseudo.instance, pseudo.labels.numpy(), strict=True
    ):
        out[int(photo)][int(instance)] = int(label)
    return out


def attention_labels(
    bags: Sequence[FeatureBag], head_predictions: Predictions, top_k: int
) -> list[np.ndarray]:
    """Pseudo-labels of ``bags`` from a MIL head's predictions on them (its instance logits
    for the photo's grade, else its attention: :func:`mil_cyto.refine.grade_evidence`),
    labelled by :func:`mil_cyto.refine.pseudo_labels` with ``top_k``."""
    evidence = grade_evidence(head_predictions)
    pseudo = pseudo_labels([b.features for b in bags], [b.label for b in bags], evidence, top_k)
    return labels_from_pseudo(pseudo, [len(b.features) for b in bags])


def photo_summary(probs: np.ndarray, top: int) -> np.ndarray:
    """A photo's instance class probabilities ``(N, C)`` -> ``(3 C,)``: per class the max,
    the mean of the ``top`` largest and the mean (zeros for an empty photo)."""
    if len(probs) == 0:
        return np.zeros(3 * probs.shape[1])
    ordered = np.sort(probs, axis=0)[::-1]
    return np.concatenate([ordered[0], ordered[:top].mean(0), probs.mean(0)])


def _training_set(
    bags: Sequence[FeatureBag], labels: Sequence[np.ndarray], config: InstanceConfig
) -> tuple[np.ndarray, np.ndarray]:
    """The labelled instances of ``bags`` (at most ``max_per_photo`` of each photo, drawn at
    random): features ``(M, D)`` and labels ``(M,)``."""
    rng = np.random.default_rng(config.seed)
    xs, ys = [], []
    for bag, y in zip(bags, labels, strict=True):
        keep = np.flatnonzero(y != UNLABELLED)
        if config.max_per_photo > 0 and len(keep) > config.max_per_photo:
            keep = np.sort(rng.choice(keep, config.max_per_photo, replace=False))
        xs.append(bag.features[keep])
        ys.append(y[keep])
    return np.concatenate(xs), np.concatenate(ys)


def _fit_classifier(
    x: np.ndarray, y: np.ndarray, config: InstanceConfig
) -> HistGradientBoostingClassifier:
    clf = HistGradientBoostingClassifier(
        max_iter=config.max_iter,
        learning_rate=config.learning_rate,
        max_leaf_nodes=config.max_leaf_nodes,
        l2_regularization=config.l2_regularization,
        class_weight="balanced",
        random_state=config.seed,
    )
    return clf.fit(x, y)


@dataclass
class InstanceModel:
    """A fitted instance classifier and the photo regression on its pooled probabilities.
    ``n_classes``: the grades C; instance probabilities always have C columns (a grade
    missing from the training instances gets probability 0)."""

    classifier: HistGradientBoostingClassifier
    photo_model: Pipeline
    n_classes: int
    top: int
    history: dict[str, object] = field(default_factory=dict)

    def instance_probs(self, features: np.ndarray) -> np.ndarray:
        """Instance features ``(N, D)`` -> class probabilities ``(N, C)``."""
        return _full_probs(self.classifier, features, self.n_classes)

    def predict(self, bags: Sequence[FeatureBag]) -> tuple[np.ndarray, list[np.ndarray]]:
        """Photo class probabilities ``(B, C)`` and per photo its instances' ``P(not
        normal)`` ``(N_i,)``."""
        summaries, scores = [], []
        for bag in bags:
            probs = self.instance_probs(bag.features)
            summaries.append(photo_summary(probs, self.top))
            scores.append(1.0 - probs[:, 0] if len(probs) else np.zeros(0))
        photo = _full_probs(self.photo_model, np.stack(summaries), self.n_classes)
        return photo, scores


def _full_probs(model: object, x: np.ndarray, n_classes: int) -> np.ndarray:
    """``model.predict_proba(x)`` spread over all ``n_classes`` columns (``model.classes_``
    may hold fewer)."""
    out = np.zeros((len(x), n_classes))
    if len(x):
        out[:, model.classes_] = model.predict_proba(x)  # type: ignore[attr-defined]
    return out


def fit_instance_model(
    bags: Sequence[FeatureBag],
    labels: Sequence[np.ndarray],
    config: InstanceConfig,
    n_classes: int = 3,
) -> InstanceModel:
    """Fit the instance classifier on ``bags``' labelled instances (``labels``: per photo
    ``(N_i,)``, :data:`UNLABELLED` to leave one out) and the photo regression on
    out-of-fold summaries (``inner_folds`` patient-disjoint groups of photos)."""
    if len(bags) != len(labels):
        raise ValueError(f"{len(bags)} bags but {len(labels)} label arrays")
    photo_labels = np.array([b.label for b in bags])
    patients = np.array([b.patient_id for b in bags])
    n_splits = max(2, min(config.inner_folds, len(np.unique(patients))))
    summaries = np.zeros((len(bags), 3 * n_classes))
    splitter = StratifiedGroupKFold(n_splits=n_splits, shuffle=True, random_state=config.seed)
    for inner_train, inner_test in splitter.split(photo_labels, photo_labels, patients):
        x, y = _training_set(
            [bags[i] for i in inner_train], [labels[i] for i in inner_train], config
        )
        clf = _fit_classifier(x, y, config)
        for i in inner_test:
            probs = _full_probs(clf, bags[i].features, n_classes)
            summaries[i] = photo_summary(probs, config.top)
    photo_model = make_pipeline(
        StandardScaler(),
        LogisticRegression(class_weight="balanced", max_iter=2000),
    ).fit(summaries, photo_labels)
    x, y = _training_set(bags, labels, config)
    classifier = _fit_classifier(x, y, config)
    history: dict[str, object] = {
        "instances": int(len(y)),
        "instances_per_grade": np.bincount(y, minlength=n_classes).tolist(),
        "inner_folds": n_splits,
        "trees": int(classifier.n_iter_),
    }
    return InstanceModel(classifier, photo_model, n_classes, config.top, history)
