"""maintd's actors: state and decisions only. No trio, no sockets, no subprocesses.

Effects are asked for through the ports in :mod:`actors.ports`; the daemon implements
them and tests fake them. Import from the modules themselves (``actors.supervisor``, ...):
this package imports nothing, so that a light module such as :mod:`actors.definitions`
can be imported (by maintctl) without starting pykka.
"""
