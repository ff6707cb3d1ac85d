from vpfb.training.distributed import World
from vpfb.training.trainer import BatchSource, TrainResult, learning_rate, train

__all__ = ["BatchSource", "TrainResult", "World", "learning_rate", "train"]
