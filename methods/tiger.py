"""TIGER (Rajput et al., NeurIPS 2023): generative retrieval with Semantic IDs.

Item text is embedded and quantised by an RQ-VAE into 3 codes of 256 (+ a 4th token that numbers colliding items,
making every SID unique). A T5-style encoder-decoder reads the SIDs of the user's last 20 items (and a user token
hashed into 2,000 buckets) and generates the next item's SID code by code; beam search yields the ranked SIDs.
Named recipes: `--set recipe=paper` (the default above) and `--set recipe=grid` (GRID's reproduction: RK-Means
3 × 256, no user token, Adam 5e-4, weight decay 1e-6, patience 10).
"""
from harness.api import register
from harness.engines.generative import GenerativeRetrieval


@register
class TIGER(GenerativeRetrieval):
    name = "tiger"
    paper = "Rajput et al., Recommender Systems with Generative Retrieval, NeurIPS 2023"
