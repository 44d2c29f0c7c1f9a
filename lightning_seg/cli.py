"""The ``lightning-seg`` command: LightningCLI over every task and DataModule of the package.

``lightning-seg {fit,validate,test,predict} --config experiments/....yaml [--key value ...]``
chooses the LightningModule and the DataModule by ``class_path`` in the YAML; every
hyper-parameter is a typed ``__init__`` argument, so ``--print_config`` shows all of them and a
wrong key fails before any work starts. ``data.num_classes`` and ``data.thing_classes`` are
linked into the model, so a config never writes them twice.

``lightning-seg evaluate --task {panoptic,instance,semantic} ...`` scores prediction files
against ground truth without a model (see :mod:`lightning_seg.evaluation.cli`).
"""

from __future__ import annotations

import os
import sys
from typing import Any

from lightning.pytorch.cli import LightningArgumentParser, LightningCLI

from lightning_seg.data.datamodule import SegDataModule
from lightning_seg.tasks.base import SegTask


class SegCLI(LightningCLI):
    """LightningCLI with subclass mode for tasks and DataModules and the class-count links."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        kwargs.setdefault("subclass_mode_model", True)
        kwargs.setdefault("subclass_mode_data", True)
        kwargs.setdefault("seed_everything_default", 0)
        kwargs.setdefault("save_config_kwargs", {"overwrite": True})
        trainer_defaults = kwargs.setdefault("trainer_defaults", {})
        if sys.stdout.isatty():
            trainer_defaults.setdefault(
                "callbacks", [{"class_path": "lightning.pytorch.callbacks.RichProgressBar"}]
            )
        super().__init__(SegTask, SegDataModule, *args, **kwargs)

    def add_arguments_to_parser(self, parser: LightningArgumentParser) -> None:
        parser.link_arguments("data.num_classes", "model.init_args.num_classes", apply_on="instantiate")
        parser.link_arguments("data.thing_classes", "model.init_args.thing_classes", apply_on="instantiate")


def main(argv: list[str] | None = None) -> None:
    """Entry point of ``lightning-seg``."""
    from_sys = argv is None
    argv = list(sys.argv[1:] if from_sys else argv)
    # Offline by default: weights come from local files, never from a hub at run time.
    os.environ.setdefault("NO_ALBUMENTATIONS_UPDATE", "1")
    if argv and argv[0] == "evaluate":
        from lightning_seg.evaluation.cli import main as evaluate_main

        raise SystemExit(evaluate_main(argv[1:]))
    # LightningCLI reads sys.argv itself; passing it again only triggers its warning
    SegCLI(args=None if from_sys else argv)


if __name__ == "__main__":
    main()
