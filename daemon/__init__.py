"""maintd's trio shell: config, control socket, signals, timers and the bridge to the actors.

Kept empty of imports so that ``maintctl`` can use :mod:`daemon.protocol` and
:mod:`daemon.paths` without loading trio. The entry point is :func:`daemon.app.main`.
"""
