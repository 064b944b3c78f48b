"""CLIPScore per image, checked against a computation straight from open_clip; ranking follows scores."""

from __future__ import annotations

import numpy as np
import open_clip
import pytest
import torch
from PIL import Image
from torchvision import transforms

from vqclip.engine.score import Scored, rank, score


def sample_images() -> list[Image.Image]:
    rng = np.random.default_rng(0)
    images = [Image.fromarray(rng.integers(0, 256, (80, 64, 3), dtype=np.uint8)) for _ in range(4)]
    return images + [Image.new("RGB", (64, 64), colour) for colour in ((250, 10, 10), (10, 10, 250))]


def test_score_matches_open_clip_computed_independently(tiny_models):
    scorer = tiny_models.scorer
    images = sample_images()
    prompts = ["a red fox", "snow", "a castle", "a blue sea", "red", "blue"]
    ours = score(images, prompts, scorer, batch_size=4)

    preprocess = transforms.Compose(
        [
            transforms.Resize(scorer.image_size, interpolation=transforms.InterpolationMode.BICUBIC),
            transforms.CenterCrop(scorer.image_size),
            transforms.ToTensor(),
            transforms.Normalize(open_clip.OPENAI_DATASET_MEAN, open_clip.OPENAI_DATASET_STD),
        ]
    )
    with torch.no_grad():
        image_features = scorer.model.encode_image(torch.stack([preprocess(i) for i in images]))
        text_features = scorer.model.encode_text(open_clip.tokenize(prompts))
    cosine = torch.nn.functional.cosine_similarity(image_features, text_features)
    expected = (100 * cosine.clamp(min=0)).tolist()
    assert ours == pytest.approx(expected, abs=1e-3)
    assert all(0 <= s <= 100 for s in ours)


def test_ranking_follows_scores_and_breaks_ties_by_item_id():
    entries = [
        Scored("b", "i3", 10.0),
        Scored("a", "i2", 30.0),
        Scored("a", "i9", 31.5),
        Scored("a", "i1", 30.0),
        Scored("b", "i4", 12.0),
    ]
    ranking = rank(entries)
    assert list(ranking) == ["a", "b"]
    assert [e.item_id for e in ranking["a"]] == ["i9", "i1", "i2"]
    assert [e.item_id for e in ranking["b"]] == ["i4", "i3"]
