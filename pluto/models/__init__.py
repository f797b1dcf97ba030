"""Model registry: short names for torchvision classifiers adapted to small inputs, plus a small CNN."""
from pluto.models.registry import adapt_stem, create_model, list_models, register
from pluto.models.small_cnn import SmallCNN

__all__ = ["create_model", "list_models", "register", "adapt_stem", "SmallCNN"]
