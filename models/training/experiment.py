"""Reproducible head comparisons: the same data, split and schedule, one run per (head, seed).

``face-train experiment orl`` trains the tiny IResNet on 30 ORL identities with each head and
verifies on the other 10 (never seen in training). Seed k fixes both the initialisation and which
10 identities are held out, so for a given seed every head is judged on the same pairs.
"""

from __future__ import annotations

import json
import math
import platform
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from types import MappingProxyType
from typing import Any

import numpy as np
import torch

from models.training.config import HeadOption, TrainConfig
from models.training.trainer import Trainer, report_summary


@dataclass(frozen=True)
class ExperimentSpec:
    name: str
    description: str
    credit: str
    base: TrainConfig  # data and out are filled in per run
    head_options: Mapping[str, dict[str, HeadOption]] = field(default_factory=dict)
    default_heads: tuple[str, ...] = ("softmax", "sphereface", "cosface", "arcface")
    report_far: float = 1e-2  # the TAR@FAR column of the table


ORL = ExperimentSpec(
    name="orl",
    description=(
        "ORL / AT&T Database of Faces (40 people × 10 greyscale 92×112 images): iresnet_tiny at 64×64, "
        "trained on 30 identities, open-set verification on all pairs of the 10 held-out identities"
    ),
    credit="ORL face database: Olivetti Research Laboratory, Cambridge (Samaria & Harter, 1994)",
    base=TrainConfig(
        data="",
        out="",
        backbone="iresnet_tiny",
        epochs=15,
        batch_size=32,
        optimizer="sgd",
        lr=0.1,
        weight_decay=5e-4,
        scheduler="cosine",
        warmup_epochs=1.0,
        holdout=10,
        flip=True,
        keep_checkpoints=1,
    ),
    # SphereFace's λ schedule counts iterations and was tuned for ~28k of them: at its γ = 0.12, λ would
    # still be ≈ 58 after this run's 135 iterations (nearly plain softmax). γ = 3 brings λ to λ_min = 5
    # half-way through. Every other head keeps its defaults (s = 64; CosFace m = 0.35, ArcFace m = 0.5).
    head_options=MappingProxyType({"sphereface": {"lambda_gamma": 3.0}}),
)

EXPERIMENTS: Mapping[str, ExperimentSpec] = MappingProxyType({ORL.name: ORL})

# Columns of the table: (title, key in a run's metrics, format).
_COLUMNS = (
    ("10-fold accuracy", "accuracy", "{:.4f}"),
    ("AUC", "auc", "{:.4f}"),
    ("TAR@FAR", "tar", "{:.4f}"),
    ("EER", "eer", "{:.4f}"),
)


def _metrics(summary: dict[str, Any], far: float) -> dict[str, float | None]:
    return {
        "accuracy": summary["accuracy"],
        "auc": summary["auc"],
        "eer": summary["eer"],
        "tar": summary["tar_at_far"][f"{far:g}"],
    }


def _mean_std(values: Sequence[float | None]) -> dict[str, float | None]:
    present = [v for v in values if v is not None]
    if len(present) < len(values) or not present:
        return {"mean": None, "std": None}
    return {"mean": float(np.mean(present)), "std": float(np.std(present))}


def run_experiment(
    spec: ExperimentSpec,
    *,
    data: Path,
    out: Path,
    seeds: Sequence[int],
    heads: Sequence[str],
    overrides: Mapping[str, Any] | None = None,
    progress: bool = True,
) -> dict[str, Any]:
    """Train every (head, seed), then write ``results.json`` and ``results.md`` in ``out``."""
    out.mkdir(parents=True, exist_ok=True)
    runs: list[dict[str, Any]] = []
    baselines: list[dict[str, Any]] = []
    started = time.perf_counter()
    for seed in seeds:
        for head in heads:
            config = replace(
                spec.base,
                data=str(data),
                out=str(out / f"{head}-seed{seed}"),
                head=head,
                head_options=dict(spec.head_options.get(head, {})),
                seed=seed,
                **(overrides or {}),
            )
            run_started = time.perf_counter()
            trainer = Trainer(config, progress=progress)
            if head == heads[0]:
                # The same initialisation scored before any training: what training adds.
                untrained = report_summary(trainer.evaluate())
                baselines.append({"seed": seed, **_metrics(untrained, spec.report_far)})
            trainer.fit()
            if trainer.last_report is None:
                raise RuntimeError(f"{head} seed {seed}: no held-out report (is holdout set?)")
            runs.append(
                {
                    "head": head,
                    "seed": seed,
                    "heldout_identities": [identity.name for identity in trainer.split.holdout],
                    "seconds": time.perf_counter() - run_started,
                    "final_train_loss": trainer.history[-1].loss,
                    **_metrics(report_summary(trainer.last_report), spec.report_far),
                }
            )
    aggregate = {
        head: {key: _mean_std([r[key] for r in runs if r["head"] == head]) for _, key, _ in _COLUMNS}
        for head in heads
    }
    aggregate_baseline = {key: _mean_std([b[key] for b in baselines]) for _, key, _ in _COLUMNS}
    results = {
        "experiment": spec.name,
        "description": spec.description,
        "credit": spec.credit,
        "config": replace(spec.base, data=str(data), out=str(out), **(overrides or {})).to_dict(),
        "head_options": {head: dict(spec.head_options.get(head, {})) for head in heads},
        "seeds": list(seeds),
        "report_far": spec.report_far,
        "runs": runs,
        "untrained": baselines,
        "aggregate": aggregate,
        "aggregate_untrained": aggregate_baseline,
        "seconds": time.perf_counter() - started,
        "environment": {
            "torch": torch.__version__,
            "python": platform.python_version(),
            "threads": torch.get_num_threads(),
            "machine": platform.machine(),
        },
    }
    (out / "results.json").write_text(json.dumps(results, indent=2) + "\n")
    table = markdown_table(results)
    (out / "results.md").write_text(table)
    return results


def _cell(stats: dict[str, float | None], fmt: str) -> str:
    mean, std = stats["mean"], stats["std"]
    if mean is None or std is None or math.isnan(mean):
        return "n/a"
    return f"{fmt.format(mean)} ± {fmt.format(std)}"


def markdown_table(results: dict[str, Any]) -> str:
    """Mean ± std over seeds of the held-out metrics, one row per head (plus the untrained network)."""
    far = results["report_far"]
    titles = [title if key != "tar" else f"TAR@FAR={far:g}" for title, key, _ in _COLUMNS]
    lines = [
        f"| head | {' | '.join(titles)} |",
        "|---|" + "---|" * len(titles),
    ]
    untrained = results["aggregate_untrained"]
    lines.append("| (untrained) | " + " | ".join(_cell(untrained[k], f) for _, k, f in _COLUMNS) + " |")
    for head, stats in results["aggregate"].items():
        lines.append(f"| {head} | " + " | ".join(_cell(stats[k], f) for _, k, f in _COLUMNS) + " |")
    seeds = ", ".join(str(s) for s in results["seeds"])
    footer = f"\nMean ± std over seeds {seeds}. {results['credit']}.\n"
    return "\n".join(lines) + "\n" + footer
