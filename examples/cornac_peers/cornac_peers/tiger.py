"""cornac-tiger: cornac 3.0.1's TIGER (`cornac.models.TIGER`), trained by cornac's own code and judged by the
harness, so it can stand beside the harness's `tiger` as a peer row: same split, seeds, sizes, SIDs and evaluator.

What is cornac's: the sequence-to-sequence model (its `TIGERSeq2Seq`, a Hugging Face T5 stack), the loss, the AdamW
optimiser, the sample iterator and training loop (`_fit_seq2seq`), the SID trie and its constrained beam search (one
user at a time, `score`). What is the harness's: the data, the Semantic IDs (the SID provider's table under the
options tiger runs with, so both generators learn the same codes; cornac numbers colliding items itself, as ours
does), validation every `eval_every` epochs with early stopping on the best validation state (cornac's own
`model_selection` only validates on a sample of users), and the evaluation. As with cornac-sasrec, the harness
reaches into cornac's loop at its epoch progress bar only (`cornac_peers.loop`).
"""
from __future__ import annotations

from collections import OrderedDict
from unittest import mock

import numpy as np
import torch

from harness.api import Budget, Method, TrainView
from cornac_peers.loop import ValidatedEpochs, import_cornac


class CornacTIGER(Method):
    name = "cornac-tiger"
    paper = ("Rajput et al., Recommender Systems with Generative Retrieval, NeurIPS 2023; cornac 3.0.1's "
             "cornac.models.TIGER")
    peer = "cornac 3.0.1"
    peer_of = "tiger"
    needs = ("item_text", "sids")

    def fit(self, train: TrainView, budget: Budget) -> None:
        cornac = import_cornac()
        from cornac.data import SequentialDataset
        from cornac.models.recommender import NextItemRecommender
        from cornac.models.tiger import recom_tiger

        cfg = self.config
        table, _ = train.semantic_ids(
            embedder=cfg["embedder"], embedder_options=cfg["embedder_options"], tokenizer=cfg["tokenizer"],
            collisions="dedup-token", seed=cfg["sid_seed"],
            tokenizer_options={"levels": cfg["levels"], "width": cfg["width"], **cfg["tokenizer_options"]})
        codes = np.asarray(table.codes, dtype=np.int64)
        # one session per user, its items in order; the item map is the identity, so cornac's item index is ours
        rows = [(u, u, int(item), t) for u, seq in enumerate(train.sequences) for t, item in enumerate(seq)]
        data = SequentialDataset.build(rows, fmt="USIT", global_iid_map=OrderedDict((i, i) for i in range(train.n_items)),
                                       seed=train.seed)
        self.cornac = cornac.models.TIGER(
            rqvae_num_levels=cfg["levels"], rqvae_codebook_size=cfg["width"], d_model=cfg["d_model"],
            d_ff=cfg["d_ff"], num_heads=cfg["num_heads"], d_kv=cfg["d_kv"], num_enc_layers=cfg["num_enc_layers"],
            num_dec_layers=cfg["num_dec_layers"], dropout=cfg["dropout"], max_len=cfg["max_len"],
            n_epochs=budget.epochs(int(cfg["epochs"])), learning_rate=cfg["learning_rate"],
            weight_decay=cfg["weight_decay"], batch_size=cfg["batch_size"], lr_schedule=cfg["lr_schedule"],
            warmup_steps=cfg["warmup_steps"], model_selection="last", n_beams=cfg["n_beams"],
            device=str(train.device), seed=train.seed, verbose=False)
        # cornac's TIGER.fit is its tokenizer then `_fit_seq2seq`; the tokenizer step is replaced by the harness's codes
        NextItemRecommender.fit(self.cornac, data)
        torch.manual_seed(train.seed)  # as TIGER.fit seeds torch before its model is built
        self.cornac.device_ = str(train.device)
        self.cornac._build_semantic_ids(codes[:, :-1])
        if not np.array_equal(self.cornac.sid_table, codes):
            raise RuntimeError("cornac numbers colliding items otherwise than the SID table: the peer would not learn "
                               "the SIDs tiger learns")
        epochs = ValidatedEpochs(self, train, budget, self.cornac.n_epochs)
        with mock.patch.object(recom_tiger, "trange", epochs):
            self.cornac._fit_seq2seq(torch, None)
        epochs.validation.finish()  # the state trained last judged too; the best one kept, in eval mode
        self.net = self.cornac.model  # counted by parameters_count

    @torch.no_grad()
    def score(self, histories: list[np.ndarray], items: torch.Tensor | None = None) -> torch.Tensor:
        """cornac's `score` per user: the log-probability of each of its `n_beams` beams' items, every other item
        far below (-1e10, cornac's value); an empty history scores every item alike, as cornac does."""
        self.cornac.model.eval()
        scores = torch.from_numpy(np.stack([self.cornac.score(None, [int(i) for i in h]) for h in histories])).float()
        return scores if items is None else scores[:, items]
