"""Exception raised by :mod:`operators` for bad arguments."""


class OperatorInputError(ValueError):
    """An operator, mask or solver was given an argument of the wrong shape, dtype or value."""
