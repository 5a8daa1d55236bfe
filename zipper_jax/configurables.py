"""Everything gin can configure, registered on import, in one place: the command line and the
benchmarks import this module before they parse gin files."""
import gin

from zipper_jax import models, partitioning
from zipper_jax import optimizer  # noqa: F401 -- registers adamw, learning_rate_schedule
from zipper_jax.tower import TowerConfig
from zipper_jax.zipper import ZipperConfig

# name -> the gin-configured class, to build configured objects from Python.
CONFIGURED = {c.__name__: gin.external_configurable(c)
              for c in (TowerConfig, ZipperConfig, models.ZipperModel, models.TowerModel,
                        models.SingleDecoderModel, partitioning.Partitioner)}
