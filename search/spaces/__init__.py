"""Model spaces: the architectures strategies search over, built by name."""

from search.spaces import resnet, wrn  # noqa: F401  (registers the builders)
from search.spaces import cnet  # noqa: F401  (registers the CryptoNAS space)
from search.spaces.registry import build_model, check_model_options, describe_models, list_models, model_options, register_model

__all__ = ["build_model", "check_model_options", "describe_models", "list_models", "model_options", "register_model"]
