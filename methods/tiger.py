"""TIGER (Rajput et al., NeurIPS 2023): generative retrieval with Semantic IDs.

Item text is embedded and quantised by an RQ-VAE into 3 codes of 256 (+ a 4th token that numbers colliding items,
making every SID unique). A T5-style encoder-decoder reads the SIDs of the user's last 20 items (and a user token
hashed into 2,000 buckets) and generates the next item's SID code by code; beam search yields the ranked SIDs.
The RQ-VAE fits item embeddings standardised per dimension (`rqvae_standardize`, as the reproductions that reach
the paper's numbers do); its passes over the items are `tokenizer_options.epochs`.
Named recipes: `default` (the config above: GRID's optimiser, Adam 5e-4, weight decay 1e-6, linear warm-up),
`--set recipe=paper` (TIGER's published schedule: Adagrad, lr 0.01 for 10k steps then inverse-square-root decay,
200k steps, batch 256; RQ-VAE Adagrad lr 0.4, 20k epochs, batch 1024, k-means init on the first batch; the YAML
names the source of every value) and `--set recipe=grid` (GRID's reproduction: RK-Means 3 × 256, no user token,
Adam 5e-4, weight decay 1e-6, patience 10).
"""
from harness.api import register
from harness.engines.generative import GenerativeRetrieval


@register
class TIGER(GenerativeRetrieval):
    name = "tiger"
    paper = "Rajput et al., Recommender Systems with Generative Retrieval, NeurIPS 2023"

    def tokenizer_options(self):
        """`rqvae_standardize` becomes the RQ-VAE's `standardize` (unless tokenizer_options set it); another
        tokenizer (`--set tokenizer=rkmeans`) is given the options as they are."""
        options = super().tokenizer_options()
        if self.config["tokenizer"] == "rqvae":
            options.setdefault("standardize", bool(self.config["rqvae_standardize"]))
        return options
