"""Networks shared by the neural renderers: the U-Net generator, PatchGAN discriminators, VGG-19 features."""
from .discriminator import MultiScaleDiscriminator, PatchDiscriminator
from .unet import UNetGenerator
from .vgg import VGG19_LAYERS, VGG19Features

__all__ = ["UNetGenerator", "PatchDiscriminator", "MultiScaleDiscriminator", "VGG19Features", "VGG19_LAYERS"]
