"""Training and evaluation: recipes (``Config``), ``train`` and ``test``."""

from .config import Config, load_config
from .tester import test
from .trainer import train

__all__ = ["Config", "load_config", "test", "train"]
