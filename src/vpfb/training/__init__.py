from vpfb.training.trainer import BatchSource, TrainResult, learning_rate, train

__all__ = ["BatchSource", "TrainResult", "learning_rate", "train"]
