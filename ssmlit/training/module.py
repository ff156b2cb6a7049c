"""SequenceClassifier: the LightningModule around :class:`~ssmlit.models.SequenceModel`."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import lightning.pytorch as pl
import torch
import torch.nn.functional as F
from lightning.pytorch.utilities import rank_zero_info
from torch import nn
from torchmetrics.classification import MulticlassAccuracy

from ssmlit.models import SequenceModel, count_parameters

from .optim import check_optim, param_groups, warmup_cosine

DEFAULT_OPTIM = dict(
    lr=4e-3, ssm_lr=1e-3, weight_decay=0.05, opt_config="standard", dt_global=False,
    betas=(0.9, 0.999), warmup_epochs=1.0, min_lr_ratio=0.0,
)


class SequenceClassifier(pl.LightningModule):
    """Cross-entropy classification with a deep SSM.

    Args:
        model: keyword arguments of :class:`~ssmlit.models.SequenceModel` (task-dependent ones
            included: ``d_input``/``vocab_size``, ``d_output``, ``retrieval``).
        optim: ``lr``, ``ssm_lr``, ``weight_decay``, ``opt_config``, ``dt_global``, ``betas``,
            ``warmup_epochs`` (linear warmup length, may be fractional), ``min_lr_ratio`` (cosine
            floor as a fraction of each group's lr). Missing keys take ``DEFAULT_OPTIM``.
        val_variants, test_variants: ``(name, step_rescale)`` of each evaluation dataloader, in
            dataloader order; metrics are logged as ``{name}/acc`` and ``{name}/loss``.
    """

    def __init__(
        self,
        model: Mapping[str, Any],
        optim: Mapping[str, Any] | None = None,
        val_variants: Sequence[Sequence[Any]] = (("val", 1.0),),
        test_variants: Sequence[Sequence[Any]] = (("test", 1.0),),
    ) -> None:
        super().__init__()
        model, optim = dict(model), dict(optim or {})
        unknown = set(optim) - set(DEFAULT_OPTIM)
        if unknown:
            raise ValueError(f"unknown optim keys {sorted(unknown)}; allowed: {sorted(DEFAULT_OPTIM)}")
        check_optim(optim)
        self.save_hyperparameters(dict(
            model=model, optim=DEFAULT_OPTIM | optim,
            val_variants=[[str(n), float(r)] for n, r in val_variants],
            test_variants=[[str(n), float(r)] for n, r in test_variants],
        ))
        self.model = SequenceModel(**model)
        n_classes = model["d_output"]
        names = ["train"] + [n for n, _ in self.hparams.val_variants] + [n for n, _ in self.hparams.test_variants]
        # ModuleDict keys may not shadow nn.Module attributes ("train"), hence the suffix.
        self.acc = nn.ModuleDict({f"{n}_acc": MulticlassAccuracy(n_classes, average="micro")
                                 for n in dict.fromkeys(names)})

    def forward(self, x: torch.Tensor, lengths: torch.Tensor | None = None, step_rescale: float | None = None):
        return self.model(x, lengths, step_rescale)

    # -- steps ----------------------------------------------------------------------------------
    def _step(self, batch, name: str, step_rescale: float | None = None) -> torch.Tensor:
        x, y, lengths = batch
        logits = self.model(x, lengths, step_rescale)
        loss = F.cross_entropy(logits, y)
        metric = self.acc[f"{name}_acc"]
        metric(logits, y)
        on_step = name == "train"
        self.log(f"{name}/loss", loss, on_step=on_step, on_epoch=True, batch_size=y.shape[0],
                 prog_bar=name in ("train", "val"), sync_dist=not on_step, add_dataloader_idx=False)
        self.log(f"{name}/acc", metric, on_step=False, on_epoch=True, batch_size=y.shape[0],
                 prog_bar=name in ("train", "val"), add_dataloader_idx=False)
        return loss

    def training_step(self, batch, batch_idx: int) -> torch.Tensor:
        return self._step(batch, "train")

    def validation_step(self, batch, batch_idx: int, dataloader_idx: int = 0) -> None:
        name, rescale = self.hparams.val_variants[dataloader_idx]
        self._step(batch, name, rescale)

    def test_step(self, batch, batch_idx: int, dataloader_idx: int = 0) -> None:
        name, rescale = self.hparams.test_variants[dataloader_idx]
        self._step(batch, name, rescale)

    # -- optimization ---------------------------------------------------------------------------
    def configure_optimizers(self):
        o = self.hparams.optim
        groups = param_groups(self.model, o["lr"], o["ssm_lr"], o["weight_decay"], o["opt_config"], o["dt_global"])
        optimizer = torch.optim.AdamW(groups, lr=o["lr"], betas=tuple(o["betas"]))
        total = int(self.trainer.estimated_stepping_batches)
        epochs = max(1, self.trainer.max_epochs or 1)
        warmup = round(o["warmup_epochs"] * total / epochs)
        schedule = torch.optim.lr_scheduler.LambdaLR(optimizer, warmup_cosine(warmup, total, o["min_lr_ratio"]))
        return {"optimizer": optimizer, "lr_scheduler": {"scheduler": schedule, "interval": "step"}}

    # -- reporting ------------------------------------------------------------------------------
    def on_fit_start(self) -> None:
        layers = self.model.ssm_layers()
        rows = [f"  layer {i}: {type(s).__name__} state dim {s.n_active}/{s.n_states} (active/stored pairs)"
                for i, s in enumerate(layers)]
        n_params = count_parameters(self.model)
        rank_zero_info(f"SequenceModel: {n_params:,} trainable parameters, {len(layers)} SSM layers\n"
                       + "\n".join(rows))
        if self.logger is not None:
            metrics = {"model/params": float(n_params)}
            metrics |= {f"model/state_dim/layer{i}": float(s.n_active) for i, s in enumerate(layers)}
            self.logger.log_metrics(metrics, step=0)
