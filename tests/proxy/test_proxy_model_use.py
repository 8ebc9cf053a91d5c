"""L24: each proxied request counts for the model it names (proxy/forward.py), whether
select-on-request is on or not; a request that names none counts for the current one."""

from __future__ import annotations

from proxy_harness import CHAT, Echo, Hooks, client, proxy_for, run


def test_L24_a_request_counts_its_stream_for_the_model_it_names() -> None:
    async def main() -> Hooks:
        hooks = Hooks()
        async with Echo() as echo, proxy_for(echo.url, hooks) as (_, url), client() as c:
            for body in ({"model": " B ", "messages": []}, {"messages": []}, {"model": "E"}):
                r = await c.post(url + CHAT, json=body)
                assert r.status_code == 200
            await c.post(url + CHAT, content=b"not json")
        return hooks

    hooks = run(main())
    # No select-on-request: no stream_for, no selection; each stream names its model.
    assert "stream_for" not in hooks.names()
    assert hooks.stream_models == ["B", None, "E", None]
    assert not hooks.open


def test_L24_with_select_on_request_the_gate_opens_the_stream_on_the_named_model() -> None:
    async def main() -> Hooks:
        hooks = Hooks()
        async with (
            Echo() as echo,
            proxy_for(echo.url, hooks, select_on_request=True) as (_, url),
            client() as c,
        ):
            r = await c.post(url + CHAT, json={"model": "B", "messages": []})
            assert r.status_code == 200
        return hooks

    hooks = run(main())
    assert hooks.events[0] == ("stream_for", "B")
    assert not hooks.open
