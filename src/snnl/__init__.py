"""snnl: measure and shape the class geometry of neural-network representations."""

__all__: list[str] = []
__version__ = "0.1.0"
