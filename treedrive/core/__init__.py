"""The domain: the node's state machine, its commands, schedules and plugin hooks.

It knows no bytes on the wire, no JSON and no SQL: it talks to the transport through the ports in
:mod:`treedrive.core.ports` and to the store through its unit of work.
"""
