"""lnn's built-in operator families. Each module is one family; ``plugin`` registers them."""

__version__ = "0.1.0"
