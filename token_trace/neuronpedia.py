"""Neuronpedia addresses for SAE features.

Ids come from SAELens metadata (`sae.cfg.metadata.neuronpedia_id`, e.g. `gpt2-small/6-res-jb`) and
are never built by hand: the mapping from hooks to Neuronpedia's layer names is not regular
(`blocks.11.hook_resid_post` is `12-res-jb`). Nothing here needs the network.
"""

from __future__ import annotations

import json
import urllib.parse
from collections.abc import Iterable

BASE_URL = "https://www.neuronpedia.org"


def feature_url(neuronpedia_id: str, feature: int) -> str:
    """The feature's page, e.g. https://www.neuronpedia.org/gpt2-small/6-res-jb/123."""
    return f"{BASE_URL}/{neuronpedia_id}/{int(feature)}"


def embed_url(
    neuronpedia_id: str,
    feature: int,
    *,
    explanation: bool = True,
    plots: bool = True,
    test: bool = False,
) -> str:
    """The embeddable version of the feature page (for an iframe)."""
    flags = {
        "embed": "true",
        "embedexplanation": str(explanation).lower(),
        "embedplots": str(plots).lower(),
        "embedtest": str(test).lower(),
    }
    return f"{feature_url(neuronpedia_id, feature)}?{urllib.parse.urlencode(flags)}"


def quick_list_url(name: str, features: Iterable[tuple[str, int]]) -> str:
    """One Neuronpedia page listing many features, given (neuronpedia_id, feature) pairs."""
    entries = []
    for neuronpedia_id, feature in features:
        model_id, layer = neuronpedia_id.split("/", 1)
        entries.append({"modelId": model_id, "layer": layer, "index": str(int(feature))})
    query = urllib.parse.urlencode({"name": name, "features": json.dumps(entries)})
    return f"{BASE_URL}/quick-list/?{query}"
