"""Perplexity of a causal LM on non-overlapping token windows (QuaRot's protocol).

Each window is scored independently from an empty context; the perplexity is exp of the mean negative
log-likelihood over every predicted token of every window (all windows have the same length, so this equals
QuaRot's mean of per-window mean NLLs).
"""

from __future__ import annotations

import math

import torch
from tqdm.auto import tqdm

from qift_hw.core.errors import QiftError


def _logits(out) -> torch.Tensor:
    return out.logits if hasattr(out, "logits") else out[0]


@torch.no_grad()
def window_nlls(
    model: torch.nn.Module,
    windows: torch.Tensor,
    device: torch.device | str = "cpu",
    batch_size: int = 1,
    progress: bool = True,
    desc: str = "ppl",
) -> torch.Tensor:
    """Summed NLL (float64) of each window [n] over its seqlen-1 predicted tokens."""
    if windows.dim() != 2 or windows.shape[0] == 0 or windows.shape[1] < 2:
        raise QiftError(f"evaluation needs windows [n>=1, seqlen>=2] of token ids, got {tuple(windows.shape)}")
    if batch_size < 1:
        raise QiftError(f"batch size must be >= 1, got {batch_size}")
    was_training = model.training
    model.eval()
    sums = []
    n = windows.shape[0]
    bar = tqdm(total=n, desc=desc, unit="win", disable=not progress, leave=False)
    try:
        for b0 in range(0, n, batch_size):
            ids = windows[b0 : b0 + batch_size].to(device)
            logits = _logits(model(input_ids=ids, use_cache=False))
            logp = torch.log_softmax(logits[:, :-1].float(), dim=-1)
            target = ids[:, 1:].unsqueeze(-1)
            nll = -logp.gather(-1, target).squeeze(-1)
            sums.append(nll.double().sum(dim=1).cpu())
            bar.update(ids.shape[0])
    finally:
        bar.close()
        model.train(was_training)
    return torch.cat(sums)


def ppl_from_nlls(nlls: torch.Tensor, seqlen: int) -> float:
    """exp(total NLL / number of predicted tokens) for windows of length seqlen."""
    return math.exp(float(nlls.sum()) / (nlls.numel() * (seqlen - 1)))


def evaluate_ppl(
    model: torch.nn.Module,
    windows: torch.Tensor,
    device: torch.device | str = "cpu",
    batch_size: int = 1,
    progress: bool = True,
) -> float:
    """Perplexity over non-overlapping windows [n, seqlen] (token ids)."""
    nlls = window_nlls(model, windows, device=device, batch_size=batch_size, progress=progress)
    return ppl_from_nlls(nlls, windows.shape[1])
