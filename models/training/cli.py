"""``face-train``: train face embedders with margin heads, and run reproducible head comparisons.

face-train train --data DIR --out DIR [--backbone NAME] [--head NAME] [--holdout N] ...
face-train experiment orl --data DIR --seeds 0 1 2 --heads softmax sphereface cosface arcface --out DIR
face-train list
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
from collections.abc import Callable, Mapping, Sequence
from dataclasses import MISSING, fields, replace
from pathlib import Path
from types import MappingProxyType
from typing import Any

import torch

from models.training.config import HeadOption, TrainConfig

logger = logging.getLogger("face-train")
# --align without --align-pack: this pack folder under the models folder (never FACE_PACK's).
DEFAULT_ALIGN_PACK = "default"


def _default(name: str) -> Any:
    """TrainConfig's default for a field, so the CLI never restates it."""
    for item in fields(TrainConfig):
        if item.name == name:
            if item.default is not MISSING:
                return item.default
            if item.default_factory is not MISSING:
                return item.default_factory()
    raise KeyError(name)


# ------------------------------------------------------------------------------------- head options


def _none_or_float(text: str) -> float | None:
    return None if text.lower() in {"none", "null"} else float(text)


def _parse_int(text: str) -> int:
    return int(text)


def _parse_float(text: str) -> float:
    return float(text)


# The type of an option's default decides how its value is read (SphereFace's s defaults to None).
_OPTION_PARSERS: Mapping[type, Callable[[str], HeadOption]] = MappingProxyType(
    {int: _parse_int, float: _parse_float, type(None): _none_or_float}
)


def parse_head_options(head: str, items: Sequence[str]) -> dict[str, HeadOption]:
    """``["s=30", "m=0.5"]`` → ``{"s": 30.0, "m": 0.5}``, typed by the head's own defaults."""
    from models.heads import head_options

    defaults = head_options(head)
    parsed: dict[str, HeadOption] = {}
    for item in items:
        key, separator, value = item.partition("=")
        if not separator or key not in defaults:
            raise ValueError(f"--head-option {item!r}: use KEY=VALUE with KEY one of {sorted(defaults)}")
        parser = _OPTION_PARSERS.get(type(defaults[key]), _parse_float)
        parsed[key] = parser(value)
    return parsed


# ------------------------------------------------------------------------------------------ parsers


def _add_training_arguments(parser: argparse.ArgumentParser) -> None:
    from models.heads import head_names
    from models.training.alignment import TEMPLATES
    from models.training.trainer import DEVICES, OPTIMIZERS, SCHEDULES

    model = parser.add_argument_group("model")
    model.add_argument("--backbone", default=_default("backbone"), help="see `face-train list`")
    model.add_argument("--embedding-size", type=int, default=None, help="default: the backbone's")
    model.add_argument("--dropout", type=float, default=_default("dropout"))
    model.add_argument("--head", default=_default("head"), choices=head_names())
    model.add_argument(
        "--head-option",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="a head hyper-parameter, repeatable (e.g. --head-option s=30 --head-option m=0.5)",
    )

    optim = parser.add_argument_group("optimisation")
    optim.add_argument("--epochs", type=int, default=_default("epochs"))
    optim.add_argument("--batch-size", type=int, default=_default("batch_size"))
    optim.add_argument("--optimizer", default=_default("optimizer"), choices=list(OPTIMIZERS))
    optim.add_argument("--lr", type=float, default=_default("lr"))
    optim.add_argument("--momentum", type=float, default=_default("momentum"))
    optim.add_argument("--weight-decay", type=float, default=_default("weight_decay"))
    optim.add_argument("--scheduler", default=_default("scheduler"), choices=list(SCHEDULES))
    optim.add_argument("--warmup-epochs", type=float, default=_default("warmup_epochs"))
    optim.add_argument("--lr-milestones", type=int, nargs="*", default=[], help="'step' divides by 10 there")
    optim.add_argument("--clip-grad-norm", type=float, default=_default("clip_grad_norm"), help="0 disables")
    optim.add_argument("--seed", type=int, default=_default("seed"))
    optim.add_argument("--no-flip", dest="flip", action="store_false", help="no random horizontal flips")

    evaluation = parser.add_argument_group("open-set evaluation")
    held = evaluation.add_mutually_exclusive_group()
    held.add_argument("--holdout", type=int, default=_default("holdout"), help="identities held out (random)")
    held.add_argument("--holdout-ids", nargs="+", default=[], metavar="NAME", help="exactly these identities")
    evaluation.add_argument("--split-seed", type=int, default=None, help="draws --holdout (default: --seed)")
    evaluation.add_argument("--n-folds", type=int, default=_default("n_folds"))
    evaluation.add_argument("--fars", type=float, nargs="+", default=list(_default("fars")))
    evaluation.add_argument("--eval-every", type=int, default=_default("eval_every"))
    evaluation.add_argument("--eval-flip", action="store_true", help="embed image + mirror when evaluating")

    data = parser.add_argument_group("data")
    data.add_argument("--align", action="store_true", help="detect + align raw photos first (cached)")
    data.add_argument(
        "--align-pack",
        default=None,
        help=f"pack folder whose detector aligns (default: $FACE_MODELS_DIR/{DEFAULT_ALIGN_PACK}, "
        f"else ~/.cache/face-service/models/{DEFAULT_ALIGN_PACK})",
    )
    data.add_argument("--template", default=_default("template"), choices=list(TEMPLATES), help="for --align")

    runtime = parser.add_argument_group("runtime")
    runtime.add_argument("--device", default=_default("device"), choices=list(DEVICES))
    runtime.add_argument("--no-amp", dest="amp", action="store_false", help="no mixed precision on CUDA")
    runtime.add_argument("--num-workers", type=int, default=_default("num_workers"))
    runtime.add_argument("--threads", type=int, default=None, help="torch CPU threads")
    runtime.add_argument("--keep-checkpoints", type=int, default=_default("keep_checkpoints"))
    runtime.add_argument("--no-progress", dest="progress", action="store_false")


