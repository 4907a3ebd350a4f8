from tests.fakes.support import fake

__all__ = ["fake"]
