"""Contrastive pretraining of a vision tower on image / caption pairs, the way CLIP is trained.

The image side is the tower itself, read where the video LMM reads it: the hidden states of
`feature_layer` without CLS, averaged over patches (the same average a temporal token of the
spatio-temporal pooling takes). The caption side is a small transformer over the captions' words.
Both are projected to a shared space; a symmetric InfoNCE loss with a learnt temperature pulls each
image towards its caption and away from the others in the batch. Identical captions in a batch are
all positives (a toy world repeats captions often; treating them as negatives would teach the
tower to tell apart frames that the text cannot).

Only the tower is kept: it is what LLaVA takes from CLIP.
"""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

log = logging.getLogger(__name__)


class CaptionEncoder(nn.Module):
    """Words -> embeddings + positions -> transformer encoder -> mean over words -> projection."""

    def __init__(self, vocabulary: list[str], width: int, out_dim: int, max_words: int, layers: int = 2):
        super().__init__()
        self.index = {w: i + 1 for i, w in enumerate(vocabulary)}  # 0 is padding
        self.max_words = max_words
        self.embed = nn.Embedding(len(vocabulary) + 1, width, padding_idx=0)
        self.position = nn.Parameter(torch.zeros(max_words, width))
        layer = nn.TransformerEncoderLayer(width, nhead=2, dim_feedforward=2 * width, batch_first=True, dropout=0.0)
        self.encoder = nn.TransformerEncoder(layer, layers, enable_nested_tensor=False)
        self.project = nn.Linear(width, out_dim)

    def tokenize(self, captions: list[str]) -> torch.Tensor:
        ids = torch.zeros(len(captions), self.max_words, dtype=torch.long)
        for row, caption in enumerate(captions):
            words = caption.split()[: self.max_words]
            ids[row, : len(words)] = torch.tensor([self.index[w] for w in words])
        return ids

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        mask = ids == 0
        hidden = self.encoder(self.embed(ids) + self.position[: ids.shape[1]], src_key_padding_mask=mask)
        keep = (~mask).unsqueeze(-1).float()
        return self.project((hidden * keep).sum(1) / keep.sum(1).clamp(min=1))


def tower_embedding(tower: nn.Module, pixels: torch.Tensor, feature_layer: int) -> torch.Tensor:
    """The mean over patches of the tower's `feature_layer` hidden states (CLS dropped)."""
    hidden = tower(pixels, output_hidden_states=True).hidden_states[feature_layer][:, 1:]
    return hidden.mean(dim=1)


def contrastive_loss(image: torch.Tensor, text: torch.Tensor, logit_scale: torch.Tensor, same: torch.Tensor):
    """Symmetric InfoNCE; `same[i, j]` is True when captions i and j are identical (all positives).
    Returns (loss, image-to-text top-1 accuracy counting any identical caption as right)."""
    image, text = F.normalize(image, dim=-1), F.normalize(text, dim=-1)
    logits = logit_scale.exp().clamp(max=100) * image @ text.T
    targets = same.float() / same.float().sum(dim=1, keepdim=True)
    loss = (torch.sum(-targets * F.log_softmax(logits, dim=1), dim=1).mean()
            + torch.sum(-targets * F.log_softmax(logits.T, dim=1), dim=1).mean()) / 2
    accuracy = same[torch.arange(len(same)), logits.argmax(dim=1)].float().mean()
    return loss, accuracy


@dataclass
class ContrastiveSettings:
    steps: int = 1500
    batch_size: int = 256
    lr: float = 1.0e-3
    weight_decay: float = 0.01
    warmup_steps: int = 50
    text_width: int = 64
    embed_dim: int = 64
    eval_fraction: float = 0.05
    seed: int = 0


def pretrain_tower(
    tower: nn.Module,
    pixels: torch.Tensor,
    captions: list[str],
    settings: ContrastiveSettings,
    *,
    feature_layer: int,
    on_log=None,
) -> dict:
    """Train `tower` (in place) on (pixels[i], captions[i]); the last eval_fraction of the pairs is
    held out. Returns the held-out loss and retrieval accuracy before and after."""
    generator = torch.Generator().manual_seed(settings.seed)
    torch.manual_seed(settings.seed)
    vocabulary = sorted({w for c in captions for w in c.split()})
    max_words = max(len(c.split()) for c in captions)
    text = CaptionEncoder(vocabulary, settings.text_width, settings.embed_dim, max_words)
    image_head = nn.Linear(tower.config.hidden_size, settings.embed_dim)
    logit_scale = nn.Parameter(torch.tensor(math.log(1 / 0.07)))
    ids = text.tokenize(captions)
    caption_codes = torch.as_tensor(np.unique(np.asarray(captions), return_inverse=True)[1]).reshape(-1)
    n_eval = max(1, int(len(captions) * settings.eval_fraction))
    train_idx, eval_idx = torch.arange(len(captions) - n_eval), torch.arange(len(captions) - n_eval, len(captions))

    params = [*tower.parameters(), *text.parameters(), *image_head.parameters(), logit_scale]
    optimizer = torch.optim.AdamW(params, lr=settings.lr, weight_decay=settings.weight_decay)

    def schedule(step):  # linear warm-up, cosine decay
        if step < settings.warmup_steps:
            return (step + 1) / settings.warmup_steps
        return 0.5 * (1 + math.cos(math.pi * (step - settings.warmup_steps) / max(1, settings.steps - settings.warmup_steps)))

    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, schedule)

    def batch_loss(index):
        codes = caption_codes[index]
        same = codes[:, None] == codes[None, :]
        image = image_head(tower_embedding(tower, pixels[index], feature_layer))
        return contrastive_loss(image, text(ids[index]), logit_scale, same)

    def evaluate():
        tower.eval(), text.eval()
        with torch.no_grad():
            loss, accuracy = batch_loss(eval_idx[: settings.batch_size])
        tower.train(), text.train()
        return float(loss), float(accuracy)

    before = evaluate()
    tower.train()
    for step in range(settings.steps):
        index = train_idx[torch.randint(len(train_idx), (settings.batch_size,), generator=generator)]
        loss, accuracy = batch_loss(index)
        optimizer.zero_grad()
        loss.backward()
        grad_norm = torch.nn.utils.clip_grad_norm_(params, 1.0)
        optimizer.step()
        scheduler.step()
        if on_log and (step % 50 == 0 or step == settings.steps - 1):
            on_log({"step": step, "loss": loss.item(), "accuracy": accuracy.item(), "lr": scheduler.get_last_lr()[0],
                    "grad_norm": float(grad_norm)})
    tower.eval()
    after = evaluate()
    return {
        "pairs": len(captions), "distinct_captions": int(caption_codes.max()) + 1, "heldout_pairs": n_eval,
        "heldout_loss_before": before[0], "heldout_accuracy_before": before[1],
        "heldout_loss": after[0], "heldout_accuracy": after[1],
    }


__all__ = ["CaptionEncoder", "ContrastiveSettings", "contrastive_loss", "pretrain_tower", "tower_embedding"]
