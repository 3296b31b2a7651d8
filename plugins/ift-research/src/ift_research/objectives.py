"""Training objectives of this distribution, written against ift's public API only.

``label-smoothing``: cross-entropy against the target smoothed towards the uniform distribution (Szegedy et al.,
2016, "Rethinking the Inception Architecture"): at each trained position ``(1 - smoothing) * -log p(target) +
smoothing * mean_v(-log p(v))`` over the vocabulary. ``smoothing = 0`` is plain next-token cross-entropy.
"""

from __future__ import annotations

from typing import Any

from pydantic import Field

import ift

MODEL_INPUTS = ("input_ids", "attention_mask", "position_ids")


class LabelSmoothing(ift.Objective):
    """Next-token cross-entropy with label smoothing; per-example sums, so per-source loss is reported."""

    name = "label-smoothing"

    class Config(ift.ObjectiveConfig):
        smoothing: float = Field(0.1, ge=0, lt=1, description="Probability mass spread over the whole vocabulary.")

    def loss(self, model: Any, batch: dict[str, Any]) -> ift.LossTerms:
        import torch
        import torch.nn.functional as F

        inputs = {k: batch[k] for k in MODEL_INPUTS if k in batch}
        logits = model(**inputs, use_cache=False).logits[:, :-1]
        labels = batch["labels"][:, 1:]  # position t predicts token t + 1
        keep = labels != -100
        logp = F.log_softmax(logits[keep].float(), dim=-1)
        smoothing = self.config.smoothing  # type: ignore[attr-defined]
        nll = -logp.gather(1, labels[keep][:, None]).squeeze(1)
        per_token = (1 - smoothing) * nll + smoothing * -logp.mean(dim=-1)
        # the example of each trained token: the row in padded batches, example_index in packed ones
        owner = batch["example_index"][:, 1:][keep] if "example_index" in batch else keep.nonzero()[:, 0]
        n = len(batch["record_ids"])
        sums = per_token.new_zeros(n).index_add(0, owner, per_token)
        counts = torch.zeros(n, dtype=torch.long, device=owner.device).index_add(0, owner, torch.ones_like(owner))
        return ift.LossTerms(sums.sum(), per_example=(sums, counts), figures={"nll": nll.detach().sum()})
