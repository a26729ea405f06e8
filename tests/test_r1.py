"""R1 of both losses (GMPI/GMNR and MVCGAN) against a hand computation with torch.autograd.grad.

Both losses call one gradient-penalty function; these tests pin its numbers to the letter
(``torch.equal``, not a tolerance), so a change to that function that moves any bit fails here."""
import contextlib
from types import SimpleNamespace

import torch

from gmnr.models.factory import camera_label
from gmnr.train.losses import GMPILoss, r1_penalty
from gmnr.train.mvcgan_loss import MVCGANLoss

GAMMA, INTERVAL = 10.0, 16


class _TinyD(torch.nn.Module):
    """A discriminator small enough to check by hand whose input gradient depends on the image
    (tanh), so the penalty is not a constant of the weights."""

    def __init__(self, label_dim: int = 0, with_pose: bool = False):
        super().__init__()
        gen = torch.Generator().manual_seed(0)
        self.image = torch.nn.Parameter(torch.randn(3 * 4 * 4, 5, generator=gen))
        self.label = torch.nn.Parameter(torch.randn(label_dim, 5, generator=gen)) if label_dim else None
        self.out = torch.nn.Parameter(torch.randn(5, 1, generator=gen))
        self.with_pose = with_pose

    def forward(self, image, second):
        hidden = image.flatten(1) @ self.image
        if self.label is not None:
            hidden = hidden + second @ self.label
        logits = torch.tanh(hidden) @ self.out
        return (logits, hidden[:, :2]) if self.with_pose else logits


def _reals():
    return torch.randn(3, 3, 4, 4, generator=torch.Generator().manual_seed(1))


def _by_hand(score, real):
    """gamma/2 * mean over the batch of ||d sum(D(x)) / dx||^2, times the lazy interval."""
    x = real.detach().requires_grad_(True)
    (grad,) = torch.autograd.grad(score(x).sum(), x, create_graph=True)
    penalty = grad.square().sum(dim=[1, 2, 3])
    return (GAMMA / 2) * penalty.mean() * INTERVAL, penalty.detach().mean()


def test_gmpi_r1_equals_the_hand_computation_bit_for_bit():
    D = _TinyD(label_dim=16)
    frame = torch.eye(4)
    cams = torch.eye(4).repeat(3, 1, 1)
    cams[:, 2, 3] = torch.tensor([2.0, 2.5, 3.0])
    loss = GMPILoss(None, D, GAMMA, 1, "const", contextlib.nullcontext, frame)
    value, stats = loss.r1_loss(_reals(), cams, INTERVAL)
    want, penalty = _by_hand(lambda x: D(x, camera_label(cams, frame)).float().squeeze(1), _reals())
    assert torch.equal(value, want) and torch.equal(stats["r1_penalty"], penalty)
    assert value.requires_grad  # create_graph: the penalty trains D
    assert value.item() > 0


def test_mvcgan_r1_equals_the_hand_computation_bit_for_bit():
    D = _TinyD(with_pose=True)
    loss = MVCGANLoss(None, D, None, SimpleNamespace(r1_gamma=GAMMA), "const", contextlib.nullcontext)
    value, stats = loss.r1_loss(_reals(), torch.eye(4).repeat(3, 1, 1), INTERVAL)
    want, penalty = _by_hand(lambda x: D(x, loss.fade)[0].float(), _reals())
    assert torch.equal(value, want) and torch.equal(stats["r1_penalty"], penalty)
    assert value.requires_grad and value.item() > 0


def test_the_shared_penalty_does_not_touch_the_callers_tensor():
    D = _TinyD()
    real = _reals()
    value, stats = r1_penalty(lambda x: D(x, None).squeeze(1), real, GAMMA, INTERVAL)
    want, penalty = _by_hand(lambda x: D(x, None).squeeze(1), real)
    assert torch.equal(value, want) and torch.equal(stats["r1_penalty"], penalty)
    assert not real.requires_grad and real.grad is None
