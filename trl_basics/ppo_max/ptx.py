"""PPO-max's pretraining-loss mix (ptx, Zheng et al. 2023, Eq. 17): the policy's next-token loss on plain texts.

The texts of a micro-batch are a function of its position in the run (see [`PtxDraws`]), so a resumed run draws
what the uninterrupted one would have drawn.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor, nn


def ptx_texts(ptx_dataset: Any, args: Any) -> list[str] | None:
    """The plain texts of ``ptx_dataset`` (a ``datasets.Dataset`` with column ``args.ptx_text_field``, or a list of
    strings), or None without one. Refuses a dataset without ``ptx_coef > 0`` and ``ptx_coef > 0`` without texts."""
    if ptx_dataset is None:
        if args.ptx_coef > 0:
            raise ValueError(f"ptx_coef={args.ptx_coef} needs plain texts: pass ptx_dataset to PPOMaxTrainer")
        return None
    if args.ptx_coef == 0:
        raise ValueError("ptx_dataset was given but ptx_coef is 0, so it would be ignored; set ptx_coef > 0")
    if isinstance(ptx_dataset, (list, tuple)):
        texts = [str(text) for text in ptx_dataset]
    else:
        if args.ptx_text_field not in ptx_dataset.column_names:
            raise ValueError(
                f"ptx_dataset has no column {args.ptx_text_field!r} (columns: {ptx_dataset.column_names}); set "
                "ptx_text_field"
            )
        texts = list(ptx_dataset[args.ptx_text_field])
    if not texts:
        raise ValueError("ptx_dataset is empty")
    return texts


class PtxDraws:
    """Draw k of the whole run reads position k of an endless sequence of seeded permutations of the texts
    (permutation e seeded with ``seed + e``)."""

    def __init__(self, texts: list[str], seed: int) -> None:
        self.texts = texts
        self.seed = seed
        self._permutations: dict[int, list[int]] = {}

    def batch(self, first: int, size: int) -> list[str]:
        """Draws ``first`` to ``first + size - 1``."""
        texts = self.texts
        batch = []
        for k in range(first, first + size):
            epoch, position = divmod(k, len(texts))
            if epoch not in self._permutations:
                generator = torch.Generator().manual_seed(self.seed + epoch)
                self._permutations = {epoch: torch.randperm(len(texts), generator=generator).tolist()}
            batch.append(texts[self._permutations[epoch][position]])
        return batch


def ptx_loss(policy: nn.Module, tokenizer: Any, texts: list[str], max_length: int, accelerator: Any) -> Tensor:
    """Mean next-token NLL of ``policy`` on ``texts`` (token mean over the batch), without a sampling temperature."""
    encoded = tokenizer(
        texts,
        return_tensors="pt",
        padding=True,
        truncation=True,
        max_length=max_length,
        padding_side="right",  # the first token of every text is then never predicted from a pad position
    ).to(accelerator.device)
    input_ids, attention_mask = encoded["input_ids"], encoded["attention_mask"]
    labels = input_ids.masked_fill(attention_mask == 0, -100)
    with accelerator.autocast():
        out = policy(input_ids=input_ids, attention_mask=attention_mask, labels=labels)
    return out.loss
