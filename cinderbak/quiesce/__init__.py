"""Consistency drivers: freeze a guest's filesystems around a copy.

``base`` holds the contract and the errors, ``window`` the freeze window
the workflow wraps around the point-in-time copy, and one module per
driver (``libvirt``, ``noop``) is loaded by stevedore from the
``cinderbak.quiescers`` namespace.
"""
