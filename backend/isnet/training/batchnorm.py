"""BatchNorm during fine-tuning: frozen.

Why: the pretrained checkpoint was converted from a graph with BatchNorm folded into the
convolutions, so its BatchNorm layers are identities (weight 1, bias 0, running mean 0,
running variance 1 - eps): the convolutions already produce the normalised activations.
In train mode a BatchNorm layer would instead normalise by the statistics of the current
batch, which are not mean 0 / variance 1, so the very first forward pass would compute a
different function (measured on 8 DUTS-TE images at 320, batch 2, before any update: MAE
0.0875 with BN frozen, 0.296 in train mode), and at batch size 2 those statistics are also
noise. Frozen, the layers stay the identity (or, for an official checkpoint with real
statistics, the trained normalisation), exactly as at serving time, and all learning goes into
the convolutions. The GT encoder, trained from scratch, keeps ordinary train-mode BatchNorm.
"""

from __future__ import annotations

from torch import nn

_BN_TYPES = (nn.BatchNorm1d, nn.BatchNorm2d, nn.BatchNorm3d, nn.SyncBatchNorm)


def batchnorm_layers(model: nn.Module) -> list[nn.Module]:
    return [m for m in model.modules() if isinstance(m, _BN_TYPES)]


def set_train_mode(model: nn.Module, bn: str = "frozen") -> nn.Module:
    """``model.train()``, except that with ``bn="frozen"`` every BatchNorm stays in eval mode
    with its affine parameters excluded from training (call again after any ``.train()``)."""
    model.train()
    if bn == "frozen":
        for layer in batchnorm_layers(model):
            layer.eval()
            for param in layer.parameters(recurse=False):
                param.requires_grad_(False)
    return model


def freeze(model: nn.Module) -> nn.Module:
    """Eval mode and no gradients at all: the GT encoder once it is used as a teacher."""
    model.eval()
    for param in model.parameters():
        param.requires_grad_(False)
    return model
