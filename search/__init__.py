"""search: find the most accurate network with the fewest ReLUs for private inference."""

__version__ = "0.1.0"
