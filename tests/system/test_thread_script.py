"""The admission's Redis path: a Lua script over a connection each thread keeps for itself."""

from __future__ import annotations

import multiprocessing
import threading

import pytest
import redis as redis_lib

from portal.redis_store import ThreadScript

COUNT = "return redis.call('INCRBY', KEYS[1], ARGV[1])"
FAIL = "return redis.error_reply('refused by the script')"


def test_the_script_gets_its_keys_and_arguments(redis):
    script = ThreadScript(redis, "return {KEYS[1], ARGV[1], ARGV[2]}")
    assert script(keys=["tg:k"], args=["a", 7]) == [b"tg:k", b"a", b"7"]


def test_a_redis_that_lost_its_scripts_gets_the_script_again(redis):
    script = ThreadScript(redis, COUNT)
    assert script(keys=["tg:n"], args=[1]) == 1
    redis.script_flush()
    assert script(keys=["tg:n"], args=[1]) == 2
    assert script(keys=["tg:n"], args=[1]) == 3
    assert redis.script_exists(script.sha) == [True]


def test_a_connection_closed_by_the_server_costs_no_call_and_counts_once(redis):
    script = ThreadScript(redis, COUNT)
    assert script(keys=["tg:n"], args=[1]) == 1
    # What a Redis restart or a server-side timeout does to an idle connection.
    for client in redis.client_list():
        if client["cmd"] in {"evalsha", "eval"}:
            redis.client_kill_filter(_id=client["id"])
    assert script(keys=["tg:n"], args=[1]) == 2
    assert int(redis.get("tg:n")) == 2


def test_an_error_from_the_script_is_raised_and_the_connection_stays_usable(redis):
    failing, counting = ThreadScript(redis, FAIL), ThreadScript(redis, COUNT)
    with pytest.raises(redis_lib.ResponseError, match="refused by the script"):
        failing(keys=["tg:n"], args=[])
    assert counting(keys=["tg:n"], args=[5]) == 5
    with pytest.raises(redis_lib.ResponseError):
        failing(keys=["tg:n"], args=[])
    assert counting(keys=["tg:n"], args=[5]) == 10


def test_an_unreachable_redis_raises_a_redis_error_at_once():
    from tests.api_helpers import free_port

    client = redis_lib.Redis(host="127.0.0.1", port=free_port(), socket_connect_timeout=1)
    with pytest.raises(redis_lib.ConnectionError):
        ThreadScript(client, COUNT)(keys=["tg:n"], args=[1])


def test_threads_keep_their_own_connections_and_every_call_counts(redis):
    script = ThreadScript(redis, COUNT)
    script(keys=["tg:n"], args=[0])  # this thread's connection exists before the others start
    errors: list[BaseException] = []

    def hammer() -> None:
        try:
            for _ in range(300):
                script(keys=["tg:n"], args=[1])
        except BaseException as error:  # noqa: BLE001 - reported by the assertion below
            errors.append(error)

    threads = [threading.Thread(target=hammer) for _ in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert errors == []
    assert int(redis.get("tg:n")) == 1200


def _child_calls(script: ThreadScript, results) -> None:
    try:
        results.put([int(script(keys=["tg:n"], args=[1])) > 0 for _ in range(200)].count(True))
    except BaseException as error:  # noqa: BLE001 - the parent reports it
        results.put(repr(error))


def test_a_forked_process_does_not_share_the_parents_connection(redis):
    script = ThreadScript(redis, COUNT)
    assert script(keys=["tg:n"], args=[1]) == 1  # the parent's connection is open when it forks
    forked = multiprocessing.get_context("fork")
    results = forked.Queue()
    children = [forked.Process(target=_child_calls, args=(script, results)) for _ in range(2)]
    for child in children:
        child.start()
    parent_calls = sum(1 for _ in range(200) if script(keys=["tg:n"], args=[1]))
    for child in children:
        child.join(timeout=60)
    assert [results.get(timeout=5) for _ in children] == [200, 200]
    assert parent_calls == 200
    assert int(redis.get("tg:n")) == 601
