"""Prepared queries: a QuerySet that Django compiles once and then runs with new values.

Why this exists: Django builds and compiles a QuerySet's SQL every time one is evaluated.
For the queries every API request makes (the token with its user, a run with its runbook,
version and creator) that is 0.3-0.5 ms of Python each, while SQLite answers them in 0.03 ms
and PostgreSQL in about 0.1 ms: half of a `GET /runs/{n}`. Django has no prepared or cached
statements at the ORM level, and no maintained library adds them (django-cachalot caches
results, and compiles the SQL anyway to make its key).

How: the QuerySet is built with a probe value in place of the real one, compiled once per
thread, and the probe's position in the SQL parameters is remembered. A call runs Django's
own compiler with that SQL and the caller's value in the probe's place, so model instances,
`select_related` objects and value conversions come out exactly as the ORM makes them.

It relies on internals of Django's SQL compiler (`Query.get_compiler`, `SQLCompiler.as_sql`,
`.select` and `.get_converters`), stable since Django 1.x; tests/config/test_prepared.py
compares its results with the ORM's.
"""

import threading
from collections.abc import Callable
from typing import Any, Generic, TypeVar

from django.db import connections
from django.db.models import QuerySet

T = TypeVar("T")
# The default probe: an int key that no row has and no query of ours uses as a constant.
KEY_PROBE = -918_273_645


class PreparedQuery(Generic[T]):
    """`build(value)` returns the QuerySet for one value; `query(value)` runs it.

    `probe` stands for the value while compiling (KEY_PROBE by default, for int keys): of the
    type the database column takes (an int for a key, a str for a text column) and unlike any
    other parameter of the query.
    With an int probe the value may also be a list of ints (for `__in`): the SQL differs with
    the list's length, so it is compiled once per length, with `probe`, `probe - 1`, ... in
    place of the values.
    Each thread compiles its own copy, since a compiler holds its thread's connection, and
    compiles again if the thread's connection is no longer that one.
    """

    def __init__(
        self, build: Callable[[Any], QuerySet[Any, T]], probe: int | str = KEY_PROBE
    ) -> None:
        self.build = build
        self.probe = probe
        self.local = threading.local()

    def __call__(self, value: int | str | list[int]) -> list[T]:
        many = type(value) is list and type(self.probe) is int
        if not all(type(v) is type(self.probe) for v in (value if many else [value])):
            raise TypeError(f"expected {type(self.probe).__name__}, got {value!r}")
        states = getattr(self.local, "states", None)
        if states is None:
            states = self.local.states = {}
        key = len(value) if many else None
        state = states.get(key)
        if state is None or state[1].connection is not connections[state[1].using]:
            # First use in this thread, or the thread's connection is another object now
            # (asgiref keeps Django's connections per context, and tests swap them): the
            # compiler would still run on the old one, which cannot see this transaction.
            probe = [self.probe - i for i in range(key)] if many else self.probe
            state = states[key] = self.compile(probe)
        queryset, compiler, sql, params, positions = state
        params = params.copy()
        for at, v in zip(positions, value if many else [value], strict=True):
            params[at] = v
        compiler.as_sql = lambda *args, **kwargs: (sql, params)
        return list(queryset._chain())

    def compile(self, probe: int | str | list[int]) -> tuple:
        queryset = self.build(probe)
        compiler = queryset.query.get_compiler(queryset.db)
        sql, params = compiler.as_sql()
        positions = []
        for one in probe if type(probe) is list else [probe]:
            at = [i for i, param in enumerate(params) if param == one]
            if len(at) != 1:
                raise ValueError(f"the probe {one!r} is {len(at)} of the parameters {params}")
            positions.append(at[0])
        # A clone of the query (each call's `_chain()`) keeps this attribute: it copies
        # the query's __dict__.
        queryset.query.get_compiler = lambda *args, **kwargs: compiler
        # The value converters of the selected columns, which results_iter() would otherwise
        # work out again for every call.
        converters = compiler.get_converters([s[0] for s in compiler.select[: compiler.col_count]])
        compiler.get_converters = lambda expressions: converters
        return queryset, compiler, sql, list(params), positions
