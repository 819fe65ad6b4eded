"""An A1111-compatible ``/sdapi/v1`` server on diffusers: the product's embedded engine."""

__version__ = "0.1.0"
