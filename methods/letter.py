"""LETTER-TIGER (Wang et al., Learnable Item Tokenization for Generative Recommendation, CIKM 2024).

TIGER with one change, the tokenizer: LETTER's RQ-VAE (`harness/sid/letter.py`) adds a collaborative loss toward a
SASRec's item embeddings trained on the training split (`sasrec-cf`), a diversity loss over clustered codebooks and
Sinkhorn-balanced codes on the last level (4 × 256 in the paper). Generator, training, beam search and collision
handling (dedup token) are TIGER's, shared through `GenerativeRetrieval`.
"""
from harness.api import register
from harness.engines.generative import GenerativeRetrieval


@register
class LETTER(GenerativeRetrieval):
    name = "letter"
    paper = "Wang et al., Learnable Item Tokenization for Generative Recommendation (LETTER), CIKM 2024"

    def tokenizer_options(self):
        cfg = self.config
        return {**super().tokenizer_options(), "alpha": cfg["cf_weight"], "beta": cfg["diversity_weight"],
                "clusters": cfg["code_clusters"], "cf_temperature": cfg["cf_temperature"],
                "latent": cfg["collaborative_options"].get("dim", 32)}
