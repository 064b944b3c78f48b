"""CLIP zero-shot labels for stored image embeddings, and the filter's decision for each image.

Each label's text embedding is the mean of its normalised template embeddings, renormalised
(open_clip's `build_zero_shot_classifier`); an image's label probabilities are the softmax of
100 x its cosine to each label, as CLIP classifies.
"""

from __future__ import annotations

import numpy as np
import torch
from open_clip.zero_shot_classifier import build_zero_shot_classifier
from open_clip.zero_shot_metadata import SIMPLE_IMAGENET_TEMPLATES

from vqclip.filter_spec import FilterLabel, FilterSpec
from vqclip.models.clip import ClipModel

LOGIT_SCALE = 100.0


@torch.no_grad()
def label_embeddings(spec: FilterSpec, scorer: ClipModel) -> np.ndarray:
    """One normalised text embedding per label (rows in `spec.labels` order), averaged over the templates."""
    device = next(scorer.model.parameters()).device
    templates = spec.templates or SIMPLE_IMAGENET_TEMPLATES
    weights = build_zero_shot_classifier(scorer.model, scorer.tokenizer, spec.labels, templates, device=device)
    return weights.T.float().cpu().numpy()


def probabilities(image_vectors: np.ndarray, label_vectors: np.ndarray) -> np.ndarray:
    """Per image (rows of normalised embeddings), the softmax over labels of 100 x cosine."""
    logits = LOGIT_SCALE * image_vectors.astype(np.float32) @ label_vectors.astype(np.float32).T
    return torch.softmax(torch.from_numpy(logits), dim=-1).numpy()


def decide(spec: FilterSpec, probs: np.ndarray) -> FilterLabel:
    """The label of one image's probabilities, filtered when its top label is rejected or its reject labels pass the threshold."""
    by_label = {label: float(p) for label, p in zip(spec.labels, probs)}
    top = spec.labels[int(np.argmax(probs))]
    rejected = sum(by_label[label] for label in spec.reject)
    over = spec.threshold is not None and rejected > spec.threshold
    return FilterLabel(
        label=top,
        probability=round(by_label[top], 6),
        reject_probability=round(rejected, 6),
        probabilities={label: round(p, 6) for label, p in by_label.items()},
        filtered=top in spec.reject or over,
        labels_version=spec.version,
    )
