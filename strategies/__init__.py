"""fedgen's methods: each module here declares one (or a family), with its config section, its strategy and its
:class:`Method` registration; the registry (:mod:`strategies.method`) finds them through :mod:`fedgen.discovery`.

Shared building blocks: :mod:`strategies.context` (a run's context and the task kinds), :mod:`strategies.retyped`,
:mod:`strategies.stateful` (clients with state between rounds), :mod:`strategies.server_side` (reference runs).
"""

from strategies.context import TASKS, RunContext, TaskKind, Trainer
from strategies.method import METHODS, Method, client_roles, method, methods, model_fn, register, secure_roles

__all__ = ["METHODS", "TASKS", "Method", "RunContext", "TaskKind", "Trainer", "client_roles", "method", "methods",
           "model_fn", "register", "secure_roles"]
