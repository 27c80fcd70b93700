"""XYZ tile server that paints Earth imagery on demand with a diffusion cascade."""

__version__ = "0.1.0"
