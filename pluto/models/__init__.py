"""Model registry: short names for torchvision classifiers adapted to small inputs, a small CNN, and SR networks."""
from pluto.models.registry import SR_MODELS, adapt_stem, create_model, list_models, register
from pluto.models.small_cnn import SmallCNN

__all__ = ["create_model", "list_models", "register", "adapt_stem", "SmallCNN", "SR_MODELS"]
