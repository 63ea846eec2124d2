from .runner import Worker

__all__ = ["Worker"]
