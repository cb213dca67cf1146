"""genorigin.runtime: the inversion loop and what surrounds it, in rooms that follow the data.

``backends`` evaluate loss and gradient, ``loop`` inverts (and owns the interface it drives), ``decide`` turns
losses into verdicts, ``robust`` says what platforms do to images, ``methods`` put them together. Which room
may import which: docs/architecture.md, held by tests/test_layout.py.
"""
