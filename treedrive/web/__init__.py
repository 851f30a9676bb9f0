"""The web plugin: dashboard, JSON API, live event stream, and the control commands.

Loaded through the ``treedrive`` entry-point group like any third-party plugin
(see :mod:`treedrive.web.plugin`).
"""
