"""What reaches the experiment loggers besides the training curves: the resolved config and the parameter
counts as hyperparameters (lightning-hydra-template's ``log_hyperparameters``), the final scores as a
summary, and the run's pictures (mask densities, κ) as images. Each W&B run is closed after its job
(``cli.user_errors_exit``), so a sweep gets one run per job."""

from __future__ import annotations

from pathlib import Path

from lightning.pytorch.loggers import Logger, TensorBoardLogger, WandbLogger
from omegaconf import DictConfig

from mllmft.config import resolved


def log_hyperparameters(loggers: list[Logger], cfg: DictConfig, parameter_counts: dict) -> None:
    """Every resolved knob of the run (the groups as nested keys, the strategy's name among them) and
    each component's total / trainable parameters."""
    if not loggers:
        return
    hparams = resolved(cfg)
    hparams["parameters"] = parameter_counts
    for logger in loggers:
        logger.log_hyperparams(hparams)


def log_summary(loggers: list[Logger], results: dict) -> None:
    flat = {f"results/{k}": v for k, v in results["tradeoff"]["final"].items()}
    for phase, per_set in results["scores"].items():
        flat.update({f"results/{phase}/{k}": v for k, v in per_set.items()})
    for component, counts in results["trainable_parameters"].items():
        flat[f"model/params/{component}/trainable"] = counts["trainable"]
    flat = {k: v for k, v in flat.items() if v is not None}  # null: not measured (see null_reasons)
    for logger in loggers:
        logger.log_metrics(flat, step=results["global_steps"])
        logger.save()


def log_images(loggers: list[Logger], run_dir: Path, step: int) -> None:
    """The run directory's pictures, to the loggers that show images (TensorBoard, W&B); the CSV
    logger's are the files themselves."""
    pictures = sorted(Path(run_dir).glob("*.png"))
    shown = [lg for lg in loggers if isinstance(lg, (TensorBoardLogger, WandbLogger))]
    if not pictures or not shown:
        return
    import numpy as np
    from PIL import Image

    for path in pictures:
        for logger in shown:
            if isinstance(logger, TensorBoardLogger):
                pixels = np.asarray(Image.open(path).convert("RGB"))
                logger.experiment.add_image(f"figures/{path.stem}", pixels, step, dataformats="HWC")
            else:
                logger.log_image(key=f"figures/{path.stem}", images=[str(path)], step=step)
    for logger in shown:
        if isinstance(logger, TensorBoardLogger):
            logger.experiment.flush()  # on disk now, not when the writer next flushes or closes
