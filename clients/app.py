"""The ClientApp: routes each message type to the client role the registry names for it.

'query' (every run's partition query) goes to :func:`clients.common.query`; every other message type to the role
a registered method declares (e.g. 'train' -> clients.finetune:train, 'train.encode' -> clients.encode:encode).
A 'train' message that carries a SecAgg+ stage goes to :mod:`clients.secure` instead.
A role's module is imported on its first message, so a client only loads what its run's method uses (every method
is discovered when the app is built, :mod:`fedgen.discovery`, without importing its heavy parts).
"""

from __future__ import annotations

from collections.abc import Callable
from importlib import import_module

from flwr.app import Context, Message, MessageType
from flwr.clientapp import ClientApp

import strategies

QUERY_ROLE = "clients.common:query"


def _lazy(target: str) -> Callable[[Message, Context], Message]:
    def role(msg: Message, context: Context) -> Message:
        module, func = target.split(":")
        return getattr(import_module(module), func)(msg, context)

    role.__name__ = target
    return role


def _or_secagg(role: Callable[[Message, Context], Message]) -> Callable[[Message, Context], Message]:
    def route(msg: Message, context: Context) -> Message:
        from clients import secure

        return secure.answer(msg, context) if secure.is_secagg(msg) else role(msg, context)

    route.__name__ = role.__name__
    return route


def build_app(roles: dict[str, str] | None = None) -> ClientApp:
    """A ClientApp answering ``roles`` (message type -> 'module:function'; default: every registered method's)."""
    client = ClientApp()
    routes = {MessageType.QUERY: QUERY_ROLE, **(strategies.client_roles() if roles is None else roles)}
    for mtype, target in routes.items():
        category, _, action = mtype.partition(".")
        role = _or_secagg(_lazy(target)) if mtype == MessageType.TRAIN else _lazy(target)
        getattr(client, category)(action or "default")(role)
    return client


app = build_app()
