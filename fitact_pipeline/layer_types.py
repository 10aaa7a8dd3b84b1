"""Module types that more than one stage recognises (BatchNorm folding, the fault space, sites)."""
from torch import nn

#: layers whose weight and bias are the stored parameters of the fault space, and that BatchNorm folds into
CONV_LINEAR = (nn.Conv1d, nn.Conv2d, nn.Conv3d, nn.Linear)
BATCHNORM = (nn.BatchNorm1d, nn.BatchNorm2d, nn.BatchNorm3d)
