"""KR-NFT training in the public script's form (the ``paper`` and ``official`` presets of
:class:`tagood.detectors.vlm.krnft.KRNFT`; Zhu et al., ACM MM 2025, arXiv 2507.19847, and its public code
github.com/ZhuWenjie98/KRNFT at commit 86cdbbd6, ``openood/trainers/krnft_trainer.py``).

The formulas, written from the published code's behaviour (file:line there):

* meta-network width (``openood/networks/clip_krnft.py:631-633``): ``hidden = E // int(512 / meta_dim)``
  (:func:`script_hidden`; ``meta_dim`` 64 from ``scripts/ood/krnft/krnft_shot4_train.sh:40`` gives 64 at E = 512);
* negatives in groups (``krnft_trainer.py:305-326``): the last ``M mod G`` negatives are dropped, the rest
  permuted once and cut into ``G`` groups of ``M // G``; each group is softmaxed together with the K IND rows
  (:func:`group_columns`, :func:`grouped_logits`);
* ``L_in`` (``krnft_trainer.py:243-258``): cross-entropy of the label over every (view, group) softmax, averaged;
* ``L_out`` in the script's form (``krnft_trainer.py:265-280``): the mean over (surrogate-OOD crop, group) of
  ``log(sum_{r <= K} p_r + 1e-16)``, *minimised* (unbounded below); ``bounded`` is ours:
  ``-log sum_{r > K} p_r``;
* ``L_kr`` (``krnft_trainer.py:290-292``): ``1 - mean cos(t'_r(c), t_r)`` over all K + M rows (ungrouped) for each
  conditioning vector ``c``;
* the schedule (``krnft_trainer.py:82-88`` and ``311-313``): an epoch takes ``int(steps / 10)`` steps, and the grouping
  helper's ``torch.manual_seed(0)`` on every loss call resets the global generator, so the data loader of every epoch
  after the first draws the same shuffle and crop seeds (:func:`epoch_plan`).
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F

from tagood.detectors.vlm.nft import NFT, nft_cosine, nft_self_cosine

log = logging.getLogger(__name__)

#: the public script's constant in the width formula (``clip_krnft.py:631``: ``int(512 / meta_dim)``)
SCRIPT_WIDTH_BASE = 512
#: the epsilon inside the script's ``log`` of L_out (``krnft_trainer.py:278``)
LOG_EPS = 1e-16


def optimizer_step(opt: torch.optim.Optimizer, sched: torch.optim.lr_scheduler.LRScheduler | None,
                   terms: dict[str, torch.Tensor], tot: dict[str, float], n_steps: int) -> None:
    """One optimiser step on ``terms["loss"]`` (then the schedule's), adding each term's value / ``n_steps`` to the
    epoch's running means ``tot``: the step of both KR-NFT training loops."""
    opt.zero_grad()
    terms["loss"].backward()
    opt.step()
    if sched is not None:
        sched.step()
    for key, val in terms.items():
        tot[key] += float(val.detach()) / n_steps


def script_hidden(dim: int, meta_dim: int) -> int:
    """The public script's meta-network hidden width: ``dim // int(512 / meta_dim)``.

    Args:
        dim: the image feature width ``E`` (the script's ``vis_dim``; 512 for CLIP ViT-B/16).
        meta_dim: the script's ``--network.backbone.meta_dim`` (64 in ``krnft_shot4_train.sh``).
    Returns:
        The hidden width (at least 1): 64 for ``dim = 512, meta_dim = 64``; 8 for ``meta_dim = 8``.
    """
    div = int(SCRIPT_WIDTH_BASE / int(meta_dim))
    if div < 1:
        raise ValueError(f"meta_dim {meta_dim} is above {SCRIPT_WIDTH_BASE}: the script's divisor int(512 / meta_dim) is 0")
    return max(1, int(dim) // div)


def group_columns(m: int, n_groups: int, seed: int) -> torch.Tensor:
    """The negative columns of each group: ``(G, M // G)`` indices into the M negatives.

    The last ``M mod G`` negatives are dropped (as the script does), the rest permuted once by ``seed`` (the
    script permutes with a fixed seed on every call, so its groups are fixed too) and cut into ``G`` groups.
    ``G = 1``: all negatives in their order.
    """
    if n_groups <= 1:
        return torch.arange(m)[None]
    keep = m - m % n_groups
    if keep == 0:
        raise ValueError(f"{m} negatives cannot fill {n_groups} groups")
    perm = torch.randperm(keep, generator=torch.Generator().manual_seed(int(seed)))
    return perm.reshape(n_groups, keep // n_groups)


def grouped_logits(logits: torch.Tensor, k: int, groups: torch.Tensor) -> torch.Tensor:
    """``(N, K + M)`` logits -> ``(N, G, K + M // G)``: the K IND columns followed by each group's negatives."""
    ind = logits[:, :k]
    neg = logits[:, k:][:, groups]  # (N, G, M//G)
    return torch.cat([ind[:, None, :].expand(-1, groups.shape[0], -1), neg], dim=2)


def loss_in(logits: torch.Tensor, y: torch.Tensor, k: int, groups: torch.Tensor) -> torch.Tensor:
    """Cross-entropy of the label ``y`` (N,) over every group's softmax of ``[IND rows, group]``, averaged over all
    (view, group) pairs (``krnft_trainer.py:249-258``; one group of all negatives = plain cross-entropy)."""
    z = grouped_logits(logits, k, groups)
    return F.cross_entropy(z.reshape(-1, z.shape[-1]), y.repeat_interleave(z.shape[1]))


def loss_out(logits: torch.Tensor, k: int, groups: torch.Tensor, form: str) -> torch.Tensor:
    """L_out of the surrogate-OOD views' ``(N, K + M)`` logits, averaged over (view, group).

    ``form="script"``: ``log(p_IND + 1e-16)`` with ``p_IND`` the IND rows' share of the group softmax, minimised
    (``krnft_trainer.py:277-279``); ``form="bounded"``: ``-log(1 - p_IND)`` computed as ``-logsumexp`` of the
    negatives' log-probabilities (ours).
    """
    if logits.shape[0] == 0:
        return logits.new_zeros(())
    logp = torch.log_softmax(grouped_logits(logits, k, groups), dim=2)
    if form == "script":
        return torch.log(logp[:, :, :k].exp().sum(2) + LOG_EPS).mean()
    return -torch.logsumexp(logp[:, :, k:], dim=2).mean()


def kr_loss(nft: NFT, cond: torch.Tensor, t_pos: torch.Tensor, t_neg: torch.Tensor) -> torch.Tensor:
    """``1 - mean cos(t'(c), t)`` over the conditioning vectors ``cond`` (B,E) and all K + M rows."""
    ap, cp, an, cn = nft.factors(cond)
    return 1.0 - torch.cat([nft_self_cosine(t_pos, ap, cp), nft_self_cosine(t_neg, an, cn)], dim=1).mean()


def conditioned_logits(nft: NFT, views: torch.Tensor, cond: torch.Tensor, owner: torch.Tensor, t_pos: torch.Tensor,
                       t_neg: torch.Tensor, scale: float) -> torch.Tensor:
    """``scale * cos(v, t'(c))`` (N, K + M) for views ``v`` (N,E), each tuned by the factors of ``cond[owner]``."""
    ap, cp, an, cn = (f[owner] for f in nft.factors(cond))
    return scale * torch.cat([nft_cosine(views, t_pos, ap, cp), nft_cosine(views, t_neg, an, cn)], dim=1)


@dataclass(frozen=True)
class Epoch:
    """One training epoch: the crop set it reads (``crop_set``) and the images of its steps, in order (``order``,
    ``steps * batch`` indices at most)."""

    crop_set: int
    order: np.ndarray


def epoch_plan(n: int, epochs: int, batch_size: int, fraction: float, seed_reset: bool, seed: int,
               redraw: bool) -> list[Epoch]:
    """The images each epoch visits and the crop set it reads.

    Args:
        n: few-shot images; ``epochs``: epochs; ``batch_size``: images per step.
        fraction: the share of the steps an epoch takes (the script: ``int(steps / 10)``, so 0.1; ours 1.0).
        seed_reset: the script's defect: every epoch after the first repeats the second epoch's shuffle and crops
            (its global seed is reset to 0 at the end of each step; the data loader draws its seeds from it).
        seed: the shuffle's seed; ``redraw``: fresh crops each epoch (the script's data loader) or one set throughout.
    Returns:
        One :class:`Epoch` per epoch.
    """
    steps_all = max(1, -(-n // batch_size))
    steps = int(steps_all * fraction) if fraction < 1.0 else steps_all
    if steps == 0:
        raise ValueError(f"an epoch of {fraction} of {steps_all} steps has no step: use more images or a larger fraction")
    out = []
    for ep in range(epochs):
        draw = min(ep, 1) if seed_reset else ep  # seed reset: epochs 2, 3, ... all draw as the second
        perm = np.random.default_rng([int(seed), 7, draw]).permutation(n)[: steps * batch_size]
        out.append(Epoch(crop_set=draw if redraw else 0, order=perm))
    return out


@dataclass
class Views:
    """The training views of the script-form loop: per crop set and image, the surrogate-IND crops ``ind``
    (R, k_in, E, the most label-like first: ``ind[:, 0]`` is the top-1 crop) and surrogate-OOD crops ``ood``
    (R, k_out, E); ``row[set][i]`` the row of image ``i``'s crops in set ``set`` (-1: not cut); ``full`` (n, E) the
    images' own embeddings; ``labels`` (n,)."""

    ind: np.ndarray
    ood: np.ndarray
    row: dict[int, np.ndarray]
    full: np.ndarray
    labels: np.ndarray


def train_views(nft: NFT, views: Views, plan: list[Epoch], t_pos: torch.Tensor, t_neg: torch.Tensor, scale: float, *,
                lr: float, weight_decay: float, schedule: str, batch_images: int, n_groups: int, group_seed: int,
                condition: str, in_views: str, l_out_form: str, w_out: float, w_kr: float,
                progress: Callable[[int], None] | None = None) -> list[dict[str, float]]:
    """Train ``nft`` (in place) in the public script's form; the options are those of
    :class:`tagood.detectors.vlm.krnft.KRNFT` (``condition``: ``top1`` = every view of an image tuned by its top-1
    crop, ``input`` = each view by itself; ``in_views``: ``crops`` = L_in over the top crops only, ``full+crops`` =
    the image too). Returns the per-epoch means of the loss and its terms ``in``, ``out``, ``kr``."""
    dev = t_pos.device
    k = t_pos.shape[0]
    groups = group_columns(t_neg.shape[0], n_groups, group_seed).to(dev)
    opt = torch.optim.AdamW(nft.parameters(), lr=lr, weight_decay=weight_decay)
    steps = [-(-len(ep.order) // batch_images) for ep in plan]
    sched = (torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=max(1, sum(steps))) if schedule == "cosine" else None)
    ind_all = torch.as_tensor(views.ind, dtype=torch.float32, device=dev)
    ood_all = torch.as_tensor(views.ood, dtype=torch.float32, device=dev)
    full_all = torch.as_tensor(views.full, dtype=torch.float32, device=dev)
    lab_all = torch.as_tensor(views.labels, dtype=torch.int64, device=dev)
    history = []
    for ep, n_steps in zip(plan, steps, strict=True):
        rows_of = views.row[ep.crop_set]
        tot = {"loss": 0.0, "in": 0.0, "out": 0.0, "kr": 0.0}
        for s in range(n_steps):
            imgs = ep.order[s * batch_images : (s + 1) * batch_images]
            r = torch.as_tensor(rows_of[imgs], device=dev)
            ind, ood = ind_all[r], ood_all[r]
            b, k_in, e = ind.shape
            k_out = ood.shape[1]
            y = lab_all[torch.as_tensor(imgs, device=dev)]
            v_in, own_in, y_in = ind.reshape(-1, e), torch.arange(b, device=dev).repeat_interleave(k_in), \
                y.repeat_interleave(k_in)
            if in_views == "full+crops":
                v_in = torch.cat([full_all[torch.as_tensor(imgs, device=dev)], v_in])
                own_in, y_in = torch.cat([torch.arange(b, device=dev), own_in]), torch.cat([y, y_in])
            v_out, own_out = ood.reshape(-1, e), torch.arange(b, device=dev).repeat_interleave(k_out)
            if condition == "top1":
                cond = ind[:, 0]
                z_in = conditioned_logits(nft, v_in, cond, own_in, t_pos, t_neg, scale)
                z_out = conditioned_logits(nft, v_out, cond, own_out, t_pos, t_neg, scale)
            else:
                cond = torch.cat([v_in, v_out])
                own = torch.arange(len(cond), device=dev)
                z = conditioned_logits(nft, cond, cond, own, t_pos, t_neg, scale)
                z_in, z_out = z[: len(v_in)], z[len(v_in) :]
            l_in = loss_in(z_in, y_in, k, groups)
            l_out = loss_out(z_out, k, groups, l_out_form)
            l_kr = kr_loss(nft, cond, t_pos, t_neg)
            loss = l_in + w_out * l_out + w_kr * l_kr
            optimizer_step(opt, sched, {"loss": loss, "in": l_in, "out": l_out, "kr": l_kr}, tot, n_steps)
        history.append(tot)
        log.debug("KR-NFT (script form) epoch: %s", tot)
        if progress is not None:
            progress(1)
    nft.eval()
    return history