def build_parser() -> argparse.ArgumentParser:
    from models.training.trainer import DEVICES

    parser = argparse.ArgumentParser(prog="face-train", description=__doc__.split("\n")[0])
    commands = parser.add_subparsers(dest="command", required=True)

    train = commands.add_parser("train", help="train one model (open-set evaluation on held-out identities)")
    train.add_argument("--data", required=True, type=Path, help="root/<identity>/<image>")
    train.add_argument("--out", required=True, type=Path, help="run folder")
    train.add_argument(
        "--resume",
        default=None,
        metavar="CHECKPOINT|auto",
        help="continue from a checkpoint (auto: OUT/checkpoints/last.pt if present); same settings required",
    )
    _add_training_arguments(train)

    experiment = commands.add_parser("experiment", help="compare heads over seeds on a named data set")
    experiment.add_argument("name", choices=_experiment_names())
    experiment.add_argument("--data", required=True, type=Path)
    experiment.add_argument("--out", required=True, type=Path)
    experiment.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    experiment.add_argument("--heads", nargs="+", default=None, help="default: the experiment's four heads")
    experiment.add_argument("--epochs", type=int, default=None, help="override the experiment's epochs")
    experiment.add_argument("--threads", type=int, default=None, help="torch CPU threads")
    experiment.add_argument("--device", default="cpu", choices=list(DEVICES))
    experiment.add_argument("--no-progress", dest="progress", action="store_false")

    commands.add_parser("list", help="registered backbones and heads")
    return parser


def _experiment_names() -> list[str]:
    from models.training.experiment import EXPERIMENTS

    return list(EXPERIMENTS)


def config_from_args(args: argparse.Namespace) -> TrainConfig:
    return TrainConfig(
        data=str(args.data),
        out=str(args.out),
        backbone=args.backbone,
        embedding_size=args.embedding_size,
        dropout=args.dropout,
        head=args.head,
        head_options=parse_head_options(args.head, args.head_option),
        epochs=args.epochs,
        batch_size=args.batch_size,
        optimizer=args.optimizer,
        lr=args.lr,
        momentum=args.momentum,
        weight_decay=args.weight_decay,
        scheduler=args.scheduler,
        warmup_epochs=args.warmup_epochs,
        lr_milestones=tuple(args.lr_milestones),
        clip_grad_norm=args.clip_grad_norm or None,
        seed=args.seed,
        split_seed=args.split_seed,
        holdout=args.holdout if not args.holdout_ids else 0,
        holdout_ids=tuple(args.holdout_ids),
        flip=args.flip,
        eval_flip=args.eval_flip,
        n_folds=args.n_folds,
        fars=tuple(args.fars),
        eval_every=args.eval_every,
        device=args.device,
        amp=args.amp,
        num_workers=args.num_workers,
        threads=args.threads,
        keep_checkpoints=args.keep_checkpoints,
        align=args.align,
        align_pack=args.align_pack,
        template=args.template,
    )


# ----------------------------------------------------------------------------------------- commands


