"""Built-in backbones; importing this package registers them."""

from models.backbones import dlib_resnet, iresnet, iresnet_tiny, mobilefacenet

__all__ = ["dlib_resnet", "iresnet", "iresnet_tiny", "mobilefacenet"]
