"""Training losses beyond the paper's MSE: the Procrustes-aligned (PA) error, in torch, batched.

    loss = F.mse_loss(pred, y) + w * pa_loss(pred, y)       # optim.pa_loss_weight = w

PA-MPJPE, the paper's score, ignores the hand's scale, rotation and position: it aligns each
prediction onto its truth first. MSE on the raw points spends the model's early capacity on
orientation and size (the mean-pose plateau); the PA loss puts a gradient on the articulation
from the first step. It is the squared error after the best similarity alignment, averaged like
`F.mse_loss` (over samples, joints and axes), so it is in mm^2 like the MSE and a weight of 1
weighs both equally.

The alignment (s, R, t) is Umeyama's closed form from one batched `torch.linalg.svd`, computed
WITHOUT gradient. That is exact, not an approximation: the loss is a minimum over (s, R, t), so
by the envelope theorem its gradient with respect to the prediction is the partial gradient at
the minimiser, which treats (s, R, t) as constants. It is also what makes the loss safe: the
SVD's own backward divides by differences of singular values and blows up for symmetric or
collapsed predictions, while this gradient stays finite (a prediction with all joints at one
point gets scale 0 and gradient 0 from this term, and the MSE term moves it on).
"""

from __future__ import annotations

import torch

_EPS = 1e-12


@torch.no_grad()
def similarity_fit(pred: torch.Tensor, gt: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(scale (B,), rotation (B, 3, 3), translation (B, 3)) minimising |s * pred @ R.T + t - gt|^2.

    No reflection: R is a proper rotation, as `metrics.procrustes_align(..., allow_reflection=False)`.
    pred, gt: (B, J, 3). Computed in float64 without gradient.
    """
    p64, g64 = pred.detach().double(), gt.detach().double()
    mu_p, mu_g = p64.mean(dim=1, keepdim=True), g64.mean(dim=1, keepdim=True)
    p, g = p64 - mu_p, g64 - mu_g
    cov = p.transpose(1, 2) @ g  # (B, 3, 3): sum_j p_j g_j^T
    # A diverged prediction (NaN/inf) would make the SVD raise; fit it as collapsed instead, so the
    # loss comes out non-finite and the trainer stops the run as diverged (its own check).
    cov = torch.where(torch.isfinite(cov).all(dim=(1, 2), keepdim=True), cov, torch.zeros_like(cov))
    u, sv, vh = torch.linalg.svd(cov)
    d = torch.ones_like(sv)
    sign = torch.sign(torch.linalg.det(u @ vh))
    d[:, -1] = torch.where(sign == 0, torch.ones_like(sign), sign)
    rot = vh.transpose(1, 2) @ torch.diag_embed(d) @ u.transpose(1, 2)  # V diag(d) U^T
    var_p = (p * p).sum(dim=(1, 2))
    scale = (sv * d).sum(dim=1) / var_p.clamp_min(_EPS)
    trans = mu_g[:, 0] - scale[:, None] * torch.einsum("bij,bj->bi", rot, mu_p[:, 0])
    return scale, rot, trans


def pa_aligned(pred: torch.Tensor, gt: torch.Tensor) -> torch.Tensor:
    """pred (B, J, 3) similarity-aligned onto gt; differentiable in pred (the fit itself is constant)."""
    scale, rot, trans = similarity_fit(pred, gt)
    dtype = pred.dtype
    return scale.to(dtype)[:, None, None] * (pred @ rot.to(dtype).transpose(1, 2)) + trans.to(dtype)[:, None]


def pa_loss(pred: torch.Tensor, gt: torch.Tensor) -> torch.Tensor:
    """Mean squared error (mm^2, averaged over samples, joints and axes) after the PA alignment."""
    _check(pred, gt)
    return (pa_aligned(pred, gt) - gt).pow(2).mean()


def pa_mpjpe(pred: torch.Tensor, gt: torch.Tensor) -> torch.Tensor:
    """PA-MPJPE in torch (mean joint distance after alignment): `metrics.pa_mpjpe_mm` for tensors."""
    _check(pred, gt)
    return (pa_aligned(pred, gt) - gt).norm(dim=-1).mean()


def _check(pred: torch.Tensor, gt: torch.Tensor) -> None:
    if pred.dim() != 3 or pred.shape[-1] != 3 or pred.shape != gt.shape:
        raise ValueError(f"expected pred and gt of one shape (B, J, 3), got {tuple(pred.shape)} and {tuple(gt.shape)}")
