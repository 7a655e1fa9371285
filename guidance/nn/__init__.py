"""Networks: the ADM U-Net (AdaGN), the noise-aware encoder classifier and their shared layers.

The dataset evaluator network (guidance.nn.evaluator.EvaluatorNet) is owned by the metrics code and imported
from its own module.
"""

from guidance.nn.classifier import EncoderClassifier
from guidance.nn.layers import AttentionBlock, AttentionPool2d, timestep_embedding, zero_module
from guidance.nn.unet import ResBlock, UNet

__all__ = ["UNet", "ResBlock", "EncoderClassifier", "AttentionBlock", "AttentionPool2d", "timestep_embedding",
           "zero_module"]
