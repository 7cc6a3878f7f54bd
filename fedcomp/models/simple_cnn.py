"""The pfl-research CIFAR-10 `simple_cnn`: the cnn layer stack with Glorot-uniform kernels."""

from flax import nnx

from fedcomp.models import cnn


class Model(cnn.Model):
  """cnn.Model (conv32-conv64 VALID, pool, dense128, dropout .25/.5) with Glorot-uniform kernels."""

  KERNEL_INIT = staticmethod(nnx.initializers.glorot_uniform())
