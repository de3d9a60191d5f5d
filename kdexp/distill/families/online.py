"""`loss=online`: peers trained together from scratch in one phase, each distilling from the others
(mode=dml, Deep Mutual Learning) or from the peers' mean logits (mode=ensemble, ONE/KDCL-style);
see `losses.mutual`. Each peer's baseline is the same model trained alone from the same init."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from kdexp.distill.functional import ONLINE_MODES, mutual
from kdexp.distill.families.base import Family, Outcome, register
from kdexp.models.factory import count_params, describe
from kdexp.config.checks import require
from kdexp.distill.phase import Phase


@dataclass
class OnlineLossConfig:
    """Peers trained together from scratch, each distilling from the others (dml) or from the
    peers' mean logits (ensemble). `peers`: model config names of conf/model/ (or mappings)."""

    name: str = "online"
    temperature: float = 3.0
    alpha: float = 0.5
    mode: str = "dml"
    peers: list[Any] = field(default_factory=lambda: ["mlp", "mlp"])


@register
class Online(Family):
    name = "online"
    schema = OnlineLossConfig
    model_lists = ("peers",)


    @classmethod
    def check(cls, cfg) -> None:
        super().check(cfg)
        loss = cfg.loss
        require(len(loss.peers) >= 2, "loss.peers", [p.name for p in loss.peers],
                "online distillation needs at least two peers, e.g. loss.peers=[mlp,mlp]")
        require(loss.mode in ONLINE_MODES, "loss.mode", loss.mode, f"allowed for loss=online: {', '.join(ONLINE_MODES)}")

    @classmethod
    def pair_labels(cls, cfg) -> tuple[str, str]:
        return "(online peers)", "+".join(describe(p) for p in cfg.loss.peers)

    def run(self) -> Outcome:
        ctx, cfg, loss_cfg = self.ctx, self.ctx.cfg, self.cfg
        roles = [f"peer{i}" for i in range(len(loss_cfg.peers))]
        baselines = {}
        if cfg.trainer.baseline:
            for role, peer_cfg in zip(roles, loss_cfg.peers):
                baselines[role] = ctx.baseline(peer_cfg, role, f"{role}_baseline").last(f"{role}_baseline/test_acc")
        peers = {role: ctx.build(peer_cfg, role) for role, peer_cfg in zip(roles, loss_cfg.peers)}
        T, alpha, mode = loss_cfg.temperature, loss_cfg.alpha, loss_cfg.mode
        phase = Phase(
            name="online",
            models=peers,
            step_loss=lambda x, y, idx: mutual([m(x) for m in peers.values()], y, T, alpha, mode),
            predict=lambda x: {role: m(x) for role, m in peers.items()},
            epochs=cfg.trainer.epochs,
            seed=ctx.seed(roles[0]),  # peer0 sees the batch order of its baseline
            augment=ctx.augment_students,
        )
        hist = ctx.train(phase)

        metrics: dict[str, float] = {}
        rows = []
        accs, gains, vals = [], [], []
        for role, peer_cfg in zip(roles, loss_cfg.peers):
            acc, params = hist.last(f"{role}/test_acc"), count_params(peers[role])
            accs.append(acc)
            metrics.update({f"{role}_acc": acc, f"{role}_params": params})
            val = ctx.val_acc(hist, role)
            if val is not None:
                metrics[f"{role}_val_acc"] = val
                vals.append(val)
            text = f"{acc:.2f} %"
            if role in baselines:
                base = baselines[role]
                gains.append(acc - base)
                metrics.update({f"{role}_baseline_acc": base, f"{role}_kd_gain": acc - base})
                text += f"  (alone {base:.2f} %, {acc - base:+.2f})"
            rows.append((f"{role} {ctx.describe(peer_cfg)} ({params:,} params)", text))
        metrics.update(self.ensemble_accs(list(peers.values()), "ensemble"))
        rows.append((f"ensemble of the {len(peers)} peers", f"{metrics['ensemble_acc']:.2f} %"))
        metrics["mean_acc"] = sum(accs) / len(accs)
        objective = "mean_acc"
        if gains:
            metrics["baseline_mean_acc"] = sum(baselines.values()) / len(baselines)
            metrics["kd_gain"] = sum(gains) / len(gains)
            rows.append((f"KD gain ({mode}, mean over peers)", f"{metrics['kd_gain']:+.2f} points"))
        if vals:
            metrics["mean_val_acc"] = sum(vals) / len(vals)
            objective = "mean_val_acc"
        return Outcome(metrics, rows, objective, deploy=dict(peers))
