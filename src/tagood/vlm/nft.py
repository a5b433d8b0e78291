"""Negative Feature Tuning (NFT) of KR-NFT (Zhu, Zhang, Jin, Zeng, Zhang, "Knowledge Regularized
Negative Feature Tuning of Vision-Language Models for Out-of-Distribution Detection", ACM MM 2025).

Each text feature ``t`` (IND rows and negative rows) is transformed per image ``v``:
``t' = normalise(a * t + c)`` with ``a = s + ds(v)``, ``c = b + db(v)``; IND rows use
``(s+, b+, ds+, db+)``, negative rows ``(s-, b-, ds-, db-)``. ``s = 1``, ``b = 0`` (shared, E-dim);
the four ``d``-terms are meta-networks ``Linear(E,h)-ReLU-Linear(h,E)`` with a zero-initialised
last layer, so at initialisation ``t' = t``.

**Batched closed form** (no ``(B,R,E)`` tensor): for unit ``v`` the cosine logit is
``v.(a*t + c) / ||a*t + c||`` with ``v.(a*t+c) = (v*a).t + v.c`` and
``||a*t + c||^2 = (t^2).(a^2) + 2 t.(a*c) + ||c||^2`` -- three ``(B,E) x (E,R)`` matrix products.
The public code materialises ``t'`` per image and runs at batch size 1.
"""

from __future__ import annotations

import torch
from torch import nn


def meta_net(dim: int, hidden: int) -> nn.Sequential:
    """``Linear(dim,hidden)-ReLU-Linear(hidden,dim)`` with the last layer zero-initialised."""
    net = nn.Sequential(nn.Linear(dim, hidden), nn.ReLU(), nn.Linear(hidden, dim))
    nn.init.zeros_(net[2].weight)
    nn.init.zeros_(net[2].bias)
    return net


def nft_cosine(v: torch.Tensor, t: torch.Tensor, a: torch.Tensor, c: torch.Tensor, eps: float = 1e-12,
               t_sq: torch.Tensor | None = None) -> torch.Tensor:
    """``cos(v_i, a_i*t_r + c_i)`` for all images i and rows r, (B,R), via the closed-form norm.

    ``v`` (B,E) need not be normalised (it is divided by its norm); ``t`` (R,E); ``a``, ``c`` (B,E);
    ``t_sq`` optionally the precomputed ``t * t``.
    """
    vn = v / v.norm(dim=1, keepdim=True).clamp_min(eps)
    t_sq = t * t if t_sq is None else t_sq
    num = (vn * a) @ t.T + (vn * c).sum(1, keepdim=True)
    norm2 = (a * a) @ t_sq.T + (2 * a * c) @ t.T + (c * c).sum(1, keepdim=True)
    return num / norm2.clamp_min(eps * eps).sqrt()


def nft_self_cosine(t: torch.Tensor, a: torch.Tensor, c: torch.Tensor, eps: float = 1e-12) -> torch.Tensor:
    """``cos(a_i*t_r + c_i, t_r)`` (B,R) in closed form (the knowledge-regularisation term)."""
    tn = t.norm(dim=1).clamp_min(eps)
    num = a @ (t * t).T + c @ t.T
    norm2 = (a * a) @ (t * t).T + (2 * a * c) @ t.T + (c * c).sum(1, keepdim=True)
    return num / (norm2.clamp_min(eps * eps).sqrt() * tn)


def scaled_cosines_inference(v: torch.Tensor, t: torch.Tensor, t_sq_t: torch.Tensor, a: torch.Tensor, c: torch.Tensor,
                             scale: float, eps: float = 1e-12) -> torch.Tensor:
    """``scale * nft_cosine(v, t, a, c)`` for scoring (no autograd): the same closed form with the two
    norm products fused into one matrix product against ``t_sq_t = cat([t*t, t], 1)`` (R,2E) and
    the elementwise steps done in place (about 25% faster than :func:`nft_cosine` on a CPU)."""
    vn = v / v.norm(dim=1, keepdim=True).clamp_min(eps)
    num = torch.addmm((vn * c).sum(1, keepdim=True), vn * a, t.T)
    norm2 = torch.addmm((c * c).sum(1, keepdim=True), torch.cat([a * a, 2 * a * c], 1), t_sq_t.T)
    return num.mul_(norm2.clamp_min_(eps * eps).rsqrt_()).mul_(scale)


class NFT(nn.Module):
    """The NFT module: shared scale/shift per row kind plus four image-conditional meta-networks."""

    def __init__(self, dim: int, hidden: int = 32) -> None:
        super().__init__()
        self.dim, self.hidden = int(dim), int(hidden)
        self.s_pos = nn.Parameter(torch.ones(dim))
        self.b_pos = nn.Parameter(torch.zeros(dim))
        self.s_neg = nn.Parameter(torch.ones(dim))
        self.b_neg = nn.Parameter(torch.zeros(dim))
        self.ds_pos, self.db_pos = meta_net(dim, hidden), meta_net(dim, hidden)
        self.ds_neg, self.db_neg = meta_net(dim, hidden), meta_net(dim, hidden)

    def factors(self, v: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
        """Per-image ``(a+, c+, a-, c-)``, each (B,E)."""
        return (self.s_pos + self.ds_pos(v), self.b_pos + self.db_pos(v),
                self.s_neg + self.ds_neg(v), self.b_neg + self.db_neg(v))

    def cosines(self, v: torch.Tensor, t_pos: torch.Tensor, t_neg: torch.Tensor,
                squares: tuple[torch.Tensor, torch.Tensor] | None = None) -> torch.Tensor:
        """Cosines of images (B,E) to the tuned IND rows then negative rows: (B, K+M), batched closed form.
        ``squares``: precomputed ``(t_pos**2, t_neg**2)`` when scoring many batches."""
        ap, cp, an, cn = self.factors(v)
        sp, sn = squares if squares is not None else (None, None)
        return torch.cat([nft_cosine(v, t_pos, ap, cp, t_sq=sp), nft_cosine(v, t_neg, an, cn, t_sq=sn)], dim=1)

    def kr_cosine(self, v: torch.Tensor, t_pos: torch.Tensor, t_neg: torch.Tensor) -> torch.Tensor:
        """``cos(t'(v), t)`` for every image and row, (B, K+M)."""
        ap, cp, an, cn = self.factors(v)
        return torch.cat([nft_self_cosine(t_pos, ap, cp), nft_self_cosine(t_neg, an, cn)], dim=1)

    def tuned_rows(self, v: torch.Tensor, t_pos: torch.Tensor, t_neg: torch.Tensor) -> torch.Tensor:
        """Explicit normalised ``t'`` for ONE image ``v`` (E,): (K+M, E). Reference / per-image path."""
        ap, cp, an, cn = (f[0] for f in self.factors(v[None]))
        rows = torch.cat([ap * t_pos + cp, an * t_neg + cn])
        return rows / rows.norm(dim=1, keepdim=True).clamp_min(1e-12)


def per_image_cosines(nft: NFT, v: torch.Tensor, t_pos: torch.Tensor, t_neg: torch.Tensor) -> torch.Tensor:
    """The batch-size-1 computation of the public code: materialise ``t'`` for each image in turn."""
    vn = v / v.norm(dim=1, keepdim=True).clamp_min(1e-12)
    return torch.stack([nft.tuned_rows(v[i], t_pos, t_neg) @ vn[i] for i in range(len(v))])