def _aligned_root(config: TrainConfig, progress: bool) -> Path:
    """With ``align``, the cached folder of aligned chips; otherwise the data folder itself."""
    if not config.align:
        return Path(config.data)
    from models.registry import backbone_entry
    from models.training.alignment import align_dataset, pack_detector, scaled_template
    from service.settings import models_dir_from_env

    size = backbone_entry(config.backbone).input_size
    pack_dir = Path(config.align_pack) if config.align_pack else models_dir_from_env() / DEFAULT_ALIGN_PACK
    destination = Path(config.out) / "aligned"
    summary = align_dataset(
        Path(config.data),
        destination,
        detector=pack_detector(pack_dir),
        template=scaled_template(config.template, size),
        size=size,
        progress=progress,
    )
    print(f"aligned {summary.aligned} photos ({summary.cached} cached, {len(summary.no_face)} with no face)")
    return destination


def _resume_path(value: str | None, out: Path) -> Path | None:
    if value is None:
        return None
    if value == "auto":
        last = out / "checkpoints" / "last.pt"
        if not last.is_file():
            print(f"no checkpoint at {last}: starting from scratch")
            return None
        return last
    return Path(value)


def _train(args: argparse.Namespace) -> int:
    from models.training.trainer import Trainer

    config = config_from_args(args)
    if config.threads:
        torch.set_num_threads(config.threads)
    trainer = Trainer(config, data_root=_aligned_root(config, args.progress), progress=args.progress)
    resume = _resume_path(args.resume, Path(config.out))
    if resume is not None:
        trainer.resume(resume)
        print(f"resumed from {resume} at epoch {trainer.epoch}")
    split = trainer.split
    print(
        f"{config.backbone} + {config.head} on {trainer.device}: {len(split.train)} training identities "
        f"({len(trainer.train_set)} images), {len(split.holdout)} held out"
    )
    history = trainer.fit()
    if trainer.last_report is not None:
        report = trainer.last_report
        tar = ", ".join(
            f"TAR@FAR={p.target_far:g} "
            + (f"{p.tar:.4f}" if p.tar is not None else f"n/a (needs {p.negatives_needed} impostor pairs)")
            for p in report.tar_at_far
        )
        print(
            f"held-out after epoch {trainer.epoch}: {report.n_folds}-fold accuracy "
            f"{report.accuracy_mean:.4f} "
            f"± {report.accuracy_std:.4f}, AUC {report.auc:.4f}, EER {report.eer:.4f}, "
            f"best threshold {report.best_threshold:.4f}; {tar} "
            f"({report.genuine_pairs} genuine / {report.impostor_pairs} impostor pairs)"
        )
    if history:
        print(f"final training loss {history[-1].loss:.4f}; run folder {config.out}")
    return 0


def _experiment(args: argparse.Namespace) -> int:
    from models.training.experiment import EXPERIMENTS, markdown_table, run_experiment

    if args.threads:
        torch.set_num_threads(args.threads)
    spec = EXPERIMENTS[args.name]
    overrides: dict[str, Any] = {"device": args.device}
    if args.epochs is not None:
        overrides["epochs"] = args.epochs
    if args.threads:
        overrides["threads"] = args.threads
    spec = replace(spec, base=replace(spec.base, **overrides))
    results = run_experiment(
        spec,
        data=args.data,
        out=args.out,
        seeds=args.seeds,
        heads=args.heads or list(spec.default_heads),
        progress=args.progress,
    )
    print(markdown_table(results))
    details = args.out / "results.json"
    print(f"{len(results['runs'])} runs in {results['seconds']:.0f} s; details in {details}")
    return 0


def _list(args: argparse.Namespace) -> int:
    from models.heads import head_names, head_options
    from models.registry import backbone_entry, list_backbones

    print("backbones:")
    for name in list_backbones():
        entry = backbone_entry(name)
        width, height = entry.input_size
        print(f"  {name:<14} {width}×{height}, {entry.default_embedding_size}-d  {entry.description}")
    print("heads:")
    for name in head_names():
        print(f"  {name:<18} {json.dumps(head_options(name), default=str)}")
    return 0


COMMANDS: Mapping[str, Callable[[argparse.Namespace], int]] = MappingProxyType(
    {"train": _train, "experiment": _experiment, "list": _list}
)


def main(argv: Sequence[str] | None = None) -> int:
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    args = build_parser().parse_args(argv)
    try:
        return COMMANDS[args.command](args)
    except (ValueError, FileNotFoundError, KeyError) as error:
        print(f"face-train: error: {error}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
