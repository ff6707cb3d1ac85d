"""The training log: one row per logged step to a CSV (and TensorBoard), continued without duplicates on resume."""

from __future__ import annotations

import csv
import warnings
from pathlib import Path

from vpfb.config import TrainConfig


class MetricsLog:
    """Rows {step, seconds, lr, loss parts, grad_norm} to a CSV, flushed per row, and optionally to TensorBoard.
    Continuing a run from `start_step` drops the rows logged after it, so that no step appears twice."""

    def __init__(self, csv_path: Path | None, tensorboard_dir: Path | None, start_step: int):
        self.csv_path, self.fh, self.writer, self.tb, self.kept = csv_path, None, None, None, []
        if csv_path is not None and start_step > 0 and csv_path.exists():
            with open(csv_path, newline="") as fh:
                self.kept = [row for row in csv.DictReader(fh) if int(row["step"]) <= start_step]
        if tensorboard_dir is not None:
            try:
                from torch.utils.tensorboard import SummaryWriter
            except ImportError:
                warnings.warn(
                    "train.tensorboard is set but tensorboard is not installed (pip install tensorboard); "
                    "metrics go to the CSV only",
                    stacklevel=3,
                )
            else:
                self.tb = SummaryWriter(str(tensorboard_dir), purge_step=start_step + 1 if start_step else None)

    def write(self, row: dict) -> None:
        if self.csv_path is not None:
            if self.writer is None:  # opened at the first row: a resumed run that logs nothing leaves the file be
                self.fh = open(self.csv_path, "w", newline="")
                self.writer = csv.DictWriter(self.fh, fieldnames=list(self.kept[0] if self.kept else row))
                self.writer.writeheader()
                self.writer.writerows(self.kept)
            self.writer.writerow(row)
            self.fh.flush()
        if self.tb is not None:
            for key, value in row.items():
                if key != "step":
                    self.tb.add_scalar(key, value, row["step"])

    def __enter__(self) -> MetricsLog:
        return self

    def __exit__(self, *exc) -> None:
        if self.fh is not None:
            self.fh.close()
        if self.tb is not None:
            self.tb.close()


def metrics_log(cfg: TrainConfig, run_dir: Path | None, metrics_csv: Path | None, start_step: int) -> MetricsLog:
    """The CSV is `metrics_csv`, else run_dir/metrics.csv; TensorBoard events go beside it, in tensorboard/."""
    csv_path = Path(metrics_csv) if metrics_csv is not None else (run_dir / "metrics.csv" if run_dir else None)
    tensorboard_dir = csv_path.parent / "tensorboard" if cfg.tensorboard and csv_path is not None else None
    if cfg.tensorboard and csv_path is None:
        warnings.warn(
            "train.tensorboard needs a run directory or a metrics file; not logging to TensorBoard", stacklevel=3
        )
    return MetricsLog(csv_path, tensorboard_dir, start_step)
