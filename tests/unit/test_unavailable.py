"""Which failures the API answers with 503 (the database is away) rather than 500 (a bug)."""

from __future__ import annotations

import asyncpg
import pytest

from eventbatch.pool import DatabaseStalled, DatabaseUnavailable, unavailable


@pytest.mark.parametrize("exc", [
    DatabaseStalled("no answer"), DatabaseUnavailable("refused"), TimeoutError(),
    asyncpg.ConnectionDoesNotExistError("connection was closed in the middle of operation"),
    asyncpg.CannotConnectNowError("the database system is starting up"),
    asyncpg.AdminShutdownError("terminating connection due to administrator command"),
    asyncpg.TooManyConnectionsError("sorry, too many clients already"),
    asyncpg.QueryCanceledError("canceling statement due to statement timeout"),
    asyncpg.LockNotAvailableError("canceling statement due to lock timeout"),
    asyncpg.IdleInTransactionSessionTimeoutError("terminating connection due to idle-in-transaction timeout"),
    asyncpg.InterfaceError("cannot perform operation: connection is closed"),
])
def test_the_database_being_away_is_unavailable(exc):
    assert unavailable(exc)


@pytest.mark.parametrize("exc", [
    ValueError("bad"), asyncpg.UniqueViolationError("duplicate key"), asyncpg.UndefinedTableError("no such table"),
    asyncpg.InterfaceError("the server expects 2 arguments for this query, 1 was passed"), KeyError("x"),
])
def test_a_bug_is_not(exc):
    assert not unavailable(exc)


def test_connection_failures_stay_oserrors_for_code_that_catches_those():
    assert isinstance(DatabaseUnavailable("x"), OSError) and isinstance(DatabaseStalled("x"), TimeoutError)
